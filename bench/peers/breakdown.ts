// Where an idle round trip's time goes, measured from outside (nothing in the daemons changes): tcpdump on the
// overlay interface and on the underlay veth in both namespaces while a pings b at rest. One clock (the kernel's)
// stamps all four captures, so each echo request and reply can be followed through eight points:
//
//   request  a inner ─(a's daemon)→ a ul0 ─(veth)→ b ul0 ─(b's daemon)→ b inner ─(b's kernel answers)→
//   reply    b inner ─(b's daemon)→ b ul0 ─(veth)→ a ul0 ─(a's daemon)→ a inner
//
// The medians of each step say which side of the overlay (and which direction) an idle ping waits in. This runs
// separately from the "ping at rest" figure (packet capture adds its own small cost to every packet). It is
// the hook for finer breakdowns later: per-stage timestamps inside a daemon split its two steps further.
import type { ChildProcess } from 'node:child_process';
import { median, sleep } from '../../lab/run.ts';
import { type Bed, PLAN, type Side, UNDERLAY_IF } from './bed.ts';
import type { Running } from './overlay.ts';

export const BREAKDOWN_STEPS = [
  ['aOut', "a: inner → underlay (a's daemon, request)"],
  ['wireAB', 'veth a → b'],
  ['bIn', "b: underlay → inner (b's daemon, request)"],
  ['bEcho', 'b: kernel answers the echo'],
  ['bOut', "b: inner → underlay (b's daemon, reply)"],
  ['wireBA', 'veth b → a'],
  ['aIn', "a: underlay → inner (a's daemon, reply)"],
  ['total', 'a inner → a inner, round trip'],
] as const;
export type StepKey = (typeof BREAKDOWN_STEPS)[number][0];

export interface Breakdown {
  /** Median µs per step over the echoes that were seen at all eight points. */
  medianUs: Record<StepKey, number> | null;
  matched: number;
  pings: number;
}

interface Capture {
  child: ChildProcess;
  out: string;
  err: string;
}

