// Reconciling the VM records with what hosts report, on the leader:
// - reconcile(): a host's fresh heartbeat. A running VM whose guest is gone fails; a guest that should not
//   run on that host (no record, or the VM lives elsewhere) is stopped; a disk it keeps for a VM that is gone,
//   or whose disk lives on another host now, is removed (a host that was down during a delete or a move).
// - settle(): operations nobody drives any more (the leader that ran them died mid-way). Once every host
//   involved has reported to the new leader, each starting or migrating VM gets the state its hosts show.
// The hardest logic of the coordinator; its tests are test/coordinator-reconcile.test.ts.
import { SHORT_COMMAND_TIMEOUT_MS } from './constants.ts';
import { transition } from './states.ts';
import type { GuestReport, VmRecord } from './types.ts';
import type { VmRecords } from './vm-records.ts';

export class Reconciler {
  /** Outcomes, read by metrics. */
  readonly stats = { crashed: 0, settled: 0, disksRemoved: 0 };

  constructor(private readonly r: VmRecords) {}

  /** A fresh report of a host's guests: crashed guests fail their VM, unknown guests are stopped. */
  async reconcile(host: string, guests: GuestReport[], disks: string[] = []): Promise<void> {
    const byName = new Map(guests.map((g) => [g.name, g]));
    const vms = await this.r.list();
    const known = new Map(vms.map((v) => [v.name, v]));
    for (const vm of vms) {
      if (this.r.busy.has(vm.name) || vm.state !== 'running' || vm.host !== host) continue;
      const g = byName.get(vm.name);
      if (g && g.state !== 'exited') continue;
      this.stats.crashed++;
      await this.r.locked(async () => {
        if (this.r.busy.has(vm.name)) return;
        const cur = await this.r.d.store.get<VmRecord>('vms', vm.name);
        if (cur?.state !== 'running' || cur.host !== host) return;
        await this.r.write(
          transition(
            cur,
            'failed',
            { error: `the guest on ${host} is gone (${g ? 'QEMU exited' : 'not running there'})` },
            this.r.date(),
          ),
        );
      });
      this.r.d.log.warn({ vm: vm.name, host }, 'vm failed: its guest is gone');
    }
    for (const g of guests) {
      const vm = known.get(g.name);
      if (vm && this.r.busy.has(vm.name)) continue;
      const belongs =
        vm !== undefined &&
        ((vm.host === host && (vm.state === 'running' || vm.state === 'starting' || vm.state === 'migrating')) ||
          (vm.state === 'migrating' && vm.target === host));
      if (belongs) continue;
      this.r.d.log.warn(
        { vm: g.name, host, state: vm?.state ?? 'no record' },
        'stopping a guest that should not run there',
      );
      this.r.fireAndForget(host, { type: 'stop', name: g.name });
    }
    for (const d of disks) {
      const vm = known.get(d);
      if (vm && this.r.busy.has(vm.name)) continue;
      const stale =
        vm === undefined ||
        (vm.disk_host != null && vm.disk_host !== host && !(vm.state === 'migrating' && vm.target === host));
      if (!stale || byName.get(d)?.state === 'running') continue; // a running guest is the stop above's business
      this.stats.disksRemoved++;
      this.r.d.log.warn(
        { vm: d, host, diskHost: vm?.disk_host ?? null },
        vm ? "removing a stale copy of a VM's disk" : 'removing the disk of a deleted VM',
      );
      this.r.fireAndForget(host, { type: 'stop', name: d, discard: true });
    }
  }

  /** Starting or migrating VMs that no operation here drives (the old leader died): settle from reports. */
  async settle(reported: (host: string) => GuestReport[] | null | 'down'): Promise<void> {
    for (const vm of await this.r.list()) {
      if (this.r.busy.has(vm.name) || (vm.state !== 'starting' && vm.state !== 'migrating')) continue;
      const src = reported(vm.host!);
      const dst = vm.target ? reported(vm.target) : 'down';
      if (src === null || dst === null) continue; // a host that is up has not reported yet
      const find = (r: GuestReport[] | 'down', n: string) => (r === 'down' ? undefined : r.find((g) => g.name === n));
      const gs = find(src, vm.name);
      const gd = find(dst, vm.name);
      this.r.busy.set(vm.name, vm.state === 'starting' ? 'start' : 'migrate');
      try {
        this.stats.settled++;
        if (vm.state === 'starting') {
          if (gs?.state === 'running')
            await this.r.update(vm.name, (v) => transition(v, 'running', { error: null }, this.r.date()));
          else {
            if (gs) this.r.fireAndForget(vm.host!, { type: 'stop', name: vm.name });
            await this.r.update(vm.name, (v) =>
              transition(
                v,
                'failed',
                { error: 'the start did not finish: the coordinator that ran it stopped' },
                this.r.date(),
              ),
            );
          }
        } else if (gd?.state === 'running') {
          await this.r.update(vm.name, (v) =>
            transition(v, 'running', { host: vm.target, target: null, error: null }, this.r.date()),
          );
          if (gs) this.r.fireAndForget(vm.host!, { type: 'stop', name: vm.name });
        } else {
          if (gd) this.r.fireAndForget(vm.target!, { type: 'stop', name: vm.name });
          let state = gs?.state;
          if (gs && state !== 'running') {
            const r = await this.r.d.dispatch
              .send(vm.host!, { type: 'confirm', name: vm.name, resume: true }, SHORT_COMMAND_TIMEOUT_MS)
              .catch(() => null);
            state = r?.ok && r.state === 'running' ? 'running' : state;
          }
          if (state === 'running') {
            await this.r.update(vm.name, (v) =>
              transition(
                v,
                'running',
                {
                  target: null,
                  error: 'the migration did not finish (coordinator failover); the vm stayed on the source',
                },
                this.r.date(),
              ),
            );
          } else {
            await this.r.update(vm.name, (v) =>
              transition(
                v,
                'failed',
                {
                  target: null,
                  error: 'the migration did not finish (coordinator failover) and neither host runs the vm',
                },
                this.r.date(),
              ),
            );
          }
        }
        this.r.d.log.warn({ vm: vm.name, was: vm.state }, 'settled an operation left by the previous leader');
      } catch (err) {
        this.r.d.log.error({ vm: vm.name, error: (err as Error).message }, 'could not settle vm');
      } finally {
        this.r.busy.delete(vm.name);
      }
    }
  }
}
