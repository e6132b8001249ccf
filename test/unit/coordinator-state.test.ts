// What the coordinator decides about VM state beyond RAM (issue 11), on the in-memory hypervisor twin: where a
// VM's disk lives and how it follows the VM (migrate, stop, start elsewhere, delete, a host that was down),
// warm images (snapshot, one VM at a time, clones, hosts whose QEMU differs), the blob store that holds them
// (a host cannot plant content under another hash), and an agent restart failing its predecessor's commands.
import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import { Harness, waitFor } from '../../lab/coordinator/harness.ts';
import { ApiError, type ImageRecord, type VmRecord } from '../../src/coordinator/types.ts';

async function harness(t: ExecutionContext): Promise<Harness> {
  const h = await Harness.start();
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

test('a disk follows its VM: migrate moves it, stop keeps it, a start elsewhere copies it first, delete removes it everywhere', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  const b = await h.addHost('host-b');
  await h.addImage();
  const api = h.admin;
  const vm = await api.request<VmRecord>('POST', '/v1/vms', { name: 'web', image: 'tiny', disk_gib: 4 });
  t.is(vm.disk_gib, 4);
  t.is(vm.disk_host, null);
  const started = await api.request<VmRecord>('POST', '/v1/vms/web/start', { host: 'host-a' });
  t.is(started.disk_host, 'host-a');
  a.hv.diskContent.set('web', 'written on host-a');

  const moved = await api.request<VmRecord>('POST', '/v1/vms/web/migrate', { host: 'host-b' });
  t.is(moved.disk_host, 'host-b');
  t.is(b.hv.diskContent.get('web'), 'written on host-a', 'the migration carried the disk');
  t.true(b.hv.guests.get('web')!.spec.disk !== undefined, 'the destination was told the VM has a disk');
  await waitFor(() => !a.hv.diskContent.has('web'), 5000, 'host-a dropped its stale copy');

  await api.request('POST', '/v1/vms/web/stop', {});
  t.is(b.hv.diskContent.get('web'), 'written on host-a', 'stop keeps the disk');
  // A start without a host goes where the disk is.
  t.is((await api.request<VmRecord>('POST', '/v1/vms/web/start', {})).host, 'host-b');
  await api.request('POST', '/v1/vms/web/stop', {});

  // A start elsewhere: host-b offers the disk, host-a copies it, then host-b drops its copy.
  const there = await api.request<VmRecord>('POST', '/v1/vms/web/start', { host: 'host-a' });
  t.is(there.disk_host, 'host-a');
  t.is(a.hv.diskContent.get('web'), 'written on host-a', 'the disk was copied before the start');
  t.true(b.hv.calls.includes('stop web'));
  await waitFor(() => !b.hv.diskContent.has('web'), 5000, 'host-b dropped its copy');

  // A failed start on another host keeps the disk where it was.
  await api.request('POST', '/v1/vms/web/stop', {});
  b.hv.failNext.launch = 'no room at the inn';
  await apiError(t, api.request('POST', '/v1/vms/web/start', { host: 'host-b' }), 409, 'start_failed');
  const failed = await api.request<VmRecord>('GET', '/v1/vms/web');
  t.is(failed.disk_host, 'host-a', 'the record still has the disk on host-a');
  await waitFor(() => !b.hv.diskContent.has('web'), 5000, "host-b's partial copy removed");
  t.is(a.hv.diskContent.get('web'), 'written on host-a', "host-a's disk untouched");

  await api.request('DELETE', '/v1/vms/web');
  await waitFor(() => !a.hv.diskContent.has('web') && !b.hv.diskContent.has('web'), 5000, 'disk gone everywhere');
  t.pass();
});

