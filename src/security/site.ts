// A site's segment defences (README "Security model"), consulted by the switch:
//
//   sending side   port security: which source MACs may leave the local side into the mesh (the coordinator's
//                  guest list, else learned up to max_macs_per_site; never a MAC another site holds unless a
//                  move here is authorized); DHCP snooping, ARP/ND inspection, RA guard on a guests side;
//                  ARP suppression; storm control.
//   receiving side MAC ownership: MACs seen on this site's local side are pinned here; a MAC another peer holds
//                  moves only by an authorized move (authorizeMove, from the coordinator) unless mac_moves is
//                  open; EXPECT only for authorized moves or the peer's own MACs; a quota of MACs per peer;
//                  DHCP server replies only from trusted peers; peers' ARP may not claim addresses bound here.
//
// The switch calls the cheap per-frame checks (checkLocal/checkPeer look at a few header bytes) and the
// ownership checks only on its slow paths (a new MAC, a MAC changing port). Every refusal is a named counter
// and a rate-limited warning. Frames relayed by another site arrive as from their ORIGIN peer (the mesh hands
// the switch that peer), so ownership is always checked against the site a frame came from.
import { MAC_AGEING_MS } from '../constants.ts';
import {
  AUTHORIZATIONS_MAX,
  AUTHORIZE_MOVE_MAX_MS,
  GUEST_MACS_MAX,
  LOCAL_PIN_MS,
  OWNER_RECORDS_MAX,
} from '../constants.ts';
import { decodeDhcp, messageType } from '../dhcp/codec.ts';
import { DHCPACK, OPT_LEASE_TIME } from '../dhcp/constants.ts';
import { macString } from '../addr.ts';
import type { Peer } from '../mesh/peer.ts';
import { B_DHCP, B_LEARNED, B_REMOTE, Bindings, isAuthoritative } from './bindings.ts';
import type { SecurityConfig } from './config.ts';
import {
  type ArpFields,
  classify,
  K_ARP,
  K_DHCP4_CLIENT,
  K_DHCP4_SERVER,
  K_DHCP6_SERVER,
  K_ND_NA,
  K_ND_NS,
  K_ND_RA,
  K_ND_REDIRECT,
  K_OTHER,
  K_UNPARSEABLE,
  l3Offset,
  l4Offset,
  readArp,
  readNdClaim,
} from './frames.ts';
import { LimitedLog, type WarnLogger } from './limited-log.ts';
import { StormControl } from './storm.ts';

/** checkLocal/checkPeer verdicts. */
export const PASS = 0;
export const DROP = 1;
export const KEEP_LOCAL = 2; // deliver on this side (and to the segment service) but not into the mesh

export class PortSecurityDrops {
  unknown_mac = 0; // strict with a guest list: not one of this host's guests
  too_many_macs = 0; // more local MACs than max_macs_per_site (or max_macs_per_peer on a LAN side)
  remote_mac = 0; // a MAC another site holds, without an authorized move here
  bad_source = 0; // a group (multicast) source MAC
}

export class OwnershipDrops {
  local_mac = 0; // a peer's frame from a MAC pinned on this site's local side
  owned_elsewhere = 0; // a peer's frame from a MAC another peer holds (mac_moves: authorized)
  move_refused = 0; // MAC_AT for a MAC the peer may not claim
  expect_refused = 0; // EXPECT for a MAC that is neither authorized to move to the peer nor its own
  peer_quota = 0; // the peer already holds max_macs_per_peer MACs here
  bad_source = 0; // a group source MAC from a peer
}

export class SnoopingDrops {
  server_from_guest = 0; // DHCP server reply (UDP 67->68) from a guest
  server_from_peer = 0; // ... from a peer that is not a trusted DHCP server
  server_from_lan = 0; // ... from the home LAN while homewire serves it (serve_local: true): kept local
  lan_dhcp_kept_local = 0; // home-LAN DHCP while serve_local is false: not sent into the mesh
  dhcpv6_server_from_guest = 0; // UDP 547->546 from a guest
}

