// Guests survive their host's daemon (issue 11), with real QEMU guests (TCG) and the host agent inside
// `homewire up` (lab/coordinator/grid.ts, agents: 'daemon'):
//   - kill -9 the daemon of host-a with three guests running: two still answer pings on host-a's bridge during
//     the outage; the third is killed meanwhile. The restarted daemon re-adopts the two within 5 s (pid, start
//     time, argv and QMP name match), reports the third as failed (its VM says why), and leaves alone a process
//     whose pid a forged runtime.json names (another program, or another start time): never a reused pid.
//   - stop and migrate work on re-adopted guests.
//   - kill -9 the daemon in the middle of a live migration away from host-a: after the restart the operation is
//     settled (rolled back or landed): the VM runs on exactly one host and answers.
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { GridLab } from '../../lab/coordinator/grid.ts';
import { buildGuestImage } from '../../lab/guest-image.ts';
import { running } from '../../lab/netns.ts';
import { sleep } from '../../lab/run.ts';
import { deleteNamespaces, Lab } from '../../lab/topology.ts';
import { parseLease, vmPrefix, vmSiteConfig } from '../../lab/vm/guests.ts';
import { procStartTime } from '../../src/agent/qemu/process.ts';
import type { VmRecord } from '../../src/coordinator/types.ts';
import { vmTest } from '../helpers/vm.ts';

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
    await sleep(100);
  }
}

