// Moving a stopped VM's overlay to another host (cold copy): the host that has it exports the overlay file
// byte for byte (qemu-nbd, read-only, format raw over the qcow2 file, TLS with the operation's key, one
// client, on its migration address and a port the coordinator chose from its range); the host that starts the VM pulls it (qemu-img convert from NBD into a sparse file), checks its
// SHA-256 against what the exporter said, and re-points it at its own copy of the base. The base never moves.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { DISK_COPY_EXPORT } from '../../coordinator/migration.ts';
import type { DiskSource } from '../hypervisor.ts';
import { type DiskFormat, fileSha256, rebaseOverlay } from './disks.ts';
import { TLS_OBJECT } from './driver.ts';
import { waitListening } from './ports.ts';
import { pskObjectArg, type TlsKey } from './tls.ts';

const run = promisify(execFile);
/** An export nobody fetched is ended after this. */
export const EXPORT_TTL_MS = 10 * 60_000;
const EXPORT_NAME = DISK_COPY_EXPORT;

export interface DiskExport {
  source: Omit<DiskSource, 'tls_psk'>;
  proc: ChildProcess;
  timer: NodeJS.Timeout;
}

/** Serves `file` (unchanged bytes) on address over NBD with TLS until stopped (or EXPORT_TTL_MS). */
export async function exportOverlay(
  file: string,
  address: string,
  port: number,
  key: TlsKey,
  qemuLog: string,
): Promise<DiskExport> {
  const { sha256, bytes } = await fileSha256(file);
  const fd = fs.openSync(qemuLog, 'a');
  let proc: ChildProcess;
  try {
    proc = spawn(
      'qemu-nbd',
      [
        '--object',
        pskObjectArg(key, 'server'),
        '--tls-creds',
        TLS_OBJECT,
        '--read-only',
        '--format',
        'raw',
        '--bind',
        address,
        '--port',
        String(port),
        '--export-name',
        EXPORT_NAME,
        '--shared',
        '1',
        '--persistent',
        file,
      ],
      { stdio: ['ignore', fd, fd] },
    );
  } finally {
    fs.closeSync(fd);
  }
  proc.on('error', () => {});
  const exited = new Promise<never>((_, reject) =>
    proc.once('exit', (code) => reject(new Error(`qemu-nbd exited (code ${code}); see ${qemuLog}`))),
  );
  exited.catch(() => {});
  try {
    await Promise.race([waitListening(address, port, 10_000), exited]);
  } catch (err) {
    proc.kill('SIGKILL');
    throw err;
  }
  const timer = setTimeout(() => proc.kill('SIGTERM'), EXPORT_TTL_MS);
  timer.unref();
  return { source: { host: address, port, export: EXPORT_NAME, bytes, sha256 }, proc, timer };
}

export function endExport(e: DiskExport): void {
  clearTimeout(e.timer);
  if (e.proc.exitCode === null && e.proc.signalCode === null) e.proc.kill('SIGTERM');
}

/** Pulls an exported overlay into `file`, checks it, and points it at this host's base. */
export async function importOverlay(
  file: string,
  src: Omit<DiskSource, 'tls_psk'>,
  key: TlsKey,
  base: { file: string; format: DiskFormat } | null,
): Promise<void> {
  const tmp = `${file}.part`;
  fs.rmSync(tmp, { force: true });
  const opts = [
    'driver=raw',
    'file.driver=nbd',
    `file.host=${src.host}`,
    `file.port=${src.port}`,
    `file.export=${src.export}`,
    `file.tls-creds=${TLS_OBJECT}`,
  ].join(',');
  try {
    await run(
      'qemu-img',
      ['convert', '--object', pskObjectArg(key, 'client'), '--image-opts', opts, '-O', 'raw', '-S', '4k', tmp],
      { timeout: 3_600_000, maxBuffer: 1 << 20 },
    );
    // NBD sizes are whole sectors: cut the copy back to the file's own length before checking it.
    fs.truncateSync(tmp, src.bytes);
    const got = await fileSha256(tmp);
    if (got.sha256 !== src.sha256)
      throw new Error(`the copied disk has SHA-256 ${got.sha256}, the exporting host said ${src.sha256}`);
    await rebaseOverlay(tmp, base);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    const e = err as { stderr?: string; message: string };
    throw new Error(
      `copying the disk from ${src.host}:${src.port}: ${(e.stderr || e.message).trim().split('\n').slice(-2).join(' ')}`,
    );
  }
}
