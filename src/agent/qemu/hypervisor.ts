// The Hypervisor seam over the QEMU driver in driver.ts: one QEMU per guest, its TAP made by QEMU and
// joined to the daemon's bridge, QMP on a socket in state_dir. Accelerator: KVM only when the CPU has
// vmx/svm (detectAccel), else TCG. A disk is attached read-only and raw (never format-probed: a qcow2 header
// could name a host file as its backing file), so both ends of a migration see the same bytes without a
// block copy. The TAP takes the bridge's MTU (the daemon sized that to fit the overlay).
//
// Confinement: -sandbox on, and with runAs (coordinator.qemu_user) QEMU drops to that user after it has made
// its TAP and opened its files; state_dir is then root:<its group> 0710 so it can reach its TLS keys there.
// Migrations are TLS with the pre-shared key the coordinator gave both ends, in a directory of its own
// (0700, the key file 0600, owned by QEMU's user) that is removed when the migration is over.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../../coordinator/types.ts';
import type { Logger } from '../../log.ts';
import { detectAccel, hasQemu, launch, type LaunchOptions, type Vm, writePskDir } from './driver.ts';
import type { GuestSpec, Hypervisor, MigrationChannel } from '../hypervisor.ts';
import { SerialConsole } from '../console.ts';

interface Guest {
  vm: Vm;
  spec: GuestSpec;
  state: GuestState;
  /** An incoming guest's TLS key directory, removed once the guest runs (or stops). */
  pskDir?: string;
  /** The agent's end of the guest's serial socket (scrollback and fan-out to console streams). */
  console: SerialConsole;
}

const MIGRATE_TIMEOUT_MS = 290_000;

export class QemuHypervisor implements Hypervisor {
  readonly info: HypervisorInfo;
  onChange: (() => void) | null = null;
  private readonly guests = new Map<string, Guest>();