async function startCapture(bed: Bed, side: Side, iface: string, filter: string): Promise<Capture> {
  const child = bed.spawn(
    side,
    ['tcpdump', '-i', iface, '-nn', '-q', '-tt', '-l', '--immediate-mode', '--time-stamp-precision=nano', filter],
    { stdio: 'pipe' },
  );
  const c: Capture = { child, out: '', err: '' };
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    c.out += d;
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`tcpdump on ${iface} in ${PLAN[side].ns} did not start: ${c.err}`)),
      5000,
    );
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      c.err += d;
      if (/listening on/.test(c.err)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${iface} in ${PLAN[side].ns} exited: ${c.err.trim()}`));
    });
  });
  return c;
}

async function stopCapture(bed: Bed, c: Capture): Promise<string> {
  await bed.stop(c.child, { signal: 'SIGINT', timeoutMs: 2000 });
  return c.out;
}

interface Seen {
  us: number;
  src: string;
  dst: string;
  /** ICMP: 'request' | 'reply' with seq; UDP: undefined. */
  echo?: 'request' | 'reply';
  seq?: number;
}

/** Parses `tcpdump -q -tt --time-stamp-precision=nano` lines into µs since baseS (no float loss on epochs). */
function parse(text: string, baseS: number): Seen[] {
  const out: Seen[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+)\.(\d{9}) IP (\S+) > (\S+): (.*)$/.exec(line);
    if (!m) continue;
    const us = (Number(m[1]) - baseS) * 1e6 + Number(m[2]) / 1e3;
    const icmp = /^ICMP echo (request|reply), id \d+, seq (\d+)/.exec(m[5]);
    if (icmp)
      out.push({ us, src: m[3], dst: m[4].replace(/:$/, ''), echo: icmp[1] as 'request' | 'reply', seq: +icmp[2] });
    else if (/^UDP/.test(m[5])) out.push({ us, src: m[3].replace(/\.\d+$/, ''), dst: m[4].replace(/\.\d+$/, '') });
  }
  return out;
}

/** The last packet in list within [from, to] (the one closest to the later point). */
function lastIn(list: Seen[], from: number, to: number): number | null {
  let found: number | null = null;
  for (const p of list) if (p.us >= from && p.us <= to) found = p.us;
  return found;
}

export async function pingBreakdown(bed: Bed, r: Running, o: { count: number; intervalS: number }): Promise<Breakdown> {
  const udp = `udp port ${r.underlayPort}`;
  const caps = {
    aInner: await startCapture(bed, 'a', r.ifname.a, 'icmp'),
    aUl: await startCapture(bed, 'a', UNDERLAY_IF, udp),
    bUl: await startCapture(bed, 'b', UNDERLAY_IF, udp),
    bInner: await startCapture(bed, 'b', r.ifname.b, 'icmp'),
  };
  await bed.exec('a', ['ping', '-n', '-q', '-c', String(o.count), '-i', String(o.intervalS), '-W', '1', PLAN.b.inner], {
    timeoutMs: (o.count * o.intervalS + 15) * 1000,
  });
  await sleep(100);
  const text = {
    aInner: await stopCapture(bed, caps.aInner),
    aUl: await stopCapture(bed, caps.aUl),
    bUl: await stopCapture(bed, caps.bUl),
    bInner: await stopCapture(bed, caps.bInner),
  };
  const first = /^(\d+)\./m.exec(text.aInner);
  if (!first) return { medianUs: null, matched: 0, pings: o.count };
  const base = Number(first[1]);
  const aInner = parse(text.aInner, base);
  const bInner = parse(text.bInner, base);
  const { a, b } = { a: PLAN.a.underlay, b: PLAN.b.underlay };
  const aUl = parse(text.aUl, base);
  const bUl = parse(text.bUl, base);
  const dir = (list: Seen[], src: string) => list.filter((p) => p.src === src);
  const [aUlAB, aUlBA, bUlAB, bUlBA] = [dir(aUl, a), dir(aUl, b), dir(bUl, a), dir(bUl, b)];
  const at = (list: Seen[], echo: 'request' | 'reply', seq: number) =>
    list.find((p) => p.echo === echo && p.seq === seq)?.us ?? null;

  const steps: Record<StepKey, number[]> = {
    aOut: [],
    wireAB: [],
    bIn: [],
    bEcho: [],
    bOut: [],
    wireBA: [],
    aIn: [],
    total: [],
  };
  let matched = 0;
  for (let seq = 1; seq <= o.count; seq++) {
    const t1 = at(aInner, 'request', seq);
    const t4 = at(bInner, 'request', seq);
    const t5 = at(bInner, 'reply', seq);
    const t8 = at(aInner, 'reply', seq);
    if (t1 === null || t4 === null || t5 === null || t8 === null) continue;
    // The datagram that carried the request is the last one each way before it came out at the far end.
    const t3 = lastIn(bUlAB, t1, t4);
    const t2 = t3 === null ? null : lastIn(aUlAB, t1, t3);
    const t7 = lastIn(aUlBA, t5, t8);
    const t6 = t7 === null ? null : lastIn(bUlBA, t5, t7);
    if (t2 === null || t3 === null || t6 === null || t7 === null) continue;
    matched++;
    steps.aOut.push(t2 - t1);
    steps.wireAB.push(t3 - t2);
    steps.bIn.push(t4 - t3);
    steps.bEcho.push(t5 - t4);
    steps.bOut.push(t6 - t5);
    steps.wireBA.push(t7 - t6);
    steps.aIn.push(t8 - t7);
    steps.total.push(t8 - t1);
  }
  if (matched === 0) return { medianUs: null, matched, pings: o.count };
  const medianUs = Object.fromEntries(
    Object.entries(steps).map(([k, v]) => [k, Math.round(median(v) * 10) / 10]),
  ) as Record<StepKey, number>;
  return { medianUs, matched, pings: o.count };
}

/** Where a ping beside a TCP stream waits, split at b's inner interface (the request's way, b's kernel, the
 *  reply's way back): medians in µs over the echoes seen at all four inner points. */
export interface LoadSplit {
  medianUs: { request: number; echo: number; reply: number; total: number } | null;
  matched: number;
  pings: number;
}

/**
 * The same four inner captures (ICMP only: cheap beside a stream, and the same for every overlay) around `load`,
 * which runs the TCP stream with its pings (measure.ts's tcpWithPing). The underlay is left out: under load a
 * request leaves inside the sender's GSO runs and the reply among the stream's ACKs, so neither can be told apart
 * there for every overlay.
 */
export async function pingSplitUnderLoad<T>(
  bed: Bed,
  r: Running,
  load: () => Promise<T>,
): Promise<{ split: LoadSplit; result: T }> {
  const caps = {
    aInner: await startCapture(bed, 'a', r.ifname.a, 'icmp'),
    bInner: await startCapture(bed, 'b', r.ifname.b, 'icmp'),
  };
  let result: T;
  const text = { aInner: '', bInner: '' };
  try {
    result = await load();
    await sleep(100);
  } finally {
    text.aInner = await stopCapture(bed, caps.aInner);
    text.bInner = await stopCapture(bed, caps.bInner);
  }
  const first = /^(\d+)\./m.exec(text.aInner);
  const pings = (text.aInner.match(/echo request/g) ?? []).length;
  if (!first) return { split: { medianUs: null, matched: 0, pings }, result };
  const base = Number(first[1]);
  const aInner = parse(text.aInner, base);
  const bInner = parse(text.bInner, base);
  const index = (list: Seen[], echo: 'request' | 'reply') =>
    new Map(list.filter((p) => p.echo === echo).map((p) => [p.seq!, p.us]));
  const [aReq, aRep, bReq, bRep] = [
    index(aInner, 'request'),
    index(aInner, 'reply'),
    index(bInner, 'request'),
    index(bInner, 'reply'),
  ];
  const steps = { request: [] as number[], echo: [] as number[], reply: [] as number[], total: [] as number[] };
  for (const [seq, t1] of aReq) {
    const t2 = bReq.get(seq);
    const t3 = bRep.get(seq);
    const t4 = aRep.get(seq);
    if (t2 === undefined || t3 === undefined || t4 === undefined) continue;
    steps.request.push(t2 - t1);
    steps.echo.push(t3 - t2);
    steps.reply.push(t4 - t3);
    steps.total.push(t4 - t1);
  }
  const matched = steps.total.length;
  if (matched === 0) return { split: { medianUs: null, matched, pings }, result };
  const m = (v: number[]) => Math.round(median(v));
  return {
    split: {
      medianUs: { request: m(steps.request), echo: m(steps.echo), reply: m(steps.reply), total: m(steps.total) },
      matched,
      pings,
    },
    result,
  };
}
