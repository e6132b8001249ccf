// TAP throughput: frames/s of 1400-byte frames written into and read out of real kernel TAPs through
// the native addon and NativeTap, as the daemon uses them (one writeBatch per loop turn, one JS call
// per read wake-up). Needs root and a built addon. Usage:
//   node --import=tsx bench/tap-throughput.ts [seconds per case, default 3] [case name filter]
//
// Cases (each on its own bridge hwtb*, TAPs hwt*, all removed at the end):
//   socketpair write+read  AF_UNIX datagram pair through the addon: the JS + addon ceiling, no network stack
//   TAP write              write into TAP A on a bridge with TAP B (nobody reads B: the kernel drops there)
//   TAP read               a feeder process writes into TAP F; we read TAP B on the same bridge
//   TAP write+read         one process writes TAP A and reads TAP B (a daemon forwarding both ways)
//   TAP write UDP ...      IPv4 UDP datagrams to a socket in a namespace (hwf*) behind the TAP, up the kernel's
//                          stack to the socket (which nobody reads: the kernel drops there): one flow (runs are
//                          coalesced into UDP GSO frames, native/gro.h) against two flows alternating (no runs)

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { TAP_WRITE_QUEUE_MAX } from '../src/constants.ts';
import { NativeTap, loadTapAddon } from '../src/tap/native.ts';

const FRAME_BYTES = 1400;
const PER_TURN = 64; // frames written per event-loop turn (like a burst of UDP datagrams)
const uniq = (p: string): string => p + randomBytes(2).toString('hex');
// Only our frames count: the kernel also sends IPv6 router solicitations and MLD reports on new links.
const ours = (f: Buffer): boolean => f[12] === 0x88 && f[13] === 0xb5;
const ip = (...args: string[]): void => void execFileSync('ip', args, { stdio: 'ignore' });

function frames(srcByte: number): Buffer[] {
  return Array.from({ length: PER_TURN }, (_, i) => {
    const f = Buffer.alloc(FRAME_BYTES, i);
    Buffer.from('020000000099', 'hex').copy(f, 0); // unknown unicast: the bridge floods it to the other ports
    Buffer.from([2, 0, 0, 0, 0, srcByte]).copy(f, 6);
    f.writeUInt16BE(0x88b5, 12); // local experimental ethertype: no stack answers
    return f;
  });
}

/** PER_TURN IPv4 UDP datagrams (FRAME_BYTES frames) from 192.0.2.2 to 192.0.2.1:5000, from `flows` ports in turn. */
function udpFrames(dstMac: Buffer, flows: number): Buffer[] {
  return Array.from({ length: PER_TURN }, (_, i) => {
    const f = Buffer.alloc(FRAME_BYTES, i);
    dstMac.copy(f, 0);
    Buffer.from('020000c0ffee', 'hex').copy(f, 6);
    f.writeUInt16BE(0x0800, 12);
    const ipLen = FRAME_BYTES - 14;
    const h = Buffer.from([0x45, 0, ipLen >> 8, ipLen & 255, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1]);
    let sum = 0;
    for (let k = 0; k < 20; k += 2) sum += h.readUInt16BE(k);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    h.writeUInt16BE(0xffff - sum, 10);
    h.copy(f, 14);
    f.writeUInt16BE(4000 + (i % flows), 34);
    f.writeUInt16BE(5000, 36);
    f.writeUInt16BE(ipLen - 20, 38);
    f.writeUInt16BE(0, 40); // no checksum (IPv4 allows it)
    return f;
  });
}

/** Writes PER_TURN frames per loop turn for `seconds` (the same buffers again: the bench cheats on ownership). */
function pump(tap: NativeTap, pool: Buffer[], seconds: number): Promise<void> {
  const end = performance.now() + seconds * 1000;
  return new Promise((resolve) => {
    const step = (): void => {
      for (let i = 0; i < PER_TURN; i++) tap.write(pool[i]);
      if (performance.now() < end) setImmediate(step);
      else setImmediate(resolve); // after the last flush
    };
    step();
  });
}

