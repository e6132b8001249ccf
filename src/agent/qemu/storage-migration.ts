// Live migration with the disk, without shared storage (what libvirt calls copy-storage-inc), driven by QMP
// events inside each agent: nothing that happens while the guest is paused waits for the coordinator.
//
//   destination (prepareIncoming)             source (migrateOut)
//   qemu -S -incoming defer, overlay over
//     its own copy of the base
//   late-block-activate, tls-creds
//   nbd-server-start + block-export-add  ◀──  blockdev-add nbd (TLS) + blockdev-mirror sync=top
//     (writable disk0 export)                  copy-mode=write-blocking; BLOCK_JOB_READY
//   migrate-incoming tcp:…               ◀──  migrate (pause-before-switchover, TLS): RAM
//                                              MIGRATION pre-switchover (guest paused): block-job-cancel
//                                              (a READY mirror ends consistent), blockdev-del,
//                                              migrate-continue → device state
//   MIGRATION completed: nbd-server-stop,
//   cont (watchIncoming)
//
// Only the overlay's allocated clusters cross (sync: top): the destination reads everything else from its own
// copy of the base, fetched by hash from the image server. write-blocking keeps the copy in step with the
// guest's writes, so the mirror converges however busy the disk is. A stall (no progress for
// STALL_TIMEOUT_MS: a cut network) is ended with QMP yank, so the source never hangs on a dead peer: the
// migration fails and the guest keeps running at the source.
import type { NbdTarget } from '../hypervisor.ts';
import { DISK_NODE, type MigrationResult, TLS_OBJECT, TLS_OUT_OBJECT, type Vm } from './driver.ts';
import type { QmpEvent } from './qmp.ts';
import { pskObject, type TlsKey } from './tls.ts';

const MIRROR_JOB = 'hw-mirror';
const MIRROR_NODE = 'hw-mirror-target';
const EXPORT_ID = 'hw-export';
/** No progress of the mirror or the RAM stream for this long: the peer or the path is gone. */
export const STALL_TIMEOUT_MS = 15_000;
const STALL_POLL_MS = 1_000;
/** How long cleanup steps (job cancel, migrate_cancel) may take before we stop waiting. */
const CLEANUP_WAIT_MS = 10_000;

/**
 * Destination, after launch with -S, -incoming defer and the TLS object: listen for both streams, at the URI and
 * NBD port the coordinator chose (from this host's registered address and ports; the agent checked them).
 */
export async function prepareIncoming(
  vm: Vm,
  o: { uri: string; nbd: NbdTarget | null; key: TlsKey | null },
): Promise<void> {
  const q = vm.qmp;
  const caps = [{ capability: 'events', state: true }];
  if (o.nbd) caps.push({ capability: 'late-block-activate', state: true });
  await q.execute('migrate-set-capabilities', { capabilities: caps });
  await q.execute('migrate-set-parameters', { 'tls-creds': o.key ? TLS_OBJECT : '' });
  if (o.nbd) {
    await q.execute('nbd-server-start', {
      addr: { type: 'inet', data: { host: o.nbd.host, port: String(o.nbd.port) } },
      ...(o.key ? { 'tls-creds': TLS_OBJECT } : {}),
      'max-connections': 2,
    });
    await q.execute('block-export-add', {
      type: 'nbd',
      id: EXPORT_ID,
      'node-name': DISK_NODE,
      name: o.nbd.export,
      writable: true,
    });
  }
  await q.execute('migrate-incoming', { uri: o.uri });
}

/**
 * Destination: on MIGRATION completed, stop the NBD server (storage) and run the guest; on failed, report.
 * Returns the function that stops watching. Also used by an agent that re-adopted a waiting destination.
 */
export function watchIncoming(
  vm: Vm,
  o: { storage: boolean; resumed: () => void; failed: (why: string) => void },
): () => void {
  const off = vm.qmp.onEvent((e) => {
    if (e.event !== 'MIGRATION') return;
    const status = e.data?.status;
    if (status === 'completed') {
      off();
      finishIncoming(vm, o.storage).then(o.resumed, (err) => o.failed((err as Error).message));
    } else if (status === 'failed' || status === 'cancelled') {
      off();
      o.failed(`the incoming migration ${status}`);
    }
  });
  return off;
}

