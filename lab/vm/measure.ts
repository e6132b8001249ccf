// What a migration test and bench/migration.ts measure, from real tools in the lab's namespaces:
//
//   ping trace   `ping -D -i 0.002` from the LAN host: each reply's seq and arrival time (kernel timestamp)
//   reply gap    the largest time between two consecutive first replies, and the one spanning a moment
//   wire pause   the guest's pause as the wire sees it: its last frame out of the source TAP to its first frame
//                (the destination QEMU's RARP, or the guest's own) on the destination TAP, from tcpdump
//   tcp probe    a connection held through the move (lab/vm/tcp-probe.ts): reset or not, echoes after
//
// All times are ms since the epoch on the one host clock that ping, tcpdump and the probe share.
import path from 'node:path';
import type { Packet } from '../pcap.ts';
import { sleep } from '../run.ts';
import { type Lab, PROJECT_ROOT } from '../topology.ts';

export interface PingReply {
  seq: number;
  atMs: number;
  rttMs: number;
}

export interface PingTrace {
  /** First replies only, in arrival order. */
  replies: PingReply[];
  /** Duplicate replies (a request answered twice, e.g. by a guest that resumed with requests queued). */
  dups: number;
  transmitted: number;
  /** Requests up to the last answered one that were never answered. */
  lost: number;
  output: string;
}

export interface Gap {
  ms: number;
  fromMs: number;
  toMs: number;
  fromSeq: number;
  toSeq: number;
}

const REPLY_RE = /^\[(\d+\.\d+)\] \d+ bytes from [^:]+: icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms( \(DUP!\))?/;

/** Parses the output of `ping -n -D`: one line per reply with its [epoch.micros] arrival time. */
export function parsePingTrace(output: string): PingTrace {
  const replies: PingReply[] = [];
  const seen = new Set<number>();
  let dups = 0;
  for (const line of output.split('\n')) {
    const m = REPLY_RE.exec(line);
    if (!m) continue;
    const seq = Number(m[2]);
    if (m[4] || seen.has(seq)) {
      dups++;
      continue;
    }
    seen.add(seq);
    replies.push({ seq, atMs: Number(m[1]) * 1000, rttMs: Number(m[3]) });
  }
  const tx = /(\d+) packets transmitted/.exec(output);
  const maxSeq = replies.reduce((a, r) => Math.max(a, r.seq), 0);
  const minSeq = replies.reduce((a, r) => Math.min(a, r.seq), Infinity);
  return {
    replies,
    dups,
    transmitted: tx ? Number(tx[1]) : 0,
    lost: replies.length ? maxSeq - minSeq + 1 - replies.length : 0,
    output,
  };
}

/** Gaps between consecutive first replies, largest first. */
export function replyGaps(trace: PingTrace): Gap[] {
  const gaps: Gap[] = [];
  const r = trace.replies;
  for (let i = 1; i < r.length; i++) {
    gaps.push({
      ms: r[i].atMs - r[i - 1].atMs,
      fromMs: r[i - 1].atMs,
      toMs: r[i].atMs,
      fromSeq: r[i - 1].seq,
      toSeq: r[i].seq,
    });
  }
  return gaps.sort((a, b) => b.ms - a.ms);
}

/** The gap between the last reply at or before atMs and the first one after it. */
export function gapSpanning(trace: PingTrace, atMs: number): Gap | null {
  const r = trace.replies;
  for (let i = 1; i < r.length; i++) {
    if (r[i - 1].atMs <= atMs && r[i].atMs > atMs) {
      return {
        ms: r[i].atMs - r[i - 1].atMs,
        fromMs: r[i - 1].atMs,
        toMs: r[i].atMs,
        fromSeq: r[i - 1].seq,
        toSeq: r[i].seq,
      };
    }
  }
  return null;
}

/** Continuous ping from a namespace (as root: intervals below 0.2 s need it); stop() ends it with SIGINT. */
export function startPing(lab: Lab, ns: string, ip: string, intervalS: number): { stop(): Promise<PingTrace> } {
  const child = lab.spawn(ns, ['ping', '-n', '-D', '-W', '1', '-i', String(intervalS), ip], { stdio: 'pipe' });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  return {
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('close', r));
        child.kill('SIGINT');
        await Promise.race([exited, sleep(3000)]);
      }
      return parsePingTrace(out);
    },
  };
}

// ---- the guest's pause on the wire -----------------------------------------------------------------

export interface WirePause {
  /** The guest's last frame out of the source TAP. */
  lastFromSourceMs: number;
  /** The first frame with the guest's MAC into the destination TAP: the destination QEMU's RARP. */
  firstOnDestMs: number;
  firstOnDestKind: string;
  /** The first frame the guest itself sent on the destination (not QEMU's RARP), and what it was. */
  firstOwnOnDestMs: number | null;
  firstOwnOnDestKind: string | null;
  /** Last frame on the source → first frame (RARP) on the destination. */
  pauseMs: number;
  /** Last frame on the source → the guest's own first frame on the destination (includes its warm-up). */
  guestPauseMs: number | null;
  /**
   * The ping reply gap at the guest's own NIC: its last ICMP echo reply out of the source TAP → its first on
   * the destination TAP. What the LAN host sees beyond this is the overlay's share.
   */
  nicReplyGapMs: number | null;
  lastReplyFromSourceMs: number | null;
  firstReplyOnDestMs: number | null;
}

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
}

function frameKind(p: Packet): string {
  if (p.ethertype === 0x8035) return 'rarp';
  if (p.kind === 'icmp') return p.icmpType === 0 ? 'icmp-echo-reply' : 'icmp';
  if (p.kind !== 'other') return p.kind;
  return `0x${p.ethertype.toString(16)}`;
}

