// `homewire coordinator|agent|host|vm|image ...`: the coordinator, the standalone host agent, and the API
// client commands with human tables (or --json). Errors come back as OperatorError (the caller prints them
// and exits 1); API errors keep the coordinator's message, which says what to do.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Writable } from 'node:stream';
import { OperatorError } from '../errors.ts';
import { createLogger, exitOnSignals } from '../log.ts';
import { CoordinatorClient } from './client.ts';
import { ApiError, type HostView, type ImageRecord, type VmRecord } from './types.ts';

export const COORDINATOR_USAGE = `Coordinator:
  coordinator --config FILE   run the lifecycle coordinator (HTTP API) in the foreground
  coordinator check --config FILE
                              validate a coordinator config
  coordinator token           print a new random admin token (for admin_token_file)
  agent --config FILE [--stop-guests-on-exit]
                              run the host agent beside a running daemon (reads the daemon's config
                              and its coordinator: section); its guests keep running when it stops
                              unless --stop-guests-on-exit
API (--coordinator URL[,URL...] --token-file F [--ca-file F], or HOMEWIRE_COORDINATOR / HOMEWIRE_TOKEN_FILE /
HOMEWIRE_CA_FILE; --json):
  host add NAME [--rotate]    print a new token for VM host NAME (the daemon's name), shown once: put it in
                              that host's coordinator.token_file. --rotate replaces an existing one
  host remove NAME            revoke NAME's token and forget the host (its running VMs fail)
  host list [--site S] [--label K[=V]]... [--free-cpus N] [--free-memory MiB] [--state up|down]
  host show NAME
  image list | show NAME | delete NAME
  image add NAME --kernel URL|PATH --initrd URL|PATH [--disk URL|PATH] [--cmdline TEXT]
            [--kernel-sha256 H --initrd-sha256 H --disk-sha256 H]   (a missing checksum is computed
                                                                     from the file as read from here)
  vm create NAME --image I [--cpus N] [--memory MiB] [--disk GiB] [--mac M] [--ip A] [--host H]
            [--site S] [--label K=V]... [--cmdline TEXT] [--clone]
  vm start NAME [--host H] [--no-wait]
  vm migrate NAME [--to H] [--no-wait]
  vm snapshot NAME --image NEW  save the running VM's memory and disk as warm image NEW (it keeps running)
  vm stop NAME [--no-wait]
  vm delete NAME
  vm list [--state S] [--host H]
  vm show NAME
  vm console NAME             the VM's serial console in this terminal, through the coordinator;
                              Ctrl-] detaches (follows the VM when it migrates)
Web page: open the coordinator's URL in a browser and sign in with the admin token.`;

class Args {
  constructor(private readonly a: string[]) {}

  flag(name: string): boolean {
    return this.a.includes(name);
  }

  opt(name: string): string | undefined {
    const i = this.a.indexOf(name);
    if (i >= 0) {
      const v = this.a[i + 1];
      if (v === undefined || v.startsWith('--')) usage(`${name} needs a value`);
      return v;
    }
    const eq = this.a.find((x) => x.startsWith(`${name}=`));
    return eq?.slice(name.length + 1);
  }

  all(name: string): string[] {
    const out: string[] = [];
    this.a.forEach((x, i) => {
      if (x === name && this.a[i + 1] !== undefined) out.push(this.a[i + 1]);
      else if (x.startsWith(`${name}=`)) out.push(x.slice(name.length + 1));
    });
    return out;
  }

  int(name: string): number | undefined {
    const v = this.opt(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) usage(`${name} must be a whole number`);
    return Number(v);
  }

  /** The first argument that is neither an option nor an option's value. */
  positional(i: number): string | undefined {
    const pos: string[] = [];
    for (let j = 0; j < this.a.length; j++) {
      const x = this.a[j];
      if (x.startsWith('--')) {
        if (!x.includes('=') && !BOOLEAN_FLAGS.has(x)) j++;
        continue;
      }
      pos.push(x);
    }
    return pos[i];
  }
}

const BOOLEAN_FLAGS = new Set(['--json', '--no-wait', '--help', '--rotate', '--clone', '--stop-guests-on-exit']);

