// Reconciliation on its own (src/coordinator/reconcile.ts): what the leader does with hosts' reports and with
// operations a dead leader left half-done. Real store (SQLite in a temp dir), real dispatcher; the hosts'
// agents are played by a loop that long-polls the dispatcher and answers as a host would.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { silentLogger } from '../../src/log.ts';
import { Dispatcher } from '../../src/coordinator/dispatch.ts';
import { HostRegistry } from '../../src/coordinator/hosts.ts';
import { Reconciler } from '../../src/coordinator/reconcile.ts';
import { SqliteStore } from '../../src/coordinator/store.ts';
import type { Command, CommandResult, GuestReport, VmRecord, VmState } from '../../src/coordinator/types.ts';
import { VmRecords } from '../../src/coordinator/vm-records.ts';

interface Bed {
  store: SqliteStore;
  records: VmRecords;
  reconciler: Reconciler;
  /** Commands each host received, as "type name". */
  received: Record<string, string[]>;
  /** What a host answers to confirm (resume): the guest's state afterwards. */
  confirmState: Record<string, VmState | 'paused' | 'absent'>;
  vm(name: string): Promise<VmRecord>;
  put(vm: Partial<VmRecord> & { name: string; state: VmState }): Promise<void>;
  /** Waits until the hosts' played agents have seen n commands in all. */
  commands(n: number): Promise<void>;
}

