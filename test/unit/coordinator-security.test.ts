// Hostile hosts and hostile inputs at the coordinator and the host agents (README "Security model"), each
// attack performed for real against a coordinator on 127.0.0.1 (raw HTTP requests and the agent's own
// client), asserting that it fails, that legitimate use carries on, that a counter moved and that the log
// line is rate-limited. Agents run on the in-memory hypervisor twin. The same attacks with curl, TLS checked
// on the wire: test/system/coordinator-security-tls.test.ts; QEMU's side: coordinator-security-qemu.test.ts.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import client from 'prom-client';
import { registerAgentMetrics } from '../../src/agent/metrics.ts';
import { coordinatorRegistry } from '../../src/coordinator/metrics.ts';
import { DEFAULT_MIGRATION_PORTS } from '../../src/coordinator/migration.ts';
import type { CommandBody, CommandResult, HostView, VmRecord } from '../../src/coordinator/types.ts';
import { runCoordinatorCli } from '../../src/coordinator/cli.ts';
import { type FakeHost, Harness, type HostOptions, waitFor } from '../../lab/coordinator/harness.ts';
import { captureLog } from '../helpers/capture-log.ts';

async function harness(t: ExecutionContext, o: Parameters<typeof Harness.start>[0] = {}): Promise<Harness> {
  const h = await Harness.start(o);
  t.teardown(() => h.stop());
  return h;
}

/** A raw API request, as an attacker would send it (any token, any body). */
function curl(
  url: string,
  method: string,
  token: string | null,
  body?: unknown,
): Promise<{ status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : {} }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

async function scrape(register: client.Registry): Promise<string> {
  return register.metrics();
}

function refusedLines(lines: Record<string, unknown>[], reason: string, msg = 'api: request refused') {
  return lines.filter((l) => l.msg === msg && l.reason === reason);
}

