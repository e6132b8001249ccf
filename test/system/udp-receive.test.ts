// The underlay socket's receive path (src/udp/dgram.ts, native/udp_rx.cc) on real loopback sockets: batches
// of recvmmsg, UDP GRO runs cut back into their datagrams, truncation counted, sources named as node:dgram
// names them, and the fallbacks (dgram's own events when the addon is absent or not asked for, plain
// recvmmsg without GRO). Needs the built addon (`npm run build`); without it the tests fail saying so.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UDP_RX_DATAGRAMS_MAX, YOUNG_GC_AFTER_BYTES } from '../../src/constants.ts';
import { DgramSocket, type DgramOptions } from '../../src/udp/dgram.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Every test here needs the built addon; without it it fails saying so. */
const test = testIf(missingFor({ addon: true }));

interface Received {
  msgs: Buffer[];
  from: string[];
  batches: number[];
}

/** A socket on loopback that records every datagram (copied), its source and the size of each batch. */
async function receiver(opts: DgramOptions = {}, address = '127.0.0.1'): Promise<{ sock: DgramSocket } & Received> {
  const sock = await DgramSocket.bind(address, 0, opts);
  const r: Received = { msgs: [], from: [], batches: [] };
  let inBatch = 0;
  sock.start(
    (msg, addr, port) => {
      r.msgs.push(Buffer.from(msg));
      r.from.push(`${addr}|${port}`);
      inBatch++;
    },
    () => {
      r.batches.push(inBatch);
      inBatch = 0;
    },
  );
  return { sock, ...r };
}

async function until(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

/** Datagram i: its index in the first 4 bytes, then a pattern, `len` bytes in all. */
function datagram(i: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let k = 0; k < len; k++) b[k] = (i * 7 + k) & 0xff;
  if (len >= 4) b.writeUInt32BE(i, 0);
  return b;
}

/** Runs an ESM snippet in a child node (tsx) in cwd; resolves with its stdout once it exited (code 0). */
function child(code: string, cwd: string): Promise<{ out: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import=tsx', '--input-type=module', '-e', code], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let o = '';
    let e = '';
    p.stdout.on('data', (d) => (o += d));
    p.stderr.on('data', (d) => (e += d));
    p.on('close', (c) =>
      c === 0 ? resolve({ out: o, ms: Date.now() - started }) : reject(new Error(`child exited ${c}: ${e}`)),
    );
  });
}

test('batches: 3,000 datagrams arrive in order and byte-exact, no batch larger than UDP_RX_DATAGRAMS_MAX', async (t) => {
  const rx = await receiver({ gro: false, socketBufferBytes: 8 << 20 });
  const tx = await DgramSocket.bind('127.0.0.1', 0);
  t.teardown(async () => {
    await rx.sock.close();
    await tx.close();
  });
  t.is(rx.sock.stats?.receivePath, 'native');
  // Sent in bursts of 500 (sendmmsg) while the receiver is not reading (a socket buffer deep enough for all):
  // many datagrams wait per wake-up, more than one batch's worth.
  const sent: Buffer[] = [];
  for (let burst = 0; burst < 6; burst++) {
    const msgs = Array.from({ length: 500 }, (_, k) => datagram(burst * 500 + k, 100 + ((burst * 500 + k) % 900)));
    sent.push(...msgs);
    tx.sendBatch(msgs, msgs.length, rx.sock.port, '127.0.0.1');
  }
  t.true(await until(() => rx.msgs.length >= sent.length), `${rx.msgs.length} of ${sent.length} arrived`);
  t.is(rx.msgs.length, sent.length);
  for (let i = 0; i < sent.length; i++) if (!rx.msgs[i].equals(sent[i])) t.fail(`datagram ${i} differs`);
  t.true(
    rx.batches.every((n) => n > 0 && n <= UDP_RX_DATAGRAMS_MAX),
    `batch sizes ${rx.batches.join(',')}`,
  );
  t.is(
    rx.batches.reduce((a, b) => a + b, 0),
    sent.length,
    'every datagram was in exactly one batch',
  );
  t.true(rx.batches.length >= 3, `${sent.length} datagrams need at least 3 batches of ${UDP_RX_DATAGRAMS_MAX}`);
  const s = rx.sock.stats!;
  t.is(s.rxDatagrams, sent.length);
  t.is(s.rxBatches, rx.batches.length);
  t.true(s.rxCalls < sent.length / 4, `${s.rxCalls} recvmmsg calls for ${sent.length} datagrams`);
  t.log(`${sent.length} datagrams in ${s.rxBatches} batches, ${s.rxCalls} recvmmsg calls`);
});

