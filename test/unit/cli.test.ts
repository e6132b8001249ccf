// The `homewire` executable as an admin uses it: keys, check, help, and what it says when a daemon is absent.
// Every run is a real process (node + tsx: about half a second of CPU each), so independent runs go in parallel,
// two at a time, and the keys a config needs are made in process (genkey and pubkey themselves are tested first).
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodeKey, encodeKey, generatePrivateKey, publicKeyOf } from '../../src/mesh/keys.ts';

const BIN = path.resolve('bin/homewire.mjs');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

// Two at a time: the machine has two cores, and the other test files run beside this one.
const RUNS_AT_ONCE = 2;
let running = 0;
const queued: Array<() => void> = [];

/** Runs `homewire ARGS` with `input` on stdin; killed after 30 s (status null). */
async function run(args: string[], input?: string): Promise<Run> {
  if (running >= RUNS_AT_ONCE) await new Promise<void>((r) => queued.push(r));
  running++;
  try {
    return await spawnRun(args, input);
  } finally {
    running--;
    queued.shift()?.();
  }
}

function spawnRun(args: string[], input?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

test('genkey | pubkey, like wg genkey | wg pubkey', async (t) => {
  const key = await run(['genkey']);
  t.is(key.status, 0);
  t.regex(key.stdout, /^[A-Za-z0-9+/]{43}=\n$/);
  const [pub, bad] = await Promise.all([run(['pubkey'], key.stdout), run(['pubkey'], 'nonsense\n')]);
  t.is(pub.status, 0);
  t.regex(pub.stdout, /^[A-Za-z0-9+/]{43}=\n$/);
  t.not(pub.stdout, key.stdout);
  // Deterministic: the public key of that private key, as the library derives it in this process.
  t.is(pub.stdout, `${encodeKey(publicKeyOf(decodeKey(key.stdout)!))}\n`, 'deterministic');
  t.not(bad.status, 0);
  t.regex(bad.stderr, /homewire genkey/);
});

test('check: exit 0 for a good config, non-zero naming the file, the key and what to do for a bad one', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const key = encodeKey(generatePrivateKey());
  const peer = encodeKey(publicKeyOf(generatePrivateKey()));
  const good = `name: host-a\nprivate_key_file: a.key\nlisten: 192.0.2.2:51820\ntap: { name: hw0 }\npeers:\n  - { name: home, public_key: "${peer}", endpoint: 192.0.2.1:51820 }\n`;
  const cases: Array<[string, RegExp]> = [
    [good.replace('192.0.2.1:51820', '192.0.2.1'), /good\.yaml: peers\[0\]\.endpoint: "192\.0\.2\.1" has no port/],
    [good.replace(`"${peer}"`, '"abc"'), /peers\[0\]\.public_key: not a base64 Curve25519 public key/],
    [`${good}extra: 1\n`, /extra: unknown key; allowed here/],
    [
      good.replace('a.key', 'missing.key'),
      /private_key_file: .*missing\.key does not exist: create it with `homewire genkey/,
    ],
  ];
  // Each config in a directory of its own (with its a.key), all checked at once.
  const configs = [good, ...cases.map(([text]) => text)].map((text, i) => {
    fs.mkdirSync(path.join(dir, `${i}`));
    fs.writeFileSync(path.join(dir, `${i}`, 'a.key'), `${key}\n`, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, `${i}`, 'good.yaml'), text);
    return path.join(dir, `${i}`, 'good.yaml');
  });
  const [ok, ...bad] = await Promise.all(configs.map((file) => run(['check', '--config', file])));
  const none = run(['check', '--config', path.join(dir, 'nope.yaml')]);
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /ok \(node host-a, public key [A-Za-z0-9+/]{43}=, 1 peers\)/);
  for (const [i, [, want]] of cases.entries()) {
    const r = bad[i];
    t.is(r.status, 1);
    t.regex(r.stderr, want);
    t.true(r.stderr.includes(configs[i + 1]), 'names the file');
  }
  const n = await none;
  t.is(n.status, 1);
  t.regex(n.stderr, /nope\.yaml: cannot read the config file \(ENOENT\)/);
});

test('help lists every command; status without a running daemon says what to do', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const key = encodeKey(generatePrivateKey());
  fs.writeFileSync(
    path.join(dir, 'c.yaml'),
    `name: x\nprivate_key: "${key}"\nlisten: 192.0.2.2:51820\ntap: { name: hw0 }\ncontrol: { socket: ${dir}/x.sock }\n`,
  );
  const [help, st, unknown] = await Promise.all([
    run(['help']),
    run(['status', '--config', path.join(dir, 'c.yaml')]),
    run(['frobnicate']),
  ]);
  t.is(help.status, 0);
  for (const cmd of [
    'genkey',
    'pubkey',
    'check',
    'up',
    'status',
    'reload',
    'expect',
    'leases',
    'coordinator',
    'vm',
    'host',
  ]) {
    t.true(help.stdout.includes(cmd), cmd);
  }
  t.is(st.status, 1);
  t.regex(st.stderr, /cannot reach the daemon at .*x\.sock .*is `homewire up` running with this config/);
  t.is(unknown.status, 2);
  t.regex(unknown.stderr, /unknown command "frobnicate"/);
});
