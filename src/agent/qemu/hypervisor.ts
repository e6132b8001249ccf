// The Hypervisor seam over the QEMU driver in driver.ts: one QEMU per guest, its TAP made by QEMU and joined to
// the daemon's bridge, and everything of the guest in one directory, <state_dir>/<vm>/:
//   runtime.json  which QEMU runs it and what it is doing (runtime.ts): how a restarted agent re-adopts it
//   qmp.sock      QMP;  serial.sock  the serial console (the agent's SerialConsole holds it: ../console.ts)
//   serial.log    everything the console printed;  qemu.log  QEMU's own output
//   disk.qcow2    the writable overlay over the image's base in the cache (disks.ts); kept while stopped
//   tls/          the key of the migration or copy in flight (tls.ts), removed afterwards
// QEMU runs in its own session (detached), so the guest outlives the agent and the daemon: stopping or
// restarting homewire leaves guests running, and start() takes them over again. Accelerator: KVM only when the
// CPU has vmx/svm (detectAccel), else TCG. The TAP takes the bridge's MTU (the daemon sized that for the mesh).
//
// Confinement: -sandbox on, and with runAs (coordinator.qemu_user) QEMU drops to that user after it has made
// its TAP and opened its disk, sockets and files; each VM's directory is then root:<its group> 0770 (QEMU makes
// the sockets of a warm start there) and each operation's TLS key directory is QEMU's own (0700, key 0600).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../../coordinator/types.ts';
import type { Logger } from '../../log.ts';
import { SerialConsole } from '../console.ts';
import type { AdoptReport, DiskSource, GuestSpec, Hypervisor, MigrationChannel, SnapshotFiles } from '../hypervisor.ts';
import { type Phase, type RuntimeRecord, readRuntime, removeRuntime, writeRuntime } from '../runtime.ts';
import { type DiskExport, endExport, exportOverlay, importOverlay } from './disk-copy.ts';
import { createOverlay, imageInfo, OVERLAY_FILE, overlayBytes, rebaseOverlay } from './disks.ts';
import {
  attach,
  defaultCpu,
  detectAccel,
  hasQemu,
  launch,
  type LaunchOptions,
  qemuArgs,
  qemuBinary,
  qemuVersion,
  resolveMachine,
  TLS_OUT_OBJECT,
  type Vm,
} from './driver.ts';
import { bootId, procArgv, procStartTime } from './process.ts';
import { loadState, manifestFor, manifestMismatch, saveState } from './snapshot.ts';
import { finishIncoming, migrateOut, prepareIncoming, rollBack, watchIncoming } from './storage-migration.ts';
import { removePsk, type TlsKey, writePsk } from './tls.ts';

interface Guest {
  spec: GuestSpec;
  /** null: the guest's QEMU was found dead when this agent started (reported as exited until stopped). */
  vm: Vm | null;
  /** The agent's end of the guest's serial socket (scrollback and fan-out to console streams). */
  console: SerialConsole | null;
  state: GuestState;
  rt: RuntimeRecord | null;
  dir: string;
  /** Stops the watcher of an incoming migration. */
  unwatch: (() => void) | null;
  tls: TlsKey | null;
}

const MIGRATE_TIMEOUT_MS = 290_000;
const ADOPT_QMP_TIMEOUT_MS = 3_000;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export interface QemuHypervisorOptions {
  stateDir: string;
  log: Logger;
  /** QEMU drops to this user after setup (coordinator.qemu_user). */
  runAs?: { uid: number; gid: number; text: string };
  /** QEMU binary (default qemu-system-x86_64). */
  binary?: string;
  /** Where cold copies and migrations listen when no address is given (tests). */
  address?: string;
}

export class QemuHypervisor implements Hypervisor {
  readonly info: HypervisorInfo;
  onChange: (() => void) | null = null;
  private readonly guests = new Map<string, Guest>();
  private readonly exports = new Map<string, DiskExport>();
  private readonly binary: string;
  private readonly boot = bootId();
  private readonly machine: string;
  private readonly cpu: string;
  private readonly version: string;
  private closed = false;