function usage(message: string): never {
  throw new OperatorError('EUSAGE', `${message}\n${COORDINATOR_USAGE}`);
}

/** Entry point for every command this module owns; argv[0] is the command word. */
export async function runCoordinatorCli(argv: string[], out: Writable = process.stdout): Promise<void> {
  const [cmd, ...rest] = argv;
  const args = new Args(rest);
  const print = (s: string) => out.write(s.endsWith('\n') ? s : `${s}\n`);
  switch (cmd) {
    case 'coordinator':
      return coordinator(args, print);
    case 'agent': {
      const file =
        args.opt('--config') ?? usage('missing --config FILE (the daemon config with a coordinator: section)');
      const { runStandaloneAgent } = await import('../agent/standalone.ts');
      return runStandaloneAgent(file, { stopGuestsOnExit: args.flag('--stop-guests-on-exit') });
    }
    case 'host':
    case 'vm':
    case 'image':
      return api(cmd, args, print);
    default:
      usage(`unknown command "${cmd}"`);
  }
}

async function coordinator(args: Args, print: (s: string) => void): Promise<void> {
  const sub = args.positional(0);
  if (sub === 'token') {
    print(crypto.randomBytes(32).toString('base64url'));
    return;
  }
  const file = args.opt('--config') ?? usage('missing --config FILE');
  const { loadCoordinatorConfig } = await import('./config.ts');
  const cfg = loadCoordinatorConfig(file);
  if (sub === 'check') {
    print(
      `${cfg.file}: ok (listen ${cfg.listen.address}:${cfg.listen.port}, store ${cfg.store.backend}, ${cfg.images.length} images)`,
    );
    return;
  }
  if (sub !== undefined) usage(`unknown coordinator subcommand "${sub}"`);
  const log = createLogger(process.env.HOMEWIRE_LOG_LEVEL ?? cfg.logLevel, 'homewire-coordinator');
  const { Coordinator } = await import('./server.ts');
  const c = await Coordinator.fromConfig(cfg, { log });
  await c.start();
  exitOnSignals(log, 'the coordinator', () => c.stop(), 5000);
}

function client(args: Args): CoordinatorClient {
  const url = args.opt('--coordinator') ?? process.env.HOMEWIRE_COORDINATOR;
  if (!url) usage('no coordinator: give --coordinator URL or set HOMEWIRE_COORDINATOR');
  const tokenFile = args.opt('--token-file') ?? process.env.HOMEWIRE_TOKEN_FILE;
  if (!tokenFile) usage('no token: give --token-file FILE (the admin token) or set HOMEWIRE_TOKEN_FILE');
  let token: string;
  try {
    token = fs.readFileSync(tokenFile!, 'utf8').trim();
  } catch (err) {
    throw new OperatorError(
      'ETOKEN',
      `cannot read the token file ${tokenFile} (${(err as NodeJS.ErrnoException).code})`,
    );
  }
  const caFile = args.opt('--ca-file') ?? process.env.HOMEWIRE_CA_FILE;
  let ca: string | undefined;
  if (caFile) {
    try {
      ca = fs.readFileSync(caFile, 'utf8');
    } catch (err) {
      throw new OperatorError('ETOKEN', `cannot read the CA file ${caFile} (${(err as NodeJS.ErrnoException).code})`);
    }
  }
  return new CoordinatorClient(
    url!
      .split(',')
      .map((u) => u.trim().replace(/\/+$/, ''))
      .filter(Boolean),
    token,
    { ca },
  );
}

