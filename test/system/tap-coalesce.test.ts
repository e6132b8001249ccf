// TAP write coalescing (native/gro.h) against the real kernel: packets of one flow written in one batch are
// merged into one GSO frame, and the kernel's stack must take it and hand the application exactly the bytes
// (TCP) or exactly the datagrams (UDP) that were written, over IPv4 and IPv6. The TAP sits in a namespace of
// its own (hwf*) with the kernel's addresses; the test plays the far host (its MAC is a static neighbour)
// with hand-built frames. Needs root and the built addon.
import type { ExecutionContext } from 'ava';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { NativeTap } from '../../src/tap/native.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

/** Every test here needs root, ip and the built addon; without them it fails saying what to install. */
const test = testIf(missingFor({ root: true, programs: { ip: 'iproute2' }, addon: true }));

const OUR_MAC = Buffer.from('020000c0ffee', 'hex');
const NS_IP4 = '192.0.2.1';
const OUR_IP4 = '192.0.2.2';
const NS_IP6 = '2001:db8:f::1';
const OUR_IP6 = '2001:db8:f::2';

const sh = (cmd: string, ...args: string[]): string =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (f: () => void): void => {
  try {
    f();
  } catch {
    /* already gone */
  }
};

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

interface Bed {
  ns: string;
  tap: NativeTap;
  kernelMac: Buffer;
  /** Frames the kernel sent out of the TAP (copies). */
  read: Buffer[];
}

/** A TAP moved into a fresh namespace with both addresses and our far host as a static neighbour. */
function bed(t: ExecutionContext, onFrame?: (f: Buffer) => void): Bed {
  const hex = randomBytes(2).toString('hex');
  const ns = `hwfns${hex}`;
  sh('ip', 'netns', 'add', ns);
  t.teardown(() => quiet(() => sh('ip', 'netns', 'del', ns)));
  const tap = NativeTap.open({ name: `hwf${hex}`, mtu: 1500, coalesceUdp: true }); // UDP runs: opt-in
  t.teardown(() => tap.close());
  sh('ip', 'link', 'set', 'dev', tap.name, 'netns', ns);
  sh('ip', '-n', ns, 'link', 'set', 'lo', 'up');
  sh('ip', '-n', ns, 'addr', 'add', `${NS_IP4}/24`, 'dev', tap.name);
  sh('ip', '-n', ns, 'addr', 'add', `${NS_IP6}/64`, 'dev', tap.name, 'nodad');
  sh('ip', '-n', ns, 'link', 'set', 'dev', tap.name, 'up');
  const mac = [...OUR_MAC].map((b) => b.toString(16).padStart(2, '0')).join(':');
  sh('ip', '-n', ns, 'neigh', 'replace', OUR_IP4, 'lladdr', mac, 'dev', tap.name, 'nud', 'permanent');
  sh('ip', '-n', ns, 'neigh', 'replace', OUR_IP6, 'lladdr', mac, 'dev', tap.name, 'nud', 'permanent');
  const kernelMac = Buffer.from(
    sh('ip', '-n', ns, '-o', 'link', 'show', 'dev', tap.name)
      .match(/link\/ether ([0-9a-f:]{17})/)![1]
      .replace(/:/g, ''),
    'hex',
  );
  const read: Buffer[] = [];
  tap.start({
    frame: (f) => {
      read.push(Buffer.from(f));
      onFrame?.(f);
    },
    batchEnd: () => {},
  });
  return { ns, tap, kernelMac, read };
}

// ---- frames ----------------------------------------------------------------------------------------
function sum16(b: Buffer, sum = 0): number {
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length & 1) sum += b[b.length - 1] << 8;
  return sum;
}
function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}
function ipBytes(ip: string): Buffer {
  if (!ip.includes(':')) return Buffer.from(ip.split('.').map(Number));
  const [head, tail] = ip.split('::');
  const h = head ? head.split(':') : [];
  const tl = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - tl.length).fill('0'), ...tl];
  const b = Buffer.alloc(16);
  for (const [i, g] of groups.entries()) b.writeUInt16BE(Number.parseInt(g, 16), i * 2);
  return b;
}