  constructor(private readonly o: QemuHypervisorOptions) {
    this.binary = o.binary ?? qemuBinary();
    const installed = hasQemu(this.binary);
    // -runas needs set*id: an agent that is not root (the daemon's systemd unit runs it as a dynamic user,
    // so QEMU is unprivileged already) cannot use qemu_user.
    const cannotDrop = o.runAs !== undefined && process.getuid?.() !== 0;
    const available = installed && !cannotDrop;
    const accel = detectAccel();
    this.version = (available && qemuVersion(this.binary)) || 'unknown';
    // Guests run the versioned machine type ("pc" resolved once): a guest started here can still migrate to
    // (or resume on) a newer QEMU, which keeps the old machine type.
    this.machine = available ? resolveMachine('pc', this.binary) : 'pc';
    this.cpu = defaultCpu(accel);
    this.info = available
      ? { kind: 'qemu', available, accel, qemu_version: this.version, machine: this.machine, cpu: this.cpu }
      : {
          kind: 'qemu',
          available,
          accel: null,
          reason: cannotDrop
            ? `coordinator.qemu_user (${o.runAs!.text}) needs the agent to run as root; without root QEMU runs as the agent's own user: remove qemu_user`
            : `${this.binary} is not installed (apt-get install qemu-system-x86)`,
        };
  }

  private dir(name: string): string {
    if (!NAME_RE.test(name)) throw new Error(`"${name}" is not a valid VM name`);
    return path.join(this.o.stateDir, name);
  }

  /** A VM's directory, made: root only, or root plus QEMU's group (it reaches its keys and sockets there). */
  private makeDir(name: string): string {
    const dir = this.dir(name);
    fs.mkdirSync(this.o.stateDir, { recursive: true, mode: 0o700 });
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (this.o.runAs) {
      for (const d of [this.o.stateDir, dir]) fs.chownSync(d, 0, this.o.runAs.gid);
      fs.chmodSync(this.o.stateDir, 0o710);
      fs.chmodSync(dir, 0o770);
    }
    return dir;
  }

  /** A disk file QEMU opens: its own after -runas (it may reopen it, e.g. when a migration re-activates it). */
  private own(file: string): void {
    if (this.o.runAs) fs.chownSync(file, this.o.runAs.uid, this.o.runAs.gid);
  }

  /** This operation's key, in a directory only QEMU (and root) can read. */
  private key(dir: string, psk: string, name = 'tls'): TlsKey {
    return writePsk(path.join(dir, name), psk, this.o.runAs);
  }

  private options(spec: GuestSpec, dir: string, o: Partial<LaunchOptions> = {}): LaunchOptions {
    return {
      name: spec.name,
      kernel: spec.kernel,
      initrd: spec.initrd,
      append: spec.cmdline,
      mac: spec.mac,
      tap: tapName(spec.name),
      memMb: spec.memoryMib,
      cpus: spec.cpus,
      machine: this.machine,
      cpu: this.cpu,
      qmpSocket: path.join(dir, 'qmp.sock'),
      serialLog: path.join(dir, 'serial.log'),
      serialSocket: path.join(dir, 'serial.sock'),
      qemuLog: path.join(dir, 'qemu.log'),
      bridge: spec.bridge,
      tapMtu: bridgeMtu(spec.bridge),
      binary: this.binary,
      detached: true,
      ...(this.o.runAs ? { runAs: this.o.runAs.text } : {}),
      ...(spec.disk || spec.warm?.overlay
        ? { disk: { file: path.join(dir, OVERLAY_FILE), format: 'qcow2' as const } }
        : {}),
      ...o,
    };
  }

