// VM operations on the leader: create, start, stop, migrate, delete. (Request validation is requests.ts;
// reconciling with what hosts report is reconcile.ts; the records and their lock are vm-records.ts.)
// Each operation has two phases: a short decision under one lock (check the state machine, place, write the
// transient state) and the long part outside it (commands to agents, then the final state). One operation
// per VM at a time: a second one gets 409 busy. An operation that this process did not start (the previous
// leader died mid-way) is settled from the hosts' reports once they have reported to the new leader.
import crypto from 'node:crypto';
import {
  AUTHORIZE_MOVE_TTL_MS,
  INCOMING_TIMEOUT_MS,
  MIGRATE_TIMEOUT_MS,
  SHORT_COMMAND_TIMEOUT_MS,
  START_TIMEOUT_MS,
  VM_MAC_PREFIX,
} from './constants.ts';
import { DEFAULT_MIGRATION_PORTS, migrationUri, newTlsPsk } from './migration.ts';
import { parseCreate } from './requests.ts';
import { checkOperation, holdsCapacity, type Operation, transition } from './states.ts';
import {
  ApiError,
  type CommandBody,
  type CommandResult,
  type HostRecord,
  type ImageRecord,
  type LaunchSpec,
  type VmRecord,
  type VmState,
} from './types.ts';
import type { VmRecords, VmRecordsDeps } from './vm-records.ts';

export class Lifecycle {
  /** Operation outcomes, read by metrics. */
  readonly stats = { started: 0, startFailed: 0, stopped: 0, migrated: 0, migrationFailed: 0 };
  private readonly d: VmRecordsDeps;
  /** Migration ports in use per destination host (chosen here, never by the hosts). */
  private readonly portsInUse = new Map<string, Set<number>>();

  constructor(private readonly r: VmRecords) {
    this.d = r.d;
  }

  get busy(): Map<string, Operation> {
    return this.r.busy;
  }

  get(name: string): Promise<VmRecord> {
    return this.r.get(name);
  }

  list(): Promise<VmRecord[]> {
    return this.r.list();
  }

  private async hostViews() {
    const [hosts, vms] = await Promise.all([this.d.store.list<HostRecord>('hosts'), this.list()]);
    return this.d.hosts.views(hosts, vms);
  }

  // ---- create / delete ---------------------------------------------------------------------------

  async create(body: unknown): Promise<VmRecord> {
    const req = parseCreate(body);
    return this.r.locked(async () => {
      if (!(await this.d.store.get<ImageRecord>('images', req.image))) {
        throw new ApiError(
          400,
          'unknown_image',
          `no image named ${req.image}: add it first (POST /v1/images, or images: in the coordinator config)`,
        );
      }
      const vms = await this.r.list();
      const mac = req.mac ?? this.newMac(vms);
      const ip = req.ip ?? null;
      const macOwner = vms.find((x) => x.mac === mac);
      if (macOwner) throw new ApiError(409, 'mac_taken', `mac ${mac} belongs to vm ${macOwner.name}`);
      const ipOwner = ip === null ? undefined : vms.find((x) => x.ip === ip);
      if (ipOwner) throw new ApiError(409, 'ip_taken', `ip ${ip} is reserved for vm ${ipOwner.name}`);
      const at = new Date(this.d.now()).toISOString();
      const vm: VmRecord = {
        name: req.name,
        image: req.image,
        cpus: req.cpus,
        memory_mib: req.memoryMib,
        mac,
        ip,
        state: 'defined',
        host: req.pinned ?? null,
        target: null,
        placement: req.placement,
        ...(req.cmdline ? { cmdline: req.cmdline } : {}),
        error: null,
        created_at: at,
        updated_at: at,
        generation: 1,
      };
      this.r.checkLeading();
      if (!(await this.d.store.create('vms', req.name, vm)))
        throw new ApiError(409, 'name_taken', `a vm named ${req.name} exists already`);
      this.d.log.info({ vm: req.name, mac, ip, image: req.image }, 'vm defined');
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
    const vm = await this.r.locked(async () => {
      const vm = await this.get(name);
      checkOperation(vm, 'delete');
      this.checkIdle(vm, 'delete');
      this.r.checkLeading();
      await this.d.store.delete('vms', name);
      return vm;
    });
    // A failed VM may have left a guest behind; if its host is up, ask it to clean up (no wait).
    if (vm.state === 'failed' && vm.host) this.r.fireAndForget(vm.host, { type: 'stop', name });
    this.d.log.info({ vm: name }, 'vm deleted');
  }

  // ---- start ---------------------------------------------------------------------------------------

  async start(name: string, o: { host?: string; wait?: boolean } = {}): Promise<VmRecord> {
    const { vm, image } = await this.r.locked(async () => {
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
          vm: await this.r.write(
            transition(vm, 'starting', { host: host.name, target: null, error: null }, this.r.date()),
          ),
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
          { type: 'start', vm: spec(vm, image, this.d.imageSources) },
          START_TIMEOUT_MS,
          'start_failed',
          `starting vm ${name} on ${host}`,
        );
      } catch (err) {
        this.stats.startFailed++;
        this.r.fireAndForget(host, { type: 'stop', name });
        await this.r.update(name, (v) => transition(v, 'failed', { error: (err as Error).message }, this.r.date()));
        throw err;
      }
      this.stats.started++;
      await this.r.update(name, (v) => transition(v, 'running', { error: null }, this.r.date()));
      this.d.log.info({ vm: name, host }, 'vm running');
    });
    return this.finish(name, vm, run, o.wait);
  }

