// A real-network lab for homewire: Linux network namespaces, veth pairs and bridges, one `homewire up` per
// site. Used by the demo (deploy/demo.sh), the namespace tests (test/netns-*.test.ts) and the benchmark.
//
//   underlay  <prefix>ul       bridge br-ul (192.0.2.254, 2001:db8::fe): "the internet" between the sites
//   site      <prefix>home     eth0 192.0.2.1 ── br-ul;  bridge br-hw: TAP hw0 (the daemon) + lan0 ── <prefix>lan
//   site      <prefix>host-a   eth0 192.0.2.2 ── br-ul;  bridge br-hw: TAP hw0 (the daemon) + vm0  ── <prefix>guest-a
//   site      <prefix>host-b   eth0 192.0.2.3 ── br-ul;  bridge br-hw: TAP hw0 (the daemon) + vm0  ── <prefix>guest-b
//   LAN/guests on 198.51.100.0/24: lan .1, guests .10, .11, ... (DHCP: server .2, pool .100-.199)
//
// Only documentation ranges are used (TEST-NET-1 underlay, TEST-NET-2 home LAN, 2001:db8::/32), so a lab never
// collides with a real network. The guest/LAN interfaces get the TAP's MTU: an L2 overlay cannot send ICMP
// "fragmentation needed", so hosts must never emit frames larger than the TAP takes.
//
// Every namespace name starts with the lab's prefix; destroy() deletes them all by prefix (not by a record of
// what was made), so it is safe after a half-finished build, idempotent, and runs on exit and on signals.
//
// Use: const lab = await Lab.create({ prefix: 'hwdemo-' });   // built, daemons up, every session up
//      await lab.ping('guest-a', 'lan', { count: 5, intervalS: 0.2 })   → { ok, lossPct, rtt: { avg, ... } }
//      await lab.iperf3('guest-a', 'lan', { seconds: 3 })               → { mbps, retransmits }
//      lab.exec('home', ['ip', 'link']), lab.spawn(...), lab.capture(...), lab.stopDaemon('home'),
//      lab.startDaemon('home'), lab.waitPeersUp(), lab.logLines('home'), await lab.destroy()
// Short names ('ul', 'home', 'host-a', 'lan', 'guest-a') stand for the namespaces <prefix><name>.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_PORT, defaultTapMtu } from '../src/constants.ts';
import { signalChild, stopChild } from '../src/proc.ts';
import { encodeKey, generatePrivateKey, publicKeyOf } from '../src/mesh/keys.ts';
import {
  deleteNamespaces,
  deleteNamespacesSync,
  ip,
  ipn,
  PREFIX_RE,
  releaseOnExit,
  running,
  type Teardown,
  tearDownOnExit,
} from './netns.ts';
import { type Packet, readPcap } from './pcap.ts';
import {
  type IperfResult,
  parseIperf3,
  parsePing,
  type PingResult,
  run,
  runOk,
  type RunOptions,
  type RunResult,
  sleep,
  sleepSync,
} from './run.ts';
import { formatEndpoint } from '../src/addr.ts';
import { controlRequest } from '../src/control.ts';
import type { StatusReport } from '../src/status.ts';

export { deleteNamespaces, hasProgram } from './netns.ts';

export const PROJECT_ROOT = fileURLToPath(new URL('..', import.meta.url));
export const HOMEWIRE_BIN = path.join(PROJECT_ROOT, 'bin', 'homewire.mjs');

/** Documentation address plan (RFC 5737, RFC 3849). */
export const PLAN = {
  underlay4: (i: number) => `192.0.2.${i}`, // TEST-NET-1; site i (1-based)
  underlay6: (i: number) => `2001:db8::${i.toString(16)}`,
  underlayLen4: 24,
  underlayLen6: 64,
  internet4: '192.0.2.254', // the underlay namespace's own address (fuzzers, observers)
  internet6: '2001:db8::fe',
  overlayLen: 24, // TEST-NET-2: the home LAN that the overlay extends
  lan: '198.51.100.1',
  guest: (k: number) => `198.51.100.${10 + k}`, // k-th VM-host site (0-based)
  dhcpServer: '198.51.100.2',
  dhcpPool: ['198.51.100.100', '198.51.100.199'] as const,
};

