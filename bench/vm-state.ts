// What keeping VM state costs, with real QEMU guests (TCG) driven by the coordinator and host agents inside
// `homewire up` on the namespace lab (lab/coordinator/grid.ts, prefix hwvb-). A benchmark reports figures; it
// never fails for being slow.
//
//   sudo node --import tsx bench/vm-state.ts [--runs N] [--sizes 0,64,512] [--parts migrate,warm,adopt]
//     migrate   live migration with the disk (overlay mirrored over NBD, RAM with pause-before-switchover)
//               for a guest that wrote 0, 64 and 512 MiB to its overlay: the guest's pause (source STOP →
//               destination RESUME, QEMU's own timestamps), the whole `vm migrate` (CLI to answer), the agent's
//               migrate command, and the bytes the source sent; N migrations per size, alternating A ⇄ B
//     warm      `vm start` to the LAN host's first echo reply: a cold boot (kernel, init, DHCP) against a
//               resume from a warm image (`vm snapshot`), N of each (the first warm start also fetches the
//               saved state from the coordinator; later ones find it in the host's cache)
//     adopt     kill -9 the daemon of a host running two guests and start it again: time from the restart to
//               the guests re-adopted (and how long taking them over took), N times
// Prints a table and JSON; writes the JSON to bench/results/vm-state-<date>.json.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GridLab } from '../lab/coordinator/grid.ts';
import { buildGuestImage } from '../lab/guest-image.ts';
import { median, runOk, sleep } from '../lab/run.ts';
import { Lab, PROJECT_ROOT } from '../lab/topology.ts';
import { parseLease, vmSiteConfig, vmSkipReason } from '../lab/vm/guests.ts';
import { diskMark } from '../lab/vm/state.ts';
import { detectAccel } from '../src/agent/qemu/driver.ts';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const RUNS = Number(option('--runs', '5'));
const SIZES = option('--sizes', '0,64,512').split(',').map(Number);
const PARTS = option('--parts', 'migrate,warm,adopt').split(',');
const MiB = 2 ** 20;
const round = (x: number) => Math.round(x * 10) / 10;

async function waitUntil<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | null | undefined | false>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}

function serial(grid: GridLab, site: string, vm: string): string {
  const f = grid.serialLog(site, vm);
  return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
}

/** Milliseconds from now until the LAN host first gets an echo reply from ip (pings every 20 ms). */
async function firstPing(lab: Lab, ip: string, timeoutMs = 180_000): Promise<number> {
  const started = Date.now();
  const r = await lab.exec(
    'lan',
    ['ping', '-n', '-i', '0.02', '-w', String(Math.ceil(timeoutMs / 1000)), '-c', '1', ip],
    {
      timeoutMs: timeoutMs + 5000,
    },
  );
  if (r.code !== 0) throw new Error(`no reply from ${ip} within ${timeoutMs} ms`);
  return Date.now() - started;
}

async function migrations(lab: Lab, grid: GridLab): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  const base = path.join(lab.dir, 'base.raw');
  await runOk('sh', ['-c', `head -c ${32 * MiB} /dev/urandom > ${base}`]);
  await grid.addImage('disk', { disk: base });
  for (const size of SIZES) {
    const name = `m${size}`;
    await grid.ok(
      'vm',
      'create',
      name,
      '--image',
      'disk',
      '--memory',
      '256',
      '--disk',
      '1',
      '--cmdline',
      `quiet hw.disk=${size}`,
    );
    await grid.ok('vm', 'start', name, '--host', 'host-a');
    await waitUntil(`${name} wrote ${size} MiB`, 900_000, async () => diskMark(serial(grid, 'host-a', name)));
    let at = 'host-a';
    for (let i = 0; i < RUNS; i++) {
      const to = at === 'host-a' ? 'host-b' : 'host-a';
      const before = await lab.linkStats(at, 'eth0');
      const t0 = Date.now();
      await grid.ok('vm', 'migrate', name, '--to', to);
      const cliMs = Date.now() - t0;
      const after = await lab.linkStats(at, 'eth0');
      const done = grid
        .agentEvents(at, 'migration completed')
        .filter((e) => e.vm === name)
        .at(-1)!;
      const landed = grid
        .agentEvents(to, 'incoming migration landed; guest resumed')
        .filter((e) => e.vm === name)
        .at(-1)!;
      const cmd = grid
        .agentEvents(at, 'command migrate done')
        .filter((e) => e.target === name)
        .at(-1);
      const row = {
        written_mib: size,
        run: i,
        from: at,
        to,
        pause_ms: round((landed.resumedAtMs as number) - (done.stoppedAtMs as number)),
        qemu_downtime_ms: done.downtimeMs,
        migrate_command_ms: cmd?.ms ?? null,
        cli_ms: cliMs,
        sent_mib: round((after.txBytes - before.txBytes) / MiB),
        ram_mib: round((done.ramBytes as number) / MiB),
      };
      out.push(row);
      process.stderr.write(`${JSON.stringify(row)}\n`);
      at = to;
      await sleep(1000);
    }
    await grid.ok('vm', 'stop', name);
    await grid.ok('vm', 'delete', name);
  }
  return out;
}

