// Config validation of the coordinator and of the daemon's coordinator: section, and the state table.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseAgentConfig } from '../../src/agent/config.ts';
import { parseCoordinatorConfig } from '../../src/coordinator/config.ts';
import { canTransition, VM_STATES } from '../../src/coordinator/states.ts';
import { ConfigError } from '../../src/errors.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-ccfg-'));
fs.writeFileSync(path.join(dir, 'admin.token'), 'admin-token-0123456789abcdef\n');
fs.writeFileSync(path.join(dir, 'host.token'), `host-a.${'A'.repeat(43)}\n`);
fs.writeFileSync(path.join(dir, 'shared.token'), 'host-token-0123456789abcdef\n');
fs.writeFileSync(path.join(dir, 'short.token'), 'short\n');
fs.writeFileSync(path.join(dir, 'pem.crt'), '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n');
const file = path.join(dir, 'coordinator.yaml');
const base = 'admin_token_file: admin.token\n';
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

test('the contract config parses, with defaults', (t) => {
  const sum = 'a'.repeat(64);
  const cfg = parseCoordinatorConfig(
    `listen: 127.0.0.1:7100\nstore: sqlite\ndata_dir: /var/lib/homewire/coordinator\n${base}` +
      'image_sources: [192.0.2.1, "images.example.org:8443", 198.51.100.0/24]\n' +
      `images:\n  - { name: tiny, kernel: http://192.0.2.1/k, initrd: http://192.0.2.1/i, sha256: { kernel: ${sum}, initrd: ${sum} } }\n`,
    file,
  );
  t.deepEqual(cfg.listen, { address: '127.0.0.1', port: 7100 });
  t.deepEqual(cfg.store, { backend: 'sqlite' });
  t.is(cfg.dataDir, '/var/lib/homewire/coordinator');
  t.is(cfg.adminToken, 'admin-token-0123456789abcdef');
  t.is(cfg.advertiseUrl, 'http://127.0.0.1:7100');
  t.is(cfg.images[0].name, 'tiny');
  t.deepEqual(cfg.imageSources, ['192.0.2.1', 'images.example.org:8443', '198.51.100.0/24']);
  t.is(cfg.tls, undefined);
  const etcd = parseCoordinatorConfig(`${base}store: etcd://127.0.0.1:2379, etcd-2.example:2379\n`, file);
  t.deepEqual(etcd.store, { backend: 'etcd', endpoints: ['http://127.0.0.1:2379', 'http://etcd-2.example:2379'] });
  t.deepEqual(parseCoordinatorConfig(base, file).listen, { address: '127.0.0.1', port: 7100 });
});

test('coordinator config errors name the key and say what to do', (t) => {
  const bad = (text: string, re: RegExp) => {
    const err = t.throws(() => parseCoordinatorConfig(text, file), { instanceOf: ConfigError });
    t.regex(err!.message, re);
  };
  bad(`${base}store: mysql`, /store: "mysql" is neither sqlite nor etcd/);
  bad(`${base}store: etcd://`, /store: etcd:\/\/ needs at least one HOST:PORT/);
  bad(`${base}colour: red`, /colour: unknown key/);
  bad('log_level: info\n', /admin_token_file: missing/);
  bad('admin_token_file: nope.token\n', /admin_token_file: .*nope.token does not exist: create it/);
  bad('admin_token_file: short.token\n', /at least 16 characters/);
  // The shared host token of earlier versions: refused with what to do instead.
  bad(
    `${base}host_token_file: host.token\n`,
    /host_token_file: removed: every host now has its own token. For each VM host run `homewire host add NAME`/,
  );
  bad(`${base}listen: 0.0.0.0:7100\nstore: etcd://127.0.0.1:2379\n`, /advertise_url: missing/);
  bad(
    `${base}images:\n  - { name: x, kernel: k, initrd: /i, sha256: { kernel: ${'a'.repeat(64)}, initrd: ${'a'.repeat(64)} } }`,
    /images\[0\]: .*relative/,
  );
  bad(`${base}images: [ { name: x } ]`, /images\[0\]: image x: sha256 must be a mapping/);
  bad(`${base}listen: [`, /not valid YAML/);
  bad(
    `${base}image_sources: ["http://x/"]`,
    /image_sources\[0\]: "http:\/\/x\/" is not HOST, HOST:PORT or an address range/,
  );
  bad(`${base}image_sources: [192.0.2.1:99999]`, /image_sources\[0\]: .*is not HOST/);
  bad(`${base}image_sources: 192.0.2.1`, /image_sources: must be a list of HOST/);
  bad(`${base}tls: { cert_file: nope.crt, key_file: nope.key }`, /tls.cert_file: cannot read .*nope.crt/);
  bad(`${base}tls: { cert_file: admin.token, key_file: admin.token }`, /tls.cert_file: .* is not a PEM certificate/);
  bad(`${base}tls: { cert_file: x }`, /tls.cert_file: cannot read/);
  bad(`${base}tls: { cert_file: pem.crt }`, /tls.key_file: missing/);
});