export class InspectionDrops {
  arp_invalid = 0; // not Ethernet/IPv4 ARP
  arp_sha_mismatch = 0; // ARP sender MAC is not the frame's source MAC
  arp_no_binding = 0; // strict: the sender address is not bound (DHCP, reservation) to the sender MAC
  arp_ip_conflict = 0; // learn: the sender address is bound to another MAC
  arp_peer_conflict = 0; // a peer's ARP claims an address bound to another MAC here
  nd_invalid = 0;
  nd_lladdr_mismatch = 0; // NS/NA link-layer option is not the frame's source MAC
  nd_conflict = 0; // the claimed IPv6 address belongs to another MAC
  ra_guard = 0; // router advertisement from a guest
  redirect = 0; // ICMPv6 redirect from a guest
  unparseable = 0; // double VLAN tag, or an IPv6 header chain that hides its upper layer
}

/** Lease lookups from this site's own DHCP server (authoritative bindings without snooping). */
export interface LeaseSource {
  macOf(ip: number, nowMs: number): number | null;
  /** Active leases of a MAC: [ip, expiresAtMs] pairs. */
  leasesOf(mac: number, nowMs: number): Array<[number, number]>;
}

export interface SiteContext {
  /** The switch's MAC table (read only here). */
  table: ReadonlyMap<number, { port: Peer | null; seenMs: number }>;
  /** This site's public key (hex). */
  localKeyHex: string;
  /** Writes a frame this site made to the local side (ARP suppression replies). Ownership passes. */
  writeLocal(frame: Buffer): void;
  /** This site's DHCP server, if it serves one (null otherwise). */
  dhcp: ({ serveLocal: boolean } & LeaseSource) | null;
  log: WarnLogger;
}

interface Authorization {
  keyHex: string;
  untilMs: number;
}

const LOCAL_PORT = { name: 'local' }; // the local side's key in per-port maps

export class SiteSecurity {
  cfg: SecurityConfig;
  readonly portSecurity = new PortSecurityDrops();
  readonly ownership = new OwnershipDrops();
  readonly snooping = new SnoopingDrops();
  readonly inspection = new InspectionDrops();
  readonly storm: StormControl;
  readonly bindings = new Bindings();
  readonly stats = { arpSuppressed: 0, bindingsSnooped: 0, bindingSignals: 0, authorizedMoves: 0 };
  /** The coordinator's guest MACs for this host (setGuestMacs), or null until it gives some. */
  guestMacs: Set<number> | null = null;
  /** The site's own MACs on the local side (its bridge): allowed in strict mode beside the guests. */
  infraMacs = new Set<number>();
  private readonly authorizations = new Map<number, Authorization>();
  private readonly expectedHere = new Map<number, number>(); // mac -> until (a local `expect`)
  private readonly pins = new Map<number, number>(); // local MACs whose table entry aged out -> pinned until
  private readonly counts = new Map<object, number>(); // MAC table entries per port (LOCAL_PORT or a Peer)
  private readonly limited: LimitedLog;
  private readonly arp: ArpFields = { op: 0, senderMac: 0, senderIp: 0, targetIp: 0 };
  nowMs = Date.now();

  constructor(
    cfg: SecurityConfig,
    private readonly ctx: SiteContext,
  ) {
    this.cfg = cfg;
    this.storm = new StormControl(cfg.floodPps);
    this.limited = new LimitedLog(ctx.log, () => this.nowMs);
  }

  reconfigure(cfg: SecurityConfig): void {
    if (cfg.floodPps !== this.cfg.floodPps) this.storm.setRate(cfg.floodPps);
    this.cfg = cfg;
  }

  get guestsSide(): boolean {
    return this.cfg.localSide === 'guests';
  }

  // ---- authority: the coordinator (through the agent or the control socket) and local operators -----

  /** The coordinator's VM records for this host: their MACs (and reserved addresses, for ARP inspection). */
  setGuestMacs(list: ReadonlyArray<{ mac: number; ip: number | null }>): void {
    const macs = new Set<number>();
    const reservations: Array<{ ip: number; mac: number }> = [];
    for (const g of list.slice(0, GUEST_MACS_MAX)) {
      macs.add(g.mac);
      if (g.ip !== null) reservations.push({ ip: g.ip, mac: g.mac });
    }
    // Guests that left this host (stopped, deleted): their local pins go too.
    for (const mac of this.pins.keys()) if (!macs.has(mac)) this.pins.delete(mac);
    this.guestMacs = macs;
    this.bindings.setReservations(reservations);
  }

