// The coordinator's API and VM state machine, on the in-memory hypervisor twin: a coordinator and several
// host agents in one process (src/coordinator/harness.ts). Real HTTP on 127.0.0.1, real SQLite.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { ImageCache } from '../../src/agent/images.ts';
import { CoordinatorClient } from '../../src/coordinator/client.ts';
import { runCoordinatorCli } from '../../src/coordinator/cli.ts';
import { COORDINATOR_TICK_MS, HOST_DOWN_AFTER_MS } from '../../src/coordinator/constants.ts';
import { Harness, waitFor } from '../../lab/coordinator/harness.ts';
import { ApiError, type HostView, type ImageRecord, type VmRecord } from '../../src/coordinator/types.ts';
import { silentLogger } from '../../src/log.ts';

async function harness(t: ExecutionContext, o: Parameters<typeof Harness.start>[0] = {}): Promise<Harness> {
  const h = await Harness.start(o);
  t.teardown(() => h.stop());
  return h;
}

async function apiError(t: ExecutionContext, p: Promise<unknown>, status: number, code: string): Promise<ApiError> {
  const err = (await t.throwsAsync(p)) as ApiError;
  t.true(err instanceof ApiError, String(err));
  t.is(err.status, status, err.message);
  t.is(err.code, code, err.message);
  return err;
}

/** A raw reply: an API error, or whatever the endpoint answers. */
type RawBody = { error: { code: string; message: string } } & Record<string, unknown>;

function raw(
  url: string,
  method: string,
  p: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<{ status: number; body: RawBody }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url + p, { method, headers, agent: false }, (res) => {
      let d = '';
      res.on('data', (c) => (d += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: d ? JSON.parse(d) : null }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('without a valid token every endpoint answers 401 and nothing changes', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a');
  const url = h.coordinator.url;
  const body = JSON.stringify({ name: 'sneaky', image: 'tiny' });
  const cases: [string, string, Record<string, string>][] = [
    ['GET', '/v1/vms', {}],
    ['POST', '/v1/vms', { authorization: 'Bearer wrong-token-wrong-token' }],
    ['POST', '/v1/vms', { authorization: `Bearer ${h.host('host-a').token}` }], // a host token is not an admin token
    ['POST', '/v1/images', { authorization: 'Basic abc' }],
    ['DELETE', '/v1/vms/x', {}],
    ['GET', '/v1/hosts', { authorization: `Bearer ${h.adminToken}x` }],
    ['POST', '/v1/agent/register', { authorization: `Bearer ${h.adminToken}` }], // admin is not a host
    ['POST', '/v1/agent/poll', {}],
    ['GET', '/no/such/path', {}],
  ];
  for (const [method, p, headers] of cases) {
    const r = await raw(
      url,
      method,
      p,
      { 'content-type': 'application/json', ...headers },
      method === 'GET' ? undefined : body,
    );
    t.is(r.status, 401, `${method} ${p}`);
    t.is(r.body.error.code, 'unauthorized');
    t.truthy(r.body.error.message);
  }
  const list = await h.admin.request<{ vms: VmRecord[] }>('GET', '/v1/vms');
  t.deepEqual(list.vms, []);
  t.deepEqual((await h.admin.request<{ images: ImageRecord[] }>('GET', '/v1/images')).images, []);
  t.is((await h.admin.request<{ hosts: HostView[] }>('GET', '/v1/hosts')).hosts.length, 1);
});

test('hosts register and are listed with free capacity; filters by site, labels, free CPUs and memory', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a', { cpus: 8, memoryMib: 8192, site: 'dc1', labels: { ssd: 'yes' } });
  await h.addHost('host-b', { cpus: 2, memoryMib: 1024, site: 'dc2' });
  await h.addHost('host-c', { cpus: 4, memoryMib: 4096, site: 'dc1', available: false });
  const all = (await h.admin.request<{ hosts: HostView[] }>('GET', '/v1/hosts')).hosts;
  t.deepEqual(
    all.map((x) => x.name),
    ['host-a', 'host-b', 'host-c'],
  );
  const a = all[0];
  t.is(a.site, 'dc1');
  t.is(a.state, 'up');
  t.deepEqual(a.free, { cpus: 8, memory_mib: 8192 });
  t.deepEqual(a.labels, { ssd: 'yes' });
  t.is(a.hypervisor.kind, 'fake');
  t.false(all[2].hypervisor.available);
  const names = async (q: string) =>
    (await h.admin.request<{ hosts: HostView[] }>('GET', `/v1/hosts?${q}`)).hosts.map((x) => x.name);
  t.deepEqual(await names('site=dc1'), ['host-a', 'host-c']);
  t.deepEqual(await names('label=ssd=yes'), ['host-a']);
  t.deepEqual(await names('label=ssd'), ['host-a']);
  t.deepEqual(await names('free_cpus=3'), ['host-a', 'host-c']);
  t.deepEqual(await names('free_memory_mib=2048&site=dc1&hypervisor=true'), ['host-a']);
  await apiError(t, h.admin.request('GET', '/v1/hosts?colour=red'), 400, 'bad_request');
  const one = await h.admin.request<HostView>('GET', '/v1/hosts/host-b');
  t.is(one.cpus, 2);
  await apiError(t, h.admin.request('GET', '/v1/hosts/nope'), 404, 'not_found');
});

test('a host that misses its heartbeats is marked down, and up again when it comes back', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  const state = async () => (await h.admin.request<HostView>('GET', '/v1/hosts/host-a')).state;
  // It stops right after a heartbeat; the coordinator's clock skips the silence rather than waiting through it:
  // 4.5 s after that heartbeat it stands still for two ticks (host-a still up), then goes past HOST_DOWN_AFTER_MS.
  const beats = a.agent.stats.heartbeats;
  await waitFor(() => a.agent.stats.heartbeats > beats, HOST_DOWN_AFTER_MS + 3000, 'a heartbeat');
  h.clock.freeze(HOST_DOWN_AFTER_MS - 2500);
  await a.agent.stop();
  await new Promise((r) => setTimeout(r, 2 * COORDINATOR_TICK_MS + 100));
  t.is(await state(), 'up', 'not marked down before its heartbeats were missed');
  h.clock.resume(2500);
  await waitFor(async () => (await state()) === 'down', 3000, 'host-a down');
  h.hosts.delete('host-a');
  await h.addHost('host-a'); // the daemon restarted: it registers again
  t.is((await h.admin.request<HostView>('GET', '/v1/hosts/host-a')).state, 'up');
});

