// The express path (native: lone frames of established unicast flows carried TAP → seal → UDP and UDP → open
// → TAP without JavaScript, from a table JavaScript fills after its own checks) attacked for real in network
// namespaces WHILE express flows are established: each test first pings at rest and sees the express
// counters (`homewire status --json`, `express`) move at both ends, then attacks with frames shaped like the
// established flows, and asserts the attack fails with the counter JavaScript's check keeps, nothing of it
// reaches the other side, and legitimate traffic carries on.
//   1. encrypted data datagrams captured on the underlay and sent again, byte for byte: `replay`
//   2. a hostile site (port security off) sends plain unicast frames from a home-LAN device's MAC to another
//      home-LAN device that has an express flow with it: `local_mac` at home
//   3. a guest with express flows to the LAN host sends DHCP server replies (broadcast, unicast to the LAN host,
//      unicast with IP options) and DHCPv6 server replies (plain, behind a destination-options header):
//      `server_from_guest`, `dhcpv6_server_from_guest`
//   4. the same attacks inside bulk batches (a UDP stream the express path carries whole wake-ups of): replayed
//      and forged datagrams sent back to back into the stream's receive batches (`replay`, `auth_failed`, no
//      datagram delivered twice),
//      DHCP server replies in the middle of the guest's TAP batches (`server_from_guest`)
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Packet } from '../../lab/pcap.ts';
import { run, sleep } from '../../lab/run.ts';
import { type Lab, type LabOptions, PLAN, SITE_BRIDGE } from '../../lab/topology.ts';
import { dhcpServerReply } from '../helpers/attack-frames.ts';
import { labFor, netnsSkipReason, pingText } from '../helpers/netns.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const netnsTest = testIf(netnsSkipReason ?? missingFor({ programs: { python3: 'python3', tcpdump: 'tcpdump' } }));

/** Sends the frames of a file (one hex frame a line) on an interface with AF_PACKET, GAP seconds apart: one
 *  frame per wake-up at the receiver, which is what the express path takes. */
const SEND_FRAMES_PY = `import socket, sys, time
iface, gap, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
frames = [bytes.fromhex(l) for l in open(path).read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for i, f in enumerate(frames):
    if i:
        time.sleep(gap)
    s.send(f)
print('sent %d' % len(frames), flush=True)
`;

/** A UDP sink: counts distinct sequence numbers of datagrams that start with MARKER and the duplicates, until
 *  IDLE seconds pass without one (FIRST seconds for the first); prints JSON. */
const SINK_PY = `import json, socket, struct, sys
port, marker, first, idle = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(('0.0.0.0', port))
s.settimeout(first)
seen, dups = set(), 0
try:
    while True:
        d = s.recv(4096)
        s.settimeout(idle)
        if not d.startswith(marker):
            continue
        q = struct.unpack_from('!I', d, len(marker))[0]
        if q in seen:
            dups += 1
        seen.add(q)
except socket.timeout:
    pass
print(json.dumps({'received': len(seen), 'dups': dups}), flush=True)
`;

/** A UDP source: COUNT datagrams of SIZE bytes (MARKER, sequence number FROM + i), BURST at a time, GAP seconds
 *  between bursts. */
const SOURCE_PY = `import socket, struct, sys, time
host, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
start, count, size, burst, gap = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = b'x' * (size - len(marker) - 4)
for i in range(count):
    s.sendto(marker + struct.pack('!I', start + i) + pad, (host, port))
    if i % burst == burst - 1:
        time.sleep(gap)
print('sent %d' % count, flush=True)
`;

/** A lab with this file's own namespace prefix (hwx...-), destroyed by teardown even on failure. */
async function expressLab(t: ExecutionContext, opts: Omit<LabOptions, 'prefix'> = {}): Promise<Lab> {
  const lab = await labFor(t, opts, 'hwx');
  fs.writeFileSync(path.join(lab.dir, 'send-frames.py'), SEND_FRAMES_PY);
  fs.writeFileSync(path.join(lab.dir, 'sink.py'), SINK_PY);
  fs.writeFileSync(path.join(lab.dir, 'source.py'), SOURCE_PY);
  return lab;
}

const status = (lab: Lab, site: string) => lab.status(site);

async function macOf(lab: Lab, ns: string): Promise<string> {
  return (await lab.exec(ns, ['cat', '/sys/class/net/eth0/address'])).stdout.trim();
}

