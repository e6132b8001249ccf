// The data plane's own cost, without the kernel's TAP work and without other processes: two daemons in ONE
// process, each with an in-memory TAP (lab/twins/tap.ts) and a REAL UDP socket on loopback, so every figure
// is this process's CPU for the mesh (receive, decrypt, switch, encrypt, send). Compares receive paths.
//
//   node --import tsx bench/dataplane.ts [--seconds S] [--paths native,native-nogro,dgram] [--cases pingpong,stream]
//     ping-pong: one 98-byte frame a → b, b answers b → a, the next leaves when the answer arrived
//                (µs per round trip, wall and CPU: two UDP hops, each a wake-up and a lone-datagram batch)
//     paced:     as ping-pong, but one round trip every 10 ms, right after the daemons started (what a ping at
//                rest sees: a data path whose JavaScript has not been optimized yet); CPU µs per round trip
//                over the first 20 and the next 100
//     stream:    1400-byte frames into a's TAP in batches of 64 (as a TAP read gives them), as fast as b
//                takes them (frames/s through b, CPU µs per frame for both daemons together)
// A benchmark reports figures; it never fails for being slow.
import os from 'node:os';
import { parseConfig } from '../src/config.ts';
import { Daemon } from '../src/daemon.ts';
import { silentLogger } from '../src/log.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../src/mesh/keys.ts';
import { DgramSocket } from '../src/udp/dgram.ts';
import { MemoryTap } from '../lab/twins/tap.ts';

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
};
const SECONDS = Number(arg('--seconds', '3'));
const PATHS = arg('--paths', 'native,native-nogro,dgram').split(',');
const CASES = arg('--cases', 'paced,pingpong,stream').split(',');

const MAC_A = Buffer.from('525400000a0a', 'hex');
const MAC_B = Buffer.from('525400000b0b', 'hex');

function frame(dst: Buffer, src: Buffer, bytes: number, seq: number): Buffer {
  const f = Buffer.alloc(bytes, seq & 0xff);
  dst.copy(f, 0);
  src.copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f.writeUInt32BE(seq, 14);
  return f;
}

interface Pair {
  a: { daemon: Daemon; tap: MemoryTap };
  b: { daemon: Daemon; tap: MemoryTap };
  stop(): Promise<void>;
}

async function pair(path: string): Promise<Pair> {
  const opts = { nativeReceive: path !== 'dgram', gro: path === 'native' };
  const keys = [generatePrivateKey(), generatePrivateKey()];
  const socks = [await DgramSocket.bind('127.0.0.1', 0, opts), await DgramSocket.bind('127.0.0.1', 0, opts)];
  const nodes = [];
  for (let i = 0; i < 2; i++) {
    const o = 1 - i;
    const yaml = `name: n${i}\nprivate_key: "${encodeKey(keys[i])}"\nlisten: 127.0.0.1:${socks[i].port}\ntap: { name: hw${i} }\npeers:\n  - { name: n${o}, public_key: "${encodeKey(publicKeyOf(keys[o]))}", endpoint: "127.0.0.1:${socks[o].port}" }\n`;
    const cfg = parseConfig(yaml, `n${i}.yaml`);
    const tap = new MemoryTap(cfg.tap.name, cfg.tap.mtu);
    const daemon = await Daemon.fromConfig(cfg, { tap, socket: socks[i], log: silentLogger });
    await daemon.start();
    nodes.push({ daemon, tap });
  }
  const [a, b] = nodes;
  const deadline = Date.now() + 5000;
  while (!(a.daemon.mesh.peers[0].current && b.daemon.mesh.peers[0].current && b.daemon.mesh.peers[0].up)) {
    if (Date.now() > deadline) throw new Error('no session between the two daemons');
    // Keepalives confirm the session both ways; a first frame also does.
    a.tap.inject(frame(MAC_B, MAC_A, 60, 0));
    b.tap.inject(frame(MAC_A, MAC_B, 60, 0));
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    a,
    b,
    stop: async () => {
      await a.daemon.stop();
      await b.daemon.stop();
    },
  };
}

const cpuUs = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

async function pingPong(p: Pair): Promise<{ rtUs: number; cpuUs: number; count: number }> {
  const request = frame(MAC_B, MAC_A, 98, 1);
  const reply = frame(MAC_A, MAC_B, 98, 2);
  let count = 0;
  let done: (() => void) | null = null;
  const end = Date.now() + SECONDS * 1000;
  p.b.tap.onWrite = () => p.b.tap.inject(reply);
  p.a.tap.onWrite = () => {
    count++;
    if (Date.now() < end) p.a.tap.inject(request);
    else done?.();
  };
  const t0 = performance.now();
  const c0 = cpuUs();
  await new Promise<void>((resolve) => {
    done = resolve;
    p.a.tap.inject(request);
  });
  const wall = (performance.now() - t0) * 1000;
  const cpu = cpuUs() - c0;
  p.a.tap.onWrite = p.b.tap.onWrite = null;
  p.a.tap.written.length = p.b.tap.written.length = 0;
  return { rtUs: wall / count, cpuUs: cpu / count, count };
}

