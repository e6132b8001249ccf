// A whole grid in one process, on the in-memory hypervisor twin: a coordinator on 127.0.0.1:0 and host
// agents with FakeHypervisors, a tiny image on disk (the agents take local images). Every host gets its own
// token through the admin API, as `homewire host add` does. Used by test/coordinator-*.test.ts and
// bench/coordinator-*.ts. (The real thing — QEMU guests in namespaces — is test/coordinator-qemu.test.ts.)
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostAgent } from '../../src/agent/agent.ts';
import { parseAgentConfig } from '../../src/agent/config.ts';
import { FakeCloud, FakeHypervisor } from '../twins/hypervisor.ts';
import { type Logger, silentLogger } from '../../src/log.ts';
import { CoordinatorClient } from '../../src/coordinator/client.ts';
import { parseCoordinatorConfig } from '../../src/coordinator/config.ts';
import type { Leadership } from '../../src/coordinator/leader.ts';
import { Coordinator } from '../../src/coordinator/server.ts';
import type { Store } from '../../src/coordinator/store.ts';
import type { GuestMac, HostView } from '../../src/coordinator/types.ts';
import { COORDINATOR_TICK_MS, HEARTBEAT_MS, HOST_DOWN_AFTER_MS } from '../../src/coordinator/constants.ts';

export interface FakeHost {
  name: string;
  agent: HostAgent;
  hv: FakeHypervisor;
  /** MACs the "daemon" was told to expect. */
  expects: string[];
  /** Moves the "daemon" was told to authorize, in order. */
  authorized: { mac: string; siteKey: string; untilMs: number }[];
  /** The guest MAC list the "daemon" was given last (port security). */
  guestMacs: GuestMac[] | null;
  reservations: { mac: string; ip: string; vm: string }[] | null;
  /** A DHCP site's bound leases (its agent reports them with each heartbeat). */
  leases: { mac: string; ip: string }[];
  /** The host's own API token (coordinator.token_file). */
  token: string;
  tokenFile: string;
  publicKey: string | null;
}

export interface HostOptions {
  cpus?: number;
  memoryMib?: number;
  site?: string;
  labels?: Record<string, string>;
  available?: boolean;
  /** The QEMU version the fake hypervisor reports (warm images pin it). */
  qemuVersion?: string;
  dhcp?: boolean;
  /** With dhcp: the site's bound leases, reported with each heartbeat (FakeHost.leases, changeable). */
  leases?: { mac: string; ip: string }[];
  address?: string | null | (() => string | undefined);
  /** The daemon's expect (default: record the MAC in FakeHost.expects). */
  expect?: (mac: string) => { ok: boolean; error?: string };
  /** The daemon's public key (default: a fresh random one). */
  publicKey?: string | null;
  /** The daemon's authorizeMove (default: record it in FakeHost.authorized); null: a daemon without it. */
  authorizeMove?: ((mac: string, siteKey: string, untilMs: number) => { ok: boolean; error?: string }) | null;
  /** Extra keys of the agent's coordinator: section. */
  agentConfig?: Record<string, unknown>;
  /** The agent's logger (default: the harness's). */
  log?: Logger;
}

/** The coordinator's clock in the harness: the real one, plus the time tests skip (a host's missed heartbeats
 *  are seconds of silence the tests need not wait through); it can also stand still. */
export class SkipClock {
  private skippedMs = 0;
  private frozenAt: number | null = null;
  readonly now = (): number => this.frozenAt ?? Date.now() + this.skippedMs;
  advance(ms: number): void {
    this.skippedMs += ms;
  }
  /** Stands still at now() + ms (a loaded machine's slow turns add no time) until resume(). */
  freeze(ms: number): void {
    this.frozenAt = this.now() + ms;
  }
  /** Goes on from where it stood, plus ms. */
  resume(ms: number): void {
    this.skippedMs = this.now() + ms - Date.now();
    this.frozenAt = null;
  }
}

