// Throughput and latency through homewire, beside the plain underlay, in network namespaces (prefix hwb-):
// two sites (home + host-a), iperf3 TCP guest-a → lan through the mesh and host-a → home directly over the
// veth; ping RTT (100 pings, 10 ms apart) both ways. A benchmark reports figures; it never fails for being slow.
//
//   sudo npm run bench [-- --runs N] [--seconds S] [--parallel] [--ipv6]
//     --runs N      iperf3 runs per case (default 3): median, min, max
//     --seconds S   iperf3 duration (default 10)
//     --parallel    also run every case with 4 streams (iperf3 -P 4)
//     --ipv6        IPv6 underlay (TAP MTU 1410)
// Prints a table and JSON; writes the JSON to bench/results/throughput-<date>.json.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Lab, PLAN, PROJECT_ROOT } from '../lab/topology.ts';
import { median, type PingResult, runSync } from '../lab/run.ts';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} needs a positive number`);
  return v;
}

const RUNS = Math.floor(option('--runs', 3));
const SECONDS = option('--seconds', 10);
const PARALLEL = process.argv.includes('--parallel');
const IPV6 = process.argv.includes('--ipv6');
const CLK_TCK = Number(runSync('getconf', ['CLK_TCK']).stdout.trim()) || 100;

interface Case {
  path: string;
  label: string;
  streams: number;
  mbps: number[];
  retransmits: number[];
  /** Daemon CPU, % of one core, per site, averaged over the runs (overlay only). */
  cpu: Record<string, number> | null;
  errors: string[];
  median: number | null;
  min: number | null;
  max: number | null;
}

function cpuTicks(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime + stime (fields 14 and 15)
  } catch {
    return 0;
  }
}

async function measure(
  lab: Lab,
  c: Case,
  run: () => Promise<{ mbps: number; retransmits: number | null }>,
): Promise<void> {
  const cpuSum: Record<string, number> = {};
  for (let i = 0; i < RUNS; i++) {
    const before = lab.sites.map((s) => cpuTicks(s.daemon?.pid));
    const started = Date.now();
    try {
      const r = await run();
      c.mbps.push(r.mbps);
      if (r.retransmits !== null) c.retransmits.push(r.retransmits);
    } catch (err) {
      c.errors.push((err as Error).message);
    }
    const wallS = (Date.now() - started) / 1000;
    lab.sites.forEach((s, j) => {
      cpuSum[s.name] = (cpuSum[s.name] ?? 0) + ((cpuTicks(s.daemon?.pid) - before[j]) / CLK_TCK / wallS) * 100;
    });
    process.stderr.write(
      `  ${c.label} ×${c.streams} run ${i + 1}/${RUNS}: ${c.mbps.length > i ? `${c.mbps[c.mbps.length - 1].toFixed(0)} Mbit/s` : `error: ${c.errors[c.errors.length - 1]}`}\n`,
    );
  }
  if (c.path === 'homewire') {
    c.cpu = Object.fromEntries(Object.entries(cpuSum).map(([k, v]) => [k, Math.round(v / RUNS)]));
  }
  if (c.mbps.length) {
    c.median = round(median(c.mbps));
    c.min = round(Math.min(...c.mbps));
    c.max = round(Math.max(...c.mbps));
  }
}

const round = (x: number) => Math.round(x * 10) / 10;

function pingSummary(p: PingResult) {
  return { sent: p.transmitted, received: p.received, lossPct: p.lossPct, ...(p.rtt ?? {}) };
}

async function main(): Promise<number> {
  const cpuModel = os.cpus()[0]?.model ?? 'unknown CPU';
  process.stderr.write(`building the lab (hwb-*: home + host-a, ${IPV6 ? 'IPv6' : 'IPv4'} underlay)…\n`);
  const lab = await Lab.create({ prefix: 'hwb-', sites: ['home', 'host-a'], family: IPV6 ? 6 : 4 });
  const home = lab.site('home');
  const underlayDst = { ns: home.ns, ip: home.address };

  process.stderr.write('ping: 100 × 10 ms, through homewire and over the underlay…\n');
  const pingOverlay = await lab.ping('guest-a', 'lan', { count: 100, intervalS: 0.01 });
  const pingUnderlay = await lab.ping('host-a', home.address, { count: 100, intervalS: 0.01 });

  const cases: Case[] = [];
  const streamsList = PARALLEL ? [1, 4] : [1];
  for (const streams of streamsList) {
    for (const [p, label] of [
      ['homewire', 'guest-a → lan (homewire)'],
      ['underlay', 'host-a → home (plain veth)'],
    ] as const) {
      const c: Case = {
        path: p,
        label,
        streams,
        mbps: [],
        retransmits: [],
        cpu: null,
        errors: [],
        median: null,
        min: null,
        max: null,
      };
      cases.push(c);
      await measure(lab, c, () =>
        p === 'homewire'
          ? lab.iperf3('guest-a', 'lan', { seconds: SECONDS, parallel: streams })
          : lab.iperf3('host-a', underlayDst, { seconds: SECONDS, parallel: streams }),
      );
    }
  }
  await lab.destroy();

  const date = new Date();
  const result = {
    bench: 'throughput',
    date: date.toISOString(),
    host: { cpu: cpuModel, cores: os.cpus().length, kernel: os.release(), node: process.version },
    setup: {
      sites: ['home', 'host-a'],
      underlay: IPV6 ? 'ipv6' : 'ipv4',
      tapMtu: lab.tapMtu,
      iperf3Seconds: SECONDS,
      runs: RUNS,
      overlay: `${PLAN.guest(0)} → ${PLAN.lan}`,
      underlayPath: `${lab.site('host-a').address} → ${home.address}`,
    },
    ping: { homewire: pingSummary(pingOverlay), underlay: pingSummary(pingUnderlay) },
    iperf3: cases.map(({ path: p, label, streams, median: med, min, max, mbps, retransmits, cpu, errors }) => ({
      path: p,
      label,
      streams,
      medianMbps: med,
      minMbps: min,
      maxMbps: max,
      runsMbps: mbps.map(round),
      retransmits,
      daemonCpuPct: cpu,
      errors,
    })),
  };

  const fmt = (x: number | null | undefined, w: number) =>
    (x === null || x === undefined ? '—' : String(x)).padStart(w);
  const lines = [
    '',
    `homewire throughput: 2 sites in network namespaces, iperf3 TCP ${SECONDS} s × ${RUNS} runs, ${IPV6 ? 'IPv6' : 'IPv4'} underlay, TAP MTU ${lab.tapMtu}`,
    `${cpuModel}, ${os.cpus().length} cores, Linux ${os.release()}, Node ${process.version}`,
    '',
    `${'path'.padEnd(28)} ${'streams'.padStart(7)} ${'median'.padStart(8)} ${'min'.padStart(8)} ${'max'.padStart(8)} ${'retr'.padStart(6)}  daemon CPU % (home/host-a)`,
  ];
  for (const c of cases) {
    const retr = c.retransmits.length ? Math.round(median(c.retransmits)) : null;
    const cpu = c.cpu ? `${c.cpu.home}/${c.cpu['host-a']}` : '';
    const err = c.errors.length ? `  ${c.errors.length} run(s) failed: ${c.errors[0]}` : '';
    lines.push(
      `${c.label.padEnd(28)} ${fmt(c.streams, 7)} ${fmt(c.median, 8)} ${fmt(c.min, 8)} ${fmt(c.max, 8)} ${fmt(retr, 6)}  ${cpu}${err}`,
    );
  }
  lines.push(`${''.padEnd(28)} ${''.padStart(7)} ${'Mbit/s'.padStart(8)}`);
  for (const streams of streamsList) {
    const o = cases.find((c) => c.path === 'homewire' && c.streams === streams)?.median;
    const u = cases.find((c) => c.path === 'underlay' && c.streams === streams)?.median;
    if (o && u)
      lines.push(
        `homewire carries ${((o / u) * 100).toFixed(1)} % of the plain underlay's throughput with ${streams} stream(s)`,
      );
  }
  const pr = (p: PingResult) =>
    p.rtt
      ? `avg ${p.rtt.avg} ms (min ${p.rtt.min}, max ${p.rtt.max}, mdev ${p.rtt.mdev}), ${p.lossPct}% loss`
      : `no replies (${p.lossPct}% loss)`;
  lines.push(`ping RTT, 100 × 10 ms: homewire ${pr(pingOverlay)}`);
  lines.push(`                       underlay ${pr(pingUnderlay)}`);
  process.stdout.write(`${lines.join('\n')}\n\n`);

  const dir = path.join(PROJECT_ROOT, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(
    dir,
    `throughput-${date.toISOString().replace(/:/g, '-').replace(/\..*$/, '')}${IPV6 ? '-ipv6' : ''}.json`,
  );
  fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.stderr.write(`written to ${path.relative(process.cwd(), file) || file}\n`);
  // Slow is a figure, not a failure; no figure at all for homewire is.
  return cases.some((c) => c.path === 'homewire' && c.mbps.length > 0) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench failed: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
