// The measurements of the side-by-side bench, the same for every overlay, always from side a to side b's inner
// address: iperf3 TCP (one stream) with a ping running beside it and the daemons' CPU read from /proc; a UDP
// rate search (double, then bisect: the highest offered rate that loses < 1 %); ping at rest.
import fs from 'node:fs';
import { parseIperf3, parsePing, type PingResult, type RunResult, runSync, sleep } from '../../lab/run.ts';
import { type Bed, PLAN, SIDES, type Side } from './bed.ts';
import type { Running } from './overlay.ts';

const IPERF_PORT = '5201';
const CLK_TCK = Number(runSync('getconf', ['CLK_TCK']).stdout.trim()) || 100;

/** UDP rate search: first probe, doubling cap, bisection steps, loss limit. */
export const UDP_SEARCH = { startMbps: 200, maxMbps: 12_800, minMbps: 10, bisectSteps: 3, lossLimitPct: 1 };
/** Ping while the TCP stream runs: one every 50 ms from 1 s into the stream until ~0.5 s before its end. */
const LOAD_PING_INTERVAL_S = 0.05;

export interface PingSummary {
  sent: number;
  received: number;
  lossPct: number;
  minMs: number | null;
  avgMs: number | null;
  maxMs: number | null;
  mdevMs: number | null;
}

export function summarize(p: PingResult): PingSummary {
  return {
    sent: p.transmitted,
    received: p.received,
    lossPct: p.lossPct,
    minMs: p.rtt?.min ?? null,
    avgMs: p.rtt?.avg ?? null,
    maxMs: p.rtt?.max ?? null,
    mdevMs: p.rtt?.mdev ?? null,
  };
}

export async function ping(
  bed: Bed,
  to: string,
  o: { count: number; intervalS: number; size?: number },
): Promise<PingSummary> {
  const args = ['ping', '-n', '-q', '-c', String(o.count), '-i', String(o.intervalS), '-W', '1'];
  if (o.size !== undefined) args.push('-s', String(o.size));
  const r = await bed.exec('a', [...args, to], { timeoutMs: (o.count * o.intervalS + 15) * 1000 });
  return summarize(parsePing(r.stdout + r.stderr));
}

/** A flood of `count` pings (ping -f: each sent as the last reply came back, or every 10 ms): warm-up traffic. */
export async function pingFlood(bed: Bed, to: string, count: number): Promise<void> {
  await bed.exec('a', ['ping', '-n', '-q', '-f', '-c', String(count), '-W', '1', to], { timeoutMs: 120_000 });
}

/** utime + stime of a process (all its threads), in clock ticks; 0 once it is gone. */
export function cpuTicks(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // fields 14 and 15
  } catch {
    return 0;
  }
}

/** Runs an iperf3 client in a against a one-shot server on b's inner address (retrying until it listens). */
async function iperf3(bed: Bed, args: string[], seconds: number): Promise<RunResult> {
  const server = bed.spawn('b', ['iperf3', '-s', '-1', '-B', PLAN.b.inner, '-p', IPERF_PORT]);
  try {
    let last: RunResult | null = null;
    for (let attempt = 0; attempt < 30; attempt++) {
      last = await bed.exec(
        'a',
        ['iperf3', '-c', PLAN.b.inner, '-p', IPERF_PORT, '-J', '--connect-timeout', '1000', ...args],
        { timeoutMs: (seconds + 20) * 1000 },
      );
      // iperf3 3.12 exits 0 with -J even when it could not connect: the error is only in the JSON.
      if (!/unable to connect/i.test(last.stdout + last.stderr)) break;
      await sleep(100);
    }
    return last!;
  } finally {
    await bed.stop(server, { signal: 'SIGKILL' });
  }
}

/** The Udp line of /proc/net/snmp in a side's namespace (the overlay's encrypted datagrams on the underlay). */
async function udpCounters(bed: Bed, side: Side): Promise<{ in: number; rcvbufErrors: number }> {
  const r = await bed.exec(side, ['cat', '/proc/net/snmp']);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('Udp: '));
  if (lines.length < 2) return { in: 0, rcvbufErrors: 0 };
  const names = lines[0].split(/\s+/);
  const values = lines[1].split(/\s+/).map(Number);
  const get = (n: string) => values[names.indexOf(n)] ?? 0;
  return { in: get('InDatagrams'), rcvbufErrors: get('RcvbufErrors') };
}

export interface TcpResult {
  mbps: number;
  retransmits: number | null;
  /**
   * Datagrams the kernel dropped because a UDP socket's receive buffer was full, per namespace, during the
   * stream, and as % of the datagrams that arrived: the standing queue in front of a busy receiving daemon.
   */
  udpRcvbufDrops: Record<Side, number>;
  udpRcvbufDropPct: Record<Side, number>;
  /** Daemon CPU during the stream, % of one core (several threads can exceed 100). a sends, b receives. */
  cpuPct: Record<Side, number>;
  pingUnderLoad: PingSummary;
}