  private record(g: Guest, phase: Phase, extra: Partial<RuntimeRecord> = {}): void {
    const vm = g.vm;
    if (!vm?.pid) return;
    const startTime = procStartTime(vm.pid);
    g.rt = writeRuntime(g.dir, {
      name: g.spec.name,
      pid: vm.pid,
      start_time: startTime ?? -1,
      boot_id: this.boot,
      // A process's argv never changes: an adopted guest keeps what its launch recorded (the options this agent
      // rebuilt for it lack -S, -incoming and the like, and would not match /proc/PID/cmdline next time).
      argv: g.rt?.argv ?? [this.binary, ...qemuArgs(vm.opts)],
      qemu_version: g.rt?.qemu_version ?? this.version,
      qmp: vm.opts.qmpSocket,
      serial: vm.opts.serialLog,
      nbd: g.rt?.nbd ?? null,
      disk: vm.opts.disk?.file ?? null,
      tls_dir: g.tls?.dir ?? null,
      mac: g.spec.mac,
      spec: g.spec,
      phase,
      ...extra,
    });
  }

  /** Takes the guest's serial socket (before its CPUs run: launched with -S, or waiting for its stream). */
  private async attachConsole(vm: Vm): Promise<SerialConsole> {
    const con = new SerialConsole(vm.opts.serialSocket!, this.o.log);
    try {
      await con.connect();
    } catch (err) {
      con.close();
      await vm.stop();
      throw err;
    }
    return con;
  }

  private track(g: Guest): void {
    this.guests.set(g.spec.name, g);
    g.vm?.exited.then(() => {
      if (this.closed || this.guests.get(g.spec.name) !== g || g.state === 'exited') return;
      g.state = 'exited';
      g.console?.close('QEMU exited');
      this.o.log.warn({ vm: g.spec.name, pid: g.vm?.pid }, 'QEMU exited');
      this.onChange?.();
    });
  }

  // ---- adoption --------------------------------------------------------------------------------------

  /** Takes over every guest an earlier agent left (runtime.json), settling operations it left half-done. */
  async start(): Promise<AdoptReport> {
    const report: AdoptReport = { adopted: [], dead: [], settled: [] };
    if (!fs.existsSync(this.o.stateDir)) return report;
    const started = Date.now();
    await Promise.all(
      fs.readdirSync(this.o.stateDir).map(async (name) => {
        const dir = path.join(this.o.stateDir, name);
        if (!NAME_RE.test(name) || !fs.statSync(dir).isDirectory()) return;
        let rt: RuntimeRecord | null;
        try {
          rt = readRuntime(dir);
        } catch (err) {
          this.o.log.error({ vm: name, error: (err as Error).message }, 'cannot read a runtime record');
          return;
        }
        if (!rt || rt.name !== name) return; // a stopped VM's disk
        try {
          await this.adoptOne(dir, rt, report);
        } catch (err) {
          this.o.log.error({ vm: name, error: (err as Error).message }, 're-adopting a guest failed');
        }
      }),
    );
    if (report.adopted.length || report.dead.length)
      this.o.log.info({ ...report, ms: Date.now() - started }, 'guests of an earlier agent re-adopted');
    return report;
  }

