// The host agent: the daemon's link to the coordinator. It registers this host (site, CPUs, memory, labels,
// hypervisor), heartbeats every HEARTBEAT_MS with the guests it runs, and long-polls for commands, which it
// runs on the hypervisor and answers one by one.
//
// Why pull: the agent opens every connection (register, heartbeat, poll, result), so a VM host behind NAT or
// a firewall needs no inbound port and no certificate, and a standby coordinator can simply proxy. The cost
// is one held HTTP request per host, answered within POLL_WAIT_MS or as soon as a command is queued.
//
// Lifecycle: new HostAgent(cfg, deps) → start() (re-adopts the guests an earlier agent left running, then
// returns; registering is retried in the background until the coordinator answers) → stop() (idempotent; the
// guests keep running for the next agent, unless stop_guests_on_exit asks to stop them).
import crypto from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import net from 'node:net';
import { CoordinatorClient } from '../coordinator/client.ts';
import {
  AGENT_REQUEST_TIMEOUT_MS,
  AGENT_RETRY_MS,
  HEARTBEAT_LEASES_MAX,
  HEARTBEAT_MS,
  POLL_WAIT_MS,
} from '../coordinator/constants.ts';
import { NAME_RE } from '../coordinator/images.ts';
import { LimitedLog } from '../limited-log.ts';
import { NBD_EXPORT, parseMigrationUri, refuseMigrationAddress } from '../coordinator/migration.ts';
import {
  ApiError,
  type Command,
  type CommandResult,
  type GuestMac,
  type HostInfo,
  type LaunchSpec,
  type WarmImage,
  type MeshReport,
} from '../coordinator/types.ts';
import type { Logger } from '../log.ts';
import type { AgentStatus } from '../status.ts';
import type { AgentConfig } from './config.ts';
import { ConsoleLinks } from './console.ts';
import type { AdoptReport, GuestSpec, Hypervisor } from './hypervisor.ts';
import { ImageCache } from './images.ts';
import { baseFormat, fileSha256 } from './qemu/disks.ts';
import {
  CommandRefused,
  checkCommand,
  checkMac,
  type HostLimits,
  REFUSAL_REASONS,
  type RefusalReason,
} from './validate.ts';

/** The guest MAC list goes to the daemon when it changes, and at least this often. */
const GUEST_MACS_RESEND_MS = 60_000;

/** How long confirm waits for a migration destination to leave 'incoming' (well within the command timeout). */
const CONFIRM_WAIT_MS = 10_000;

/** What the daemon answers to the agent's calls. */
export type DaemonResult = { ok: boolean; error?: string };

export interface AgentDeps {
  /** This host's name at the coordinator: the daemon's name. */
  name: string;
  /** The daemon's public key (base64): the coordinator authorizes migrating MACs to move to this site's key. */
  publicKey?: string;
  /** The bridge guests' TAPs join (the daemon's tap.bridge); the config's bridge overrides it. */
  bridge?: string;
  /** "MAC is about to arrive here": the daemon's switch (Daemon.expect) or its control socket. */
  expect(mac: string): { ok: boolean; error?: string } | Promise<{ ok: boolean; error?: string }>;
  log: Logger;
  /** Default: QEMU, or none with `hypervisor: none`. */
  hypervisor?: Hypervisor;
  /** Where other hosts send migrations when the config has no migration_address: the host's overlay address
   *  (host_address or the bridge's lease, so migration streams ride the mesh), else the daemon's listen address.
   *  A function is read at each registration and each incoming migration. */
  address?: string | (() => string | undefined);
  /** This site serves DHCP: called with the coordinator's reservations after each heartbeat. */
  reservations?(list: { mac: string; ip: string; vm: string }[]): void;
  /** This site serves DHCP: its bound leases, sent with each heartbeat (the page shows VMs' home IPs). */
  leases?(): { mac: string; ip: string }[];
  /**
   * "MAC may move to the site with this public key until untilMs" (a migration the coordinator runs): the
   * daemon's MAC ownership (Daemon.authorizeMove, or POST /v1/authorize-move on its control socket). Absent:
   * the daemon has no MAC ownership to tell, and the command succeeds without it.
   */
  authorizeMove?(mac: string, siteKey: string, untilMs: number): DaemonResult | Promise<DaemonResult>;
  /** The coordinator's guests on this host (after each heartbeat): the daemon's port security. */
  setGuestMacs?(list: GuestMac[]): DaemonResult | Promise<DaemonResult>;
  /** The daemon's mesh endpoint and peers, sent with each heartbeat (the web page shows them). */
  mesh?(): MeshReport | null | Promise<MeshReport | null>;
}

