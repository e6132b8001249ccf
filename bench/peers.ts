// homewire beside tinc 1.0 (switch mode), nebula and wireguard-go: the same pair of network namespaces over one
// veth, the same underlay (192.0.2.0/24) and inner addresses (198.51.100.0/24), one overlay at a time, host to
// host through each overlay (side a → side b). Issue 13's table, as Markdown and JSON. A benchmark reports
// figures; it never fails for being slow (it fails when an overlay cannot be set up at all).
//
//   sudo npm run bench:peers [-- --runs N] [--seconds S] [--probe-seconds P] [--only homewire,tinc,...]
//                            [--no-breakdown] [--keep-logs]
//     --runs N           runs (default 3); each run brings every overlay up afresh; medians over runs
//     --seconds S        iperf3 TCP duration (default 10)
//     --probe-seconds P  length of each UDP rate-search probe (default 2)
//     --only LIST        a comma-separated subset of homewire, tinc, nebula, wireguard-go (alias: wg)
//     --no-breakdown     skip the packet-capture breakdown of the ping at rest
//     --keep-logs        keep the keys, configs and daemon logs (the path is printed)
//
// Per overlay and run: ping at rest (100 × 10 ms) just after start, then again after a flood of 20,000 pings
// (warm); the warm one's breakdown (50 × 20 ms under tcpdump, see peers/breakdown.ts); iperf3 TCP, one stream,
// with a ping every 50 ms beside it and the daemons' CPU from
// /proc/PID/stat; UDP rate searches with 1400-byte datagrams and with datagrams filling the overlay MTU.
// Results: bench/results/peers-<date>.json (git-ignored).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hasProgram } from '../lab/netns.ts';
import { PROJECT_ROOT } from '../lab/topology.ts';
import { Bed, PLAN, PREFIX } from './peers/bed.ts';
import { pingBreakdown } from './peers/breakdown.ts';
import { Homewire } from './peers/homewire.ts';
import { ping, pingFlood, tcpWithPing, UDP_SEARCH, udpSearch } from './peers/measure.ts';
import { Nebula } from './peers/nebula.ts';
import { OVERLAY_IDS, type Overlay, type OverlayId, type Requirement } from './peers/overlay.ts';
import { breakdownTable, markdownTable, type OverlayResult, type RunFigures, summarize } from './peers/report.ts';
import { Tinc } from './peers/tinc.ts';
import { WireguardGo } from './peers/wireguard.ts';

const UDP_DATAGRAM_BYTES = 1400;
const IP_UDP_HEADER_BYTES = 28;
const REST_PING = { count: 100, intervalS: 0.01 };
// Before the warm figure, every overlay carries the same flood of pings: a daemon that has run a while (the
// usual case) has its data path warm; for homewire that is V8's optimized code, which a just-started daemon
// does not have yet (it runs baseline code for its first tens of thousands of packets).
const WARMUP_FLOOD_PINGS = 20_000;
const BREAKDOWN_PING = { count: 50, intervalS: 0.02 };

