// Warm images: a running guest's memory and device state and its disk, saved at one instant, and resumed later
// (on this host or another) instead of booting.
//
// Save: QMP stop (QEMU drains and flushes the disk), migrate into a unix socket the agent listens on and copies
// into a file (QEMU 7.2 has no file: URI, and exec: would need QEMU to spawn a shell, which a seccomp sandbox
// with spawn=deny forbids), then a sparse copy of the overlay while the guest is still stopped and its disk
// inactive, so the two belong to the same instant; then cont. Resume: QEMU with the same devices, -S -incoming
// defer, the frozen overlay (a fresh copy, re-pointed at this host's base), migrate-incoming on a unix socket
// that the agent feeds the file into, then cont.
//
// A saved state only loads into the same machine: the manifest pins what must match (QEMU version, machine
// type, CPU model, accelerator, memory, CPUs, devices), and both placement and the agent check it.
import fs from 'node:fs';
import net from 'node:net';
import { pipeline } from 'node:stream/promises';
import type { WarmManifest } from '../../coordinator/types.ts';
import type { GuestSpec } from '../hypervisor.ts';
import { sparseCopy } from './disks.ts';
import type { Vm } from './driver.ts';

const SAVE_TIMEOUT_MS = 600_000;

/** What this host would run the guest with (its devices follow from the spec). */
export function manifestFor(
  spec: Pick<GuestSpec, 'memoryMib' | 'cpus'> & { disk: boolean },
  host: { qemu: string; machine: string; cpu: string; accel: 'kvm' | 'tcg' },
): WarmManifest {
  return {
    qemu: host.qemu,
    machine: host.machine,
    cpu: host.cpu,
    accel: host.accel,
    memory_mib: spec.memoryMib,
    cpus: spec.cpus,
    devices: ['virtio-net-pci', ...(spec.disk ? ['virtio-blk-pci'] : [])],
  };
}

/** Why `want` cannot resume on a host that would run `have`, or null. */
export function manifestMismatch(want: WarmManifest, have: WarmManifest): string | null {
  const diffs: string[] = [];
  if (want.qemu !== have.qemu) diffs.push(`QEMU ${have.qemu}, the image needs ${want.qemu}`);
  if (want.machine !== have.machine) diffs.push(`machine ${have.machine}, the image needs ${want.machine}`);
  if (want.cpu !== have.cpu) diffs.push(`CPU model ${have.cpu}, the image needs ${want.cpu}`);
  if (want.accel !== have.accel) diffs.push(`accelerator ${have.accel}, the image needs ${want.accel}`);
  if (want.memory_mib !== have.memory_mib)
    diffs.push(`memory ${have.memory_mib} MiB, the image has ${want.memory_mib}`);
  if (want.cpus !== have.cpus) diffs.push(`${have.cpus} CPUs, the image has ${want.cpus}`);
  if (want.devices.join(',') !== have.devices.join(','))
    diffs.push(`devices ${have.devices.join(',')}, the image has ${want.devices.join(',')}`);
  return diffs.length ? diffs.join('; ') : null;
}

/**
 * Saves vm's state to stateFile and its overlay (if any) to frozenFile, at one instant. The guest is paused
 * meanwhile and runs again afterwards (also when saving fails). Returns how long it was paused.
 */
export async function saveState(
  vm: Vm,
  stateFile: string,
  overlay: string | null,
  frozenFile: string,
  owner?: { uid: number; gid: number },
): Promise<{ pauseMs: number }> {
  const q = vm.qmp;
  const wasRunning = (await q.execute<{ status: string }>('query-status')).status === 'running';
  const sock = `${stateFile}.sock`;
  const pausedAt = Date.now();
  await q.execute('stop');
  let server: net.Server | null = null;
  try {
    // The agent receives the stream (one connection, from this QEMU) and writes the file.
    fs.rmSync(sock, { force: true });
    let written: Promise<void> = Promise.reject(new Error('QEMU never connected to send its state'));
    written.catch(() => {});
    server = net.createServer((c) => {
      server?.close(); // one stream only
      written = pipeline(c, fs.createWriteStream(stateFile, { mode: 0o600 }));
      written.catch(() => {});
    });
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(sock, () => resolve());
    });
    fs.chmodSync(sock, 0o600);
    if (owner) fs.chownSync(sock, owner.uid, owner.gid); // QEMU connects after it dropped root
    await q.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'pause-before-switchover', state: false },
      ],
    });
    // No TLS into a local file (a TLS object left set from a migration would wrap the stream).
    await q.execute('migrate-set-parameters', { 'tls-creds': '' });
    await q.execute('migrate', { uri: `unix:${sock}` });
    await waitMigration(vm, 'saving the state');
    await written;
    // Stopped and migrated: the disk is flushed and inactive, so this copy is the disk of that same instant.
    if (overlay) await sparseCopy(overlay, frozenFile);
  } finally {
    server?.close();
    fs.rmSync(sock, { force: true });
    if (wasRunning) await q.execute('cont');
  }
  return { pauseMs: Date.now() - pausedAt };
}

/** Destination of a warm start: load the state file (QEMU launched with -S -incoming defer), then run. */
export async function loadState(vm: Vm, stateFile: string): Promise<void> {
  const q = vm.qmp;
  const sock = `${vm.opts.qmpSocket}.state`;
  fs.rmSync(sock, { force: true });
  await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  await q.execute('migrate-set-parameters', { 'tls-creds': '' });
  await q.execute('migrate-incoming', { uri: `unix:${sock}` });
  try {
    const c = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(sock);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    // QEMU may close the socket as soon as it has read the end-of-stream marker, before our side saw its
    // writes finish ("premature close"): what counts is whether QEMU says the load completed.
    let pipeError: unknown = null;
    const fed = pipeline(fs.createReadStream(stateFile), c).catch((err) => {
      pipeError = err;
    });
    try {
      await waitMigration(vm, 'loading the saved state');
    } catch (err) {
      await fed;
      throw pipeError ? new Error(`${(err as Error).message} (feeding it: ${(pipeError as Error).message})`) : err;
    }
    c.destroy();
  } finally {
    fs.rmSync(sock, { force: true });
  }
  await q.execute('cont');
}

/** Polls query-migrate (either end) until completed; throws if it failed or took too long. */
async function waitMigration(vm: Vm, what: string): Promise<void> {
  const deadline = Date.now() + SAVE_TIMEOUT_MS;
  for (;;) {
    const info = await vm.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled')
      throw new Error(`${what} failed${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    if (!vm.running) throw new Error(`QEMU exited while ${what}:\n${vm.tail(5)}`);
    if (Date.now() > deadline) {
      await vm.qmp.execute('migrate_cancel').catch(() => {});
      throw new Error(`${what} took longer than ${SAVE_TIMEOUT_MS / 1000} s`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
