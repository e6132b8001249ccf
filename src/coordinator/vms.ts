// VM lifecycle on the leader: create, start, stop, migrate, delete, and reconciling what hosts report.
// Each operation has two phases: a short decision under one lock (check the state machine, place, write the
// transient state) and the long part outside it (commands to agents, then the final state). One operation
// per VM at a time: a second one gets 409 busy. An operation that this process did not start (the previous
// leader died mid-way) is settled from the hosts' reports once they have reported to the new leader.
import crypto from 'node:crypto';
import net from 'node:net';
import type { Logger } from '../log.ts';
import {
  INCOMING_TIMEOUT_MS,
  MIGRATE_TIMEOUT_MS,
  SHORT_COMMAND_TIMEOUT_MS,
  START_TIMEOUT_MS,
  VM_CPUS_MAX,
  VM_DEFAULT_CPUS,
  VM_DEFAULT_MEMORY_MIB,
  VM_MAC_PREFIX,
  VM_MEMORY_MIB_MAX,
  VM_MEMORY_MIB_MIN,
} from './constants.ts';
import type { Dispatcher } from './dispatch.ts';
import type { HostRegistry } from './hosts.ts';
import { checkName } from './images.ts';
import { checkOperation, type Operation, transition } from './states.ts';
import type { Store } from './store.ts';
import {
  ApiError,
  type CommandBody,
  type CommandResult,
  type GuestReport,
  type HostRecord,
  type ImageRecord,
  type LaunchSpec,
  type VmRecord,
  type VmState,
} from './types.ts';

export interface LifecycleDeps {
  store: Store;
  hosts: HostRegistry;
  dispatch: Dispatcher;
  log: Logger;
  now: () => number;
  /** False once leadership is lost: nothing is written after that. */
  leading: () => boolean;
}