function numberOption(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} needs a positive number (got "${process.argv[i + 1]}")`);
  return v;
}

function onlyOption(): OverlayId[] {
  const i = process.argv.indexOf('--only');
  if (i < 0) return [...OVERLAY_IDS];
  const ids = (process.argv[i + 1] ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)
    .map((x) => (x === 'wg' || x === 'wireguard' ? 'wireguard-go' : x));
  const bad = ids.filter((x) => !(OVERLAY_IDS as readonly string[]).includes(x));
  if (ids.length === 0 || bad.length) {
    throw new Error(`--only takes a comma-separated list of ${OVERLAY_IDS.join(', ')} (got "${process.argv[i + 1]}")`);
  }
  return OVERLAY_IDS.filter((x) => ids.includes(x));
}

function parseOptions() {
  const known = ['--runs', '--seconds', '--probe-seconds', '--only', '--no-breakdown', '--keep-logs'];
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    if (!known.includes(args[i])) throw new Error(`unknown option "${args[i]}" (options: ${known.join(' ')})`);
    if (!args[i].startsWith('--no-') && args[i] !== '--keep-logs') i++; // skip the value
  }
  return {
    runs: Math.floor(numberOption('--runs', 3)),
    seconds: numberOption('--seconds', 10),
    probeSeconds: numberOption('--probe-seconds', 2),
    only: onlyOption(),
    breakdown: !process.argv.includes('--no-breakdown'),
    keepLogs: process.argv.includes('--keep-logs'),
  };
}

type Options = ReturnType<typeof parseOptions>;

const log = (msg: string) => process.stderr.write(`${msg}\n`);

function makeOverlay(id: OverlayId): Overlay {
  switch (id) {
    case 'homewire':
      return new Homewire();
    case 'tinc':
      return new Tinc();
    case 'nebula':
      return new Nebula();
    case 'wireguard-go':
      return new WireguardGo();
  }
}

/** Everything missing, with what to install, before a single namespace is made. */
function preflight(overlays: Overlay[], opts: Options): void {
  if (process.getuid?.() !== 0) {
    throw new Error('the bench needs root (network namespaces, TUN/TAP devices): sudo npm run bench:peers');
  }
  const common: Requirement[] = [
    { what: 'ip (on PATH)', present: () => hasProgram('ip'), install: 'apt-get install iproute2' },
    { what: 'ping (on PATH)', present: () => hasProgram('ping'), install: 'apt-get install iputils-ping' },
    { what: 'iperf3 (on PATH)', present: () => hasProgram('iperf3'), install: 'apt-get install iperf3' },
    { what: '/dev/net/tun', present: () => fs.existsSync('/dev/net/tun'), install: 'modprobe tun' },
  ];
  if (opts.breakdown) {
    common.push({
      what: 'tcpdump (on PATH, for the ping breakdown)',
      present: () => hasProgram('tcpdump'),
      install: 'apt-get install tcpdump (or pass --no-breakdown)',
    });
  }
  const missing = [
    ...common.filter((r) => !r.present()).map((r) => `  ${r.what}: ${r.install}`),
    ...overlays.flatMap((o) =>
      o
        .requirements()
        .filter((r) => !r.present())
        .map((r) => `  ${o.label} needs ${r.what}: ${r.install}`),
    ),
  ];
  if (missing.length) throw new Error(`missing, install before running the bench:\n${missing.join('\n')}`);
}

/** Ends everything the overlay's turn started (its daemons first of all, also after a half-finished up()). */
async function down(bed: Bed, o: Overlay): Promise<string[]> {
  await bed.stopAll();
  o.afterDown?.(bed);
  return bed.ensureClean();
}

async function measureOnce(bed: Bed, o: Overlay, run: number, opts: Options): Promise<RunFigures> {
  const started = Date.now();
  let downDone = false;
  try {
    const r = await o.up(bed);
    const setupMs = Date.now() - started;
    log(`  ${o.label}: up in ${(setupMs / 1000).toFixed(1)} s, MTU ${r.mtu}`);
    await ping(bed, PLAN.b.inner, { count: 20, intervalS: 0.01 }); // warm caches, sessions, neighbours
    const pingRest = await ping(bed, PLAN.b.inner, REST_PING);
    log(`  ${o.label}: ping at rest avg ${pingRest.avgMs} ms (${pingRest.lossPct} % lost)`);
    await pingFlood(bed, PLAN.b.inner, WARMUP_FLOOD_PINGS);
    const pingWarm = await ping(bed, PLAN.b.inner, REST_PING);
    log(`  ${o.label}: ping at rest, warm, avg ${pingWarm.avgMs} ms (${pingWarm.lossPct} % lost)`);
    const breakdown = opts.breakdown ? await pingBreakdown(bed, r, BREAKDOWN_PING) : null;
    const tcp = await tcpWithPing(bed, r, opts.seconds);
    log(
      `  ${o.label}: TCP ${tcp.mbps.toFixed(0)} Mbit/s (${tcp.retransmits} retransmits, receiver's UDP socket dropped ${tcp.udpRcvbufDropPct.b} %), ping beside it ${tcp.pingUnderLoad.avgMs} / ${tcp.pingUnderLoad.maxMs} ms, CPU receiver ${tcp.cpuPct.b} % sender ${tcp.cpuPct.a} %`,
    );
    const udp1400 = await udpSearch(bed, UDP_DATAGRAM_BYTES, opts.probeSeconds);
    log(
      `  ${o.label}: UDP ${UDP_DATAGRAM_BYTES} B ${udp1400.mbps?.toFixed(0) ?? '—'} Mbit/s (${udp1400.probes.length} probes)`,
    );
    const udpMtu = await udpSearch(bed, r.mtu - IP_UDP_HEADER_BYTES, opts.probeSeconds);
    log(
      `  ${o.label}: UDP ${udpMtu.payloadBytes} B ${udpMtu.mbps?.toFixed(0) ?? '—'} Mbit/s (${udpMtu.probes.length} probes)`,
    );
    const figures = { run, setupMs, mtu: r.mtu, facts: r.facts, pingRest, pingWarm, breakdown, tcp, udp1400, udpMtu };
    const leftovers = await down(bed, o);
    downDone = true;
    return { ...figures, leftovers };
  } finally {
    if (!downDone) await down(bed, o);
  }
}