async function api(cmd: string, args: Args, print: (s: string) => void): Promise<void> {
  const c = client(args);
  const json = args.flag('--json');
  const show = (v: unknown, human: () => string) => print(json ? JSON.stringify(v, null, 2) : human());
  const call = async <T = unknown>(method: string, path: string, body?: unknown): Promise<T> => {
    try {
      // Operations wait for QEMU (image fetch, boot, RAM copy): allow them minutes.
      return await c.request<T>(method, path, body, {
        timeoutMs: 600_000,
        retryForMs: method === 'GET' ? 10_000 : 6_000,
      });
    } catch (err) {
      if (err instanceof ApiError) throw new OperatorError(err.code, err.message);
      throw err;
    }
  };
  const sub = args.positional(0);
  const name = args.positional(1);
  const need = (what: string) => name ?? usage(`${cmd} ${sub}: missing ${what}`);
  const enc = encodeURIComponent;

  if (cmd === 'host') {
    if (sub === 'list') {
      const q = new URLSearchParams();
      for (const [flag, key] of [
        ['--site', 'site'],
        ['--free-cpus', 'free_cpus'],
        ['--free-memory', 'free_memory_mib'],
        ['--state', 'state'],
      ]) {
        const v = args.opt(flag);
        if (v !== undefined) q.set(key, v);
      }
      for (const l of args.all('--label')) q.append('label', l);
      const r = await call<{ hosts: HostView[] }>('GET', `/v1/hosts${q.size ? `?${q}` : ''}`);
      return show(r, () => hostTable(r.hosts));
    }
    if (sub === 'show') {
      const h = await call<HostView>('GET', `/v1/hosts/${enc(need('NAME'))}`);
      return show(h, () => hostTable([h]));
    }
    if (sub === 'add') {
      const r = await call<{ name: string; token: string; rotated: boolean }>('POST', '/v1/hosts', {
        name: need('NAME'),
        ...(args.flag('--rotate') ? { rotate: true } : {}),
      });
      // The token goes to stdout alone (`homewire host add h > h.token`); the advice to stderr.
      if (json) return show(r, () => '');
      print(r.token);
      process.stderr.write(
        `host ${r.name}: ${r.rotated ? 'token replaced (the old one no longer works)' : 'added'}. Put the token above in ` +
          `that host's coordinator.token_file (mode 600); it is not shown again.\n`,
      );
      return;
    }
    if (sub === 'remove') {
      const r = await call<{ deleted: string; failed_vms: string[] }>('DELETE', `/v1/hosts/${enc(need('NAME'))}`);
      return show(
        r,
        () =>
          `host ${r.deleted} removed: its token is revoked${r.failed_vms.length ? `; vm ${r.failed_vms.join(', ')} failed (start them elsewhere)` : ''}`,
      );
    }
    usage(`unknown host subcommand "${sub ?? ''}"`);
  }

  if (cmd === 'image') {
    if (sub === 'list') {
      const r = await call<{ images: ImageRecord[] }>('GET', '/v1/images');
      return show(r, () =>
        table(
          ['NAME', 'KERNEL', 'INITRD', 'DISK'],
          r.images.map((i) => [i.name, i.kernel, i.initrd, i.disk ?? '-']),
        ),
      );
    }
    if (sub === 'show') {
      const i = await call<ImageRecord>('GET', `/v1/images/${enc(need('NAME'))}`);
      return show(i, () => keyValues(i as unknown as Record<string, unknown>));
    }
    if (sub === 'delete') {
      await call('DELETE', `/v1/images/${enc(need('NAME'))}`);
      return show({ deleted: name }, () => `image ${name} deleted`);
    }
    if (sub === 'add') {
      const body: Record<string, unknown> = { name: need('NAME'), sha256: {} };
      for (const f of ['kernel', 'initrd', 'disk'] as const) {
        const loc = args.opt(`--${f}`);
        if (loc === undefined) {
          if (f !== 'disk') usage(`image add: missing --${f} URL|PATH`);
          continue;
        }
        body[f] = loc;
        (body.sha256 as Record<string, string>)[f] = args.opt(`--${f}-sha256`) ?? (await sha256Of(loc));
      }
      const cmdline = args.opt('--cmdline');
      if (cmdline !== undefined) body.cmdline = cmdline;
      const i = await call<ImageRecord>('POST', '/v1/images', body);
      return show(
        i,
        () =>
          `image ${i.name} added (kernel ${i.sha256.kernel.slice(0, 12)}…, initrd ${i.sha256.initrd.slice(0, 12)}…)`,
      );
    }
    usage(`unknown image subcommand "${sub ?? ''}"`);
  }

  // vm
  const wait = !args.flag('--no-wait');
  const verb = (vm: VmRecord, done: string) =>
    wait ? `vm ${vm.name} ${done}` : `vm ${vm.name}: ${vm.state} (not waiting; see \`homewire vm show ${vm.name}\`)`;
  switch (sub) {
    case 'list': {
      const q = new URLSearchParams();
      if (args.opt('--state')) q.set('state', args.opt('--state')!);
      if (args.opt('--host')) q.set('host', args.opt('--host')!);
      const r = await call<{ vms: VmRecord[] }>('GET', `/v1/vms${q.size ? `?${q}` : ''}`);
      return show(r, () => vmTable(r.vms));
    }
    case 'show': {
      const vm = await call<VmRecord>('GET', `/v1/vms/${enc(need('NAME'))}`);
      return show(vm, () => vmDetails(vm));
    }
    case 'create': {
      const body: Record<string, unknown> = {
        name: need('NAME'),
        image: args.opt('--image') ?? usage('vm create: missing --image NAME'),
      };
      const cpus = args.int('--cpus');
      const mem = args.int('--memory');
      const disk = args.int('--disk');
      if (cpus !== undefined) body.cpus = cpus;
      if (mem !== undefined) body.memory_mib = mem;
      if (disk !== undefined) body.disk_gib = disk;
      if (args.flag('--clone')) body.clone = true;
      for (const [flag, key] of [
        ['--mac', 'mac'],
        ['--ip', 'ip'],
        ['--host', 'host'],
        ['--site', 'site'],
        ['--cmdline', 'cmdline'],
      ]) {
        const v = args.opt(flag);
        if (v !== undefined) body[key] = v;
      }
      const labels = args.all('--label');
      if (labels.length) {
        body.labels = Object.fromEntries(
          labels.map((l) => {
            const i = l.indexOf('=');
            if (i <= 0) usage(`--label ${l}: write NAME=VALUE`);
            return [l.slice(0, i), l.slice(i + 1)];
          }),
        );
      }
      const vm = await call<VmRecord>('POST', '/v1/vms', body);
      return show(
        vm,
        () =>
          `vm ${vm.name} defined (mac ${vm.mac}${vm.ip ? `, reserved ip ${vm.ip}` : ''}); start it with \`homewire vm start ${vm.name}\``,
      );
    }
    case 'start': {
      const body: Record<string, unknown> = { wait };
      const host = args.opt('--host');
      if (host) body.host = host;
      const vm = await call<VmRecord>('POST', `/v1/vms/${enc(need('NAME'))}/start`, body);
      return show(vm, () => verb(vm, `running on ${vm.host}${vm.note ? `\n${vm.note}` : ''}`));
    }
    case 'migrate': {
      const body: Record<string, unknown> = { wait };
      const to = args.opt('--to') ?? args.opt('--host');
      if (to) body.host = to;
      const vm = await call<VmRecord>('POST', `/v1/vms/${enc(need('NAME'))}/migrate`, body);
      return show(vm, () => verb(vm, `migrated: running on ${vm.host}`));
    }
    case 'snapshot': {
      const image = args.opt('--image') ?? usage('vm snapshot: missing --image NEW (the warm image to publish)');
      const img = await call<ImageRecord>('POST', `/v1/vms/${enc(need('NAME'))}/snapshot`, { image });
      const w = img.warm!;
      return show(
        img,
        () =>
          `warm image ${img.name} saved from vm ${name} (state ${(w.state.bytes / 2 ** 20).toFixed(1)} MiB` +
          `${w.overlay ? `, disk overlay ${(w.overlay.bytes / 2 ** 20).toFixed(1)} MiB` : ''}; QEMU ${w.manifest.qemu}, ` +
          `${w.manifest.machine}); resume it with \`homewire vm create NEW --image ${img.name}\` and \`vm start NEW\``,
      );
    }
    case 'stop': {
      const vm = await call<VmRecord>('POST', `/v1/vms/${enc(need('NAME'))}/stop`, { wait });
      return show(vm, () => verb(vm, `stopped${vm.error ? ` (${vm.error})` : ''}`));
    }
    case 'delete': {
      await call('DELETE', `/v1/vms/${enc(need('NAME'))}`);
      return show({ deleted: name }, () => `vm ${name} deleted`);
    }
    case 'console': {
      const { attachConsole } = await import('./console-cli.ts');
      return attachConsole(c, need('NAME'));
    }
    default:
      usage(`unknown vm subcommand "${sub ?? ''}"`);
  }
}

