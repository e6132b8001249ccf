// The segment defences' cost per frame in the switch alone (no TAP, no crypto): Switch.fromTap and
// Switch.fromPeer for a 1,400-byte IPv4/TCP frame to a known MAC, with the defaults (strict) and with every
// defence off. In process, so a shared machine's noise is smaller than iperf3's; modes alternate, 5 rounds.
//   node --import tsx bench/security-switch-micro.ts
import { silentLogger } from '../src/log.ts';
import type { Mesh } from '../src/mesh/mesh.ts';
import { Peer } from '../src/mesh/peer.ts';
import { parseSecurityConfig } from '../src/security/config.ts';
import { Switch } from '../src/switch.ts';
import { MemoryTap } from '../lab/twins/tap.ts';

const FRAMES = 2_000_000;
const peer = new Peer('home', Buffer.alloc(32, 7), undefined);
const mesh = { peers: [peer], sendFrame() {}, sendSignal() {}, peerByName: () => peer } as unknown as Mesh;

function frame(dst: string, src: string): Buffer {
  const f = Buffer.alloc(1400);
  Buffer.from(dst.replace(/:/g, ''), 'hex').copy(f, 0);
  Buffer.from(src.replace(/:/g, ''), 'hex').copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45;
  f[23] = 6; // TCP
  return f;
}

function run(yaml: Record<string, unknown>): { tapNs: number; peerNs: number } {
  const cfg = parseSecurityConfig(yaml, 'bench.yaml', false, ['home']);
  const tap = new MemoryTap();
  const sw = new Switch(tap, mesh, 1500, 'aa', silentLogger, null, cfg);
  tap.write = () => true; // discard
  const out = frame('52:54:00:00:00:01', '52:54:00:00:00:0a');
  const back = frame('52:54:00:00:00:0a', '52:54:00:00:00:01');
  sw.fromTap(out); // learn the guest locally
  sw.fromPeer(peer, back); // learn the LAN device behind home
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < FRAMES; i++) sw.fromTap(out);
  const tapNs = Number(process.hrtime.bigint() - t0) / FRAMES;
  t0 = process.hrtime.bigint();
  for (let i = 0; i < FRAMES; i++) sw.fromPeer(peer, back);
  const peerNs = Number(process.hrtime.bigint() - t0) / FRAMES;
  return { tapNs, peerNs };
}

const modes: Record<string, Record<string, unknown>> = {
  strict: {},
  'all-off': {
    port_security: 'off',
    arp_inspection: 'off',
    ra_guard: false,
    dhcp_snooping: false,
    flood_pps: 0,
    arp_suppression: false,
  },
};
const res: Record<string, { tap: number[]; peer: number[] }> = {
  strict: { tap: [], peer: [] },
  'all-off': { tap: [], peer: [] },
};
for (let round = 0; round < 5; round++) {
  for (const [m, y] of Object.entries(modes)) {
    const r = run(y);
    res[m].tap.push(r.tapNs);
    res[m].peer.push(r.peerNs);
  }
}
const range = (xs: number[]) => `${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)} ns`;
for (const [m, r] of Object.entries(res))
  process.stdout.write(`${m.padEnd(8)} fromTap ${range(r.tap)}, fromPeer ${range(r.peer)} per frame\n`);