/** Sends `frames` from namespace `ns` on `iface`, `gapS` apart; resolves with how many were sent. */
async function sendFrames(lab: Lab, ns: string, iface: string, frames: Buffer[], gapS: number): Promise<number> {
  const file = path.join(lab.dir, `frames-${crypto.randomBytes(3).toString('hex')}.hex`);
  fs.writeFileSync(file, `${frames.map((f) => f.toString('hex')).join('\n')}\n`);
  const r = await lab.exec(ns, ['python3', path.join(lab.dir, 'send-frames.py'), iface, String(gapS), file], {
    timeoutMs: 30_000 + frames.length * gapS * 1000,
  });
  if (r.code !== 0) throw new Error(`sending frames in ${ns} on ${iface}: ${r.stdout}${r.stderr}`);
  return Number(/sent (\d+)/.exec(r.stdout)?.[1] ?? 0);
}

/** Captures on the underlay what `from` sends to home's port (the mesh's datagrams, sealed). */
function captureToHome(lab: Lab, from: string) {
  const home = lab.site('home');
  const src = lab.site(from);
  const filter = ['udp', 'and', 'src', 'host', src.address, 'and', 'dst', 'port', String(home.port)];
  return lab.capture('ul', `ul-${home.name}`, path.join(lab.dir, `ul-${from}-${Date.now()}.pcap`), filter);
}

/**
 * Establishes express flows: `from` pings `to` at rest (lone packets, 50 ms apart), and each of `sites`
 * must show its express counters moving both ways (tx: TAP → mesh, rx: mesh → TAP): the table was in use.
 * What is wrong with the express counters goes into `problems`, asserted at the end of the test (an assertion
 * ends an AVA test: the attack must run anyway).
 */
async function establishExpress(
  t: ExecutionContext,
  lab: Lab,
  problems: string[],
  from: string,
  to: string,
  sites: string[],
  o: { size?: number } = {},
): Promise<void> {
  const before = await Promise.all(sites.map((s) => status(lab, s)));
  const p = await lab.ping(from, to, { count: 20, intervalS: 0.05, size: o.size });
  t.is(p.received, 20, `${from} → ${to} at rest: ${pingText(p)}`);
  const after = await Promise.all(sites.map((s) => status(lab, s)));
  sites.forEach((site, i) => {
    const e0 = before[i].express;
    const e1 = after[i].express;
    if (!e1) {
      problems.push(`${site}: status has no "express" section`);
      return;
    }
    if (!e1.enabled) problems.push(`${site}: express.enabled is false`);
    const tx = e1.txFrames - (e0?.txFrames ?? 0);
    const rx = e1.rxFrames - (e0?.rxFrames ?? 0);
    t.log(`${site}: express carried ${tx} frames TAP → mesh and ${rx} mesh → TAP during ${from} → ${to}`);
    if (!(tx > 0 && rx > 0)) problems.push(`${site}: express tx +${tx}, rx +${rx} during ${from} → ${to} at rest`);
  });
}

// ---- frames, byte by byte ----------------------------------------------------------------------------

const macBytes = (s: string) => Buffer.from(s.replace(/:/g, ''), 'hex');
const ip4Bytes = (s: string) => Buffer.from(s.split('.').map(Number));

function sum16(b: Buffer, off: number, len: number, s = 0): number {
  for (let i = 0; i + 1 < len; i += 2) s += b.readUInt16BE(off + i);
  if (len & 1) s += b[off + len - 1] << 8;
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return ~s & 0xffff;
}

/** An Ethernet/IPv4 frame carrying `l4` (protocol `proto`), with optional IP options (a multiple of 4 bytes). */
function ipv4Frame(
  srcMac: string,
  dstMac: string,
  srcIp: string,
  dstIp: string,
  proto: number,
  l4: Buffer,
  ipOptions = Buffer.alloc(0),
): Buffer {
  const ihl = 20 + ipOptions.length;
  const f = Buffer.alloc(14 + ihl + l4.length);
  macBytes(dstMac).copy(f, 0);
  macBytes(srcMac).copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  const ip = 14;
  f[ip] = 0x40 | (ihl / 4);
  f.writeUInt16BE(ihl + l4.length, ip + 2);
  f.writeUInt16BE(crypto.randomInt(0x10000), ip + 4);
  f[ip + 8] = 64;
  f[ip + 9] = proto;
  ip4Bytes(srcIp).copy(f, ip + 12);
  ip4Bytes(dstIp).copy(f, ip + 16);
  ipOptions.copy(f, ip + 20);
  f.writeUInt16BE(fold(sum16(f, ip, ihl)), ip + 10);
  l4.copy(f, ip + ihl);
  return f;
}

