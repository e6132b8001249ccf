// homewire against homewire: two checkouts (or one checkout with two environments) in the side-by-side bed of
// bench/peers.ts, interleaved A, B, A, B… in the same window, so a change to the data path is judged against
// the same machine load. For a busy shared machine: every round brings both variants up afresh, alternating
// which goes first; medians over rounds, with the load average before each round.
//
//   sudo node --import tsx bench/peers-ab.ts --base DIR [--rounds N] [--parts rest,load,udp,breakdown,loadsplit]
//        [--udp-rates 150,250,350] [--udp-bytes 1400] [--probe-seconds P] [--seconds S]
//        [--env-base K=V,...] [--env-new K=V,...]
//     --base DIR       the "before" checkout (built: npm run build); "new" is this checkout. Without --base both
//                      variants run this checkout (compare environments with --env-base / --env-new). --base tinc,
//                      nebula or wg: that peer overlay instead, as a yardstick
//     --parts          rest: ping at rest (200 × 10 ms); load: iperf3 TCP with a ping beside it; udp: iperf3 -u
//                      at each of --udp-rates (Mbit/s, fixed, loss per probe); breakdown: the tcpdump breakdown
//                      at rest; loadsplit: the load part again with tcpdump on both inner interfaces (median µs of
//                      the request's way a → b, b's echo, the reply's way b → a)
//     --hold [base]    bring "new" (or the base) up and wait (for perf/strace by hand); Ctrl-C ends it
// HOMEWIRE_BENCH_PREFIX=hwp2- (any prefix) keeps the namespaces apart from another bench running at once.
import fs from 'node:fs';
import os from 'node:os';
import { median, sleep } from '../lab/run.ts';
import { Bed, PLAN } from './peers/bed.ts';
import { pingBreakdown, pingSplitUnderLoad } from './peers/breakdown.ts';
import { Homewire } from './peers/homewire.ts';
import { Nebula } from './peers/nebula.ts';
import type { Overlay } from './peers/overlay.ts';
import { Tinc } from './peers/tinc.ts';
import { WireguardGo } from './peers/wireguard.ts';
import { ping, tcpWithPing, udpProbe } from './peers/measure.ts';

