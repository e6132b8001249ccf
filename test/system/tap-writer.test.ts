// The TAP writer thread (native/worker.h, native/tap.cc with writerThread): writes leave the event loop for a
// thread of the TAP's own, small batches still go inline when it is idle, order is kept across both, EAGAIN
// is waited out by the thread (frames beyond the queue bound are dropped and counted), and close() stops
// the thread at once; a queue whose delay is already too long refuses new batches whole. On an AF_UNIX datagram socket pair (the addon's test hook), which keeps frame
// boundaries like a TAP and says EAGAIN when its buffer is full. Needs the built addon.
import fs from 'node:fs';
import { TAP_WRITE_QUEUE_MAX } from '../../src/constants.ts';
import { loadTapAddon, NativeTap } from '../../src/tap/native.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const test = testIf(missingFor({ addon: true }));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

const threads = (): number => fs.readdirSync('/proc/self/task').length;

function frame(i: number, len = 600): Buffer {
  const f = Buffer.alloc(len, i & 0xff);
  f.writeUInt32BE(i, 0);
  return f;
}

test('a writer thread runs while the TAP is open and is gone after close()', (t) => {
  const before = threads();
  const [fa, fb] = loadTapAddon().socketPair(1 << 20);
  const a = NativeTap._fromFd(fa, { writerThread: true });
  t.is(threads(), before + 1, 'one thread more');
  a.close();
  t.is(threads(), before, 'joined at close()');
  const plain = NativeTap._fromFd(fb);
  t.is(threads(), before, 'no thread without writerThread');
  plain.close();
});

test('order is kept across inline writes (small batches) and queued ones (large batches)', async (t) => {
  const [fa, fb] = loadTapAddon().socketPair(4 << 20);
  const a = NativeTap._fromFd(fa, { writerThread: true });
  const b = NativeTap._fromFd(fb);
  t.teardown(() => {
    a.close();
    b.close();
  });
  const seen: number[] = [];
  b.start({ frame: (f) => void seen.push(f.readUInt32BE(0)), batchEnd: () => {} });
  let next = 0;
  // Batch sizes mix both paths: up to 32 frames (kInlineFrames) go inline when the thread is idle, the rest
  // through the thread.
  for (const size of [1, 200, 1, 2, 500, 3, 1, 1, 300, 4, 50, 1]) {
    for (let k = 0; k < size; k++) t.true(a.write(frame(next++)));
    a.flush();
    if (size === 1) await new Promise((r) => setImmediate(r));
  }
  t.true(await until(() => seen.length >= next, 10_000), `${seen.length} of ${next} read`);
  t.deepEqual(seen, [...Array(next).keys()], 'every frame, in the order written');
  const s = a.stats;
  t.is(s.txFrames, next);
  t.is(s.txDropped, 0);
  t.is(s.txWrites, next);
});

test('EAGAIN: the thread waits for room, frames beyond the queue bound are dropped and counted, the rest arrive in order', async (t) => {
  const [fa, fb] = loadTapAddon().socketPair(64 * 1024);
  const a = NativeTap._fromFd(fa, { writerThread: true });
  const b = NativeTap._fromFd(fb);
  t.teardown(() => {
    a.close();
    b.close();
  });
  const N = 5000;
  // Batches of 256 (as the mesh hands them over): once the queue looks full, write() refuses the rest.
  for (let i = 0; i < N; i++) {
    a.write(frame(i, 1400));
    if (i % 256 === 255) a.flush();
  }
  a.flush();
  // Nobody reads yet: the socket buffer fills, the thread waits, the queue holds at most TAP_WRITE_QUEUE_MAX.
  await new Promise((r) => setTimeout(r, 200));
  const d = a.detail;
  const s = a.stats;
  t.true(d.txEagain >= 1, 'the socket buffer filled up');
  t.true(d.txQueued <= TAP_WRITE_QUEUE_MAX, `${d.txQueued} queued`);
  t.is(s.txFrames + d.txQueued + s.txDropped, N, 'every frame written, queued or dropped');
  t.true(s.txDropped > 0, 'frames beyond the bound were dropped');
  const seen: number[] = [];
  b.start({ frame: (f) => void seen.push(f.readUInt32BE(0)), batchEnd: () => {} });
  const delivered = N - s.txDropped;
  t.true(await until(() => seen.length >= delivered, 10_000), `${seen.length} of ${delivered}`);
  // The queue was full a moment ago and nothing has read the counters since: a new frame must still be taken
  // (the figure write() checks is only as fresh as the last batch; nothing called writeBatch while it refused).
  t.true(a.write(frame(N, 1400)), 'accepted after the drain');
  a.flush();
  t.is(a.detail.txQueued, 0);
  t.is(a.stats.txFrames, delivered + 1, 'the drained ones and the one after');
  for (let i = 1; i < seen.length; i++) if (seen[i] <= seen[i - 1]) t.fail(`out of order at ${i}`);
  t.deepEqual(seen.slice(0, 10), [...Array(10).keys()], 'the first frames are the first written');
  t.true(await until(() => seen.includes(N), 5000), 'the frame written after the drain arrives');
});