const CREATE_KEYS = ['name', 'image', 'cpus', 'memory_mib', 'mac', 'ip', 'host', 'site', 'labels', 'cmdline'];
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export class Lifecycle {
  /** VMs with an operation running in this process, and which. */
  readonly busy = new Map<string, Operation>();
  /** Operation outcomes, read by metrics. */
  readonly stats = { started: 0, startFailed: 0, stopped: 0, migrated: 0, migrationFailed: 0, crashed: 0, settled: 0 };
  private lockTail: Promise<unknown> = Promise.resolve();
  private readonly cleaning = new Set<string>();

  constructor(private readonly d: LifecycleDeps) {}

  /** Serializes the short decision phases (check, place, write), never the long commands. */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
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

  private async write(vm: VmRecord): Promise<VmRecord> {
    if (!this.d.leading()) throw new ApiError(503, 'not_leader', 'this coordinator is no longer the leader; retry');
    await this.d.store.put('vms', vm.name, vm);
    return vm;
  }

  private async hostViews() {
    const [hosts, vms] = await Promise.all([this.d.store.list<HostRecord>('hosts'), this.list()]);
    return this.d.hosts.views(hosts, vms);
  }

  // ---- create / delete ---------------------------------------------------------------------------

  async create(body: unknown): Promise<VmRecord> {
    if (body === null || typeof body !== 'object' || Array.isArray(body))
      bad('the body must be a JSON object { name, image, ... }');
    const o = body as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!CREATE_KEYS.includes(k)) bad(`unknown key "${k}"; allowed: ${CREATE_KEYS.join(', ')}`);
    const name = checkName(o.name, 'vm');
    const imageName = checkName(o.image, 'image');
    const cpus = o.cpus === undefined ? VM_DEFAULT_CPUS : int(o.cpus, 'cpus', 1, VM_CPUS_MAX);
    const memory =
      o.memory_mib === undefined
        ? VM_DEFAULT_MEMORY_MIB
        : int(o.memory_mib, 'memory_mib', VM_MEMORY_MIB_MIN, VM_MEMORY_MIB_MAX);
    const placement: VmRecord['placement'] = {};
    if (o.site !== undefined) placement.site = str(o.site, 'site');
    if (o.labels !== undefined) placement.labels = labels(o.labels);
    const pinned = o.host === undefined ? undefined : str(o.host, 'host');
    let cmdline: string | undefined;
    if (o.cmdline !== undefined) cmdline = str(o.cmdline, 'cmdline');
    return this.locked(async () => {
      if (!(await this.d.store.get<ImageRecord>('images', imageName))) {
        throw new ApiError(
          400,
          'unknown_image',
          `no image named ${imageName}: add it first (POST /v1/images, or images: in the coordinator config)`,
        );
      }
      const vms = await this.list();
      const mac = o.mac === undefined ? this.newMac(vms) : checkMac(o.mac, vms);
      const ip = o.ip === undefined || o.ip === null ? null : checkIp(o.ip, vms);
      const at = new Date(this.d.now()).toISOString();
      const vm: VmRecord = {
        name,
        image: imageName,
        cpus,
        memory_mib: memory,
        mac,
        ip,
        state: 'defined',
        host: pinned ?? null,
        target: null,
        placement,
        ...(cmdline ? { cmdline } : {}),
        error: null,
        created_at: at,
        updated_at: at,
        generation: 1,
      };
      if (!this.d.leading()) throw new ApiError(503, 'not_leader', 'this coordinator is no longer the leader; retry');
      if (!(await this.d.store.create('vms', name, vm)))
        throw new ApiError(409, 'name_taken', `a vm named ${name} exists already`);
      this.d.log.info({ vm: name, mac, ip, image: imageName }, 'vm defined');
      return vm;
    });
  }

  private newMac(vms: VmRecord[]): string {
    const used = new Set(vms.map((v) => v.mac));
    for (;;) {
      const tail = [...crypto.randomBytes(3)];
      const mac = [...VM_MAC_PREFIX, ...tail].map((b) => b.toString(16).padStart(2, '0')).join(':');
      if (!used.has(mac)) return mac;
    }
  }

  async delete(name: string): Promise<void> {
    const vm = await this.locked(async () => {
      const vm = await this.get(name);
      checkOperation(vm, 'delete');
      this.checkIdle(vm, 'delete');
      if (!this.d.leading()) throw new ApiError(503, 'not_leader', 'this coordinator is no longer the leader; retry');
      await this.d.store.delete('vms', name);
      return vm;
    });
    // A failed VM may have left a guest behind; if its host is up, ask it to clean up (no wait).
    if (vm.state === 'failed' && vm.host) this.fireAndForget(vm.host, { type: 'stop', name });
    this.d.log.info({ vm: name }, 'vm deleted');
  }

  // ---- start ---------------------------------------------------------------------------------------

  async start(name: string, o: { host?: string; wait?: boolean } = {}): Promise<VmRecord> {
    const { vm, image } = await this.locked(async () => {
      const vm = await this.get(name);
      checkOperation(vm, 'start');
      this.checkIdle(vm, 'start');
      const image = await this.d.store.get<ImageRecord>('images', vm.image);
      if (!image)
        throw new ApiError(
          409,
          'unknown_image',
          `vm ${name} uses image ${vm.image}, which no longer exists: add it again`,
        );
      const chosen = o.host ?? (vm.state === 'defined' ? (vm.host ?? undefined) : undefined);
      const host = this.d.hosts.place(await this.hostViews(), vm, { host: chosen });
      this.busy.set(name, 'start');
      try {
        return {
          vm: await this.write(transition(vm, 'starting', { host: host.name, target: null, error: null }, this.date())),
          image,
        };
      } catch (err) {
        this.busy.delete(name);
        throw err;
      }
    });
    const run = this.operation(name, async () => {
      const host = vm.host!;
      this.d.log.info({ vm: name, host }, 'starting vm');
      try {
        await this.command(
          host,
          { type: 'start', vm: spec(vm, image) },
          START_TIMEOUT_MS,
          'start_failed',
          `starting vm ${name} on ${host}`,
        );
      } catch (err) {
        this.stats.startFailed++;
        this.fireAndForget(host, { type: 'stop', name });
        await this.update(name, (v) => transition(v, 'failed', { error: (err as Error).message }, this.date()));
        throw err;
      }
      this.stats.started++;
      await this.update(name, (v) => transition(v, 'running', { error: null }, this.date()));
      this.d.log.info({ vm: name, host }, 'vm running');
    });
    return this.finish(name, vm, run, o.wait);
  }

  // ---- stop ----------------------------------------------------------------------------------------

  async stop(name: string, o: { wait?: boolean } = {}): Promise<VmRecord> {
    const vm = await this.locked(async () => {
      const vm = await this.get(name);
      checkOperation(vm, 'stop');
      this.checkIdle(vm, 'stop');
      this.busy.set(name, 'stop');
      return vm;
    });
    const run = this.operation(name, async () => {
      const host = vm.host;
      const rec = host ? await this.d.store.get<HostRecord>('hosts', host) : null;
      let note: string | null = null;
      if (host && this.d.hosts.isUp(rec)) {
        try {
          await this.command(
            host,
            { type: 'stop', name },
            SHORT_COMMAND_TIMEOUT_MS,
            'stop_failed',
            `stopping vm ${name} on ${host}`,
          );
        } catch (err) {
          if (vm.state === 'running') throw err; // still running there: the VM stays running
          note = `stopped here, but ${host} could not confirm: ${(err as Error).message}`;
        }
      } else if (host) {
        note = `host ${host} is down: its guest is stopped when the host reports again`;
      }
      this.stats.stopped++;
      await this.update(name, (v) => transition(v, 'stopped', { target: null, error: note }, this.date()));
      this.d.log.info({ vm: name, host, note }, 'vm stopped');
    });
    return this.finish(name, vm, run, o.wait);
  }

  // ---- migrate ---------------------------------------------------------------------------------------

  async migrate(name: string, o: { host?: string; wait?: boolean } = {}): Promise<VmRecord> {
    const { vm, image } = await this.locked(async () => {
      const vm = await this.get(name);
      checkOperation(vm, 'migrate');
      this.checkIdle(vm, 'migrate');
      const image = await this.d.store.get<ImageRecord>('images', vm.image);
      if (!image)
        throw new ApiError(
          409,
          'unknown_image',
          `vm ${name} uses image ${vm.image}, which no longer exists: add it again`,
        );
      const views = await this.hostViews();
      const src = views.find((h) => h.name === vm.host);
      if (src?.state !== 'up')
        throw new ApiError(
          409,
          'host_down',
          `vm ${name} runs on ${vm.host}, which is down: it cannot be migrated live`,
        );
      const dest = this.d.hosts.place(views, vm, { host: o.host, exclude: vm.host! });
      if (!dest.address)
        throw new ApiError(
          409,
          'no_host',
          `host ${dest.name} has no migration address (agent config migration_address)`,
        );
      this.busy.set(name, 'migrate');
      try {
        return { vm: await this.write(transition(vm, 'migrating', { target: dest.name }, this.date())), image };
      } catch (err) {
        this.busy.delete(name);
        throw err;
      }
    });
    const run = this.operation(name, () => this.runMigration(vm, image));
    return this.finish(name, vm, run, o.wait);
  }

  /** incoming on the destination → expect → QMP migrate on the source → confirm → stop the source. */
  private async runMigration(vm: VmRecord, image: ImageRecord): Promise<void> {
    const { name } = vm;
    const src = vm.host!;
    const dest = vm.target!;
    const started = this.d.now();
    this.d.log.info({ vm: name, from: src, to: dest }, 'migrating vm');
    try {
      const inc = await this.command(
        dest,
        { type: 'incoming', vm: spec(vm, image) },
        INCOMING_TIMEOUT_MS,
        'migration_failed',
        `starting the incoming guest on ${dest}`,
      );
      if (!inc.uri)
        throw new ApiError(409, 'migration_failed', `${dest} started the incoming guest but gave no migration URI`);
      await this.command(
        dest,
        { type: 'expect', mac: vm.mac },
        SHORT_COMMAND_TIMEOUT_MS,
        'migration_failed',
        `telling ${dest}'s daemon that ${vm.mac} is about to arrive`,
      );
      await this.command(
        src,
        { type: 'migrate', name, uri: inc.uri },
        MIGRATE_TIMEOUT_MS,
        'migration_failed',
        `migrating ${name} from ${src} to ${dest} (${inc.uri})`,
      );
      const conf = await this.command(
        dest,
        { type: 'confirm', name },
        SHORT_COMMAND_TIMEOUT_MS,
        'migration_failed',
        `confirming ${name} on ${dest}`,
      );
      if (conf.state !== 'running')
        throw new ApiError(
          409,
          'migration_failed',
          `after migration the guest on ${dest} is ${conf.state}, not running`,
        );
    } catch (err) {
      this.stats.migrationFailed++;
      const why = (err as Error).message;
      this.fireAndForget(dest, { type: 'stop', name });
      // The source keeps the VM: resume it if the migration had paused it.
      let back: CommandResult | null = null;
      try {
        back = await this.d.dispatch.send(src, { type: 'confirm', name, resume: true }, SHORT_COMMAND_TIMEOUT_MS);
        this.noteResult(src, back);
      } catch {
        /* source unreachable: failed below */
      }
      if (back?.ok && back.state === 'running') {
        await this.update(name, (v) =>
          transition(v, 'running', { target: null, error: `migration to ${dest} failed: ${why}` }, this.date()),
        );
        this.d.log.warn(
          { vm: name, from: src, to: dest, error: why },
          'migration failed; the vm keeps running on the source',
        );
        throw new ApiError(
          409,
          'migration_failed',
          `migration of ${name} to ${dest} failed, it keeps running on ${src}: ${why}`,
        );
      }
      await this.update(name, (v) =>
        transition(
          v,
          'failed',
          {
            target: null,
            error: `migration to ${dest} failed (${why}) and the source ${src} does not run it (${back?.error ?? back?.state ?? 'unreachable'})`,
          },
          this.date(),
        ),
      );
      throw new ApiError(
        409,
        'migration_failed',
        `migration of ${name} to ${dest} failed and the source no longer runs it: ${why}`,
      );
    }
    this.stats.migrated++;
    await this.update(name, (v) => transition(v, 'running', { host: dest, target: null, error: null }, this.date()));
    this.d.log.info({ vm: name, from: src, to: dest, ms: this.d.now() - started }, 'vm migrated');
    this.fireAndForget(src, { type: 'stop', name }); // the paused source copy; a leftover is stopped by reconcile
  }

  // ---- reconciling with what hosts report ----------------------------------------------------------

  /** A fresh report of a host's guests: crashed guests fail their VM, unknown guests are stopped. */
  async reconcile(host: string, guests: GuestReport[]): Promise<void> {
    const byName = new Map(guests.map((g) => [g.name, g]));
    const vms = await this.list();
    const known = new Map(vms.map((v) => [v.name, v]));
    for (const vm of vms) {
      if (this.busy.has(vm.name) || vm.state !== 'running' || vm.host !== host) continue;
      const g = byName.get(vm.name);
      if (g && g.state !== 'exited') continue;
      this.stats.crashed++;
      await this.locked(async () => {
        if (this.busy.has(vm.name)) return;
        const cur = await this.d.store.get<VmRecord>('vms', vm.name);
        if (cur?.state !== 'running' || cur.host !== host) return;
        await this.write(
          transition(
            cur,
            'failed',
            { error: `the guest on ${host} is gone (${g ? 'QEMU exited' : 'not running there'})` },
            this.date(),
          ),
        );
      });
      this.d.log.warn({ vm: vm.name, host }, 'vm failed: its guest is gone');
    }
    for (const g of guests) {
      const vm = known.get(g.name);
      if (vm && this.busy.has(vm.name)) continue;
      const belongs =
        vm !== undefined &&
        ((vm.host === host && (vm.state === 'running' || vm.state === 'starting' || vm.state === 'migrating')) ||
          (vm.state === 'migrating' && vm.target === host));
      if (belongs) continue;
      this.d.log.warn(
        { vm: g.name, host, state: vm?.state ?? 'no record' },
        'stopping a guest that should not run there',
      );
      this.fireAndForget(host, { type: 'stop', name: g.name });
    }
  }

  /** Starting or migrating VMs that no operation here drives (the old leader died): settle from reports. */
  async settle(reported: (host: string) => GuestReport[] | null | 'down'): Promise<void> {
    for (const vm of await this.list()) {
      if (this.busy.has(vm.name) || (vm.state !== 'starting' && vm.state !== 'migrating')) continue;
      const src = reported(vm.host!);
      const dst = vm.target ? reported(vm.target) : 'down';
      if (src === null || dst === null) continue; // a host that is up has not reported yet
      const find = (r: GuestReport[] | 'down', n: string) => (r === 'down' ? undefined : r.find((g) => g.name === n));
      const gs = find(src, vm.name);
      const gd = find(dst, vm.name);
      this.busy.set(vm.name, vm.state === 'starting' ? 'start' : 'migrate');
      try {
        this.stats.settled++;
        if (vm.state === 'starting') {
          if (gs?.state === 'running')
            await this.update(vm.name, (v) => transition(v, 'running', { error: null }, this.date()));
          else {
            if (gs) this.fireAndForget(vm.host!, { type: 'stop', name: vm.name });
            await this.update(vm.name, (v) =>
              transition(
                v,
                'failed',
                { error: 'the start did not finish: the coordinator that ran it stopped' },
                this.date(),
              ),
            );
          }
        } else if (gd?.state === 'running') {
          await this.update(vm.name, (v) =>
            transition(v, 'running', { host: vm.target, target: null, error: null }, this.date()),
          );
          if (gs) this.fireAndForget(vm.host!, { type: 'stop', name: vm.name });
        } else {
          if (gd) this.fireAndForget(vm.target!, { type: 'stop', name: vm.name });
          let state = gs?.state;
          if (gs && state !== 'running') {
            const r = await this.d.dispatch
              .send(vm.host!, { type: 'confirm', name: vm.name, resume: true }, SHORT_COMMAND_TIMEOUT_MS)
              .catch(() => null);
            state = r?.ok && r.state === 'running' ? 'running' : state;
          }
          if (state === 'running') {
            await this.update(vm.name, (v) =>
              transition(
                v,
                'running',
                {
                  target: null,
                  error: 'the migration did not finish (coordinator failover); the vm stayed on the source',
                },
                this.date(),
              ),
            );
          } else {
            await this.update(vm.name, (v) =>
              transition(
                v,
                'failed',
                {
                  target: null,
                  error: 'the migration did not finish (coordinator failover) and neither host runs the vm',
                },
                this.date(),
              ),
            );
          }
        }
        this.d.log.warn({ vm: vm.name, was: vm.state }, 'settled an operation left by the previous leader');
      } catch (err) {
        this.d.log.error({ vm: vm.name, error: (err as Error).message }, 'could not settle vm');
      } finally {
        this.busy.delete(vm.name);
      }
    }
  }

  // ---- helpers -------------------------------------------------------------------------------------

  private checkIdle(vm: VmRecord, op: Operation): void {
    const running = this.busy.get(vm.name);
    if (running)
      throw new ApiError(409, 'busy', `vm ${vm.name} is busy (${running} in progress): ${op} it when that ends`);
  }

  /** Runs the long phase; clears `busy` at the end, whatever happens. */
  private operation(name: string, fn: () => Promise<void>): Promise<void> {
    return fn().finally(() => this.busy.delete(name));
  }

  private async finish(name: string, vm: VmRecord, run: Promise<void>, wait = true): Promise<VmRecord> {
    if (!wait) {
      run.catch((err) => this.d.log.warn({ vm: name, error: (err as Error).message }, 'operation failed'));
      return (await this.d.store.get<VmRecord>('vms', name)) ?? vm;
    }
    await run;
    return this.get(name);
  }

  private async update(name: string, fn: (vm: VmRecord) => VmRecord): Promise<VmRecord> {
    return this.locked(async () => this.write(fn(await this.get(name))));
  }

  /** One command; a result with ok=false becomes ApiError(409, code, "<what>: <agent's error>"). */
  private async command(
    host: string,
    body: CommandBody,
    timeoutMs: number,
    code: string,
    what: string,
  ): Promise<CommandResult> {
    let r: CommandResult;
    try {
      r = await this.d.dispatch.send(host, body, timeoutMs);
    } catch (err) {
      throw new ApiError(409, code, `${what}: ${(err as Error).message}`);
    }
    this.noteResult(host, r);
    if (!r.ok) throw new ApiError(409, code, `${what}: ${r.error ?? 'failed'}`);
    return r;
  }

  private noteResult(host: string, r: CommandResult): void {
    this.d.hosts.noteResult(host, r.boot_id, r.guests_version);
  }

  /** A cleanup command nobody waits for; the same one is not sent again while it runs. */
  private fireAndForget(host: string, body: CommandBody): void {
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

  private date(): Date {
    return new Date(this.d.now());
  }
}

