// In-memory twin of the Hypervisor seam (src/agent/hypervisor.ts): tests run a coordinator and several hosts
// in one process, with failures injected per call.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { GuestReport, GuestState, Hypervisor as HypervisorInfo } from '../../src/coordinator/types.ts';
import type { DiskSource, GuestSpec, Hypervisor, MigrationChannel, SnapshotFiles } from '../../src/agent/hypervisor.ts';
import type { ConsoleListener, GuestConsole } from '../../src/agent/console.ts';
import { ByteRing } from '../../src/coordinator/ring.ts';
import { CONSOLE_SCROLLBACK_BYTES } from '../../src/coordinator/constants.ts';

export const FAKE_PROMPT = 'fake# ';

/** A guest's serial console as a tiny shell: it echoes what is typed and, on Enter, answers `echo WORDS` with
 *  WORDS (and `say N` with N lines of output), then prints the prompt. Scrollback like the agent's. */
export class FakeConsole implements GuestConsole {
  readonly stream = Math.random().toString(16).slice(2, 14);
  private readonly ring = new ByteRing(CONSOLE_SCROLLBACK_BYTES);
  private readonly listeners = new Set<ConsoleListener>();
  private line = '';
  closed = false;

  constructor(readonly host: string) {}

  /** The guest prints. */
  print(text: string | Buffer): void {
    if (this.closed) return;
    const b = typeof text === 'string' ? Buffer.from(text, 'latin1') : text;
    this.ring.write(b);
    for (const l of this.listeners) l.data(b);
  }

  read(from = 0): { from: number; data: Buffer } {
    return this.ring.read(from);
  }

  subscribe(l: ConsoleListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  write(data: Buffer): boolean {
    if (this.closed) return false;
    for (const ch of data.toString('latin1')) {
      if (ch !== '\r') {
        this.line += ch;
        this.print(ch);
        continue;
      }
      const cmd = this.line;
      this.line = '';
      let out = '';
      const echo = /^echo (.*)$/.exec(cmd);
      const say = /^say (\d+)$/.exec(cmd);
      if (echo) out = `${echo[1].replace('$HOST', this.host)}\r\n`;
      else if (say) for (let i = 0; i < Number(say[1]); i++) out += `line ${i} ${'x'.repeat(60)}\r\n`;
      this.print(`\r\n${out}${FAKE_PROMPT}`);
    }
    return true;
  }

  close(reason = 'the guest stopped'): void {
    if (this.closed) return;
    this.closed = true;
    for (const l of this.listeners) l.end(reason);
    this.listeners.clear();
  }
}

/**
 * Guests of all FakeHypervisors of one test, so a fake migration can find its destination: by URI, and only
 * with the same TLS key (what QEMU's TLS-PSK handshake enforces), which tests can check.
 */
export class FakeCloud {
  readonly incoming = new Map<string, { hv: FakeHypervisor; name: string; tlsPsk: string }>();
  /** Every channel a migration was sent over, in order (tests check URIs and keys). */
  readonly sent: MigrationChannel[] = [];
  /** Disks offered for a cold copy, by "host:port". */
  readonly exports = new Map<string, { hv: FakeHypervisor; name: string }>();
}

interface FakeGuest {
  spec: GuestSpec;
  state: GuestState;
  /** Stands for the guest's memory: carried over by a migration, so tests can check what arrived. */
  memory: string;
  console: FakeConsole;
}

/** In-memory hypervisor. Failures are injected per call: `failNext.migrate = 'disk on fire'`. */
export class FakeHypervisor implements Hypervisor {
  readonly info: HypervisorInfo;
  readonly guests = new Map<string, FakeGuest>();
  readonly failNext: Partial<Record<'launch' | 'incoming' | 'migrate' | 'resume' | 'snapshot', string>> = {};
  /** Each VM's disk on this host (its content stands for the overlay's bytes). */
  readonly diskContent = new Map<string, string>();
  /** Milliseconds each call takes (tests of timing and concurrency). */
  delayMs = 0;
  onChange: (() => void) | null = null;
  readonly calls: string[] = [];

