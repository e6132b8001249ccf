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
  SNAPSHOT_TIMEOUT_MS,
  START_TIMEOUT_MS,
  VM_MAC_PREFIX,
} from './constants.ts';
import { checkName } from './images.ts';
import { DEFAULT_MIGRATION_PORTS, DISK_COPY_EXPORT, migrationUri, NBD_EXPORT, newTlsPsk } from './migration.ts';
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
import { checkOneAtATime, hasDisk, launchSpec, resumesWarm, warmCreate, warmUnfit } from './vm-state.ts';

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
    const given = {
      memory: (body as { memory_mib?: unknown }).memory_mib !== undefined,
      cpus: (body as { cpus?: unknown }).cpus !== undefined,
    };
    return this.r.locked(async () => {
      const image = await this.d.store.get<ImageRecord>('images', req.image);
      if (!image) {
        throw new ApiError(
          400,
          'unknown_image',
          `no image named ${req.image}: add it first (POST /v1/images, or images: in the coordinator config)`,
        );
      }
      if (req.clone && !image.warm)
        throw new ApiError(400, 'bad_request', `clone is for warm images; ${req.image} is a cold image`);
      // A warm image fixes memory, CPUs, disk size and (unless cloned) the MAC: they are in its saved state.
      const warm = image.warm ? warmCreate(image, req, given) : null;
      if (warm) {
        req.memoryMib = warm.memoryMib;
        req.cpus = warm.cpus;
      }
      const vms = await this.r.list();
      const mac = warm?.mac ?? req.mac ?? this.newMac(vms);
      const ip = req.ip ?? null;
      // The same saved guest may be defined more than once (it runs as one VM at a time: checked at start).
      const macOwner = vms.find((x) => x.mac === mac && !(warm && !req.clone && mac === image.warm!.mac));
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
        disk_gib: warm ? warm.diskGib : (req.diskGib ?? null),
        disk_host: null,
        ...(req.clone ? { clone: true } : {}),
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
    // A failed VM may have left a guest behind; if its host is up, ask it to clean up (no wait). Its disk goes
    // everywhere (a host that is down now is told when it reports again: reconcile).
    if (vm.state === 'failed' && vm.host && vm.host !== vm.disk_host)
      this.r.fireAndForget(vm.host, { type: 'stop', name });
    if (vm.disk_host) this.r.fireAndForget(vm.disk_host, { type: 'stop', name, discard: true });
    this.d.log.info({ vm: name }, 'vm deleted');
  }

  // ---- start ---------------------------------------------------------------------------------------

  async start(name: string, o: { host?: string; wait?: boolean } = {}): Promise<VmRecord> {
    const { vm, image, lastHost } = await this.r.locked(async () => {
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
      if (resumesWarm(vm, image) && !vm.clone) checkOneAtATime(vm, await this.r.list());
      const host = this.d.hosts.place(await this.hostViews(), vm, {
        host: chosen,
        need: (h) => warmUnfit(h, vm, image),
        prefer: vm.disk_host ?? null,
      });
      if (
        vm.disk_host &&
        vm.disk_host !== host.name &&
        !this.d.hosts.isUp(await this.d.store.get<HostRecord>('hosts', vm.disk_host))
      )
        throw new ApiError(
          409,
          'disk_unavailable',
          `vm ${name}'s disk is on ${vm.disk_host}, which is down: start it there when it is back, or wait`,
        );
      this.busy.set(name, 'start');
      try {
        return {
          vm: await this.r.write(
            transition(vm, 'starting', { host: host.name, target: null, error: null }, this.r.date()),
          ),
          image,
          lastHost: vm.host ?? null,
        };
      } catch (err) {
        this.busy.delete(name);
        throw err;
      }
    });
    const run = this.operation(name, async () => {
      const host = vm.host!;
      const diskHost = vm.disk_host ?? null;
      const copy = diskHost !== null && diskHost !== host; // stopped elsewhere: its disk moves here first
      this.d.log.info({ vm: name, host, ...(copy ? { diskFrom: diskHost } : {}) }, 'starting vm');
      let note: string | undefined;
      let exportPort: number | null = null;
      let exportFrom: string | null = null;
      try {
        const key = copy ? newTlsPsk() : undefined;
        let exported: CommandResult | null = null;
        if (copy) {
          const diskRec = await this.d.store.get<HostRecord>('hosts', diskHost);
          if (!diskRec?.address)
            throw new ApiError(409, 'start_failed', `host ${diskHost}, which has vm ${name}'s disk, has no address`);
          exportFrom = diskRec.address;
          exportPort = this.takePort(diskRec);
          exported = await this.command(
            diskHost,
            { type: 'export_disk', name, tls_psk: key!, port: exportPort },
            START_TIMEOUT_MS,
            'start_failed',
            `offering vm ${name}'s disk on ${diskHost} for a copy to ${host}`,
          );
        }
        // The MAC may still be known behind the host it last ran on (a stopped VM, a warm snapshot resumed
        // elsewhere): the daemons' MAC ownership is told it now lives here, as for a migration.
        // (The host it last ran on is told too when it is up; a dead one cannot be, and need not be.)
        const hostRec = await this.d.store.get<HostRecord>('hosts', host);
        const lastUp = lastHost !== null && this.d.hosts.isUp(await this.d.store.get<HostRecord>('hosts', lastHost));
        if (hostRec) await this.authorizeMove(vm, lastUp ? lastHost : host, hostRec, 'start_failed');
        const r = await this.command(
          host,
          {
            type: 'start',
            vm: spec(vm, image, this.d.imageSources),
            // Where to fetch it from is the disk host's registered address and the port chosen here; what to
            // expect (size, SHA-256) is the disk host's word, checked by the receiver.
            ...(exported?.disk && exportFrom
              ? {
                  disk_from: {
                    host: exportFrom,
                    port: exportPort!,
                    export: DISK_COPY_EXPORT,
                    bytes: exported.disk.bytes,
                    sha256: exported.disk.sha256,
                  },
                  tls_psk: key,
                }
              : {}),
          },
          START_TIMEOUT_MS,
          'start_failed',
          `starting vm ${name} on ${host}`,
        );
        note = r.note;
      } catch (err) {
        if (exportPort !== null) this.portsInUse.get(diskHost!)?.delete(exportPort);
        this.stats.startFailed++;
        // The new host's copy goes (never the only one: a failed start on the disk's own host keeps it).
        this.r.fireAndForget(host, { type: 'stop', name, discard: host !== diskHost });
        if (copy) this.r.fireAndForget(diskHost, { type: 'stop', name }); // ends the export, keeps the disk
        await this.r.update(name, (v) => transition(v, 'failed', { error: (err as Error).message }, this.r.date()));
        throw err;
      }
      if (exportPort !== null) this.portsInUse.get(diskHost!)?.delete(exportPort);
      this.stats.started++;
      const disk = hasDisk(vm, image);
      await this.r.update(name, (v) =>
        transition(
          v,
          'running',
          {
            error: null,
            note: note ?? null,
            disk_host: disk ? host : null,
            ...(resumesWarm(v, image) ? { resumed: true } : {}),
          },
          this.r.date(),
        ),
      );
      if (copy) this.r.fireAndForget(diskHost, { type: 'stop', name, discard: true }); // the copy runs here now
      this.d.log.info({ vm: name, host, note }, 'vm running');
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
      const dest = this.d.hosts.place(views, vm, {
        host: o.host,
        exclude: vm.host!,
        need: (h) => warmUnfit(h, vm, image),
      });
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
   * incoming on the destination (URI from its registered address and port range, a fresh TLS key; with a disk
   * also an NBD port of that range for the overlay's mirror) → authorize-move at the source, the destination and
   * the DHCP site → expect → QMP migrate on the source with the same URI, key and NBD target → confirm → stop
   * the source. The paused-guest steps of a disk migration run inside the agents (src/agent/qemu/).
   */
  private async runMigration(vm: VmRecord, image: ImageRecord): Promise<void> {
    const { name } = vm;
    const src = vm.host!;
    const dest = vm.target!;
    const started = this.d.now();
    const disk = hasDisk(vm, image);
    this.d.log.info({ vm: name, from: src, to: dest, disk }, 'migrating vm');
    const ports: number[] = []; // taken for this migration, given back when it ends
    const release = () => {
      for (const p of ports) this.portsInUse.get(dest)?.delete(p);
    };
    try {
      const destRec = await this.d.store.get<HostRecord>('hosts', dest);
      if (!destRec?.address)
        throw new ApiError(409, 'migration_failed', `host ${dest} has no registered migration address`);
      const tlsPsk = newTlsPsk();
      let uri = '';
      let nbdPort: number | null = null;
      // A port something else on the destination holds: once more with others.
      for (let attempt = 1; ; attempt++) {
        const port = this.takePort(destRec);
        ports.push(port);
        uri = migrationUri(destRec.address, port);
        if (disk) {
          nbdPort = this.takePort(destRec);
          ports.push(nbdPort);
        }
        try {
          await this.command(
            dest,
            {
              type: 'incoming',
              vm: spec(vm, image, this.d.imageSources),
              uri,
              tls_psk: tlsPsk,
              ...(nbdPort !== null ? { nbd_port: nbdPort } : {}),
            },
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
        {
          type: 'migrate',
          name,
          uri,
          tls_psk: tlsPsk,
          ...(nbdPort !== null ? { nbd: { host: destRec.address, port: nbdPort, export: NBD_EXPORT } } : {}),
        },
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
      release();
      // A step failed, but the guest may have landed anyway (the source's agent restarted mid-way and its
      // QEMU finished alone, or a result was lost): the destination knows. Never roll back a guest that runs.
      if (await this.landed(dest, name)) {
        this.d.log.warn(
          { vm: name, to: dest, error: (err as Error).message },
          'a migration step failed, but the guest runs on the destination: the migration stands',
        );
      } else return this.rollBackMigration(vm, err as Error);
    }
    release();
    this.stats.migrated++;
    await this.r.update(name, (v) =>
      transition(
        v,
        'running',
        { host: dest, target: null, error: null, ...(disk ? { disk_host: dest } : {}) },
        this.r.date(),
      ),
    );
    this.d.log.info({ vm: name, from: src, to: dest, ms: this.d.now() - started }, 'vm migrated');
    // The paused source copy and its (now stale) disk; a leftover is stopped by reconcile.
    this.r.fireAndForget(src, { type: 'stop', name, discard: true });
  }

  /** Whether the destination runs the guest (after a step of its migration failed). */
  private async landed(dest: string, name: string): Promise<boolean> {
    try {
      // No waiting: a guest still loading there is stopped by the rollback, which then resumes the source.
      const r = await this.d.dispatch.send(dest, { type: 'confirm', name, wait: false }, SHORT_COMMAND_TIMEOUT_MS);
      this.r.noteResult(dest, r);
      return r.ok && r.state === 'running';
    } catch {
      return false;
    }
  }

  /** The migration failed: the destination goes (files too: it never ran there), the source keeps the VM. */
  private async rollBackMigration(vm: VmRecord, err: Error): Promise<void> {
    const { name } = vm;
    const src = vm.host!;
    const dest = vm.target!;
    {
      this.stats.migrationFailed++;
      const why = err.message;
      this.r.fireAndForget(dest, { type: 'stop', name, discard: true }); // its files too: it never ran there
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
  private async authorizeMove(
    vm: VmRecord,
    src: string,
    dest: HostRecord,
    code: 'migration_failed' | 'start_failed' = 'migration_failed',
  ): Promise<void> {
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
          code,
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

  // ---- snapshot -----------------------------------------------------------------------------------

  /**
   * Saves a running VM's memory and disk (it keeps running) and publishes them as a warm image named `image`:
   * the VM's image files (kernel, initrd, base) plus the saved state and frozen overlay in the blob store.
   */
  async snapshot(name: string, o: { image: string }): Promise<ImageRecord> {
    checkName(o.image, 'image');
    const { vm, image } = await this.r.locked(async () => {
      const vm = await this.get(name);
      checkOperation(vm, 'snapshot');
      this.checkIdle(vm, 'snapshot');
      if (await this.d.store.get<ImageRecord>('images', o.image))
        throw new ApiError(409, 'name_taken', `an image named ${o.image} exists already: pick another name`);
      const image = await this.d.store.get<ImageRecord>('images', vm.image);
      if (!image) throw new ApiError(409, 'unknown_image', `vm ${name} uses image ${vm.image}, which no longer exists`);
      this.busy.set(name, 'snapshot');
      return { vm, image };
    });
    return this.operation(name, async () => {
      const host = vm.host!;
      const r = await this.command(
        host,
        { type: 'snapshot', name, image: o.image },
        SNAPSHOT_TIMEOUT_MS,
        'snapshot_failed',
        `saving vm ${name} on ${host}`,
      );
      if (!r.warm) throw new ApiError(409, 'snapshot_failed', `${host} saved vm ${name} but returned no files`);
      const { warm: _, created_at: __, ...files } = image;
      const img: ImageRecord = {
        ...files,
        name: o.image,
        ...(vm.cmdline ? { cmdline: vm.cmdline } : {}),
        warm: { ...r.warm, disk_gib: vm.disk_gib ?? null, source_vm: name },
        created_at: new Date(this.d.now()).toISOString(),
      };
      this.r.checkLeading();
      if (!(await this.d.store.create('images', o.image, img)))
        throw new ApiError(409, 'name_taken', `an image named ${o.image} was added meanwhile`);
      this.d.log.info({ vm: name, image: o.image, state: r.warm.state, overlay: r.warm.overlay }, 'warm image saved');
      return img;
    });
  }

  // ---- helpers -------------------------------------------------------------------------------------

  private checkIdle(vm: VmRecord, op: Operation): void {
    const running = this.busy.get(vm.name);
    if (running)
      throw new ApiError(409, 'busy', `vm ${vm.name} is busy (${running} in progress): ${op} it when that ends`);
  }

  /** Runs the long phase; clears `busy` at the end, whatever happens. */
  private operation<T>(name: string, fn: () => Promise<T>): Promise<T> {
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
  return launchSpec(vm, image, imageSources);
}

/** The DHCP reservations the coordinator holds, for the home site's daemon. */
export function reservations(vms: VmRecord[]): { mac: string; ip: string; vm: string }[] {
  return vms.filter((v) => v.ip).map((v) => ({ mac: v.mac, ip: v.ip!, vm: v.name }));
}

export type { VmState };
