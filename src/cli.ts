// `homewire` subcommands. Each prints what went wrong and what to do, and exits non-zero on failure.
import fs from 'node:fs';
import { loadConfig } from './config.ts';
import { ConfigError, OperatorError } from './errors.ts';
import { createLogger, exitOnSignals } from './log.ts';
import { decodeKey, encodeKey, generatePrivateKey, publicKeyOf } from './mesh/keys.ts';
import type { StatusReport } from './status.ts';

const USAGE = `usage: homewire COMMAND [options]

Keys:
  genkey                      print a new base64 Curve25519 private key
  pubkey                      read a private key on stdin, print its public key
                              (homewire genkey | tee host.key | homewire pubkey > host.pub)
Daemon:
  check --config FILE         validate a config file; exit 0, or name the key and what is wrong
  up --config FILE [--stop-guests-on-exit]
                              run the daemon in the foreground (SIGINT/SIGTERM stop it, SIGHUP
                              reloads the config; needs root or CAP_NET_ADMIN for the TAP device).
                              Its host agent's QEMU guests keep running when it stops (the next
                              daemon re-adopts them) unless --stop-guests-on-exit
  status --config FILE [--json]
                              peers (endpoint, handshake, rx/tx, RTT), local MACs, leases
  reload --config FILE        re-read the config in the running daemon (same as SIGHUP)
  expect --config FILE --mac MAC
                              live migration: MAC is about to arrive on this host
  authorize-move --config FILE --mac MAC --to SITE [--seconds N]
                              MAC may move to SITE (a peer name, this node's name or a base64
                              public key) for N seconds (default 60): what the coordinator sends
                              before a migration (security.mac_moves: authorized)
  guests --config FILE MAC[=IP] ...
                              this host's guest MACs (and reserved addresses) for port security,
                              as the coordinator's agent sets them
  leases --config FILE [--json]
                              DHCP leases of a serving site (MAC, IP, hostname, expiry, site)
  help                        this text

Environment: HOMEWIRE_LOG_LEVEL (fatal|error|warn|info|debug|trace) overrides log_level.
See README.md for the config reference and the wire format.`;

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`${name}=`));
  return eq?.slice(name.length + 1);
}

function requireConfig(args: string[]): string {
  const file = option(args, '--config') ?? option(args, '-c');
  if (!file) fail('missing --config FILE');
  return file!;
}

function fail(message: string, code = 2): never {
  process.stderr.write(`homewire: ${message}\n`);
  process.exit(code);
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case 'genkey':
      process.stdout.write(`${encodeKey(generatePrivateKey())}\n`);
      return;
    case 'pubkey': {
      const text = fs.readFileSync(0, 'utf8');
      const key = decodeKey(text);
      if (!key) fail('stdin does not hold a base64 Curve25519 private key (make one with `homewire genkey`)');
      process.stdout.write(`${encodeKey(publicKeyOf(key!))}\n`);
      return;
    }
    case 'check': {
      const cfg = loadConfig(requireConfig(args));
      process.stdout.write(
        `${cfg.file}: ok (node ${cfg.name}, public key ${encodeKey(cfg.publicKey)}, ${cfg.peers.length} peers)\n`,
      );
      return;
    }
    case 'up':
      return up(requireConfig(args), args.includes('--stop-guests-on-exit'));
    case 'status':
    case 'reload':
    case 'expect':
    case 'authorize-move':
    case 'guests':
      return control(cmd, args);
    case 'leases': {
      const cfg = loadConfig(requireConfig(args));
      if (cfg.dhcp === undefined) fail(`${cfg.file} has no dhcp: section; leases live on the site that serves DHCP`);
      const { listLeases, formatLeases } = await import('./dhcp/leases-cli.ts');
      process.stdout.write(formatLeases(listLeases(cfg.dhcp!.leaseDb), args.includes('--json')));
      return;
    }
    case 'coordinator':
    case 'agent':
    case 'host':
    case 'vm':
    case 'image':
      return (await import('./coordinator/cli.ts')).runCoordinatorCli(argv);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n\n${(await import('./coordinator/cli.ts')).COORDINATOR_USAGE}\n`);
      return;
    default:
      fail(`unknown command "${cmd}"\n${USAGE}`);
  }
}

async function up(file: string, stopGuestsOnExit: boolean): Promise<void> {
  const cfg = loadConfig(file);
  if (stopGuestsOnExit && cfg.coordinator) cfg.coordinator.stopGuestsOnExit = true;
  const log = createLogger(process.env.HOMEWIRE_LOG_LEVEL ?? cfg.logLevel);
  log.info({ config: cfg.file, pid: process.pid }, 'homewire starting');
  const { Daemon } = await import('./daemon.ts');
  const daemon = await Daemon.fromConfig(cfg, { log, services: true });
  await daemon.start();
  process.on('SIGHUP', () => {
    daemon.reloadFromFile().catch(() => {});
  });
  // Stopping guests (QMP quit, one after the other) takes longer than closing the TAP and the socket.
  exitOnSignals(log, 'the daemon', () => daemon.stop(), cfg.coordinator?.stopGuestsOnExit ? 15_000 : 2000);
}

async function control(cmd: string, args: string[]): Promise<void> {
  const cfg = loadConfig(requireConfig(args));
  const { controlRequest, defaultControlSocket } = await import('./control.ts');
  const socket = cfg.control?.socket ?? defaultControlSocket(cfg.name);
  if (cmd === 'reload') {
    const r = await controlRequest(socket, 'POST', '/v1/reload');
    if (!r.body.ok) fail(`reload refused, the daemon keeps its running config: ${r.body.error}`, 1);
    process.stdout.write(`reloaded: ${r.body.changes?.length ? r.body.changes.join('; ') : 'no changes'}\n`);
    return;
  }
  if (cmd === 'expect') {
    const mac = option(args, '--mac');
    if (!mac) fail('missing --mac MAC');
    const r = await controlRequest(socket, 'POST', `/v1/expect?mac=${encodeURIComponent(mac!)}`);
    if (!r.body.ok) fail(r.body.error ?? 'expect refused', 1);
    process.stdout.write(`expecting ${mac} on ${cfg.name}\n`);
    return;
  }
  if (cmd === 'authorize-move') {
    const mac = option(args, '--mac');
    const to = option(args, '--to');
    if (!mac || !to) fail('give --mac MAC and --to SITE (peer name, this node or base64 public key)');
    const seconds = Number(option(args, '--seconds') ?? 60);
    if (!(seconds > 0)) fail('--seconds must be a positive number');
    const r = await controlRequest(socket, 'POST', '/v1/authorize-move', { mac, to, seconds });
    if (!r.body.ok) fail(r.body.error ?? 'refused', 1);
    process.stdout.write(`${mac} may move to ${to} for ${seconds} s (on ${cfg.name})\n`);
    return;
  }
  if (cmd === 'guests') {
    const list = args
      .filter((a, i) => !a.startsWith('-') && !['--config', '-c'].includes(args[i - 1]))
      .map((a) => {
        const [mac, ip] = a.split('=');
        return ip ? { mac, ip } : { mac };
      });
    const r = await controlRequest(socket, 'POST', '/v1/guests', { guests: list });
    if (!r.body.ok) fail(r.body.error ?? 'refused', 1);
    process.stdout.write(`${list.length} guest MACs set on ${cfg.name}\n`);
    return;
  }
  const r = await controlRequest<StatusReport>(socket, 'GET', '/v1/status');
  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify(r.body, null, 2)}\n`);
    return;
  }
  process.stdout.write(formatStatus(r.body));
}