/** A UDP header and payload with its checksum over the pseudo-header (`pseudo`: addresses, as bytes). */
function udp(pseudo: Buffer, ipv6: boolean, sport: number, dport: number, payload: Buffer): Buffer {
  const u = Buffer.alloc(8 + payload.length);
  u.writeUInt16BE(sport, 0);
  u.writeUInt16BE(dport, 2);
  u.writeUInt16BE(u.length, 4);
  payload.copy(u, 8);
  const s = sum16(pseudo, 0, pseudo.length) + 17 + u.length;
  const c = fold(sum16(u, 0, u.length, s));
  u.writeUInt16BE(c === 0 && !ipv6 ? 0xffff : c, 6);
  return u;
}

function udp4(srcIp: string, dstIp: string, sport: number, dport: number, payload: Buffer): Buffer {
  return udp(Buffer.concat([ip4Bytes(srcIp), ip4Bytes(dstIp)]), false, sport, dport, payload);
}

/** An ICMP echo request (type 8) with its checksum. */
function icmpEcho(id: number, seq: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(8 + payload.length);
  b[0] = 8;
  b.writeUInt16BE(id, 4);
  b.writeUInt16BE(seq, 6);
  payload.copy(b, 8);
  b.writeUInt16BE(fold(sum16(b, 0, b.length)), 2);
  return b;
}

/** The EUI-64 link-local address of a MAC (what the kernel gives an interface). */
function linkLocal(mac: string): Buffer {
  const m = macBytes(mac);
  const a = Buffer.alloc(16);
  a.writeUInt16BE(0xfe80, 0);
  a[8] = m[0] ^ 0x02;
  a[9] = m[1];
  a[10] = m[2];
  a[11] = 0xff;
  a[12] = 0xfe;
  m.copy(a, 13, 3);
  return a;
}

/** An Ethernet/IPv6 UDP frame between link-local addresses, optionally behind a destination-options header. */
function ipv6UdpFrame(
  srcMac: string,
  dstMac: string,
  sport: number,
  dport: number,
  payload: Buffer,
  destOptions: boolean,
): Buffer {
  const src = linkLocal(srcMac);
  const dst = linkLocal(dstMac);
  const u = udp(Buffer.concat([src, dst]), true, sport, dport, payload);
  const ext = destOptions ? Buffer.from([17, 0, 1, 4, 0, 0, 0, 0]) : Buffer.alloc(0); // next UDP; PadN
  const ip = Buffer.alloc(40);
  ip[0] = 0x60;
  ip.writeUInt16BE(ext.length + u.length, 4);
  ip[6] = destOptions ? 60 : 17;
  ip[7] = 64;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  const f = Buffer.alloc(14);
  macBytes(dstMac).copy(f, 0);
  macBytes(srcMac).copy(f, 6);
  f.writeUInt16BE(0x86dd, 12);
  return Buffer.concat([f, ip, ext, u]);
}

/** A captured Ethernet/IPv4/UDP frame with its UDP checksum computed again: the capture of a veth's sends
 *  holds only the partial checksum the sender's kernel left for offload, which a receiver would refuse. */
function withUdpChecksum(frame: Buffer): Buffer {
  const f = Buffer.from(frame);
  const ip = 14;
  const udpOff = ip + (f[ip] & 15) * 4;
  const len = f.readUInt16BE(udpOff + 4);
  f.writeUInt16BE(0, udpOff + 6);
  const s = sum16(f, ip + 12, 8) + 17 + len;
  const c = fold(sum16(f, udpOff, len, s));
  f.writeUInt16BE(c === 0 ? 0xffff : c, udpOff + 6);
  return f;
}

/** Captured sealed datagrams with counters no one has used yet: the header is authenticated, so the tag no
 *  longer fits (forgeries under the live session's index, from the sender's own address). */
function forge(sealed: Buffer[]): Buffer[] {
  return sealed.map((f, i) => {
    const g = Buffer.from(f);
    const off = 14 + (g[14] & 15) * 4 + 8; // the transport header in the UDP payload
    g.writeUInt32LE((g.readUInt32LE(off + 8) + 1_000_000 + i) >>> 0, off + 8);
    return withUdpChecksum(g);
  });
}

/** IPv4 total length of a captured frame (untagged). */
const ipLength = (p: Packet) => (p.frame.length >= 18 ? p.frame.readUInt16BE(16) : 0);

// ---- 1. replay ------------------------------------------------------------------------------------------

