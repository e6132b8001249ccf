// Per-VM runtime records: <state_dir>/<vm>/runtime.json says which QEMU runs the guest (pid, its start time,
// the boot), how it was started (argv, QEMU version), where its sockets and files are, and the phase of any
// operation in flight, so a restarted agent can re-adopt the guest and settle what it was doing.
//
// Written atomically: a temporary file in the same directory, fsync, rename, fsync of the directory. A reader
// sees the old record or the new one, never a torn one, even after a power cut.
import fs from 'node:fs';
import path from 'node:path';
import type { GuestSpec } from './hypervisor.ts';

export const RUNTIME_FILE = 'runtime.json';
const RUNTIME_VERSION = 1;

/**
 * What the guest is doing, as far as an interrupted agent must know:
 *   running    booted or resumed here, nothing in flight
 *   incoming   waiting for a migration stream (never ran here: on failure its files go)
 *   outgoing   migrating away (mirror and/or RAM in flight): an agent that finds this rolls it back
 *   migrated   the migration completed: the destination runs the guest; this copy is stale
 *   snapshot   paused while its state is saved: an agent that finds this resumes it
 */
export type Phase = 'running' | 'incoming' | 'outgoing' | 'migrated' | 'snapshot';

export interface RuntimeRecord {
  version: number;
  name: string;
  pid: number;
  /** /proc/PID/stat start time (clock ticks since boot): with boot_id, what makes the pid this process. */
  start_time: number;
  boot_id: string;
  argv: string[];
  qemu_version: string;
  qmp: string;
  serial: string;
  /** The NBD server of an incoming storage migration (destination), if any. */
  nbd: { host: string; port: number; export: string } | null;
  /** The guest's writable overlay, if any. */
  disk: string | null;
  tls_dir: string | null;
  mac: string;
  spec: GuestSpec;
  phase: Phase;
  updated_at: string;
}

export type NewRuntime = Omit<RuntimeRecord, 'version' | 'updated_at'>;

/** Writes dir/runtime.json atomically. */
export function writeRuntime(dir: string, rec: NewRuntime): RuntimeRecord {
  const full: RuntimeRecord = { version: RUNTIME_VERSION, ...rec, updated_at: new Date().toISOString() };
  atomicWriteFile(path.join(dir, RUNTIME_FILE), `${JSON.stringify(full, null, 2)}\n`, 0o600);
  return full;
}

/** The record in dir, or null if there is none; throws with the file named if it cannot be parsed. */
export function readRuntime(dir: string): RuntimeRecord | null {
  const file = path.join(dir, RUNTIME_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`${file}: cannot read (${(err as NodeJS.ErrnoException).code})`);
  }
  let rec: RuntimeRecord;
  try {
    rec = JSON.parse(text);
  } catch {
    throw new Error(`${file}: not JSON (remove it if the guest is gone)`);
  }
  if (
    rec?.version !== RUNTIME_VERSION ||
    typeof rec.name !== 'string' ||
    !Number.isInteger(rec.pid) ||
    !Number.isInteger(rec.start_time) ||
    typeof rec.qmp !== 'string' ||
    !rec.spec
  )
    throw new Error(`${file}: not a runtime record of version ${RUNTIME_VERSION} (remove it if the guest is gone)`);
  return rec;
}

export function removeRuntime(dir: string): void {
  fs.rmSync(path.join(dir, RUNTIME_FILE), { force: true });
}

/** Writes file through a temporary name in the same directory, fsyncing file and directory. */
export function atomicWriteFile(file: string, data: string | Buffer, mode = 0o644): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}