test("a VM whose disk host is down cannot start elsewhere; a deleted VM's disk is removed when its host reports", async (t) => {
  const h = await harness(t);
  await h.addHost('host-a');
  await h.addHost('host-b');
  await h.addImage();
  const api = h.admin;
  await api.request('POST', '/v1/vms', { name: 'db', image: 'tiny', disk_gib: 1 });
  await api.request('POST', '/v1/vms/db/start', { host: 'host-a' });
  await api.request('POST', '/v1/vms/db/stop', {});
  await h.hostDown('host-a');
  const err = await apiError(t, api.request('POST', '/v1/vms/db/start', { host: 'host-b' }), 409, 'disk_unavailable');
  t.regex(err.message, /disk is on host-a, which is down/);

  // A host that comes back with a disk of a VM deleted meanwhile removes it.
  await api.request('DELETE', '/v1/vms/db');
  const back = await h.addHost('host-a2');
  back.hv.diskContent.set('orphan', 'left over');
  back.hv.diskContent.set('db', 'left over too');
  await waitFor(() => back.hv.diskContent.size === 0, 10_000, 'orphaned disks removed');
  t.pass();
});

test('warm images: snapshot publishes state and disk by hash; resumed as one VM at a time; clones get a new MAC; later starts boot', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  const b = await h.addHost('host-b');
  await h.addImage();
  const api = h.admin;
  await api.request('POST', '/v1/vms', { name: 'web', image: 'tiny', disk_gib: 2, memory_mib: 512 });
  await api.request('POST', '/v1/vms/web/start', { host: 'host-a' });
  a.hv.diskContent.set('web', 'the disk at the snapshot');
  const img = await api.request<ImageRecord>('POST', '/v1/vms/web/snapshot', { image: 'web-warm' });
  const w = img.warm!;
  t.is(w.source_vm, 'web');
  t.is(w.disk_gib, 2);
  t.is(w.manifest.memory_mib, 512);
  t.truthy(w.overlay);
  t.is(img.kernel, h.image.kernel, 'the warm image boots the same kernel');
  t.true(
    h.coordinator.blobs.has(w.state.sha256) && h.coordinator.blobs.has(w.overlay!.sha256),
    'both files in the blob store',
  );
  await apiError(t, api.request('POST', '/v1/vms/web/snapshot', { image: 'web-warm' }), 409, 'name_taken');

  const web = await api.request<VmRecord>('GET', '/v1/vms/web');
  const web2 = await api.request<VmRecord>('POST', '/v1/vms', { name: 'web2', image: 'web-warm' });
  t.is(web2.mac, web.mac, 'the MAC is in the saved memory');
  t.is(web2.memory_mib, 512);
  await apiError(
    t,
    api.request('POST', '/v1/vms', { name: 'bad', image: 'web-warm', memory_mib: 256 }),
    400,
    'bad_request',
  );
  const busy = await apiError(t, api.request('POST', '/v1/vms/web2/start', {}), 409, 'mac_in_use');
  t.regex(busy.message, /vm web runs with the same MAC/);

  await api.request('POST', '/v1/vms/web/stop', {});
  const resumed = await api.request<VmRecord>('POST', '/v1/vms/web2/start', { host: 'host-b' });
  t.true(resumed.resumed);
  const g = b.hv.guests.get('web2')!;
  t.is(g.memory, 'resumed on host-b', 'the host resumed the saved state');
  t.truthy(g.spec.warm, 'with the warm files');
  t.is(b.hv.diskContent.get('web2'), 'warm disk of web2');

  // A clone: its own MAC, and the host's word that the guest must renew its lease.
  const clone = await api.request<VmRecord>('POST', '/v1/vms', { name: 'web3', image: 'web-warm', clone: true });
  t.not(clone.mac, web.mac);
  const cloneRun = await api.request<VmRecord>('POST', '/v1/vms/web3/start', { host: 'host-a' });
  t.regex(cloneRun.note ?? '', /renew/);
  await apiError(t, api.request('POST', '/v1/vms', { name: 'web4', image: 'tiny', clone: true }), 400, 'bad_request');

  // Resumed once: a later start boots the VM's own disk.
  await api.request('POST', '/v1/vms/web2/stop', {});
  await api.request('POST', '/v1/vms/web2/start', {});
  t.is(b.hv.guests.get('web2')!.memory, 'booted on host-b');
  t.is(b.hv.guests.get('web2')!.spec.warm, undefined);
});