test('per-host tokens: a host acts only as itself (403), tokens are stored hashed, host remove revokes', async (t) => {
  const cap = captureLog();
  const h = await harness(t, { log: cap.log });
  const a = await h.addHost('host-a');
  const b = await h.addHost('host-b', { address: '192.0.2.3' });
  await h.addImage();
  const url = h.coordinator.url;
  t.regex(a.token, /^host-a\.[A-Za-z0-9_-]{43}$/, 'the token is bound to its name');

  // host-a's operator uses host-a's own token to act as host-b: every agent endpoint says 403.
  const as = (what: string, body: Record<string, unknown>) =>
    curl(`${url}/v1/agent/${what}`, 'POST', a.token, { name: 'host-b', ...body });
  const reg = await as('register', {
    site: 'host-b',
    cpus: 64,
    memory_mib: 65536,
    labels: {},
    hypervisor: { kind: 'fake', available: true, accel: 'tcg' },
    address: '198.18.0.66', // where host-a would like host-b's migrations to go
    bridge: 'br-hw',
    boot_id: 'evil',
  });
  t.is(reg.status, 403);
  t.is(reg.body.error?.code, 'forbidden');
  t.regex(reg.body.error!.message, /this token belongs to host host-a; it cannot act as host host-b/);
  t.is((await as('heartbeat', { boot_id: b.agent.bootId, guests_version: 1e9, guests: [] })).status, 403);
  t.is((await as('poll', { wait_ms: 0 })).status, 403);
  t.is((await as('result', { result: { id: 'x', ok: true, boot_id: 'b', guests_version: 0 } })).status, 403);
  const hb = await h.admin.request<HostView>('GET', '/v1/hosts/host-b');
  t.is(hb.address, '192.0.2.3', "host-b's registration is untouched");
  t.is(hb.cpus, 4);
  // host-b carries on: a VM starts there (its commands were not taken by anyone else's poll).
  await h.admin.request('POST', '/v1/vms', { name: 'web', image: 'tiny', host: 'host-b' });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/web/start', {})).host, 'host-b');
  t.is(await b.hv.state('web'), 'running');

  // Counted, and logged once for the four.
  t.is(h.coordinator.audit.failures.wrong_host, 4);
  const metrics = await scrape(coordinatorRegistry(h.coordinator));
  t.regex(metrics, /homewire_coordinator_auth_failures_total\{reason="wrong_host"\} 4/);
  t.is(refusedLines(cap.lines(), 'wrong_host').length, 1, 'one log line per reason per interval');

  // A flood of made-up tokens: all 401, counted, one line per reason.
  for (let i = 0; i < 60; i++) {
    const fake =
      i % 2 ? `host-a.${crypto.randomBytes(32).toString('base64url')}` : crypto.randomBytes(12).toString('hex');
    const status = await new Promise<number>((resolve) => {
      const req = http.request(
        `${url}/v1/agent/poll`,
        { method: 'POST', headers: { authorization: `Bearer ${fake}` }, agent: false },
        (res) => {
          res.resume();
          resolve(res.statusCode!);
        },
      );
      req.end('{"name":"host-a"}');
    });
    t.is(status, 401);
  }
  t.is(h.coordinator.audit.failures.wrong_token, 30);
  t.is(h.coordinator.audit.failures.malformed_token, 30);
  t.is(refusedLines(cap.lines(), 'wrong_token').length, 1);
  t.is(refusedLines(cap.lines(), 'malformed_token').length, 1);
  t.true(a.agent.isRegistered, 'the real host-a is not disturbed');

  // Only the digest is stored: the coordinator's database does not contain any host token.
  const db =
    fs.readFileSync(path.join(h.dir, 'data', 'coordinator.db')).toString('latin1') +
    (fs.existsSync(path.join(h.dir, 'data', 'coordinator.db-wal'))
      ? fs.readFileSync(path.join(h.dir, 'data', 'coordinator.db-wal')).toString('latin1')
      : '');
  for (const host of [a, b]) {
    t.false(db.includes(host.token.split('.')[1]), `${host.name}'s secret is not in the store`);
    t.true(db.includes(crypto.createHash('sha256').update(host.token).digest('hex')), 'its SHA-256 is');
  }

  // `homewire host remove host-b`: its token stops working at once, its VM fails, the host is forgotten.
  const out: string[] = [];
  const cli = (...argv: string[]) =>
    runCoordinatorCli(
      [...argv, '--coordinator', url, '--token-file', path.join(h.dir, 'admin.token')],
      new Writable({
        write(c, _e, cb) {
          out.push(String(c));
          cb();
        },
      }),
    );
  await cli('host', 'remove', 'host-b');
  t.regex(out.join(''), /host host-b removed: its token is revoked; vm web failed/);
  const web = await h.admin.request<VmRecord>('GET', '/v1/vms/web');
  t.is(web.state, 'failed');
  t.regex(web.error!, /its host host-b was removed/);
  const beats = b.agent.stats.heartbeatFailures;
  await waitFor(() => b.agent.stats.heartbeatFailures > beats, 5000, "host-b's agent refused");
  t.true(h.coordinator.audit.failures.unknown_host > 0);
  t.is((await curl(`${url}/v1/agent/poll`, 'POST', b.token, { name: 'host-b', wait_ms: 0 })).status, 401);
  t.deepEqual(
    (await h.admin.request<{ hosts: HostView[] }>('GET', '/v1/hosts')).hosts.map((x) => x.name),
    ['host-a'],
  );
  // Added again: a new token; the old one stays dead.
  const again = await h.hostToken('host-b');
  t.not(again.token, b.token);
  t.is((await curl(`${url}/v1/agent/poll`, 'POST', b.token, { name: 'host-b', wait_ms: 0 })).status, 401);
  t.is(
    (await curl(`${url}/v1/agent/poll`, 'POST', again.token, { name: 'host-b', wait_ms: 0 })).status,
    404,
    'valid, not registered',
  );
  t.true(h.coordinator.audit.failures.wrong_token > 30);

  // `homewire host add host-a` again is refused; --rotate replaces the token and the old one stops working.
  await t.throwsAsync(cli('host', 'add', 'host-a'), { message: /has a token already: .*--rotate/ });
  out.length = 0;
  await cli('host', 'add', 'host-a', '--rotate');
  const rotated = out.join('').trim();
  t.regex(rotated, /^host-a\.[A-Za-z0-9_-]{43}$/, 'the new token alone on stdout');
  t.is((await curl(`${url}/v1/agent/poll`, 'POST', a.token, { name: 'host-a', wait_ms: 0 })).status, 401);
  t.is((await curl(`${url}/v1/agent/poll`, 'POST', rotated, { name: 'host-a', wait_ms: 0 })).status, 200);
});

/** Sends a command straight to a host's agent, as a buggy or subverted coordinator would. */
function inject(h: Harness, host: string, body: unknown): Promise<CommandResult> {
  return h.coordinator.dispatch.send(host, body as CommandBody, 5000);
}