  /** A coordinator-announced migration: `mac` may move to the site with key `keyHex` until `untilMs`. */
  authorizeMove(mac: number, keyHex: string, untilMs: number): void {
    const until = Math.min(untilMs, this.nowMs + AUTHORIZE_MOVE_MAX_MS);
    if (this.authorizations.size >= AUTHORIZATIONS_MAX && !this.authorizations.has(mac)) this.prune();
    if (this.authorizations.size >= AUTHORIZATIONS_MAX && !this.authorizations.has(mac)) return;
    this.authorizations.set(mac, { keyHex, untilMs: until });
    this.stats.authorizedMoves++;
  }

  /** The local operator (or agent) says `mac` is about to arrive here. */
  expectHere(mac: number, untilMs: number): void {
    if (this.expectedHere.size >= AUTHORIZATIONS_MAX) this.prune();
    if (this.expectedHere.size < AUTHORIZATIONS_MAX) this.expectedHere.set(mac, untilMs);
  }

  /** May `mac` move to `peer`? (An authorized move to that peer's key.) */
  authorized(mac: number, peer: Peer): boolean {
    const a = this.authorizations.get(mac);
    return a !== undefined && a.untilMs > this.nowMs && a.keyHex === peer.keyHex;
  }

  /** May `mac` appear on this site's local side while another site holds it? */
  authorizedHere(mac: number): boolean {
    const a = this.authorizations.get(mac);
    if (a !== undefined && a.untilMs > this.nowMs && a.keyHex === this.ctx.localKeyHex) return true;
    const e = this.expectedHere.get(mac);
    if (e !== undefined && e > this.nowMs) return true;
    return this.cfg.portSecurity === 'strict' && this.guestMacs !== null && this.guestMacs.has(mac);
  }

  // ---- sending side: port security (slow path: a MAC new on the local side, or moving here) ---------

  /** A MAC not in the table appears on the local side: may it enter the table (and the mesh)? */
  mayLearnLocal(mac: number): boolean {
    const cfg = this.cfg;
    if (cfg.portSecurity === 'off') return true;
    if (cfg.portSecurity === 'strict' && this.guestsSide && this.guestMacs !== null) {
      if (this.guestMacs.has(mac) || this.infraMacs.has(mac)) return true;
      this.portSecurity.unknown_mac++;
      this.warn(
        'unknown_mac',
        mac,
        LOCAL_PORT,
        'port security: a frame from a MAC that is not one of this host guests',
      );
      return false;
    }
    const cap = this.guestsSide ? cfg.maxMacsPerSite : cfg.maxMacsPerPeer;
    if (this.count(LOCAL_PORT) >= cap && !this.infraMacs.has(mac)) {
      this.portSecurity.too_many_macs++;
      this.warn('too_many_macs', mac, LOCAL_PORT, `port security: more than ${cap} MACs on the local side`);
      return false;
    }
    return true;
  }

  /** A MAC the table places behind a peer appears on the local side. */
  mayMoveHere(mac: number, holder: Peer): boolean {
    if (this.cfg.portSecurity === 'off' || this.authorizedHere(mac)) return true;
    this.portSecurity.remote_mac++;
    this.warn(
      'remote_mac',
      mac,
      LOCAL_PORT,
      `port security: a local frame claims a MAC that lives behind ${holder.name}; no move here was authorized`,
    );
    return false;
  }

  badLocalSource(): boolean {
    if (this.cfg.portSecurity === 'off') return false;
    this.portSecurity.bad_source++;
    return true;
  }

  // ---- receiving side: ownership (slow path) ----------------------------------------------------------

  /** A peer's frame or announcement claims `mac`, which the table does not hold. */
  mayClaimNew(mac: number, peer: Peer, announced: boolean): boolean {
    const pin = this.pins.get(mac);
    if (pin !== undefined) {
      if (pin > this.nowMs && !this.authorized(mac, peer)) return this.refuse(mac, peer, announced, true);
      this.pins.delete(mac);
    }
    return this.quotaOk(mac, peer);
  }

