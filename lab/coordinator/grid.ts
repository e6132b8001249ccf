// The coordinator on the namespace lab (lab/topology.ts), for the QEMU test and the demo (`--vms`):
//   underlay namespace   the coordinator (192.0.2.254:7100, SQLite) and an HTTP image server (:8080) serving
//                        the lab guest's kernel and initramfs (lab/guest-image.ts); image_server points at it,
//                        so it is the one allowed image source
//   every VM-host site   a host agent beside the site's daemon (`homewire agent`: the daemon's config plus a
//                        coordinator: section), or inside it (agents: 'daemon': the coordinator: section in
//                        the daemon's own config), with its own token (`homewire host add SITE`), QEMU guests
//                        on the site's br-hw, running as LAB_QEMU_USER under -sandbox
// The lab must have been made with vmSiteConfig({ dhcp: true }) (lab/vm/guests.ts): control sockets in the
// lab dir, the DHCP server at home. Admin commands run the real CLI inside the underlay namespace.
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { GuestImage } from '../guest-image.ts';
import { type RunResult, sleep } from '../run.ts';
import { HOMEWIRE_BIN, type Lab, PLAN, PROJECT_ROOT } from '../topology.ts';
import type { HostView } from '../../src/coordinator/types.ts';
import { stopChild } from '../../src/proc.ts';

export const LAB_COORDINATOR = `http://${PLAN.internet4}:7100`;
export const LAB_IMAGES = `http://${PLAN.internet4}:8080`;
/** The `homewire` executable, as the tests and the demo run it inside namespaces. */
export const CLI = [process.execPath, HOMEWIRE_BIN];
/** The unprivileged UID:GID lab QEMUs drop to (coordinator.qemu_user; no account needed). */
export const LAB_QEMU_USER = '64123:64123';

const IMAGE_SERVER = `import http from 'node:http'; import fs from 'node:fs'; import path from 'node:path';
const [dir, host, port] = process.argv.slice(2);
http.createServer((req, res) => {
  const f = path.join(dir, path.basename(decodeURIComponent(req.url ?? '/')));
  if (!fs.existsSync(f)) { res.writeHead(404).end(); return; }
  res.writeHead(200, { 'content-length': fs.statSync(f).size }); fs.createReadStream(f).pipe(res);
}).listen(Number(port), host);
`;

export interface GridOptions {
  /** VM-host sites that get an agent (default: every site but home). */
  hosts?: string[];
  cpus?: number;
  memoryMib?: number;
  logLevel?: string;
  /** standalone (default): `homewire agent` beside the daemon; daemon: the agent runs inside `homewire up`. */
  agents?: 'standalone' | 'daemon';
  /** The home site's daemon joins the coordinator (hypervisor: none), restarted with a token (default true). */
  homeAgent?: boolean;
  /** Extra lines for a host's coordinator: section (indented by two spaces), e.g. qemu_binary. */
  agentExtra?: (site: string) => string[];
  /** QEMU's user (default LAB_QEMU_USER); null: QEMU stays root. */
  qemuUser?: string | null;
  /** Extra lines for the coordinator's config (e.g. `metrics: { listen: ... }`). */
  coordinatorConfig?: string[];
}

/** A `coordinator:` section for the home site's daemon config: its in-process agent registers without a
 *  hypervisor and hands the coordinator's DHCP reservations to the home DHCP server. Its token is its own
 *  (<lab dir>/<site>.token): make the lab with start: false, GridLab.start, grid.hostToken(site), then start
 *  the daemons (the agent reads the token at start). */
export function homeAgentSection(site = 'home'): string {
  return ['coordinator:', `  url: ${LAB_COORDINATOR}`, `  token_file: ${site}.token`, '  hypervisor: none'].join('\n');
}

export class GridLab {
  readonly procs: ChildProcess[] = [];
  readonly adminTokenFile: string;
  readonly hosts: string[];
  /** The standalone agents by site (agents: 'standalone'). */
  readonly agents = new Map<string, ChildProcess>();
  /** QEMU's user on the hosts (null: root). */
  qemuUser: string | null = null;