test('close() while the thread waits on a full socket returns at once and counts the queue as dropped', (t) => {
  const [fa, fb] = loadTapAddon().socketPair(16 * 1024);
  const a = NativeTap._fromFd(fa, { writerThread: true });
  const b = NativeTap._fromFd(fb); // never read
  for (let i = 0; i < 500; i++) a.write(frame(i, 1400));
  a.flush();
  const started = Date.now();
  a.close();
  const ms = Date.now() - started;
  t.true(ms < 500, `close() took ${ms} ms`);
  const s = a.stats;
  t.is(s.txFrames + s.txDropped, 500, JSON.stringify(s));
  b.close();
});

test('a queue already too slow refuses a new batch whole: none of its frames arrive, the ones before it all do', async (t) => {
  const [fa, fb] = loadTapAddon().socketPair(16 * 1024);
  const a = NativeTap._fromFd(fa, { writerThread: true });
  t.teardown(() => {
    a.close();
    fs.closeSync(fb);
  });
  // Three batches of 50 (each goes to the thread): the socket buffer holds a few frames, so the thread blocks
  // in batch A's writes while B and C wait in its queue.
  let next = 0;
  for (let b = 0; b < 3; b++) {
    for (let k = 0; k < 50; k++) a.write(frame(next++, 1400));
    a.flush();
  }
  await new Promise((r) => setTimeout(r, 150)); // B and C have now waited ~150 ms (delay::kQueueDelayMaxNs: 20)
  // Read until the thread is into batch B (it took B after 150 ms of waiting), then stop reading: it blocks in B
  // again with C still queued behind it.
  const seen: number[] = [];
  const buf = Buffer.alloc(2048);
  const read = (upTo: number, ms: number): void => {
    const end = Date.now() + ms;
    while (seen.length < upTo && Date.now() < end) {
      try {
        const n = fs.readSync(fb, buf, 0, buf.length, null);
        if (n >= 4) seen.push(buf.readUInt32BE(0));
      } catch {
        /* EAGAIN: the thread has not written the next one yet */
      }
    }
  };
  read(55, 2000);
  t.is(seen.length, 55, 'the thread moved on to the second batch');
  await new Promise((r) => setTimeout(r, 20));
  const dropped0 = a.stats.txDropped;
  for (let k = 0; k < 50; k++) a.write(frame(1000 + k, 1400)); // batch D
  a.flush();
  t.is(a.stats.txDropped - dropped0, 50, 'batch D refused whole, counted as dropped');
  read(150, 5000);
  t.deepEqual(seen, [...Array(150).keys()], 'A, B and C arrive complete and in order');
  await new Promise((r) => setTimeout(r, 50));
  read(151, 50);
  t.is(seen.length, 150, 'nothing of batch D arrives');
  // The queue is empty again: the next batch is taken.
  for (let k = 0; k < 5; k++) a.write(frame(2000 + k, 600));
  a.flush();
  read(155, 2000);
  t.deepEqual(seen.slice(150), [2000, 2001, 2002, 2003, 2004], 'a batch after the queue drained is written');
});

test('a long write batch yields the CPU every writeYieldFrames frames (not with a writer thread), and every frame arrives in order', async (t) => {
  const [fa, fb] = loadTapAddon().socketPair(4 << 20);
  const a = NativeTap._fromFd(fa, { writeYieldFrames: 32 });
  const b = NativeTap._fromFd(fb);
  const [fc, fd] = loadTapAddon().socketPair(4 << 20);
  const threaded = NativeTap._fromFd(fc, { writerThread: true, writeYieldFrames: 32 });
  const sink = NativeTap._fromFd(fd);
  t.teardown(() => {
    for (const x of [a, b, threaded, sink]) x.close();
  });
  const seen: number[] = [];
  b.start({ frame: (f) => void seen.push(f.readUInt32BE(0)), batchEnd: () => {} });
  let next = 0;
  const batch = (tap: NativeTap, size: number): void => {
    for (let k = 0; k < size; k++) tap.write(frame(next++));
    tap.flush();
  };
  batch(a, 32);
  t.is(a.detail.txYields, 0, 'a batch of 32 is written in one go');
  batch(a, 100);
  t.is(a.detail.txYields, 3, 'after frames 32, 64 and 96 of 100');
  t.true(await until(() => seen.length >= 132, 10_000), `${seen.length} of 132 read`);
  t.deepEqual(seen, [...Array(132).keys()]);
  batch(threaded, 100);
  t.true(await until(() => threaded.stats.txFrames >= 100, 10_000));
  t.is(threaded.detail.txYields, 0, 'the writer thread does not yield the event loop');
});