test('a VM whose host died is stopped and started on another: its MAC is authorized there; the dead host is not waited for', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a');
  const b = await h.addHost('host-b');
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'web', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/web/start', { host: 'host-a' });
  await h.hostDown('host-a');
  // The user gives up on host-a: the VM is stopped (its host cannot be reached) and started elsewhere.
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/web/stop')).state, 'stopped');
  const startedAt = Date.now();
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms/web/start', { host: 'host-b' });
  t.is(vm.state, 'running');
  t.is(vm.host, 'host-b');
  t.true(Date.now() - startedAt < 3000, 'the start did not wait for the dead host');
  t.is(b.authorized.at(-1)?.siteKey, b.publicKey!, "host-b's MAC ownership was told the VM lives there now");
  t.is(b.authorized.at(-1)?.mac, vm.mac);
});

test('vm lifecycle: create → start (placed) → stop → start → delete, with the state machine enforced', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a', { memoryMib: 2048 });
  await h.addHost('host-b', { memoryMib: 4096 });
  await h.addImage();
  await apiError(t, h.admin.request('POST', '/v1/vms', { name: 'web', image: 'nope' }), 400, 'unknown_image');
  await apiError(t, h.admin.request('POST', '/v1/vms', { name: 'bad name!', image: 'tiny' }), 400, 'bad_request');
  await apiError(
    t,
    h.admin.request('POST', '/v1/vms', { name: 'web', image: 'tiny', colour: 'red' }),
    400,
    'bad_request',
  );
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms', { name: 'web', image: 'tiny', memory_mib: 512 });
  t.is(vm.state, 'defined');
  t.regex(vm.mac, /^02:68:77:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$/);
  t.is(parseInt(vm.mac.slice(0, 2), 16) & 0b11, 0b10, 'locally administered unicast');
  await apiError(t, h.admin.request('POST', '/v1/vms', { name: 'web', image: 'tiny' }), 409, 'name_taken');
  await apiError(t, h.admin.request('POST', '/v1/vms', { name: 'web2', image: 'tiny', mac: vm.mac }), 409, 'mac_taken');

  // Invalid transitions are refused with a clear 409 and change nothing.
  let err = await apiError(t, h.admin.request('POST', '/v1/vms/web/migrate', {}), 409, 'invalid_transition');
  t.regex(err.message, /vm web is defined; migrate is allowed only when it is running/);
  await apiError(t, h.admin.request('POST', '/v1/vms/web/stop', {}), 409, 'invalid_transition');

  const running = await h.admin.request<VmRecord>('POST', '/v1/vms/web/start', {});
  t.is(running.state, 'running');
  t.is(running.host, 'host-b', 'placed on the host with the most free memory');
  t.is(await h.host('host-b').hv.state('web'), 'running');
  const b = await h.admin.request<HostView>('GET', '/v1/hosts/host-b');
  t.deepEqual(b.free, { cpus: 3, memory_mib: 3584 });
  t.deepEqual(b.vms, ['web']);

  err = await apiError(t, h.admin.request('POST', '/v1/vms/web/start', {}), 409, 'invalid_transition');
  t.regex(err.message, /running; start is allowed only when it is defined, stopped, failed/);
  err = await apiError(t, h.admin.request('DELETE', '/v1/vms/web'), 409, 'invalid_transition');
  t.regex(err.message, /stop it first/);

  const stopped = await h.admin.request<VmRecord>('POST', '/v1/vms/web/stop', {});
  t.is(stopped.state, 'stopped');
  t.is(await h.host('host-b').hv.state('web'), 'absent');
  t.deepEqual((await h.admin.request<HostView>('GET', '/v1/hosts/host-b')).free, { cpus: 4, memory_mib: 4096 });

  const again = await h.admin.request<VmRecord>('POST', '/v1/vms/web/start', { host: 'host-a' });
  t.is(again.host, 'host-a', 'the chosen host');
  await h.admin.request('POST', '/v1/vms/web/stop', {});
  t.deepEqual(await h.admin.request('DELETE', '/v1/vms/web'), { deleted: 'web' });
  await apiError(t, h.admin.request('GET', '/v1/vms/web'), 404, 'not_found');
  t.true(vm.generation < again.generation);
});

