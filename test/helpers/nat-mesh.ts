// Whole meshes of sites behind NAT in one process: home with a public address (introduce + relay +
// listen_tcp), every other site behind its own in-memory NAT, listing only home, by a DNS name.
import { parseConfig } from '../../src/config.ts';
import { Daemon } from '../../src/daemon.ts';
import { silentLogger } from '../../src/log.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';
import type { Peer } from '../../src/mesh/peer.ts';
import type { ExecutionContext } from 'ava';
import { MemoryTap } from '../../lab/twins/tap.ts';
import { MemoryNat, MemoryNetwork, type NatKind } from '../../lab/twins/udp.ts';
import { arp, frame, waitFor } from './memory-mesh.ts';

export const HOME_PUBLIC = '203.0.113.1';
export const HOME_NAME = 'home.nat.test';

export interface NatSite {
  name: string;
  address: string; // inside (private) address
  publicAddress: string;
  nat: MemoryNat | null;
  key: Buffer;
  daemon: Daemon;
  tap: MemoryTap;
  configText: string;
}

export interface NatMeshSpec {
  /** failSends: the site's own firewall refuses UDP (sends fail locally, at once). */
  sites: Array<{ name: string; nat: NatKind | null; failSends?: boolean }>;
  /** Extra YAML for home. */
  homeExtra?: string;
  /** home's relay (default true). */
  relay?: boolean;
  /** Sites home lists (default: all); the others can be added later with addToHome(). */
  homeLists?: string[];
  now?: () => number;
}

export interface NatMesh {
  net: MemoryNetwork;
  home: NatSite;
  sites: Map<string, NatSite>;
  /** DNS answers the daemons see (tests may change them). */
  dns: Map<string, string[]>;
  /** Rewrites home's config to list these sites too, and applies it as a reload would. */
  addToHome(names: string[]): string[];
  removeFromHome(names: string[]): string[];
  /** Stops a site's daemon and starts a new one with the same config (a restart: all state lost). */
  restart(name: string): Promise<NatSite>;
  stop(): Promise<void>;
}

export async function buildNatMesh(spec: NatMeshSpec): Promise<NatMesh> {
  const net = new MemoryNetwork();
  const dns = new Map<string, string[]>([[HOME_NAME, [HOME_PUBLIC]]]);
  const lookup = async (host: string) => {
    const a = dns.get(host);
    if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return a;
  };
  const homeKey = generatePrivateKey();
  const info = spec.sites.map((s, i) => ({
    ...s,
    key: generatePrivateKey(),
    address: `198.18.${i + 1}.2`,
    publicAddress: s.nat ? `203.0.113.${10 + i}` : `203.0.113.${10 + i}`,
  }));
  const pub = (k: Buffer) => encodeKey(publicKeyOf(k));
  let listed = new Set(spec.homeLists ?? info.map((s) => s.name));
  const homeYaml = () =>
    [
      'name: home',
      `private_key: "${encodeKey(homeKey)}"`,
      `listen: ${HOME_PUBLIC}:51820`,
      `listen_tcp: ${HOME_PUBLIC}:443`,
      'introduce: true',
      `relay: ${spec.relay ?? true}`,
      'tap: { name: hw-home }',
      listed.size ? 'peers:' : 'peers: []',
      ...info.filter((s) => listed.has(s.name)).map((s) => `  - { name: ${s.name}, public_key: "${pub(s.key)}" }`),
      spec.homeExtra ?? '',
    ].join('\n');
  const tcp = (from: string) => ({
    connect: (address: string, port: number) => net.connect(from, address, port),
    listen: async (links: import('../../src/udp/tcp.ts').TcpLinks, at: { address: string; port: number }) =>
      net.listenTcp(links, at.address, at.port),
  });

  const start = async (
    name: string,
    yaml: string,
    address: string,
    key: Buffer,
    nat: MemoryNat | null,
    failSends = false,
  ): Promise<NatSite> => {
    const cfg = parseConfig(yaml, `${name}.yaml`);
    const tap = new MemoryTap(cfg.tap.name, cfg.tap.mtu);
    const socket = net.bind(address, 51820);
    socket.failSends = failSends;
    const daemon = await Daemon.fromConfig(cfg, {
      tap,
      socket,
      log: silentLogger,
      now: spec.now,
      lookup,
      localAddresses: () => [address],
      tcp: tcp(address),
    });
    await daemon.start();
    return { name, address, publicAddress: nat?.publicAddress ?? address, nat, key, daemon, tap, configText: yaml };
  };

  const home = await start('home', homeYaml(), HOME_PUBLIC, homeKey, null);
  const sites = new Map<string, NatSite>();
  for (const s of info) {
    const nat = s.nat ? new MemoryNat(s.nat, s.publicAddress) : null;
    if (nat) net.addNat(nat, [s.address]);
    const yaml = [
      `name: ${s.name}`,
      `private_key: "${encodeKey(s.key)}"`,
      'listen: 0.0.0.0:51820',
      `tap: { name: hw-${s.name} }`,
      'peers:',
      `  - name: home`,
      `    public_key: "${pub(homeKey)}"`,
      `    endpoint: ${HOME_NAME}:51820`,
      `    endpoint_tcp: ${HOME_NAME}:443`,
      '    introducer: true',
      // The guests here have static addresses: ARP inspection learns first claims (strict needs leases).
      'security: { arp_inspection: learn }',
    ].join('\n');
    // listen 0.0.0.0 in the config; the twin socket is bound at the site's inside address.
    sites.set(s.name, await start(s.name, yaml, nat ? s.address : s.publicAddress, s.key, nat, s.failSends));
  }

  const reloadHome = () => home.daemon.apply(parseConfig(homeYaml(), 'home.yaml'));
  return {
    net,
    home,
    sites,
    dns,
    addToHome(names) {
      listed = new Set([...listed, ...names]);
      return reloadHome();
    },
    async restart(name) {
      const old = sites.get(name)!;
      await old.daemon.stop();
      const fresh = await start(name, old.configText, old.address, old.key, old.nat);
      sites.set(name, fresh);
      return fresh;
    },
    removeFromHome(names) {
      listed = new Set([...listed].filter((n) => !names.includes(n)));
      return reloadHome();
    },
    stop: async () => {
      for (const s of sites.values()) await s.daemon.stop();
      await home.daemon.stop();
    },
  };
}