test('UDP GRO: runs of equal-size datagrams arrive coalesced and are cut back into the datagrams that were sent', async (t) => {
  const rx = await receiver();
  const tx = await DgramSocket.bind('127.0.0.1', 0);
  t.teardown(async () => {
    await rx.sock.close();
    await tx.close();
  });
  t.true(rx.sock.stats?.gro, 'UDP_GRO is on (Linux >= 5.0)');
  // Runs as the mesh sends them: full-size datagrams with a shorter last one (one UDP GSO send each), then
  // single datagrams of other sizes, then a run whose last datagram is only 1 byte.
  const sent: Buffer[] = [];
  const run = (n: number, size: number, last: number) => {
    const msgs = Array.from({ length: n }, (_, k) => datagram(sent.length + k, k === n - 1 ? last : size));
    sent.push(...msgs);
    tx.sendBatch(msgs, msgs.length, rx.sock.port, '127.0.0.1');
  };
  run(45, 1444, 333);
  run(3, 60, 1200);
  run(20, 1000, 1000);
  run(30, 700, 1);
  t.true(await until(() => rx.msgs.length >= sent.length), `${rx.msgs.length} of ${sent.length}`);
  t.deepEqual(
    rx.msgs.map((m) => m.length),
    sent.map((m) => m.length),
    'datagram sizes, in order',
  );
  for (let i = 0; i < sent.length; i++) t.true(rx.msgs[i].equals(sent[i]), `datagram ${i} byte-exact`);
  const s = rx.sock.stats!;
  t.true(s.rxCoalesced > 0, `${s.rxCoalesced} datagrams came in coalesced runs`);
  t.true(s.rxCalls <= 4, `${s.rxCalls} recvmmsg calls for ${sent.length} datagrams`);
  t.log(`${sent.length} datagrams: ${s.rxCoalesced} coalesced, ${s.rxCalls} recvmmsg calls, ${s.rxBatches} batches`);
});

test('GRO unavailable (or not asked for): plain recvmmsg, the kernel cuts GSO runs, every datagram arrives', async (t) => {
  const rx = await receiver({ gro: false });
  const tx = await DgramSocket.bind('127.0.0.1', 0);
  t.teardown(async () => {
    await rx.sock.close();
    await tx.close();
  });
  t.false(rx.sock.stats?.gro);
  const msgs = Array.from({ length: 40 }, (_, k) => datagram(k, k === 39 ? 10 : 1400));
  tx.sendBatch(msgs, msgs.length, rx.sock.port, '127.0.0.1');
  t.true(await until(() => rx.msgs.length >= msgs.length));
  for (let i = 0; i < msgs.length; i++) t.true(rx.msgs[i].equals(msgs[i]));
  t.is(rx.sock.stats?.rxCoalesced, 0);
  t.is(rx.sock.stats?.receivePath, 'native');
});

test('a datagram longer than the receive buffer is counted as truncated and dropped; the next ones arrive', async (t) => {
  for (const gro of [false, true]) {
    const rx = await receiver({ gro, rxBufferBytes: 1024 });
    const tx = await DgramSocket.bind('127.0.0.1', 0);
    const plain = dgram.createSocket('udp4');
    t.teardown(async () => {
      await rx.sock.close();
      await tx.close();
      plain.close();
    });
    await new Promise<void>((r) => plain.bind(0, '127.0.0.1', () => r()));
    const send = (b: Buffer) => new Promise<void>((r) => plain.send(b, rx.sock.port, '127.0.0.1', () => r()));
    await send(datagram(1, 100));
    await send(datagram(2, 3000)); // too long for 1024 bytes
    await send(datagram(3, 1024)); // exactly fits
    // With GRO: a coalesced run longer than the buffer is one truncated message.
    if (gro) tx.sendBatch([datagram(4, 600), datagram(5, 600)], 2, rx.sock.port, '127.0.0.1');
    await send(datagram(6, 50));
    t.true(await until(() => rx.msgs.some((m) => m.readUInt32BE(0) === 6)), `gro ${gro}`);
    const ids = rx.msgs.map((m) => m.readUInt32BE(0));
    t.deepEqual(ids, [1, 3, 6], `gro ${gro}: only the datagrams that fit arrive`);
    t.true(rx.msgs[1].equals(datagram(3, 1024)));
    t.is(rx.sock.stats?.rxTruncated, gro ? 2 : 1, `gro ${gro}: truncated messages counted`);
    t.is(rx.sock.stats?.rxErrors, 0);
  }
});