test('start with wait=false answers 202 in state starting; a second operation meanwhile is busy', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'slow', image: 'tiny' });
  a.hv.delayMs = 300;
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms/slow/start', { wait: false });
  t.is(vm.state, 'starting');
  await apiError(t, h.admin.request('POST', '/v1/vms/slow/stop', {}), 409, 'invalid_transition');
  await waitFor(
    async () => (await h.admin.request<VmRecord>('GET', '/v1/vms/slow')).state === 'running',
    5000,
    'running',
  );
  a.hv.delayMs = 300;
  const stop = h.admin.request<VmRecord>('POST', '/v1/vms/slow/stop', {});
  await new Promise((r) => setTimeout(r, 50));
  await apiError(t, h.admin.request('POST', '/v1/vms/slow/migrate', {}), 409, 'busy');
  t.is((await stop).state, 'stopped');
});

test('placement honours CPUs, memory, site and labels; nothing fits → 409 no_host that says why', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a', { cpus: 2, memoryMib: 1024, site: 'dc1' });
  await h.addHost('host-b', { cpus: 8, memoryMib: 8192, site: 'dc2', labels: { gpu: 'yes' } });
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'small', image: 'tiny', site: 'dc1' });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/small/start', {})).host, 'host-a');
  await h.admin.request('POST', '/v1/vms', { name: 'big', image: 'tiny', cpus: 4, memory_mib: 2048 });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/big/start', {})).host, 'host-b');
  await h.admin.request('POST', '/v1/vms', { name: 'gpu', image: 'tiny', labels: { gpu: 'yes' }, memory_mib: 7000 });
  const err = await apiError(t, h.admin.request('POST', '/v1/vms/gpu/start', {}), 409, 'no_host');
  t.regex(err.message, /no host fits vm gpu .*: host-a lacks label gpu=yes; host-b has 6144 MiB free, needs 7000/);
  t.is((await h.admin.request<VmRecord>('GET', '/v1/vms/gpu')).state, 'defined', 'a refused start changes nothing');
  await apiError(t, h.admin.request('POST', '/v1/vms/gpu/start', { host: 'host-a' }), 409, 'no_host');
  await apiError(t, h.admin.request('POST', '/v1/vms/gpu/start', { host: 'host-z' }), 404, 'not_found');
});

