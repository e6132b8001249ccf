// What the overlay adds to a live migration's outage, beside kernel VXLAN learning, in network namespaces
// (prefix hwbm-): the 3-site lab (home with the LAN host, host-a, host-b), one QEMU guest (TCG, static address
// 198.51.100.50) migrated back and forth between host-a and host-b over the underlay, the LAN host pinging it
// every 2 ms, tcpdump on both guest TAPs. A benchmark reports figures; it never fails for being slow.
//
//   sudo node --import tsx bench/migration.ts [--runs N] [--modes expect,noexpect,off,vxlan] [--prefix hwbm]
//     --runs N    migrations per mode (default 10)
//     --modes     expect    homewire, `homewire expect` on the destination before QMP migrate
//                 expect-tls  as expect, the stream TLS with a pre-shared key as the host agents run it
//                 noexpect  homewire without expect: the destination announces the move when the RARP
//                           arrives
//                 off       homewire with mobility messages off (mobility.announce_moves: false): peers learn
//                           the move from the RARP broadcast alone, like a plain learning overlay
//                 vxlan     kernel VXLAN (id 42, learning, all-zero FDB flood entries to the other sites)
//                           bridged into br-hw instead of homewire's TAP: the reference
// Per migration, from the captures and the LAN host's ping (see lab/vm/measure.ts):
//   pause     the guest's pause on the wire: its last frame out of the source TAP → the first frame with its
//             MAC on the destination TAP (the destination QEMU's RARP)
//   nic gap   its ping reply gap at its own NIC: last echo reply out of the source TAP → first on the
//             destination (under TCG this includes the resumed guest's warm-up: a cold translation cache)
//   LAN gap   the LAN host's largest gap between two replies
//   adds      LAN gap − pause (the issue's figure) and LAN gap − nic gap (the path's own share)
//   forward   RARP → the first frame for the guest that the destination TAP carries (how soon the LAN's
//             traffic is redirected)
// Prints a table and JSON; writes the JSON to bench/results/migration-<date>.json.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { controlRequest } from '../src/control.ts';
import { buildGuestImage } from '../lab/guest-image.ts';
import { median, runOk, sleep } from '../lab/run.ts';
import { HOMEWIRE_BIN, Lab, PROJECT_ROOT, SITE_BRIDGE } from '../lab/topology.ts';
import { GUEST_TAP, LabGuests, vmSkipReason } from '../lab/vm/guests.ts';
import {
  firstTowardsGuest,
  fromGuestFilter,
  gapSpanning,
  nicResponse,
  replyGaps,
  startPing,
  towardsGuestFilter,
  wirePause,
} from '../lab/vm/measure.ts';
import { detectAccel, guestMac, type Vm, writePskDir } from '../src/agent/qemu/driver.ts';

type Mode = 'expect' | 'expect-tls' | 'expect-cli' | 'noexpect' | 'off' | 'vxlan';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const RUNS = Number(option('--runs', '10'));
/** Namespace prefix stem (default hwbm: hwbm-, hwbmo-, hwbmx-); another one lets two runs share a machine. */
const PREFIX = option('--prefix', 'hwbm');
const MODES = option('--modes', 'expect,noexpect,off,vxlan').split(',') as Mode[];
const GUEST_IP = '198.51.100.50';
const MAC = guestMac(0xbe01);
const PING_INTERVAL_S = 0.002;

interface Figures {
  mode: Mode;
  run: number;
  from: string;
  to: string;
  qemuTotalMs: number;
  qemuDowntimeMs: number;
  pauseMs: number | null;
  nicGapMs: number | null;
  lanGapMs: number | null;
  addsMs: number | null; // LAN gap − pause
  addsNicMs: number | null; // LAN gap − nic gap
  forwardMs: number | null;
  guestResponseMs: number | null; // the resumed guest's first answer at its NIC
  lost: number;
  error?: string;
}

const round = (x: number | null) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 10) / 10);