interface Row {
  name: string;
  writtenFps?: number;
  readFps?: number;
  dropped?: number;
  cpuUsPerFrame?: number;
  wakeups?: number;
}

async function measureCase(
  name: string,
  _seconds: number,
  run: () => Promise<{ written?: number; read?: number; dropped?: number; wakeups?: number; secs?: number }>,
): Promise<Row> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const r = await run();
  const secs = r.secs ?? (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const frames = (r.written ?? 0) + (r.read ?? 0);
  return {
    name,
    writtenFps: r.written === undefined ? undefined : r.written / secs,
    readFps: r.read === undefined ? undefined : r.read / secs,
    dropped: r.dropped,
    cpuUsPerFrame: frames ? (cpu.user + cpu.system) / frames : undefined,
    wakeups: r.wakeups === undefined ? undefined : r.wakeups / secs,
  };
}

function bridgeWith(...names: string[]): { br: string; taps: NativeTap[]; done: () => void } {
  const br = uniq('hwtb');
  ip('link', 'add', br, 'type', 'bridge');
  const taps = names.map(() => NativeTap.open({ name: uniq('hwt'), mtu: 1500, bridge: br }));
  return {
    br,
    taps,
    done() {
      for (const t of taps) t.close();
      try {
        ip('link', 'del', br);
      } catch {
        /* gone */
      }
    },
  };
}