export const TAP_NAME = 'hw0';
export const SITE_BRIDGE = 'br-hw';
export const UNDERLAY_BRIDGE = 'br-ul';

export interface LabOptions {
  /** Namespace prefix, "hw" + [a-z0-9]* + "-" (tests: hwt<4 hex>-, demo: hwdemo-, bench: hwb-). */
  prefix: string;
  /** Site names; the home site (default: the first) gets the LAN host, every other a guest. */
  sites?: string[];
  home?: string;
  /** Underlay the daemons use. With 6, sites also keep their IPv4 addresses. */
  family?: 4 | 6;
  /** Add IPv6 underlay addresses even when the daemons use IPv4. */
  ipv6?: boolean;
  port?: number;
  /** Which sites a site lists as peers (default: every other site, all with endpoints). */
  peersOf?: (site: string, sites: string[]) => string[];
  /** TAP MTU written into the configs (default: the daemon's own default for the family, not written). */
  tapMtu?: number;
  /** Static overlay addresses on the guests (default true; false when DHCP hands them out). The LAN host always has one. */
  staticAddresses?: boolean;
  /** Extra YAML appended to a site's config (e.g. a dhcp: section). */
  siteConfig?: (site: string) => string;
  logLevel?: string;
  /** Start the daemons and wait for every mutual pair to be up (default true). */
  start?: boolean;
  upTimeoutMs?: number;
  /** Keep the temp dir (configs, keys, logs) after destroy(). */
  keepDir?: boolean;
  /** Delete namespaces left by an earlier run with the same prefix before building (default true). */
  cleanStale?: boolean;
  /** Another underlay than the flat one (e.g. sites behind NATs: lab/nat.ts). */
  network?: LabNetwork;
}

/** An underlay for the lab: it builds each site's eth0 and everything between the sites. */
export interface LabNetwork {
  /** The address a site's daemon has (behind a NAT: its private one). */
  address(site: { name: string; index: number; role: 'home' | 'host' }): string;
  /** Builds the underlay once the site namespaces exist (with lo up); each site's eth0 is its job. */
  build(lab: Lab): Promise<void>;
  /** The lines after name and public_key for `peer` in `site`'s peers (default: its endpoint). */
  peerLines?(lab: Lab, site: Site, peer: Site): string[];
  /** The listen value in a site's config (default: its address and port). */
  listen?(site: Site): string;
}

export interface Host {
  /** Short name: 'lan', 'guest-a', ... */
  name: string;
  ns: string;
  /** Static overlay address (also set when staticAddresses is false, as the one the plan reserves). */
  ip: string;
  site: string;
}

export interface Site {
  name: string;
  ns: string;
  index: number; // 1-based
  role: 'home' | 'host';
  underlay4: string;
  underlay6: string | null;
  /** Address the daemon listens on and its peers send to, without port. */
  address: string;
  port: number;
  endpoint: string; // "192.0.2.1:51820" or "[2001:db8::1]:51820"
  host: Host;
  peers: string[];
  publicKey: string;
  configFile: string;
  keyFile: string;
  logFile: string;
  daemon: ChildProcess | null;
  /** Offset in logFile where the current daemon's output starts. */
  logOffset: number;
}

export interface LogLine {
  level: number;
  time: number;
  msg: string;
  [k: string]: unknown;
}

const SITE_RE = /^[a-z][a-z0-9-]{0,11}$/; // 'ul-' + name must fit 15 characters