netnsTest(
  'express: a replayed or forged datagram is refused (replay, auth_failed); the target never sees its frame twice',
  async (t) => {
    t.timeout(90_000);
    const lab = await expressLab(t, { sites: ['home', 'host-a'] });
    const home = lab.site('home');
    // Captures: what host-a sends home on the underlay, and every ICMP packet the LAN host sees.
    const lanCap = await lab.capture('lan', 'eth0', path.join(lab.dir, 'lan.pcap'), ['icmp']);
    const ulCap = await captureToHome(lab, 'host-a');
    // Express flows guest-a ↔ LAN host, with 200-byte pings (228-byte IP packets) told apart from the rest.
    const expressProblems: string[] = [];
    await establishExpress(t, lab, expressProblems, 'guest-a', 'lan', ['host-a', 'home'], { size: 200 });
    await sleep(200);
    const captured = await ulCap.stop();
    // Data messages (type 4) big enough to hold a 200-byte echo request: guest-a's requests, sealed.
    const data = captured.filter(
      (p) =>
        p.kind === 'udp' &&
        p.payload !== undefined &&
        p.payload[0] === 4 &&
        p.payload.length >= 14 + 228 &&
        ipLength(p) === p.frame.length - 14,
    );
    t.log(`captured ${captured.length} datagrams host-a → home, ${data.length} of them the sealed echo requests`);
    t.true(data.length >= 15, `sealed echo requests captured: ${data.length}`);
    const replays = data.map((p) => withUdpChecksum(p.frame));
    const fixed = replays.filter((f, i) => !f.equals(data[i].frame)).length;
    t.log(`${fixed} of ${replays.length} captured UDP checksums were offload-partial and computed again`);

    const before = await status(lab, 'home');
    const eBefore = before.express;
    // The attack, while the flow is live (guest-a keeps pinging the LAN host with small pings): the captured
    // frames again, byte for byte, into home's underlay port, one wake-up each.
    const live = lab.ping('guest-a', 'lan', { count: 40, intervalS: 0.1 });
    await sleep(500);
    const sent = await sendFrames(lab, 'ul', `ul-${home.name}`, replays, 0.08);
    const ping = await live;
    t.is(sent, replays.length);
    t.log(`replayed ${sent} datagrams; guest-a → LAN host meanwhile: ${pingText(ping)}`);
    t.true(ping.received >= 39, `guest-a → LAN host during the replay: ${pingText(ping)}`);
    await sleep(300);
    const after = await status(lab, 'home');
    const replayed = after.drops.replay - before.drops.replay;
    t.log(
      `home: replay drops +${replayed}; auth_failed +${after.drops.auth_failed - before.drops.auth_failed}, ` +
        `unknown_index +${after.drops.unknown_index - before.drops.unknown_index}`,
    );
    t.true(replayed >= sent, `home counted ${replayed} replays of ${sent} replayed datagrams`);
    if (eBefore && after.express && !(after.express.rxFrames > eBefore.rxFrames)) {
      expressProblems.push('home: express rx did not move while the live flow ran during the replay');
    }
    // The LAN host saw each 200-byte request once: the 20 pings, no replayed copy.
    await sleep(200);
    const icmp = await lanCap.stop();
    const big = icmp.filter((p) => p.kind === 'icmp' && p.icmpType === 8 && ipLength(p) === 228);
    const small = icmp.filter((p) => p.kind === 'icmp' && p.icmpType === 8 && ipLength(p) === 84);
    t.is(big.length, 20, `200-byte echo requests at the LAN host: ${big.length} (20 sent, ${sent} replayed)`);
    t.is(small.length, ping.transmitted, 'every live echo request arrived once');
    t.true((await lab.ping('guest-a', 'lan', { count: 5, intervalS: 0.05 })).ok, 'guest-a still reaches the LAN host');

    // Forgeries under the live session's index, from host-a's own address: the captured datagrams with counters
    // no one has used yet (the header is authenticated: the tag no longer fits). The express path opens them,
    // refuses them and counts them (one decryption each), and the mesh's auth_failed shows them.
    await establishExpress(t, lab, expressProblems, 'guest-a', 'lan', ['home'], { size: 200 });
    const forged = forge(replays);
    const b2 = await status(lab, 'home');
    const lan2 = await lab.capture('lan', 'eth0', path.join(lab.dir, 'lan2.pcap'), ['icmp']);
    // Beside a live flow, so the session's install stays fresh (an idle install lapses after its lease).
    const live2 = lab.ping('guest-a', 'lan', { count: 30, intervalS: 0.05 });
    await sleep(300);
    const sentForged = await sendFrames(lab, 'ul', `ul-${home.name}`, forged, 0.05);
    const ping2 = await live2;
    t.true(ping2.received >= 29, `guest-a → LAN host during the forgeries: ${pingText(ping2)}`);
    await sleep(300);
    const a2 = await status(lab, 'home');
    const forgedSeen = (await lan2.stop()).filter(
      (p) => p.kind === 'icmp' && p.icmpType === 8 && ipLength(p) === 228,
    ).length;
    const authFailed = a2.drops.auth_failed - b2.drops.auth_failed;
    const byExpress = a2.express.rxAuthFailed - b2.express.rxAuthFailed;
    t.log(`forged ${sentForged} datagrams: home auth_failed +${authFailed}, of them in the express path +${byExpress}`);
    t.true(authFailed >= sentForged, `home counted ${authFailed} forgeries of ${sentForged}`);
    t.true(byExpress > 0, 'the express path refused forgeries under its installed session itself');
    t.is(forgedSeen, 0, 'no forged frame reached the LAN host');
    t.true((await lab.ping('guest-a', 'lan', { count: 5, intervalS: 0.05 })).ok, 'guest-a still reaches the LAN host');
    t.deepEqual(expressProblems, [], 'the express path carried the flows the attacks ran beside');
  },
);