test('sources: each datagram names its sender as node:dgram does, several senders in one batch, IPv4 and IPv6', async (t) => {
  for (const [family, listen, target] of [
    [4, '127.0.0.1', '127.0.0.1'],
    [6, '::1', '::1'],
    [6, '::', '127.0.0.1'], // dual stack: IPv4 senders appear as ::ffff:127.0.0.1, as in dgram
  ] as const) {
    const native = await receiver({}, listen);
    const viaDgram = await receiver({ nativeReceive: false }, listen);
    const senders = await Promise.all(
      [0, 1, 2].map(
        () =>
          new Promise<dgram.Socket>((resolve) => {
            const s = dgram.createSocket(target.includes(':') ? 'udp6' : 'udp4');
            s.bind(0, target, () => resolve(s));
          }),
      ),
    );
    t.teardown(async () => {
      await native.sock.close();
      await viaDgram.sock.close();
      for (const s of senders) s.close();
    });
    for (let round = 0; round < 3; round++) {
      for (const [i, s] of senders.entries()) {
        for (const port of [native.sock.port, viaDgram.sock.port]) s.send(datagram(round * 3 + i, 80), port, target);
      }
    }
    t.true(await until(() => native.msgs.length >= 9 && viaDgram.msgs.length >= 9), `family ${family} ${listen}`);
    const expect = native.msgs.map((m) => {
      const i = m.readUInt32BE(0) % 3;
      const a = senders[i].address();
      return `${listen === '::' ? `::ffff:${a.address}` : a.address}|${a.port}`;
    });
    t.deepEqual(native.from, expect, `${listen}: sources`);
    t.deepEqual([...native.from].sort(), [...viaDgram.from].sort(), `${listen}: the same names as dgram's`);
  }
});