  private async adoptOne(dir: string, rt: RuntimeRecord, report: AdoptReport): Promise<void> {
    const name = rt.name;
    const alive =
      rt.boot_id === this.boot && procStartTime(rt.pid) === rt.start_time && sameArgv(procArgv(rt.pid), rt.argv);
    if (!alive) {
      report.dead.push(name);
      if (rt.phase === 'incoming' || rt.phase === 'migrated') {
        // It never ran here (or ran on elsewhere): nothing of it is worth keeping.
        fs.rmSync(dir, { recursive: true, force: true });
        this.o.log.warn({ vm: name, phase: rt.phase }, 'a guest of an earlier agent died; its files are removed');
        return;
      }
      removeRuntime(dir);
      const spec = { ...rt.spec, name };
      this.guests.set(name, {
        spec,
        vm: null,
        console: null,
        state: 'exited',
        rt: null,
        dir,
        unwatch: null,
        tls: null,
      });
      this.o.log.warn({ vm: name, pid: rt.pid }, 'a guest of an earlier agent died while no agent ran; reporting it');
      return;
    }
    const vm = await attach(this.options(rt.spec, dir), rt.pid, rt.start_time, ADOPT_QMP_TIMEOUT_MS);
    const named = await vm.qmp.execute<{ name?: string }>('query-name').catch(() => null);
    if (named?.name !== name) {
      vm.detach();
      throw new Error(`pid ${rt.pid} answers QMP as ${named?.name ?? '(nothing)'}, not ${name}: left alone`);
    }
    const tls = rt.tls_dir ? { dir: rt.tls_dir, identity: 'homewire' } : null;
    // The console socket takes one client: the earlier agent's connection died with it, so it is free.
    const console = await this.attachConsole(vm).catch((err) => {
      this.o.log.warn(
        { vm: name, error: (err as Error).message },
        'cannot take the serial console of a re-adopted guest',
      );
      return null;
    });
    const g: Guest = { spec: { ...rt.spec, name }, vm, console, state: 'running', rt, dir, unwatch: null, tls };
    this.track(g);
    report.adopted.push(name);
    const status = (await vm.qmp.execute<{ status: string }>('query-status')).status;
    const mig = await vm.qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: undefined }));
    switch (rt.phase) {
      case 'incoming':
        if (mig.status === 'completed') {
          await finishIncoming(vm, rt.nbd !== null);
          this.setRunning(g);
          report.settled.push(`${name}: the incoming migration had completed; resumed`);
        } else if (mig.status === 'active' || mig.status === 'setup') {
          g.state = 'incoming';
          this.watch(g, rt.nbd !== null);
        } else g.state = 'incoming';
        break;
      case 'outgoing':
        if (mig.status === 'completed') {
          g.state = 'migrated';
          this.record(g, 'migrated');
          report.settled.push(`${name}: the outgoing migration had completed`);
        } else {
          await rollBack(vm, { target: true, job: true, migration: true });
          await vm.qmp.execute('migrate-set-parameters', { 'tls-creds': '' }).catch(() => {});
          await vm.qmp.execute('object-del', { id: TLS_OUT_OBJECT }).catch(() => {});
          this.setRunning(g);
          report.settled.push(`${name}: the outgoing migration was rolled back; running here`);
        }
        break;
      case 'snapshot':
        if (status !== 'running') await vm.qmp.execute('cont').catch(() => {});
        for (const f of fs.readdirSync(dir))
          if (f.startsWith('snapshot-')) fs.rmSync(path.join(dir, f), { force: true });
        this.setRunning(g);
        report.settled.push(`${name}: a snapshot was interrupted; resumed`);
        break;
      case 'migrated':
        g.state = 'migrated';
        break;
      default:
        g.state = guestState(status, 'running');
    }
    this.o.log.info({ vm: name, pid: rt.pid, phase: rt.phase, state: g.state }, 'guest re-adopted');
  }

  private setRunning(g: Guest): void {
    g.state = 'running';
    removePsk(g.tls);
    g.tls = null;
    this.record(g, 'running', { nbd: null, tls_dir: null });
  }

  private watch(g: Guest, storage: boolean): void {
    g.unwatch?.();
    g.unwatch = watchIncoming(g.vm!, {
      storage,
      resumed: () => {
        g.unwatch = null;
        this.setRunning(g);
        // QEMU's own time of the RESUME: with the source's STOP, the guest's pause (the same clock on one host).
        const resume = [...(g.vm?.qmp.events ?? [])].reverse().find((e) => e.event === 'RESUME');
        this.o.log.info(
          { vm: g.spec.name, resumedAtMs: resume?.atMs ?? null },
          'incoming migration landed; guest resumed',
        );
        this.onChange?.();
      },
      failed: (why) => {
        g.unwatch = null;
        this.o.log.warn({ vm: g.spec.name, error: why }, 'incoming migration failed');
      },
    });
  }

  // ---- start, stop ---------------------------------------------------------------------------------

  async launch(spec: GuestSpec, o: { diskFrom?: DiskSource; psk?: string } = {}): Promise<{ note?: string }> {
    await this.stop(spec.name);
    const dir = this.makeDir(spec.name);
    this.endExport(spec.name);
    if (spec.warm) return this.resumeWarm(spec, dir);
    if (spec.disk) await this.prepareDisk(spec, dir, o);
    // Paused until the agent holds the serial socket: the console's scrollback starts at the first byte.
    const vm = await launch(this.options(spec, dir, { paused: true }));
    const console = await this.attachConsole(vm);
    const g: Guest = { spec, vm, console, state: 'running', rt: null, dir, unwatch: null, tls: null };
    this.record(g, 'running');
    this.track(g);
    try {
      await vm.qmp.execute('cont');
    } catch (err) {
      await this.stop(spec.name);
      throw err;
    }
    this.o.log.info(
      { vm: spec.name, pid: vm.pid, tap: vm.opts.tap, accel: this.info.accel, disk: vm.opts.disk?.file ?? null },
      'guest launched',
    );
    return {};
  }

  /** The VM's overlay: copied from another host, kept from an earlier run here, or new. */
  private async prepareDisk(spec: GuestSpec, dir: string, o: { diskFrom?: DiskSource; psk?: string }): Promise<void> {
    const file = path.join(dir, OVERLAY_FILE);
    const base = spec.disk!.base;
    if (o.diskFrom) {
      if (!o.psk) throw new Error('a disk copy needs its key (tls_psk)');
      const key = this.key(dir, o.psk);
      const started = Date.now();
      try {
        await importOverlay(file, o.diskFrom, key, base);
      } finally {
        removePsk(key);
      }
      this.own(file);
      this.o.log.info(
        {
          vm: spec.name,
          from: `${o.diskFrom.host}:${o.diskFrom.port}`,
          bytes: o.diskFrom.bytes,
          ms: Date.now() - started,
        },
        'disk copied from the host that had it',
      );
      return;
    }
    if (fs.existsSync(file)) {
      // Kept from an earlier run: make sure it points at this cache's copy of its base.
      const info = await imageInfo(file, 'qcow2');
      if ((info.backing ?? null) !== (base?.file ?? null)) await rebaseOverlay(file, base);
      return;
    }
    await createOverlay(file, base, await overlayBytes(base, spec.disk!.gib));
    this.own(file);
  }

  private async resumeWarm(spec: GuestSpec, dir: string): Promise<{ note?: string }> {
    const warm = spec.warm!;
    const have = manifestFor(
      { memoryMib: spec.memoryMib, cpus: spec.cpus, disk: warm.overlay !== null },
      { qemu: this.version, machine: this.machine, cpu: this.cpu, accel: detectAccel() },
    );
    const why = manifestMismatch(warm.manifest, have);
    if (why) throw new Error(`this host cannot resume the warm image: ${why}`);
    if (warm.overlay) {
      const file = path.join(dir, OVERLAY_FILE);
      fs.rmSync(file, { force: true });
      fs.copyFileSync(warm.overlay, `${file}.part`);
      fs.chmodSync(`${file}.part`, 0o644); // the cached copy is read-only; the VM's own is not
      fs.renameSync(`${file}.part`, file);
      await rebaseOverlay(file, spec.disk?.base ?? null);
      this.own(file);
    }
    const vm = await launch(
      this.options(spec, dir, {
        machine: warm.manifest.machine,
        cpu: warm.manifest.cpu,
        paused: true,
        incoming: 'defer',
        nicDetached: warm.clone,
      }),
    );
    const console = await this.attachConsole(vm);
    const g: Guest = { spec, vm, console, state: 'incoming', rt: null, dir, unwatch: null, tls: null };
    this.record(g, 'incoming');
    this.track(g);
    const started = Date.now();
    try {
      await loadState(vm, warm.state);
    } catch (err) {
      await this.stop(spec.name, { discard: !warm.overlay });
      throw err;
    }
    g.state = 'running';
    this.record(g, 'running');
    let note: string | undefined;
    if (warm.clone) note = await this.replugNic(g);
    this.o.log.info({ vm: spec.name, pid: vm.pid, ms: Date.now() - started }, 'guest resumed from a warm image');
    return note ? { note } : {};
  }

  /**
   * A clone resumes with the memory of the original, MAC included (virtio-net keeps it in its device state).
   * That NIC was loaded on a TAP that leads nowhere (nicDetached: whatever it sends, QEMU's announcement
   * after the load included, never reaches the network, or the mesh would move the original's MAC here);
   * unplug it and plug one with the clone's own MAC into the TAP. The guest sees a new interface and must renew
   * its DHCP lease (its old lease belongs to the original's MAC). (Not announce-rounds 0 instead: with it,
   * QEMU 7.2 crashes when the NIC is unplugged.)
   */
  private async replugNic(g: Guest): Promise<string> {
    const q = g.vm!.qmp;
    const removed = q.waitEvent('DEVICE_DELETED', 20_000);
    await q.execute('device_del', { id: 'net0' });
    await removed.catch(() => {
      throw new Error('the guest did not release its NIC (ACPI hot-unplug) within 20 s');
    });
    await q.execute('device_add', { driver: 'virtio-net-pci', netdev: 'n0', mac: g.spec.mac, id: 'net0', romfile: '' });
    await q.execute('netdev_del', { id: 'nx' }).catch(() => {}); // the dead-end TAP goes too
    return `clone ${g.spec.name} has a new MAC ${g.spec.mac} on a new NIC: the guest must renew its DHCP lease`;
  }

  async incoming(spec: GuestSpec, m: MigrationChannel): Promise<void> {
    await this.stop(spec.name, { discard: true }); // a leftover of an earlier attempt: never this VM's live disk
    const dir = this.makeDir(spec.name);
    const storage = spec.disk !== undefined;
    if (storage && !m.nbd) throw new Error(`${spec.name} has a writable disk: its migration needs an NBD port`);
    if (storage) {
      const base = spec.disk!.base;
      // The same virtual size as the source's overlay, over this host's own copy of the base.
      await createOverlay(path.join(dir, OVERLAY_FILE), base, await overlayBytes(base, spec.disk!.gib));
      this.own(path.join(dir, OVERLAY_FILE));
    }
    const key = this.key(dir, m.tlsPsk);
    const vm = await launch(
      this.options(spec, dir, {
        // With a disk the guest may run only after the NBD server stopped (watchIncoming does both); without
        // one QEMU runs it itself when the stream completes, even if no agent is there at that moment.
        paused: storage,
        incoming: 'defer',
        tls: { dir: key.dir, endpoint: 'server' as const, identity: key.identity },
      }),
    );
    const console = await this.attachConsole(vm);
    const g: Guest = { spec, vm, console, state: 'incoming', rt: null, dir, unwatch: null, tls: key };
    this.track(g);
    try {
      this.watch(g, storage);
      await prepareIncoming(vm, { uri: m.uri, nbd: storage ? m.nbd! : null, key });
    } catch (err) {
      await this.stop(spec.name, { discard: true });
      throw new Error(`${spec.name}: cannot listen for the migration at ${m.uri}: ${(err as Error).message}`);
    }
    this.record(g, 'incoming', { nbd: storage ? m.nbd! : null });
    if (spec.bridge) {
      // The bridge learned the guest's MAC on the homewire TAP (its frames came over the mesh). Point it at the
      // incoming guest's TAP now, so frames the mesh sends here during the migration (expect) reach the guest
      // the moment it resumes instead of waiting for its RARP to re-teach the bridge.
      const r = spawnSync('bridge', ['fdb', 'replace', spec.mac, 'dev', vm.opts.tap, 'master', 'static'], {
        encoding: 'utf8',
      });
      if (r.status !== 0)
        this.o.log.warn(
          { vm: spec.name, error: (r.stderr || String(r.error)).trim() },
          'could not pin the MAC on the bridge',
        );
    }
  }

  async migrate(name: string, m: MigrationChannel): Promise<void> {
    const g = this.need(name);
    const { uri } = m;
    const o = { nbd: m.nbd };
    if (g.spec.disk && !o.nbd)
      throw new Error(`${name} has a writable disk: its migration needs the destination's NBD export`);
    const key = this.key(g.dir, m.tlsPsk);
    g.tls = key;
    this.record(g, 'outgoing', { tls_dir: key?.dir ?? null });
    try {
      const r = await migrateOut(g.vm!, { uri, nbd: o.nbd ?? null, key, timeoutMs: MIGRATE_TIMEOUT_MS });
      g.state = 'migrated';
      removePsk(key);
      g.tls = null;
      this.record(g, 'migrated', { tls_dir: null });
      this.o.log.info(
        {
          vm: name,
          uri,
          disk: o.nbd ? `${o.nbd.host}:${o.nbd.port}` : null,
          totalMs: r.totalTimeMs,
          downtimeMs: r.downtimeMs,
          ramBytes: r.ramTransferredBytes,
          stoppedAtMs: r.stoppedAtMs,
        },
        'migration completed',
      );
    } catch (err) {
      // Failed or cancelled: migrateOut undid the mirror and the migration; the guest runs here.
      const status = await g.vm!.status().catch(() => 'unknown');
      if (status !== 'running' && g.vm!.running) await g.vm!.qmp.execute('cont').catch(() => {});
      if (g.vm!.running) this.setRunning(g);
      throw err;
    }
  }

  async state(name: string): Promise<GuestState | 'absent'> {
    const g = this.guests.get(name);
    if (!g) return 'absent';
    if (!g.vm?.running) return 'exited';
    const status = await g.vm.status().catch(() => null);
    g.state = guestState(status, g.state);
    return g.state;
  }

  async resume(name: string): Promise<void> {
    const g = this.need(name);
    await g.vm!.qmp.execute('cont');
    if (g.state !== 'running') this.setRunning(g);
  }

  async stop(name: string, o: { discard?: boolean } = {}): Promise<void> {
    const dir = this.dir(name);
    const g = this.guests.get(name);
    this.endExport(name);
    if (g) {
      this.guests.delete(name);
      g.unwatch?.();
      g.console?.close();
      await g.vm?.stop();
      this.o.log.info({ vm: name }, 'guest stopped');
    }
    // A guest that never ran here (incoming) or that moved away (migrated) leaves nothing worth keeping.
    const stale = g?.rt?.phase === 'incoming' || g?.rt?.phase === 'migrated';
    if (o.discard || stale) {
      fs.rmSync(dir, { recursive: true, force: true });
      if (g || o.discard) this.o.log.info({ vm: name }, 'guest files removed');
    } else if (fs.existsSync(dir)) {
      removeRuntime(dir);
      removePsk(g?.tls ?? null);
      fs.rmSync(path.join(dir, 'qmp.sock'), { force: true });
    }
  }

  // ---- disks and snapshots --------------------------------------------------------------------------

  async exportDisk(name: string, address: string, port: number, psk: string): Promise<DiskSource> {
    if (this.guests.get(name)?.vm?.running) throw new Error(`${name} runs here: stop it before its disk is copied`);
    const dir = this.dir(name);
    const file = path.join(dir, OVERLAY_FILE);
    if (!fs.existsSync(file)) throw new Error(`this host has no disk of ${name}`);
    this.endExport(name);
    const key = this.key(dir, psk, 'tls-export');
    const e = await exportOverlay(file, address, port, key, path.join(dir, 'qemu.log'));
    e.proc.once('exit', () => {
      removePsk(key);
      if (this.exports.get(name) === e) this.exports.delete(name);
    });
    this.exports.set(name, e);
    this.o.log.info({ vm: name, port: e.source.port, bytes: e.source.bytes }, 'disk offered for a copy');
    return e.source;
  }

  private endExport(name: string): void {
    const e = this.exports.get(name);
    if (!e) return;
    this.exports.delete(name);
    endExport(e);
  }

  async snapshot(name: string): Promise<SnapshotFiles> {
    const g = this.need(name);
    if (g.state !== 'running') throw new Error(`${name} is ${g.state} here: only a running guest can be saved`);
    const tag = crypto.randomBytes(4).toString('hex');
    const stateFile = path.join(g.dir, `snapshot-${tag}.state`);
    const overlay = g.vm!.opts.disk?.file ?? null;
    const frozen = path.join(g.dir, `snapshot-${tag}.qcow2`);
    this.record(g, 'snapshot');
    try {
      const { pauseMs } = await saveState(g.vm!, stateFile, overlay, frozen, this.o.runAs);
      this.o.log.info({ vm: name, pauseMs }, 'guest state saved');
      return {
        state: stateFile,
        overlay: overlay ? frozen : null,
        manifest: manifestFor(
          { memoryMib: g.spec.memoryMib, cpus: g.spec.cpus, disk: overlay !== null },
          {
            qemu: this.version,
            machine: g.vm!.opts.machine ?? this.machine,
            cpu: g.vm!.opts.cpu ?? this.cpu,
            accel: detectAccel(),
          },
        ),
        pauseMs,
      };
    } catch (err) {
      fs.rmSync(stateFile, { force: true });
      fs.rmSync(frozen, { force: true });
      throw err;
    } finally {
      if (g.vm?.running) this.record(g, 'running');
    }
  }

  console(name: string): SerialConsole | null {
    return this.guests.get(name)?.console ?? null;
  }

  disks(): string[] {
    if (!fs.existsSync(this.o.stateDir)) return [];
    return fs
      .readdirSync(this.o.stateDir)
      .filter((n) => NAME_RE.test(n) && fs.existsSync(path.join(this.o.stateDir, n, OVERLAY_FILE)));
  }

  // ---- reports ---------------------------------------------------------------------------------------

  list(): GuestReport[] {
    return [...this.guests.values()].map((g) => ({
      name: g.spec.name,
      state: g.vm?.running ? g.state : 'exited',
      mac: g.spec.mac,
    }));
  }

  /** Refreshes the states of guests waiting for a migration (the report then says running when it landed). */
  async refresh(): Promise<void> {
    await Promise.all([...this.guests.keys()].map((n) => this.state(n)));
  }

  async close(o: { stopGuests?: boolean } = {}): Promise<void> {
    for (const name of [...this.exports.keys()]) this.endExport(name);
    if (o.stopGuests) {
      await Promise.all([...this.guests.keys()].map((n) => this.stop(n)));
    } else {
      this.closed = true;
      for (const g of this.guests.values()) {
        g.unwatch?.();
        g.console?.close('the agent stops; the guest keeps running');
        g.vm?.detach();
      }
      if (this.guests.size)
        this.o.log.info({ guests: [...this.guests.keys()] }, 'guests keep running; the next agent re-adopts them');
      this.guests.clear();
    }
    this.closed = true;
  }

  private need(name: string): Guest {
    const g = this.guests.get(name);
    if (!g?.vm) throw new Error(`no guest ${name} on this host`);
    return g;
  }
}