export function spec(vm: VmRecord, image: ImageRecord): LaunchSpec {
  const img = vm.cmdline ? { ...image, cmdline: vm.cmdline } : image;
  return { name: vm.name, mac: vm.mac, cpus: vm.cpus, memory_mib: vm.memory_mib, image: img };
}

/** The DHCP reservations the coordinator holds, for the home site's daemon. */
export function reservations(vms: VmRecord[]): { mac: string; ip: string; vm: string }[] {
  return vms.filter((v) => v.ip).map((v) => ({ mac: v.mac, ip: v.ip!, vm: v.name }));
}

export type { VmState };

function bad(message: string): never {
  throw new ApiError(400, 'bad_request', message);
}

function int(v: unknown, key: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    bad(`${key} must be a whole number from ${min} to ${max}`);
  return v as number;
}

function str(v: unknown, key: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > 1024) bad(`${key} must be a non-empty string`);
  return v as string;
}

function labels(v: unknown): Record<string, string> {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    bad('labels must be an object of strings { "gpu": "yes" }');
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v as object)) out[k] = str(x, `labels.${k}`);
  return out;
}

function checkMac(v: unknown, vms: VmRecord[]): string {
  const mac = typeof v === 'string' ? v.toLowerCase().replace(/-/g, ':') : '';
  if (!MAC_RE.test(mac)) bad(`mac ${JSON.stringify(v)} is not a MAC address like 02:68:77:00:00:01`);
  if (parseInt(mac.slice(0, 2), 16) & 1) bad(`mac ${mac} is a multicast address: the first octet must be even`);
  const other = vms.find((x) => x.mac === mac);
  if (other) throw new ApiError(409, 'mac_taken', `mac ${mac} belongs to vm ${other.name}`);
  return mac;
}

function checkIp(v: unknown, vms: VmRecord[]): string {
  if (typeof v !== 'string' || net.isIPv4(v) === false)
    bad(`ip ${JSON.stringify(v)} is not an IPv4 address: give the home-network address to reserve`);
  const other = vms.find((x) => x.ip === v);
  if (other) throw new ApiError(409, 'ip_taken', `ip ${v as string} is reserved for vm ${other.name}`);
  return v as string;
}