  private constructor(
    readonly lab: Lab,
    readonly image: GuestImage,
    readonly o: GridOptions,
  ) {
    this.adminTokenFile = path.join(lab.dir, 'admin.token');
    this.hosts = o.hosts ?? lab.sites.filter((s) => s.role === 'host').map((s) => s.name);
  }

  /** Starts the image server, the coordinator and the agents; resolves when every host is registered and up. */
  static async start(lab: Lab, image: GuestImage, o: GridOptions = {}): Promise<GridLab> {
    const g = new GridLab(lab, image, o);
    const dir = lab.dir;
    const served = path.join(dir, 'images');
    fs.mkdirSync(served, { recursive: true });
    fs.copyFileSync(image.kernel, path.join(served, 'vmlinux'));
    fs.copyFileSync(image.initrd, path.join(served, 'initrd.cpio.gz'));
    fs.writeFileSync(path.join(dir, 'image-server.mjs'), IMAGE_SERVER);
    g.spawn('ul', 'image-server', [
      process.execPath,
      path.join(dir, 'image-server.mjs'),
      served,
      PLAN.internet4,
      '8080',
    ]);
    fs.writeFileSync(g.adminTokenFile, `${crypto.randomBytes(24).toString('base64url')}\n`, { mode: 0o600 });
    fs.writeFileSync(
      path.join(dir, 'coordinator.yaml'),
      `${[
        `listen: ${PLAN.internet4}:7100`,
        'store: sqlite',
        'data_dir: coordinator-data',
        'admin_token_file: admin.token',
        `image_server: ${LAB_IMAGES}`,
        `log_level: ${o.logLevel ?? 'debug'}`,
        ...(o.coordinatorConfig ?? []),
      ].join('\n')}\n`,
    );
    g.startCoordinator();
    g.qemuUser = o.qemuUser === undefined ? LAB_QEMU_USER : o.qemuUser;
    // QEMU, once it has dropped to qemuUser, reaches its migration keys under the lab dir (state_dir is
    // root:<its group> 0710): the lab dir must be traversable, not readable.
    if (g.qemuUser) fs.chmodSync(dir, 0o711);
    for (const site of g.hosts) {
      await waitForCoordinator(g);
      await g.hostToken(site);
      g.writeAgentConfig(site);
    }
    if (o.agents === 'daemon') {
      // The agent inside the daemon: its config gains the coordinator: section; restart the daemons.
      for (const site of g.hosts) {
        await lab.stopDaemon(site);
        fs.copyFileSync(g.agentConfig(site), lab.site(site).configFile);
        lab.startDaemon(site);
      }
      await lab.waitPeersUp(90_000); // a busy machine starts Node slowly
    } else for (const site of g.hosts) g.startAgent(site);
    // The home site's daemon joins too (no hypervisor), as in a real grid: the coordinator tells every site's
    // MAC ownership about a VM's moves (security.mac_moves: authorized) and home's DHCP about reservations.
    const home = lab.sites.find((s) => s.role === 'home');
    const homeJoins =
      o.homeAgent !== false && home !== undefined && !/^coordinator:/m.test(fs.readFileSync(home.configFile, 'utf8'));
    if (home && homeJoins) {
      await waitForCoordinator(g);
      await g.hostToken(home.name);
      await lab.stopDaemon(home.name);
      fs.appendFileSync(home.configFile, `\n${homeAgentSection(home.name)}\n`);
      lab.startDaemon(home.name);
      await lab.waitPeersUp(90_000);
    }
    const expected = home && homeJoins ? [...g.hosts, home.name] : g.hosts;
    const deadline = Date.now() + 90_000; // a busy machine starts Node slowly
    for (;;) {
      const r = await g.cli('host', 'list', '--json');
      const up =
        r.code === 0
          ? (JSON.parse(r.stdout) as { hosts: HostView[] }).hosts.filter(
              (h) => h.state === 'up' && expected.includes(h.name),
            ).length
          : 0;
      if (up === expected.length) break;
      if (Date.now() > deadline)
        throw new Error(
          `hosts not registered after 90 s (host list: exit ${r.code} ${r.stdout.trim()} ${r.stderr.trim()})\n${g.logs()}`,
        );
      await sleep(100);
    }
    return g;
  }