async function main(): Promise<void> {
  const seconds = Number(process.argv[2] ?? 3);
  const only = process.argv[3];
  const rows: Row[] = [];
  const measure: typeof measureCase = (name, secs, run) =>
    only && !name.includes(only) ? Promise.resolve({ name: `${name} (skipped)` }) : measureCase(name, secs, run);

  rows.push(
    await measure('socketpair write+read', seconds, async () => {
      const [fa, fb] = loadTapAddon().socketPair(4 * 1024 * 1024);
      const a = NativeTap._fromFd(fa);
      const b = NativeTap._fromFd(fb);
      let wakeups = 0;
      let n = 0;
      b.start({ frame: () => void n++, batchEnd: () => void wakeups++ });
      await pump(a, frames(1), seconds);
      const written = a.stats.txFrames;
      const dropped = a.stats.txDropped;
      a.close();
      b.close();
      return { written, read: n, dropped, wakeups };
    }),
  );

  rows.push(
    await measure('TAP write', seconds, async () => {
      const s = bridgeWith('a', 'b');
      try {
        await pump(s.taps[0], frames(1), seconds);
        return { written: s.taps[0].stats.txFrames, dropped: s.taps[0].stats.txDropped };
      } finally {
        s.done();
      }
    }),
  );

  rows.push(
    await measure('TAP read (feeder process)', seconds, async () => {
      const s = bridgeWith('b');
      try {
        const c = { n: 0, w: 0, first: 0, last: 0 };
        s.taps[0].start({
          frame: (f) => void (ours(f) && c.n++),
          batchEnd() {
            c.last = performance.now();
            if (c.w++ === 0) c.first = c.last;
          },
        });
        const feeder = spawn(
          process.execPath,
          ['--import=tsx', fileURLToPath(import.meta.url), 'feeder', s.br, String(seconds)],
          {
            stdio: ['ignore', 'pipe', 'inherit'],
          },
        );
        let out = '';
        feeder.stdout.on('data', (d: Buffer) => (out += d));
        await new Promise((r) => feeder.on('exit', r));
        const fed = Number(out.trim() || 0);
        return { read: c.n, dropped: fed - c.n, wakeups: c.w, secs: (c.last - c.first) / 1000 }; // while frames flowed
      } finally {
        s.done();
      }
    }),
  );

  rows.push(
    await measure('TAP write+read, one process', seconds, async () => {
      const s = bridgeWith('a', 'b');
      try {
        const [a, b] = s.taps;
        const c = { n: 0, w: 0 };
        b.start({ frame: (f) => void (ours(f) && c.n++), batchEnd: () => void c.w++ });
        await pump(a, frames(1), seconds);
        await new Promise((r) => setTimeout(r, 50));
        return { written: a.stats.txFrames, read: c.n, dropped: a.stats.txFrames - c.n, wakeups: c.w };
      } finally {
        s.done();
      }
    }),
  );

  for (const [name, flows] of [
    ['TAP write UDP, one flow (coalesced)', 1],
    ['TAP write UDP, 2 flows alternating', 2],
  ] as const) {
    rows.push(
      await measure(name, seconds, async () => {
        const ns = uniq('hwfns');
        ip('netns', 'add', ns);
        const tap = NativeTap.open({ name: uniq('hwf'), mtu: 1500 });
        try {
          ip('link', 'set', 'dev', tap.name, 'netns', ns);
          ip('-n', ns, 'addr', 'add', '192.0.2.1/24', 'dev', tap.name);
          ip('-n', ns, 'link', 'set', 'dev', tap.name, 'up');
          ip(
            '-n',
            ns,
            'neigh',
            'replace',
            '192.0.2.2',
            'lladdr',
            '02:00:00:c0:ff:ee',
            'dev',
            tap.name,
            'nud',
            'permanent',
          );
          // A socket that never reads, in the namespace (socat holds it open).
          const sink = spawn(
            'ip',
            ['netns', 'exec', ns, 'socat', '-u', 'UDP-RECV:5000,bind=192.0.2.1', 'SYSTEM:sleep 3600'],
            {
              stdio: 'ignore',
            },
          );
          await new Promise((r) => setTimeout(r, 300));
          const mac = Buffer.from(
            execFileSync('ip', ['-n', ns, '-o', 'link', 'show', 'dev', tap.name], { encoding: 'utf8' })
              .match(/link\/ether ([0-9a-f:]{17})/)![1]
              .replace(/:/g, ''),
            'hex',
          );
          await pump(tap, udpFrames(mac, flows), seconds);
          sink.kill('SIGKILL');
          return { written: tap.stats.txFrames, dropped: tap.stats.txDropped };
        } finally {
          tap.close();
          ip('netns', 'del', ns);
        }
      }),
    );
  }

  const fmt = (x: number | undefined, d = 0): string => (x === undefined ? '-' : x.toFixed(d));
  const gbps = (fps: number | undefined): string =>
    fps === undefined ? '-' : ((fps * FRAME_BYTES * 8) / 1e9).toFixed(2);
  console.log(
    `\n${FRAME_BYTES}-byte frames, ${PER_TURN} frames per write turn, ${seconds} s per case, write queue ${TAP_WRITE_QUEUE_MAX}`,
  );
  const head = ['case', 'written/s', 'Gbit/s', 'read/s', 'Gbit/s', 'lost', 'wakeups/s', 'CPU µs/frame'];
  const table = rows.map((r) => [
    r.name,
    fmt(r.writtenFps),
    gbps(r.writtenFps),
    fmt(r.readFps),
    gbps(r.readFps),
    fmt(r.dropped),
    fmt(r.wakeups),
    fmt(r.cpuUsPerFrame, 2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(head));
  for (const row of table) console.log(line(row));
  console.log(
    'lost: frames written but not read (the kernel drops them at the reading TAP queue when the reader falls behind)',
  );
  console.log('TAP write: nobody reads TAP B, so the kernel drops there; the figure is the write path alone');
}

// Feeder: its own TAP on the bridge, writing as fast as a single JS loop can; prints frames written.
async function feeder(bridge: string, seconds: number): Promise<void> {
  const tap = NativeTap.open({ name: uniq('hwt'), mtu: 1500, bridge });
  await pump(tap, frames(2), seconds);
  console.log(tap.stats.txFrames);
  tap.close();
}

if (process.argv[2] === 'feeder') await feeder(process.argv[3], Number(process.argv[4]));
else await main();
