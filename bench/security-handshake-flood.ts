// Handshake flood (issue 10): legitimate throughput and handshake completion time while ~20,000 bogus
// initiations per second hit the home daemon, with the handshake guard (mesh/cookie.ts) and without it.
// "Without" is the same daemon with the guard switched off in-process (bench/daemon-guard-off.mjs): no mac1
// check, no cookies, no per-source buckets; responses-first and the 4 ms turn budget stay. The flood is
// lab/rawsend.py hs-flood from the underlay namespace: type-1 datagrams with random Noise bytes and a VALID
// mac1 for home's key (the worst case: an attacker who knows the key), from random spoofed sources in
// 198.18.0.0/15. Two sites (home + host-a); iperf3 guest-a -> lan; host-a's daemon is restarted to time a
// fresh handshake (from its control socket answering to its status showing a completed handshake with home).
// Also reported: home's kernel UDP receive-buffer drops and home's daemon CPU during the sample. A
// benchmark: it reports, it never fails.
//
//   sudo node --import tsx bench/security-handshake-flood.ts [--runs 3] [--seconds 8] [--rate 20000]
import fs from 'node:fs';
import path from 'node:path';
import { median, runSync, sleep } from '../lab/run.ts';
import { HOMEWIRE_BIN, Lab, PLAN, PROJECT_ROOT } from '../lab/topology.ts';
import { controlRequest } from '../src/control.ts';
import type { StatusReport } from '../src/status.ts';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const RUNS = option('--runs', 3);
const SECONDS = option('--seconds', 8);
const RATE = option('--rate', 20_000);
const RAWSEND = path.join(PROJECT_ROOT, 'lab/rawsend.py');
const GUARD_OFF = [path.join(PROJECT_ROOT, 'bench/daemon-guard-off.mjs')];

const CLK_TCK = Number(runSync('getconf', ['CLK_TCK']).stdout.trim()) || 100;