test('migrate: incoming on the destination, expect, QMP migrate, confirm, source cleaned up', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a', { memoryMib: 8192 });
  const b = await h.addHost('host-b');
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'db', image: 'tiny' });
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/db/start', {})).host, 'host-a');
  a.hv.guests.get('db')!.memory = 'state written on host-a';
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms/db/migrate', {});
  t.is(vm.state, 'running');
  t.is(vm.host, 'host-b', 'the only other host');
  t.is(vm.target, null);
  t.is(vm.error, null);
  t.deepEqual(b.expects, [vm.mac], 'the destination daemon was told the MAC is about to arrive');
  t.is(b.hv.guests.get('db')?.memory, 'state written on host-a', 'the guest state arrived');
  await waitFor(async () => (await a.hv.state('db')) === 'absent', 2000, 'source cleaned up');
  t.deepEqual(
    b.hv.calls.filter((c) => !c.startsWith('state')),
    ['incoming db'],
  );
  // Migrating to the host it runs on is refused.
  await apiError(t, h.admin.request('POST', '/v1/vms/db/migrate', { host: 'host-b' }), 409, 'same_host');
  // And back to host-a, by name.
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/db/migrate', { host: 'host-a' })).host, 'host-a');
});

test('a failed migration leaves the vm running on the source and cleans up the destination', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a', { memoryMib: 8192 });
  const b = await h.addHost('host-b');
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'db', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/db/start', { host: 'host-a' });
  a.hv.failNext.migrate = 'migration stream broke (Connection reset by peer)';
  const err = await apiError(
    t,
    h.admin.request('POST', '/v1/vms/db/migrate', { host: 'host-b' }),
    409,
    'migration_failed',
  );
  t.regex(err.message, /keeps running on host-a: .*Connection reset by peer/);
  const vm = await h.admin.request<VmRecord>('GET', '/v1/vms/db');
  t.is(vm.state, 'running');
  t.is(vm.host, 'host-a');
  t.is(vm.target, null);
  t.regex(vm.error!, /migration to host-b failed/);
  t.is(await a.hv.state('db'), 'running');
  await waitFor(async () => (await b.hv.state('db')) === 'absent', 2000, 'destination cleaned up');
  // The destination failing to start the incoming guest is the same story.
  b.hv.failNext.incoming = 'cannot allocate memory';
  await apiError(t, h.admin.request('POST', '/v1/vms/db/migrate', {}), 409, 'migration_failed');
  t.is((await h.admin.request<VmRecord>('GET', '/v1/vms/db')).host, 'host-a');
  // A host without a migration address cannot be a destination.
  await h.addHost('host-c', { address: null });
  await apiError(t, h.admin.request('POST', '/v1/vms/db/migrate', { host: 'host-c' }), 409, 'no_host');
  // The next migration works: nothing was left in a half state.
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/db/migrate', { host: 'host-b' })).host, 'host-b');
});

test('a guest that dies fails its vm; a failed vm can be started again; unknown guests are stopped', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  await h.addImage();
  await h.admin.request('POST', '/v1/vms', { name: 'crashy', image: 'tiny' });
  await h.admin.request('POST', '/v1/vms/crashy/start', {});
  a.hv.crash('crashy');
  await waitFor(
    async () => (await h.admin.request<VmRecord>('GET', '/v1/vms/crashy')).state === 'failed',
    5000,
    'vm failed',
  );
  t.regex(
    (await h.admin.request<VmRecord>('GET', '/v1/vms/crashy')).error!,
    /the guest on host-a is gone \(QEMU exited\)/,
  );
  t.is((await h.admin.request<VmRecord>('POST', '/v1/vms/crashy/start', {})).state, 'running');
  // A guest the coordinator knows nothing about (left from an earlier life) is stopped.
  await a.hv.launch({
    name: 'ghost',
    mac: '02:00:00:00:00:99',
    cpus: 1,
    memoryMib: 64,
    kernel: '',
    initrd: '',
    cmdline: '',
    bridge: 'br-hw',
  });
  await waitFor(async () => (await a.hv.state('ghost')) === 'absent', 6000, 'ghost stopped');
  t.is(await a.hv.state('crashy'), 'running');
});