/** One migration of vm from one site to the other, with captures and a 2 ms ping from the LAN host. */
async function migrateOnce(
  lab: Lab,
  guests: LabGuests,
  vm: Vm,
  mode: Mode,
  run: number,
  from: string,
  to: string,
): Promise<{ figures: Figures; vm: Vm }> {
  // expect-tls: a fresh key per migration, in a directory each QEMU reads (what the host agents do).
  const keyDir =
    mode === 'expect-tls' ? path.join(lab.dir, `key-${run}-${crypto.randomBytes(3).toString('hex')}`) : null;
  if (keyDir) writePskDir(keyDir, crypto.randomBytes(32).toString('hex'));
  const dst = await guests.incoming(to, vm, undefined, keyDir ? { tlsPskDir: keyDir } : {});
  const file = (n: string) => path.join(lab.dir, `run${run}-${mode}-${n}.pcap`);
  const capFrom = await lab.capture(from, GUEST_TAP, file('from'), fromGuestFilter(MAC));
  const capTo = await lab.capture(to, GUEST_TAP, file('to'), fromGuestFilter(MAC));
  const capToOut = await lab.capture(to, GUEST_TAP, file('to-out'), towardsGuestFilter(MAC));
  const ping = startPing(lab, 'lan', GUEST_IP, PING_INTERVAL_S);
  await sleep(800);
  // The coordinator authorizes every homewire migration on every site first (security.mac_moves: authorized).
  if (mode !== 'vxlan') await lab.authorizeMove(MAC, to);
  if (mode === 'expect' || mode === 'expect-tls') {
    // What a coordinator's host agent does: one request on the daemon's control socket.
    const r = await controlRequest(
      path.join(lab.dir, `${to}.sock`),
      'POST',
      `/v1/expect?mac=${encodeURIComponent(MAC)}`,
    );
    if (!r.body.ok) throw new Error(`expect refused: ${r.body.error}`);
  } else if (mode === 'expect-cli') {
    await runOk('ip', [
      'netns',
      'exec',
      lab.ns(to),
      process.execPath,
      HOMEWIRE_BIN,
      'expect',
      '--config',
      lab.site(to).configFile,
      '--mac',
      MAC,
    ]);
  }
  const r = await vm.migrate(dst.uri, keyDir ? { tlsPskDir: keyDir } : {});
  await dst.vm.waitRunning(10_000);
  await sleep(1000);
  const trace = await ping.stop();
  const fromIn = await capFrom.stop();
  const toIn = await capTo.stop();
  const toOut = await capToOut.stop();
  await vm.stop();
  const p = wirePause(fromIn, toIn, MAC);
  const spanning = p ? gapSpanning(trace, (p.lastFromSourceMs + p.firstOnDestMs) / 2) : null;
  const largest = replyGaps(trace)[0] ?? null;
  const lanGap = largest ? largest.ms : null;
  const fwd = p ? firstTowardsGuest(toOut, MAC, p.firstOnDestMs) : null;
  const resp = p ? nicResponse(toIn, toOut, MAC, p.firstOnDestMs) : null;
  const figures: Figures = {
    mode,
    run,
    from,
    to,
    qemuTotalMs: r.totalTimeMs,
    qemuDowntimeMs: r.downtimeMs,
    pauseMs: round(p?.pauseMs ?? null),
    nicGapMs: round(p?.nicReplyGapMs ?? null),
    lanGapMs: round(lanGap),
    addsMs: round(p && lanGap !== null ? lanGap - p.pauseMs : null),
    addsNicMs: round(p?.nicReplyGapMs != null && lanGap !== null ? lanGap - p.nicReplyGapMs : null),
    forwardMs: round(p && fwd ? fwd.atMs - p.firstOnDestMs : null),
    guestResponseMs: round(resp?.ms ?? null),
    lost: trace.lost,
  };
  if (!p) figures.error = 'the captures did not see the guest on both TAPs';
  else if (spanning && largest && spanning.ms !== largest.ms)
    figures.error = `largest LAN gap (${round(largest.ms)} ms) is not the one over the pause (${round(spanning.ms)} ms)`;
  return { figures, vm: dst.vm };
}

/** Kernel VXLAN in place of homewire: vx0 on br-hw in every site, flooding to every other site's underlay address. */
async function addVxlan(lab: Lab): Promise<void> {
  for (const s of lab.sites) {
    await runOk('ip', [
      '-n',
      s.ns,
      'link',
      'add',
      'vx0',
      'type',
      'vxlan',
      'id',
      '42',
      'dstport',
      '4789',
      'local',
      s.underlay4,
      'dev',
      'eth0',
      'learning',
    ]);
    for (const o of lab.sites) {
      if (o !== s)
        await runOk('bridge', ['-n', s.ns, 'fdb', 'append', '00:00:00:00:00:00', 'dev', 'vx0', 'dst', o.underlay4]);
    }
    await runOk('ip', ['-n', s.ns, 'link', 'set', 'vx0', 'mtu', String(lab.tapMtu), 'master', SITE_BRIDGE, 'up']);
  }
}