  /** A peer claims `mac`, which the table places at `holder` (null: this site's local side). */
  mayClaimHeld(mac: number, peer: Peer, holder: Peer | null, announced: boolean): boolean {
    if (!this.authorized(mac, peer)) {
      if (holder === null || this.cfg.macMoves === 'authorized')
        return this.refuse(mac, peer, announced, holder === null);
    }
    return this.quotaOk(mac, peer);
  }

  /** May `peer` ask for `mac`'s frames to be sent to it too (EXPECT)? */
  mayExpect(mac: number, peer: Peer, holder: Peer | null | undefined): boolean {
    if (holder === peer || this.authorized(mac, peer)) return true;
    this.ownership.expect_refused++;
    this.warn('expect_refused', mac, peer, 'ownership: EXPECT for a MAC that is not authorized to move to this peer');
    return false;
  }

  badPeerSource(peer: Peer): void {
    this.ownership.bad_source++;
    this.warn('bad_source', -1, peer, 'ownership: a frame from a peer with a group source MAC');
  }

  private refuse(mac: number, peer: Peer, announced: boolean, local: boolean): false {
    if (announced) {
      this.ownership.move_refused++;
      this.warn('move_refused', mac, peer, 'ownership: refused a move announcement for a MAC the peer may not claim');
    } else if (local) {
      this.ownership.local_mac++;
      this.warn('local_mac', mac, peer, "ownership: a peer's frame claims a MAC pinned on this site's local side");
    } else {
      this.ownership.owned_elsewhere++;
      this.warn('owned_elsewhere', mac, peer, "ownership: a peer's frame claims a MAC another site holds");
    }
    return false;
  }

  private quotaOk(mac: number, peer: Peer): boolean {
    if (this.count(peer) < this.cfg.maxMacsPerPeer) return true;
    this.ownership.peer_quota++;
    this.warn('peer_quota', mac, peer, `ownership: the peer already holds ${this.cfg.maxMacsPerPeer} MACs here`);
    return false;
  }

  // ---- table bookkeeping (the switch calls these whenever an entry is created, moved or deleted) ----

  private count(port: object): number {
    return this.counts.get(port) ?? 0;
  }

  entryAdded(port: Peer | null): void {
    const k = port ?? LOCAL_PORT;
    this.counts.set(k, this.count(k) + 1);
  }

  entryRemoved(mac: number, port: Peer | null, seenMs: number): void {
    const k = port ?? LOCAL_PORT;
    const n = this.count(k) - 1;
    if (n > 0) this.counts.set(k, n);
    else this.counts.delete(k);
    if (port === null) {
      // The MAC stays pinned here after its entry ages out (a quiet LAN device is still the LAN's).
      if (this.pins.size >= OWNER_RECORDS_MAX) this.prune();
      if (this.pins.size < OWNER_RECORDS_MAX) this.pins.set(mac, seenMs + LOCAL_PIN_MS);
    }
  }

  entryMoved(mac: number, from: Peer | null, to: Peer | null): void {
    const f = from ?? LOCAL_PORT;
    const n = this.count(f) - 1;
    if (n > 0) this.counts.set(f, n);
    else this.counts.delete(f);
    this.entryAdded(to);
    if (from === null) this.pins.delete(mac); // an authorized move away: no longer pinned here
  }

  macCount(port: Peer | null): number {
    return this.count(port ?? LOCAL_PORT);
  }

  // ---- per-frame checks ---------------------------------------------------------------------------

