// Whole homewire meshes in one process: daemons on the in-memory UDP network with in-memory TAPs.
import { parseConfig } from '../../src/config.ts';
import { Daemon } from '../../src/daemon.ts';
import { type Logger, silentLogger } from '../../src/log.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';
import { MemoryTap } from '../../lab/twins/tap.ts';
import { MemoryNetwork } from '../../lab/twins/udp.ts';

export interface Node {
  name: string;
  address: string;
  port: number;
  key: Buffer;
  daemon: Daemon;
  tap: MemoryTap;
}

export interface MeshSpec {
  names: string[];
  /** Which peers each node lists (default: everyone else, all with endpoints). */
  peersOf?: (name: string, all: string[]) => Array<{ name: string; endpoint: boolean }>;
  family?: 4 | 6;
  /** A clock for every daemon (tests advance it to drive timers). */
  now?: () => number;
  /** Extra YAML for a node's config (e.g. a dhcp: section). */
  extra?: (name: string) => string;
  /**
   * The security: section of a node (default: labSecurity, what a site with statically addressed guests
   * and a home LAN needs). Return '' for the daemon's own defaults.
   */
  security?: (name: string) => string;
  /** A node's logger (default: silent), e.g. to assert on what an operator would read. */
  log?: (name: string) => Logger | undefined;
}

/** The lab's security settings: the "home" node's local side is a LAN; guests have static addresses, so ARP
 *  inspection learns first claims (strict inspection needs DHCP leases or coordinator reservations). */
export function labSecurity(name: string): string {
  return name === 'home'
    ? 'security: { local_side: lan, arp_inspection: learn }'
    : 'security: { arp_inspection: learn }';
}

/** Authorizes `mac` to move to node `to` on every node (what the coordinator does before a migration). */
export function authorizeEverywhere(nodes: Map<string, Node>, mac: string, to: string, seconds = 60): void {
  for (const n of nodes.values()) {
    const r = n.daemon.authorizeMove(mac, to, Date.now() + seconds * 1000);
    if (!r.ok) throw new Error(`authorizeMove on ${n.name}: ${r.error}`);
  }
}

export async function buildMesh(
  spec: MeshSpec,
): Promise<{ net: MemoryNetwork; nodes: Map<string, Node>; stop: () => Promise<void> }> {
  const net = new MemoryNetwork();
  const family = spec.family ?? 4;
  const info = spec.names.map((name, i) => ({
    name,
    address: family === 6 ? `2001:db8::${i + 1}` : `192.0.2.${i + 1}`,
    port: 51820,
    key: generatePrivateKey(),
  }));
  const nodes = new Map<string, Node>();
  for (const me of info) {
    const wanted =
      spec.peersOf?.(me.name, spec.names) ??
      spec.names.filter((n) => n !== me.name).map((n) => ({ name: n, endpoint: true }));
    const peers = wanted.map((w) => {
      const p = info.find((x) => x.name === w.name)!;
      const ep = family === 6 ? `"[${p.address}]:${p.port}"` : `"${p.address}:${p.port}"`;
      return `  - { name: ${p.name}, public_key: "${encodeKey(publicKeyOf(p.key))}"${w.endpoint ? `, endpoint: ${ep}` : ''} }`;
    });
    const listen = family === 6 ? `"[${me.address}]:${me.port}"` : `${me.address}:${me.port}`;
    const yaml = `name: ${me.name}\nprivate_key: "${encodeKey(me.key)}"\nlisten: ${listen}\ntap: { name: hw-${me.name} }\npeers:\n${peers.join('\n') || '  []'}\n${spec.extra?.(me.name) ?? ''}\n${(spec.security ?? labSecurity)(me.name)}\n`;
    const cfg = parseConfig(yaml.replace('peers:\n  []', 'peers: []'), `${me.name}.yaml`);
    const tap = new MemoryTap(cfg.tap.name, cfg.tap.mtu);
    const socket = net.bind(me.address, me.port);
    const daemon = await Daemon.fromConfig(cfg, {
      tap,
      socket,
      log: spec.log?.(me.name) ?? silentLogger,
      now: spec.now,
    });
    await daemon.start();
    nodes.set(me.name, { ...me, daemon, tap });
  }
  return {
    net,
    nodes,
    stop: async () => {
      for (const n of nodes.values()) await n.daemon.stop();
    },
  };
}

/** Resolves when every node has a confirmed session with every peer that has one configured. */
export async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting for condition');
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function allUp(nodes: Map<string, Node>): boolean {
  for (const n of nodes.values()) for (const p of n.daemon.mesh.peers) if (!p.up || !p.current) return false;
  return true;
}

/** An Ethernet frame: dst, src (MAC strings), ethertype, payload. */
export function frame(dst: string, src: string, type: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(14 + payload.length);
  Buffer.from(dst.replace(/:/g, ''), 'hex').copy(b, 0);
  Buffer.from(src.replace(/:/g, ''), 'hex').copy(b, 6);
  b.writeUInt16BE(type, 12);
  payload.copy(b, 14);
  return b;
}

/** A real ARP request (who has tpa? tell spa) or reply. */
export function arp(op: 1 | 2, sha: string, spa: string, tha: string, tpa: string): Buffer {
  const p = Buffer.alloc(28);
  p.writeUInt16BE(1, 0);
  p.writeUInt16BE(0x0800, 2);
  p[4] = 6;
  p[5] = 4;
  p.writeUInt16BE(op, 6);
  Buffer.from(sha.replace(/:/g, ''), 'hex').copy(p, 8);
  Buffer.from(spa.split('.').map(Number)).copy(p, 14);
  Buffer.from(tha.replace(/:/g, ''), 'hex').copy(p, 18);
  Buffer.from(tpa.split('.').map(Number)).copy(p, 24);
  return frame(op === 1 ? 'ff:ff:ff:ff:ff:ff' : tha, sha, 0x0806, p);
}