function cpuTicks(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

interface Sample {
  mbps: number | null;
  rcvbufErrors: number; // home's kernel: datagrams dropped before the daemon read them
  homeCpuPct: number;
  handshakeMs: number | null; // null: not within the timeout
  floodPps: number | null;
  cookies: number;
  dh: number; // bogus initiations that reached the Noise handshake
}

const results: Record<string, { quiet: Sample[]; flood: Sample[] }> = {
  'guard on': { quiet: [], flood: [] },
  'guard off': { quiet: [], flood: [] },
};

async function homeStatus(lab: Lab): Promise<{ cookies: number; invalid: number }> {
  const r = await lab.exec('home', [
    process.execPath,
    HOMEWIRE_BIN,
    'status',
    '--json',
    '--config',
    lab.site('home').configFile,
  ]);
  const s = JSON.parse(r.stdout);
  return { cookies: s.security.handshakeGuard.cookies_sent, invalid: s.handshakes.invalid };
}

/** Restarts host-a; ms from its control socket answering to a completed handshake with home (null: > 30 s). */
async function handshakeMs(lab: Lab): Promise<number | null> {
  await lab.stopDaemon('host-a');
  lab.startDaemon('host-a');
  const sock = path.join(lab.dir, 'host-a.sock');
  const status = () =>
    controlRequest<StatusReport>(sock, 'GET', '/v1/status').then(
      (r) => r.body,
      () => null,
    );
  const deadline = Date.now() + 30_000;
  let readyAt = 0;
  while (Date.now() < deadline) {
    const s = await status();
    if (s !== null) {
      readyAt ||= Date.now();
      if (s.peers.find((p) => p.name === 'home')?.lastHandshakeSecondsAgo != null) return Date.now() - readyAt;
    }
    await sleep(20);
  }
  return null;
}

async function sample(lab: Lab, flood: boolean): Promise<Sample> {
  const before = await homeStatus(lab);
  const started = Date.now();
  const rcvBefore = (await lab.snmp('home'))['Udp.RcvbufErrors'];
  const homePid = lab.site('home').daemon?.pid;
  const cpuBefore = cpuTicks(homePid);
  // `ip netns exec` execs python: the child's pid is the flooder's, which SIGTERM stops (it prints its count).
  const attacker = flood
    ? lab.spawn(
        'ul',
        [
          'python3',
          RAWSEND,
          'hs-flood',
          lab.site('home').address,
          '51820',
          lab.site('home').publicKey,
          String(RATE),
          String(SECONDS + 40),
        ],
        { stdio: 'pipe' },
      )
    : null;
  let attackerOut = '';
  if (attacker?.stdout) {
    attacker.stdout.setEncoding('utf8').on('data', (d: string) => {
      attackerOut += d;
    });
  }
  const attackerDone = attacker ? new Promise((r) => attacker.once('exit', r)) : null;
  if (flood) await sleep(2000);
  let mbps: number | null = null;
  try {
    mbps = (await lab.iperf3('guest-a', 'lan', { seconds: SECONDS })).mbps;
  } catch {
    mbps = null;
  }
  const hs = await handshakeMs(lab);
  let floodPps: number | null = null;
  if (attacker) {
    attacker.kill('SIGTERM');
    await attackerDone;
    const m = /sent (\d+) in ([\d.]+) s/.exec(attackerOut);
    floodPps = m ? Math.round(Number(m[1]) / Number(m[2])) : null;
  }
  const after = await homeStatus(lab);
  const rcvbufErrors = (await lab.snmp('home'))['Udp.RcvbufErrors'] - rcvBefore;
  const homeCpuPct = Math.round(((cpuTicks(homePid) - cpuBefore) / CLK_TCK / ((Date.now() - started) / 1000)) * 100);
  process.stderr.write(`  ${flood ? 'flood' : 'quiet'}: ${Math.round((Date.now() - started) / 1000)} s\n`);
  return {
    mbps,
    rcvbufErrors,
    homeCpuPct,
    handshakeMs: hs,
    floodPps,
    cookies: after.cookies - before.cookies,
    dh: after.invalid - before.invalid,
  };
}

async function main(): Promise<void> {
  for (let run = 0; run < RUNS; run++) {
    for (const mode of Object.keys(results)) {
      const lab = await Lab.create({ prefix: 'hwsb-', sites: ['home', 'host-a'], start: false });
      try {
        lab.startDaemon('home', [], mode === 'guard off' ? GUARD_OFF : undefined);
        lab.startDaemon('host-a');
        await lab.waitPeersUp();
        await lab.exec('home', ['ip', 'route', 'add', '198.18.0.0/15', 'via', PLAN.internet4]);
        process.stderr.write(`run ${run + 1}/${RUNS}, ${mode}\n`);
        results[mode].quiet.push(await sample(lab, false));
        results[mode].flood.push(await sample(lab, true));
      } finally {
        await lab.destroy();
      }
    }
  }
  const fmt = (xs: Array<number | null>, unit: string) => {
    const ok = xs.filter((x): x is number => x !== null);
    const lost = xs.length - ok.length;
    if (ok.length === 0) return `none within 30 s (${lost}/${xs.length})`;
    return `${Math.round(median(ok))} ${unit} (${Math.round(Math.min(...ok))}-${Math.round(Math.max(...ok))})${lost ? `, ${lost}/${xs.length} not within 30 s` : ''}`;
  };
  const table: string[] = [];
  for (const [mode, r] of Object.entries(results)) {
    for (const [cond, xs] of Object.entries(r)) {
      table.push(
        `${mode.padEnd(10)} ${cond.padEnd(6)} iperf3 ${fmt(
          xs.map((x) => x.mbps),
          'Mbit/s',
        )}; handshake ${fmt(
          xs.map((x) => x.handshakeMs),
          'ms',
        )}${
          cond === 'flood'
            ? `; flood ${fmt(
                xs.map((x) => x.floodPps),
                'pps',
              )}; cookies ${xs.map((x) => x.cookies).join('/')}; DH on bogus ${xs.map((x) => x.dh).join('/')}`
            : ''
        }`,
      );
    }
  }
  process.stdout.write(
    `${table.join('\n')}\n${JSON.stringify({ date: new Date().toISOString(), RUNS, SECONDS, RATE, results })}\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
