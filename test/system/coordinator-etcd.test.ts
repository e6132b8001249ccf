// Two coordinators on a real etcd (Debian's etcd-server, started here on loopback with a temp data dir):
// one is elected, the standby proxies to it; SIGKILL the leader and the standby takes over within 5 s with
// every VM record intact, and goes on acting (host heartbeats, VM operations). Skipped without etcd.
import type { ExecutionContext } from 'ava';
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { HostAgent } from '../../src/agent/agent.ts';
import { parseAgentConfig } from '../../src/agent/config.ts';
import { FakeCloud, FakeHypervisor } from '../../lab/twins/hypervisor.ts';
import { exited, stopChild } from '../../src/proc.ts';
import { CoordinatorClient } from '../../src/coordinator/client.ts';
import { etcdClient, EtcdStore } from '../../src/coordinator/etcd-store.ts';
import { waitFor } from '../../lab/coordinator/harness.ts';
import type { HostView, VmRecord } from '../../src/coordinator/types.ts';

interface CoordinatorStatus {
  leader: boolean;
  leader_url: string | null;
  store: string;
}
import { silentLogger } from '../../src/log.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const etcdTest = testIf(missingFor({ programs: { etcd: 'etcd-server' } }));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function kill(p: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<unknown> {
  return stopChild(p, { signal, graceMs: 3000 });
}

/** etcd on 127.0.0.1 with a temp data dir; killed and removed at teardown. */
async function startEtcd(t: ExecutionContext, dir: string): Promise<string> {
  const client = await freePort();
  const peer = await freePort();
  const url = `http://127.0.0.1:${client}`;
  const log = fs.openSync(path.join(dir, 'etcd.log'), 'a');
  const etcd = spawn(
    'etcd',
    [
      '--name',
      'hwtest',
      '--data-dir',
      path.join(dir, 'etcd'),
      '--listen-client-urls',
      url,
      '--advertise-client-urls',
      url,
      '--listen-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${peer}`,
      '--initial-cluster',
      `hwtest=http://127.0.0.1:${peer}`,
    ],
    { stdio: ['ignore', log, log] },
  );
  fs.closeSync(log);
  t.teardown(() => kill(etcd, 'SIGKILL'));
  await waitFor(
    async () => {
      if (etcd.exitCode !== null)
        throw new Error(`etcd exited: ${fs.readFileSync(path.join(dir, 'etcd.log'), 'utf8').slice(-2000)}`);
      try {
        return (await fetch(`${url}/health`)).ok;
      } catch {
        return false;
      }
    },
    15_000,
    'etcd healthy',
  );
  return `127.0.0.1:${client}`;
}