test('a start that fails on the host (bad image checksum) fails the vm with the reason', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a');
  await h.admin.request('POST', '/v1/images', {
    ...h.image,
    name: 'broken',
    sha256: { ...h.image.sha256, initrd: 'ab'.repeat(32) },
  });
  await h.admin.request('POST', '/v1/vms', { name: 'v', image: 'broken' });
  const err = await apiError(t, h.admin.request('POST', '/v1/vms/v/start', {}), 409, 'start_failed');
  t.regex(err.message, /has SHA-256 [0-9a-f]{64}, but the image says abab/);
  const vm = await h.admin.request<VmRecord>('GET', '/v1/vms/v');
  t.is(vm.state, 'failed');
  t.deepEqual(await h.admin.request('DELETE', '/v1/vms/v'), { deleted: 'v' });
});

test("an operation the previous leader left unfinished is settled from the hosts' reports", async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  await h.addImage();
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms', { name: 'orphan', image: 'tiny' });
  // As if a leader had written "starting" and died before the result: the guest does run on host-a.
  await h.coordinator.store.put('vms', 'orphan', { ...vm, state: 'starting', host: 'host-a' });
  await a.hv.launch({
    name: 'orphan',
    mac: vm.mac,
    cpus: 1,
    memoryMib: 256,
    kernel: '',
    initrd: '',
    cmdline: '',
    bridge: 'br-hw',
  });
  await waitFor(
    async () => (await h.admin.request<VmRecord>('GET', '/v1/vms/orphan')).state === 'running',
    6000,
    'settled running',
  );
  // And a migration left half-way whose destination never got the guest: back to the source.
  const cur = await h.admin.request<VmRecord>('GET', '/v1/vms/orphan');
  await h.addHost('host-b');
  await h.coordinator.store.put('vms', 'orphan', { ...cur, state: 'migrating', target: 'host-b' });
  await waitFor(
    async () => (await h.admin.request<VmRecord>('GET', '/v1/vms/orphan')).state === 'running',
    6000,
    'settled back',
  );
  const back = await h.admin.request<VmRecord>('GET', '/v1/vms/orphan');
  t.is(back.host, 'host-a');
  t.regex(back.error!, /stayed on the source/);
});

test('DHCP reservations: a vm created with an ip reaches the site that serves DHCP', async (t) => {
  const h = await harness(t);
  const home = await h.addHost('home', { dhcp: true, available: false });
  await h.addImage();
  const vm = await h.admin.request<VmRecord>('POST', '/v1/vms', {
    name: 'printer',
    image: 'tiny',
    ip: '198.51.100.50',
  });
  t.is(vm.ip, '198.51.100.50');
  await apiError(
    t,
    h.admin.request('POST', '/v1/vms', { name: 'other', image: 'tiny', ip: '198.51.100.50' }),
    409,
    'ip_taken',
  );
  await apiError(
    t,
    h.admin.request('POST', '/v1/vms', { name: 'other', image: 'tiny', ip: '300.1.1.1' }),
    400,
    'bad_request',
  );
  await waitFor(() => home.reservations?.length === 1, 5000, 'reservations at home');
  t.deepEqual(home.reservations, [{ mac: vm.mac, ip: '198.51.100.50', vm: 'printer' }]);
  t.deepEqual(
    (await h.admin.request<{ reservations: unknown[] }>('GET', '/v1/reservations')).reservations,
    home.reservations,
  );
  await h.admin.request('DELETE', '/v1/vms/printer');
  await waitFor(() => home.reservations?.length === 0, 5000, 'reservation gone');
});