test('migration: the URI comes from the destination registration, a fresh TLS key, moves authorized first', async (t) => {
  const h = await harness(t);
  const events: string[] = [];
  const opts = (name: string): HostOptions => ({
    expect: (mac) => {
      events.push(`expect ${name} ${mac}`);
      return { ok: true };
    },
    authorizeMove: (mac) => {
      events.push(`authorize ${name} ${mac}`);
      return { ok: true };
    },
  });
  const home = await h.addHost('home', { ...opts('home'), dhcp: true, available: false });
  const a = await h.addHost('host-a', { ...opts('host-a'), memoryMib: 8192 });
  const b = await h.addHost('host-b', { ...opts('host-b'), address: '192.0.2.33' });
  const c = await h.addHost('host-c', { ...opts('host-c'), available: false }); // a bystander
  await h.addImage();
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms', { name: 'db', image: 'tiny', ip: '198.51.100.7' });
  await h.admin.request('POST', '/v1/vms/db/start', { host: 'host-a' });
  // Port security at host-a: its daemon gets the coordinator's guests there.
  await waitFor(() => a.guestMacs?.some((g) => g.mac === vm.mac) ?? false, 5000, 'guest MACs at host-a');
  t.deepEqual(a.guestMacs, [{ mac: vm.mac, ip: '198.51.100.7', vm: 'db' }]);

  // The start authorized the MAC on host-a (it may have run elsewhere before); what follows is the migration's.
  t.is(a.authorized.at(-1)?.siteKey, a.publicKey!, 'the start authorized the MAC on host-a');
  events.length = 0;
  for (const x of [home, a, b, c]) x.authorized.length = 0;
  const moved = await h.admin.request<VmRecord>('POST', '/v1/vms/db/migrate', { host: 'host-b' });
  t.is(moved.host, 'host-b');
  const [sent] = h.cloud.sent;
  const m = /^tcp:192\.0\.2\.33:(\d+)$/.exec(sent.uri);
  t.truthy(m, `${sent.uri} is host-b's registered address`);
  const port = Number(m![1]);
  t.true(port >= DEFAULT_MIGRATION_PORTS[0] && port <= DEFAULT_MIGRATION_PORTS[1], 'a port from its range');
  t.regex(sent.tlsPsk, /^[0-9a-f]{64}$/, 'a 256-bit TLS key, the same the destination was given');
  // MAC ownership: source, destination and the DHCP site authorized the move to host-b's key before expect.
  const expectAt = events.indexOf(`expect host-b ${vm.mac}`);
  for (const x of ['home', 'host-a', 'host-b']) {
    const i = events.indexOf(`authorize ${x} ${vm.mac}`);
    t.true(i >= 0 && i < expectAt, `${x} authorized before the expect (${events.join('; ')})`);
  }
  for (const x of [home, a, b]) t.is(x.authorized[0].siteKey, b.publicKey!);
  t.true(a.authorized[0].untilMs > Date.now() + 60_000, 'for the length of a migration');
  await waitFor(() => c.authorized.length === 1, 3000, 'the bystander is told too');
  await waitFor(
    () => (b.guestMacs?.some((g) => g.mac === vm.mac) ?? false) && a.guestMacs?.length === 0,
    5000,
    'guest MACs follow the VM',
  );
  // A second migration gets another key.
  await h.admin.request('POST', '/v1/vms/db/migrate', { host: 'host-a' });
  t.not(h.cloud.sent[1].tlsPsk, sent.tlsPsk);
  t.is(
    h.cloud.sent[1].uri.split(':')[1],
    (await h.admin.request<HostView>('GET', '/v1/hosts/host-a')).address ?? 'none',
    "host-a's registered address",
  );

  // A host cannot register a migration address that is not an address.
  for (const address of ['exec:touch /tmp/pwned', '0.0.0.0', '224.0.0.1', 'host-b.example']) {
    const r = await curl(`${h.coordinator.url}/v1/agent/register`, 'POST', c.token, {
      name: 'host-c',
      site: 'host-c',
      cpus: 1,
      memory_mib: 1,
      hypervisor: { kind: 'fake', available: true },
      address,
      bridge: 'br-hw',
      boot_id: 'x',
    });
    t.is(r.status, 400, address);
    t.regex(r.body.error!.message, /registration: address/);
  }

  // The source agent runs only tcp:IP:PORT, whatever it is sent.
  const psk = 'ab'.repeat(32);
  const calls = a.hv.calls.length;
  for (const uri of [
    'exec:sh -c "touch /tmp/pwned"',
    'unix:/run/homewire/host-a.sock',
    'fd:3',
    'rdma:192.0.2.3:4444',
    'tcp:host-b.example:4444',
    'tcp:192.0.2.3:4444,exec:true',
    'tcp:192.0.2.3:4444 ',
    'tcp:0.0.0.0:4444',
    'tcp:[::]:4444',
    'tcp:192.0.2.003:4444',
    'tcp:192.0.2.3:0',
  ]) {
    const r = await inject(h, 'host-a', { type: 'migrate', name: 'db', uri, tls_psk: psk });
    t.false(r.ok, uri);
    t.regex(r.error!, /is not tcp:IP:PORT/);
  }
  t.is(a.agent.refused.bad_uri, 11);
  t.is(a.hv.calls.length, calls, 'nothing reached the hypervisor');
  t.is(await a.hv.state('db'), 'running', 'the guest runs on');
  // An incoming guest listens only at the host's own registered address and ports.
  const spec = {
    name: 'db2',
    mac: '02:68:77:00:00:99',
    cpus: 1,
    memory_mib: 256,
    image: { ...h.image, created_at: new Date().toISOString() },
    image_sources: [],
  };
  for (const uri of ['tcp:198.18.0.66:49152', 'tcp:192.0.2.33:22', 'tcp:192.0.2.33:49151']) {
    const r = await inject(h, 'host-b', { type: 'incoming', vm: spec, uri, tls_psk: psk });
    t.false(r.ok, uri);
    t.regex(r.error!, /is not this host's migration address 192\.0\.2\.33 with a port in 49152-49215/);
  }
  t.is(b.agent.refused.bad_uri, 3);
  // The right channel with the wrong key: the destination does not take the stream; the source runs on.
  const ok = await inject(h, 'host-b', { type: 'incoming', vm: spec, uri: 'tcp:192.0.2.33:49200', tls_psk: psk });
  t.true(ok.ok, ok.error);
  await a.hv.launch({ ...spec, memoryMib: 256, kernel: '', initrd: '', cmdline: '', bridge: 'br-hw' });
  const wrong = await inject(h, 'host-a', {
    type: 'migrate',
    name: 'db2',
    uri: 'tcp:192.0.2.33:49200',
    tls_psk: 'cd'.repeat(32),
  });
  t.false(wrong.ok);
  t.regex(wrong.error!, /TLS handshake .* failed/);
  t.is(await a.hv.state('db2'), 'running');
  t.is(await b.hv.state('db2'), 'incoming');
});

test('migration: a port the destination already uses is skipped for another of its range', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a', { memoryMib: 8192 });
  const b = await h.addHost('host-b', { address: '192.0.2.33', agentConfig: { migration_ports: '49152-49153' } });
  // Something else listens on 49152 at host-b.
  h.cloud.incoming.set('tcp:192.0.2.33:49152', { hv: b.hv, name: 'other', tlsPsk: 'x' });
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'x', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/x/start', { host: 'host-a' });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/x/migrate', { host: 'host-b' })).host, 'host-b');
  t.is(h.cloud.sent.at(-1)!.uri, 'tcp:192.0.2.33:49153');
});