export class HostAgent {
  readonly client: CoordinatorClient;
  readonly images: ImageCache;
  /** Console streams to the coordinator (src/agent/console.ts). */
  readonly consoles: ConsoleLinks;
  readonly bootId = crypto.randomBytes(8).toString('hex');
  /** Plain counters, read by `status` and tests. */
  readonly stats = { registrations: 0, heartbeats: 0, heartbeatFailures: 0, polls: 0, commands: 0, commandFailures: 0 };
  /** What start() found of an earlier agent's guests (and how long taking them over took). */
  adoption: (AdoptReport & { ms: number }) | null = null;
  /** Commands (and heartbeat-reply entries) refused by the agent's own checks, by reason (metrics). */
  readonly refused = Object.fromEntries(REFUSAL_REASONS.map((r) => [r, 0])) as Record<RefusalReason, number>;
  private readonly limited: LimitedLog;
  private lastGuestMacs = { key: '', atMs: 0 };
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
  private lastMesh: MeshReport | null = null;
  private readingMesh = false;

  constructor(
    readonly config: AgentConfig,
    private readonly deps: AgentDeps,
  ) {
    this.client = new CoordinatorClient(config.urls, config.token, { ca: config.ca });
    this.images = new ImageCache(config.cacheDir, deps.log, (sha, what) => this.blob(sha, what));
    this.limited = new LimitedLog(deps.log);
    this.consoles = new ConsoleLinks({
      host: deps.name,
      url: () => this.client.url,
      wsOptions: () => this.client.wsOptions(),
      log: deps.log.child({ part: 'console' }),
    });
  }

  /** A blob of the coordinator's store (warm images' state and disk), streamed. */
  private async blob(sha256: string, what: string): Promise<Readable> {
    try {
      const res = await this.client.raw('GET', `/v1/agent/blobs/${sha256}`, { signal: this.abort.signal });
      return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
    } catch (err) {
      throw new Error(`${what}: cannot fetch blob ${sha256} from the coordinator: ${(err as Error).message}`);
    }
  }

  /** The migration address other hosts reach this one at (registered; incoming URIs must use it). The daemon's
   *  is a function (its overlay address may come with a DHCP lease): read each time. */
  get migrationAddress(): string | null {
    const d = this.deps.address;
    const a = this.config.migrationAddress ?? (typeof d === 'function' ? d() : d);
    return a && refuseMigrationAddress(a) === null ? a : null;
  }

  private limits(): HostLimits {
    return {
      cpus: this.config.cpus,
      memoryMib: this.config.memoryMib,
      migrationAddress: this.migrationAddress,
      migrationPorts: this.config.migrationPorts,
    };
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
    if (this.hv?.start) {
      // Before the first heartbeat: the coordinator must see the guests that kept running, not an empty host.
      const started = Date.now();
      const report = await this.hv.start();
      this.adoption = { ...report, ms: Date.now() - started };
    }
    this.loops.push(this.pollLoop());
    this.deps.log.info(
      { coordinator: this.config.urls, bridge: this.bridge, hypervisor: this.hv?.info ?? null },
      'host agent started',
    );
  }

