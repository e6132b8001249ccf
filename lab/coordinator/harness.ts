// A whole grid in one process, on the in-memory hypervisor twin: a coordinator on 127.0.0.1:0 and host
// agents with FakeHypervisors, a tiny image on disk. Used by test/coordinator-*.test.ts and
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

export interface FakeHost {
  name: string;
  agent: HostAgent;
  hv: FakeHypervisor;
  /** MACs the "daemon" was told to expect. */
  expects: string[];
  reservations: { mac: string; ip: string; vm: string }[] | null;
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
  address?: string | null;
  /** The daemon's expect (default: record the MAC in FakeHost.expects). */
  expect?: (mac: string) => { ok: boolean; error?: string };
}

export class Harness {
  readonly hosts = new Map<string, FakeHost>();
  readonly cloud = new FakeCloud();
  readonly admin: CoordinatorClient;
  readonly image: { name: string; kernel: string; initrd: string; sha256: { kernel: string; initrd: string } };

  private constructor(
    readonly dir: string,
    readonly coordinator: Coordinator,
    readonly adminToken: string,
    readonly hostToken: string,
    readonly log: Logger,
  ) {
    this.admin = new CoordinatorClient([coordinator.url], adminToken);
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
    o: { log?: Logger; store?: Store; leadership?: Leadership; configExtra?: string; now?: () => number } = {},
  ): Promise<Harness> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-coord-'));
    const adminToken = crypto.randomBytes(24).toString('base64url');
    const hostToken = crypto.randomBytes(24).toString('base64url');
    fs.writeFileSync(path.join(dir, 'admin.token'), `${adminToken}\n`, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'host.token'), `${hostToken}\n`, { mode: 0o600 });
    const text = [
      'listen: 127.0.0.1:0',
      'store: sqlite',
      `data_dir: ${path.join(dir, 'data')}`,
      'admin_token_file: admin.token',
      'host_token_file: host.token',
      o.configExtra ?? '',
    ].join('\n');
    const file = path.join(dir, 'coordinator.yaml');
    fs.writeFileSync(file, text);
    const log = o.log ?? silentLogger;
    const c = await Coordinator.fromConfig(parseCoordinatorConfig(text, file), {
      log,
      store: o.store,
      leadership: o.leadership,
      now: o.now,
    });
    await c.start();
    return new Harness(dir, c, adminToken, hostToken, log);
  }

  /** Starts a host agent with a fake hypervisor and waits until the coordinator lists it. */
  async addHost(name: string, o: HostOptions = {}): Promise<FakeHost> {
    const cfgFile = path.join(this.dir, `${name}.yaml`);
    const cfg = parseAgentConfig(
      {
        url: this.coordinator.url,
        token_file: 'host.token',
        cpus: o.cpus ?? 4,
        memory_mib: o.memoryMib ?? 4096,
        ...(o.site ? { site: o.site } : {}),
        labels: o.labels ?? {},
        cache_dir: `cache-${name}`,
        state_dir: `state-${name}`,
      },
      cfgFile,
    );
    const hv = new FakeHypervisor(this.cloud, name, { available: o.available, qemuVersion: o.qemuVersion });
    const host: FakeHost = { name, agent: null as unknown as HostAgent, hv, expects: [], reservations: null };
    host.agent = new HostAgent(cfg, {
      name,
      bridge: 'br-hw',
      log: this.log,
      hypervisor: hv,
      address: o.address === null ? undefined : (o.address ?? `192.0.2.${this.hosts.size + 2}`),
      expect: (mac) => {
        host.expects.push(mac);
        return o.expect ? o.expect(mac) : { ok: true };
      },
      ...(o.dhcp
        ? {
            reservations: (list: FakeHost['reservations']) => {
              host.reservations = list;
            },
          }
        : {}),
    });
    this.hosts.set(name, host);
    await host.agent.start();
    await waitFor(() => host.agent.isRegistered, 5000, `host ${name} registered`);
    return host;
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