function ago(s: number | null): string {
  if (s === null) return 'never';
  if (s < 120) return `${s} seconds ago`;
  return `${Math.round(s / 60)} minutes ago`;
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 2 : 0)} ${units[i]}`;
}

/** Human status, in the manner of `wg show`. */
function formatStatus(s: StatusReport): string {
  const out: string[] = [];
  out.push(
    `node: ${s.name}`,
    `  public key: ${s.publicKey}`,
    `  listening: ${s.listen}`,
    `  tap: ${s.tap.name} (mtu ${s.tap.mtu}), up ${ago(s.uptimeSeconds).replace(' ago', '')}`,
    '',
  );
  for (const p of s.peers) {
    out.push(
      `peer: ${p.name} (${p.up ? 'up' : 'down'})`,
      `  public key: ${p.publicKey}`,
      `  path: ${p.path === 'relay' ? `relay via ${p.via}` : p.path}`,
      `  endpoint: ${p.endpoint ?? '(none yet)'}${p.learned ? ` (${p.learned})` : ''}`,
      ...(p.introduced_by ? [`  introduced_by: ${p.introduced_by} (site ${p.siteId})`] : []),
      `  latest handshake: ${ago(p.lastHandshakeSecondsAgo)}`,
      `  transfer: ${bytes(p.rxBytes)} received, ${bytes(p.txBytes)} sent`,
      `  rtt: ${p.rttMs === null ? '-' : `${p.rttMs} ms`}`,
      '',
    );
  }
  const local = s.macs.filter((m) => m.port === 'local');
  out.push(`local MACs: ${local.length ? local.map((m) => m.mac).join(', ') : '(none)'}`);
  out.push(`MAC table: ${s.macs.length} entries`);
  if (s.hostAddress) out.push(`host address: ${s.hostAddress}`);
  for (const r of s.relayed) out.push(`relayed ${r.from} → ${r.to}: ${r.packets} packets, ${bytes(r.bytes)}`);
  const drops = Object.entries(s.drops).filter(([, v]) => v > 0);
  out.push(`drops: ${drops.length ? drops.map(([k, v]) => `${k}=${v}`).join(' ') : 'none'}`);
  const sec = s.security;
  const secDrops = [
    ['port security', sec.portSecurityDrops],
    ['ownership', sec.ownershipDrops],
    ['dhcp snooping', sec.dhcpSnoopingDrops],
    ['inspection', sec.inspectionDrops],
    ['storm', sec.stormDrops],
    ['handshake guard', sec.handshakeGuard],
  ] as const;
  out.push(
    `security: ${sec.localSide} side, port security ${sec.portSecurity}, moves ${sec.macMoves}` +
      `${sec.guestMacs === null ? '' : `, ${sec.guestMacs} guest MACs`}`,
  );
  for (const [what, counts] of secDrops) {
    const nz = Object.entries(counts).filter(([, v]) => v > 0);
    if (nz.length) out.push(`  ${what}: ${nz.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  }
  if (s.dhcp) {
    out.push('', `dhcp leases (${s.dhcp.active} active):`);
    for (const l of s.dhcp.leases)
      out.push(`  ${l.mac}  ${l.ip.padEnd(15)}  ${(l.hostname ?? '-').padEnd(16)}  ${l.site}  ${l.state}`);
  }
  return `${out.join('\n')}\n`;
}

main(process.argv.slice(2)).catch((err) => {
  if (err instanceof ConfigError || err instanceof OperatorError) fail(err.message, 1);
  fail(`${err?.stack ?? err}`, 1);
});