// ---- 2. a hostile site claims a home-LAN MAC ---------------------------------------------------------

netnsTest(
  "express: a peer's frame claiming a MAC pinned here is dropped (local_mac); the owner keeps its traffic",
  async (t) => {
    t.timeout(90_000);
    // host-b is hostile: its port security is off, so it sends whatever source MAC its guest uses.
    const lab = await expressLab(t, {
      siteConfig: (s) => (s === 'host-b' ? 'security: { port_security: "off", arp_inspection: "off" }' : ''),
    });
    // A second device on the home LAN, lan2 (198.51.100.5), beside the LAN host.
    const lan2Ns = lab.ns('lan2');
    const lan2Ip = '198.51.100.5';
    const setup: string[][] = [
      ['ip', 'netns', 'add', lan2Ns],
      ['ip', '-n', lan2Ns, 'link', 'set', 'lo', 'up'],
      [
        'ip',
        '-n',
        lab.ns('home'),
        'link',
        'add',
        'lan2p',
        'mtu',
        String(lab.tapMtu),
        'type',
        'veth',
        'peer',
        'name',
        'eth0',
        'netns',
        lan2Ns,
      ],
      ['ip', '-n', lab.ns('home'), 'link', 'set', 'lan2p', 'master', SITE_BRIDGE, 'up'],
      ['ip', '-n', lan2Ns, 'link', 'set', 'eth0', 'mtu', String(lab.tapMtu)],
      ['ip', '-n', lan2Ns, 'addr', 'add', `${lan2Ip}/${PLAN.overlayLen}`, 'dev', 'eth0'],
      ['ip', '-n', lan2Ns, 'link', 'set', 'eth0', 'up'],
    ];
    for (const argv of setup) {
      const r = await run(argv[0], argv.slice(1));
      t.is(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
    }
    const lanMac = await macOf(lab, 'lan');
    const lan2Mac = await macOf(lab, 'lan2');
    const guestBMac = await macOf(lab, 'guest-b');
    // Express flows: guest-a ↔ LAN host (host-a, home) and guest-b ↔ lan2 (host-b, home).
    const expressProblems: string[] = [];
    await establishExpress(t, lab, expressProblems, 'guest-a', 'lan', ['host-a', 'home']);
    await establishExpress(t, lab, expressProblems, 'guest-b', lan2Ip, ['host-b', 'home']);
    t.is((await status(lab, 'host-b')).macs.find((m) => m.mac === lan2Mac)?.port, 'home', 'host-b has lan2 at home');

    // The attack: guest-b sends echo requests to lan2 as the LAN host (its MAC and address), unicast to lan2's
    // MAC, i.e. into home's established flow from host-b to lan2, while both flows are live.
    const marker = Buffer.from('hwx express: spoofed home-LAN source');
    const n = 20;
    const frames = Array.from({ length: n }, (_, i) =>
      ipv4Frame(lanMac, lan2Mac, PLAN.lan, lan2Ip, 1, icmpEcho(0x4857, i + 1, marker)),
    );
    const before = await status(lab, 'home');
    const lan2Cap = await lab.capture('lan2', 'eth0', path.join(lab.dir, 'lan2.pcap'), ['icmp']);
    const hostile = lab.ping('guest-b', lan2Ip, { count: 30, intervalS: 0.1 });
    const owner = lab.ping('lan', 'guest-a', { count: 30, intervalS: 0.1 });
    await sleep(500);
    const sent = await sendFrames(lab, 'guest-b', 'eth0', frames, 0.05);
    const [pb, pa] = await Promise.all([hostile, owner]);
    t.is(sent, n);
    t.log(
      `sent ${sent} frames from ${lanMac} at guest-b; meanwhile lan → guest-a ${pingText(pa)}, guest-b → lan2 ${pingText(pb)}`,
    );
    t.true(pa.received >= 29, `the LAN host → guest-a during the attack: ${pingText(pa)}`);
    t.true(pb.received >= 29, `guest-b (as itself) → lan2 during the attack: ${pingText(pb)}`);
    await sleep(300);
    const atLan2 = await lan2Cap.stop();
    const spoofed = atLan2.filter((p) => p.frame.includes(marker));
    t.is(spoofed.length, 0, `spoofed frames that reached lan2: ${spoofed.length}`);
    const fromGuestB = atLan2.filter((p) => p.icmpType === 8 && p.frame.subarray(6, 12).equals(macBytes(guestBMac)));
    t.is(fromGuestB.length, pb.transmitted, "the capture at lan2 saw guest-b's own echo requests");

    const home = await status(lab, 'home');
    const o0 = before.security.ownershipDrops;
    const o1 = home.security.ownershipDrops;
    t.log(`home ownership drops: ${JSON.stringify(o1)}`);
    t.true(o1.local_mac - o0.local_mac >= n, `home counted local_mac +${o1.local_mac - o0.local_mac} for ${n} frames`);
    t.is(home.macs.find((m) => m.mac === lanMac)?.port, 'local', "home keeps the LAN host's MAC on its LAN");
    t.is(home.macs.find((m) => m.mac === guestBMac)?.port, 'host-b', 'home still has guest-b at host-b');
    t.is(
      (await status(lab, 'host-a')).macs.find((m) => m.mac === lanMac)?.port,
      'home',
      'host-a still sends the LAN host its traffic at home',
    );
    // The real owner, both ways, after the attack.
    t.true((await lab.ping('lan', 'guest-a', { count: 5, intervalS: 0.05 })).ok, 'the LAN host reaches guest-a');
    t.true((await lab.ping('guest-a', 'lan', { count: 5, intervalS: 0.05 })).ok, 'guest-a reaches the LAN host');
    t.true((await lab.ping('lan', lan2Ip, { count: 2, intervalS: 0.05 })).ok, 'the LAN host reaches lan2');
    t.deepEqual(expressProblems, [], 'the express path carried the flows the attacks ran beside');
  },
);

// ---- 3. DHCP server replies from a guest with express flows ------------------------------------------

netnsTest(
  'express: DHCP server replies from a guest are still dropped (server_from_guest), plain or in disguise',
  async (t) => {
    t.timeout(90_000);
    const lab = await expressLab(t, { sites: ['home', 'host-a'] });
    const lanMac = await macOf(lab, 'lan');
    const guestMac = await macOf(lab, 'guest-a');
    const guestIp = lab.host('guest-a').ip;
    const expressProblems: string[] = [];
    await establishExpress(t, lab, expressProblems, 'guest-a', 'lan', ['host-a', 'home']);

    // guest-a offers the LAN host an address of its own, in five shapes, each 5 times:
    const n = 5;
    const bogus = '198.51.100.77';
    const ack = dhcpServerReply(5, guestMac, guestIp, lanMac, bogus);
    const dhcpPayload = ack.subarray(14 + 20 + 8);
    const dhcp6Reply = Buffer.from('07abcdef0002000a00030001020000000001', 'hex'); // REPLY, server id
    const shapes: Record<string, Buffer> = {
      // as a rogue server sends it: broadcast
      broadcast: ack,
      // unicast to the LAN host: the MACs (and addresses) of the express flow guest-a → LAN host
      unicast: ipv4Frame(guestMac, lanMac, guestIp, PLAN.lan, 17, udp4(guestIp, PLAN.lan, 67, 68, dhcpPayload)),
      // the same with 4 bytes of IP options (NOP NOP NOP EOL): the UDP ports are not at a fixed offset
      ipOptions: ipv4Frame(
        guestMac,
        lanMac,
        guestIp,
        PLAN.lan,
        17,
        udp4(guestIp, PLAN.lan, 67, 68, dhcpPayload),
        Buffer.from([1, 1, 1, 0]),
      ),
      // DHCPv6 server reply (UDP 547 → 546) unicast to the LAN host's link-local address
      dhcpv6: ipv6UdpFrame(guestMac, lanMac, 547, 546, dhcp6Reply, false),
      // the same behind a destination-options header
      dhcpv6DestOpts: ipv6UdpFrame(guestMac, lanMac, 547, 546, dhcp6Reply, true),
    };
    const frames: Buffer[] = [];
    for (let i = 0; i < n; i++) frames.push(...Object.values(shapes));

    const before = await status(lab, 'host-a');
    const lanCap = await lab.capture('lan', 'eth0', path.join(lab.dir, 'lan.pcap'), [
      'icmp',
      'or',
      '(',
      'udp',
      'and',
      '(',
      'port',
      '67',
      'or',
      'port',
      '68',
      'or',
      'port',
      '546',
      'or',
      'port',
      '547',
      ')',
      ')',
    ]);
    const live = lab.ping('guest-a', 'lan', { count: 30, intervalS: 0.1 });
    await sleep(500);
    const sent = await sendFrames(lab, 'guest-a', 'eth0', frames, 0.05);
    const ping = await live;
    t.is(sent, frames.length);
    t.log(`guest-a sent ${sent} DHCP/DHCPv6 server replies; guest-a → LAN host meanwhile: ${pingText(ping)}`);
    t.true(ping.received >= 29, `guest-a → LAN host during the attack: ${pingText(ping)}`);
    await sleep(300);
    const atLan = await lanCap.stop();
    const echo = atLan.filter((p) => p.kind === 'icmp' && p.icmpType === 8);
    t.is(echo.length, ping.transmitted, "the capture at the LAN host saw guest-a's echo requests");
    const leaked = atLan.filter((p) => p.kind !== 'icmp');
    t.is(
      leaked.length,
      0,
      `DHCP packets at the LAN host: ${leaked.map((p) => `${p.src}:${p.sport} → ${p.dst}:${p.dport}`).join(', ')}`,
    );
    const a = await status(lab, 'host-a');
    const s0 = before.security.dhcpSnoopingDrops;
    const s1 = a.security.dhcpSnoopingDrops;
    t.log(`host-a snooping drops: ${JSON.stringify(s1)}`);
    t.true(
      s1.server_from_guest - s0.server_from_guest >= 3 * n,
      `server_from_guest +${s1.server_from_guest - s0.server_from_guest} for ${3 * n} DHCPv4 replies`,
    );
    t.true(
      s1.dhcpv6_server_from_guest - s0.dhcpv6_server_from_guest >= 2 * n,
      `dhcpv6_server_from_guest +${s1.dhcpv6_server_from_guest - s0.dhcpv6_server_from_guest} for ${2 * n} DHCPv6 replies`,
    );
    // The LAN host kept its address, and the flow works both ways.
    const addr = await lab.exec('lan', ['ip', '-4', 'addr', 'show', 'dev', 'eth0']);
    t.notRegex(addr.stdout, new RegExp(bogus.replace(/\./g, '\\.')), "the LAN host did not take the rogue's address");
    t.true((await lab.ping('lan', 'guest-a', { count: 5, intervalS: 0.05 })).ok, 'the LAN host reaches guest-a');
    t.deepEqual(expressProblems, [], 'the express path carried the flows the attacks ran beside');
  },
);

// ---- 4. the same attacks inside bulk batches ---------------------------------------------------------

netnsTest(
  'express: inside bulk batches, replayed and forged datagrams are refused (no datagram delivered twice) and DHCP server replies dropped',
  async (t) => {
    t.timeout(120_000);
    const lab = await expressLab(t, { sites: ['home', 'host-a'] });
    const home = lab.site('home');
    const lanMac = await macOf(lab, 'lan');
    const guestMac = await macOf(lab, 'guest-a');
    const guestIp = lab.host('guest-a').ip;
    const expressProblems: string[] = [];
    await establishExpress(t, lab, expressProblems, 'guest-a', 'lan', ['host-a', 'home']);
    const port = '5301';
    const marker = `hwx-bulk-${crypto.randomBytes(3).toString('hex')}`;
    const size = 1000;
    const sink = lab.exec('lan', ['python3', path.join(lab.dir, 'sink.py'), port, marker, '30', '2'], {
      timeoutMs: 60_000,
    });
    await sleep(300);
    const source = (from: number, count: number, burst: number, gapS: number) =>
      lab.exec(
        'guest-a',
        [
          'python3',
          path.join(lab.dir, 'source.py'),
          PLAN.lan,
          port,
          marker,
          String(from),
          String(count),
          String(size),
          String(burst),
          String(gapS),
        ],
        { timeoutMs: 60_000 },
      );
    // 1. Datagrams one at a time (each leaves host-a alone, not in a GSO run), captured sealed on the underlay.
    const ulCap = await captureToHome(lab, 'host-a');
    const slow = 200;
    await source(0, slow, 1, 0.004);
    await sleep(200);
    const sealed = (await ulCap.stop()).filter(
      (p) =>
        p.kind === 'udp' &&
        p.payload !== undefined &&
        p.payload[0] === 4 &&
        p.payload.length === 12 + 14 + 28 + size + 16 &&
        ipLength(p) === p.frame.length - 14,
    );
    t.log(`captured ${sealed.length} sealed datagrams of the slow part`);
    t.true(sealed.length >= slow / 2, `sealed datagrams captured: ${sealed.length}`);
    const replays = sealed.map((p) => withUdpChecksum(p.frame));

    // 2. Bulk: bursts of 32 datagrams (one TAP batch at host-a, a GSO run on the underlay, one receive batch at
    // home), 4,000 in all: the replay window (8,160) still holds the slow part's counters. Into it, back to back:
    // the captured datagrams at home's underlay port (they land in the stream's receive batches), and DHCP
    // server replies from guest-a (they land in the middle of its TAP batches).
    const ack = dhcpServerReply(5, guestMac, guestIp, lanMac, '198.51.100.77');
    const dhcpPayload = ack.subarray(14 + 20 + 8);
    const rogue = ipv4Frame(guestMac, lanMac, guestIp, PLAN.lan, 17, udp4(guestIp, PLAN.lan, 67, 68, dhcpPayload));
    const rogues = Array.from({ length: 20 }, () => rogue);
    const [h0, a0] = await Promise.all([status(lab, 'home'), status(lab, 'host-a')]);
    const lanCap = await lab.capture('lan', 'eth0', path.join(lab.dir, 'lan.pcap'), [
      'udp',
      'port',
      '67',
      'or',
      'udp',
      'port',
      '68',
    ]);
    const bulkCount = 4000;
    const bulk = source(slow, bulkCount, 32, 0.01);
    await sleep(300);
    const forged = forge(replays);
    const [underlaySent, injected] = await Promise.all([
      sendFrames(lab, 'ul', `ul-${home.name}`, [...replays, ...forged], 0),
      sendFrames(lab, 'guest-a', 'eth0', rogues, 0),
    ]);
    t.is(underlaySent, replays.length + forged.length);
    const replayed = replays.length;
    const b = await bulk;
    t.is(b.code, 0, `the bulk source: ${b.stdout}${b.stderr}`);
    const got = JSON.parse((await sink).stdout.trim().split('\n').pop() ?? '{}') as { received: number; dups: number };
    const [h1, a1] = await Promise.all([status(lab, 'home'), status(lab, 'host-a')]);
    const leaked = (await lanCap.stop()).filter((p) => p.kind === 'udp');
    const rx = h1.express.rxFrames - h0.express.rxFrames;
    const tx = a1.express.txFrames - a0.express.txFrames;
    const datagrams = (h1.udp?.rxDatagrams ?? 0) - (h0.udp?.rxDatagrams ?? 0);
    const calls = (h1.udp?.rxCalls ?? 0) - (h0.udp?.rxCalls ?? 0);
    const replayDrops = h1.drops.replay - h0.drops.replay;
    const authFailed = h1.drops.auth_failed - h0.drops.auth_failed;
    const byExpress = h1.express.rxAuthFailed - h0.express.rxAuthFailed;
    const fromGuest = a1.security.dhcpSnoopingDrops.server_from_guest - a0.security.dhcpSnoopingDrops.server_from_guest;
    t.log(
      `bulk: ${bulkCount} sent, the LAN host got ${got.received} of ${slow + bulkCount} (duplicates ${got.dups}); ` +
        `express carried ${tx} at host-a, ${rx} at home; home received ${datagrams} datagrams in ${calls} recvmmsg calls`,
    );
    t.log(
      `replayed ${replayed}: home replay +${replayDrops}; injected ${injected} DHCP replies: server_from_guest +${fromGuest}`,
    );
    t.is(got.dups, 0, 'no datagram reached the LAN host twice');
    t.true(got.received >= slow + bulkCount * 0.9, `the LAN host got ${got.received} of ${slow + bulkCount}`);
    t.true(rx >= bulkCount * 0.8 && tx >= bulkCount * 0.8, `express carried the bulk: tx ${tx}, rx ${rx}`);
    t.true(datagrams >= 4 * calls, `home received in batches: ${datagrams} datagrams in ${calls} calls`);
    t.true(replayDrops >= replayed, `home counted ${replayDrops} replays of ${replayed}`);
    t.log(`forged ${forged.length}: home auth_failed +${authFailed}, of them in the express path +${byExpress}`);
    t.true(authFailed >= forged.length, `home counted ${authFailed} forgeries of ${forged.length}`);
    t.true(byExpress > 0, 'the express path refused forgeries inside the stream itself');
    t.true(fromGuest >= injected, `host-a counted server_from_guest +${fromGuest} for ${injected}`);
    t.is(leaked.length, 0, `DHCP packets at the LAN host: ${leaked.length}`);
    t.true((await lab.ping('guest-a', 'lan', { count: 5, intervalS: 0.05 })).ok, 'guest-a still reaches the LAN host');
    t.deepEqual(expressProblems, [], 'the express path carried the flows the attacks ran beside');
  },
);