  /** A frame from the local side (src: its source MAC). PASS, DROP (counted) or KEEP_LOCAL. The site's own
   *  bridge and TAP (infraMacs: the host's own stack, e.g. a host address on the overlay) are not inspected. */
  checkLocal(frame: Buffer, src: number): number {
    const kind = classify(frame);
    if (kind === K_OTHER || (this.infraMacs.size > 0 && this.infraMacs.has(src))) return PASS;
    const cfg = this.cfg;
    const guests = this.guestsSide;
    switch (kind) {
      case K_DHCP4_SERVER:
        if (!cfg.dhcpSnooping) return PASS;
        if (guests) {
          this.snooping.server_from_guest++;
          this.warn('server_from_guest', src, LOCAL_PORT, 'dhcp snooping: a guest sends DHCP server replies; dropped');
          return DROP;
        }
        if (this.ctx.dhcp === null) return PASS; // the home LAN's own server serves the overlay
        if (this.ctx.dhcp.serveLocal) {
          this.snooping.server_from_lan++;
          this.warn(
            'server_from_lan',
            src,
            LOCAL_PORT,
            'dhcp snooping: another DHCP server answers on the home LAN while homewire serves it; its replies stay on the LAN',
          );
        } else this.snooping.lan_dhcp_kept_local++;
        return KEEP_LOCAL;
      case K_DHCP4_CLIENT:
        if (cfg.dhcpSnooping && !guests && this.ctx.dhcp !== null && !this.ctx.dhcp.serveLocal) {
          this.snooping.lan_dhcp_kept_local++;
          return KEEP_LOCAL;
        }
        return PASS;
      case K_DHCP6_SERVER:
        if (!cfg.dhcpSnooping || !guests) return PASS;
        this.snooping.dhcpv6_server_from_guest++;
        this.warn('dhcpv6_server', src, LOCAL_PORT, 'dhcp snooping: a guest sends DHCPv6 server replies; dropped');
        return DROP;
      case K_ARP:
        return this.localArp(frame, src);
      case K_ND_RA:
      case K_ND_REDIRECT:
        if (!guests || !cfg.raGuard) return PASS;
        if (kind === K_ND_RA) this.inspection.ra_guard++;
        else this.inspection.redirect++;
        this.warn('ra_guard', src, LOCAL_PORT, 'RA guard: a guest sends router advertisements or redirects; dropped');
        return DROP;
      case K_ND_NA:
      case K_ND_NS:
        if (!guests || cfg.arpInspection === 'off') return PASS;
        return this.localNd(frame, src, kind);
      case K_UNPARSEABLE:
        if (!guests || (cfg.arpInspection === 'off' && !cfg.raGuard)) return PASS;
        this.inspection.unparseable++;
        this.warn('unparseable', src, LOCAL_PORT, 'inspection: a guest frame with a hidden header chain; dropped');
        return DROP;
      default:
        return PASS;
    }
  }

  private localArp(frame: Buffer, src: number): number {
    const cfg = this.cfg;
    const l3 = l3Offset(frame);
    const a = readArp(frame, l3, this.arp);
    const inspect = this.guestsSide && cfg.arpInspection !== 'off';
    if (a === null) {
      if (!inspect) return PASS;
      this.inspection.arp_invalid++;
      return DROP;
    }
    const now = this.nowMs;
    if (inspect) {
      if (a.senderMac !== src) {
        this.inspection.arp_sha_mismatch++;
        this.warn('arp_sha_mismatch', src, LOCAL_PORT, 'ARP inspection: sender MAC is not the frame source; dropped');
        return DROP;
      }
      if (a.senderIp !== 0) {
        const b = this.bindings.get4(a.senderIp, now);
        if (cfg.arpInspection === 'strict') {
          if (b === undefined || !isAuthoritative(b) || b.mac !== src) {
            this.inspection.arp_no_binding++;
            this.warn(
              'arp_no_binding',
              src,
              LOCAL_PORT,
              `ARP inspection: ${ipString(a.senderIp)} is not bound to this MAC (no DHCP lease or reservation); dropped. ` +
                'Guests with static addresses need a coordinator reservation or security.arp_inspection: learn',
            );
            return DROP;
          }
        } else if (b !== undefined && b.mac !== src) {
          this.inspection.arp_ip_conflict++;
          this.warn(
            'arp_ip_conflict',
            src,
            LOCAL_PORT,
            `ARP inspection: ${ipString(a.senderIp)} belongs to ${macString(b.mac)}; dropped`,
          );
          return DROP;
        } else this.bindings.learn4(a.senderIp, src, B_LEARNED, now);
      }
    } else if (a.senderIp !== 0 && a.senderMac === src) {
      this.bindings.learn4(a.senderIp, src, B_LEARNED, now); // LAN side: remembered, so peers cannot claim it
    }
    if (cfg.arpSuppression && a.op === 1 && l3 === 14 && a.senderIp !== 0 && a.senderIp !== a.targetIp)
      return this.suppress(frame, a);
    return PASS;
  }

