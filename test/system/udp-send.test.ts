// The underlay socket's send path (native/udp.cc UdpSender): batches go out from a thread of the socket's
// own, small ones inline when it is idle, in order either way; a path where UDP GSO is refused (a run wider
// than the route's MTU) switches to plain sendmmsg without losing the batch; close() joins the thread.
// Needs the built addon; the GSO test also root and two namespaces (hwf*).
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DgramSocket } from '../../src/udp/dgram.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const test = testIf(missingFor({ addon: true }));
const rootTest = testIf(missingFor({ root: true, programs: { ip: 'iproute2' }, addon: true }));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

const threads = (): number => fs.readdirSync('/proc/self/task').length;

function datagram(i: number, len: number): Buffer {
  const b = Buffer.alloc(len, i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
}

test('batches from the send thread and inline ones arrive in order; close() joins the thread', async (t) => {
  // The receiver shares this event loop, which is busy sending: its buffer holds all 577 (the daemon's default is
  // a short queue, UDP_RECV_BUFFER_BYTES).
  const rx = await DgramSocket.bind('127.0.0.1', 0, { socketBufferBytes: 8 << 20 });
  const seen: number[] = [];
  rx.start((m) => void seen.push(m.readUInt32BE(0)));
  const before = threads();
  const tx = await DgramSocket.bind('127.0.0.1', 0, { nativeReceive: false, sendThread: true });
  t.is(threads(), before + 1, 'the sender has a thread of its own');
  t.teardown(async () => {
    await rx.close();
    await tx.close(); // also when an assertion failed before the test's own close()
  });
  let next = 0;
  for (const size of [1, 300, 2, 1, 64, 3, 1, 200, 4, 1]) {
    const msgs = Array.from({ length: size }, () => datagram(next++, 1200));
    tx.sendBatch(msgs, msgs.length, rx.port, '127.0.0.1');
  }
  t.true(await until(() => seen.length >= next, 5000), `${seen.length} of ${next}`);
  t.deepEqual(seen, [...Array(next).keys()]);
  const s = tx.stats!;
  t.true(s.sendThread);
  t.is(s.txBatched, next);
  t.true((s.txInline ?? 0) > 0 && (s.txInline ?? 0) < next, `${s.txInline} of ${next} sent inline`);
  t.is(s.txDropped, 0);
  t.is(s.txFallback, 0);
  t.false(s.gsoOff);
  await tx.close();
  t.is(threads(), before, 'joined at close()');
});

rootTest('a route whose MTU is below the run: GSO is refused, the batch goes out as single datagrams', async (t) => {
  const hex = randomBytes(2).toString('hex');
  const [nsA, nsB] = [`hwfns${hex}a`, `hwfns${hex}b`];
  const sh = (...args: string[]) => execFileSync('ip', args, { stdio: 'ignore' });
  t.teardown(() => {
    for (const ns of [nsA, nsB]) {
      try {
        sh('netns', 'del', ns);
      } catch {
        /* gone */
      }
    }
  });
  sh('netns', 'add', nsA);
  sh('netns', 'add', nsB);
  sh('-n', nsA, 'link', 'add', 'ul0', 'mtu', '1280', 'type', 'veth', 'peer', 'name', 'ul0', 'netns', nsB);
  sh('-n', nsA, 'addr', 'add', '198.51.100.1/24', 'dev', 'ul0');
  sh('-n', nsB, 'addr', 'add', '198.51.100.2/24', 'dev', 'ul0');
  sh('-n', nsA, 'link', 'set', 'ul0', 'up');
  sh('-n', nsB, 'link', 'set', 'ul0', 'up');
  // B counts what arrives; A sends three runs of 1400-byte datagrams (wider than the 1280 MTU: fragments).
  const receiver = spawn(
    'ip',
    [
      'netns',
      'exec',
      nsB,
      process.execPath,
      '-e',
      `const s = require('dgram').createSocket('udp4'); let n = 0, ok = 0;
       s.on('message', (m) => { n++; if (m.length === 1400 && m[5] === (m.readUInt32BE(0) & 255)) ok++; if (n === 60) { console.log(JSON.stringify({ n, ok })); s.close(); } });
       s.bind(7000, '198.51.100.2', () => console.log('ready'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  receiver.stdout.on('data', (d) => (out += d));
  t.true(await until(() => out.includes('ready'), 10_000));
  const sender = execFileSync(
    'ip',
    [
      'netns',
      'exec',
      nsA,
      process.execPath,
      '--import=tsx',
      '--input-type=module',
      '-e',
      `import { DgramSocket } from './src/udp/dgram.ts';
       const tx = await DgramSocket.bind('198.51.100.1', 0, { sendThread: true });
       const d = (i) => { const b = Buffer.alloc(1400, i & 255); b.writeUInt32BE(i, 0); return b; };
       for (let r = 0; r < 3; r++) { const m = Array.from({ length: 20 }, (_, k) => d(r * 20 + k)); tx.sendBatch(m, 20, 7000, '198.51.100.2'); }
       await new Promise((res) => setTimeout(res, 300));
       console.log(JSON.stringify(tx.stats)); await tx.close();`,
    ],
    { cwd: ROOT, encoding: 'utf8' },
  );
  const stats = JSON.parse(sender.trim().split('\n').pop()!);
  await new Promise<void>((resolve) =>
    receiver.exitCode !== null ? resolve() : receiver.once('exit', () => resolve()),
  );
  const got = JSON.parse(out.trim().split('\n').pop()!);
  t.deepEqual(got, { n: 60, ok: 60 }, 'all 60 datagrams arrived whole');
  t.is(stats.txBatched, 60);
  t.true(stats.gsoOff, 'the kernel refused the GSO run');
  t.is(stats.txDropped, 0, 'nothing lost when GSO was refused');
});
