// In-memory twin of the Hypervisor seam (src/agent/hypervisor.ts): tests run a coordinator and several hosts
// in one process, with failures injected per call.
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../../src/coordinator/types.ts';
import type { GuestSpec, Hypervisor } from '../../src/agent/hypervisor.ts';

/** Guests of all FakeHypervisors of one test, so a fake migration can find its destination. */
export class FakeCloud {
  readonly incoming = new Map<string, { hv: FakeHypervisor; name: string }>();
  private port = 40000;
  nextPort(): number {
    return this.port++;
  }
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

  constructor(
    readonly cloud: FakeCloud,
    readonly host: string,
    o: { available?: boolean; accel?: 'kvm' | 'tcg' } = {},
  ) {
    const available = o.available ?? true;
    this.info = {
      kind: 'fake',
      available,
      accel: available ? (o.accel ?? 'tcg') : null,
      ...(available ? {} : { reason: 'fake: no hypervisor' }),
    };
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
    if (g?.state !== 'running') throw new Error(`no running guest ${name} here`);
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