async function sha256Of(location: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  if (/^https?:\/\//.test(location)) {
    const res = await fetch(location).catch((err) => {
      throw new OperatorError(
        'EFETCH',
        `cannot fetch ${location} to compute its checksum: ${err.cause?.code ?? err.message}`,
      );
    });
    if (!res.ok) throw new OperatorError('EFETCH', `${location} answered HTTP ${res.status}`);
    hash.update(Buffer.from(await res.arrayBuffer()));
  } else {
    try {
      hash.update(fs.readFileSync(location));
    } catch (err) {
      throw new OperatorError(
        'EREAD',
        `cannot read ${location} to compute its checksum (${(err as NodeJS.ErrnoException).code}); give --*-sha256`,
      );
    }
  }
  return hash.digest('hex');
}

// ---- human output --------------------------------------------------------------------------------------

export function table(head: string[], rows: string[][]): string {
  if (rows.length === 0) return '(none)';
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(head), ...rows.map(line)].join('\n');
}

function ago(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

export function hostTable(hosts: HostView[]): string {
  return table(
    ['NAME', 'SITE', 'STATE', 'HYPERVISOR', 'CPUS FREE', 'MEMORY FREE', 'VMS', 'LABELS', 'SEEN'],
    hosts.map((h) => [
      h.name,
      h.site,
      h.state,
      h.hypervisor.available ? `${h.hypervisor.kind}/${h.hypervisor.accel}` : 'none',
      h.hypervisor.available ? `${h.free.cpus}/${h.cpus}` : '-', // no hypervisor (home's agent): takes no VMs
      h.hypervisor.available ? `${h.free.memory_mib}/${h.memory_mib} MiB` : '-',
      String(h.vms.length),
      Object.entries(h.labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(',') || '-',
      ago(h.last_seen),
    ]),
  );
}

export function vmTable(vms: VmRecord[]): string {
  return table(
    ['NAME', 'STATE', 'HOST', 'IMAGE', 'CPUS', 'MEMORY', 'MAC', 'IP', 'ERROR'],
    vms.map((v) => [
      v.name,
      v.state,
      v.state === 'migrating' ? `${v.host}→${v.target}` : (v.host ?? '-'),
      v.image,
      String(v.cpus),
      `${v.memory_mib} MiB`,
      v.mac,
      v.ip ?? v.lease_ip ?? 'dhcp',
      v.error ? (v.error.length > 60 ? `${v.error.slice(0, 59)}…` : v.error) : '',
    ]),
  );
}

function vmDetails(v: VmRecord): string {
  return keyValues({
    name: v.name,
    state: v.state,
    host: v.host ?? '-',
    ...(v.target ? { target: v.target } : {}),
    image: v.image,
    cpus: v.cpus,
    memory: `${v.memory_mib} MiB`,
    mac: v.mac,
    ip: v.ip ?? 'dhcp (pool)',
    disk:
      v.disk_host !== undefined && (v.disk_gib != null || v.disk_host)
        ? `${v.disk_gib != null ? `${v.disk_gib} GiB` : "the image's size"}${v.disk_host ? `, on ${v.disk_host}` : ''}`
        : '-',
    placement: JSON.stringify(v.placement),
    error: v.error ?? '-',
    ...(v.note ? { note: v.note } : {}),
    created: v.created_at,
    updated: v.updated_at,
  });
}

function keyValues(o: Record<string, unknown>): string {
  const w = Math.max(...Object.keys(o).map((k) => k.length)) + 1;
  return Object.entries(o)
    .map(([k, v]) => `${(`${k}:`).padEnd(w)} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join('\n');
}