/** Ethernet + IPv4/IPv6 + the given L4 header and payload; fills the L4 checksum at l4CsumOffset. */
function packet(b: Bed, v6: boolean, proto: number, l4: Buffer, l4CsumOffset: number, id = 0): Buffer {
  const src = ipBytes(v6 ? OUR_IP6 : OUR_IP4);
  const dst = ipBytes(v6 ? NS_IP6 : NS_IP4);
  const pseudo = Buffer.concat([src, dst]);
  l4.writeUInt16BE(0, l4CsumOffset);
  let c = 0xffff - fold(sum16(l4, sum16(pseudo) + proto + l4.length));
  if (c === 0 && proto === 17) c = 0xffff;
  l4.writeUInt16BE(c, l4CsumOffset);
  const eth = Buffer.concat([b.kernelMac, OUR_MAC, Buffer.from(v6 ? '86dd' : '0800', 'hex')]);
  if (v6) {
    const ip = Buffer.alloc(40);
    ip.writeUInt32BE(0x60000000, 0);
    ip.writeUInt16BE(l4.length, 4);
    ip[6] = proto;
    ip[7] = 64;
    src.copy(ip, 8);
    dst.copy(ip, 24);
    return Buffer.concat([eth, ip, l4]);
  }
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + l4.length, 2);
  ip.writeUInt16BE(id, 4);
  ip.writeUInt16BE(0x4000, 6); // DF
  ip[8] = 64;
  ip[9] = proto;
  src.copy(ip, 12);
  dst.copy(ip, 16);
  ip.writeUInt16BE(0xffff - fold(sum16(ip)), 10);
  return Buffer.concat([eth, ip, l4]);
}

function udp(b: Bed, v6: boolean, sport: number, dport: number, payload: Buffer, id = 0): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt16BE(8 + payload.length, 4);
  return packet(b, v6, 17, Buffer.concat([h, payload]), 6, id);
}

function tcp(
  b: Bed,
  v6: boolean,
  sport: number,
  dport: number,
  seq: number,
  ack: number,
  flags: number,
  payload = Buffer.alloc(0),
): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt32BE(seq >>> 0, 4);
  h.writeUInt32BE(ack >>> 0, 8);
  h[12] = 5 << 4;
  h[13] = flags;
  h.writeUInt16BE(65535, 14);
  return packet(b, v6, 6, Buffer.concat([h, payload]), 16);
}

/** A node program in the namespace; resolves with its last stdout line once it printed `ready` first. */
function inNs(ns: string, code: string): { ready: Promise<void>; result: Promise<string> } {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let readyResolve: () => void = () => {};
  const ready = new Promise<void>((r) => (readyResolve = r));
  p.stdout.on('data', (d) => {
    out += d;
    if (out.startsWith('ready')) readyResolve();
  });
  p.stderr.on('data', (d) => (err += d));
  const result = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => p.kill('SIGKILL'), 20_000);
    p.on('close', (c) => {
      clearTimeout(timer);
      if (c === 0) resolve(out.trim().split('\n').pop()!);
      else reject(new Error(`program in ${ns} exited ${c}: ${err}${out}`));
    });
  });
  return { ready, result };
}