/** The peer named `name` at a daemon. */
export function peerAt(site: NatSite, name: string): Peer | undefined {
  return site.daemon.mesh.peerByName(name);
}

/** Every site knows every other (configured or introduced), and has a session with home. */
export function allIntroduced(m: NatMesh): boolean {
  const names = [...m.sites.keys()];
  for (const s of m.sites.values()) {
    const home = peerAt(s, 'home');
    if (!home?.current) return false;
    for (const n of names) if (n !== s.name && !peerAt(s, n)) return false;
  }
  return true;
}

/** The MAC of the guest at the i-th site (in NatMeshSpec.sites order). */
export const guestMac = (i: number) => `52:54:00:00:01:${i.toString(16).padStart(2, '0')}`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A mesh built for one test (stopped when it ends) in which every site knows every other and has a session
 *  with home. */
export async function introducedNatMesh(t: ExecutionContext, spec: NatMeshSpec): Promise<NatMesh> {
  const m = await buildNatMesh(spec);
  t.teardown(m.stop);
  await waitFor(() => allIntroduced(m), 10_000);
  return m;
}

/** A broadcast from every site's guest, so that every switch knows where each guest is. */
export async function learnGuests(m: NatMesh, only?: string[]): Promise<void> {
  const all = [...m.sites.values()];
  const sites = all.filter((s) => !only || only.includes(s.name));
  for (const s of sites) {
    const i = all.indexOf(s);
    const before = sites.map((x) => x.tap.written.length);
    s.tap.inject(arp(1, guestMac(i), `198.51.100.${10 + i}`, '00:00:00:00:00:00', '198.51.100.1'));
    await waitFor(() => sites.every((x, j) => x === s || x.tap.written.length > before[j]));
  }
}

/**
 * Unicast frames from site a's guest to site b's guest every intervalMs: `count` of them, or fewer when
 * `until` holds (asked after each frame). Returns how many were sent.
 */
export async function traffic(
  m: NatMesh,
  a: string,
  b: string,
  count: number,
  intervalMs: number,
  until?: () => boolean,
): Promise<number> {
  const ia = [...m.sites.keys()].indexOf(a);
  const ib = [...m.sites.keys()].indexOf(b);
  for (let i = 0; i < count; i++) {
    m.sites.get(a)!.tap.inject(frame(guestMac(ib), guestMac(ia), 0x0800, Buffer.alloc(64, i & 0xff)));
    await sleep(intervalMs);
    if (until?.()) return i + 1;
  }
  return count;
}

/** The path a's mesh uses towards site b now. */
export function pathBetween(m: NatMesh, a: string, b: string): string {
  const site = m.sites.get(a)!;
  return site.daemon.mesh.pathOf(peerAt(site, b)!);
}

/**
 * Guests at a and b learned, then frames from a to b every 20 ms until a's path to b is direct (a punch
 * succeeded); fails after 8 s.
 */
export async function punchDirect(m: NatMesh, a: string, b: string): Promise<void> {
  await learnGuests(m, [a, b]);
  const direct = () => pathBetween(m, a, b) === 'direct';
  await Promise.all([traffic(m, a, b, 400, 20, direct), waitFor(direct, 8000)]);
}