/** Round trips one every 10 ms on fresh daemons: CPU µs per round trip over the first 20, then the next 100. */
async function paced(p: Pair): Promise<{ first20CpuUs: number; next100CpuUs: number; next100WallUs: number }> {
  const request = frame(MAC_B, MAC_A, 98, 1);
  const reply = frame(MAC_A, MAC_B, 98, 2);
  let answered: (() => void) | null = null;
  p.b.tap.onWrite = () => p.b.tap.inject(reply);
  p.a.tap.onWrite = () => answered?.();
  const one = async (): Promise<[number, number]> => {
    const c0 = cpuUs();
    const t0 = performance.now();
    await new Promise<void>((resolve) => {
      answered = resolve;
      p.a.tap.inject(request);
    });
    const r: [number, number] = [cpuUs() - c0, (performance.now() - t0) * 1000];
    await new Promise((r) => setTimeout(r, 10));
    return r;
  };
  let first = 0;
  let next = 0;
  let wall = 0;
  for (let i = 0; i < 20; i++) first += (await one())[0];
  for (let i = 0; i < 100; i++) {
    const [c, w] = await one();
    next += c;
    wall += w;
  }
  p.a.tap.onWrite = p.b.tap.onWrite = null;
  p.a.tap.written.length = p.b.tap.written.length = 0;
  return { first20CpuUs: first / 20, next100CpuUs: next / 100, next100WallUs: wall / 100 };
}

async function stream(p: Pair): Promise<{ fps: number; cpuUsPerFrame: number; sent: number; received: number }> {
  const BATCH = 64;
  const frames = Array.from({ length: BATCH }, (_, i) => frame(MAC_B, MAC_A, 1400, i));
  let received = 0;
  p.b.tap.onWrite = () => {
    received++;
  };
  let sent = 0;
  const t0 = performance.now();
  const c0 = cpuUs();
  const end = Date.now() + SECONDS * 1000;
  // Keep at most ~8 batches in flight: the sender must not run far ahead of the receiver (the socket would drop).
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      if (Date.now() >= end) {
        resolve();
        return;
      }
      while (sent - received < 8 * BATCH) {
        p.a.tap.inject(...frames);
        sent += BATCH;
      }
      setImmediate(pump);
    };
    pump();
  });
  await new Promise((r) => setTimeout(r, 100));
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuUs() - c0;
  p.b.tap.onWrite = null;
  p.b.tap.written.length = 0;
  return { fps: received / wall, cpuUsPerFrame: cpu / received, sent, received };
}

async function main(): Promise<void> {
  process.stdout.write(
    `bench/dataplane: two daemons in one process over loopback UDP, in-memory TAPs, ${SECONDS} s per case; ` +
      `${os.cpus()[0]?.model}, load ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')}\n`,
  );
  const results: Record<string, unknown>[] = [];
  for (const path of PATHS) {
    const p = await pair(path);
    try {
      const pc = CASES.includes('paced') ? await paced(p) : null;
      const pp = CASES.includes('pingpong') ? await pingPong(p) : { rtUs: Number.NaN, cpuUs: Number.NaN, count: 0 };
      const pcWarm = CASES.includes('paced') && CASES.includes('pingpong') ? await paced(p) : null;
      const st = CASES.includes('stream')
        ? await stream(p)
        : { fps: Number.NaN, cpuUsPerFrame: Number.NaN, sent: 0, received: 0 };
      const udp = p.b.daemon.mesh.socket.stats;
      const r = {
        path,
        receivePath: udp?.receivePath,
        gro: udp?.gro,
        pacedFirst20CpuUs: pc ? Math.round(pc.first20CpuUs) : null,
        pacedNext100CpuUs: pc ? Math.round(pc.next100CpuUs) : null,
        pacedNext100WallUs: pc ? Math.round(pc.next100WallUs) : null,
        pacedWarmCpuUs: pcWarm ? Math.round(pcWarm.next100CpuUs) : null,
        pacedWarmWallUs: pcWarm ? Math.round(pcWarm.next100WallUs) : null,
        pingPongUs: Math.round(pp.rtUs * 10) / 10,
        pingPongCpuUs: Math.round(pp.cpuUs * 10) / 10,
        streamFramesPerS: Math.round(st.fps),
        streamCpuUsPerFrame: Math.round(st.cpuUsPerFrame * 100) / 100,
        streamLossPct: Math.round((1 - st.received / st.sent) * 1000) / 10,
        rxDatagramsPerCall: udp && udp.rxCalls > 0 ? Math.round((udp.rxDatagrams / udp.rxCalls) * 10) / 10 : null,
      };
      results.push(r);
      process.stdout.write(`${JSON.stringify(r)}\n`);
    } finally {
      await p.stop();
    }
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench failed: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