test('images: validated on POST, listed, refused for delete while in use', async (t) => {
  const h = await harness(t);
  await apiError(
    t,
    h.admin.request('POST', '/v1/images', {
      name: 'x',
      kernel: 'ftp://a/b',
      initrd: '/i',
      sha256: { kernel: 'a'.repeat(64), initrd: 'b'.repeat(64) },
    }),
    400,
    'bad_request',
  );
  await apiError(
    t,
    h.admin.request('POST', '/v1/images', {
      name: 'x',
      kernel: '/k',
      initrd: '/i',
      sha256: { kernel: 'short', initrd: 'b'.repeat(64) },
    }),
    400,
    'bad_request',
  );
  await apiError(
    t,
    h.admin.request('POST', '/v1/images', {
      name: 'x',
      kernel: 'rel/k',
      initrd: '/i',
      sha256: { kernel: 'a'.repeat(64), initrd: 'b'.repeat(64) },
    }),
    400,
    'bad_request',
  );
  const img = await h.admin.request<ImageRecord>('POST', '/v1/images', h.image);
  t.is(img.name, 'tiny');
  t.truthy(img.created_at);
  await apiError(t, h.admin.request('POST', '/v1/images', h.image), 409, 'name_taken');
  await h.admin.request('POST', '/v1/vms', { name: 'v', image: 'tiny' });
  await apiError(t, h.admin.request('DELETE', '/v1/images/tiny'), 409, 'in_use');
  await h.admin.request('DELETE', '/v1/vms/v');
  t.deepEqual(await h.admin.request('DELETE', '/v1/images/tiny'), { deleted: 'tiny' });
});

test('images in the config are known at start; relative locations resolve against image_server', async (t) => {
  const sum = 'c'.repeat(64);
  const h = await harness(t, {
    configExtra: `image_server: http://192.0.2.10:8080/images\nimage_sources: ["192.0.2.10:80"]\nimages:\n  - { name: cfg, kernel: k/vmlinux, initrd: http://192.0.2.10/i.gz, sha256: { kernel: ${sum}, initrd: ${sum} }, cmdline: "quiet hw.x=1" }`,
  });
  await waitFor(
    async () => (await h.admin.request<{ images: ImageRecord[] }>('GET', '/v1/images')).images.length === 1,
    3000,
    'config image',
  );
  const img = await h.admin.request<ImageRecord>('GET', '/v1/images/cfg');
  t.is(img.kernel, 'http://192.0.2.10:8080/images/k/vmlinux');
  t.is(img.initrd, 'http://192.0.2.10/i.gz');
  t.is(img.cmdline, 'quiet hw.x=1');
});