function opt(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}
function envOpt(name: string): Record<string, string> {
  const v = opt(name);
  if (!v) return {};
  return Object.fromEntries(v.split(',').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

const base = opt('--base');
const rounds = Number(opt('--rounds') ?? 3);
const parts = (opt('--parts') ?? 'rest,load,udp').split(',');
const udpRates = (opt('--udp-rates') ?? '150,250,350').split(',').map(Number);
const udpBytes = Number(opt('--udp-bytes') ?? 1400);
const probeSeconds = Number(opt('--probe-seconds') ?? 3);
const seconds = Number(opt('--seconds') ?? 8);
const log = (m: string) => process.stderr.write(`${m}\n`);
const load = () =>
  os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

type Figures = Record<string, number | null>;

/** CPU time (ns) of a process's main thread so far (the daemon's event loop: the whole data path by default). */
function mainThreadNs(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    return Number(fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ')[0]);
  } catch {
    return 0;
  }
}

async function measure(bed: Bed, v: Overlay): Promise<Figures> {
  const r = await v.up(bed);
  const f: Figures = {};
  try {
    // As bench/peers.ts: 20 pings to warm up, then the rest figure on a daemon that has just started.
    await ping(bed, PLAN.b.inner, { count: 20, intervalS: 0.01 });
    if (parts.includes('rest')) {
      const pids = [r.daemons.a.pid, r.daemons.b.pid];
      const before = pids.map(mainThreadNs);
      const p = await ping(bed, PLAN.b.inner, { count: 100, intervalS: 0.01 });
      const cpu = pids.map((pid, i) => Math.round((mainThreadNs(pid) - before[i]) / 1000 / 100));
      f['rest avg ms'] = p.avgMs;
      f['rest min ms'] = p.minMs;
      f['rest cpu a µs/ping'] = cpu[0];
      f['rest cpu b µs/ping'] = cpu[1];
    }
    if (parts.includes('breakdown')) {
      const b = await pingBreakdown(bed, r, { count: 50, intervalS: 0.02 });
      for (const [k, us] of Object.entries(b.medianUs ?? {})) f[`bd ${k} µs`] = us;
    }
    if (parts.includes('loadsplit')) {
      // The TCP stream with its pings again, with tcpdump on both inner interfaces: which way the ping waits.
      const { split, result } = await pingSplitUnderLoad(bed, r, () => tcpWithPing(bed, r, seconds));
      for (const [k, us] of Object.entries(split.medianUs ?? {})) f[`split ${k} µs`] = us;
      f['split matched'] = split.matched;
      f['split tcp Mbit/s'] = Math.round(result.mbps);
    }
    if (parts.includes('load')) {
      const t = await tcpWithPing(bed, r, seconds);
      f['tcp Mbit/s'] = Math.round(t.mbps);
      f['load ping avg ms'] = t.pingUnderLoad.avgMs;
      f['load ping max ms'] = t.pingUnderLoad.maxMs;
      f['tcp cpu b %'] = t.cpuPct.b;
    }
    if (parts.includes('rest2')) {
      // Warm: after the rest of the parts (a daemon whose data path JIT has had traffic).
      const pids = [r.daemons.a.pid, r.daemons.b.pid];
      const before = pids.map(mainThreadNs);
      const p = await ping(bed, PLAN.b.inner, { count: 200, intervalS: 0.01 });
      const cpu = pids.map((pid, i) => Math.round((mainThreadNs(pid) - before[i]) / 1000 / 200));
      f['rest2 avg ms'] = p.avgMs;
      f['rest2 cpu a µs/ping'] = cpu[0];
      f['rest2 cpu b µs/ping'] = cpu[1];
    }
    if (parts.includes('udp')) {
      for (const rate of udpRates) {
        const p = await udpProbe(bed, udpBytes, rate, probeSeconds);
        f[`udp ${rate} rx Mbit/s`] = Math.round(p.receivedMbps);
        f[`udp ${rate} loss %`] = p.lossPct;
      }
    }
  } finally {
    await bed.stopAll();
    await bed.ensureClean();
  }
  return f;
}

async function main(): Promise<void> {
  const bed = await Bed.create({ keepDir: process.argv.includes('--keep-logs') });
  const peer = { tinc: Tinc, nebula: Nebula, wg: WireguardGo }[base ?? ''];
  const variants: Overlay[] = [
    peer ? new peer() : new Homewire('base', base ?? undefined, envOpt('--env-base'), 'hw-base'),
    new Homewire('new', undefined, envOpt('--env-new'), 'hw-new'),
  ];
  for (const v of variants) await v.prepare(bed);
  if (process.argv.includes('--hold')) {
    const held = variants[process.argv[process.argv.indexOf('--hold') + 1] === 'base' ? 0 : 1];
    await held.up(bed);
    log(`up in ${PLAN.a.ns} / ${PLAN.b.ns}; logs in ${bed.dir}; Ctrl-C ends it`);
    await new Promise<void>((r) => process.once('SIGINT', () => r()));
    await bed.destroy();
    return;
  }
  const all: Figures[][] = [[], []];
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? [0, 1] : [1, 0];
    for (const i of order) {
      log(`round ${round + 1}/${rounds} ${variants[i].label}: load ${load()}`);
      try {
        const f = await measure(bed, variants[i]);
        log(`  ${JSON.stringify(f)}`);
        all[i].push(f);
      } catch (err) {
        log(`  failed: ${(err as Error).message.split('\n')[0]}`);
      }
      await sleep(500);
    }
  }
  await bed.destroy();
  const keys = [...new Set(all.flatMap((fs) => fs.flatMap((f) => Object.keys(f))))];
  const cell = (i: number, k: string) => {
    const xs = all[i].map((f) => f[k]).filter((x): x is number => typeof x === 'number');
    return xs.length ? `${median(xs)} (${xs.join(', ')})` : '—';
  };
  const lines = [`| median (runs) | base | new |`, '|---|---|---|'];
  for (const k of keys) lines.push(`| ${k} | ${cell(0, k)} | ${cell(1, k)} |`);
  process.stdout.write(`\n${rounds} rounds, load at the end ${load()}\n${lines.join('\n')}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`peers-ab failed: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
