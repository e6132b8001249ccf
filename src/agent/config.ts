// The `coordinator:` section of a daemon config: which coordinator(s) this host joins and what it offers.
//
//   coordinator:
//     url: https://192.0.2.10:7100         # or a list / comma-separated: every coordinator, for failover
//     token_file: /etc/homewire/host.token # this host's own token (`homewire host add NAME` on the coordinator)
//     ca_file: /etc/homewire/ca.crt        # optional: the CA of the coordinator's TLS certificate
//     site: dc-1                           # default: the daemon's name
//     cpus: 8                              # offered to VMs (default: this machine's CPUs)
//     memory_mib: 16384                    # default: this machine's memory less 1 GiB
//     labels: { ssd: "yes" }
//     bridge: br-hw                        # default: tap.bridge
//     migration_address: 192.0.2.3         # where other hosts send migrations (default: host_address, bridge address, listen)
//     migration_ports: 49152-49215         # TCP ports the coordinator picks a migration's port from
//     allow_local_images: false            # true: images may be paths on this host
//     qemu_user: homewire-qemu             # optional: QEMU drops to this user (or UID:GID) after setup
//     metrics: { listen: 127.0.0.1:9587 }  # optional, `homewire agent` only (in the daemon: its metrics)
//     cache_dir: /var/cache/homewire/images
//     state_dir: /var/lib/homewire/vms
//     hypervisor: qemu                     # or none: register, run no VMs
//     qemu_binary: /usr/bin/qemu-system-x86_64   # default: qemu-system-x86_64 on PATH
//     stop_guests_on_exit: false           # default: guests keep running when the daemon stops (re-adopted)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Checker } from '../checker.ts';
import type { Endpoint } from '../mesh/peer.ts';
import { parseHostToken } from '../coordinator/credentials.ts';
import { DEFAULT_MIGRATION_PORTS, refuseMigrationAddress } from '../coordinator/migration.ts';

export interface AgentConfig {
  file: string;
  urls: string[];
  token: string;
  /** PEM CA bundle for https:// coordinators (and https image servers), beside the system's. */
  ca?: string;
  site?: string;
  cpus: number;
  memoryMib: number;
  labels: Record<string, string>;
  bridge?: string;
  migrationAddress?: string;
  migrationPorts: [number, number];
  allowLocalImages: boolean;
  /** QEMU's -runas: numeric "UID:GID" (resolved from a user name at load), or undefined: QEMU stays root. */
  qemuUser?: { uid: number; gid: number; text: string };
  cacheDir: string;
  stateDir: string;
  /** The standalone agent's own Prometheus endpoint. */
  metrics?: { listen: Endpoint };
  hypervisor: 'qemu' | 'none';
  qemuBinary?: string;
  /** Stop this host's guests when the agent (the daemon) stops; default false: they keep running. */
  stopGuestsOnExit: boolean;
}

const KEYS = [
  'url',
  'token_file',
  'ca_file',
  'migration_ports',
  'allow_local_images',
  'qemu_user',
  'metrics',
  'site',
  'cpus',
  'memory_mib',
  'labels',
  'bridge',
  'migration_address',
  'cache_dir',
  'state_dir',
  'hypervisor',
  'qemu_binary',
  'stop_guests_on_exit',
];
const LABEL_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

/**
 * Validates a raw `coordinator:` section (parsed YAML); keyPrefix names it in errors; hostName (the daemon's
 * name) is checked against the name the token is bound to.
 */