/** The same command line (a reused pid would run something else). */
function sameArgv(a: string[] | null, b: string[]): boolean {
  if (!a || a.length !== b.length) return false;
  // argv[0] may have been resolved through PATH: compare the program's name only.
  return path.basename(a[0]) === path.basename(b[0]) && a.slice(1).every((x, i) => x === b[i + 1]);
}

/** QEMU run states (query-status) as the coordinator sees them. */
function guestState(status: string | null, was: GuestState): GuestState {
  switch (status) {
    case 'running':
      return 'running';
    case 'inmigrate':
      return 'incoming';
    case 'postmigrate':
      return 'migrated';
    case 'paused':
    case 'finish-migrate':
    case 'prelaunch':
    case 'suspended':
      return was === 'incoming' || was === 'migrated' ? was : 'paused';
    case null:
      return was;
    default:
      return 'paused';
  }
}

/** A TAP name per guest: "hwv" + 8 hex of the name's hash (IFNAMSIZ is 16 with the NUL). */
export function tapName(vm: string): string {
  return `hwv${crypto.createHash('sha256').update(vm).digest('hex').slice(0, 8)}`;
}

function bridgeMtu(bridge: string): number | undefined {
  try {
    const mtu = Number(fs.readFileSync(`/sys/class/net/${bridge}/mtu`, 'utf8').trim());
    return Number.isInteger(mtu) && mtu > 0 ? mtu : undefined;
  } catch {
    return undefined;
  }
}