export class Harness {
  readonly hosts = new Map<string, FakeHost>();
  /** Hosts whose agent hostDown() stopped. */
  private readonly dead = new Set<string>();
  readonly cloud = new FakeCloud();
  readonly admin: CoordinatorClient;
  readonly image: { name: string; kernel: string; initrd: string; sha256: { kernel: string; initrd: string } };

  private constructor(
    readonly dir: string,
    readonly coordinator: Coordinator,
    readonly adminToken: string,
    readonly log: Logger,
    /** The coordinator's clock (unless Harness.start was given its own `now`). */
    readonly clock: SkipClock,
    /** The CA of the coordinator's TLS certificate (clients and agents verify with it). */
    readonly caFile?: string,
  ) {
    this.admin = new CoordinatorClient([coordinator.url], adminToken, {
      ca: caFile ? fs.readFileSync(caFile, 'utf8') : undefined,
    });
    const file = (n: string, text: string) => {
      const p = path.join(dir, n);
      fs.writeFileSync(p, text);
      return { p, sum: crypto.createHash('sha256').update(text).digest('hex') };
    };
    const k = file('vmlinux', 'fake kernel\n');
    const i = file('initrd.gz', 'fake initrd\n');
    this.image = { name: 'tiny', kernel: k.p, initrd: i.p, sha256: { kernel: k.sum, initrd: i.sum } };
  }