test('the image cache fetches over HTTP once, verifies SHA-256, never keeps a bad file', async (t) => {
  const dir = fs.mkdtempSync(path.join((await import('node:os')).tmpdir(), 'hw-cache-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const content = crypto.randomBytes(300_000);
  const sum = crypto.createHash('sha256').update(content).digest('hex');
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    if (req.url === '/good') res.end(content);
    else if (req.url === '/tampered') res.end(Buffer.concat([content.subarray(0, 1000), Buffer.from('x')]));
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const cache = new ImageCache(path.join(dir, 'cache'), silentLogger);
  const policy = { sources: ['127.0.0.1'], allowLocal: false }; // loopback: only because it is listed
  const [p1, p2] = await Promise.all([
    cache.file(`${base}/good`, sum, 'kernel', policy),
    cache.file(`${base}/good`, sum, 'kernel', policy),
  ]);
  t.is(p1, p2);
  t.true(fs.readFileSync(p1).equals(content));
  t.is(requests, 1, 'concurrent requests share one download');
  await cache.file(`${base}/good`, sum, 'kernel', policy);
  t.is(requests, 1, 'cached');
  const other = 'd'.repeat(64);
  const err = await t.throwsAsync(cache.file(`${base}/tampered`, other, 'initrd', policy));
  t.regex(err!.message, /initrd: .*\/tampered has SHA-256 [0-9a-f]{64}, but the image says d{64}/);
  await t.throwsAsync(cache.file(`${base}/missing`, other, 'disk', policy), { message: /answered HTTP 404/ });
  t.deepEqual(fs.readdirSync(path.join(dir, 'cache')), [sum], 'no partial or wrong file left behind');
  await t.throwsAsync(cache.file(`http://127.0.0.1:${await closedPort()}/x`, other, 'kernel', policy), {
    message: /cannot fetch .*ECONNREFUSED/,
  });
});

test('CLI: host list, vm create/start/migrate/stop/delete/list/show, tables and --json, env defaults', async (t) => {
  const h = await harness(t);
  await h.addHost('host-a', { site: 'dc1', labels: { ssd: 'yes' } });
  await h.addHost('host-b', { site: 'dc2' });
  await h.addImage();
  const tokenFile = path.join(h.dir, 'admin.token');
  const cli = async (...argv: string[]) => {
    let out = '';
    const w = new Writable({
      write(c, _e, cb) {
        out += c;
        cb();
      },
    });
    await runCoordinatorCli([...argv, '--coordinator', h.coordinator.url, '--token-file', tokenFile], w);
    return out;
  };
  const hosts = await cli('host', 'list');
  t.regex(hosts, /^NAME\s+SITE\s+STATE\s+HYPERVISOR\s+CPUS FREE\s+MEMORY FREE/);
  t.regex(hosts, /host-a\s+dc1\s+up\s+fake\/tcg\s+4\/4\s+4096\/4096 MiB\s+0\s+ssd=yes/);
  t.deepEqual(
    JSON.parse(await cli('host', 'list', '--site', 'dc2', '--json')).hosts.map((x: HostView) => x.name),
    ['host-b'],
  );
  t.regex(
    await cli('vm', 'create', 'web', '--image', 'tiny', '--memory', '128', '--cpus', '2'),
    /vm web defined \(mac 02:68:77:/,
  );
  t.regex(await cli('vm', 'start', 'web', '--host', 'host-a'), /vm web running on host-a/);
  t.regex(await cli('vm', 'migrate', 'web', '--to', 'host-b'), /vm web migrated: running on host-b/);
  const list = await cli('vm', 'list');
  t.regex(list, /^NAME\s+STATE\s+HOST\s+IMAGE/);
  t.regex(list, /web\s+running\s+host-b\s+tiny\s+2\s+128 MiB\s+02:68:77/);
  const shown = JSON.parse(await cli('vm', 'show', 'web', '--json')) as VmRecord;
  t.is(shown.host, 'host-b');
  t.regex(await cli('vm', 'show', 'web'), /state:\s+running\nhost:\s+host-b/);
  t.regex(await cli('vm', 'stop', 'web'), /vm web stopped/);
  t.regex(await cli('vm', 'delete', 'web'), /vm web deleted/);
  t.is((await cli('vm', 'list')).trim(), '(none)');
  const e = await t.throwsAsync(cli('vm', 'start', 'nope'));
  t.regex(e!.message, /no vm named nope/);
  // From the environment instead of flags.
  process.env.HOMEWIRE_COORDINATOR = h.coordinator.url;
  process.env.HOMEWIRE_TOKEN_FILE = tokenFile;
  t.teardown(() => {
    delete process.env.HOMEWIRE_COORDINATOR;
    delete process.env.HOMEWIRE_TOKEN_FILE;
  });
  let out = '';
  await runCoordinatorCli(
    ['host', 'list', '--json'],
    new Writable({
      write(c, _e, cb) {
        out += c;
        cb();
      },
    }),
  );
  t.is(JSON.parse(out).hosts.length, 2);
  // A wrong token is refused.
  fs.writeFileSync(path.join(h.dir, 'wrong.token'), 'not-the-admin-token-at-all\n');
  await t.throwsAsync(
    runCoordinatorCli(
      ['vm', 'list', '--coordinator', h.coordinator.url, '--token-file', path.join(h.dir, 'wrong.token')],
      new Writable({
        write(_c, _e, cb) {
          cb();
        },
      }),
    ),
    { message: /missing or wrong bearer token/ },
  );
});

async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

test('a client with several coordinator URLs moves past one that is down', async (t) => {
  const h = await harness(t);
  const c = new CoordinatorClient([`http://127.0.0.1:${await closedPort()}`, h.coordinator.url], h.adminToken);
  t.deepEqual((await c.request<{ vms: VmRecord[] }>('GET', '/v1/vms', undefined, { retryForMs: 2000 })).vms, []);
  t.is(c.url, h.coordinator.url);
});
