// The coordinator's transport and credentials against real tools (README "Security model"): TLS with a CA
// made by openssl, verified by agents and the CLI and checked on the wire with tcpdump on loopback (no token
// in clear; without TLS, as a control, the token is seen); and a host impersonating another with curl (403).
// In-process variants of the attacks: test/unit/coordinator-security.test.ts. Needs root (tcpdump), curl and
// openssl; without them the tests fail saying what to install.
import type { ExecutionContext } from 'ava';
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { type FakeHost, Harness, waitFor } from '../../lab/coordinator/harness.ts';
import { runCoordinatorCli } from '../../src/coordinator/cli.ts';
import type { HostView } from '../../src/coordinator/types.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const sysTest = testIf(missingFor({ root: true, programs: { tcpdump: 'tcpdump', curl: 'curl', openssl: 'openssl' } }));

async function harness(t: ExecutionContext, o: Parameters<typeof Harness.start>[0] = {}): Promise<Harness> {
  const h = await Harness.start(o);
  t.teardown(() => h.stop());
  return h;
}

/** curl, as an attacker would (the coordinator is in this process: never spawnSync). */
async function curl(
  url: string,
  method: string,
  token: string | null,
  body?: unknown,
): Promise<{ status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  const args = ['-s', '-o', '-', '-w', '\n%{http_code}', '-X', method];
  if (token !== null) args.push('-H', `Authorization: Bearer ${token}`);
  if (body !== undefined) args.push('-H', 'content-type: application/json', '--data', JSON.stringify(body));
  const stdout = await new Promise<string>((resolve) =>
    execFile('curl', [...args, url], { encoding: 'utf8' }, (_err, out) => resolve(out)),
  );
  const nl = stdout.lastIndexOf('\n');
  const text = stdout.slice(0, nl);
  let parsed = {};
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    /* not JSON (a TLS port spoken to in clear) */
  }
  return { status: Number(stdout.slice(nl + 1)), body: parsed };
}

sysTest('curl: a host token acts only as its own host (403), a removed host gets 401', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  const b = await h.addHost('host-b', { address: '192.0.2.3' });
  const url = h.coordinator.url;
  const r = await curl(`${url}/v1/agent/register`, 'POST', a.token, {
    name: 'host-b',
    site: 'host-b',
    cpus: 64,
    memory_mib: 65536,
    hypervisor: { kind: 'fake', available: true, accel: 'tcg' },
    address: '198.18.0.66',
    bridge: 'br-hw',
    boot_id: 'evil',
  });
  t.is(r.status, 403);
  t.is(r.body.error?.code, 'forbidden');
  t.is((await curl(`${url}/v1/agent/poll`, 'POST', a.token, { name: 'host-b', wait_ms: 0 })).status, 403);
  t.is((await h.admin.request<HostView>('GET', '/v1/hosts/host-b')).address, '192.0.2.3');
  t.is(h.coordinator.audit.failures.wrong_host, 2);
  t.is((await curl(`${url}/v1/hosts/host-b`, 'DELETE', h.adminToken)).status, 200);
  t.is((await curl(`${url}/v1/agent/poll`, 'POST', b.token, { name: 'host-b', wait_ms: 0 })).status, 401);
  t.is((await curl(`${url}/v1/hosts`, 'POST', a.token, { name: 'host-z' })).status, 401, 'hosts cannot mint tokens');
  t.true(a.agent.isRegistered);
});