async function runMode(modes: Mode[], prefix: string, runs: number, out: Figures[]): Promise<Record<string, unknown>> {
  const vxlan = modes[0] === 'vxlan';
  // 'off': homewire with its mobility messages switched off (plain data-plane learning, no expect).
  const siteConfig = modes[0] === 'off' ? () => 'mobility: { announce_moves: false }\n' : undefined;
  const lab = await Lab.create({ prefix, start: !vxlan, siteConfig });
  const guests = new LabGuests(lab, buildGuestImage({ log: (m) => process.stderr.write(`${m}\n`) }));
  const counters: Record<string, unknown> = {};
  try {
    if (vxlan) await addVxlan(lab);
    let { vm } = await guests.boot('host-a', { mac: MAC, ip: `${GUEST_IP}/24` });
    let at = 'host-a';
    const warm = await lab.ping('lan', GUEST_IP, { count: 5, intervalS: 0.1 });
    if (!warm.ok)
      throw new Error(`the LAN host cannot reach the guest over ${vxlan ? 'VXLAN' : 'homewire'}: ${warm.output}`);
    // Modes sharing a lab alternate, in an order that gives each mode both directions (a→b and b→a).
    for (let i = 0; i < runs; i++) {
      for (const mode of i % 2 ? [...modes].reverse() : modes) {
        const to = at === 'host-a' ? 'host-b' : 'host-a';
        try {
          const r = await migrateOnce(lab, guests, vm, mode, i + 1, at, to);
          vm = r.vm;
          at = to;
          out.push(r.figures);
          const f = r.figures;
          process.stderr.write(
            `${mode} #${i + 1} ${f.from}→${f.to}: pause ${f.pauseMs} ms, nic gap ${f.nicGapMs} ms, LAN gap ${f.lanGapMs} ms, ` +
              `adds ${f.addsMs} ms (vs nic ${f.addsNicMs} ms), forward ${f.forwardMs} ms, QEMU downtime ${f.qemuDowntimeMs} ms${f.error ? ` [${f.error}]` : ''}\n`,
          );
        } catch (err) {
          out.push({ mode, run: i + 1, from: at, to, error: String((err as Error).message ?? err) } as Figures);
          process.stderr.write(`${mode} #${i + 1}: ${(err as Error).message}\n`);
          throw err;
        }
        await sleep(500);
      }
    }
    if (!vxlan) {
      for (const s of lab.sites) {
        const st = await runOk('ip', [
          'netns',
          'exec',
          s.ns,
          process.execPath,
          HOMEWIRE_BIN,
          'status',
          '--config',
          s.configFile,
          '--json',
        ]);
        const j = JSON.parse(st.stdout);
        counters[s.name] = {
          mobility: j.mobility,
          drops: Object.fromEntries(Object.entries(j.drops).filter(([, v]) => (v as number) > 0)),
        };
      }
    }
  } finally {
    await guests.stopAll();
    await lab.destroy();
  }
  return counters;
}

function stats(xs: Array<number | null>): { median: number | null; max: number | null; min: number | null; n: number } {
  const v = xs.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length
    ? { median: round(median(v)), max: round(Math.max(...v)), min: round(Math.min(...v)), n: v.length }
    : { median: null, max: null, min: null, n: 0 };
}