  private async qemu(): Promise<Hypervisor> {
    const { QemuHypervisor } = await import('./qemu/hypervisor.ts');
    if (!this.config.qemuUser && process.getuid?.() === 0)
      this.deps.log.warn(
        'QEMU will run as root: set coordinator.qemu_user to an unprivileged user so a guest that escapes QEMU is not root',
      );
    return new QemuHypervisor({
      stateDir: this.config.stateDir,
      log: this.deps.log.child({ part: 'qemu' }),
      runAs: this.config.qemuUser,
      ...(this.config.qemuBinary ? { binary: this.config.qemuBinary } : {}),
    });
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
      address: this.migrationAddress,
      migration_ports: this.config.migrationPorts,
      public_key: this.deps.publicKey ?? null,
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
        const mesh = this.lastMesh;
        this.refreshMesh();
        const body = {
          name: this.name,
          boot_id: this.bootId,
          guests_version: version,
          guests: this.hv?.list() ?? [],
          ...(this.hv?.disks ? { disks: this.hv.disks() } : {}),
          ...(mesh ? { mesh } : {}),
          // Bounded: a big pool must not push the heartbeat past the API's body limit (the coordinator reads
          // no more than this many anyway).
          ...(this.deps.leases ? { leases: this.deps.leases().slice(0, HEARTBEAT_LEASES_MAX) } : {}),
        };
        return this.client.request<{
          ok: boolean;
          reservations?: { mac: string; ip: string; vm: string }[];
          guest_macs?: unknown;
        }>('POST', '/v1/agent/heartbeat', body, {
          timeoutMs: AGENT_REQUEST_TIMEOUT_MS,
          signal: this.abort.signal,
        });
      })
      .finally(() => {
        this.beating = false;
      })
      .then(
        (r) => {
          this.stats.heartbeats++;
          if (r?.reservations && this.deps.reservations) this.deps.reservations(r.reservations);
          if (r?.guest_macs !== undefined) this.guestMacs(r.guest_macs);
        },
        (err) => {
          if (this.stopped) return;
          this.stats.heartbeatFailures++;
          if (err instanceof ApiError && err.code === 'unknown_host') this.registered = false; // the poll loop registers again
          this.warn(err, 'heartbeat failed');
        },
      );
  }

  /** The coordinator's guests here, checked, to the daemon's port security (only when the list changed). */
  private guestMacs(raw: unknown): void {
    if (!this.deps.setGuestMacs || !Array.isArray(raw)) return;
    const list: GuestMac[] = [];
    for (const g of raw as Partial<GuestMac>[]) {
      try {
        const mac = checkMac(g?.mac);
        if (typeof g.vm !== 'string' || !NAME_RE.test(g.vm))
          throw new CommandRefused('bad_name', 'guest_macs: vm name');
        if (g.ip !== null && !(typeof g.ip === 'string' && net.isIPv4(g.ip)))
          throw new CommandRefused('bad_command', 'guest_macs: ip must be an IPv4 address or null');
        list.push({ mac, ip: g.ip, vm: g.vm });
      } catch (err) {
        this.refuse(err as CommandRefused, 'heartbeat guest_macs');
      }
    }
    const key = JSON.stringify(list);
    // Again now and then even unchanged: a daemon that restarted beside a standalone agent starts empty.
    const now = Date.now();
    if (key === this.lastGuestMacs.key && now - this.lastGuestMacs.atMs < GUEST_MACS_RESEND_MS) return;
    Promise.resolve(this.deps.setGuestMacs(list)).then(
      (r) => {
        if (r.ok) this.lastGuestMacs = { key, atMs: now };
        else this.deps.log.warn({ error: r.error }, 'the daemon refused the guest MAC list');
      },
      (err) => this.deps.log.warn({ error: (err as Error).message }, 'cannot give the daemon the guest MAC list'),
    );
  }

  private refuse(err: CommandRefused, what: string): void {
    this.refused[err.reason]++;
    this.limited.warn(
      err.reason,
      { reason: err.reason, what, error: err.message },
      'refused a command from the coordinator',
    );
  }

  /** The daemon's mesh report, read in the background: a slow daemon never delays a heartbeat. */
  private refreshMesh(): void {
    const read = this.deps.mesh;
    if (!read || this.readingMesh) return;
    this.readingMesh = true;
    Promise.resolve()
      .then(() => read())
      .then(
        (m) => {
          this.lastMesh = m;
        },
        () => {
          this.lastMesh = null;
        },
      )
      .finally(() => {
        this.readingMesh = false;
      });
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
        for (const c of Array.isArray(r?.commands) ? r.commands : []) this.track(this.execute(c));
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

  /** Checks and runs one command and posts its result (retried a few times: the coordinator waits for it). */
  private async execute(raw: unknown): Promise<void> {
    this.stats.commands++;
    const started = Date.now();
    const id = typeof (raw as Command)?.id === 'string' ? (raw as Command).id.slice(0, 64) : '';
    let result: Omit<CommandResult, 'id' | 'guests_version' | 'boot_id'>;
    let c: Command | null = null;
    try {
      c = checkCommand(raw, this.limits());
      result = { ok: true, ...(await this.run(c)) };
    } catch (err) {
      this.stats.commandFailures++;
      if (err instanceof CommandRefused) this.refuse(err, c?.type ?? 'command');
      result = { ok: false, error: (err as Error).message };
    }
    if (c) {
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
    }
    if (!id) return; // nothing to answer to
    const body = {
      name: this.name,
      result: { ...result, id, guests_version: this.guestsVersion, boot_id: this.bootId },
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
    if (c.type === 'authorize-move') {
      if (!this.deps.authorizeMove) {
        this.limited.warn(
          'no-authorize-move',
          { mac: c.mac },
          'the daemon has no MAC ownership to authorize a move with; the migration goes on',
        );
        return {};
      }
      const r = await this.deps.authorizeMove(c.mac, c.site_key, Date.now() + c.ttl_ms);
      if (!r.ok) throw new Error(`the daemon refused authorize-move ${c.mac}: ${r.error}`);
      return {};
    }
    if (!hv) throw new Error(`host ${this.name} runs no hypervisor (coordinator.hypervisor: none)`);
    switch (c.type) {
      case 'start': {
        if ((await hv.state(c.vm.name)) === 'running') return { state: 'running' };
        const spec = await this.spec(c.vm);
        const r = await hv.launch(spec, {
          ...(c.disk_from ? { diskFrom: c.disk_from } : {}),
          ...(c.tls_psk ? { psk: c.tls_psk } : {}),
        });
        this.guestsVersion++;
        return { state: 'running', ...(r?.note ? { note: r.note } : {}) };
      }
      case 'incoming': {
        // checkCommand made sure the URI is this host's migration address and ports of its range.
        if ((await hv.state(c.vm.name)) !== 'absent') await hv.stop(c.vm.name, { discard: true }); // an earlier attempt
        const spec = await this.spec(c.vm);
        const host = parseMigrationUri(c.uri)!.address;
        await hv.incoming(spec, {
          uri: c.uri,
          tlsPsk: c.tls_psk,
          ...(c.nbd_port ? { nbd: { host, port: c.nbd_port, export: NBD_EXPORT } } : {}),
        });
        this.guestsVersion++;
        return { state: 'incoming' };
      }
      case 'migrate':
        try {
          await hv.migrate(c.name, { uri: c.uri, tlsPsk: c.tls_psk, ...(c.nbd ? { nbd: c.nbd } : {}) });
        } finally {
          this.guestsVersion++;
        }
        return { state: 'migrated' };
      case 'confirm': {
        let state = await hv.state(c.name);
        // A destination loads the last state after the source reported "completed": give it a moment.
        const waitMs = c.wait === false ? 0 : CONFIRM_WAIT_MS;
        for (const deadline = Date.now() + waitMs; state === 'incoming' && Date.now() < deadline; ) {
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
        await hv.stop(c.name, { discard: c.discard === true });
        this.guestsVersion++;
        return { state: 'absent' };
      case 'export_disk': {
        // checkCommand made sure the port is one of this host's migration ports.
        if (!hv.exportDisk) throw new Error(`host ${this.name}'s hypervisor keeps no disks`);
        const address = this.migrationAddress;
        if (!address) throw new Error(`host ${this.name} has no migration address: set coordinator.migration_address`);
        return { disk: await hv.exportDisk(c.name, address, c.port, c.tls_psk) };
      }
      case 'snapshot':
        return { warm: await this.snapshot(c.name) };
      case 'console': {
        const con = hv.console?.(c.name);
        if (!con) throw new Error(`no console for guest ${c.name} on ${this.name} (not running here)`);
        await this.consoles.link(con, c);
        return {};
      }
    }
  }

  /** Saves a guest, keeps the files in this host's cache and uploads them to the coordinator's blob store. */
  private async snapshot(name: string): Promise<Omit<WarmImage, 'disk_gib' | 'source_vm'>> {
    const hv = this.hv!;
    if (!hv.snapshot) throw new Error(`host ${this.name}'s hypervisor cannot save guests`);
    const files = await hv.snapshot(name);
    const mac = hv.list().find((g) => g.name === name)?.mac ?? '';
    const publish = async (file: string) => {
      const { sha256, bytes } = await fileSha256(file);
      const cached = this.images.adopt(file, sha256);
      await this.client.raw('PUT', `/v1/agent/blobs/${sha256}`, {
        body: () => Readable.toWeb(fs.createReadStream(cached)) as ReadableStream<Uint8Array>,
        bytes,
        signal: this.abort.signal,
      });
      return { sha256, bytes };
    };
    const state = await publish(files.state);
    const overlay = files.overlay ? await publish(files.overlay) : null;
    this.deps.log.info({ vm: name, state, overlay, pauseMs: files.pauseMs }, 'warm image published');
    return { state, overlay, mac, manifest: files.manifest };
  }

  private async spec(vm: LaunchSpec): Promise<GuestSpec> {
    const bridge = this.bridge;
    if (!bridge) throw new Error(`host ${this.name} has no bridge for guests: set tap.bridge (or coordinator.bridge)`);
    const files = await this.images.image(vm.image, {
      sources: vm.image_sources,
      allowLocal: this.config.allowLocalImages,
      ca: this.config.ca,
    });
    const base = files.disk ? { file: files.disk, format: baseFormat(files.disk) } : null;
    const warm = vm.image.warm;
    return {
      name: vm.name,
      mac: vm.mac,
      cpus: vm.cpus,
      memoryMib: vm.memory_mib,
      kernel: files.kernel,
      initrd: files.initrd,
      ...(vm.disk ? { disk: { base, gib: vm.disk.gib } } : {}),
      ...(warm && files.state
        ? {
            warm: {
              state: files.state,
              overlay: files.overlay ?? null,
              manifest: warm.manifest,
              clone: vm.clone === true,
            },
          }
        : {}),
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
      adoption: this.adoption,
      ...this.stats,
      refused: { ...this.refused },
      images: { ...this.images.stats },
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.abort.abort();
    this.consoles.closeAll();
    await Promise.allSettled([...this.loops, ...this.running]);
    await this.hv?.close({ stopGuests: this.config.stopGuestsOnExit });
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