export function parseAgentConfig(
  raw: unknown,
  file: string,
  keyPrefix = 'coordinator',
  hostName?: string,
): AgentConfig {
  const c: Checker = new Checker(file);
  const k = (name: string) => (keyPrefix ? `${keyPrefix}.${name}` : name);
  const o = c.object(raw, keyPrefix);
  c.onlyKeys(o, KEYS, keyPrefix);
  const rel = (p: string) => path.resolve(path.dirname(file), p);

  const urlList =
    typeof o.url === 'string'
      ? o.url
          .split(',')
          .map((s: string) => s.trim())
          .filter(Boolean)
      : o.url;
  if (!Array.isArray(urlList) || urlList.length === 0)
    c.fail(k('url'), 'missing: give the coordinator URL, e.g. http://192.0.2.10:7100 (several for failover: a list)');
  const urls = (urlList as unknown[]).map((u, i) => {
    const text = c.string(u, `${k('url')}${Array.isArray(o.url) ? `[${i}]` : ''}`);
    let parsed: URL;
    try {
      parsed = new URL(text);
    } catch {
      c.fail(k('url'), `"${text}" is not a URL like http://192.0.2.10:7100`);
    }
    if (parsed!.protocol !== 'http:' && parsed!.protocol !== 'https:')
      c.fail(k('url'), `"${text}" must be http:// or https://`);
    return text.replace(/\/+$/, '');
  });

  const tokenFile = rel(c.string(o.token_file, k('token_file')));
  let token = '';
  try {
    token = fs.readFileSync(tokenFile, 'utf8').trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    c.fail(
      k('token_file'),
      code === 'ENOENT'
        ? `${tokenFile} does not exist: run \`homewire host add ${hostName ?? 'NAME'}\` on the coordinator and put the printed token there (mode 600)`
        : `cannot read ${tokenFile} (${code})`,
    );
  }
  const bound = parseHostToken(token);
  if (!bound)
    c.fail(
      k('token_file'),
      `${tokenFile} does not hold a host token (NAME.SECRET): hosts no longer share one token. Run \`homewire host add ${hostName ?? 'NAME'}\` on the coordinator and put the printed token in this file`,
    );
  if (hostName !== undefined && bound!.name !== hostName)
    c.fail(
      k('token_file'),
      `${tokenFile} holds the token of host ${bound!.name}, but this daemon is ${hostName}: each host needs its own (\`homewire host add ${hostName}\`)`,
    );
  let ca: string | undefined;
  if (o.ca_file !== undefined) {
    const caFile = rel(c.string(o.ca_file, k('ca_file')));
    try {
      ca = fs.readFileSync(caFile, 'utf8');
    } catch (err) {
      c.fail(k('ca_file'), `cannot read ${caFile} (${(err as NodeJS.ErrnoException).code})`);
    }
    if (!ca!.includes('-----BEGIN CERTIFICATE-----'))
      c.fail(k('ca_file'), `${caFile} is not a PEM certificate (-----BEGIN CERTIFICATE-----)`);
  }

  const site = o.site === undefined ? undefined : c.string(o.site, k('site'));
  const cpus = o.cpus === undefined ? os.cpus().length : c.integer(o.cpus, k('cpus'), 0, 4096);
  const totalMib = Math.floor(os.totalmem() / 1048576);
  const memoryMib =
    o.memory_mib === undefined
      ? Math.max(0, totalMib - 1024)
      : c.integer(o.memory_mib, k('memory_mib'), 0, 64 * 1024 * 1024);

  const labels: Record<string, string> = {};
  if (o.labels !== undefined && o.labels !== null) {
    const l = c.object(o.labels, k('labels'));
    for (const [name, v] of Object.entries(l)) {
      if (!LABEL_RE.test(name))
        c.fail(`${k('labels')}.${name}`, 'label names are 1-63 letters, digits, ".", "_", "/" or "-"');
      if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean')
        c.fail(`${k('labels')}.${name}`, 'must be a string (quote yes/no/numbers)');
      labels[name] = String(v);
    }
  }
  let bridge: string | undefined;
  if (o.bridge !== undefined) {
    bridge = c.string(o.bridge, k('bridge'));
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$/.test(bridge))
      c.fail(k('bridge'), `"${bridge}" is not a valid interface name`);
  }
  let migrationAddress: string | undefined;
  if (o.migration_address !== undefined) {
    migrationAddress = c.string(o.migration_address, k('migration_address'));
    const why = refuseMigrationAddress(migrationAddress);
    if (why) c.fail(k('migration_address'), why);
  }
  let migrationPorts = DEFAULT_MIGRATION_PORTS;
  if (o.migration_ports !== undefined) {
    const text = String(o.migration_ports);
    const m = /^(\d{1,5})\s*-\s*(\d{1,5})$/.exec(text);
    const lo = Number(m?.[1]);
    const hi = Number(m?.[2]);
    if (!m || lo < 1024 || hi > 65535 || lo > hi)
      c.fail(k('migration_ports'), `"${text}" is not a port range FIRST-LAST within 1024-65535, like 49152-49215`);
    migrationPorts = [lo, hi];
  }
  let allowLocalImages = false;
  if (o.allow_local_images !== undefined) allowLocalImages = c.boolean(o.allow_local_images, k('allow_local_images'));
  let metrics: AgentConfig['metrics'];
  if (o.metrics !== undefined) {
    const m = c.object(o.metrics, k('metrics'));
    c.onlyKeys(m, ['listen'], k('metrics'));
    metrics = { listen: c.endpoint(m.listen, `${k('metrics')}.listen`, false) };
  }
  let qemuUser: AgentConfig['qemuUser'];
  if (o.qemu_user !== undefined) qemuUser = resolveUser(c, String(o.qemu_user), k('qemu_user'));
  const cacheDir = rel(
    o.cache_dir === undefined ? '/var/cache/homewire/images' : c.string(o.cache_dir, k('cache_dir')),
  );
  const stateDir = rel(o.state_dir === undefined ? '/var/lib/homewire/vms' : c.string(o.state_dir, k('state_dir')));
  // Both end up in QEMU option lists (-qmp unix:PATH,server=on; -drive file=PATH,...): no , = or spaces.
  for (const [key, dir] of [
    ['cache_dir', cacheDir],
    ['state_dir', stateDir],
  ])
    if (/[,=\s]/.test(dir)) c.fail(k(key), `${dir} must not contain commas, "=" or spaces (QEMU option syntax)`);
  const hypervisor = o.hypervisor === undefined ? 'qemu' : c.string(o.hypervisor, k('hypervisor'));
  if (hypervisor !== 'qemu' && hypervisor !== 'none') c.fail(k('hypervisor'), `"${hypervisor}" is not qemu or none`);
  const qemuBinary = o.qemu_binary === undefined ? undefined : rel(c.string(o.qemu_binary, k('qemu_binary')));
  let stopGuestsOnExit = false;
  if (o.stop_guests_on_exit !== undefined) {
    if (typeof o.stop_guests_on_exit !== 'boolean') c.fail(k('stop_guests_on_exit'), 'must be true or false');
    stopGuestsOnExit = o.stop_guests_on_exit as boolean;
  }
  return {
    file,
    urls,
    token,
    ...(ca ? { ca } : {}),
    site,
    cpus,
    memoryMib,
    labels,
    bridge,
    migrationAddress,
    migrationPorts,
    allowLocalImages,
    qemuUser,
    cacheDir,
    stateDir,
    ...(metrics ? { metrics } : {}),
    hypervisor: hypervisor as 'qemu' | 'none',
    ...(qemuBinary ? { qemuBinary } : {}),
    stopGuestsOnExit,
  };
}

/** A user name (looked up with id(1)) or UID:GID; never root, which would drop nothing. */
function resolveUser(c: Checker, text: string, key: string): { uid: number; gid: number; text: string } {
  let uid: number;
  let gid: number;
  const m = /^(\d{1,10}):(\d{1,10})$/.exec(text);
  if (m) {
    uid = Number(m[1]);
    gid = Number(m[2]);
  } else {
    if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(text)) c.fail(key, `"${text}" is not a user name or UID:GID`);
    const id = (flag: string) => spawnSync('id', [flag, text], { encoding: 'utf8' });
    const u = id('-u');
    const g = id('-g');
    if (u.status !== 0 || g.status !== 0)
      c.fail(
        key,
        `no user "${text}" on this host: create it (useradd --system --no-create-home ${text}) or give UID:GID`,
      );
    uid = Number(u.stdout.trim());
    gid = Number(g.stdout.trim());
  }
  if (uid === 0 || gid === 0) c.fail(key, `${text} is root: give an unprivileged user`);
  return { uid, gid, text: `${uid}:${gid}` };
}