test("the daemon's coordinator: section", (t) => {
  const daemonFile = path.join(dir, 'site.yaml');
  const cfg = parseAgentConfig(
    {
      url: 'http://192.0.2.10:7100/, http://192.0.2.11:7100',
      token_file: 'host.token',
      cpus: 4,
      memory_mib: 2048,
      labels: { ssd: 'yes', rack: 3 },
      migration_address: '192.0.2.3',
    },
    daemonFile,
  );
  t.deepEqual(cfg.urls, ['http://192.0.2.10:7100', 'http://192.0.2.11:7100']);
  t.is(cfg.token, `host-a.${'A'.repeat(43)}`);
  t.deepEqual(cfg.labels, { ssd: 'yes', rack: '3' });
  t.is(cfg.bridge, undefined, "defaults to the daemon's tap.bridge (given by the daemon)");
  t.is(cfg.hypervisor, 'qemu');
  t.is(cfg.cacheDir, '/var/cache/homewire/images');
  const d = parseAgentConfig({ url: ['http://192.0.2.10:7100'], token_file: path.join(dir, 'host.token') }, daemonFile);
  t.is(d.cpus, os.cpus().length);
  t.true(d.memoryMib > 0);
  const bad = (raw: unknown, re: RegExp) =>
    t.regex(t.throws(() => parseAgentConfig(raw, daemonFile), { instanceOf: ConfigError })!.message, re);
  bad({ token_file: 'host.token' }, /coordinator.url: missing/);
  bad({ url: 'ftp://x', token_file: 'host.token' }, /coordinator.url: "ftp:\/\/x" must be http/);
  bad({ url: 'http://x:1', token_file: 'nope' }, /coordinator.token_file: .*does not exist/);
  bad(
    { url: 'http://x:1', token_file: 'host.token', hypervisor: 'xen' },
    /coordinator.hypervisor: "xen" is not qemu or none/,
  );
  bad(
    { url: 'http://x:1', token_file: 'host.token', migration_address: 'host-b' },
    /migration_address: "host-b" is not an IP/,
  );
  bad({ url: 'http://x:1', token_file: 'host.token', cpus: -1 }, /coordinator.cpus: -1 is out of range/);
  bad({ url: 'http://x:1', token_file: 'host.token', tokenfile: 'x' }, /coordinator.tokenfile: unknown key/);
  // A shared token from before per-host credentials, or another host's token: refused, saying what to do.
  bad(
    { url: 'http://x:1', token_file: 'shared.token' },
    /does not hold a host token \(NAME.SECRET\).*homewire host add/,
  );
  t.regex(
    t.throws(
      () => parseAgentConfig({ url: 'http://x:1', token_file: 'host.token' }, daemonFile, 'coordinator', 'host-b'),
      {
        instanceOf: ConfigError,
      },
    )!.message,
    /holds the token of host host-a, but this daemon is host-b/,
  );
  bad(
    { url: 'http://x:1', token_file: 'host.token', migration_ports: '80-90' },
    /migration_ports: "80-90" is not a port range/,
  );
  bad({ url: 'http://x:1', token_file: 'host.token', qemu_user: 'root' }, /qemu_user: .*root/);
  bad({ url: 'http://x:1', token_file: 'host.token', qemu_user: '0:0' }, /qemu_user: 0:0 is root/);
  bad({ url: 'http://x:1', token_file: 'host.token', state_dir: '/var/x,y' }, /state_dir: .*must not contain commas/);
  t.deepEqual(
    parseAgentConfig({ url: 'http://x:1', token_file: 'host.token', qemu_user: '64000:64001' }, daemonFile).qemuUser,
    { uid: 64000, gid: 64001, text: '64000:64001' },
  );
});

test("the state table: the spec's transitions and no others", (t) => {
  const allowed = VM_STATES.flatMap((a) => VM_STATES.filter((b) => canTransition(a, b)).map((b) => `${a}→${b}`));
  t.deepEqual(allowed.sort(), [
    'defined→starting',
    'failed→starting',
    'failed→stopped',
    'migrating→failed',
    'migrating→running',
    'running→failed',
    'running→migrating',
    'running→stopped',
    'starting→failed',
    'starting→running',
    'stopped→starting',
  ]);
});