/** Destination, stream complete: no more writes can come over NBD, so stop that server and let the guest run. */
export async function finishIncoming(vm: Vm, storage: boolean): Promise<void> {
  if (storage) await vm.qmp.execute('nbd-server-stop').catch(() => {}); // already stopped: fine
  const { status } = await vm.qmp.execute<{ status: string }>('query-status');
  if (status !== 'running') await vm.qmp.execute('cont'); // without a disk QEMU ran it already
}

/**
 * Source: mirror the overlay to the destination's NBD export (when nbd is given), then migrate RAM with
 * pause-before-switchover, cutting the mirror over while the guest is paused. On any failure the mirror and the
 * migration are cancelled and the guest runs here again; the error says what failed.
 */
export async function migrateOut(
  vm: Vm,
  o: { uri: string; nbd: NbdTarget | null; key: TlsKey | null; timeoutMs: number },
): Promise<MigrationResult> {
  const q = vm.qmp;
  const state = { tls: false, target: false, job: false, migration: false };
  const startedAtMs = Date.now();
  const deadline = startedAtMs + o.timeoutMs;
  const eventsFrom = q.events.length;
  try {
    if (o.key) {
      await q.execute('object-add', pskObject(o.key, 'client', TLS_OUT_OBJECT));
      state.tls = true;
    }
    if (o.nbd) {
      await q.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': MIRROR_NODE,
        server: { type: 'inet', host: o.nbd.host, port: String(o.nbd.port) },
        export: o.nbd.export,
        ...(o.key ? { 'tls-creds': TLS_OUT_OBJECT } : {}),
      });
      state.target = true;
      const ready = jobEvent(vm, 'BLOCK_JOB_READY');
      await q.execute('blockdev-mirror', {
        'job-id': MIRROR_JOB,
        device: DISK_NODE,
        target: MIRROR_NODE,
        sync: 'top',
        'copy-mode': 'write-blocking',
      });
      state.job = true;
      await watchStall(vm, ready.promise, deadline, 'mirroring the disk', async () => {
        const jobs = await q.execute<{ device: string; offset: number }[]>('query-block-jobs');
        return jobs.find((j) => j.device === MIRROR_JOB)?.offset ?? -1;
      }).finally(ready.cancel);
    }
    await q.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'pause-before-switchover', state: o.nbd !== null },
      ],
    });
    await q.execute('migrate-set-parameters', { 'tls-creds': o.key ? TLS_OUT_OBJECT : '' });

    // The switch-over runs from the event, here in the agent: the guest is paused until migrate-continue.
    let switchError: Error | null = null;
    const completed = new Promise<void>((resolve, reject) => {
      const offClose = q.onClose(() => reject(new Error('QEMU exited during the migration')));
      const off = q.onEvent((e) => {
        if (e.event === 'BLOCK_JOB_COMPLETED' && e.data?.device === MIRROR_JOB && e.data?.error) {
          // The mirror broke during the RAM phase (the destination went away): stop the migration too.
          state.job = false;
          q.execute('migrate_cancel').catch(() => {});
          return;
        }
        if (e.event !== 'MIGRATION') return;
        const status = e.data?.status;
        if (status === 'pre-switchover') {
          switchOver(vm, state).catch((err) => {
            switchError = err as Error;
            q.execute('migrate_cancel').catch(() => {});
          });
        } else if (status === 'completed') {
          off();
          offClose();
          resolve();
        } else if (status === 'failed' || status === 'cancelled') {
          off();
          offClose();
          reject(new Error(`the migration ${status}`));
        }
      });
    });
    completed.catch(() => {});
    await q.execute('migrate', { uri: o.uri });
    state.migration = true;
    try {
      await watchStall(vm, completed, deadline, 'migrating RAM', async () => {
        const info = await q.execute<{ ram?: { transferred?: number }; status?: string }>('query-migrate');
        // Paused for the switch-over is progress of its own kind: it ends within moments or fails.
        return info.status === 'pre-switchover' || info.status === 'device' ? -2 : (info.ram?.transferred ?? -1);
      });
    } catch (err) {
      const desc = await migrateError(vm);
      const why = switchError ? `switching over failed: ${(switchError as Error).message}` : desc;
      throw new Error(`${(err as Error).message}${why ? `: ${why}` : ''}`);
    }
    state.migration = false;
    const info = await q.execute<MigrateInfo>('query-migrate');
    const stop = q.events.slice(eventsFrom).find((e: QmpEvent) => e.event === 'STOP');
    return {
      status: 'completed',
      totalTimeMs: info['total-time'] ?? NaN,
      downtimeMs: info.downtime ?? NaN,
      setupTimeMs: info['setup-time'] ?? NaN,
      ramTransferredBytes: info.ram?.transferred ?? NaN,
      startedAtMs,
      completedAtMs: Date.now(),
      stoppedAtMs: stop?.atMs ?? null,
    };
  } catch (err) {
    await rollBack(vm, state);
    throw err;
  } finally {
    if (state.tls) {
      await q.execute('migrate-set-parameters', { 'tls-creds': '' }).catch(() => {});
      await q.execute('object-del', { id: TLS_OUT_OBJECT }).catch(() => {});
    }
  }
}