  constructor(
    private readonly o: { stateDir: string; log: Logger; runAs?: { uid: number; gid: number; text: string } },
  ) {
    const available = hasQemu();
    // -runas needs set*id: an agent that is not root (the daemon's systemd unit runs it as a dynamic user,
    // so QEMU is unprivileged already) cannot use qemu_user.
    const cannotDrop = o.runAs !== undefined && process.getuid?.() !== 0;
    this.info =
      available && !cannotDrop
        ? { kind: 'qemu', available, accel: detectAccel() }
        : {
            kind: 'qemu',
            available: false,
            accel: null,
            reason: cannotDrop
              ? `coordinator.qemu_user (${o.runAs!.text}) needs the agent to run as root; without root QEMU runs as the agent's own user: remove qemu_user`
              : 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)',
          };
  }

  /** state_dir: root only, or root plus QEMU's group (to reach its TLS key directories). */
  private stateDir(): string {
    const dir = this.o.stateDir;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (this.o.runAs) {
      fs.chownSync(dir, 0, this.o.runAs.gid);
      fs.chmodSync(dir, 0o710);
      const { uid, gid } = this.o.runAs;
      for (let d = path.dirname(dir); ; d = path.dirname(d)) {
        const st = fs.statSync(d);
        const x = st.uid === uid ? st.mode & 0o100 : st.gid === gid ? st.mode & 0o010 : st.mode & 0o001;
        if (!x)
          throw new Error(
            `${d} is not searchable by qemu_user ${this.o.runAs.text}: QEMU could not reach its migration keys in ${dir} (chmod o+x ${d}, or move state_dir)`,
          );
        if (d === path.dirname(d)) break;
      }
    }
    return dir;
  }

  /** A fresh directory with this migration's key, readable by QEMU's user only. */
  private pskDir(name: string, keyHex: string): string {
    const dir = path.join(this.stateDir(), `${name}.tls-${crypto.randomBytes(4).toString('hex')}`);
    writePskDir(dir, keyHex, this.o.runAs);
    return dir;
  }

  private options(spec: GuestSpec, incoming?: { pskDir: string }): LaunchOptions {
    const base = path.join(this.stateDir(), spec.name);
    const extra: string[] = [];
    if (spec.cpus !== 1) extra.push('-smp', String(spec.cpus));
    if (spec.disk) extra.push('-drive', `file=${spec.disk},if=virtio,readonly=on,format=raw`);
    return {
      name: spec.name,
      kernel: spec.kernel,
      initrd: spec.initrd,
      append: spec.cmdline,
      mac: spec.mac,
      tap: tapName(spec.name),
      memMb: spec.memoryMib,
      qmpSocket: `${base}.qmp`,
      serialLog: `${base}.serial`,
      serialSocket: `${base}.serial.sock`,
      qemuLog: `${base}.qemu.log`,
      bridge: spec.bridge,
      tapMtu: bridgeMtu(spec.bridge),
      extraArgs: extra,
      ...(this.o.runAs ? { runAs: this.o.runAs.text } : {}),
      ...(incoming ? { incoming: 'defer', tlsPskDir: incoming.pskDir } : {}),
    };
  }

  /** Takes the guest's serial socket before its CPUs run (launch with -S; incoming waits for its stream anyway). */
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

  private adopt(spec: GuestSpec, vm: Vm, state: GuestState, console: SerialConsole, pskDir?: string): void {
    const g: Guest = { vm, spec, state, console, ...(pskDir ? { pskDir } : {}) };
    this.guests.set(spec.name, g);
    vm.exited.then(() => {
      if (this.guests.get(spec.name) !== g || g.state === 'exited') return;
      g.state = 'exited';
      g.console.close('QEMU exited');
      this.o.log.warn({ vm: spec.name, pid: vm.pid }, 'QEMU exited');
      this.onChange?.();
    });
  }

  async launch(spec: GuestSpec): Promise<void> {
    await this.stop(spec.name);
    const vm = await launch({ ...this.options(spec), paused: true });
    const con = await this.attachConsole(vm);
    try {
      await vm.qmp.execute('cont');
    } catch (err) {
      con.close();
      await vm.stop();
      throw err;
    }
    this.adopt(spec, vm, 'running', con);
    this.o.log.info({ vm: spec.name, pid: vm.pid, tap: vm.opts.tap, accel: this.info.accel }, 'guest launched');
  }

  async incoming(spec: GuestSpec, m: MigrationChannel): Promise<void> {
    await this.stop(spec.name);
    const pskDir = this.pskDir(spec.name, m.tlsPsk);
    let vm: Vm;
    let con: SerialConsole;
    try {
      vm = await launch(this.options(spec, { pskDir }));
      con = await this.attachConsole(vm);
    } catch (err) {
      fs.rmSync(pskDir, { recursive: true, force: true });
      throw err;
    }
    this.adopt(spec, vm, 'incoming', con, pskDir); // runs by itself once the stream has arrived: refresh() sees that
    try {
      await vm.incomingTls(m.uri);
    } catch (err) {
      await this.stop(spec.name);
      throw new Error(`${spec.name}: cannot listen for the migration at ${m.uri}: ${(err as Error).message}`);
    }
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
    const pskDir = this.pskDir(name, m.tlsPsk);
    try {
      const r = await g.vm.migrate(uri, { timeoutMs: MIGRATE_TIMEOUT_MS, tlsPskDir: pskDir });
      g.state = 'migrated';
      this.o.log.info(
        { vm: name, uri, totalMs: r.totalTimeMs, downtimeMs: r.downtimeMs, ramBytes: r.ramTransferredBytes },
        'migration completed',
      );
    } catch (err) {
      // Failed or cancelled: QEMU keeps (or resumes) the guest here; make sure it runs.
      const status = await g.vm.status().catch(() => 'unknown');
      if (status !== 'running' && g.vm.running) await g.vm.qmp.execute('cont').catch(() => {});
      throw err;
    } finally {
      fs.rmSync(pskDir, { recursive: true, force: true });
    }
  }

  async state(name: string): Promise<GuestState | 'absent'> {
    const g = this.guests.get(name);
    if (!g) return 'absent';
    if (!g.vm.running) return 'exited';
    const status = await g.vm.status().catch(() => null);
    g.state = guestState(status, g.state);
    if (g.pskDir && g.state !== 'incoming') this.dropKey(g);
    return g.state;
  }

  async resume(name: string): Promise<void> {
    const g = this.need(name);
    await g.vm.qmp.execute('cont');
    g.state = 'running';
  }

  async stop(name: string): Promise<void> {
    const g = this.guests.get(name);
    if (!g) return;
    this.guests.delete(name);
    g.console.close();
    await g.vm.stop();
    this.dropKey(g);
    this.o.log.info({ vm: name }, 'guest stopped');
  }

  /** The migration is over (landed or abandoned): its key is of no use to anyone any more. */
  private dropKey(g: Guest): void {
    if (!g.pskDir) return;
    fs.rmSync(g.pskDir, { recursive: true, force: true });
    delete g.pskDir;
  }

  console(name: string): SerialConsole | null {
    return this.guests.get(name)?.console ?? null;
  }

  list(): GuestReport[] {
    return [...this.guests.values()].map((g) => ({
      name: g.spec.name,
      state: g.vm.running ? g.state : 'exited',
      mac: g.spec.mac,
    }));
  }

  /** Refreshes the states of guests waiting for a migration (the report then says running when it landed). */
  async refresh(): Promise<void> {
    await Promise.all([...this.guests.keys()].map((n) => this.state(n)));
  }

  async close(): Promise<void> {
    await Promise.all([...this.guests.keys()].map((n) => this.stop(n)));
  }

  private need(name: string): Guest {
    const g = this.guests.get(name);
    if (!g) throw new Error(`no guest ${name} on this host`);
    return g;
  }
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
      return was === 'incoming' ? 'incoming' : 'paused';
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
