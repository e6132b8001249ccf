// The host agent: the daemon's link to the coordinator. It registers this host (site, CPUs, memory, labels,
// hypervisor), heartbeats every HEARTBEAT_MS with the guests it runs, and long-polls for commands, which it
// runs on the hypervisor and answers one by one.
//
// Why pull: the agent opens every connection (register, heartbeat, poll, result), so a VM host behind NAT or
// a firewall needs no inbound port and no certificate, and a standby coordinator can simply proxy. The cost
// is one held HTTP request per host, answered within POLL_WAIT_MS or as soon as a command is queued.
//
// Lifecycle: new HostAgent(cfg, deps) → start() (returns at once; registering is retried in the background
// until the coordinator answers) → stop() (idempotent; stops this host's guests: a restarted agent cannot
// take over QEMU processes it did not start).
import crypto from 'node:crypto';
import { CoordinatorClient } from '../coordinator/client.ts';
import { AGENT_REQUEST_TIMEOUT_MS, AGENT_RETRY_MS, HEARTBEAT_MS, POLL_WAIT_MS } from '../coordinator/constants.ts';
import { ApiError, type Command, type CommandResult, type HostInfo, type LaunchSpec } from '../coordinator/types.ts';
import type { Logger } from '../log.ts';
import type { AgentStatus } from '../status.ts';
import type { AgentConfig } from './config.ts';
import type { GuestSpec, Hypervisor } from './hypervisor.ts';
import { ImageCache } from './images.ts';

/** How long confirm waits for a migration destination to leave 'incoming' (well within the command timeout). */
const CONFIRM_WAIT_MS = 10_000;

export interface AgentDeps {
  /** This host's name at the coordinator: the daemon's name. */
  name: string;
  /** The bridge guests' TAPs join (the daemon's tap.bridge); the config's bridge overrides it. */
  bridge?: string;
  /** "MAC is about to arrive here": the daemon's switch (Daemon.expect) or its control socket. */
  expect(mac: string): { ok: boolean; error?: string } | Promise<{ ok: boolean; error?: string }>;
  log: Logger;
  /** Default: QEMU, or none with `hypervisor: none`. */
  hypervisor?: Hypervisor;
  /** Where other hosts send migrations when the config has no migration_address (the daemon's listen address). */
  address?: string;
  /** This site serves DHCP: called with the coordinator's reservations after each heartbeat. */
  reservations?(list: { mac: string; ip: string; vm: string }[]): void;
}

export class HostAgent {
  readonly client: CoordinatorClient;
  readonly images: ImageCache;
  readonly bootId = crypto.randomBytes(8).toString('hex');
  /** Plain counters, read by `status` and tests. */
  readonly stats = { registrations: 0, heartbeats: 0, heartbeatFailures: 0, polls: 0, commands: 0, commandFailures: 0 };
  private hv: Hypervisor | null = null;
  private guestsVersion = 0;
  private registered = false;
  private stopped = false;
  private readonly abort = new AbortController();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private loops: Promise<void>[] = [];
  private readonly running = new Set<Promise<void>>();
  private lastError = '';
  private beating = false;

  constructor(
    readonly config: AgentConfig,
    private readonly deps: AgentDeps,
  ) {
    this.client = new CoordinatorClient(config.urls, config.token);
    this.images = new ImageCache(config.cacheDir, deps.log);
  }

  get name(): string {
    return this.deps.name;
  }
  get bridge(): string | undefined {
    return this.config.bridge ?? this.deps.bridge;
  }
  get hypervisor(): Hypervisor | null {
    return this.hv;
  }
  get isRegistered(): boolean {
    return this.registered;
  }

  async start(): Promise<void> {
    this.hv = this.deps.hypervisor ?? (this.config.hypervisor === 'qemu' ? await this.qemu() : null);
    if (this.hv)
      this.hv.onChange = () => {
        this.guestsVersion++;
        this.heartbeatSoon();
      };
    this.loops.push(this.pollLoop());
    this.deps.log.info(
      { coordinator: this.config.urls, bridge: this.bridge, hypervisor: this.hv?.info ?? null },
      'host agent started',
    );
  }

  private async qemu(): Promise<Hypervisor> {
    const { QemuHypervisor } = await import('./qemu/hypervisor.ts');
    return new QemuHypervisor({ stateDir: this.config.stateDir, log: this.deps.log.child({ part: 'qemu' }) });
  }

