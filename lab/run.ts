// Running the real tools of the lab (ip, ping, iperf3, tcpdump) and reading their output.
// Nothing here throws on a non-zero exit: callers get the code and both streams and decide.
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: string;
}

/** Runs a command to completion. A timeout kills it with SIGKILL (code null, signal SIGKILL). */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const spawnOpts: SpawnOptions = { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] };
    const child = spawn(cmd, args, spawnOpts);
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : null;
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      resolve({ code: 127, signal: null, stdout, stderr: stderr + String(err), ms: Date.now() - started });
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(opts.input ?? '');
  });
}

/** Like run(), but throws with the command line and its stderr unless it exits 0. */
export async function runOk(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `\`${[cmd, ...args].join(' ')}\` failed (${r.signal ?? `exit ${r.code}`}): ${(r.stderr || r.stdout).trim()}`,
    );
  }
  return r;
}

/** Synchronous variant for process-exit cleanup, where the event loop no longer runs. */
export function runSync(cmd: string, args: string[]): RunResult {
  const started = Date.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
  return { code: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', ms: Date.now() - started };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Blocks the thread (exit handlers only). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

// ---- ping ------------------------------------------------------------------------------------------

export interface PingResult {
  transmitted: number;
  received: number;
  lossPct: number;
  /** Round-trip times in ms; null when nothing came back. */
  rtt: { min: number; avg: number; max: number; mdev: number } | null;
  /** Every request answered. */
  ok: boolean;
  output: string;
}

/** Parses iputils ping's summary ("5 packets transmitted, 5 received, 0% packet loss", "rtt min/avg/max/mdev"). */
export function parsePing(output: string): PingResult {
  const counts = /(\d+) packets transmitted, (\d+) (?:packets )?received(?:, .*?)?, ([\d.]+)% packet loss/.exec(output);
  const rtt = /(?:rtt|round-trip) min\/avg\/max\/mdev = ([\d.]+)\/([\d.]+)\/([\d.]+)\/([\d.]+) ms/.exec(output);
  const transmitted = counts ? Number(counts[1]) : 0;
  const received = counts ? Number(counts[2]) : 0;
  return {
    transmitted,
    received,
    lossPct: counts ? Number(counts[3]) : 100,
    rtt: rtt ? { min: Number(rtt[1]), avg: Number(rtt[2]), max: Number(rtt[3]), mdev: Number(rtt[4]) } : null,
    ok: transmitted > 0 && received === transmitted,
    output,
  };
}

// ---- iperf3 ----------------------------------------------------------------------------------------

export interface IperfResult {
  /** Receiver-side goodput. */
  mbps: number;
  senderMbps: number;
  retransmits: number | null;
  seconds: number;
  streams: number;
}

/** The parts of `iperf3 -J` output that parseIperf3 reads. */
interface IperfJson {
  error?: string;
  end?: {
    sum_received?: { bits_per_second: number; bytes: number; seconds: number };
    sum_sent?: { bits_per_second: number; bytes: number; seconds: number; retransmits?: number };
  };
  start?: { test_start?: { num_streams?: number } };
}

/** Reads `iperf3 -J` output of a TCP client run; throws with iperf3's own error text. */
export function parseIperf3(json: string): IperfResult {
  let doc: IperfJson;
  try {
    doc = JSON.parse(json);
  } catch {
    throw new Error(`iperf3 printed no JSON: ${json.slice(0, 300)}`);
  }
  if (doc.error) throw new Error(`iperf3: ${doc.error}`);
  const recv = doc.end?.sum_received;
  const sent = doc.end?.sum_sent;
  if (!recv || !sent) throw new Error('iperf3 JSON has no end.sum_received / end.sum_sent');
  return {
    mbps: recv.bits_per_second / 1e6,
    senderMbps: sent.bits_per_second / 1e6,
    retransmits: typeof sent.retransmits === 'number' ? sent.retransmits : null,
    seconds: recv.seconds,
    streams: doc.start?.test_start?.num_streams ?? 1,
  };
}

// ---- small statistics ------------------------------------------------------------------------------

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