async function warmVsCold(lab: Lab, grid: GridLab): Promise<Record<string, unknown>> {
  await grid.addImage('tiny');
  const cold: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const name = `cold${i}`;
    await grid.ok('vm', 'create', name, '--image', 'tiny', '--memory', '128');
    const t0 = Date.now();
    await grid.ok('vm', 'start', name, '--host', 'host-b');
    // Its address comes from the home pool: the console says which once it has one (it cannot answer before).
    const ip = await waitUntil(`${name}'s lease`, 180_000, async () => parseLease(serial(grid, 'host-b', name))?.ip);
    await firstPing(lab, ip);
    cold.push(Date.now() - t0);
    process.stderr.write(`cold boot to first ping: ${cold.at(-1)} ms\n`);
    await grid.ok('vm', 'stop', name);
    await grid.ok('vm', 'delete', name);
  }
  // The warm image: a booted guest, saved once; resumed, it has the same address (its lease is in its memory).
  await grid.ok('vm', 'create', 'orig', '--image', 'tiny', '--memory', '128');
  await grid.ok('vm', 'start', 'orig', '--host', 'host-a');
  const ip = await waitUntil("orig's lease", 180_000, async () => parseLease(serial(grid, 'host-a', 'orig'))?.ip);
  await firstPing(lab, ip);
  await grid.ok('vm', 'snapshot', 'orig', '--image', 'tiny-warm');
  const saved = grid.agentEvents('host-a', 'guest state saved').at(-1);
  await grid.ok('vm', 'stop', 'orig');
  const warm: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const name = `warm${i}`;
    await grid.ok('vm', 'create', name, '--image', 'tiny-warm');
    const t0 = Date.now();
    await grid.ok('vm', 'start', name, '--host', 'host-b');
    await firstPing(lab, ip);
    warm.push(Date.now() - t0);
    process.stderr.write(`warm start to first ping: ${warm.at(-1)} ms\n`);
    await grid.ok('vm', 'stop', name);
    await grid.ok('vm', 'delete', name);
  }
  return {
    cold_ms: cold,
    warm_ms: warm,
    cold_median_ms: median(cold),
    warm_median_ms: median(warm),
    warm_cached_median_ms: median(warm.slice(1)),
    snapshot_pause_ms: saved?.pauseMs ?? null,
  };
}

async function adoption(lab: Lab, grid: GridLab): Promise<Record<string, unknown>> {
  await grid.addImage('tiny').catch(() => {}); // added by the warm part already
  for (const n of ['a1', 'a2']) {
    await grid.ok('vm', 'create', n, '--image', 'tiny', '--memory', '128');
    await grid.ok('vm', 'start', n, '--host', 'host-a');
  }
  await waitUntil('both guests booted', 300_000, async () =>
    ['a1', 'a2'].every((n) => serial(grid, 'host-a', n).includes('HOMEWIRE-READY')),
  );
  const restart: number[] = [];
  const takeover: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const d = lab.site('host-a').daemon!;
    d.kill('SIGKILL');
    await new Promise((r) => (d.exitCode !== null || d.signalCode !== null ? r(null) : d.once('exit', r)));
    const t0 = Date.now();
    lab.startDaemon('host-a');
    const line = await waitUntil('re-adopted', 60_000, async () =>
      lab.logLines('host-a').find((l) => l.msg === 'guests of an earlier agent re-adopted'),
    );
    restart.push(line.time - t0);
    takeover.push(line.ms as number);
    process.stderr.write(
      `re-adopted ${JSON.stringify(line.adopted)} ${line.time - t0} ms after the restart (${line.ms} ms to take over)\n`,
    );
    await lab.waitPeersUp(60_000);
    await sleep(1000);
  }
  return {
    restart_to_adopted_ms: restart,
    takeover_ms: takeover,
    median_restart_ms: median(restart),
    median_takeover_ms: median(takeover),
  };
}

async function main(): Promise<void> {
  const skip = vmSkipReason();
  if (skip) throw new Error(`cannot run: ${skip}`);
  const lab = await Lab.create({ prefix: 'hwvb-', siteConfig: vmSiteConfig({ dhcp: true }), upTimeoutMs: 60_000 });
  const result: Record<string, unknown> = {
    date: new Date().toISOString(),
    host: { cpus: os.cpus().length, model: os.cpus()[0]?.model, accel: detectAccel(), load: os.loadavg() },
    runs: RUNS,
  };
  try {
    const grid = await GridLab.start(lab, buildGuestImage(), {
      agents: 'daemon',
      cpus: 4,
      memoryMib: 2048,
      logLevel: 'info',
    });
    if (PARTS.includes('migrate')) result.migrate = await migrations(lab, grid);
    if (PARTS.includes('warm')) result.warm = await warmVsCold(lab, grid);
    if (PARTS.includes('adopt')) result.adopt = await adoption(lab, grid);
  } finally {
    await lab.destroy();
  }
  if (result.migrate) {
    const rows = result.migrate as Record<string, number>[];
    const lines = ['written MiB | pause ms (median, max) | migrate command ms (median) | source sent MiB (median)'];
    for (const size of SIZES) {
      const r = rows.filter((x) => x.written_mib === size);
      lines.push(
        `${size} | ${median(r.map((x) => x.pause_ms))}, ${Math.max(...r.map((x) => x.pause_ms))} | ${median(r.map((x) => x.migrate_command_ms))} | ${median(r.map((x) => x.sent_mib))}`,
      );
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  const dir = path.join(PROJECT_ROOT, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, `vm-state-${new Date().toISOString().slice(0, 10)}.json`),
    `${JSON.stringify(result, null, 2)}\n`,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
