// The `homewire` executable as an admin uses it: keys, check, help, and what it says when a daemon is absent.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const BIN = path.resolve('bin/homewire.mjs');
const run = (args: string[], input?: string) =>
  spawnSync(process.execPath, [BIN, ...args], { input, encoding: 'utf8', timeout: 30_000 });

test('genkey | pubkey, like wg genkey | wg pubkey', (t) => {
  const key = run(['genkey']);
  t.is(key.status, 0);
  t.regex(key.stdout, /^[A-Za-z0-9+/]{43}=\n$/);
  const pub = run(['pubkey'], key.stdout);
  t.is(pub.status, 0);
  t.regex(pub.stdout, /^[A-Za-z0-9+/]{43}=\n$/);
  t.not(pub.stdout, key.stdout);
  t.is(run(['pubkey'], key.stdout).stdout, pub.stdout, 'deterministic');
  const bad = run(['pubkey'], 'nonsense\n');
  t.not(bad.status, 0);
  t.regex(bad.stderr, /homewire genkey/);
});

test('check: exit 0 for a good config, non-zero naming the file, the key and what to do for a bad one', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-cli-'));
  const key = run(['genkey']).stdout.trim();
  const peer = run(['pubkey'], run(['genkey']).stdout).stdout.trim();
  fs.writeFileSync(path.join(dir, 'a.key'), `${key}\n`, { mode: 0o600 });
  const good = `name: host-a\nprivate_key_file: a.key\nlisten: 192.0.2.2:51820\ntap: { name: hw0 }\npeers:\n  - { name: home, public_key: "${peer}", endpoint: 192.0.2.1:51820 }\n`;
  fs.writeFileSync(path.join(dir, 'good.yaml'), good);
  const ok = run(['check', '--config', path.join(dir, 'good.yaml')]);
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /ok \(node host-a, public key [A-Za-z0-9+/]{43}=, 1 peers\)/);

  const cases: Array<[string, RegExp]> = [
    [good.replace('192.0.2.1:51820', '192.0.2.1'), /good\.yaml: peers\[0\]\.endpoint: "192\.0\.2\.1" has no port/],
    [good.replace(`"${peer}"`, '"abc"'), /peers\[0\]\.public_key: not a base64 Curve25519 public key/],
    [`${good}extra: 1\n`, /extra: unknown key; allowed here/],
    [
      good.replace('a.key', 'missing.key'),
      /private_key_file: .*missing\.key does not exist: create it with `homewire genkey/,
    ],
  ];
  for (const [text, want] of cases) {
    fs.writeFileSync(path.join(dir, 'good.yaml'), text);
    const r = run(['check', '--config', path.join(dir, 'good.yaml')]);
    t.is(r.status, 1);
    t.regex(r.stderr, want);
    t.true(r.stderr.includes(path.join(dir, 'good.yaml')), 'names the file');
  }
  const none = run(['check', '--config', path.join(dir, 'nope.yaml')]);
  t.is(none.status, 1);
  t.regex(none.stderr, /nope\.yaml: cannot read the config file \(ENOENT\)/);
});

test('help lists every command; status without a running daemon says what to do', (t) => {
  const help = run(['help']);
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
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-cli-'));
  const key = run(['genkey']).stdout.trim();
  fs.writeFileSync(
    path.join(dir, 'c.yaml'),
    `name: x\nprivate_key: "${key}"\nlisten: 192.0.2.2:51820\ntap: { name: hw0 }\ncontrol: { socket: ${dir}/x.sock }\n`,
  );
  const st = run(['status', '--config', path.join(dir, 'c.yaml')]);
  t.is(st.status, 1);
  t.regex(st.stderr, /cannot reach the daemon at .*x\.sock .*is `homewire up` running with this config/);
  const unknown = run(['frobnicate']);
  t.is(unknown.status, 2);
  t.regex(unknown.stderr, /unknown command "frobnicate"/);
});