  // ---- registration and heartbeats -----------------------------------------------------------------

  private info(): HostInfo {
    const hv = this.hv?.info ?? {
      kind: 'none',
      available: false,
      accel: null,
      reason: 'hypervisor: none in the agent config',
    };
    const bridge = this.bridge;
    const hypervisor =
      bridge || !hv.available
        ? hv
        : { ...hv, available: false, reason: 'no bridge: set tap.bridge or coordinator.bridge' };
    return {
      name: this.name,
      site: this.config.site ?? this.name,
      cpus: this.config.cpus,
      memory_mib: this.config.memoryMib,
      labels: this.config.labels,
      hypervisor,
      address: this.config.migrationAddress ?? this.deps.address ?? null,
      bridge: bridge ?? '',
      dhcp: this.deps.reservations !== undefined,
      boot_id: this.bootId,
      version: 'homewire 0.1.0',
    };
  }

  private async register(): Promise<void> {
    const r = await this.client.request<{ heartbeat_ms: number }>('POST', '/v1/agent/register', this.info(), {
      timeoutMs: AGENT_REQUEST_TIMEOUT_MS,
      signal: this.abort.signal,
    });
    this.registered = true;
    this.stats.registrations++;
    this.lastError = '';
    this.deps.log.info(
      { coordinator: this.client.url, heartbeatMs: r.heartbeat_ms },
      'registered with the coordinator',
    );
    if (!this.heartbeatTimer) this.heartbeatTimer = setInterval(() => this.heartbeat(), HEARTBEAT_MS);
  }

  private heartbeatSoon(): void {
    setImmediate(() => this.heartbeat());
  }

  private heartbeat(): void {
    if (this.stopped || !this.registered || this.beating) return;
    this.beating = true;
    const version = this.guestsVersion; // taken before the states: a change meanwhile bumps it past this
    (this.hv?.refresh?.() ?? Promise.resolve())
      .catch(() => {})
      .then(() => {
        const body = { name: this.name, boot_id: this.bootId, guests_version: version, guests: this.hv?.list() ?? [] };
        return this.client.request<{ ok: boolean; reservations?: { mac: string; ip: string; vm: string }[] }>(
          'POST',
          '/v1/agent/heartbeat',
          body,
          {
            timeoutMs: AGENT_REQUEST_TIMEOUT_MS,
            signal: this.abort.signal,
          },
        );
      })
      .finally(() => {
        this.beating = false;
      })
      .then(
        (r) => {
          this.stats.heartbeats++;
          if (r?.reservations && this.deps.reservations) this.deps.reservations(r.reservations);
        },
        (err) => {
          if (this.stopped) return;
          this.stats.heartbeatFailures++;
          if (err instanceof ApiError && err.code === 'unknown_host') this.registered = false; // the poll loop registers again
          this.warn(err, 'heartbeat failed');
        },
      );
  }

  private warn(err: unknown, msg: string): void {
    const text = (err as Error).message;
    if (text === this.lastError) return; // one line per kind of failure, not one per retry
    this.lastError = text;
    this.deps.log.warn({ error: text, coordinator: this.client.url }, msg);
  }

  // ---- commands --------------------------------------------------------------------------------------