test('sources across batches: one sender per batch, alternating and repeating, each datagram names its own', async (t) => {
  // The addon hands the previous batch's sources array out again when a batch's sources are the same: a batch
  // from another sender (or from two) must still name its own.
  const rx = await receiver();
  const senders = await Promise.all(
    [0, 1].map(
      () =>
        new Promise<dgram.Socket>((resolve) => {
          const s = dgram.createSocket('udp4');
          s.bind(0, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  t.teardown(async () => {
    await rx.sock.close();
    for (const s of senders) s.close();
  });
  const order = [0, 0, 1, 1, 1, 0, 1, 0, 0, 1];
  for (const [i, who] of order.entries()) {
    senders[who].send(datagram(i, 64), rx.sock.port, '127.0.0.1');
    t.true(await until(() => rx.msgs.length > i), `datagram ${i} arrived`);
  }
  // Two senders in one batch, then each alone again.
  senders[0].send(datagram(10, 64), rx.sock.port, '127.0.0.1');
  senders[1].send(datagram(11, 64), rx.sock.port, '127.0.0.1');
  t.true(await until(() => rx.msgs.length >= 12));
  senders[1].send(datagram(12, 64), rx.sock.port, '127.0.0.1');
  t.true(await until(() => rx.msgs.length >= 13));
  const who = [...order, 0, 1, 1];
  const expect = rx.msgs.map((m) => `127.0.0.1|${senders[who[m.readUInt32BE(0)]].address().port}`);
  t.deepEqual(rx.from, expect);
});

test('dgram fallback (asked for): the same handler, batchEnd once per event-loop turn', async (t) => {
  // A buffer deep enough for the whole burst (the daemon's default, UDP_RECV_BUFFER_BYTES, is a short queue).
  const rx = await receiver({ nativeReceive: false, socketBufferBytes: 8 << 20 });
  const tx = await DgramSocket.bind('127.0.0.1', 0);
  t.teardown(async () => {
    await rx.sock.close();
    await tx.close();
  });
  t.is(rx.sock.stats?.receivePath, 'dgram');
  const msgs = Array.from({ length: 200 }, (_, k) => datagram(k, 1200));
  tx.sendBatch(msgs, msgs.length, rx.sock.port, '127.0.0.1');
  t.true(await until(() => rx.msgs.length >= msgs.length));
  for (let i = 0; i < msgs.length; i++) t.true(rx.msgs[i].equals(msgs[i]));
  t.true(rx.batches.length < msgs.length, `${rx.batches.length} batch ends for ${msgs.length} datagrams`);
  t.is(
    rx.batches.reduce((a, b) => a + b, 0),
    msgs.length,
  );
});

test('fallback when the addon is absent: the daemon socket receives through dgram', async (t) => {
  // A copy of src/ without build/: the addon cannot load, as on a host where it was never built.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hwf-noaddon-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(path.join(ROOT, 'src'), path.join(dir, 'src'), { recursive: true });
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  const code = `
    import dgram from 'node:dgram';
    import { DgramSocket } from './src/udp/dgram.ts';
    const rx = await DgramSocket.bind('127.0.0.1', 0);
    let n = 0, ends = 0;
    rx.start((m) => { if (m.length === 1000) n++; }, () => ends++);
    const tx = await DgramSocket.bind('127.0.0.1', 0);
    tx.sendBatch(Array.from({ length: 50 }, () => Buffer.alloc(1000, 1)), 50, rx.port, '127.0.0.1');
    const s = dgram.createSocket('udp4');
    for (let i = 0; i < 50; i++) s.send(Buffer.alloc(1000, 2), rx.port, '127.0.0.1');
    const end = Date.now() + 5000;
    while (n < 100 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    console.log(JSON.stringify({ n, ends, stats: rx.stats, txStats: tx.stats }));
    s.close(); await rx.close(); await tx.close();
  `;
  const r = JSON.parse((await child(code, dir)).out.trim().split('\n').pop()!);
  t.is(r.n, 100, 'all 100 datagrams arrived (50 through the fallback send path)');
  t.true(r.ends > 0);
  t.is(r.stats.receivePath, 'dgram');
  t.is(r.txStats.txFallback, 50, 'sendBatch fell back to one dgram send per datagram');
});

test('close(): no more datagrams are delivered, the port is free again, and the process exits', async (t) => {
  const rx = await receiver();
  const port = rx.sock.port;
  const plain = dgram.createSocket('udp4');
  t.teardown(() => plain.close());
  plain.send(datagram(1, 64), port, '127.0.0.1');
  t.true(await until(() => rx.msgs.length === 1));
  await rx.sock.close();
  plain.send(datagram(2, 64), port, '127.0.0.1');
  await new Promise((r) => setTimeout(r, 100));
  t.is(rx.msgs.length, 1, 'nothing after close');
  const again = await DgramSocket.bind('127.0.0.1', port);
  t.is(again.port, port, 'the port was released (no dup of its fd left open)');
  await again.close();
  // A process that received natively and closed its socket has nothing left on its loop.
  const r = await child(
    `
    import { DgramSocket } from './src/udp/dgram.ts';
    const rx = await DgramSocket.bind('127.0.0.1', 0);
    rx.start(async (m) => { console.log(rx.stats.receivePath, m.length); await rx.close(); console.log(Date.now()); });
    const tx = await DgramSocket.bind('127.0.0.1', 0);
    tx.sendBatch([Buffer.alloc(300)], 1, rx.port, '127.0.0.1');
    await tx.close();
  `,
    ROOT,
  );
  const [first, closedAt] = r.out.trim().split('\n');
  t.is(first, 'native 300');
  t.true(Date.now() - Number(closedAt) < 2000, 'exited promptly after close()');
});

/** Runs test/helpers/gc-receiver.ts (env added), sends it 1400-byte datagrams in bursts until it has `bytes`
 *  and exits, and returns its report. */
async function gcReceiver(
  bytes: number,
  env: NodeJS.ProcessEnv,
): Promise<{ received: number; major: number; minor: number; scavenges: number }> {
  const p = spawn(process.execPath, ['--import=tsx', path.join(ROOT, 'test/helpers/gc-receiver.ts'), String(bytes)], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => p.on('close', r));
  while (!out.includes('\n')) {
    if (p.exitCode !== null) throw new Error(`gc-receiver exited ${p.exitCode}: ${err}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const { port } = JSON.parse(out.split('\n')[0]);
  const tx = await DgramSocket.bind('127.0.0.1', 0);
  const burst = Array.from({ length: 64 }, (_, i) => datagram(i, 1400));
  const deadline = Date.now() + 60_000;
  // Loopback drops what the receiver cannot take; bursts go on until it has had `bytes` and reported.
  while (p.exitCode === null && Date.now() < deadline) {
    tx.sendBatch(burst.slice(), burst.length, port, '127.0.0.1');
    await new Promise((r) => setImmediate(r));
  }
  await tx.close();
  const code = await exited;
  if (code !== 0) throw new Error(`gc-receiver exited ${code}: ${err}`);
  return JSON.parse(out.trim().split('\n').pop()!);
}

test('scavenges paced by receive batches: one per YOUNG_GC_AFTER_BYTES received, seen by V8; none when off', async (t) => {
  t.timeout(120_000);
  const bytes = 4 * YOUNG_GC_AFTER_BYTES;
  const on = await gcReceiver(bytes, {});
  t.log(`paced: ${JSON.stringify(on)}`);
  t.true(on.received >= bytes, `received ${on.received} bytes`);
  // Every 16 MB of batches asks for one; the last may fall after the report.
  t.true(on.scavenges >= Math.floor(on.received / YOUNG_GC_AFTER_BYTES) - 1, `${on.scavenges} scavenges asked for`);
  t.true(on.scavenges <= Math.ceil(on.received / YOUNG_GC_AFTER_BYTES), `${on.scavenges} scavenges asked for`);
  t.true(on.minor >= on.scavenges, `V8 reported ${on.minor} scavenges, at least the ${on.scavenges} asked for`);
  const off = await gcReceiver(bytes, { HOMEWIRE_YOUNG_GC: '0' });
  t.log(`HOMEWIRE_YOUNG_GC=0: ${JSON.stringify(off)}`);
  t.true(off.received >= bytes);
  t.is(off.scavenges, 0, 'none asked for when turned off');
});
