// Figures of the side-by-side bench: medians over the runs per overlay, the Markdown table of issue 13 (best
// of each row in bold) and the ping-at-rest breakdown table.
import { median } from '../../lab/run.ts';
import { BREAKDOWN_STEPS, type Breakdown, type StepKey } from './breakdown.ts';
import type { PingSummary, TcpResult, UdpSearch } from './measure.ts';
import type { OverlayId } from './overlay.ts';

export interface RunFigures {
  run: number;
  /** From starting the daemons to traffic passing (and, for tinc, its path MTU settled). */
  setupMs: number;
  mtu: number;
  facts: Record<string, unknown>;
  pingRest: PingSummary;
  /** The same, after WARMUP_FLOOD_PINGS flood pings (bench/peers.ts). */
  pingWarm: PingSummary;
  breakdown: Breakdown | null;
  tcp: TcpResult;
  udp1400: UdpSearch;
  udpMtu: UdpSearch;
  /** Interfaces the overlay left behind when it stopped (deleted by the bench). */
  leftovers: string[];
}

export interface Summary {
  runs: number;
  mtu: number;
  tcpMbps: number;
  tcpRetransmits: number | null;
  udp1400Mbps: number | null;
  udpMtuMbps: number | null;
  udpMtuPayloadBytes: number;
  pingRestAvgMs: number | null;
  pingWarmAvgMs: number | null;
  pingLoadAvgMs: number | null;
  pingLoadMaxMs: number | null;
  cpuReceiverPct: number;
  cpuSenderPct: number;
  udpRcvbufDropReceiverPct: number | null;
  breakdownUs: Record<StepKey, number> | null;
}

export interface OverlayResult {
  id: OverlayId;
  label: string;
  version: string;
  runs: RunFigures[];
  errors: { run: number; message: string }[];
  median: Summary | null;
}

const med = (xs: (number | null | undefined)[]): number | null => {
  const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  return v.length ? median(v) : null;
};
const r1 = (x: number | null) => (x === null ? null : Math.round(x * 10) / 10);
const r3 = (x: number | null) => (x === null ? null : Math.round(x * 1000) / 1000);

export function summarize(runs: RunFigures[]): Summary | null {
  if (runs.length === 0) return null;
  const withBreakdown = runs.filter((r) => r.breakdown?.medianUs);
  let breakdownUs: Record<StepKey, number> | null = null;
  if (withBreakdown.length) {
    breakdownUs = Object.fromEntries(
      BREAKDOWN_STEPS.map(([k]) => [k, r1(med(withBreakdown.map((r) => r.breakdown!.medianUs![k])))]),
    ) as Record<StepKey, number>;
  }
  return {
    runs: runs.length,
    mtu: runs[0].mtu,
    tcpMbps: r1(med(runs.map((r) => r.tcp.mbps)))!,
    tcpRetransmits: med(runs.map((r) => r.tcp.retransmits)),
    udp1400Mbps: r1(med(runs.map((r) => r.udp1400.mbps))),
    udpMtuMbps: r1(med(runs.map((r) => r.udpMtu.mbps))),
    udpMtuPayloadBytes: runs[0].udpMtu.payloadBytes,
    pingRestAvgMs: r3(med(runs.map((r) => r.pingRest.avgMs))),
    pingWarmAvgMs: r3(med(runs.map((r) => r.pingWarm?.avgMs))),
    pingLoadAvgMs: r3(med(runs.map((r) => r.tcp.pingUnderLoad.avgMs))),
    pingLoadMaxMs: r3(med(runs.map((r) => r.tcp.pingUnderLoad.maxMs))),
    cpuReceiverPct: Math.round(med(runs.map((r) => r.tcp.cpuPct.b)) ?? 0),
    cpuSenderPct: Math.round(med(runs.map((r) => r.tcp.cpuPct.a)) ?? 0),
    udpRcvbufDropReceiverPct: r1(med(runs.map((r) => r.tcp.udpRcvbufDropPct.b))),
    breakdownUs,
  };
}

const mbit = (x: number | null) => (x === null ? '—' : Math.round(x).toLocaleString('en-US'));
const ms = (x: number | null) => (x === null ? '—' : x.toFixed(2));

/** One table row; `better` picks the best column to put in bold (none when fewer than two have figures). */
function row(
  title: string,
  results: OverlayResult[],
  value: (s: Summary) => number | null,
  show: (s: Summary) => string,
  better: 'high' | 'low' | null,
): string {
  const values = results.map((r) => (r.median ? value(r.median) : null));
  const present = values.filter((v): v is number => v !== null);
  const best = better && present.length > 1 ? (better === 'high' ? Math.max(...present) : Math.min(...present)) : null;
  const cells = results.map((r, i) => {
    if (!r.median) return 'failed';
    const text = show(r.median);
    return best !== null && values[i] === best ? `**${text}**` : text;
  });
  return `| ${title} | ${cells.join(' | ')} |`;
}

export function markdownTable(results: OverlayResult[]): string {
  const lines = [
    `| | ${results.map((r) => r.label).join(' | ')} |`,
    `|---|${results.map(() => '---').join('|')}|`,
    row(
      'TCP, one stream, Mbit/s',
      results,
      (s) => s.tcpMbps,
      (s) => mbit(s.tcpMbps),
      'high',
    ),
    row(
      'UDP, 1400-byte datagrams, < 1 % loss, Mbit/s',
      results,
      (s) => s.udp1400Mbps,
      (s) => mbit(s.udp1400Mbps),
      'high',
    ),
    row(
      'UDP at the overlay MTU − 28, < 1 % loss, Mbit/s',
      results,
      (s) => s.udpMtuMbps,
      (s) => `${mbit(s.udpMtuMbps)} (${s.udpMtuPayloadBytes} B)`,
      'high',
    ),
    row(
      'ping at rest, just started, avg (ms)',
      results,
      (s) => s.pingRestAvgMs,
      (s) => ms(s.pingRestAvgMs),
      'low',
    ),
    row(
      'ping at rest, warm (after 20,000 flood pings), avg (ms)',
      results,
      (s) => s.pingWarmAvgMs,
      (s) => ms(s.pingWarmAvgMs),
      'low',
    ),
    row(
      'ping while the TCP stream runs, avg / max (ms)',
      results,
      (s) => s.pingLoadAvgMs,
      (s) => `${ms(s.pingLoadAvgMs)} / ${ms(s.pingLoadMaxMs)}`,
      'low',
    ),
    row(
      'daemon CPU during TCP, receiver / sender (%)',
      results,
      () => null,
      (s) => `${s.cpuReceiverPct} / ${s.cpuSenderPct}`,
      null,
    ),
    row(
      "receiver's UDP socket drops during TCP (% of datagrams)",
      results,
      () => null,
      (s) => (s.udpRcvbufDropReceiverPct === null ? '—' : String(s.udpRcvbufDropReceiverPct)),
      null,
    ),
    row(
      'overlay MTU',
      results,
      () => null,
      (s) => String(s.mtu),
      null,
    ),
  ];
  return lines.join('\n');
}

export function breakdownTable(results: OverlayResult[]): string | null {
  const withData = results.filter((r) => r.median?.breakdownUs);
  if (withData.length === 0) return null;
  const lines = [
    `| ping at rest, median µs per step | ${withData.map((r) => r.label).join(' | ')} |`,
    `|---|${withData.map(() => '---').join('|')}|`,
  ];
  for (const [k, title] of BREAKDOWN_STEPS) {
    lines.push(`| ${title} | ${withData.map((r) => String(r.median!.breakdownUs![k])).join(' | ')} |`);
  }
  return lines.join('\n');
}