const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';

  test(`${fam} UDP: a run of equal-size datagrams is written as one frame; the socket gets every datagram`, async (t) => {
    const b = bed(t);
    const addr = v6 ? NS_IP6 : NS_IP4;
    // Two flows interleaved in runs, and sizes that break runs: [20 × 1200 + 500], [5 × 1200], [3 × 300], [1 × 1200].
    const plan: Array<[number, number]> = [
      ...Array.from({ length: 20 }, () => [4001, 1200] as [number, number]),
      [4001, 500],
      ...Array.from({ length: 5 }, () => [4002, 1200] as [number, number]),
      ...Array.from({ length: 3 }, () => [4001, 300] as [number, number]),
      [4002, 1200],
    ];
    const server = inNs(
      b.ns,
      `const s = require('dgram').createSocket('${v6 ? 'udp6' : 'udp4'}'); const got = [];
       s.on('message', (m, r) => { got.push([r.port, m.length, require('crypto').createHash('sha256').update(m).digest('hex')]);
         if (got.length === ${plan.length}) { console.log(JSON.stringify(got)); s.close(); } });
       s.bind(5000, '${addr}', () => console.log('ready'));`,
    );
    await server.ready;
    const payloads = plan.map(([, len], i) => {
      const p = randomBytes(len);
      p.writeUInt16BE(i, 0);
      return p;
    });
    const before = b.tap.stats;
    for (const [i, [sport]] of plan.entries()) b.tap.write(udp(b, v6, sport, 5000, payloads[i], i));
    b.tap.flush();
    const got = JSON.parse(await server.result) as Array<[number, number, string]>;
    t.deepEqual(
      got,
      plan.map(([sport], i) => [sport, payloads[i].length, digest(payloads[i])]),
      'every datagram, byte-exact, in order',
    );
    const s = b.tap.stats;
    const frames = s.txFrames - before.txFrames;
    const writes = (s.txWrites ?? 0) - (before.txWrites ?? 0);
    const coalesced = (s.txCoalesced ?? 0) - (before.txCoalesced ?? 0);
    t.is(frames, plan.length);
    t.is(coalesced, 21 + 5 + 3, 'the three runs were coalesced; the lone datagram was not');
    t.is(writes, 4, 'one write per run, one for the lone datagram');
    t.is(s.txDropped, 0);
  });

  test(`${fam}: a sparse flow's frame is written ahead of a bulk flow's batch; each flow keeps its order`, async (t) => {
    // A receive batch with a bulk flow (here 40 datagrams of 1200 bytes) and one small datagram of another flow
    // that arrived in the middle: the small one is written first (native/sparse.h), so it does not wait for the
    // stack to take the bulk; the bulk flow's datagrams stay in order (and now make one coalesced run).
    const b = bed(t);
    const addr = v6 ? NS_IP6 : NS_IP4;
    const plan: Array<[number, number]> = [
      ...Array.from({ length: 30 }, () => [4101, 1200] as [number, number]),
      [4102, 64],
      ...Array.from({ length: 10 }, () => [4101, 1200] as [number, number]),
    ];
    const server = inNs(
      b.ns,
      `const s = require('dgram').createSocket('${v6 ? 'udp6' : 'udp4'}'); const got = [];
       s.on('message', (m, r) => { got.push([r.port, m.readUInt16BE(0)]);
         if (got.length === ${plan.length}) { console.log(JSON.stringify(got)); s.close(); } });
       s.bind(5002, '${addr}', () => console.log('ready'));`,
    );
    await server.ready;
    const before = b.tap.stats;
    for (const [i, [sport, len]] of plan.entries()) {
      const p = randomBytes(len);
      p.writeUInt16BE(i, 0);
      b.tap.write(udp(b, v6, sport, 5002, p, i));
    }
    b.tap.flush();
    const got = JSON.parse(await server.result) as Array<[number, number]>;
    t.deepEqual(got[0], [4102, 30], 'the small datagram reached its socket first');
    t.deepEqual(
      got.slice(1),
      plan.flatMap(([sport], i) => (sport === 4101 ? [[4101, i]] : [])),
      "the bulk flow's 40 datagrams, in the order written",
    );
    const s = b.tap.stats;
    t.is((s.txSparseFirst ?? 0) - (before.txSparseFirst ?? 0), 1, 'one frame counted as written ahead');
    t.is((s.txWrites ?? 0) - (before.txWrites ?? 0), 2, 'the small datagram, then one coalesced run of 40');
    t.is(s.txDropped, 0);
  });

  test(`${fam}: with readBetween the echo reply to a ping written ahead of bulk is read before the bulk is written`, async (t) => {
    // The daemon's receive path: a batch with a bulk flow and a ping. The echo request is written first, the TAP
    // is read right then (the kernel answered inside that write), and only then the bulk. The read runs our
    // handler in the middle of flush(); the handler writes to the same TAP and flushes (nested), as a daemon may.
    let inFlush = false;
    let replyDuringFlush = null as number | null; // frames written when the reply reached the handler
    let nestedWritten = false;
    let base = 0;
    const isReply = (f: Buffer) =>
      v6
        ? f.readUInt16BE(12) === 0x86dd && f[20] === 58 && f[54] === 129
        : f.readUInt16BE(12) === 0x0800 && f[23] === 1 && f[34] === 0;
    const b: Bed = bed(t, (f) => {
      if (!isReply(f) || !inFlush || replyDuringFlush !== null) return;
      replyDuringFlush = b.tap.stats.txFrames - base;
      const p = randomBytes(200);
      p.writeUInt16BE(999, 0);
      b.tap.write(udp(b, v6, 4202, 5003, p, 999));
      b.tap.flush(); // nested: the outer batch is still being written
      nestedWritten = true;
    });
    b.tap.readBetween = true;
    const addr = v6 ? NS_IP6 : NS_IP4;
    const BULK = 40;
    const server = inNs(
      b.ns,
      `const s = require('dgram').createSocket('${v6 ? 'udp6' : 'udp4'}'); const got = [];
       s.on('message', (m) => { got.push(m.readUInt16BE(0));
         if (got.length === ${BULK + 1}) { console.log(JSON.stringify(got)); s.close(); } });
       s.bind(5003, '${addr}', () => console.log('ready'));`,
    );
    await server.ready;
    base = b.tap.stats.txFrames;
    const echo = Buffer.alloc(64);
    echo[0] = v6 ? 128 : 8;
    echo.writeUInt16BE(0x4242, 4);
    echo.writeUInt16BE(1, 6);
    const frames: Buffer[] = [];
    for (let i = 0; i < BULK; i++) {
      const p = randomBytes(1200);
      p.writeUInt16BE(i, 0);
      frames.push(udp(b, v6, 4201, 5003, p, i));
      if (i === 20) {
        const f = packet(b, v6, v6 ? 58 : 1, Buffer.from(echo), 2);
        if (!v6) {
          f.writeUInt16BE(0, 36);
          f.writeUInt16BE(0xffff - fold(sum16(f.subarray(34))), 36);
        }
        frames.push(f);
      }
    }
    for (const f of frames) b.tap.write(f);
    inFlush = true;
    b.tap.flush();
    inFlush = false;
    t.is(replyDuringFlush, 1, 'the reply was read while only the echo request had been written');
    t.true(nestedWritten, 'the handler wrote and flushed in the middle of the batch');
    const got = JSON.parse(await server.result) as number[];
    t.deepEqual(
      got.filter((x) => x !== 999),
      Array.from({ length: BULK }, (_, i) => i),
      'the bulk arrived whole and in order',
    );
    t.true(got.includes(999), 'the frame written from inside the batch arrived too');
    t.is(b.tap.stats.txDropped, 0);
  });

  test(`${fam} TCP: in-order segments are written as one frame; the application gets the bytes exactly`, async (t) => {
    const b = bed(t);
    const addr = v6 ? NS_IP6 : NS_IP4;
    const server = inNs(
      b.ns,
      `const h = require('crypto').createHash('sha256'); let n = 0;
       const srv = require('net').createServer((c) => { c.on('data', (d) => { h.update(d); n += d.length; });
         c.on('end', () => { console.log(JSON.stringify({ n, sha: h.digest('hex') })); c.end(); srv.close(); }); });
       srv.listen(5001, '${addr}', () => console.log('ready'));`,
    );
    await server.ready;
    const sport = 40_000 + (randomBytes(2).readUInt16BE(0) % 20_000);
    let seq = randomBytes(4).readUInt32BE(0);
    b.tap.write(tcp(b, v6, sport, 5001, seq, 0, 0x02)); // SYN
    b.tap.flush();
    seq = (seq + 1) >>> 0;
    const synAck = (f: Buffer): boolean => {
      const l4 = v6 ? 54 : 34;
      return f.readUInt16BE(12) === (v6 ? 0x86dd : 0x0800) && f[l4 + 13] === 0x12 && f.readUInt16BE(l4) === 5001;
    };
    t.true(await until(() => b.read.some(synAck), 5000), 'the kernel answered the SYN');
    const sa = b.read.find(synAck)!;
    const l4 = v6 ? 54 : 34;
    const ack = (sa.readUInt32BE(l4 + 4) + 1) >>> 0;
    b.tap.write(tcp(b, v6, sport, 5001, seq, ack, 0x10));
    // 40 segments of 1000 bytes in one batch (the last with PSH), then FIN in the next.
    const data = randomBytes(40_000);
    const before = b.tap.stats;
    for (let i = 0; i < 40; i++) {
      b.tap.write(
        tcp(b, v6, sport, 5001, seq + i * 1000, ack, i === 39 ? 0x18 : 0x10, data.subarray(i * 1000, (i + 1) * 1000)),
      );
    }
    b.tap.flush();
    const mid = b.tap.stats;
    b.tap.write(tcp(b, v6, sport, 5001, seq + 40_000, ack, 0x11)); // FIN|ACK
    b.tap.flush();
    const r = JSON.parse(await server.result) as { n: number; sha: string };
    t.is(r.n, data.length);
    t.is(r.sha, digest(data), 'the bytes the application read are the bytes written');
    const writes = (mid.txWrites ?? 0) - (before.txWrites ?? 0);
    const coalesced = (mid.txCoalesced ?? 0) - (before.txCoalesced ?? 0);
    t.is(mid.txFrames - before.txFrames, 41, 'the ACK and 40 data segments');
    t.is(coalesced, 40, 'all 40 data segments went into one frame');
    t.is(writes, 2, 'the bare ACK, then the coalesced frame');
  });
}