  constructor(
    readonly cloud: FakeCloud,
    readonly host: string,
    o: { available?: boolean; accel?: 'kvm' | 'tcg'; qemuVersion?: string } = {},
  ) {
    const available = o.available ?? true;
    this.info = {
      kind: 'fake',
      available,
      accel: available ? (o.accel ?? 'tcg') : null,
      ...(available
        ? { qemu_version: o.qemuVersion ?? 'fake-1.0', machine: 'fake-pc', cpu: 'fake' }
        : { reason: 'fake: no hypervisor' }),
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

  async launch(spec: GuestSpec, o: { diskFrom?: DiskSource } = {}): Promise<{ note?: string }> {
    await this.step('launch', spec.name);
    const g = this.guests.get(spec.name);
    if (g && g.state === 'running') return {};
    if (o.diskFrom) {
      const e = this.cloud.exports.get(`${o.diskFrom.host}:${o.diskFrom.port}`);
      const content = e?.hv.diskContent.get(e.name);
      if (content === undefined) throw new Error(`nothing exports a disk at ${o.diskFrom.host}:${o.diskFrom.port}`);
      this.diskContent.set(spec.name, content);
    } else if ((spec.disk || spec.warm?.overlay) && !this.diskContent.has(spec.name)) {
      this.diskContent.set(spec.name, spec.warm?.overlay ? `warm disk of ${spec.name}` : `new disk on ${this.host}`);
    }
    const memory = spec.warm ? `resumed on ${this.host}` : `booted on ${this.host}`;
    const con = new FakeConsole(this.host);
    con.print(`${spec.warm ? 'resuming' : 'booting'} ${spec.name} on ${this.host}\r\n${FAKE_PROMPT}`);
    this.guests.set(spec.name, { spec, state: 'running', memory, console: con });
    return spec.warm?.clone ? { note: `clone ${spec.name} has a new MAC ${spec.mac}: renew DHCP` } : {};
  }

  async incoming(spec: GuestSpec, m: MigrationChannel): Promise<void> {
    await this.step('incoming', spec.name);
    if (this.cloud.incoming.has(m.uri)) throw new Error(`${m.uri}: Address already in use`);
    this.guests.set(spec.name, { spec, state: 'incoming', memory: '', console: new FakeConsole(this.host) });
    this.cloud.incoming.set(m.uri, { hv: this, name: spec.name, tlsPsk: m.tlsPsk });
    if (spec.disk) {
      if (!m.nbd) throw new Error(`${spec.name} has a disk: its migration needs an NBD port`);
      this.diskContent.set(spec.name, '');
    }
  }

  async exportDisk(name: string, address: string, port: number): Promise<DiskSource> {
    const content = this.diskContent.get(name);
    if (content === undefined) throw new Error(`this host has no disk of ${name}`);
    this.cloud.exports.set(`${address}:${port}`, { hv: this, name });
    const sha256 = crypto.createHash('sha256').update(content).digest('hex');
    return { host: address, port, export: 'overlay', bytes: content.length, sha256 };
  }

  async snapshot(name: string): Promise<SnapshotFiles> {
    await this.step('snapshot', name);
    const g = this.guests.get(name);
    if (g?.state !== 'running') throw new Error(`no running guest ${name} here`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-fake-snap-'));
    const state = path.join(dir, 'state');
    fs.writeFileSync(state, `memory of ${name}: ${g.memory}\n`);
    const disk = this.diskContent.get(name);
    const overlay = disk === undefined ? null : path.join(dir, 'overlay');
    if (overlay) fs.writeFileSync(overlay, disk!);
    return {
      state,
      overlay,
      pauseMs: 1,
      manifest: {
        qemu: this.info.qemu_version ?? 'fake-1.0',
        machine: 'fake-pc',
        cpu: 'fake',
        accel: this.info.accel ?? 'tcg',
        memory_mib: g.spec.memoryMib,
        cpus: g.spec.cpus,
        devices: ['virtio-net-pci', ...(overlay ? ['virtio-blk-pci'] : [])],
      },
    };
  }

  disks(): string[] {
    return [...this.diskContent.keys()];
  }

  async migrate(name: string, m: MigrationChannel): Promise<void> {
    const { uri } = m;
    this.cloud.sent.push(m);
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
    if (!dest || !dg || dg.state !== 'incoming') {
      g.state = 'running';
      throw new Error(`nothing listens at ${uri}`);
    }
    if (dest.tlsPsk !== m.tlsPsk) {
      g.state = 'running';
      throw new Error(`TLS handshake with ${uri} failed: the destination holds another key`);
    }
    this.cloud.incoming.delete(uri);
    dg.memory = g.memory;
    const disk = this.diskContent.get(name);
    if (disk !== undefined) dest.hv.diskContent.set(dest.name, disk);
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

  async stop(name: string, o: { discard?: boolean } = {}): Promise<void> {
    await this.step('stop', name);
    const g = this.guests.get(name);
    g?.console.close();
    this.guests.delete(name);
    if (o.discard || g?.state === 'incoming' || g?.state === 'migrated') this.diskContent.delete(name);
    for (const [uri, d] of this.cloud.incoming) if (d.hv === this && d.name === name) this.cloud.incoming.delete(uri);
  }

  console(name: string): FakeConsole | null {
    return this.guests.get(name)?.console ?? null;
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
    for (const g of this.guests.values()) g.console.close();
    this.guests.clear();
  }
}