/** `homewire coordinator --config FILE` as its own process (so the test can SIGKILL it). */
function spawnCoordinator(file: string, logFile: string): ChildProcess {
  const fd = fs.openSync(logFile, 'a');
  const p = spawn(process.execPath, ['bin/homewire.mjs', 'coordinator', '--config', file], {
    cwd: ROOT,
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  return p;
}

etcdTest(`two coordinators on etcd: the standby takes over within 5 s when the leader dies, no VM lost`, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-etcd-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const etcd = await startEtcd(t, dir);
  const admin = crypto.randomBytes(24).toString('base64url');
  fs.writeFileSync(path.join(dir, 'admin.token'), `${admin}\n`, { mode: 0o600 });
  const urls: string[] = [];
  const procs: ChildProcess[] = [];
  for (const name of ['c1', 'c2']) {
    const port = await freePort();
    urls.push(`http://127.0.0.1:${port}`);
    const file = path.join(dir, `${name}.yaml`);
    fs.writeFileSync(
      file,
      `${[
        `listen: 127.0.0.1:${port}`,
        `store: etcd://${etcd}`,
        `data_dir: ${path.join(dir, name)}`,
        'admin_token_file: admin.token',
        'log_level: debug',
      ].join('\n')}\n`,
    );
    procs.push(spawnCoordinator(file, path.join(dir, `${name}.log`)));
  }
  t.teardown(async () => {
    for (const p of procs) await kill(p);
  });
  const logs = () =>
    ['c1', 'c2']
      .map(
        (n) =>
          `--- ${n} ---\n${fs
            .readFileSync(path.join(dir, `${n}.log`), 'utf8')
            .split('\n')
            .slice(-15)
            .join('\n')}`,
      )
      .join('\n');
  const status = async (u: string) => {
    try {
      return await new CoordinatorClient([u], admin).request<CoordinatorStatus>('GET', '/v1/status', undefined, {
        timeoutMs: 2000,
      });
    } catch {
      return null;
    }
  };
  try {
    await waitFor(
      async () => {
        const all = await Promise.all(urls.map(status));
        return all.every((s) => s?.leader_url) && all.filter((s) => s?.leader).length === 1;
      },
      20_000,
      'both up, one leader, known to both',
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${logs()}`);
  }
  const states = await Promise.all(urls.map(status));
  const leaderIdx = states.findIndex((s) => s?.leader);
  const standbyIdx = 1 - leaderIdx;
  t.is(states[standbyIdx]?.leader_url, urls[leaderIdx], 'the standby knows the leader');
  t.is(states[0]?.store, 'etcd');

  // A host agent that knows both coordinators, with its own token (minted through the standby, which
  // proxies to the leader); all admin calls go to the standby.
  const viaStandby = new CoordinatorClient([urls[standbyIdx]], admin);
  const minted = await viaStandby.request<{ token: string }>('POST', '/v1/hosts', { name: 'host-a' });
  fs.writeFileSync(path.join(dir, 'host-a.token'), `${minted.token}\n`, { mode: 0o600 });
  const cloud = new FakeCloud();
  const hv = new FakeHypervisor(cloud, 'host-a');
  const agent = new HostAgent(
    parseAgentConfig(
      {
        url: urls,
        token_file: 'host-a.token',
        cpus: 16,
        memory_mib: 16384,
        cache_dir: 'cache',
        state_dir: 'state',
        allow_local_images: true,
      },
      path.join(dir, 'agent.yaml'),
      'coordinator',
      'host-a',
    ),
    {
      name: 'host-a',
      bridge: 'br-hw',
      log: silentLogger,
      hypervisor: hv,
      address: '192.0.2.2',
      expect: () => ({ ok: true }),
    },
  );
  await agent.start();
  t.teardown(() => agent.stop());
  await waitFor(
    async () => (await viaStandby.request<{ hosts: HostView[] }>('GET', '/v1/hosts')).hosts.length === 1,
    10_000,
    'host registered',
  );
  const k = path.join(dir, 'vmlinux');
  fs.writeFileSync(k, 'kernel');
  const sum = crypto.createHash('sha256').update('kernel').digest('hex');
  await viaStandby.request('POST', '/v1/images', {
    name: 'tiny',
    kernel: k,
    initrd: k,
    sha256: { kernel: sum, initrd: sum },
  });
  for (let i = 0; i < 5; i++)
    await viaStandby.request('POST', '/v1/vms', { name: `vm${i}`, image: 'tiny', memory_mib: 128 });
  for (const i of [0, 1, 2])
    t.is((await viaStandby.request<VmRecord>('POST', `/v1/vms/vm${i}/start`, {})).state, 'running');
  await viaStandby.request('POST', '/v1/vms/vm2/stop', {});
  const before = (await viaStandby.request<{ vms: VmRecord[] }>('GET', '/v1/vms')).vms;
  t.deepEqual(
    before.map((v) => `${v.name}:${v.state}`),
    ['vm0:running', 'vm1:running', 'vm2:stopped', 'vm3:defined', 'vm4:defined'],
  );

  // The leader dies without a word (no resign): its lease must expire.
  const killedAt = Date.now();
  procs[leaderIdx].kill('SIGKILL');
  await exited(procs[leaderIdx]);
  await waitFor(async () => (await status(urls[standbyIdx]))?.leader === true, 5_000, 'the standby leads').catch(
    (err) => {
      throw new Error(`${err.message}\n${logs()}`);
    },
  );
  const takeoverMs = Date.now() - killedAt;
  t.log(`takeover after ${takeoverMs} ms`);
  t.true(takeoverMs < 5000);

  const leader = new CoordinatorClient([urls[standbyIdx]], admin);
  const after = (await leader.request<{ vms: VmRecord[] }>('GET', '/v1/vms')).vms;
  t.deepEqual(after, before, 'every VM record intact');
  // The new leader acts: the agent found it (second URL), the host stays up, operations run.
  await waitFor(
    async () =>
      agent.stats.heartbeats > 0 && (await leader.request<HostView>('GET', '/v1/hosts/host-a')).state === 'up',
    5000,
    'host up',
  );
  t.is((await leader.request<VmRecord>('POST', '/v1/vms/vm3/start', {})).state, 'running');
  t.is((await leader.request<VmRecord>('POST', '/v1/vms/vm0/stop', {})).state, 'stopped');
  t.is(await hv.state('vm3'), 'running');
  t.is(await hv.state('vm1'), 'running', 'guests kept running through the failover');
  // A client given both URLs still works with the first one dead.
  const both = new CoordinatorClient(urls, admin);
  t.is((await both.request<{ vms: VmRecord[] }>('GET', '/v1/vms', undefined, { retryForMs: 3000 })).vms.length, 5);
});

etcdTest(`etcd store writes are fenced by leadership`, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-etcd-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const etcd = await startEtcd(t, dir);
  const client = etcdClient([`http://${etcd}`]);
  t.teardown(() => client.close());
  const store = new EtcdStore(client, false);
  await t.throwsAsync(store.put('vms', 'x', { a: 1 }), { message: /not the leader/ });
  const lease = client.lease(5);
  const fence = 'homewire/test-fence';
  await lease.put(fence).value('me');
  store.fence = fence;
  t.true(await store.create('vms', 'x', { a: 1 }));
  t.false(await store.create('vms', 'x', { a: 2 }), 'create does not overwrite');
  await store.put('vms', 'y', { b: 1 });
  t.deepEqual(await store.list('vms'), [{ a: 1 }, { b: 1 }]);
  await lease.revoke(); // leadership gone: the fence key disappears with the lease
  await t.throwsAsync(store.put('vms', 'x', { a: 3 }), { message: /lost its leadership/ });
  await t.throwsAsync(store.create('vms', 'z', { a: 3 }), { message: /lost its leadership/ });
  t.deepEqual(await store.get('vms', 'x'), { a: 1 });
  t.true(
    await (async () => {
      store.fence = null;
      return true;
    })(),
  );
});