async function bed(t: ExecutionContext): Promise<Bed> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-reconcile-'));
  const store = SqliteStore.open(dir);
  const dispatch = new Dispatcher();
  const hosts = new HostRegistry(store, silentLogger, Date.now, () => {});
  const records = new VmRecords({
    store,
    hosts,
    dispatch,
    log: silentLogger,
    now: Date.now,
    leading: () => true,
    imageSources: [],
  });
  const received: Record<string, string[]> = { 'host-a': [], 'host-b': [] };
  const confirmState: Bed['confirmState'] = {};
  let stopped = false;
  // The hosts' agents: poll, record, answer.
  for (const host of Object.keys(received)) {
    (async () => {
      while (!stopped) {
        const cmds: Command[] = await dispatch.poll(host, 200);
        for (const c of cmds) {
          const name = 'name' in c ? c.name : 'vm' in c ? c.vm.name : c.mac;
          received[host].push(`${c.type} ${name}`);
          const r: CommandResult = { id: c.id, ok: true, boot_id: 'b', guests_version: 0 };
          if (c.type === 'confirm') {
            const s = confirmState[`${host}/${name}`] ?? 'absent';
            if (s === 'absent') Object.assign(r, { ok: false, error: `no guest ${name} on this host` });
            else r.state = s as CommandResult['state'];
          }
          dispatch.result(host, r);
        }
      }
    })();
  }
  t.teardown(async () => {
    stopped = true;
    dispatch.close('test over');
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const at = new Date().toISOString();
  return {
    store,
    records,
    reconciler: new Reconciler(records),
    received,
    confirmState,
    vm: (name) => records.get(name),
    async put(vm) {
      const full: VmRecord = {
        image: 'tiny',
        cpus: 1,
        memory_mib: 128,
        mac: '02:68:77:00:00:01',
        ip: null,
        host: 'host-a',
        target: null,
        placement: {},
        error: null,
        created_at: at,
        updated_at: at,
        generation: 1,
        ...vm,
      };
      await store.put('vms', vm.name, full);
    },
    async commands(n) {
      const deadline = Date.now() + 5000;
      while (received['host-a'].length + received['host-b'].length < n) {
        if (Date.now() > deadline) throw new Error(`expected ${n} commands, got ${JSON.stringify(received)}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
}

const guest = (name: string, state: GuestReport['state']): GuestReport => ({ name, state, mac: '02:68:77:00:00:01' });

test('reconcile: a running vm whose guest is gone or exited fails, saying why', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'gone', state: 'running', host: 'host-a' });
  await b.put({ name: 'dead', state: 'running', host: 'host-a' });
  await b.put({ name: 'fine', state: 'running', host: 'host-a' });
  await b.reconciler.reconcile('host-a', [guest('dead', 'exited'), guest('fine', 'running')]);
  const gone = await b.vm('gone');
  const dead = await b.vm('dead');
  t.is(gone.state, 'failed');
  t.regex(gone.error ?? '', /gone \(not running there\)/);
  t.is(dead.state, 'failed');
  t.regex(dead.error ?? '', /QEMU exited/);
  t.is((await b.vm('fine')).state, 'running');
  t.is(b.reconciler.stats.crashed, 2);
});

test('reconcile: guests that should not run on a host are stopped; a busy vm is left alone', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'elsewhere', state: 'running', host: 'host-b' });
  await b.put({ name: 'busy', state: 'running', host: 'host-a' });
  b.records.busy.set('busy', 'stop');
  await b.reconciler.reconcile('host-a', [guest('stranger', 'running'), guest('elsewhere', 'running')]);
  await b.commands(2);
  t.deepEqual(b.received['host-a'].sort(), ['stop elsewhere', 'stop stranger']);
  t.is((await b.vm('busy')).state, 'running', 'a vm with an operation in flight is not failed');
  t.is((await b.vm('elsewhere')).state, 'running');
});

test('reconcile: the incoming guest of a migration to this host is not stopped', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'moving', state: 'migrating', host: 'host-a', target: 'host-b' });
  await b.reconciler.reconcile('host-b', [guest('moving', 'incoming')]);
  await new Promise((r) => setTimeout(r, 300));
  t.deepEqual(b.received['host-b'], []);
});

test('settle: a start left half-done becomes running or failed from the host report', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'landed', state: 'starting', host: 'host-a' });
  await b.put({ name: 'lost', state: 'starting', host: 'host-a' });
  await b.put({ name: 'paused', state: 'starting', host: 'host-a' });
  await b.reconciler.settle(() => [guest('landed', 'running'), guest('paused', 'paused')]);
  t.is((await b.vm('landed')).state, 'running');
  const lost = await b.vm('lost');
  t.is(lost.state, 'failed');
  t.regex(lost.error ?? '', /did not finish/);
  t.is((await b.vm('paused')).state, 'failed', 'a guest that is not running after a start is stopped');
  await b.commands(1);
  t.deepEqual(b.received['host-a'], ['stop paused']);
  t.is(b.reconciler.stats.settled, 3);
});

test('settle: a migration that landed moves the vm to its target and stops the source copy', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'm', state: 'migrating', host: 'host-a', target: 'host-b' });
  await b.reconciler.settle((h) => (h === 'host-b' ? [guest('m', 'running')] : [guest('m', 'migrated')]));
  const vm = await b.vm('m');
  t.is(vm.state, 'running');
  t.is(vm.host, 'host-b');
  t.is(vm.target, null);
  await b.commands(1);
  t.deepEqual(b.received['host-a'], ['stop m']);
});

test('settle: a migration that did not land resumes the source, and says so', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'm', state: 'migrating', host: 'host-a', target: 'host-b' });
  b.confirmState['host-a/m'] = 'running';
  await b.reconciler.settle((h) => (h === 'host-b' ? [guest('m', 'incoming')] : [guest('m', 'paused')]));
  const vm = await b.vm('m');
  t.is(vm.state, 'running');
  t.is(vm.host, 'host-a');
  t.regex(vm.error ?? '', /stayed on the source/);
  await b.commands(2);
  t.deepEqual(b.received['host-b'], ['stop m'], 'the half-arrived destination guest is stopped');
  t.deepEqual(b.received['host-a'], ['confirm m']);
});

test('settle: a migration neither host runs fails; a host that has not reported yet defers it', async (t) => {
  const b = await bed(t);
  await b.put({ name: 'none', state: 'migrating', host: 'host-a', target: 'host-b' });
  await b.put({ name: 'wait', state: 'migrating', host: 'host-b', target: 'host-a' });
  // host-b is up but has not reported to this leader yet: 'wait' must stay as it is.
  await b.reconciler.settle((h) => (h === 'host-a' ? [] : null));
  t.is((await b.vm('wait')).state, 'migrating');
  t.is((await b.vm('none')).state, 'migrating', 'none waits for host-b too');
  await b.reconciler.settle((h) => (h === 'host-a' ? [] : 'down'));
  const none = await b.vm('none');
  t.is(none.state, 'failed');
  t.regex(none.error ?? '', /neither host runs the vm/);
});
