// A process that only receives: binds the daemon's UDP socket (src/udp/dgram.ts, native receive path) on
// loopback, prints its port, touches every datagram as the mesh does (a view per datagram, a read of its header)
// and, once `bytes` have arrived (or 2 s pass without any), prints what V8's collector did meanwhile as JSON:
// { received, major, minor, scavenges }. Used by test/system/udp-receive.test.ts (the pacing of src/heap.ts).
//   node --import tsx test/helpers/gc-receiver.ts BYTES
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { DgramSocket } from '../../src/udp/dgram.ts';

const want = Number(process.argv[2]);

const gcs = { major: 0, minor: 0 };
const observer = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind;
    if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) gcs.major++;
    else if (kind === constants.NODE_PERFORMANCE_GC_MINOR) gcs.minor++;
  }
});
const sock = await DgramSocket.bind('127.0.0.1', 0, { socketBufferBytes: 4 * 1024 * 1024 });
let received = 0;
let first = 0;
let lastAt = Date.now();
sock.start((msg) => {
  received += msg.length;
  first ^= msg[0];
  lastAt = Date.now();
});
observer.observe({ entryTypes: ['gc'] });
process.stdout.write(`${JSON.stringify({ port: sock.port, receivePath: sock.stats?.receivePath })}\n`);
const timer = setInterval(() => {
  if (received < want && Date.now() - lastAt < 2000) return;
  clearInterval(timer);
  // Entries reach the observer on a later turn: let them arrive before reporting.
  setTimeout(async () => {
    observer.disconnect();
    const report = { received, ...gcs, scavenges: sock.stats?.pacedScavenges ?? 0, first }; // one moment's figures
    await sock.close();
    process.stdout.write(`${JSON.stringify(report)}\n`);
  }, 100);
}, 20);