  /** VM hosts take no connections from the coordinator's network (as behind a NAT): everything they do with it
   *  must be connections they open. (Hosts still accept each other's live migrations.) */
  async closeInbound(): Promise<void> {
    for (const site of this.hosts) {
      const r = await this.lab.exec(site, [
        'iptables',
        '-I',
        'INPUT',
        '-s',
        PLAN.internet4,
        '-p',
        'tcp',
        '--syn', // connection attempts only (conntrack would take the agents' open connections for new ones)
        '-j',
        'DROP',
      ]);
      if (r.code !== 0) throw new Error(`iptables in ${site}: ${r.stderr.trim()}`);
    }
  }

  /** `homewire host add SITE` as the admin would run it (the token alone on stdout), into <lab dir>/SITE.token. */
  async hostToken(site: string): Promise<string> {
    const token = (await this.ok('host', 'add', site)).trim();
    fs.writeFileSync(path.join(this.lab.dir, `${site}.token`), `${token}\n`, { mode: 0o600 });
    return token;
  }

  agentConfig(site: string): string {
    return path.join(this.lab.dir, `${site}-agent.yaml`);
  }

  /** The site's daemon config plus its coordinator: section (written again to change agentExtra). */
  writeAgentConfig(site: string, extra = this.o.agentExtra?.(site) ?? []): void {
    const s = this.lab.site(site);
    const daemonPart = fs.readFileSync(s.configFile, 'utf8').split('\ncoordinator:\n')[0].trimEnd();
    fs.writeFileSync(
      this.agentConfig(site),
      `${daemonPart}\n${[
        'coordinator:',
        `  url: ${LAB_COORDINATOR}`,
        `  token_file: ${site}.token`,
        ...(this.qemuUser ? [`  qemu_user: "${this.qemuUser}"`] : []),
        `  cpus: ${this.o.cpus ?? 2}`,
        `  memory_mib: ${this.o.memoryMib ?? 1024}`,
        `  migration_address: ${s.underlay4}`,
        `  cache_dir: cache-${site}`,
        `  state_dir: state-${site}`,
        ...extra.map((l) => `  ${l}`),
      ].join('\n')}\n`,
    );
    if (this.o.agents === 'daemon') fs.copyFileSync(this.agentConfig(site), s.configFile);
  }

  /** Starts the standalone agent of a site (agents: 'standalone'). */
  startAgent(site: string, extraArgs: string[] = []): ChildProcess {
    const p = this.spawn(site, `agent-${site}`, [...CLI, 'agent', '--config', this.agentConfig(site), ...extraArgs]);
    this.agents.set(site, p);
    return p;
  }

  /** A site's state directory (one directory per VM: runtime.json, qmp.sock, serial.log, disk.qcow2). */
  stateDir(site: string): string {
    return path.join(this.lab.dir, `state-${site}`);
  }

  /** The agent's log: agent-<site>.log (standalone) or the daemon's log (agents: 'daemon'). */
  agentLog(site: string): string {
    return this.o.agents === 'daemon' ? this.lab.site(site).logFile : this.logFile(`agent-${site}`);
  }