vmTest(
  'kill -9 the daemon: its guests keep running and answering, are re-adopted within 5 s, a dead one fails, a reused pid is never adopted; stop, migrate and an interrupted migration settle afterwards',
  async (t: ExecutionContext) => {
    t.timeout(600_000);
    const prefix = vmPrefix();
    let lab: Lab | null = null;
    t.teardown(async () => {
      if (lab) await lab.destroy();
      else await deleteNamespaces(prefix);
    });
    lab = await Lab.create({ prefix, siteConfig: vmSiteConfig({ dhcp: true }), upTimeoutMs: 60_000 });
    const image = buildGuestImage({ log: (m) => t.log(m) });
    const grid = await GridLab.start(lab, image, { agents: 'daemon', cpus: 4, logLevel: 'info' });
    await grid.addImage('tiny');
    const names = ['g1', 'g2', 'g3'];
    for (const n of names) await grid.ok('vm', 'create', n, '--image', 'tiny', '--memory', '128');
    await Promise.all(names.map((n) => grid.ok('vm', 'start', n, '--host', 'host-a')));
    const ips: Record<string, string> = {};
    for (const n of names) {
      const f = grid.serialLog('host-a', n);
      ips[n] = await waitUntil(`${n}'s lease`, 180_000, async () => {
        const text = fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
        return text.includes('HOMEWIRE-READY') ? (parseLease(text)?.ip ?? null) : null;
      });
    }
    t.log(`guests on host-a: ${names.map((n) => `${n} ${ips[n]}`).join(', ')}`);
    const runtime = (site: string, n: string) =>
      JSON.parse(fs.readFileSync(path.join(grid.stateDir(site), n, 'runtime.json'), 'utf8'));

    // Forged runtime records naming a live process that is not a guest: another program (argv differs), and
    // the same pid with another start time (what a reused pid looks like).
    const decoy = lab.spawn('host-a', ['sleep', '600']);
    await waitUntil('the decoy runs', 5000, async () => procStartTime(decoy.pid!) !== null);
    const decoyStart = procStartTime(decoy.pid!)!;
    const g1rt = runtime('host-a', 'g1');
    for (const [ghost, startTime] of [
      ['ghost-argv', decoyStart],
      ['ghost-start', decoyStart + 1],
    ] as const) {
      const dir = path.join(grid.stateDir('host-a'), ghost);
      fs.mkdirSync(dir, { recursive: true });
      const argv = ghost === 'ghost-argv' ? g1rt.argv : ['sleep', '600'];
      fs.writeFileSync(
        path.join(dir, 'runtime.json'),
        JSON.stringify({ ...g1rt, name: ghost, pid: decoy.pid, start_time: startTime, argv, phase: 'running' }),
      );
    }

    // kill -9 the daemon (and with it the agent): the guests run on.
    const daemon = lab.site('host-a').daemon!;
    daemon.kill('SIGKILL');
    await new Promise((r) =>
      daemon.exitCode !== null || daemon.signalCode !== null ? r(null) : daemon.once('exit', r),
    );
    t.log('killed host-a’s daemon (SIGKILL)');
    const during = await Promise.all(
      ['g1', 'g2'].map((n) => lab!.ping('guest-a', ips[n], { count: 10, intervalS: 0.1, waitS: 1 })),
    );
    for (const [i, n] of ['g1', 'g2'].entries())
      t.true(
        during[i].ok && during[i].lossPct === 0,
        `${n} answers on host-a's bridge during the outage: ${during[i].output}`,
      );
    const g3pid = runtime('host-a', 'g3').pid as number;
    process.kill(g3pid, 'SIGKILL');
    await waitUntil('g3 died', 5000, async () => !running(g3pid));

    const restartAt = Date.now();
    lab.startDaemon('host-a');
    const adopted = await waitUntil('the restarted agent re-adopted its guests', 30_000, async () =>
      lab!.logLines('host-a').find((l) => l.msg === 'guests of an earlier agent re-adopted'),
    );
    const adoptMs = adopted.time - restartAt;
    // Node and the modules take seconds to load on a busy machine before homewire runs at all: the 5 s count
    // from the daemon's first line ("homewire starting"); the whole time from the restart is logged beside it.
    const startingAt = lab.logLines('host-a').find((l) => l.msg === 'homewire starting')!.time;
    const fromStartMs = adopted.time - startingAt;
    t.log(
      `re-adopted ${JSON.stringify(adopted.adopted)} ${fromStartMs} ms after the daemon started (${adoptMs} ms after the restart, Node's start-up included; taking them over: ${adopted.ms} ms); dead: ${JSON.stringify(adopted.dead)}`,
    );
    t.deepEqual([...(adopted.adopted as string[])].sort(), ['g1', 'g2']);
    t.deepEqual([...(adopted.dead as string[])].sort(), ['g3', 'ghost-argv', 'ghost-start']);
    t.true(fromStartMs <= 5000, `re-adopted ${fromStartMs} ms after the daemon started (≤ 5 s)`);
    t.true(running(decoy.pid!), 'the process a forged record named was left alone');
    await lab.waitPeersUp(90_000);
    const g3 = await waitUntil('g3 is reported failed', 30_000, async () => {
      const v = await grid.json<VmRecord>('vm', 'show', 'g3');
      return v.state === 'failed' ? v : null;
    });
    t.regex(g3.error ?? '', /gone/, `g3: ${g3.error}`);
    for (const n of ['g1', 'g2']) {
      const v = await grid.json<VmRecord>('vm', 'show', n);
      t.is(v.state, 'running', `${n} still runs for the coordinator`);
      t.is(v.host, 'host-a');
    }
    t.true((await lab.ping('lan', ips.g1, { count: 3, intervalS: 0.2 })).ok, 'g1 answers over the mesh again');

    // Re-adopted guests obey: stop one, migrate the other.
    t.is((await grid.json<VmRecord>('vm', 'stop', 'g2')).state, 'stopped');
    t.false(fs.existsSync(path.join(grid.stateDir('host-a'), 'g2', 'runtime.json')), 'g2 stopped on host-a');
    const moved = await grid.json<VmRecord>('vm', 'migrate', 'g1', '--to', 'host-b');
    t.is(moved.host, 'host-b');
    t.true((await lab.ping('lan', ips.g1, { count: 3, intervalS: 0.2 })).ok, 'g1 answers from host-b');

    // Interrupted: kill -9 host-b's daemon while g1 migrates away from it, restart it.
    const r = await grid.cli('vm', 'migrate', 'g1', '--to', 'host-a', '--no-wait');
    t.is(r.code, 0, r.stderr);
    await waitUntil('the migration is under way', 60_000, async () => {
      const f = path.join(grid.stateDir('host-b'), 'g1', 'runtime.json');
      return fs.existsSync(f) && JSON.parse(fs.readFileSync(f, 'utf8')).phase === 'outgoing';
    });
    const daemonB = lab.site('host-b').daemon!;
    daemonB.kill('SIGKILL');
    await new Promise((r) =>
      daemonB.exitCode !== null || daemonB.signalCode !== null ? r(null) : daemonB.once('exit', r),
    );
    lab.startDaemon('host-b');
    const settled = await waitUntil('the migration is settled', 120_000, async () => {
      const v = await grid.json<VmRecord>('vm', 'show', 'g1');
      return v.state === 'migrating' ? null : v;
    });
    t.is(settled.state, 'running', `g1 after the interrupted migration: ${settled.state} (${settled.error})`);
    const report = lab.logLines('host-b').find((l) => l.msg === 'guests of an earlier agent re-adopted');
    t.log(
      `interrupted migration: host-b's agent found ${JSON.stringify(report?.settled ?? [])}; g1 runs on ${settled.host}`,
    );
    await waitUntil('exactly one QEMU runs g1', 30_000, async () => {
      const on = ['host-a', 'host-b'].filter((s) => fs.existsSync(path.join(grid.stateDir(s), 'g1', 'runtime.json')));
      return on.length === 1 && on[0] === settled.host;
    });
    await lab.waitPeersUp(90_000);
    t.true((await lab.ping('lan', ips.g1, { count: 5, intervalS: 0.2 })).ok, `g1 answers on ${settled.host}`);

    // --stop-guests-on-exit makes the other choice: a daemon started with it stops its guests when it stops.
    const on = settled.host!;
    const g1pid = runtime(on, 'g1').pid as number;
    await lab.stopDaemon(on); // SIGTERM: g1 keeps running
    t.true(running(g1pid), 'a plain daemon stop leaves the guest running');
    lab.startDaemon(on, ['--stop-guests-on-exit']);
    await waitUntil('re-adopted again', 60_000, async () =>
      lab!.logLines(on).find((l) => l.msg === 'guests of an earlier agent re-adopted'),
    );
    await lab.stopDaemon(on, { timeoutMs: 10_000 });
    await waitUntil('the guest stopped with the daemon', 10_000, async () => !running(g1pid));
    t.false(running(g1pid), 'with --stop-guests-on-exit the guest stopped with the daemon');
  },
);