/**
 * The guest's pause as the wire sees it, from captures of the frames the guest sent into the source and the
 * destination TAPs (tcpdump -Q in, see fromGuestFilter).
 */
export function wirePause(source: Packet[], dest: Packet[], mac: string): WirePause | null {
  const m = macBytes(mac);
  const fromGuest = (p: Packet) => p.frame.length >= 14 && p.frame.subarray(6, 12).equals(m);
  const first = dest.find(fromGuest);
  if (!first) return null;
  const own = dest.find((p) => fromGuest(p) && p.ethertype !== 0x8035);
  const before = source.filter((p) => fromGuest(p) && p.ts <= first.ts);
  if (before.length === 0) return null;
  const last = before[before.length - 1];
  const isReply = (p: Packet) => fromGuest(p) && p.kind === 'icmp' && p.icmpType === 0;
  const lastReply = before.filter(isReply).pop();
  const firstReply = dest.find(isReply);
  return {
    lastFromSourceMs: last.ts * 1000,
    firstOnDestMs: first.ts * 1000,
    firstOnDestKind: frameKind(first),
    firstOwnOnDestMs: own ? own.ts * 1000 : null,
    firstOwnOnDestKind: own ? frameKind(own) : null,
    pauseMs: (first.ts - last.ts) * 1000,
    guestPauseMs: own ? (own.ts - last.ts) * 1000 : null,
    lastReplyFromSourceMs: lastReply ? lastReply.ts * 1000 : null,
    firstReplyOnDestMs: firstReply ? firstReply.ts * 1000 : null,
    nicReplyGapMs: lastReply && firstReply ? (firstReply.ts - lastReply.ts) * 1000 : null,
  };
}

/** The first frame towards the guest's MAC (a capture of the destination TAP with -Q out) at or after atMs. */
export function firstTowardsGuest(dest: Packet[], mac: string, atMs: number): { atMs: number; kind: string } | null {
  const m = macBytes(mac);
  const p = dest.find((x) => x.ts * 1000 >= atMs && x.frame.length >= 14 && x.frame.subarray(0, 6).equals(m));
  return p ? { atMs: p.ts * 1000, kind: frameKind(p) } : null;
}

function echoSeq(p: Packet): number | null {
  if (p.kind !== 'icmp' || p.frame.length < 14 + 20 + 8) return null;
  const icmp = 14 + (p.frame[14] & 0x0f) * 4;
  return p.frame.length >= icmp + 8 ? p.frame.readUInt16BE(icmp + 6) : null;
}

/**
 * How long the guest took to answer the first ping request the destination TAP carried to it at or after
 * atMs (its response time at its own NIC: ~1 ms normally, tens of ms right after a TCG guest resumes).
 */
export function nicResponse(
  destIn: Packet[],
  destOut: Packet[],
  mac: string,
  atMs: number,
): { seq: number; requestAtMs: number; replyAtMs: number; ms: number } | null {
  const m = macBytes(mac);
  const req = destOut.find(
    (p) => p.ts * 1000 >= atMs && p.frame.subarray(0, 6).equals(m) && p.icmpType === 8 && echoSeq(p) !== null,
  );
  if (!req) return null;
  const seq = echoSeq(req)!;
  const rep = destIn.find(
    (p) => p.ts >= req.ts && p.frame.subarray(6, 12).equals(m) && p.icmpType === 0 && echoSeq(p) === seq,
  );
  return rep ? { seq, requestAtMs: req.ts * 1000, replyAtMs: rep.ts * 1000, ms: (rep.ts - req.ts) * 1000 } : null;
}

/** tcpdump filter arguments for "frames the guest with this MAC sent into this TAP". */
export function fromGuestFilter(mac: string): string[] {
  return ['-Q', 'in', 'ether', 'src', mac];
}

/** tcpdump filter arguments for "frames this TAP carried towards the guest" (unicast to its MAC). */
export function towardsGuestFilter(mac: string): string[] {
  return ['-Q', 'out', 'ether', 'dst', mac];
}

// ---- a TCP connection held through the move ----------------------------------------------------------

export interface TcpProbeSummary {
  connected: boolean;
  connectedAtMs: number;
  sent: number;
  echoed: number;
  inOrder: boolean;
  error: string | null;
  peerClosed: boolean;
  firstEchoAtMs: number;
  lastEchoAtMs: number;
  maxEchoGapMs: number;
  maxEchoGapFromMs: number;
}

/** Starts lab/vm/tcp-probe.ts in a namespace; resolves once it is connected (throws if it cannot connect). */
export async function startTcpProbe(
  lab: Lab,
  ns: string,
  to: string,
  intervalMs = 10,
): Promise<{ stop(): Promise<TcpProbeSummary> }> {
  const child = lab.spawn(
    ns,
    [
      process.execPath,
      '--import',
      'tsx',
      path.join(PROJECT_ROOT, 'lab/vm/tcp-probe.ts'),
      '--to',
      to,
      '--interval-ms',
      String(intervalMs),
    ],
    { stdio: 'pipe' },
  );
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const summary = () => {
    const line = out.split('\n').find((l) => l.includes('"summary"'));
    return line ? (JSON.parse(line) as TcpProbeSummary) : null;
  };
  const deadline = Date.now() + 15_000;
  while (!out.includes('"connected"')) {
    const s = summary();
    if (s) throw new Error(`tcp probe to ${to} did not connect: ${s.error ?? 'closed'}`);
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`tcp probe to ${to} did not connect: ${err.trim() || out.trim()}`);
    await sleep(20);
  }
  return {
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('close', r));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(5000)]);
      }
      const s = summary();
      if (!s) throw new Error(`tcp probe to ${to} printed no summary: ${err.trim()}`);
      return s;
    },
  };
}
