// The Hypervisor seam over the QEMU driver in driver.ts: one QEMU per guest, its TAP made by QEMU and
// joined to the daemon's bridge, QMP on a socket in state_dir. Accelerator: KVM only when the CPU has
// vmx/svm (detectAccel), else TCG. A disk is attached read-only, so both ends of a migration see the same
// bytes without a block copy. The TAP takes the bridge's MTU (the daemon sized that to fit the overlay).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../../coordinator/types.ts';
import type { Logger } from '../../log.ts';
import { detectAccel, hasQemu, launch, type LaunchOptions, type Vm } from './driver.ts';
import type { GuestSpec, Hypervisor } from '../hypervisor.ts';
import { SerialConsole } from '../console.ts';
import { formatEndpoint } from '../../addr.ts';

interface Guest {
  vm: Vm;
  spec: GuestSpec;
  state: GuestState;
  /** The agent's end of the guest's serial socket (scrollback and fan-out to console streams). */
  console: SerialConsole;
}

const MIGRATE_TIMEOUT_MS = 290_000;

export class QemuHypervisor implements Hypervisor {
  readonly info: HypervisorInfo;
  onChange: (() => void) | null = null;
  private readonly guests = new Map<string, Guest>();

  constructor(private readonly o: { stateDir: string; log: Logger }) {
    const available = hasQemu();
    this.info = available
      ? { kind: 'qemu', available, accel: detectAccel() }
      : {
          kind: 'qemu',
          available,
          accel: null,
          reason: 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)',
        };
  }

  private options(spec: GuestSpec, incoming?: string): LaunchOptions {
    fs.mkdirSync(this.o.stateDir, { recursive: true, mode: 0o700 });
    const base = path.join(this.o.stateDir, spec.name);
    const extra: string[] = [];
    if (spec.cpus !== 1) extra.push('-smp', String(spec.cpus));
    if (spec.disk) extra.push('-drive', `file=${spec.disk},if=virtio,readonly=on`);
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
      ...(incoming ? { incoming } : {}),
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

  private adopt(spec: GuestSpec, vm: Vm, state: GuestState, console: SerialConsole): void {
    const g: Guest = { vm, spec, state, console };
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

  async incoming(spec: GuestSpec, address: string): Promise<string> {
    await this.stop(spec.name);
    const port = await freePort(address);
    const uri = `tcp:${formatEndpoint(address, port)}`;
    const vm = await launch(this.options(spec, uri));
    this.adopt(spec, vm, 'incoming', await this.attachConsole(vm)); // runs by itself once the stream has arrived: refresh() sees that
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
    return uri;
  }

  async migrate(name: string, uri: string): Promise<void> {
    const g = this.need(name);
    try {
      const r = await g.vm.migrate(uri, { timeoutMs: MIGRATE_TIMEOUT_MS });
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
    }
  }

  async state(name: string): Promise<GuestState | 'absent'> {
    const g = this.guests.get(name);
    if (!g) return 'absent';
    if (!g.vm.running) return 'exited';
    const status = await g.vm.status().catch(() => null);
    g.state = guestState(status, g.state);
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
    this.o.log.info({ vm: name }, 'guest stopped');
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

/** A free TCP port on address (for a migration listener). */
function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, address, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}
