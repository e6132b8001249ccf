// Warm images (issue 11), with real QEMU guests (TCG) and the coordinator driving two host agents:
//   a running guest (with a disk: random data and a 10 ms counter) is saved with `homewire vm snapshot`, and a
//   VM created from that warm image starts on the other host by resuming it: its uptime continues (it did not
//   boot), its disk has the data and a gapless counter. The saved guest runs as one VM at a time (same MAC);
//   a clone runs beside it with a new MAC on a new NIC and renews its DHCP lease; a host whose QEMU differs
//   from the manifest is not chosen by placement, and a start forced onto it is refused with the reason.
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { GridLab } from '../../lab/coordinator/grid.ts';
import { buildGuestImage, READY_MARK, RENEW_MARK } from '../../lab/guest-image.ts';
import { runOk, sleep } from '../../lab/run.ts';
import { deleteNamespaces, Lab } from '../../lab/topology.ts';
import { parseLease, vmPrefix, vmSiteConfig } from '../../lab/vm/guests.ts';
import { diskCheck, diskMark, guestUptime } from '../../lab/vm/state.ts';
import type { HostView, ImageRecord, VmRecord } from '../../src/coordinator/types.ts';
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
  'snapshot a running guest, resume it on the other host: uptime and disk continue; one VM at a time; a host with another QEMU is not chosen and a forced start is refused',
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
    const grid = await GridLab.start(lab, image, { logLevel: 'info' });
    const base = path.join(lab.dir, 'base.raw');
    await runOk('sh', ['-c', `head -c ${8 * 2 ** 20} /dev/urandom > ${base}`]);
    await grid.addImage('tiny-disk', { disk: base });
    await grid.ok(
      'vm',
      'create',
      'web',
      '--image',
      'tiny-disk',
      '--memory',
      '128',
      '--disk',
      '1',
      '--cmdline',
      'quiet hw.disk=16',
    );
    await grid.ok('vm', 'start', 'web', '--host', 'host-a');
    const serialA = grid.serialLog('host-a', 'web');
    const mark = await waitUntil('the guest wrote its disk', 180_000, async () =>
      diskMark(fs.existsSync(serialA) ? fs.readFileSync(serialA, 'utf8') : ''),
    );
    const ip = parseLease(fs.readFileSync(serialA, 'utf8'))!.ip;
    await sleep(2000); // let the counter run a while
    const before = await guestUptime(lab, 'lan', ip);

    const saved = await grid.json<ImageRecord>('vm', 'snapshot', 'web', '--image', 'web-warm');
    const w = saved.warm!;
    t.log(
      `warm image web-warm: state ${(w.state.bytes / 2 ** 20).toFixed(1)} MiB, overlay ${((w.overlay?.bytes ?? 0) / 2 ** 20).toFixed(1)} MiB, ` +
        `manifest ${JSON.stringify(w.manifest)}; the guest's uptime was ${before} s`,
    );
    t.truthy(w.overlay, 'the frozen overlay is part of it');
    const qemuA = (await grid.json<{ hosts: HostView[] }>('host', 'list')).hosts.find((h) => h.name === 'host-a')!
      .hypervisor.qemu_version;
    t.is(w.manifest.qemu, qemuA ?? '(none)');
    t.is(w.manifest.memory_mib, 128);
    t.deepEqual(w.manifest.devices, ['virtio-net-pci', 'virtio-blk-pci']);
    t.true(
      (await lab.ping('lan', ip, { count: 2, intervalS: 0.2 })).ok,
      'the original keeps running after the snapshot',
    );
    const snapEvent = grid.agentEvents('host-a', 'guest state saved').at(-1);
    t.log(`the snapshot paused the guest for ${snapEvent?.pauseMs} ms`);

    // One VM at a time: the saved guest's MAC runs already (web), so web2 may be defined but not started.
    const web2 = await grid.json<VmRecord>('vm', 'create', 'web2', '--image', 'web-warm');
    const web = await grid.json<VmRecord>('vm', 'show', 'web');
    t.is(web2.mac, web.mac, 'a VM resumed from the image has the MAC in its memory');
    t.is(web2.memory_mib, 128);
    const busy = await grid.cli('vm', 'start', 'web2', '--host', 'host-b');
    t.not(busy.code, 0);
    t.regex(busy.stderr, /runs with the same MAC/);
    await grid.ok('vm', 'stop', 'web');

    const startedAt = Date.now();
    const resumed = await grid.json<VmRecord>('vm', 'start', 'web2', '--host', 'host-b');
    t.is(resumed.state, 'running');
    const after = await waitUntil('web2 answers on host-b', 60_000, async () =>
      guestUptime(lab!, 'lan', ip).catch(() => null),
    );
    const resumeMs = Date.now() - startedAt;
    t.log(
      `web2 resumed on host-b: uptime ${after} s (was ${before} s before the snapshot), answering ${resumeMs} ms after vm start`,
    );
    t.true(after >= before, 'its uptime continues');
    t.true(after < before + (Date.now() - startedAt) / 1000 + 120, 'from the snapshot, not from some other run');
    const serialB = fs.readFileSync(grid.serialLog('host-b', 'web2'), 'utf8');
    t.false(serialB.includes(READY_MARK), 'it did not boot on host-b');
    const c = await diskCheck(lab, 'lan', ip);
    t.is(c.sha256, mark.sha256, 'the frozen disk came along');
    t.is(c.gaps, 0, 'the counter has no gaps');

    // A clone runs beside it: a new MAC on a new NIC, and the guest renews its lease for it.
    const clone = await grid.json<VmRecord>('vm', 'create', 'web4', '--image', 'web-warm', '--clone');
    t.not(clone.mac, web.mac, 'a clone has its own MAC');
    const cloned = await grid.json<VmRecord>('vm', 'start', 'web4', '--host', 'host-a');
    t.regex(cloned.note ?? '', /must renew its DHCP lease/, `the agent says so: ${cloned.note}`);
    const serialClone = grid.serialLog('host-a', 'web4');
    // Its console log starts at the resume: the only lease in it is the one it renewed.
    const cloneIp = await waitUntil('the clone renewed its lease', 90_000, async () => {
      const text = fs.existsSync(serialClone) ? fs.readFileSync(serialClone, 'utf8') : '';
      return text.includes(`${RENEW_MARK} mac=${clone.mac}`) ? (parseLease(text)?.ip ?? null) : null;
    });
    t.log(`clone web4 on host-a: ${cloned.note}; its new lease ${cloneIp} (the original has ${ip})`);
    t.not(cloneIp, ip, 'the clone got an address of its own');
    t.true((await lab.ping('lan', cloneIp, { count: 3, intervalS: 0.2 })).ok, 'the clone answers on its new address');
    t.true((await lab.ping('lan', ip, { count: 3, intervalS: 0.2 })).ok, 'and the original on its own');
    t.true((await guestUptime(lab, 'lan', cloneIp)) >= before, 'the clone continues the saved guest too');
    await grid.ok('vm', 'stop', 'web4');

    // A host whose QEMU differs: host-a's agent restarts with a QEMU that says it is 8.1.0.
    const wrapper = path.join(lab.dir, 'qemu-8.1.sh');
    fs.writeFileSync(
      wrapper,
      '#!/bin/sh\n[ "$1" = --version ] && { echo "QEMU emulator version 8.1.0"; exit 0; }\nexec qemu-system-x86_64 "$@"\n',
      { mode: 0o755 },
    );
    const agentA = grid.agents.get('host-a')!;
    agentA.kill('SIGTERM');
    await new Promise((r) =>
      agentA.exitCode !== null || agentA.signalCode !== null ? r(null) : agentA.once('exit', r),
    );
    grid.writeAgentConfig('host-a', [`qemu_binary: ${wrapper}`]);
    grid.startAgent('host-a');
    await waitUntil('host-a runs "QEMU 8.1.0"', 30_000, async () => {
      const h = (await grid.json<{ hosts: HostView[] }>('host', 'list')).hosts.find((x) => x.name === 'host-a');
      return h?.state === 'up' && h.hypervisor.qemu_version === '8.1.0';
    });
    await grid.ok('vm', 'create', 'web3', '--image', 'web-warm');
    await grid.ok('vm', 'stop', 'web2');
    const forced = await grid.cli('vm', 'start', 'web3', '--host', 'host-a');
    t.not(forced.code, 0);
    t.regex(forced.stderr, /host-a, which cannot resume warm image web-warm: it has QEMU 8\.1\.0, not 7\.2/);
    t.log(`forced start on host-a: ${forced.stderr.trim()}`);
    const placed = await grid.json<VmRecord>('vm', 'start', 'web3');
    t.is(placed.host, 'host-b', 'placement chose the host whose QEMU matches');
  },
);