test('migration: a daemon without MAC ownership to tell (no authorizeMove) still migrates', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a', { authorizeMove: null, memoryMib: 8192 });
  await h.addHost('host-b', { authorizeMove: null, publicKey: null });
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'x', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/x/start', { host: 'host-a' });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/x/migrate', {})).host, 'host-b');
});

test('the agent checks every command itself: names, MACs, sizes, cmdline, keys, shapes', async (t) => {
  const cap = captureLog();
  const h = await harness(t);
  const a: FakeHost = await h.addHost('host-a', { cpus: 4, memoryMib: 4096, log: cap.log });
  const image = { ...h.image, created_at: new Date().toISOString() };
  const vm = (o: Record<string, unknown> = {}) => ({
    name: 'ok',
    mac: '02:68:77:00:00:01',
    cpus: 1,
    memory_mib: 256,
    image,
    image_sources: [],
    ...o,
  });
  const cases: [string, unknown, string][] = [
    ['a path as a name', { type: 'start', vm: vm({ name: '../../etc/passwd' }) }, 'bad_name'],
    ['an option in a name', { type: 'stop', name: 'x,process=evil' }, 'bad_name'],
    ['a broadcast MAC', { type: 'start', vm: vm({ mac: 'ff:ff:ff:ff:ff:ff' }) }, 'bad_mac'],
    ['a MAC with options', { type: 'start', vm: vm({ mac: '02:00:00:00:00:01,romfile=/etc/shadow' }) }, 'bad_mac'],
    ['expect for a multicast MAC', { type: 'expect', mac: '01:00:5e:00:00:01' }, 'bad_mac'],
    ['more CPUs than offered', { type: 'start', vm: vm({ cpus: 64 }) }, 'bad_size'],
    ['more memory than offered', { type: 'start', vm: vm({ memory_mib: 1 << 20 }) }, 'bad_size'],
    ['too little memory', { type: 'start', vm: vm({ memory_mib: 1 }) }, 'bad_size'],
    [
      'a newline in the cmdline',
      { type: 'start', vm: vm({ image: { ...image, cmdline: 'quiet\ninit=/bin/sh' } }) },
      'bad_cmdline',
    ],
    [
      'an escape in the cmdline',
      { type: 'start', vm: vm({ image: { ...image, cmdline: '\u001b[2J' } }) },
      'bad_cmdline',
    ],
    [
      'a short checksum',
      { type: 'start', vm: vm({ image: { ...image, sha256: { kernel: 'ab', initrd: 'cd' } } }) },
      'bad_image',
    ],
    ['a bad image source', { type: 'start', vm: vm({ image_sources: ['http://x/ y'] }) }, 'bad_image'],
    ['a short TLS key', { type: 'migrate', name: 'ok', uri: 'tcp:192.0.2.3:49152', tls_psk: 'abcd' }, 'bad_key'],
    ['a bad site key', { type: 'authorize-move', mac: '02:68:77:00:00:01', site_key: 'x', ttl_ms: 1000 }, 'bad_key'],
    ['an unknown command', { type: 'exec', cmd: 'id' }, 'bad_command'],
    ['an unknown key', { type: 'stop', name: 'ok', also: 'rm -rf /' }, 'bad_command'],
    [
      'a forever authorization',
      { type: 'authorize-move', mac: '02:68:77:00:00:01', site_key: `${'A'.repeat(43)}=`, ttl_ms: 1e12 },
      'bad_size',
    ],
  ];
  const calls = a.hv.calls.length;
  for (const [what, body, reason] of cases) {
    const r = await inject(h, 'host-a', body);
    t.false(r.ok, what);
    const before = a.agent.refused[reason as keyof typeof a.agent.refused];
    t.true(before > 0, `${what}: counted as ${reason}`);
  }
  t.is(a.hv.calls.length, calls, 'nothing reached the hypervisor');
  t.deepEqual(a.expects, [], 'nor the daemon');
  t.deepEqual(a.authorized, []);
  const register = new client.Registry();
  registerAgentMetrics(register, () => a.agent);
  const text = await register.metrics();
  t.regex(text, /homewire_agent_commands_refused_total\{reason="bad_name"\} 2/);
  t.regex(text, /homewire_agent_commands_refused_total\{reason="bad_mac"\} 3/);
  t.regex(text, /homewire_agent_commands_refused_total\{reason="bad_size"\} 4/);
  t.regex(text, /homewire_agent_commands_refused_total\{reason="bad_command"\} 2/);
  const logged = cap.lines().filter((l) => l.msg === 'refused a command from the coordinator');
  t.is(logged.filter((l) => l.reason === 'bad_size').length, 1, 'one line per reason per interval');
  t.is(new Set(logged.map((l) => l.reason)).size, logged.length);
  // And the host carries on: a good command runs.
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'fine', image: 'tiny' });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/fine/start', {})).state, 'running');
});