  /** ARP suppression: a request for an address with an authoritative binding is answered here. */
  private suppress(frame: Buffer, a: ArpFields): number {
    if (frame[0] !== 0xff) return PASS; // only broadcasts (a unicast re-check goes to its target)
    const now = this.nowMs;
    let mac = this.ctx.dhcp?.macOf(a.targetIp, now) ?? null;
    if (mac === null) {
      const b = this.bindings.get4(a.targetIp, now);
      if (b !== undefined && isAuthoritative(b)) mac = b.mac;
    }
    if (mac === null) return PASS;
    const entry = this.ctx.table.get(mac);
    if (entry === undefined || now - entry.seenMs > MAC_AGEING_MS) return PASS; // not around: let it flood
    this.stats.arpSuppressed++;
    if (entry.port === null) return KEEP_LOCAL; // on this side: it answers itself; no need to ask the mesh
    this.ctx.writeLocal(arpReply(frame, mac, a.targetIp));
    return KEEP_LOCAL;
  }

  private localNd(frame: Buffer, src: number, kind: number): number {
    const ip6 = l3Offset(frame);
    const claim = readNdClaim(frame, ip6, l4Offset, kind);
    if (claim === null) {
      this.inspection.nd_invalid++;
      return DROP;
    }
    if (claim.lladdr !== -1 && claim.lladdr !== src) {
      this.inspection.nd_lladdr_mismatch++;
      this.warn('nd_lladdr_mismatch', src, LOCAL_PORT, 'ND inspection: link-layer option is not the frame source');
      return DROP;
    }
    if (/^0+$/.test(claim.address)) return PASS; // duplicate address detection: no claim yet
    const now = this.nowMs;
    const b = this.bindings.get6(claim.address, now);
    if (b !== undefined && b.mac !== src) {
      this.inspection.nd_conflict++;
      this.warn('nd_conflict', src, LOCAL_PORT, `ND inspection: the address belongs to ${macString(b.mac)}; dropped`);
      return DROP;
    }
    this.bindings.learn6(claim.address, src, B_LEARNED, now);
    return PASS;
  }

  /** A frame from a peer (after its source MAC passed the ownership checks). PASS or DROP (counted). */
  checkPeer(peer: Peer, frame: Buffer, src: number): number {
    const kind = classify(frame);
    if (kind === K_OTHER) return PASS;
    if (kind === K_DHCP4_SERVER) return this.peerDhcpServer(peer, frame);
    if (kind === K_ARP) return this.peerArp(peer, frame, src);
    if (kind === K_ND_NA || kind === K_ND_NS) return this.peerNd(peer, frame, src, kind);
    return PASS;
  }

  /** Whose DHCP server replies reach this site: homewire's own server or the LAN's are local; else trusted peers. */
  trustsDhcpFrom(peer: Peer): boolean {
    if (!this.guestsSide || this.ctx.dhcp !== null) return false;
    const list = this.cfg.dhcpServers;
    return list === null || list.includes(peer.name);
  }

  private peerDhcpServer(peer: Peer, frame: Buffer): number {
    if (this.cfg.dhcpSnooping && !this.trustsDhcpFrom(peer)) {
      this.snooping.server_from_peer++;
      this.warn(
        'server_from_peer',
        -1,
        peer,
        'dhcp snooping: DHCP server replies from a peer that is not a trusted DHCP server (security.dhcp_servers); dropped',
      );
      return DROP;
    }
    if (this.guestsSide) this.snoopAck(frame);
    return PASS;
  }

  /** An ACK a guest here receives binds its address to its MAC for the lease time. */
  private snoopAck(frame: Buffer): void {
    const l4 = l4Offset;
    const ip = l3Offset(frame);
    const end = Math.min(frame.length, ip + frame.readUInt16BE(ip + 2));
    if (l4 + 8 > end) return;
    const m = decodeDhcp(frame.subarray(l4 + 8, end));
    if (m === null || m.yiaddr === 0 || m.hlen !== 6 || messageType(m) !== DHCPACK) return;
    const lease = m.options.get(OPT_LEASE_TIME);
    if (lease === undefined || lease.length !== 4) return;
    const mac = m.chaddr.readUInt16BE(0) * 0x1_0000_0000 + m.chaddr.readUInt32BE(2);
    this.bindings.setAuthoritative(m.yiaddr, mac, B_DHCP, this.nowMs + lease.readUInt32BE(0) * 1000, this.nowMs);
    this.stats.bindingsSnooped++;
  }