  static async start(
    o: {
      log?: Logger;
      store?: Store;
      leadership?: Leadership;
      configExtra?: string;
      now?: () => number;
      /** With a `tls:` section in configExtra: the CA that signed its certificate. */
      caFile?: string;
    } = {},
  ): Promise<Harness> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-coord-'));
    const adminToken = crypto.randomBytes(24).toString('base64url');
    fs.writeFileSync(path.join(dir, 'admin.token'), `${adminToken}\n`, { mode: 0o600 });
    const text = [
      'listen: 127.0.0.1:0',
      'store: sqlite',
      `data_dir: ${path.join(dir, 'data')}`,
      'admin_token_file: admin.token',
      o.configExtra ?? '',
    ].join('\n');
    const file = path.join(dir, 'coordinator.yaml');
    fs.writeFileSync(file, text);
    const log = o.log ?? silentLogger;
    const clock = new SkipClock();
    const c = await Coordinator.fromConfig(parseCoordinatorConfig(text, file), {
      log,
      store: o.store,
      leadership: o.leadership,
      now: o.now ?? clock.now,
    });
    await c.start();
    return new Harness(dir, c, adminToken, log, clock, o.caFile);
  }

  /** `homewire host add NAME`: a token bound to NAME, written to <dir>/<NAME>.token. */
  async hostToken(name: string, rotate = false): Promise<{ token: string; file: string }> {
    const r = await this.admin.request<{ token: string }>('POST', '/v1/hosts', { name, ...(rotate ? { rotate } : {}) });
    const file = path.join(this.dir, `${name}.token`);
    fs.writeFileSync(file, `${r.token}\n`, { mode: 0o600 });
    return { token: r.token, file };
  }

  /** Starts a host agent with a fake hypervisor (its own token) and waits until the coordinator lists it. */
  async addHost(name: string, o: HostOptions = {}): Promise<FakeHost> {
    const cfgFile = path.join(this.dir, `${name}.yaml`);
    // A host that was here before (its daemon restarted) keeps its token file.
    const old = path.join(this.dir, `${name}.token`);
    const { token, file: tokenFile } = fs.existsSync(old)
      ? { token: fs.readFileSync(old, 'utf8').trim(), file: old }
      : await this.hostToken(name);
    const cfg = parseAgentConfig(
      {
        url: this.coordinator.url,
        token_file: tokenFile,
        cpus: o.cpus ?? 4,
        memory_mib: o.memoryMib ?? 4096,
        ...(o.site ? { site: o.site } : {}),
        labels: o.labels ?? {},
        cache_dir: `cache-${name}`,
        state_dir: `state-${name}`,
        allow_local_images: true,
        ...(this.caFile ? { ca_file: this.caFile } : {}),
        ...o.agentConfig,
      },
      cfgFile,
      'coordinator',
      name,
    );
    const hv = new FakeHypervisor(this.cloud, name, { available: o.available, qemuVersion: o.qemuVersion });
    const publicKey = o.publicKey === undefined ? crypto.randomBytes(32).toString('base64') : o.publicKey;
    const host: FakeHost = {
      name,
      agent: null as unknown as HostAgent,
      hv,
      expects: [],
      authorized: [],
      guestMacs: null,
      reservations: null,
      leases: o.leases ?? [],
      token,
      tokenFile,
      publicKey,
    };
    const authorize = o.authorizeMove;
    host.agent = new HostAgent(cfg, {
      name,
      ...(publicKey ? { publicKey } : {}),
      bridge: 'br-hw',
      log: o.log ?? this.log,
      hypervisor: hv,
      address: o.address === null ? undefined : (o.address ?? `192.0.2.${this.hosts.size + 2}`),
      expect: (mac) => {
        host.expects.push(mac);
        return o.expect ? o.expect(mac) : { ok: true };
      },
      ...(authorize === null
        ? {}
        : {
            authorizeMove: (mac: string, siteKey: string, untilMs: number) => {
              host.authorized.push({ mac, siteKey, untilMs });
              return authorize ? authorize(mac, siteKey, untilMs) : { ok: true };
            },
          }),
      setGuestMacs: (list) => {
        host.guestMacs = list;
        return { ok: true };
      },
      ...(o.dhcp
        ? {
            reservations: (list: FakeHost['reservations']) => {
              host.reservations = list;
            },
            leases: () => host.leases,
          }
        : {}),
    });
    this.hosts.set(name, host);
    await host.agent.start();
    await waitFor(() => host.agent.isRegistered, 5000, `host ${name} registered`);
    return host;
  }

  /**
   * The host's daemon dies: its agent stops, and the coordinator's clock skips ahead until the host has missed
   * HOST_DOWN_AFTER_MS of heartbeats; resolves once the coordinator has marked it down. The other hosts' agents
   * keep heartbeating on the real clock, so each skip (2 s) follows a heartbeat from every one of them: none of
   * them looks silent for HOST_DOWN_AFTER_MS unless a heartbeat is 3 s late (2 s interval + 2 s skipped + 3 s).
   */
  async hostDown(name: string): Promise<void> {
    const host = this.host(name);
    await host.agent.stop();
    this.dead.add(name);
    const alive = [...this.hosts.values()].filter((h) => !this.dead.has(h.name));
    const isDown = async () => (await this.admin.request<HostView>('GET', `/v1/hosts/${name}`)).state === 'down';
    if (alive.length === 0) {
      this.clock.advance(HOST_DOWN_AFTER_MS);
      await waitFor(isDown, 5000, `${name} down`);
      return;
    }
    const skipMs = HOST_DOWN_AFTER_MS - 2 * HEARTBEAT_MS - 1000;
    for (let skipped = 0; !(await isDown()); ) {
      if (skipped > HOST_DOWN_AFTER_MS + skipMs) throw new Error(`${name} not marked down after ${skipped} ms skipped`);
      const marks = alive.map((h) => h.agent.stats.heartbeats);
      await waitFor(
        () => alive.every((h, i) => h.agent.stats.heartbeats > marks[i]),
        HOST_DOWN_AFTER_MS + 3000,
        'a heartbeat from every running host',
      );
      this.clock.advance(skipMs);
      skipped += skipMs;
      await new Promise((r) => setTimeout(r, COORDINATOR_TICK_MS + 100)); // a tick on the new time
    }
  }

  host(name: string): FakeHost {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no fake host ${name}`);
    return h;
  }

  async addImage(): Promise<void> {
    await this.admin.request('POST', '/v1/images', this.image);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.hosts.values()].map((h) => h.agent.stop()));
    await this.coordinator.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
