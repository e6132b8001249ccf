// `homewire` subcommands. Each prints what went wrong and what to do, and exits non-zero on failure.
import fs from 'node:fs';
import { loadConfig } from './config.ts';
import { ConfigError, OperatorError } from './errors.ts';
import { createLogger } from './log.ts';
import { decodeKey, encodeKey, generatePrivateKey, publicKeyOf } from './mesh/keys.ts';

const USAGE = `usage: homewire COMMAND [options]

Keys:
  genkey                      print a new base64 Curve25519 private key
  pubkey                      read a private key on stdin, print its public key
                              (homewire genkey | tee host.key | homewire pubkey > host.pub)
Daemon:
  check --config FILE         validate a config file; exit 0, or name the key and what is wrong
  up --config FILE            run the daemon in the foreground (SIGINT/SIGTERM stop it; needs root
                              or CAP_NET_ADMIN for the TAP device)
  help                        this text

Environment: HOMEWIRE_LOG_LEVEL (fatal|error|warn|info|debug|trace) overrides log_level.
See README.md for the config reference and the wire format.`;

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => a.startsWith(name + '='));
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
      process.stdout.write(encodeKey(generatePrivateKey()) + '\n');
      return;
    case 'pubkey': {
      const text = fs.readFileSync(0, 'utf8');
      const key = decodeKey(text);
      if (!key) fail('stdin does not hold a base64 Curve25519 private key (make one with `homewire genkey`)');
      process.stdout.write(encodeKey(publicKeyOf(key!)) + '\n');
      return;
    }
    case 'check': {
      const cfg = loadConfig(requireConfig(args));
      process.stdout.write(`${cfg.file}: ok (node ${cfg.name}, public key ${encodeKey(cfg.publicKey)}, ${cfg.peers.length} peers)\n`);
      return;
    }
    case 'up':
      return up(requireConfig(args));
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return;
    default:
      fail(`unknown command "${cmd}"\n${USAGE}`);
  }
}

async function up(file: string): Promise<void> {
  const cfg = loadConfig(file);
  const log = createLogger(process.env.HOMEWIRE_LOG_LEVEL ?? cfg.logLevel);
  const { Daemon } = await import('./daemon.ts');
  const daemon = await Daemon.fromConfig(cfg, { log });
  daemon.start();
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    setTimeout(() => process.exit(1), 2000).unref();
    daemon.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

main(process.argv.slice(2)).catch((err) => {
  if (err instanceof ConfigError || err instanceof OperatorError) fail(err.message, 1);
  fail(`${err?.stack ?? err}`, 1);
});