async function main(): Promise<number> {
  const opts = parseOptions();
  const overlays = opts.only.map(makeOverlay);
  preflight(overlays, opts);
  const benchStarted = Date.now();
  log(`building ${PLAN.a.ns} and ${PLAN.b.ns} (veth ${PLAN.a.underlay} ⇄ ${PLAN.b.underlay})…`);
  const bed = await Bed.create({ keepDir: opts.keepLogs });
  const results: OverlayResult[] = [];
  for (const o of overlays) {
    results.push({ id: o.id, label: o.label, version: await o.version(), runs: [], errors: [], median: null });
    log(`preparing ${o.label} (keys, configs)…`);
    await o.prepare(bed);
  }
  const underlayPing = await ping(bed, PLAN.b.underlay, REST_PING);

  for (let run = 1; run <= opts.runs; run++) {
    // Each run starts one overlay further along, so no overlay always runs first (or right after another).
    const order = overlays.map((_, i) => overlays[(i + run - 1) % overlays.length]);
    log(`run ${run}/${opts.runs}: ${order.map((o) => o.label).join(', ')}`);
    for (const o of order) {
      const res = results.find((x) => x.id === o.id)!;
      try {
        res.runs.push(await measureOnce(bed, o, run, opts));
      } catch (err) {
        const message = (err as Error).message;
        res.errors.push({ run, message });
        log(`  ${o.label}: FAILED: ${message}`);
      }
    }
  }
  for (const r of results) r.median = summarize(r.runs);
  const durationS = Math.round((Date.now() - benchStarted) / 1000);
  const dir = bed.dir;
  await bed.destroy();

  const date = new Date();
  const cpuModel = os.cpus()[0]?.model ?? 'unknown CPU';
  const heading = `Peer overlays side by side, ${date.toISOString().slice(0, 10)}: ${opts.runs} run(s), medians; iperf3 TCP ${opts.seconds} s, UDP probes ${opts.probeSeconds} s; ${cpuModel}, ${os.cpus().length} cores, Linux ${os.release()}; ${durationS} s in all`;
  const table = markdownTable(results);
  const bd = breakdownTable(results);
  const out = [
    '',
    heading,
    '',
    table,
    '',
    ...(bd ? [bd, ''] : []),
    `Underlay (plain veth) ping at rest: avg ${underlayPing.avgMs} ms. Versions: ${results.map((r) => r.version).join('; ')}.`,
  ];
  for (const r of results)
    for (const e of r.errors) out.push(`${r.label} run ${e.run} failed: ${e.message.split('\n')[0]}`);
  process.stdout.write(`${out.join('\n')}\n\n`);

  const json = {
    bench: 'peers',
    date: date.toISOString(),
    durationS,
    host: { cpu: cpuModel, cores: os.cpus().length, kernel: os.release(), node: process.version, load: os.loadavg() },
    setup: {
      namespaces: [PLAN.a.ns, PLAN.b.ns],
      underlay: { a: PLAN.a.underlay, b: PLAN.b.underlay, link: 'veth' },
      inner: { a: PLAN.a.inner, b: PLAN.b.inner },
      direction: 'a → b (iperf3 client and ping in a)',
      runs: opts.runs,
      iperf3TcpSeconds: opts.seconds,
      udpProbeSeconds: opts.probeSeconds,
      udpSearch: UDP_SEARCH,
      restPing: REST_PING,
      warmupFloodPings: WARMUP_FLOOD_PINGS,
      breakdownPing: opts.breakdown ? BREAKDOWN_PING : null,
      namespacePrefix: PREFIX,
      logsKeptIn: opts.keepLogs ? dir : null,
    },
    underlayPing,
    overlays: results,
    markdown: table,
  };
  const resultsDir = path.join(PROJECT_ROOT, 'bench', 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `peers-${date.toISOString().replace(/:/g, '-').replace(/\..*$/, '')}.json`);
  fs.writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(json)}\n`);
  log(`written to ${path.relative(process.cwd(), file) || file}${opts.keepLogs ? `; logs and configs in ${dir}` : ''}`);
  return results.every((r) => r.runs.length > 0) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    // Setup errors say what failed and what to do; a stack adds nothing for them (HOMEWIRE_BENCH_STACK=1 shows it).
    const text = process.env.HOMEWIRE_BENCH_STACK ? (err?.stack ?? err) : (err?.message ?? err);
    process.stderr.write(`bench:peers failed: ${text}\n`);
    process.exit(1);
  },
);