  /** JSON log lines of a site's agent with this msg (every run of the agent, oldest first). */
  agentEvents(site: string, msg: string): Record<string, unknown>[] {
    const f = this.agentLog(site);
    if (!fs.existsSync(f)) return [];
    return fs
      .readFileSync(f, 'utf8')
      .split('\n')
      .filter((l) => l.includes(msg))
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          return {};
        }
      })
      .filter((e) => e.msg === msg);
  }

  logFile(name: string): string {
    return path.join(this.lab.dir, `${name}.log`);
  }

  /** A guest's serial console log on the host that runs it. */
  serialLog(site: string, vm: string): string {
    return path.join(this.stateDir(site), vm, 'serial.log');
  }

  /** A long-running process in a namespace, output appended to <name>.log; the lab's destroy() ends it. */
  private spawn(ns: string, name: string, argv: string[]): ChildProcess {
    const p = this.lab.spawn(ns, ['sh', '-c', 'exec "$@" >> "$0" 2>&1', this.logFile(name), ...argv]);
    this.procs.push(p);
    return p;
  }

  private coordinatorProc: ChildProcess | null = null;

  private startCoordinator(): void {
    const config = path.join(this.lab.dir, 'coordinator.yaml');
    this.coordinatorProc = this.spawn('ul', 'coordinator', [...CLI, 'coordinator', '--config', config]);
  }

  /** Stops the coordinator (SIGTERM) and starts it again on the same store; resolves once it answers. */
  async restartCoordinator(): Promise<void> {
    if (this.coordinatorProc) await stopChild(this.coordinatorProc, { graceMs: 5000 });
    this.startCoordinator();
    await waitForCoordinator(this);
  }

  /** Serves a file from the image server (as /<name>); returns its URL and SHA-256. */
  serve(file: string, name = path.basename(file)): { url: string; sha256: string } {
    fs.copyFileSync(file, path.join(this.lab.dir, 'images', name));
    return {
      url: `${LAB_IMAGES}/${name}`,
      sha256: crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'),
    };
  }

  /** The CLI in the underlay namespace against the lab's coordinator, with the admin token. */
  cli(...argv: string[]): Promise<RunResult> {
    return this.lab.exec(
      'ul',
      [...CLI, ...argv, '--coordinator', LAB_COORDINATOR, '--token-file', this.adminTokenFile],
      { timeoutMs: 180_000, cwd: PROJECT_ROOT },
    );
  }

  /** cli() that throws with stderr and the logs unless it exits 0; returns stdout. */
  async ok(...argv: string[]): Promise<string> {
    const r = await this.cli(...argv);
    if (r.code !== 0)
      throw new Error(`homewire ${argv.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}\n${this.logs()}`);
    return r.stdout;
  }

  async json<T>(...argv: string[]): Promise<T> {
    return JSON.parse(await this.ok(...argv, '--json')) as T;
  }

  /** `image add` for the lab guest, served over HTTP, with its SHA-256 (and a base disk file, if given). */
  async addImage(name = 'tiny', o: { disk?: string } = {}): Promise<void> {
    const sum = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
    const disk = o.disk ? this.serve(o.disk, `${name}-base.img`) : null;
    await this.ok(
      'image',
      'add',
      name,
      '--kernel',
      `${LAB_IMAGES}/vmlinux`,
      '--initrd',
      `${LAB_IMAGES}/initrd.cpio.gz`,
      '--kernel-sha256',
      sum(this.image.kernel),
      '--initrd-sha256',
      sum(this.image.initrd),
      ...(disk ? ['--disk', disk.url, '--disk-sha256', disk.sha256] : []),
    );
  }

  logs(lines = 25): string {
    return ['coordinator', ...this.hosts.map((h) => `agent-${h}`)]
      .map((n) => {
        const f = n.startsWith('agent-') ? this.agentLog(n.slice('agent-'.length)) : this.logFile(n);
        const text = fs.existsSync(f)
          ? fs.readFileSync(f, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
          : '(no log)';
        return `--- ${n} ---\n${text}`;
      })
      .join('\n');
  }
}

/** Waits until the coordinator answers (it was just spawned). */
async function waitForCoordinator(g: GridLab): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const r = await g.cli('host', 'list', '--json');
    if (r.code === 0) return;
    if (Date.now() > deadline) throw new Error(`the coordinator does not answer: ${r.stderr.trim()}\n${g.logs()}`);
    await sleep(100);
  }
}
