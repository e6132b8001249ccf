// The coordinator driving real QEMU guests (TCG) in the namespace topology (lab/topology.ts):
//   underlay namespace: the coordinator (192.0.2.254:7100, SQLite) and an HTTP image server (:8080) with the
//                       lab's own kernel + busybox initramfs (lab/guest-image.ts)
//   host-a, host-b:     `homewire up` (the lab's daemons) and beside each a host agent (`homewire agent`)
//   home:               `homewire up` with the DHCP server; the LAN host pings from behind it
// Every admin step is the real CLI, run in the underlay namespace: image add, vm create, vm start on host-a
// (the guest gets a home-network lease), vm migrate to host-b while the LAN host pings every 10 ms, vm stop
// (QEMU, TAP and capacity released), vm delete. Needs root, QEMU and the guest image packages.
import type { DhcpLeaseInfo } from '../../src/dhcp/server.ts';
import type { MacStatus } from '../../src/status.ts';
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import { tapName } from '../../src/agent/qemu/hypervisor.ts';
import { GridLab } from '../../lab/coordinator/grid.ts';
import type { HostView, VmRecord } from '../../src/coordinator/types.ts';
import { buildGuestImage, LEASE_MARK } from '../../lab/guest-image.ts';
import { sleep } from '../../lab/run.ts';
import { deleteNamespaces, HOMEWIRE_BIN, Lab, PLAN } from '../../lab/topology.ts';
import { parseLease, vmPrefix, vmSiteConfig } from '../../lab/vm/guests.ts';
import { vmTest } from '../helpers/vm.ts';
import { replyGaps, startPing } from '../../lab/vm/measure.ts';

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
  'coordinator + host agents drive real QEMU guests: start on host-a with a home lease, migrate to host-b under 10 ms pings, stop releases everything',
  async (t: ExecutionContext) => {
    t.timeout(240_000);
    const prefix = vmPrefix();
    let lab: Lab | null = null;
    t.teardown(async () => {
      if (lab) await lab.destroy();
      else await deleteNamespaces(prefix); // ends the agents, and with them their QEMUs
    });
    lab = await Lab.create({ prefix, siteConfig: vmSiteConfig({ dhcp: true }) });
    const image = buildGuestImage({ log: (m) => t.log(m) });
    const grid = await GridLab.start(lab, image);
    const ok = (...argv: string[]) => grid.ok(...argv);
    const json = <T>(...argv: string[]) => grid.json<T>(...argv);
    const logs = () => grid.logs();
    // home's daemon joins too, without a hypervisor (GridLab: it takes the coordinator's moves and reservations).
    const all = (await json<{ hosts: HostView[] }>('host', 'list')).hosts;
    t.deepEqual(
      all.filter((h) => h.name === 'home').map((h) => [h.state, h.hypervisor.kind]),
      [['up', 'none']],
    );
    const hosts = all.filter((h) => h.name !== 'home');
    t.deepEqual(
      hosts.map((h) => [h.name, h.state, h.hypervisor.kind, h.hypervisor.accel]),
      [
        ['host-a', 'up', 'qemu', 'tcg'],
        ['host-b', 'up', 'qemu', 'tcg'],
      ],
    );
    t.log(await ok('host', 'list'));

    // The image: the test's own kernel and busybox initramfs, from the image server, with their SHA-256.
    await grid.addImage('tiny');
    const created = await json<VmRecord>('vm', 'create', 'web', '--image', 'tiny', '--memory', '128');
    t.is(created.state, 'defined');

    // Start on host-a: the agent fetches and verifies the image, QEMU boots, the guest asks the home site for a lease.
    const startedAt = Date.now();
    const running = await json<VmRecord>('vm', 'start', 'web', '--host', 'host-a');
    t.is(running.state, 'running');
    t.is(running.host, 'host-a');
    const serialA = grid.serialLog('host-a', 'web');
    const lease = await waitUntil("the guest's DHCP lease", 60_000, async () => {
      const text = fs.existsSync(serialA) ? fs.readFileSync(serialA, 'utf8') : '';
      return text.includes('HOMEWIRE-READY') ? parseLease(text) : null;
    }).catch((err) => {
      throw new Error(
        `${err.message}\n--- serial ---\n${fs.existsSync(serialA) ? fs.readFileSync(serialA, 'utf8').slice(-1500) : '(none)'}\n${logs()}`,
      );
    });
    t.log(
      `guest ${created.mac} running on host-a with ${lease.ip}/${lease.mask} from ${lease.server} after ${Date.now() - startedAt} ms`,
    );
    t.regex(fs.readFileSync(serialA, 'utf8'), new RegExp(LEASE_MARK));
    t.is(lease.server, PLAN.dhcpServer, "the lease came from the home site's DHCP server");
    const poolIp = Number(lease.ip.split('.')[3]);
    t.true(lease.ip.startsWith('198.51.100.') && poolIp >= 100 && poolIp <= 199, `${lease.ip} is from the home pool`);
    const homeStatus = JSON.parse(
      (
        await lab.exec('home', [
          process.execPath,
          HOMEWIRE_BIN,
          'status',
          '--config',
          lab.site('home').configFile,
          '--json',
        ])
      ).stdout,
    );
    t.truthy(
      homeStatus.dhcp.leases.find((l: DhcpLeaseInfo) => l.mac === created.mac && l.ip === lease.ip),
      'home lists the lease',
    );
    // home's agent reports its leases with its heartbeats: the API (and the page) show the pool address.
    const shown = await waitUntil('the lease in `vm show`', 10_000, async () => {
      const v = await json<VmRecord>('vm', 'show', 'web');
      return v.lease_ip === lease.ip ? v : null;
    });
    t.is(shown.ip, null, 'no reservation: the address is the lease home reported');
    t.true(
      (await lab.ping('lan', lease.ip, { count: 3, intervalS: 0.1 })).ok,
      'the LAN host reaches the guest on host-a',
    );

    // Migrate to host-b while the LAN host pings every 10 ms.
    const ping = startPing(lab, 'lan', lease.ip, 0.01);
    await sleep(1500);
    // A migration is authorized on every site before it starts (security.mac_moves: authorized): the
    // coordinator tells every site's agent, home's included; nothing here does it by hand.
    const migrateAt = Date.now();
    const migrated = await json<VmRecord>('vm', 'migrate', 'web', '--to', 'host-b');
    const migratedAt = Date.now();
    t.is(migrated.state, 'running');
    t.is(migrated.host, 'host-b');
    await sleep(2000);
    const trace = await ping.stop();
    const gaps = replyGaps(trace);
    const during = trace.replies.filter((r) => r.atMs > migratedAt).length;
    // Requests after the move, by sequence number (ping -i 0.01 sends 60-100 a second here, by load, not 100).
    const beforeMove = trace.replies.filter((r) => r.atMs <= migratedAt).at(-1)?.seq ?? 0;
    const askedAfter = (trace.replies.at(-1)?.seq ?? 0) - beforeMove;
    t.log(
      `vm migrate took ${migratedAt - migrateAt} ms (CLI included); LAN ping 10 ms: ${trace.replies.length} replies, ${trace.lost} lost; ` +
        `largest gaps ${gaps
          .slice(0, 3)
          .map((g) => `${g.ms.toFixed(0)} ms`)
          .join(', ')}; ${during} replies to the ${askedAfter} requests after the migration`,
    );
    t.true(trace.replies.length > 200, 'pings were answered throughout');
    t.true(askedAfter >= 100 && during >= 0.9 * askedAfter, 'and keep flowing from host-b');
    t.true(gaps[0].ms < 1000, `largest reply gap ${gaps[0].ms.toFixed(0)} ms < 1 s`);
    t.true(trace.lost <= 25, `${trace.lost} of ${trace.transmitted} pings lost`);
    const homeAfter = JSON.parse(
      (
        await lab.exec('home', [
          process.execPath,
          HOMEWIRE_BIN,
          'status',
          '--config',
          lab.site('home').configFile,
          '--json',
        ])
      ).stdout,
    );
    t.is(
      homeAfter.macs.find((m: MacStatus) => m.mac === created.mac)?.port,
      'host-b',
      "home's switch has the guest behind host-b",
    );
    t.false(await lab.hasLink('host-a', tapName('web')), 'the source QEMU and its TAP are gone from host-a');
    t.true(await lab.hasLink('host-b', tapName('web')), "the guest's TAP is on host-b");
    t.regex(await ok('vm', 'list'), /web\s+running\s+host-b\s+tiny/);

    // Stop releases everything: QEMU, its TAP, the host's capacity.
    const stopped = await json<VmRecord>('vm', 'stop', 'web');
    t.is(stopped.state, 'stopped');
    t.false(await lab.hasLink('host-b', tapName('web')), 'TAP gone from host-b');
    const qemus = (
      await lab.exec('host-b', ['sh', '-c', `ip netns pids ${lab.ns('host-b')} | xargs -r -n1 -I{} cat /proc/{}/comm`])
    ).stdout;
    t.notRegex(qemus, /qemu/, 'no QEMU left in host-b');
    const after = (await json<{ hosts: HostView[] }>('host', 'list')).hosts;
    for (const h of after.filter((x) => x.name !== 'home'))
      t.deepEqual([h.name, h.free, h.vms], [h.name, { cpus: 2, memory_mib: 1024 }, []]);
    t.false((await lab.ping('lan', lease.ip, { count: 2, intervalS: 0.2, waitS: 1 })).ok, 'the guest is gone');
    t.regex(await ok('vm', 'delete', 'web'), /vm web deleted/);
    t.regex(await ok('vm', 'list'), /\(none\)/);
  },
);