test('a host whose QEMU differs from a warm image is not chosen, and a start forced onto it is refused with the reason', async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a', { qemuVersion: '7.2.22', memoryMib: 8192 });
  await h.addHost('host-b', { qemuVersion: '7.2.22' });
  await h.addHost('host-c', { qemuVersion: '8.1.0', memoryMib: 16384 });
  await h.addImage();
  const api = h.admin;
  await api.request('POST', '/v1/vms', { name: 'web', image: 'tiny' });
  await api.request('POST', '/v1/vms/web/start', { host: 'host-a' });
  await api.request('POST', '/v1/vms/web/snapshot', { image: 'web-warm' });
  t.true(a.hv.calls.includes('snapshot web'));
  await api.request('POST', '/v1/vms/web/stop', {});
  await api.request('POST', '/v1/vms', { name: 'w', image: 'web-warm' });
  const forced = await apiError(t, api.request('POST', '/v1/vms/w/start', { host: 'host-c' }), 409, 'no_host');
  t.regex(forced.message, /host-c, which cannot resume warm image web-warm: it has QEMU 8\.1\.0, not 7\.2\.22/);
  // host-c has the most free memory, so it would win placement; it does not match, host-a does.
  t.is((await api.request<VmRecord>('POST', '/v1/vms/w/start', {})).host, 'host-a');
});

test("the blob store keeps only what hashes to its name; a restarted agent's predecessor's commands fail at once", async (t) => {
  const h = await harness(t);
  const a = await h.addHost('host-a');
  const url = h.coordinator.url;
  const put = (sha: string, body: string, token = a.token) =>
    fetch(`${url}/v1/agent/blobs/${sha}`, { method: 'PUT', headers: { authorization: `Bearer ${token}` }, body });
  const good = 'saved guest state';
  const sha = crypto.createHash('sha256').update(good).digest('hex');
  const forged = crypto.createHash('sha256').update('something else').digest('hex');
  const bad = await put(forged, good);
  t.is(bad.status, 400, 'a body that does not hash to its name is refused');
  t.regex(((await bad.json()) as { error: { message: string } }).error.message, /hashes to/);
  t.false(h.coordinator.blobs.has(forged), 'nothing stored under the forged name');
  t.is(h.coordinator.blobs.stats.rejected, 1);
  t.is((await put(sha, good, h.adminToken)).status, 401, 'the admin token does not write blobs');
  t.is((await put(sha, good)).status, 201);
  const got = await fetch(`${url}/v1/agent/blobs/${sha}`, { headers: { authorization: `Bearer ${a.token}` } });
  t.is(await got.text(), good);
  t.is((await fetch(`${url}/v1/agent/blobs/${sha}`)).status, 401, 'reading needs the host token');

  // An agent that restarts (new boot id) never answers its predecessor's commands: they fail now.
  const z = await h.hostToken('host-z');
  const register = (bootId: string) =>
    fetch(`${url}/v1/agent/register`, {
      method: 'POST',
      headers: { authorization: `Bearer ${z.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        name: 'host-z',
        site: 'z',
        cpus: 1,
        memory_mib: 1024,
        labels: {},
        hypervisor: { kind: 'fake', available: true, accel: 'tcg' },
        address: '192.0.2.99',
        bridge: 'br-hw',
        boot_id: bootId,
      }),
    });
  t.is((await register('first-boot')).status, 200);
  const pending = h.coordinator.dispatch.send('host-z', { type: 'stop', name: 'x' }, 60_000);
  pending.catch(() => {});
  const at = Date.now();
  t.is((await register('second-boot')).status, 200);
  const err = (await t.throwsAsync(pending)) as ApiError;
  t.regex(err.message, /restarted its agent/);
  t.true(Date.now() - at < 2000, 'at once, not at the timeout');
});