export async function tcpWithPing(bed: Bed, r: Running, seconds: number): Promise<TcpResult> {
  const count = Math.max(1, Math.floor((seconds - 1.5) / LOAD_PING_INTERVAL_S));
  const udpBefore = await Promise.all(SIDES.map((s) => udpCounters(bed, s)));
  const before = SIDES.map((s) => cpuTicks(r.daemons[s].pid));
  const started = Date.now();
  const pinger = sleep(1000).then(() => ping(bed, PLAN.b.inner, { count, intervalS: LOAD_PING_INTERVAL_S }));
  const run = await iperf3(bed, ['-t', String(seconds)], seconds);
  const wallS = (Date.now() - started) / 1000;
  const cpuPct = Object.fromEntries(
    SIDES.map((s, i) => [s, Math.round(((cpuTicks(r.daemons[s].pid) - before[i]) / CLK_TCK / wallS) * 100)]),
  ) as Record<Side, number>;
  const pingUnderLoad = await pinger;
  const udpAfter = await Promise.all(SIDES.map((s) => udpCounters(bed, s)));
  const udpRcvbufDrops = {} as Record<Side, number>;
  const udpRcvbufDropPct = {} as Record<Side, number>;
  SIDES.forEach((s, i) => {
    const drops = udpAfter[i].rcvbufErrors - udpBefore[i].rcvbufErrors;
    const arrived = udpAfter[i].in - udpBefore[i].in + drops;
    udpRcvbufDrops[s] = drops;
    udpRcvbufDropPct[s] = arrived > 0 ? Math.round((drops / arrived) * 1000) / 10 : 0;
  });
  const t = parseIperf3(run.stdout || run.stderr);
  return { mbps: t.mbps, retransmits: t.retransmits, udpRcvbufDrops, udpRcvbufDropPct, cpuPct, pingUnderLoad };
}

export interface UdpProbe {
  offeredMbps: number;
  sentMbps: number;
  receivedMbps: number;
  lossPct: number;
}

/** The parts of `iperf3 -u -J` (3.12) the search reads: both ends' sums, the loss from the receiver's. */
interface IperfUdpJson {
  error?: string;
  end?: {
    sum_sent?: { bits_per_second: number };
    sum_received?: { bits_per_second: number; lost_percent: number };
  };
}

export async function udpProbe(bed: Bed, payloadBytes: number, mbps: number, seconds: number): Promise<UdpProbe> {
  const run = await iperf3(bed, ['-u', '-b', `${mbps}M`, '-l', String(payloadBytes), '-t', String(seconds)], seconds);
  let doc: IperfUdpJson;
  try {
    doc = JSON.parse(run.stdout) as IperfUdpJson;
  } catch {
    throw new Error(`iperf3 -u printed no JSON: ${(run.stdout + run.stderr).slice(0, 300)}`);
  }
  if (doc.error) throw new Error(`iperf3 -u at ${mbps} Mbit/s: ${doc.error}`);
  const sent = doc.end?.sum_sent;
  const received = doc.end?.sum_received;
  if (!sent || !received) throw new Error('iperf3 -u JSON has no end.sum_sent / end.sum_received');
  return {
    offeredMbps: mbps,
    sentMbps: sent.bits_per_second / 1e6,
    receivedMbps: received.bits_per_second / 1e6,
    // Nothing arrived: iperf3 says 0 % of 0 lost, which is no pass (e.g. the receiver's IP reassembly memory full
    // of half datagrams from an overloaded probe before, refusing every fragment for its 30 s timeout).
    lossPct: received.bits_per_second > 0 ? received.lost_percent : 100,
  };
}

export interface UdpSearch {
  payloadBytes: number;
  /** Receiver goodput (UDP payload) of the highest offered rate that lost < 1 %; null if none did. */
  mbps: number | null;
  offeredMbps: number | null;
  lossPct: number | null;
  /** The sender could not reach the offered rate while still losing < 1 %: iperf3 itself was the limit. */
  senderLimited: boolean;
  probes: UdpProbe[];
}

/**
 * Doubles the offered rate from UDP_SEARCH.startMbps until a probe loses ≥ 1 % (halving instead if the first
 * one does), then bisects between the last passing and the first failing rate.
 */
export async function udpSearch(bed: Bed, payloadBytes: number, probeSeconds: number): Promise<UdpSearch> {
  const S = UDP_SEARCH;
  const probes: UdpProbe[] = [];
  let best: UdpProbe | null = null;
  let senderLimited = false;
  const probe = async (mbps: number) => {
    const p = await udpProbe(bed, payloadBytes, Math.round(mbps), probeSeconds);
    probes.push(p);
    const pass = p.lossPct < S.lossLimitPct;
    if (pass && (!best || p.offeredMbps > best.offeredMbps)) best = p;
    return pass;
  };
  let lo = 0;
  let hi = 0;
  if (await probe(S.startMbps)) {
    lo = S.startMbps;
    for (let rate = S.startMbps * 2; rate <= S.maxMbps; rate *= 2) {
      if (!(await probe(rate))) {
        hi = rate;
        break;
      }
      lo = rate;
      const last = probes[probes.length - 1];
      if (last.sentMbps < 0.9 * rate) {
        senderLimited = true; // offering more only measures iperf3
        break;
      }
    }
  } else {
    hi = S.startMbps;
    for (let rate = S.startMbps / 2; rate >= S.minMbps; rate /= 2) {
      if (await probe(rate)) {
        lo = rate;
        break;
      }
      hi = rate;
    }
  }
  if (lo > 0 && hi > 0) {
    for (let i = 0; i < S.bisectSteps; i++) {
      const mid = (lo + hi) / 2;
      if (await probe(mid)) lo = mid;
      else hi = mid;
    }
  }
  const b = best as UdpProbe | null;
  return {
    payloadBytes,
    mbps: b ? b.receivedMbps : null,
    offeredMbps: b ? b.offeredMbps : null,
    lossPct: b ? b.lossPct : null,
    senderLimited,
    probes,
  };
}