export class Lab implements Teardown {
  readonly sites: Site[] = [];
  readonly hosts: Host[] = [];
  readonly family: 4 | 6;
  readonly tapMtu: number;
  readonly dir: string;
  readonly underlayNs: string;
  /** Processes started with spawn() (besides the daemons), killed by destroy(). */
  private readonly children = new Set<ChildProcess>();
  private destroying: Promise<void> | null = null;

  private constructor(readonly opts: LabOptions) {
    this.family = opts.family ?? 4;
    this.tapMtu = opts.tapMtu ?? defaultTapMtu(this.family);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), opts.prefix));
    fs.chmodSync(this.dir, 0o755); // configs readable by an unprivileged daemon in the permission test
    this.underlayNs = `${opts.prefix}ul`;
  }

  get prefix(): string {
    return this.opts.prefix;
  }

  /** Builds the namespaces, writes keys and configs, starts the daemons and waits for the mesh. */
  static async create(opts: LabOptions): Promise<Lab> {
    if (!PREFIX_RE.test(opts.prefix)) {
      throw new Error(`lab prefix "${opts.prefix}" must match ${PREFIX_RE} (namespaces are deleted by prefix)`);
    }
    if (process.getuid?.() !== 0) throw new Error('the lab needs root: it creates network namespaces');
    if (opts.cleanStale !== false) await deleteNamespaces(opts.prefix);
    const lab = new Lab(opts);
    tearDownOnExit(lab);
    try {
      lab.plan();
      await lab.build();
      lab.writeConfigs();
      if (opts.start !== false) {
        for (const s of lab.sites) lab.startDaemon(s.name);
        await lab.waitPeersUp(opts.upTimeoutMs);
      }
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  // ---- plan and build ----------------------------------------------------------------------------

  private plan(): void {
    const names = this.opts.sites ?? ['home', 'host-a', 'host-b'];
    const home = this.opts.home ?? names[0];
    if (!names.includes(home)) throw new Error(`home site "${home}" is not in sites ${names.join(', ')}`);
    if (new Set(names).size !== names.length) throw new Error(`duplicate site names: ${names.join(', ')}`);
    const port = this.opts.port ?? DEFAULT_PORT;
    let guests = 0;
    names.forEach((name, i) => {
      if (!SITE_RE.test(name) || name === 'ul' || name === 'lan' || name.startsWith('guest-')) {
        throw new Error(`site name "${name}" must match ${SITE_RE} and not be ul, lan or guest-*`);
      }
      const index = i + 1;
      const role = name === home ? 'home' : 'host';
      const hostName = role === 'home' ? 'lan' : `guest-${name.replace(/^host-/, '')}`;
      const host: Host = {
        name: hostName,
        ns: this.ns(hostName),
        ip: role === 'home' ? PLAN.lan : PLAN.guest(guests++),
        site: name,
      };
      const underlay6 = this.family === 6 || this.opts.ipv6 ? PLAN.underlay6(index) : null;
      const address =
        this.opts.network?.address({ name, index, role }) ?? (this.family === 6 ? underlay6! : PLAN.underlay4(index));
      this.sites.push({
        name,
        ns: this.ns(name),
        index,
        role,
        underlay4: this.opts.network ? address : PLAN.underlay4(index),
        underlay6,
        address,
        port,
        endpoint: formatEndpoint(address, port),
        host,
        peers: [],
        publicKey: '',
        configFile: path.join(this.dir, `${name}.yaml`),
        keyFile: path.join(this.dir, `${name}.key`),
        logFile: path.join(this.dir, `${name}.log`),
        daemon: null,
        logOffset: 0,
      });
      this.hosts.push(host);
    });
    for (const s of this.sites) {
      s.peers = this.opts.peersOf?.(s.name, names) ?? names.filter((n) => n !== s.name);
      for (const p of s.peers)
        if (!names.includes(p) || p === s.name) throw new Error(`site ${s.name}: bad peer "${p}"`);
    }
    if (this.hosts.some((h) => h.name === 'guest-')) throw new Error('a VM-host site needs a name after "host-"');
  }

  private async build(): Promise<void> {
    const network = this.opts.network;
    if (network) {
      for (const s of this.sites) {
        await ip('netns', 'add', s.ns);
        await ipn(s.ns, 'link', 'set', 'lo', 'up');
      }
      await network.build(this);
      for (const s of this.sites) await this.buildSegment(s);
      return;
    }
    const ul = this.underlayNs;
    await ip('netns', 'add', ul);
    await ipn(ul, 'link', 'set', 'lo', 'up');
    await ipn(ul, 'link', 'add', UNDERLAY_BRIDGE, 'type', 'bridge');
    await ipn(ul, 'link', 'set', UNDERLAY_BRIDGE, 'up');
    await ipn(ul, 'addr', 'add', `${PLAN.internet4}/${PLAN.underlayLen4}`, 'dev', UNDERLAY_BRIDGE);
    if (this.family === 6 || this.opts.ipv6) {
      await ipn(ul, 'addr', 'add', `${PLAN.internet6}/${PLAN.underlayLen6}`, 'dev', UNDERLAY_BRIDGE, 'nodad');
    }
    for (const s of this.sites) {
      await ip('netns', 'add', s.ns);
      await ipn(s.ns, 'link', 'set', 'lo', 'up');
      // Underlay: eth0 in the site, ul-<site> on the underlay bridge.
      const ulPort = `ul-${s.name}`;
      await ipn(ul, 'link', 'add', ulPort, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', s.ns);
      await ipn(ul, 'link', 'set', ulPort, 'master', UNDERLAY_BRIDGE, 'up');
      await ipn(s.ns, 'addr', 'add', `${s.underlay4}/${PLAN.underlayLen4}`, 'dev', 'eth0');
      if (s.underlay6) await ipn(s.ns, 'addr', 'add', `${s.underlay6}/${PLAN.underlayLen6}`, 'dev', 'eth0', 'nodad');
      await ipn(s.ns, 'link', 'set', 'eth0', 'up');
      await this.buildSegment(s);
    }
  }

  /** The site's L2 segment: br-hw, which the daemon's TAP joins (tap.bridge), and its LAN host or guest. */
  private async buildSegment(s: Site): Promise<void> {
    const mtu = String(this.tapMtu);
    await ipn(s.ns, 'link', 'add', SITE_BRIDGE, 'mtu', mtu, 'type', 'bridge');
    await ipn(s.ns, 'link', 'set', SITE_BRIDGE, 'up');
    // The LAN host (home) or the guest (VM hosts), on br-hw by a veth.
    const h = s.host;
    const port = s.role === 'home' ? 'lan0' : 'vm0';
    await ip('netns', 'add', h.ns);
    await ipn(h.ns, 'link', 'set', 'lo', 'up');
    await ipn(s.ns, 'link', 'add', port, 'mtu', mtu, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns);
    await ipn(s.ns, 'link', 'set', port, 'master', SITE_BRIDGE, 'up');
    await ipn(h.ns, 'link', 'set', 'eth0', 'mtu', mtu);
    // The LAN host's address is the home router's business (static here); guests may use DHCP.
    if (this.opts.staticAddresses !== false || s.role === 'home') {
      await ipn(h.ns, 'addr', 'add', `${h.ip}/${PLAN.overlayLen}`, 'dev', 'eth0');
    }
    await ipn(h.ns, 'link', 'set', 'eth0', 'up');
  }

  private writeConfigs(): void {
    const keys = new Map<string, Buffer>();
    for (const s of this.sites) {
      const sk = generatePrivateKey();
      keys.set(s.name, sk);
      s.publicKey = encodeKey(publicKeyOf(sk));
      fs.writeFileSync(s.keyFile, `${encodeKey(sk)}\n`, { mode: 0o600 });
    }
    for (const s of this.sites) fs.writeFileSync(s.configFile, this.configText(s), { mode: 0o644 });
  }

  /** The YAML config of a site (private key by file, unless inlineKey). */
  configText(s: Site, opts: { inlineKey?: boolean; listen?: string } = {}): string {
    const lines = [
      `# homewire lab site "${s.name}" (namespace ${s.ns})`,
      `name: ${s.name}`,
      opts.inlineKey
        ? `private_key: "${fs.readFileSync(s.keyFile, 'utf8').trim()}"`
        : `private_key_file: ${path.basename(s.keyFile)}`,
      `listen: "${opts.listen ?? this.opts.network?.listen?.(s) ?? s.endpoint}"`,
      `log_level: ${this.opts.logLevel ?? 'info'}`,
      `control: { socket: ${path.join(this.dir, `${s.name}.sock`)} }`, // labs run side by side: no shared /run path
      'tap:',
      `  name: ${TAP_NAME}`,
      ...(this.opts.tapMtu ? [`  mtu: ${this.opts.tapMtu}`] : []),
      `  bridge: ${SITE_BRIDGE}`,
    ];
    if (s.peers.length === 0) lines.push('peers: []');
    else lines.push('peers:');
    for (const name of s.peers) {
      const p = this.site(name);
      const custom = this.opts.network?.peerLines?.(this, s, p);
      if (custom)
        lines.push(`  - name: ${p.name}`, `    public_key: "${p.publicKey}"`, ...custom.map((l) => `    ${l}`));
      else lines.push(`  - name: ${p.name}`, `    public_key: "${p.publicKey}"`, `    endpoint: "${p.endpoint}"`);
    }
    const extra = this.opts.siteConfig?.(s.name);
    if (extra) lines.push(extra.trimEnd());
    if (!/^security:/m.test(extra ?? '')) lines.push(...this.securityLines(s));
    return `${lines.join('\n')}\n`;
  }

  /**
   * The lab's security: section (unless the site's extra config has its own): the home site's local side is
   * the home LAN; guests with static addresses need ARP inspection that learns first claims (strict needs a
   * DHCP lease or a reservation per guest); where home serves DHCP, hosts trust only home's DHCP replies.
   */
  private securityLines(s: Site): string[] {
    const homeServesDhcp = this.sites.some(
      (x) => x.role === 'home' && /^dhcp:/m.test(this.opts.siteConfig?.(x.name) ?? ''),
    );
    const lines = ['security:'];
    if (s.role === 'home') lines.push('  local_side: lan');
    if (this.opts.staticAddresses !== false) lines.push('  arp_inspection: learn');
    const home = this.sites.find((x) => x.role === 'home')!;
    if (s.role !== 'home' && homeServesDhcp && s.peers.includes(home.name))
      lines.push(`  dhcp_servers: [${home.name}]`);
    return lines.length > 1 ? lines : [];
  }

  // ---- lookups -------------------------------------------------------------------------------------

  /** Full namespace name of a short name ('home', 'lan', 'guest-a', 'ul'); full names pass through. */
  ns(name: string): string {
    return name.startsWith(this.prefix) ? name : this.prefix + name;
  }

  site(name: string): Site {
    const s = this.sites.find((x) => x.name === name);
    if (!s) throw new Error(`no site "${name}" in this lab (${this.sites.map((x) => x.name).join(', ')})`);
    return s;
  }

  host(name: string): Host {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host "${name}" in this lab (${this.hosts.map((x) => x.name).join(', ')})`);
    return h;
  }

  /** Peers of a site that also list the site back: the sessions that must come up. */
  mutualPeers(site: string): string[] {
    return this.site(site).peers.filter((p) => this.site(p).peers.includes(site));
  }

  // ---- running things in namespaces --------------------------------------------------------------

  exec(ns: string, argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run('ip', ['netns', 'exec', this.ns(ns), ...argv], opts);
  }

  /** `homewire status --json` of a site, run in its namespace through the CLI. */
  async status(site: string): Promise<StatusReport> {
    const r = await this.exec(site, [
      process.execPath,
      HOMEWIRE_BIN,
      'status',
      '--json',
      '--config',
      this.site(site).configFile,
    ]);
    if (r.code !== 0) throw new Error(`homewire status at ${site}: ${r.stderr}`);
    return JSON.parse(r.stdout) as StatusReport;
  }

  /** A long-running process in a namespace; destroy() kills it if it is still running. */
  spawn(ns: string, argv: string[], opts: { stdio?: 'ignore' | 'pipe'; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(ns), ...argv], {
      stdio: opts.stdio ?? 'ignore',
      env: opts.env ?? process.env,
      cwd: PROJECT_ROOT,
    });
    child.on('error', () => {});
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return child;
  }

  /** ping from a namespace to an address or host name. Never throws: look at .ok, .lossPct, .rtt. */
  async ping(
    from: string,
    to: string,
    o: {
      count?: number;
      intervalS?: number;
      size?: number;
      dontFragment?: boolean;
      pattern?: string;
      waitS?: number;
    } = {},
  ): Promise<PingResult> {
    const ipAddr = /^[\d.]+$|:/.test(to) ? to : this.host(to).ip;
    const count = o.count ?? 5;
    const args = [
      'ping',
      '-n',
      '-q',
      '-c',
      String(count),
      '-i',
      String(o.intervalS ?? 0.2),
      '-W',
      String(o.waitS ?? 1),
    ];
    if (o.size !== undefined) args.push('-s', String(o.size));
    if (o.dontFragment) args.push('-M', 'do');
    if (o.pattern) args.push('-p', o.pattern);
    args.push(ipAddr);
    const r = await this.exec(from, args, { timeoutMs: (count * (o.intervalS ?? 0.2) + (o.waitS ?? 1) + 10) * 1000 });
    return parsePing(r.stdout + r.stderr);
  }

  /** iperf3 TCP from one namespace to a host name or (ns, address); the server runs for this one test. */
  async iperf3(
    from: string,
    to: string | { ns: string; ip: string },
    o: { seconds?: number; parallel?: number; port?: number } = {},
  ): Promise<IperfResult> {
    const dst = typeof to === 'string' ? this.host(to) : to;
    const port = String(o.port ?? 5201);
    const server = this.spawn(dst.ns, ['iperf3', '-s', '-1', '-B', dst.ip, '-p', port]);
    try {
      const seconds = o.seconds ?? 3;
      const args = ['iperf3', '-c', dst.ip, '-p', port, '-t', String(seconds), '-J', '--connect-timeout', '1000'];
      if ((o.parallel ?? 1) > 1) args.push('-P', String(o.parallel));
      let last: RunResult | null = null;
      for (let attempt = 0; attempt < 30; attempt++) {
        last = await this.exec(from, args, { timeoutMs: (seconds + 20) * 1000 });
        // "unable to connect": the server is not listening yet; anything else is a real result or failure.
        // (iperf3 3.12 with -J exits 0 even then: the error is only in the JSON.)
        if (!/unable to connect/i.test(last.stdout + last.stderr)) break;
        await sleep(100);
      }
      return parseIperf3(last!.stdout || last!.stderr);
    } finally {
      signalChild(server, 'SIGKILL');
    }
  }

  /** Starts tcpdump writing a pcap of an interface; resolves once it is listening. stop() returns the packets. */
  async capture(
    ns: string,
    iface: string,
    file: string,
    filter: string[] = [],
  ): Promise<{ stop(): Promise<Packet[]> }> {
    const child = this.spawn(
      ns,
      ['tcpdump', '-i', iface, '-nn', '-U', '--immediate-mode', '-s', '0', '-Z', 'root', '-w', file, ...filter],
      { stdio: 'pipe' },
    );
    let err = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tcpdump on ${iface} in ${ns} did not start: ${err}`)), 5000);
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        err += d;
        if (/listening on/.test(err)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', () => {
        clearTimeout(timer);
        reject(new Error(`tcpdump on ${iface} in ${ns} exited: ${err.trim()}`));
      });
    });
    child.stdout!.resume();
    return {
      stop: async () => {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((r) => child.once('exit', r));
          child.kill('SIGINT');
          await Promise.race([exited, sleep(2000)]);
        }
        return fs.existsSync(file) ? readPcap(fs.readFileSync(file)) : [];
      },
    };
  }

  /** Whether an interface exists in a namespace. */
  async hasLink(ns: string, ifname: string): Promise<boolean> {
    return (await run('ip', ['-n', this.ns(ns), 'link', 'show', 'dev', ifname])).code === 0;
  }

  /** /proc/net/snmp (and snmp6) of a namespace as { 'Udp.InDatagrams': n, 'Udp6InDatagrams': n, ... }. */
  async snmp(ns: string): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    const v4 = await this.exec(ns, ['cat', '/proc/net/snmp']);
    const lines = v4.stdout.trim().split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const [proto, ...names] = lines[i].split(/\s+/);
      const values = lines[i + 1].split(/\s+/).slice(1);
      names.forEach((n, j) => {
        out[`${proto.replace(':', '')}.${n}`] = Number(values[j]);
      });
    }
    const v6 = await this.exec(ns, ['cat', '/proc/net/snmp6']);
    for (const line of v6.stdout.trim().split('\n')) {
      const [k, v] = line.split(/\s+/);
      if (k) out[k] = Number(v);
    }
    return out;
  }

  /** Kernel counters of an interface (`ip -s -j link`). */
  async linkStats(
    ns: string,
    ifname: string,
  ): Promise<{ rxPackets: number; txPackets: number; rxBytes: number; txBytes: number }> {
    const r = await runOk('ip', ['-n', this.ns(ns), '-s', '-j', 'link', 'show', 'dev', ifname]);
    const s = JSON.parse(r.stdout)[0].stats64;
    return { rxPackets: s.rx.packets, txPackets: s.tx.packets, rxBytes: s.rx.bytes, txBytes: s.tx.bytes };
  }

  // ---- daemons -------------------------------------------------------------------------------------

  /** Starts `homewire up` in the site's namespace (or another entry script taking --config: benchmarks run
   *  variants); output (JSON logs) is appended to site.logFile. */
  startDaemon(name: string, extraArgs: string[] = [], entry: string[] = [HOMEWIRE_BIN, 'up']): ChildProcess {
    const s = this.site(name);
    if (s.daemon && s.daemon.exitCode === null && s.daemon.signalCode === null) {
      throw new Error(`the daemon of ${name} is already running (pid ${s.daemon.pid})`);
    }
    s.logOffset = fs.existsSync(s.logFile) ? fs.statSync(s.logFile).size : 0;
    const fd = fs.openSync(s.logFile, 'a');
    try {
      s.daemon = spawn(
        'ip',
        ['netns', 'exec', s.ns, process.execPath, ...entry, '--config', s.configFile, ...extraArgs],
        {
          stdio: ['ignore', fd, fd],
          cwd: this.dir,
        },
      );
    } finally {
      fs.closeSync(fd);
    }
    s.daemon.on('error', () => {});
    return s.daemon;
  }

  /** Signals the site's daemon and waits for it to exit (SIGKILL after timeoutMs). */
  async stopDaemon(
    name: string,
    o: { signal?: NodeJS.Signals; timeoutMs?: number } = {},
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number; killed: boolean }> {
    const s = this.site(name);
    const d = s.daemon;
    if (!d || d.exitCode !== null || d.signalCode !== null) {
      return { code: d?.exitCode ?? null, signal: d?.signalCode ?? null, ms: 0, killed: false };
    }
    const { ms, killed } = await stopChild(d, { signal: o.signal, graceMs: o.timeoutMs ?? 2000 });
    return { code: d.exitCode, signal: d.signalCode, ms, killed };
  }

  /** The current daemon's JSON log lines (non-JSON lines come back as { msg: line, level: 0 }). */
  logLines(name: string): LogLine[] {
    const s = this.site(name);
    if (!fs.existsSync(s.logFile)) return [];
    const text = fs.readFileSync(s.logFile, 'utf8').slice(s.logOffset);
    return text
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        try {
          return JSON.parse(line) as LogLine;
        } catch {
          return { level: 0, time: 0, msg: line };
        }
      });
  }

  logTail(name: string, lines = 15): string {
    const s = this.site(name);
    if (!fs.existsSync(s.logFile)) return '(no log)';
    return fs.readFileSync(s.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** Peers the current daemon of a site has logged 'peer up' for, with the log time. */
  peersUp(name: string): Map<string, number> {
    const up = new Map<string, number>();
    for (const l of this.logLines(name)) if (l.msg === 'peer up' && typeof l.peer === 'string') up.set(l.peer, l.time);
    return up;
  }

  /** Waits until every running daemon has logged 'peer up' for each mutual peer; throws with log tails. */
  async waitPeersUp(timeoutMs = 20_000, sites = this.sites.map((s) => s.name)): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let missing: string[] = [];
      for (const name of sites) {
        const d = this.site(name).daemon;
        if (!d) continue;
        if (d.exitCode !== null || d.signalCode !== null) {
          throw new Error(
            `homewire at ${name} exited (${d.signalCode ?? `code ${d.exitCode}`}) before its peers came up:\n${this.logTail(name)}`,
          );
        }
        const up = this.peersUp(name);
        missing = missing.concat(
          this.mutualPeers(name)
            .filter((p) => !up.has(p))
            .map((p) => `${name}→${p}`),
        );
      }
      if (missing.length === 0) return;
      if (Date.now() > deadline) {
        const tails = sites.map((n) => `--- ${n} ---\n${this.logTail(n, 8)}`).join('\n');
        throw new Error(`peers not up after ${timeoutMs} ms: ${missing.join(', ')}\n${tails}`);
      }
      await sleep(50);
    }
  }

  /**
   * Authorizes `mac` to move to site `to` on every running site (what the coordinator sends before a
   * migration: with security.mac_moves: authorized, the default, receivers refuse an unauthorized move).
   */
  async authorizeMove(mac: string, to: string, seconds = 120): Promise<void> {
    for (const s of this.sites) {
      if (!s.daemon || s.daemon.exitCode !== null) continue;
      const r = await controlRequest(path.join(this.dir, `${s.name}.sock`), 'POST', '/v1/authorize-move', {
        mac,
        to,
        seconds,
      });
      if (!r.body.ok) throw new Error(`authorize-move at ${s.name}: ${r.body.error}`);
    }
  }

  // ---- teardown ------------------------------------------------------------------------------------

  /** Kills daemons and helpers (SIGTERM, then SIGKILL after 2 s) and deletes every namespace with the prefix. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      await Promise.all(this.processes().map((p) => stopChild(p, { graceMs: 2000 })));
      await deleteNamespaces(this.prefix);
      if (!this.opts.keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
      releaseOnExit(this);
    })();
    return this.destroying;
  }

  /** destroy() for process exit, when promises no longer run. */
  destroySync(): void {
    const procs = this.processes();
    for (const p of procs) signalChild(p, 'SIGTERM');
    const deadline = Date.now() + 2000;
    while (procs.some((p) => p.pid && running(p.pid)) && Date.now() < deadline) sleepSync(20);
    for (const p of procs) if (p.pid && running(p.pid)) signalChild(p, 'SIGKILL');
    deleteNamespacesSync(this.prefix);
    if (!this.opts.keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
    releaseOnExit(this);
  }

  private processes(): ChildProcess[] {
    const ps = [...this.children];
    for (const s of this.sites) if (s.daemon) ps.push(s.daemon);
    return ps.filter((p) => p.exitCode === null && p.signalCode === null);
  }
}