/** A little HTTP server; counts requests. */
async function server(
  t: ExecutionContext,
  handle: (req: http.IncomingMessage, res: http.ServerResponse) => void,
): Promise<{ port: number; requests: () => number }> {
  let n = 0;
  const s = http.createServer((req, res) => {
    n++;
    handle(req, res);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise((r) => s.close(() => r(undefined))));
  return { port: (s.address() as AddressInfo).port, requests: () => n };
}

test('images: only allowed sources; private addresses refused after DNS; no redirects, no host paths, no echo', async (t) => {
  const SECRET = `TOP-SECRET-${crypto.randomBytes(8).toString('hex')}`;
  const internal = await server(t, (_req, res) => res.end(`${SECRET}\n`)); // say, a cloud metadata service
  const kernel = Buffer.from('a kernel\n');
  const initrd = Buffer.from('an initrd\n');
  const sum = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
  const images = await server(t, (req, res) => {
    if (req.url === '/k') return res.end(kernel);
    if (req.url === '/i') return res.end(initrd);
    if (req.url === '/redirect') return res.writeHead(302, { location: `http://127.0.0.1:${internal.port}/k` }).end();
    res.writeHead(500).end(`${SECRET} in an error page\n`);
  });
  const h = await harness(t, { configExtra: `image_sources: ["127.0.0.1:${images.port}", localhost]` });
  const a = await h.addHost('host-a', { agentConfig: { allow_local_images: false } });
  const l = await h.addHost('host-l', { agentConfig: { allow_local_images: true }, memoryMib: 1024 });
  const def = (name: string, k: string, i = `http://127.0.0.1:${images.port}/i`) =>
    h.admin.request('POST', '/v1/images', {
      name,
      kernel: k,
      initrd: i,
      sha256: { kernel: sum(kernel), initrd: sum(initrd) },
    });
  const ok = `http://127.0.0.1:${images.port}/k`;

  // At the coordinator: URLs outside image_sources, and unlisted private addresses, are refused.
  for (const k of [
    'http://198.18.0.1/k',
    `http://127.0.0.1:${internal.port}/k`,
    'http://169.254.169.254/latest/meta-data/',
    'ftp://127.0.0.1/k',
    `http://user:pw@127.0.0.1:${images.port}/k`,
  ]) {
    const err = await t.throwsAsync(def('bad', k));
    t.regex(err!.message, /image bad: kernel: .*(not in image_sources|only http|credentials)/, k);
  }
  // At the agent: "localhost" is listed by name, but it resolves to a loopback address that is not.
  await def('rebind', `http://localhost:${internal.port}/k`);
  await def('redirect', `http://127.0.0.1:${images.port}/redirect`);
  await def('error', `http://127.0.0.1:${images.port}/error`);
  await def('local', '/etc/shadow', '/etc/passwd');
  await def('good', ok);
  const start = async (vm: string, image: string, host: string) => {
    await h.admin.request('POST', '/v1/vms', { name: vm, image, host, memory_mib: 256 });
    return h.admin.request<VmRecord>('POST', `/v1/vms/${vm}/start`, {}).then(
      () => null,
      (err: Error) => err.message,
    );
  };
  t.regex((await start('v1', 'rebind', 'host-a'))!, /localhost resolves to (127\.0\.0\.1|::1), a loopback address/);
  t.regex((await start('v2', 'redirect', 'host-a'))!, /answered HTTP 302 \(redirects are not followed\)/);
  t.regex((await start('v3', 'error', 'host-a'))!, /answered HTTP 500/);
  t.regex((await start('v4', 'local', 'host-a'))!, /is a path on this host, and this host does not take local images/);
  t.is(internal.requests(), 0, 'the internal service was never contacted');
  t.is(a.agent.refused.image_source, 1);
  t.is(a.agent.refused.local_image, 1);
  // Nothing a refused or failing source holds shows up in any answer or record.
  const all = JSON.stringify(await h.admin.request('GET', '/v1/vms'));
  t.false(all.includes(SECRET));
  // A host that takes local images still takes only regular files.
  await def('device', '/dev/zero', '/dev/zero');
  t.regex((await start('v5', 'device', 'host-l'))!, /\/dev\/zero is not a regular file/);
  t.is(l.agent.refused.local_image, 1);
  // Legitimate use carries on.
  t.is(await start('v6', 'good', 'host-a'), null);
  t.is(await a.hv.state('v6'), 'running');
});

test('a host marked down and removed does not come back with its old token', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  await h.hostDown('host-a');
  t.is((await h.admin.request<HostView>('GET', '/v1/hosts/host-a')).state, 'down');
  await h.admin.request('DELETE', '/v1/hosts/host-a');
  const r = await curl(`${h.coordinator.url}/v1/agent/register`, 'POST', a.token, { name: 'host-a' });
  t.is(r.status, 401);
  t.is(r.body.error?.code, 'unauthorized');
  t.is((await h.admin.request<{ hosts: HostView[] }>('GET', '/v1/hosts')).hosts.length, 0);
});