async function main(): Promise<number> {
  const skip = vmSkipReason();
  if (skip) {
    process.stderr.write(`bench: ${skip}\n`);
    return 1;
  }
  if (!Number.isInteger(RUNS) || RUNS < 1) throw new Error('--runs needs a positive whole number');
  for (const m of MODES)
    if (!['expect', 'expect-tls', 'expect-cli', 'noexpect', 'off', 'vxlan'].includes(m))
      throw new Error(`unknown mode "${m}" (expect, expect-tls, expect-cli, noexpect, off, vxlan)`);
  const date = new Date();
  const loadBefore = os.loadavg()[0];
  const figures: Figures[] = [];
  const counters: Record<string, unknown> = {};
  const homewireModes = MODES.filter((m) => m !== 'vxlan' && m !== 'off');
  if (homewireModes.length) counters.homewire = await runMode(homewireModes, `${PREFIX}-`, RUNS, figures);
  if (MODES.includes('off')) counters.off = await runMode(['off'], `${PREFIX}o-`, RUNS, figures);
  if (MODES.includes('vxlan')) await runMode(['vxlan'], `${PREFIX}x-`, RUNS, figures);

  const label: Record<Mode, string> = {
    expect: 'homewire + expect',
    'expect-tls': 'homewire + expect, TLS-PSK stream',
    'expect-cli': 'homewire + expect (CLI)',
    noexpect: 'homewire, no expect',
    off: 'homewire, mobility messages off',
    vxlan: 'kernel VXLAN learning',
  };
  const summary = MODES.map((mode) => {
    const f = figures.filter((x) => x.mode === mode && !x.error?.startsWith('the captures'));
    return {
      mode,
      label: label[mode],
      runs: f.length,
      qemuTotalMs: stats(f.map((x) => x.qemuTotalMs)),
      qemuDowntimeMs: stats(f.map((x) => x.qemuDowntimeMs)),
      pauseMs: stats(f.map((x) => x.pauseMs)),
      nicGapMs: stats(f.map((x) => x.nicGapMs)),
      lanGapMs: stats(f.map((x) => x.lanGapMs)),
      addsMs: stats(f.map((x) => x.addsMs)),
      addsNicMs: stats(f.map((x) => x.addsNicMs)),
      forwardMs: stats(f.map((x) => x.forwardMs)),
      guestResponseMs: stats(f.map((x) => x.guestResponseMs)),
      lost: stats(f.map((x) => x.lost)),
    };
  });
  const cpuModel = os.cpus()[0]?.model ?? 'unknown CPU';
  const result = {
    date: date.toISOString(),
    host: {
      cpu: cpuModel,
      cores: os.cpus().length,
      kernel: os.release(),
      node: process.version,
      accel: detectAccel(),
      loadavg1Before: round(loadBefore),
      loadavg1After: round(os.loadavg()[0]),
    },
    setup: {
      runsPerMode: RUNS,
      pingIntervalMs: PING_INTERVAL_S * 1000,
      guest: `${GUEST_IP}, ${MAC}, 128 MiB, QEMU ${detectAccel()}`,
    },
    summary,
    counters,
    runs: figures,
  };

  const cell = (s: { median: number | null; max: number | null }) =>
    `${s.median ?? '—'} / ${s.max ?? '—'}`.padStart(15);
  const lines = [
    '',
    `live migration host-a ⇄ host-b, ${RUNS} per mode, LAN host pinging every ${PING_INTERVAL_S * 1000} ms; guest under ${detectAccel().toUpperCase()}`,
    `${cpuModel}, ${os.cpus().length} cores, Linux ${os.release()}, Node ${process.version}`,
    `load average (1 min) ${loadBefore.toFixed(1)} before, ${os.loadavg()[0].toFixed(1)} after${Math.max(loadBefore, os.loadavg()[0]) > os.cpus().length ? ': the machine was busy with more than this bench, figures are noisier' : ''}`,
    'all figures ms, median / max',
    '',
    `${'mode'.padEnd(22)} ${'QEMU downtime'.padStart(15)} ${'pause (RARP)'.padStart(15)} ${'nic reply gap'.padStart(15)} ${'LAN gap'.padStart(15)} ${'LAN − pause'.padStart(15)} ${'LAN − nic gap'.padStart(15)} ${'forward'.padStart(15)}`,
  ];
  for (const s of summary) {
    lines.push(
      `${s.label.padEnd(22)} ${cell(s.qemuDowntimeMs)} ${cell(s.pauseMs)} ${cell(s.nicGapMs)} ${cell(s.lanGapMs)} ${cell(s.addsMs)} ${cell(s.addsNicMs)} ${cell(s.forwardMs)}`,
    );
  }
  lines.push(
    '',
    "LAN − pause: what the LAN host saw beyond the guest's pause up to its RARP (includes a TCG guest's warm-up after resume);",
    "LAN − nic gap: beyond the reply gap at the guest's own NIC; forward: RARP → first frame for the guest on the destination TAP.",
  );
  process.stdout.write(`${lines.join('\n')}\n\n`);

  const dir = path.join(PROJECT_ROOT, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `migration-${date.toISOString().replace(/:/g, '-').replace(/\..*$/, '')}.json`);
  fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify({ summary })}\n`);
  process.stderr.write(`written to ${path.relative(process.cwd(), file) || file}\n`);
  return summary.some((s) => s.runs > 0) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench failed: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