/** A throw-away CA and a server certificate for 127.0.0.1, made with openssl. */
function makeCa(dir: string, name: string): { ca: string; cert: string; key: string } {
  const run = (...args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.error || r.status !== 0)
      throw new Error(`openssl ${args.join(' ')}: ${r.stderr || r.error} (apt-get install openssl)`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    `${name}-ca.key`,
    '-out',
    `${name}-ca.crt`,
    '-days',
    '2',
    '-subj',
    `/CN=${name} test CA`,
  );
  run('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, `${name}.ext`), 'subjectAltName=IP:127.0.0.1\n');
  run(
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${name}-ca.crt`,
    '-CAkey',
    `${name}-ca.key`,
    '-CAcreateserial',
    '-out',
    `${name}.crt`,
    '-days',
    '2',
    '-extfile',
    `${name}.ext`,
  );
  return {
    ca: path.join(dir, `${name}-ca.crt`),
    cert: path.join(dir, `${name}.crt`),
    key: path.join(dir, `${name}.key`),
  };
}

/** Captures TCP on loopback to a port while fn runs; returns the raw capture. */
async function capture(t: ExecutionContext, port: number, fn: () => Promise<void>): Promise<Buffer> {
  if (process.getuid?.() !== 0) t.fail('capturing on loopback needs root (tcpdump)');
  const file = path.join(fs.mkdtempSync('/tmp/hwc-cap-'), 'lo.pcap');
  const p = spawn('tcpdump', ['-i', 'lo', '-U', '-s', '0', '-w', file, 'tcp', 'port', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  p.stderr.on('data', (d) => (err += d));
  await waitFor(() => err.includes('listening on'), 5000, `tcpdump listening (${err})`);
  await new Promise((r) => setTimeout(r, 200));
  try {
    await fn();
  } finally {
    await new Promise((r) => setTimeout(r, 300));
    p.kill('SIGINT');
    await new Promise((r) => p.once('exit', r));
  }
  const data = fs.readFileSync(file);
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  return data;
}

sysTest('TLS: agents and the CLI verify the coordinator with their CA; tokens never cross in clear', async (t) => {
  const dir = fs.mkdtempSync('/tmp/hwc-tls-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const good = makeCa(dir, 'coord');
  const other = makeCa(dir, 'other');
  const h = await harness(t, {
    configExtra: `tls: { cert_file: ${good.cert}, key_file: ${good.key} }`,
    caFile: good.ca,
  });
  t.regex(h.coordinator.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const port = Number(new URL(h.coordinator.url).port);
  let a: FakeHost | null = null;
  const wire = await capture(t, port, async () => {
    a = await h.addHost('host-a');
    await h.addImage();
    await h.admin.request('POST', '/v1/vms', { name: 'web', image: 'tiny' });
    await h.admin.request('POST', '/v1/vms/web/start', {});
    await new Promise((r) => setTimeout(r, 2500)); // a heartbeat or two
  });
  t.true(wire.length > 5000, `traffic was captured (${wire.length} bytes)`);
  t.false(wire.includes(a!.token.split('.')[1]), "the host's token is not on the wire");
  t.false(wire.includes(h.adminToken), 'nor the admin token');
  t.false(wire.includes('Bearer'), 'no HTTP in clear at all');
  t.is(await a!.hv.state('web'), 'running', 'the agent works over TLS');

  const cli = (...extra: string[]) =>
    runCoordinatorCli(
      [
        'host',
        'list',
        '--json',
        '--coordinator',
        h.coordinator.url,
        '--token-file',
        path.join(h.dir, 'admin.token'),
        ...extra,
      ],
      new Writable({
        write(_c, _e, cb) {
          cb();
        },
      }),
    );
  await t.notThrowsAsync(cli('--ca-file', good.ca));
  await t.throwsAsync(
    cli(),
    { message: /cannot verify the coordinator .*give the CA/ },
    'the system CAs do not know it',
  );
  await t.throwsAsync(
    cli('--ca-file', other.ca),
    { message: /cannot verify the coordinator/ },
    'another CA is refused',
  );
  // Plain HTTP to the TLS port gets nowhere.
  t.not((await curl(`${h.coordinator.url.replace('https', 'http')}/v1/status`, 'GET', h.adminToken)).status, 200);
  // An agent with the wrong CA never registers.
  const bad = await h.hostToken('host-x');
  const { parseAgentConfig } = await import('../../src/agent/config.ts');
  const { HostAgent } = await import('../../src/agent/agent.ts');
  const cfg = parseAgentConfig(
    { url: h.coordinator.url, token_file: bad.file, ca_file: other.ca, cache_dir: 'c', state_dir: 's' },
    path.join(h.dir, 'x.yaml'),
  );
  const x = new HostAgent(cfg, { name: 'host-x', log: h.log, expect: () => ({ ok: true }) });
  await x.start();
  await new Promise((r) => setTimeout(r, 1500));
  t.false(x.isRegistered);
  await x.stop();

  // The control experiment: without tls the same traffic shows the token, so the capture would have seen it.
  const plain = await harness(t);
  const plainPort = Number(new URL(plain.coordinator.url).port);
  let p: FakeHost | null = null;
  const clear = await capture(t, plainPort, async () => {
    p = await plain.addHost('host-p');
    await new Promise((r) => setTimeout(r, 2500)); // a heartbeat or two, as above
  });
  t.true(
    clear.includes(p!.token.split('.')[1]),
    `plain HTTP carries the token in clear (what TLS prevents): ${clear.length} bytes captured`,
  );
});