  private async pollLoop(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        if (!this.registered) await this.register();
        const r = await this.client.request<{ commands: Command[] }>(
          'POST',
          '/v1/agent/poll',
          { name: this.name, wait_ms: POLL_WAIT_MS },
          { timeoutMs: POLL_WAIT_MS + AGENT_REQUEST_TIMEOUT_MS, signal: this.abort.signal },
        );
        this.stats.polls++;
        failures = 0;
        for (const c of r.commands) this.track(this.execute(c));
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof ApiError && err.code === 'unknown_host') this.registered = false;
        this.warn(
          err,
          this.registered
            ? 'polling the coordinator failed; retrying'
            : 'cannot register with the coordinator; retrying',
        );
        await sleep(AGENT_RETRY_MS[Math.min(failures++, AGENT_RETRY_MS.length - 1)], this.abort.signal);
      }
    }
  }

  private track(p: Promise<void>): void {
    this.running.add(p);
    p.finally(() => this.running.delete(p));
  }

  /** Runs one command and posts its result (retried a few times: the coordinator waits for it). */
  private async execute(c: Command): Promise<void> {
    this.stats.commands++;
    const started = Date.now();
    let result: Omit<CommandResult, 'id' | 'guests_version' | 'boot_id'>;
    try {
      result = { ok: true, ...(await this.run(c)) };
    } catch (err) {
      this.stats.commandFailures++;
      result = { ok: false, error: (err as Error).message };
    }
    const level = result.ok ? 'info' : 'warn';
    this.deps.log[level](
      {
        command: c.type,
        target: 'vm' in c ? c.vm.name : 'name' in c ? c.name : c.mac,
        ms: Date.now() - started,
        ...(result.ok ? {} : { error: result.error }),
      },
      `command ${c.type} ${result.ok ? 'done' : 'failed'}`,
    );
    const body = {
      name: this.name,
      result: { ...result, id: c.id, guests_version: this.guestsVersion, boot_id: this.bootId },
    };
    for (let i = 0; i < 5 && !this.stopped; i++) {
      try {
        await this.client.request('POST', '/v1/agent/result', body, {
          timeoutMs: AGENT_REQUEST_TIMEOUT_MS,
          signal: this.abort.signal,
          retryForMs: 2000,
        });
        return;
      } catch (err) {
        this.warn(err, 'posting a command result failed; retrying');
        await sleep(AGENT_RETRY_MS[i], this.abort.signal);
      }
    }
  }

  private async run(c: Command): Promise<Partial<CommandResult>> {
    const hv = this.hv;
    if (c.type === 'expect') {
      const r = await this.deps.expect(c.mac);
      if (!r.ok) throw new Error(`the daemon refused expect ${c.mac}: ${r.error}`);
      return {};
    }
    if (!hv) throw new Error(`host ${this.name} runs no hypervisor (coordinator.hypervisor: none)`);
    switch (c.type) {
      case 'start': {
        if ((await hv.state(c.vm.name)) === 'running') return { state: 'running' };
        const spec = await this.spec(c.vm);
        await hv.launch(spec);
        this.guestsVersion++;
        return { state: 'running' };
      }
      case 'incoming': {
        const address = this.config.migrationAddress ?? this.deps.address;
        if (!address || address === '0.0.0.0' || address === '::')
          throw new Error(`host ${this.name} has no migration address: set coordinator.migration_address`);
        if ((await hv.state(c.vm.name)) !== 'absent') await hv.stop(c.vm.name); // a leftover of an earlier attempt
        const spec = await this.spec(c.vm);
        const uri = await hv.incoming(spec, address);
        this.guestsVersion++;
        return { uri, state: 'incoming' };
      }
      case 'migrate':
        try {
          await hv.migrate(c.name, c.uri);
        } finally {
          this.guestsVersion++;
        }
        return { state: 'migrated' };
      case 'confirm': {
        let state = await hv.state(c.name);
        // A destination loads the last state after the source reported "completed": give it a moment.
        for (const deadline = Date.now() + CONFIRM_WAIT_MS; state === 'incoming' && Date.now() < deadline; ) {
          await sleep(20, this.abort.signal);
          state = await hv.state(c.name);
        }
        if (c.resume && (state === 'paused' || state === 'migrated')) {
          await hv.resume(c.name);
          state = await hv.state(c.name);
          this.guestsVersion++;
        }
        return { state };
      }
      case 'stop':
        await hv.stop(c.name);
        this.guestsVersion++;
        return { state: 'absent' };
    }
  }

  private async spec(vm: LaunchSpec): Promise<GuestSpec> {
    const bridge = this.bridge;
    if (!bridge) throw new Error(`host ${this.name} has no bridge for guests: set tap.bridge (or coordinator.bridge)`);
    const files = await this.images.image(vm.image);
    return {
      name: vm.name,
      mac: vm.mac,
      cpus: vm.cpus,
      memoryMib: vm.memory_mib,
      kernel: files.kernel,
      initrd: files.initrd,
      ...(files.disk ? { disk: files.disk } : {}),
      cmdline: vm.image.cmdline ?? 'quiet',
      bridge,
    };
  }

  status(): AgentStatus {
    return {
      coordinator: this.client.url,
      registered: this.registered,
      bootId: this.bootId,
      guests: this.hv?.list() ?? [],
      hypervisor: this.hv?.info ?? null,
      ...this.stats,
      images: { ...this.images.stats },
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.abort.abort();
    await Promise.allSettled([...this.loops, ...this.running]);
    await this.hv?.close();
    this.deps.log.info('host agent stopped');
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}
