// The VM records of the leader and the one lock that guards their short decision phases: shared by the
// operations (vms.ts) and by reconciliation with what hosts report (reconcile.ts). Which VMs have an
// operation running in this process is here too (`busy`): both sides must see it.
import type { Logger } from '../log.ts';
import { SHORT_COMMAND_TIMEOUT_MS } from './constants.ts';
import type { Dispatcher } from './dispatch.ts';
import type { HostRegistry } from './hosts.ts';
import type { Operation } from './states.ts';
import type { Store } from './store.ts';
import { ApiError, type CommandBody, type CommandResult, type VmRecord } from './types.ts';

export interface VmRecordsDeps {
  store: Store;
  hosts: HostRegistry;
  dispatch: Dispatcher;
  log: Logger;
  now: () => number;
  /** False once leadership is lost: nothing is written after that. */
  leading: () => boolean;
  /** The image allowlist, sent with every launch (the agent checks again). */
  imageSources: string[];
}

export class VmRecords {
  /** VMs with an operation running in this process, and which. */
  readonly busy = new Map<string, Operation>();
  private lockTail: Promise<unknown> = Promise.resolve();
  private readonly cleaning = new Set<string>();

  constructor(readonly d: VmRecordsDeps) {}

  /** Serializes the short decision phases (check, place, write), never the long commands. */
  locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lockTail.then(fn, fn);
    this.lockTail = run.catch(() => {});
    return run;
  }

  async get(name: string): Promise<VmRecord> {
    const vm = await this.d.store.get<VmRecord>('vms', name);
    if (!vm) throw new ApiError(404, 'not_found', `no vm named ${name} (homewire vm list)`);
    return vm;
  }

  list(): Promise<VmRecord[]> {
    return this.d.store.list<VmRecord>('vms');
  }

  checkLeading(): void {
    if (!this.d.leading()) throw new ApiError(503, 'not_leader', 'this coordinator is no longer the leader; retry');
  }

  async write(vm: VmRecord): Promise<VmRecord> {
    this.checkLeading();
    await this.d.store.put('vms', vm.name, vm);
    return vm;
  }

  async update(name: string, fn: (vm: VmRecord) => VmRecord): Promise<VmRecord> {
    return this.locked(async () => this.write(fn(await this.get(name))));
  }

  noteResult(host: string, r: CommandResult): void {
    this.d.hosts.noteResult(host, r.boot_id, r.guests_version);
  }

  /** A cleanup command nobody waits for; the same one is not sent again while it runs. */
  fireAndForget(host: string, body: CommandBody): void {
    const key = `${host}\0${JSON.stringify(body)}`;
    if (this.cleaning.has(key)) return;
    this.cleaning.add(key);
    this.d.dispatch
      .send(host, body, SHORT_COMMAND_TIMEOUT_MS)
      .then(
        (r) => {
          this.noteResult(host, r);
          if (!r.ok) this.d.log.warn({ host, command: body.type, error: r.error }, 'cleanup command failed');
        },
        (err) => this.d.log.warn({ host, command: body.type, error: (err as Error).message }, 'cleanup command failed'),
      )
      .finally(() => this.cleaning.delete(key));
  }

  date(): Date {
    return new Date(this.d.now());
  }
}