  // ---- stop ----------------------------------------------------------------------------------------

  async stop(name: string, o: { wait?: boolean } = {}): Promise<VmRecord> {
    const vm = await this.r.locked(async () => {
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
      await this.r.update(name, (v) => transition(v, 'stopped', { target: null, error: note }, this.r.date()));
      this.d.log.info({ vm: name, host, note }, 'vm stopped');
    });
    return this.finish(name, vm, run, o.wait);
  }

  // ---- migrate ---------------------------------------------------------------------------------------

  async migrate(name: string, o: { host?: string; wait?: boolean } = {}): Promise<VmRecord> {
    const { vm, image } = await this.r.locked(async () => {
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
        return { vm: await this.r.write(transition(vm, 'migrating', { target: dest.name }, this.r.date())), image };
      } catch (err) {
        this.busy.delete(name);
        throw err;
      }
    });
    const run = this.operation(name, () => this.runMigration(vm, image));
    return this.finish(name, vm, run, o.wait);
  }

  /**
   * incoming on the destination (URI from its registered address and port range, a fresh TLS key) →
   * authorize-move at the source, the destination and the DHCP site → expect → QMP migrate on the source with
   * the same URI and key → confirm → stop the source.
   */
  private async runMigration(vm: VmRecord, image: ImageRecord): Promise<void> {
    const { name } = vm;
    const src = vm.host!;
    const dest = vm.target!;
    const started = this.d.now();
    this.d.log.info({ vm: name, from: src, to: dest }, 'migrating vm');
    const ports: number[] = []; // taken for this migration, given back when it ends
    try {
      const destRec = await this.d.store.get<HostRecord>('hosts', dest);
      if (!destRec?.address)
        throw new ApiError(409, 'migration_failed', `host ${dest} has no registered migration address`);
      const tlsPsk = newTlsPsk();
      let uri = '';
      // A port something else on the destination holds: once more with another one.
      for (let attempt = 1; ; attempt++) {
        const port = this.takePort(destRec);
        ports.push(port);
        uri = migrationUri(destRec.address, port);
        try {
          await this.command(
            dest,
            { type: 'incoming', vm: spec(vm, image, this.d.imageSources), uri, tls_psk: tlsPsk },
            INCOMING_TIMEOUT_MS,
            'migration_failed',
            `starting the incoming guest on ${dest}`,
          );
          break;
        } catch (err) {
          if (attempt > 1 || !/in use/i.test((err as Error).message)) throw err;
          this.d.log.warn({ vm: name, to: dest, uri }, 'migration port in use on the destination: trying another');
        }
      }
      await this.authorizeMove(vm, src, destRec);
      await this.command(
        dest,
        { type: 'expect', mac: vm.mac },
        SHORT_COMMAND_TIMEOUT_MS,
        'migration_failed',
        `telling ${dest}'s daemon that ${vm.mac} is about to arrive`,
      );
      await this.command(
        src,
        { type: 'migrate', name, uri, tls_psk: tlsPsk },
        MIGRATE_TIMEOUT_MS,
        'migration_failed',
        `migrating ${name} from ${src} to ${dest} (${uri})`,
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
      for (const p of ports) this.portsInUse.get(dest)?.delete(p);
      this.stats.migrationFailed++;
      const why = (err as Error).message;
      this.r.fireAndForget(dest, { type: 'stop', name });
      // The source keeps the VM: resume it if the migration had paused it.
      let back: CommandResult | null = null;
      try {
        back = await this.d.dispatch.send(src, { type: 'confirm', name, resume: true }, SHORT_COMMAND_TIMEOUT_MS);
        this.r.noteResult(src, back);
      } catch {
        /* source unreachable: failed below */
      }
      if (back?.ok && back.state === 'running') {
        await this.r.update(name, (v) =>
          transition(v, 'running', { target: null, error: `migration to ${dest} failed: ${why}` }, this.r.date()),
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
      await this.r.update(name, (v) =>
        transition(
          v,
          'failed',
          {
            target: null,
            error: `migration to ${dest} failed (${why}) and the source ${src} does not run it (${back?.error ?? back?.state ?? 'unreachable'})`,
          },
          this.r.date(),
        ),
      );
      throw new ApiError(
        409,
        'migration_failed',
        `migration of ${name} to ${dest} failed and the source no longer runs it: ${why}`,
      );
    }
    for (const p of ports) this.portsInUse.get(dest)?.delete(p);
    this.stats.migrated++;
    await this.r.update(name, (v) =>
      transition(v, 'running', { host: dest, target: null, error: null }, this.r.date()),
    );
    this.d.log.info({ vm: name, from: src, to: dest, ms: this.d.now() - started }, 'vm migrated');
    this.r.fireAndForget(src, { type: 'stop', name }); // the paused source copy; a leftover is stopped by reconcile
  }

  /** A port from the destination's registered range that no other migration to it uses now. */
  private takePort(dest: HostRecord): number {
    const [lo, hi] = dest.migration_ports ?? DEFAULT_MIGRATION_PORTS;
    const used = this.portsInUse.get(dest.name) ?? new Set<number>();
    this.portsInUse.set(dest.name, used);
    const n = hi - lo + 1;
    const first = crypto.randomInt(n);
    for (let i = 0; i < n; i++) {
      const p = lo + ((first + i) % n);
      if (!used.has(p)) {
        used.add(p);
        return p;
      }
    }
    throw new ApiError(409, 'migration_failed', `every migration port of ${dest.name} (${lo}-${hi}) is in use`);
  }

  /**
   * The daemons that must let the guest's MAC move to the destination site before its `expect`: the source,
   * the destination and the site(s) serving DHCP (the home LAN) are waited for; every other host that is up
   * is told too, without waiting (its guests may talk to this one).
   */
  private async authorizeMove(vm: VmRecord, src: string, dest: HostRecord): Promise<void> {
    if (!dest.public_key) {
      this.d.log.warn(
        { vm: vm.name, to: dest.name },
        "the destination registered no public key: its daemon's MAC ownership is not told about this migration",
      );
      return;
    }
    const body = {
      type: 'authorize-move',
      mac: vm.mac,
      site_key: dest.public_key,
      ttl_ms: AUTHORIZE_MOVE_TTL_MS,
    } as const;
    const hosts = await this.d.store.list<HostRecord>('hosts');
    const needed = new Set([src, dest.name, ...hosts.filter((h) => h.dhcp && h.state === 'up').map((h) => h.name)]);
    for (const h of hosts) if (!needed.has(h.name) && h.state === 'up') this.r.fireAndForget(h.name, body);
    await Promise.all(
      [...needed].map((h) =>
        this.command(
          h,
          body,
          SHORT_COMMAND_TIMEOUT_MS,
          'migration_failed',
          `authorizing ${vm.mac} to move to ${dest.name} at ${h}'s daemon`,
        ),
      ),
    );
  }

  /** A host was removed (`homewire host remove`): its idle VMs fail; running operations fail by themselves. */
  async hostRemoved(host: string): Promise<string[]> {
    this.portsInUse.delete(host);
    const failed: string[] = [];
    for (const vm of await this.list()) {
      if (vm.host !== host || this.busy.has(vm.name) || !holdsCapacity(vm.state)) continue;
      await this.r.update(vm.name, (v) =>
        v.host === host && holdsCapacity(v.state) && !this.busy.has(v.name)
          ? transition(v, 'failed', { target: null, error: `its host ${host} was removed` }, this.r.date())
          : v,
      );
      failed.push(vm.name);
    }
    return failed;
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

  /** One command; a result with ok=false becomes ApiError(409, code, "<what>: <agent's error>"). */
  private async command(
    host: string,
    body: CommandBody,
    timeoutMs: number,
    code: string,
    what: string,
  ): Promise<CommandResult> {
    let res: CommandResult;
    try {
      res = await this.d.dispatch.send(host, body, timeoutMs);
    } catch (err) {
      throw new ApiError(409, code, `${what}: ${(err as Error).message}`);
    }
    this.r.noteResult(host, res);
    if (!res.ok) throw new ApiError(409, code, `${what}: ${res.error ?? 'failed'}`);
    return res;
  }
}

export function spec(vm: VmRecord, image: ImageRecord, imageSources: string[]): LaunchSpec {
  const img = vm.cmdline ? { ...image, cmdline: vm.cmdline } : image;
  return {
    name: vm.name,
    mac: vm.mac,
    cpus: vm.cpus,
    memory_mib: vm.memory_mib,
    image: img,
    image_sources: imageSources,
  };
}

/** The DHCP reservations the coordinator holds, for the home site's daemon. */
export function reservations(vms: VmRecord[]): { mac: string; ip: string; vm: string }[] {
  return vms.filter((v) => v.ip).map((v) => ({ mac: v.mac, ip: v.ip!, vm: v.name }));
}

export type { VmState };