/** TCP checksum of a frame read from the TAP is right (the addon completes partial ones and cuts TSO frames). */
function tcpChecksumOk(f: Buffer, v6: boolean): boolean {
  const ipl = v6 ? 40 : 20;
  const ip = f.subarray(14);
  const l4 = ip.subarray(ipl);
  const pseudo = v6 ? sum16(ip.subarray(8, 40)) : sum16(ip.subarray(12, 20));
  return fold(sum16(l4, pseudo + 6 + l4.length)) === 0xffff;
}

// burst: the kernel's first flight (initial window 200 segments, window scaling on) queues in the TAP while the
// test holds the event loop, more than one turn may take (TAP_FRAMES_PER_WAKEUP), and a ping's echo request
// queues behind it: the flight is read ahead and held, the request is delivered before any of it (a ping beside
// a TCP stream waited behind the stream's queue in the ring), and the held frames come over several loop turns
// (a TCP stream must not hold the loop while the mesh's socket waits: the reply to a ping beside it waited there).
for (const [v6, burst] of [
  [false, false],
  [true, false],
  [false, true],
]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  const what = burst
    ? 'a burst of TSO frames is read ahead: an echo request queued behind it goes first; the burst follows over several loop turns, byte-exact'
    : 'large (TSO) frames are cut into MTU-size segments with valid checksums';
  test(`${fam} TCP from the kernel: ${what}`, async (t) => {
    const b = bed(t);
    const ourAddr = v6 ? OUR_IP6 : OUR_IP4;
    const BYTES = burst ? 1_000_000 : 300_000;
    if (burst) sh('ip', '-n', b.ns, 'route', 'add', `${ourAddr}/32`, 'dev', b.tap.name, 'initcwnd', '200');
    const client = inNs(
      b.ns,
      `const c = require('net').connect({ host: '${ourAddr}', port: 6001 }, () => { console.log('ready');
         c.end(Buffer.alloc(${BYTES}, 7).map((_, i) => (i * 13) & 255)); });
       c.on('error', (e) => { console.error(e.message); process.exit(1); }); c.on('close', () => console.log('done'));`,
    );
    const l4o = v6 ? 54 : 34;
    const isTcp = (f: Buffer) => f.readUInt16BE(12) === (v6 ? 0x86dd : 0x0800) && f[v6 ? 20 : 23] === 6;
    // Answer the SYN (MSS 1400, window scaling off: 64 KB in flight at most), then ACK whatever arrives.
    t.true(await until(() => b.read.some((f) => isTcp(f) && f[l4o + 13] === 0x02), 5000), 'the kernel sent a SYN');
    const syn = b.read.find((f) => isTcp(f) && f[l4o + 13] === 0x02)!;
    const cport = syn.readUInt16BE(l4o);
    const isn = syn.readUInt32BE(l4o + 4);
    const ourIsn = 1000;
    const synAck = Buffer.concat([
      Buffer.alloc(20),
      Buffer.from([2, 4, 0x05, 0x78]), // MSS 1400
      Buffer.from(burst ? [1, 3, 3, 7] : []), // window scale 7: 8 MB in flight
    ]);
    synAck.writeUInt16BE(6001, 0);
    synAck.writeUInt16BE(cport, 2);
    synAck.writeUInt32BE(ourIsn, 4);
    synAck.writeUInt32BE((isn + 1) >>> 0, 8);
    synAck[12] = (synAck.length / 4) << 4;
    synAck[13] = 0x12;
    synAck.writeUInt16BE(65535, 14);
    b.tap.write(packet(b, v6, 6, synAck, 16));
    if (burst) {
      // A SYN's window is never scaled (RFC 7323): without this update the first flight is 64 KB, one TSO frame,
      // and whether later flights queue past one turn is up to timing. Scaled by 2^7 it opens 8 MB at once, so the
      // first flight is the initial window's 200 segments.
      b.tap.write(tcp(b, v6, 6001, cport, ourIsn + 1, (isn + 1) >>> 0, 0x10));
    }
    b.tap.flush();
    if (burst) {
      execFileSync('sleep', ['0.3']); // the loop held: the first flight queues in the TAP's ring
      // ...and an echo request behind it (no answer: ping exits 1 after its 0.2 s wait)
      const pinged = spawnSync('ip', ['netns', 'exec', b.ns, 'ping', '-n', '-c', '1', '-W', '0.2', ourAddr]);
      t.is(pinged.error, undefined, 'ping ran');
    }
    const data = Buffer.alloc(BYTES);
    let got = 0;
    let seen = b.read.length;
    let finished = false;
    let maxFrame = 0;
    let badChecksums = 0;
    const deadline = Date.now() + 15_000;
    while (!finished && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2));
      for (; seen < b.read.length; seen++) {
        const f = b.read[seen];
        if (!isTcp(f) || f.readUInt16BE(l4o) !== cport) continue;
        maxFrame = Math.max(maxFrame, f.length);
        if (!tcpChecksumOk(f, v6)) badChecksums++;
        const thl = (f[l4o + 12] >> 4) * 4;
        const payload = f.subarray(l4o + thl);
        const off = (f.readUInt32BE(l4o + 4) - isn - 1) >>> 0;
        if (off === got && payload.length > 0) {
          payload.copy(data, off);
          got += payload.length;
        }
        if (f[l4o + 13] & 0x01 && off + payload.length === got) finished = true;
      }
      b.tap.write(
        tcp(b, v6, 6001, cport, ourIsn + 1, (isn + 1 + got + (finished ? 1 : 0)) >>> 0, finished ? 0x11 : 0x10),
      );
      b.tap.flush();
    }
    t.true(finished, `${got} of ${BYTES} bytes arrived in order`);
    t.true(data.equals(Buffer.alloc(BYTES, 7).map((_, i) => (i * 13) & 255)), 'byte-exact');
    t.is(badChecksums, 0, 'every segment read has a valid TCP checksum');
    t.true(maxFrame <= 14 + 1500, `largest frame ${maxFrame} bytes (MTU 1500)`);
    t.true((b.tap.stats.rxSegmented ?? 0) > 0, `${b.tap.stats.rxSegmented} frames were cut from TSO frames`);
    if (burst) {
      const full = b.tap.stats.rxWakeupsFull ?? 0;
      t.true(full > 0, `${full} read turns left held frames for the next loop turn`);
      const isEcho = (f: Buffer) => f.readUInt16BE(12) === 0x0800 && f[23] === 1 && f[34] === 8;
      const echoAt = b.read.findIndex(isEcho);
      t.true(echoAt >= 0, 'the echo request was read');
      const dataBefore = b.read
        .slice(0, echoAt)
        .filter((f) => isTcp(f) && f.length > l4o + (f[l4o + 12] >> 4) * 4).length;
      t.is(
        dataBefore,
        0,
        `the echo request was delivered before the flight queued ahead of it (${dataBefore} segments)`,
      );
      t.true((b.tap.stats.rxAhead ?? 0) >= 1, `${b.tap.stats.rxAhead} frames went ahead of held ones`);
    }
    await client.result;
  });
}
