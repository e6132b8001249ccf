// The `coordinator:` section of a daemon config: which coordinator(s) this host joins and what it offers.
//
//   coordinator:
//     url: http://192.0.2.10:7100          # or a list / comma-separated: every coordinator, for failover
//     token_file: /etc/homewire/host.token
//     site: dc-1                           # default: the daemon's name
//     cpus: 8                              # offered to VMs (default: this machine's CPUs)
//     memory_mib: 16384                    # default: this machine's memory less 1 GiB
//     labels: { ssd: "yes" }
//     bridge: br-hw                        # default: tap.bridge
//     migration_address: 192.0.2.3         # where other hosts send migrations (default: listen address)
//     cache_dir: /var/cache/homewire/images
//     state_dir: /var/lib/homewire/vms
//     hypervisor: qemu                     # or none: register, run no VMs
//     qemu_binary: /usr/bin/qemu-system-x86_64   # default: qemu-system-x86_64 on PATH
//     stop_guests_on_exit: false           # default: guests keep running when the daemon stops (re-adopted)
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Checker } from '../checker.ts';
import { TOKEN_MIN_CHARS } from '../coordinator/constants.ts';

export interface AgentConfig {
  file: string;
  urls: string[];
  token: string;
  site?: string;
  cpus: number;
  memoryMib: number;
  labels: Record<string, string>;
  bridge?: string;
  migrationAddress?: string;
  cacheDir: string;
  stateDir: string;
  hypervisor: 'qemu' | 'none';
  qemuBinary?: string;
  /** Stop this host's guests when the agent (the daemon) stops; default false: they keep running. */
  stopGuestsOnExit: boolean;
}

const KEYS = [
  'url',
  'token_file',
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

/** Validates a raw `coordinator:` section (parsed YAML); keyPrefix names it in errors. */
export function parseAgentConfig(raw: unknown, file: string, keyPrefix = 'coordinator'): AgentConfig {
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
        ? `${tokenFile} does not exist: copy the coordinator's host token there (mode 600)`
        : `cannot read ${tokenFile} (${code})`,
    );
  }
  if (token.length < TOKEN_MIN_CHARS || /\s/.test(token))
    c.fail(
      k('token_file'),
      `${tokenFile} must hold the coordinator's host token (one line, at least ${TOKEN_MIN_CHARS} characters)`,
    );

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
    if (net.isIP(migrationAddress) === 0) c.fail(k('migration_address'), `"${migrationAddress}" is not an IP address`);
  }
  const cacheDir = rel(
    o.cache_dir === undefined ? '/var/cache/homewire/images' : c.string(o.cache_dir, k('cache_dir')),
  );
  const stateDir = rel(o.state_dir === undefined ? '/var/lib/homewire/vms' : c.string(o.state_dir, k('state_dir')));
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
    site,
    cpus,
    memoryMib,
    labels,
    bridge,
    migrationAddress,
    cacheDir,
    stateDir,
    hypervisor: hypervisor as 'qemu' | 'none',
    ...(qemuBinary ? { qemuBinary } : {}),
    stopGuestsOnExit,
  };
}