/** pre-switchover: the mirror is in step (write-blocking) and the guest paused; end it and let the device state go. */
async function switchOver(vm: Vm, state: { target: boolean; job: boolean }): Promise<void> {
  const q = vm.qmp;
  if (state.job) {
    const end = jobEvent(vm, 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED');
    await q.execute('block-job-cancel', { device: MIRROR_JOB });
    const e = await withTimeout(end.promise, CLEANUP_WAIT_MS, 'the mirror did not end after block-job-cancel').finally(
      end.cancel,
    );
    state.job = false;
    if (e.data?.error) throw new Error(`the mirror failed at the switch-over: ${e.data.error}`);
  }
  if (state.target) {
    await q.execute('blockdev-del', { 'node-name': MIRROR_NODE });
    state.target = false;
  }
  await q.execute('migrate-continue', { state: 'pre-switchover' });
}

/**
 * Undoes whatever migrateOut had begun; the guest runs here afterwards. Also what a re-adopting agent does
 * with a guest it finds in the middle of an outgoing migration (state from what QEMU reports).
 */
export async function rollBack(
  vm: Vm,
  state: { tls?: boolean; target: boolean; job: boolean; migration: boolean },
): Promise<void> {
  const q = vm.qmp;
  if (q.isClosed) return;
  const info = await q.execute<MigrateInfo>('query-migrate').catch(() => null);
  const active = info && ['setup', 'active', 'pre-switchover', 'device', 'cancelling'].includes(info.status ?? '');
  if (active) {
    await q.execute('migrate_cancel').catch(() => {});
    if (!(await waitMigrationEnd(vm, CLEANUP_WAIT_MS))) {
      // Stuck on a dead peer: cut the streams (yank), which makes the migration fail at once.
      await q.execute('yank', { instances: [{ type: 'migration' }] }).catch(() => {});
      await waitMigrationEnd(vm, CLEANUP_WAIT_MS);
    }
  }
  const jobs = await q.execute<{ device: string }[]>('query-block-jobs').catch(() => []);
  if (jobs.some((j) => j.device === MIRROR_JOB)) {
    const end = jobEvent(vm, 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED');
    await q.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(() => {});
    const ended = await withTimeout(end.promise, CLEANUP_WAIT_MS, 'cancel').then(
      () => true,
      () => false,
    );
    end.cancel();
    if (!ended) {
      await q.execute('yank', { instances: [{ type: 'block-node', 'node-name': MIRROR_NODE }] }).catch(() => {});
      await withTimeout(jobGone(vm), CLEANUP_WAIT_MS, 'cancel').catch(() => {});
    }
  }
  const nodes = await q.execute<{ 'node-name': string }[]>('query-named-block-nodes').catch(() => []);
  if (nodes.some((n) => n['node-name'] === MIRROR_NODE))
    await q.execute('blockdev-del', { 'node-name': MIRROR_NODE }).catch(() => {});
  state.job = false;
  state.target = false;
  state.migration = false;
  const status = await q.execute<{ status: string }>('query-status').catch(() => null);
  if (status && status.status !== 'running') await q.execute('cont').catch(() => {});
}

/** Resolves when `done` does; rejects when progress() returns the same value for STALL_TIMEOUT_MS, or at deadline. */
async function watchStall(
  vm: Vm,
  done: Promise<unknown>,
  deadline: number,
  what: string,
  progress: () => Promise<number>,
): Promise<void> {
  let finished = false;
  let failure: unknown = null;
  done.then(
    () => {
      finished = true;
    },
    (err) => {
      finished = true;
      failure = err;
    },
  );
  let last = Number.NaN;
  let lastChangeMs = Date.now();
  for (;;) {
    await Promise.race([done.catch(() => {}), sleep(STALL_POLL_MS)]);
    if (finished) {
      if (failure) throw failure;
      return;
    }
    if (vm.qmp.isClosed) throw new Error(`QEMU exited while ${what}`);
    const now = Date.now();
    const p = await progress().catch(() => last);
    if (p !== last || p === -2) {
      last = p;
      lastChangeMs = now;
    }
    const stalled = now - lastChangeMs > STALL_TIMEOUT_MS;
    if (stalled || now > deadline) {
      // One instance per yank: a list fails as a whole when one of them does not exist (any more).
      await vm.qmp.execute('yank', { instances: [{ type: 'migration' }] }).catch(() => {});
      await vm.qmp.execute('yank', { instances: [{ type: 'block-node', 'node-name': MIRROR_NODE }] }).catch(() => {});
      throw new Error(
        stalled
          ? `${what}: no progress for ${STALL_TIMEOUT_MS / 1000} s (the destination or the path to it is gone)`
          : `${what}: not done within the migration's time limit`,
      );
    }
  }
}

/** A promise for the first of the named events about our mirror job, and a way to stop listening. */
function jobEvent(vm: Vm, ...names: string[]): { promise: Promise<QmpEvent>; cancel: () => void } {
  let off: () => void = () => {};
  let offClose: () => void = () => {};
  const promise = new Promise<QmpEvent>((resolve, reject) => {
    off = vm.qmp.onEvent((e) => {
      if (e.data?.device !== MIRROR_JOB) return;
      if (names.includes(e.event)) {
        off();
        offClose();
        resolve(e);
      } else if (e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED') {
        // Ended before what we wait for: the mirror failed (destination gone) or was cancelled.
        off();
        offClose();
        reject(new Error(`the disk mirror ended early${e.data?.error ? `: ${e.data.error}` : ''}`));
      }
    });
    offClose = vm.qmp.onClose(() => reject(new Error('QEMU exited during the disk mirror')));
  });
  promise.catch(() => {});
  return {
    promise,
    cancel: () => {
      off();
      offClose();
    },
  };
}

async function jobGone(vm: Vm): Promise<void> {
  for (;;) {
    const jobs = await vm.qmp.execute<{ device: string }[]>('query-block-jobs').catch(() => []);
    if (!jobs.some((j) => j.device === MIRROR_JOB)) return;
    await sleep(50);
  }
}

async function waitMigrationEnd(vm: Vm, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const info = await vm.qmp.execute<MigrateInfo>('query-migrate').catch(() => null);
    if (!info || !['setup', 'active', 'pre-switchover', 'device', 'cancelling'].includes(info.status ?? ''))
      return true;
    await sleep(50);
  }
  return false;
}

async function migrateError(vm: Vm): Promise<string> {
  const info = await vm.qmp.execute<MigrateInfo>('query-migrate').catch(() => null);
  return info?.['error-desc'] ?? '';
}

interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: { transferred?: number };
  'error-desc'?: string;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} (after ${ms} ms)`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
