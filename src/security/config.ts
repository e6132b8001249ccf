// The `security:` section of the daemon config (README "Security model"): what this site lets out of its
// local side into the mesh, and what it accepts from peers. Every value has a safe default; all of it is
// reloadable.
import { Checker } from '../checker.ts';
import { DEFAULT_FLOOD_PPS, DEFAULT_MAX_MACS_PER_PEER, DEFAULT_MAX_MACS_PER_SITE } from '../constants.ts';

export type LocalSide = 'lan' | 'guests';
export type PortSecurityMode = 'strict' | 'learn' | 'off';
export type MoveMode = 'authorized' | 'open';
export type InspectionMode = 'strict' | 'learn' | 'off';

export interface SecurityConfig {
  /** What is on this site's TAP side: the home LAN (any device, trusted like the LAN itself) or VM guests. */
  localSide: LocalSide;
  /** Sending side: which source MACs may leave the local side into the mesh. */
  portSecurity: PortSecurityMode;
  /** Receiving side: may a peer take a MAC another peer holds without an authorized move? */
  macMoves: MoveMode;
  /** Local MACs learned on a guests side when the coordinator gave no guest list. */
  maxMacsPerSite: number;
  /** MAC table entries one peer (and a LAN side) may hold here. */
  maxMacsPerPeer: number;
  /** Per site (the local side, each peer) and kind (broadcast, multicast, unknown unicast); 0: no limit. */
  floodPps: number;
  /** ARP and neighbour advertisements from guests must match a binding (strict), a first claim (learn), or anything. */
  arpInspection: InspectionMode;
  /** Router advertisements and redirects from guests are dropped. */
  raGuard: boolean;
  /** DHCP server replies only from homewire's own server, the home LAN's side, or trusted peers. */
  dhcpSnooping: boolean;
  /** Peers whose DHCP server replies reach this site's guests; null: the introducers if any peer is one
   *  (issue 9's `introducer: true`: home), else every peer (logged at start). */
  dhcpServers: string[] | null;
  /** Answer ARP requests for bound addresses here instead of flooding them over the mesh. */
  arpSuppression: boolean;
}

const KEYS = [
  'local_side',
  'port_security',
  'mac_moves',
  'max_macs_per_site',
  'max_macs_per_peer',
  'flood_pps',
  'arp_inspection',
  'ra_guard',
  'dhcp_snooping',
  'dhcp_servers',
  'arp_suppression',
];

function oneOf<T extends string>(c: Checker, v: unknown, key: string, allowed: readonly T[], fallback: T): T {
  if (v === undefined) return fallback;
  const s = c.string(v, key);
  if (!allowed.includes(s as T)) c.fail(key, `"${s}" is not one of ${allowed.join(', ')}`);
  return s as T;
}

/**
 * Validates `security:` (raw YAML value, maybe undefined). `homeSite`: the site serves DHCP, introduces or
 * relays, which makes its local side the home LAN unless `local_side` says otherwise. `peerNames` checks
 * `dhcp_servers`.
 */
export function parseSecurityConfig(
  raw: unknown,
  file: string,
  homeSite: boolean,
  peerNames: readonly string[],
): SecurityConfig {
  const c = new Checker(file);
  const o = raw === undefined ? {} : c.object(raw, 'security');
  c.onlyKeys(o, KEYS, 'security');
  const localSide = oneOf(c, o.local_side, 'security.local_side', ['lan', 'guests'], homeSite ? 'lan' : 'guests');
  const portSecurity = oneOf(c, o.port_security, 'security.port_security', ['strict', 'learn', 'off'], 'strict');
  const macMoves = oneOf(c, o.mac_moves, 'security.mac_moves', ['authorized', 'open'], 'authorized');
  const arpInspection = oneOf(c, o.arp_inspection, 'security.arp_inspection', ['strict', 'learn', 'off'], 'strict');
  const int = (v: unknown, key: string, min: number, max: number, fallback: number) =>
    v === undefined ? fallback : c.integer(v, `security.${key}`, min, max);
  const bool = (v: unknown, key: string) => (v === undefined ? true : c.boolean(v, `security.${key}`));
  let dhcpServers: string[] | null = null;
  if (o.dhcp_servers !== undefined) {
    dhcpServers = c.list(o.dhcp_servers, 'security.dhcp_servers', 'of peer names').map((v, i) => {
      const name = c.string(v, `security.dhcp_servers[${i}]`);
      if (!peerNames.includes(name))
        c.fail(`security.dhcp_servers[${i}]`, `"${name}" is not a peer in this config: list peer names`);
      return name;
    });
  }
  return {
    localSide,
    portSecurity,
    macMoves,
    maxMacsPerSite: int(o.max_macs_per_site, 'max_macs_per_site', 1, 4096, DEFAULT_MAX_MACS_PER_SITE),
    maxMacsPerPeer: int(o.max_macs_per_peer, 'max_macs_per_peer', 1, 16_384, DEFAULT_MAX_MACS_PER_PEER),
    floodPps: int(o.flood_pps, 'flood_pps', 0, 10_000_000, DEFAULT_FLOOD_PPS),
    arpInspection,
    raGuard: bool(o.ra_guard, 'ra_guard'),
    dhcpSnooping: bool(o.dhcp_snooping, 'dhcp_snooping'),
    dhcpServers,
    arpSuppression: bool(o.arp_suppression, 'arp_suppression'),
  };
}
