// The seam between the host agent and whatever runs guests: QEMU (qemu.ts, over src/vm) or the in-memory
// twin below (FakeHypervisor), which tests use to run whole coordinator + several hosts in one process.
//
// Contract: launch/incoming resolve once the guest exists (running, or waiting for a migration stream);
// migrate resolves when the migration completed (the local guest is then 'migrated', paused for good) and
// rejects when it failed, with the local guest running again; stop is idempotent. onChange fires when a
// guest changes by itself (QEMU exited), so the agent reports it at once.
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../coordinator/types.ts';

export interface GuestSpec {
  name: string;
  mac: string;
  cpus: number;
  memoryMib: number;
  kernel: string; // local paths (from the image cache)
  initrd: string;
  disk?: string; // attached read-only: the same bytes on every host, so migration needs no block copy
  /** Kernel command line after console=ttyS0. */
  cmdline: string;
  /** The bridge the guest's TAP joins (the daemon's tap.bridge). */
  bridge: string;
}

export interface Hypervisor {
  readonly info: HypervisorInfo;
  launch(spec: GuestSpec): Promise<void>;
  /** A guest that waits for a migration stream on `address`; resolves with the URI the source must use. */
  incoming(spec: GuestSpec, address: string): Promise<string>;
  migrate(name: string, uri: string): Promise<void>;
  state(name: string): Promise<GuestState | 'absent'>;
  /** Continues a paused guest (one whose migration was cancelled or completed but not taken over). */
  resume(name: string): Promise<void>;
  stop(name: string): Promise<void>;
  list(): GuestReport[];
  /** Brings the states list() returns up to date (QEMU: query-status of each guest); before heartbeats. */
  refresh?(): Promise<void>;
  onChange: (() => void) | null;
  /** Stops every guest and releases what the hypervisor holds. */
  close(): Promise<void>;
}

/** Guests of all FakeHypervisors of one test, so a fake migration can find its destination. */
export class FakeCloud {
  readonly incoming = new Map<string, { hv: FakeHypervisor; name: string }>();
  private port = 40000;
  nextPort(): number { return this.port++; }
}

interface FakeGuest {
  spec: GuestSpec;
  state: GuestState;
  /** Stands for the guest's memory: carried over by a migration, so tests can check what arrived. */
  memory: string;
}

/** In-memory hypervisor. Failures are injected per call: `failNext.migrate = 'disk on fire'`. */
export class FakeHypervisor implements Hypervisor {
  readonly info: HypervisorInfo;
  readonly guests = new Map<string, FakeGuest>();
  readonly failNext: Partial<Record<'launch' | 'incoming' | 'migrate' | 'resume', string>> = {};
  /** Milliseconds each call takes (tests of timing and concurrency). */
  delayMs = 0;
  onChange: (() => void) | null = null;
  readonly calls: string[] = [];

  constructor(readonly cloud: FakeCloud, readonly host: string, o: { available?: boolean; accel?: 'kvm' | 'tcg' } = {}) {
    const available = o.available ?? true;
    this.info = { kind: 'fake', available, accel: available ? o.accel ?? 'tcg' : null, ...(available ? {} : { reason: 'fake: no hypervisor' }) };
  }

  private async step(call: keyof FakeHypervisor['failNext'] | 'stop' | 'state', name: string): Promise<void> {
    this.calls.push(`${call} ${name}`);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    const fail = call in this.failNext ? this.failNext[call as keyof FakeHypervisor['failNext']] : undefined;
    if (fail !== undefined) {
      delete this.failNext[call as keyof FakeHypervisor['failNext']];
      throw new Error(fail);
    }
  }

  async launch(spec: GuestSpec): Promise<void> {
    await this.step('launch', spec.name);
    const g = this.guests.get(spec.name);
    if (g && g.state === 'running') return;
    this.guests.set(spec.name, { spec, state: 'running', memory: `booted on ${this.host}` });
  }

  async incoming(spec: GuestSpec, address: string): Promise<string> {
    await this.step('incoming', spec.name);
    const uri = `fake:${address}:${this.cloud.nextPort()}`;
    this.guests.set(spec.name, { spec, state: 'incoming', memory: '' });
    this.cloud.incoming.set(uri, { hv: this, name: spec.name });
    return uri;
  }

  async migrate(name: string, uri: string): Promise<void> {
    const g = this.guests.get(name);
    if (!g || g.state !== 'running') throw new Error(`no running guest ${name} here`);
    try {
      await this.step('migrate', name);
    } catch (err) {
      g.state = 'running'; // a failed migration leaves the source running
      throw err;
    }
    const dest = this.cloud.incoming.get(uri);
    const dg = dest?.hv.guests.get(dest.name);
    if (!dest || !dg || dg.state !== 'incoming') throw new Error(`nothing listens at ${uri}`);
    this.cloud.incoming.delete(uri);
    dg.memory = g.memory;
    dg.state = 'running';
    g.state = 'migrated';
    dest.hv.onChange?.();
  }

  async state(name: string): Promise<GuestState | 'absent'> {
    return this.guests.get(name)?.state ?? 'absent';
  }

  async resume(name: string): Promise<void> {
    await this.step('resume', name);
    const g = this.guests.get(name);
    if (!g) throw new Error(`no guest ${name} here`);
    if (g.state === 'paused' || g.state === 'migrated') g.state = 'running';
  }

  async stop(name: string): Promise<void> {
    await this.step('stop', name);
    this.guests.delete(name);
  }

  /** Test hook: QEMU died. */
  crash(name: string): void {
    const g = this.guests.get(name);
    if (g) g.state = 'exited';
    this.onChange?.();
  }

  list(): GuestReport[] {
    return [...this.guests].map(([name, g]) => ({ name, state: g.state, mac: g.spec.mac }));
  }

  async close(): Promise<void> {
    this.guests.clear();
  }
}