  private peerArp(peer: Peer, frame: Buffer, src: number): number {
    const a = readArp(frame, l3Offset(frame), this.arp);
    if (a === null || a.senderIp === 0 || a.senderMac !== src) return PASS;
    const now = this.nowMs;
    const b = this.bindings.get4(a.senderIp, now);
    const leased = this.ctx.dhcp?.macOf(a.senderIp, now) ?? null;
    const holder = leased ?? (b !== undefined && b.source !== B_REMOTE ? b.mac : null);
    if (holder !== null && holder !== src) {
      this.inspection.arp_peer_conflict++;
      this.warn(
        'arp_peer_conflict',
        src,
        peer,
        `ARP inspection: a peer's ARP claims ${ipString(a.senderIp)}, which belongs to ${macString(holder)} here; dropped`,
      );
      return DROP;
    }
    this.bindings.learn4(a.senderIp, src, B_REMOTE, now);
    return PASS;
  }

  private peerNd(peer: Peer, frame: Buffer, src: number, kind: number): number {
    const claim = readNdClaim(frame, l3Offset(frame), l4Offset, kind);
    if (claim === null || /^0+$/.test(claim.address)) return PASS;
    const now = this.nowMs;
    const b = this.bindings.get6(claim.address, now);
    if (b !== undefined && b.source === B_LEARNED && b.mac !== src) {
      this.inspection.nd_conflict++;
      this.warn('nd_peer_conflict', src, peer, "ND inspection: a peer's NA/NS claims an address bound here; dropped");
      return DROP;
    }
    this.bindings.learn6(claim.address, src, B_REMOTE, now);
    return PASS;
  }

  /** A BINDING signal from `peer` (the site that serves DHCP): `mac` holds `ip` for `seconds`. */
  bindingSignal(peer: Peer, mac: number, ip: number, seconds: number): void {
    if (!this.trustsDhcpFrom(peer)) {
      this.snooping.server_from_peer++;
      this.warn(
        'binding_untrusted',
        mac,
        peer,
        'dhcp snooping: a BINDING from a peer that is not a trusted DHCP server',
      );
      return;
    }
    this.bindings.setAuthoritative(ip, mac, B_DHCP, this.nowMs + seconds * 1000, this.nowMs);
    this.stats.bindingSignals++;
  }

  // ---- time ------------------------------------------------------------------------------------------

  /** Drops expired authorizations, expectations, pins and bindings (called now and then by the switch). */
  prune(): void {
    const now = this.nowMs;
    for (const [mac, a] of this.authorizations) if (a.untilMs <= now) this.authorizations.delete(mac);
    for (const [mac, until] of this.expectedHere) if (until <= now) this.expectedHere.delete(mac);
    for (const [mac, until] of this.pins) if (until <= now) this.pins.delete(mac);
    this.bindings.prune(now);
  }

  forgetPort(peer: Peer): void {
    this.counts.delete(peer);
  }

  private warn(reason: string, mac: number, port: { name: string }, msg: string): void {
    this.limited.warn(
      `${reason}:${port.name}`,
      { reason, from: port.name, ...(mac >= 0 ? { mac: macString(mac) } : {}) },
      msg,
    );
  }
}

function ipString(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

/** An ARP reply to the request in `req` (untagged): `mac` has `ip`. */
function arpReply(req: Buffer, mac: number, ip: number): Buffer {
  const f = Buffer.alloc(60);
  req.copy(f, 0, 6, 12); // to the requester
  f.writeUInt16BE(Math.floor(mac / 0x1_0000_0000), 6);
  f.writeUInt32BE(mac % 0x1_0000_0000, 8);
  f.writeUInt16BE(0x0806, 12);
  f.writeUInt16BE(1, 14);
  f.writeUInt16BE(0x0800, 16);
  f[18] = 6;
  f[19] = 4;
  f.writeUInt16BE(2, 20);
  f.writeUInt16BE(Math.floor(mac / 0x1_0000_0000), 22);
  f.writeUInt32BE(mac % 0x1_0000_0000, 24);
  f.writeUInt32BE(ip >>> 0, 28);
  req.copy(f, 32, 22, 32); // target: the requester's MAC and address
  return f;
}
