// A VM's writable disk: a qcow2 overlay in <state_dir>/<vm>/disk.qcow2 whose backing file is the image's
// read-only, content-addressed base in the host's image cache (<cache_dir>/<sha256>). The base is never written
// (QEMU opens backing files read-only), so every VM on the host and every host share the same bytes; only the
// overlay is the VM's own, and only the overlay ever moves between hosts (live: a mirror over NBD; stopped: a
// copy of the file, after which the copy is re-pointed at the receiving host's own base).
//
// Formats are never probed from untrusted bytes at run time: a base's format is decided once, from its
// header magic (qcow2 or raw), and always given explicitly (-F, driver=).
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const OVERLAY_FILE = 'disk.qcow2';
const GIB = 1024 ** 3;
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]); // "QFI\xfb"

export type DiskFormat = 'qcow2' | 'raw';

/** qemu-img with a readable error (what failed, and its stderr). */
export async function qemuImg(args: string[], what: string): Promise<string> {
  try {
    const r = await run('qemu-img', args, { maxBuffer: 16 << 20, timeout: 600_000 });
    return r.stdout;
  } catch (err) {
    const e = err as { code?: string | number; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new Error(`${what}: qemu-img is not installed (apt-get install qemu-utils)`);
    throw new Error(`${what}: qemu-img ${args[0]} failed: ${(e.stderr || e.message).trim()}`);
  }
}

/** A base's format from its first bytes: qcow2 by its magic, anything else is raw. */
export function baseFormat(file: string): DiskFormat {
  const head = Buffer.alloc(4);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, head, 0, 4, 0);
  } finally {
    fs.closeSync(fd);
  }
  return head.equals(QCOW2_MAGIC) ? 'qcow2' : 'raw';
}

export interface ImageInfo {
  virtualBytes: number;
  actualBytes: number;
  backing: string | null;
}

/** qemu-img info of a file whose format we know (never probed). */
export async function imageInfo(file: string, format: DiskFormat): Promise<ImageInfo> {
  // -U: the file may be open in a running QEMU (it holds the write lock); we only read the header.
  const out = await qemuImg(['info', '-U', '--output=json', '-f', format, file], `reading ${file}`);
  const j = JSON.parse(out) as { 'virtual-size': number; 'actual-size'?: number; 'backing-filename'?: string };
  return {
    virtualBytes: j['virtual-size'],
    actualBytes: j['actual-size'] ?? 0,
    backing: j['backing-filename'] ?? null,
  };
}

/** The overlay size for disk_gib (null: the base's own size). */
export async function overlayBytes(
  base: { file: string; format: DiskFormat } | null,
  gib: number | null,
): Promise<number> {
  const baseBytes = base ? (await imageInfo(base.file, base.format)).virtualBytes : 0;
  if (gib === null) {
    if (!base) throw new Error('a disk without a base image needs a size (disk_gib)');
    return baseBytes;
  }
  const bytes = gib * GIB;
  if (bytes < baseBytes)
    throw new Error(`disk_gib ${gib} is smaller than the image's base disk (${(baseBytes / GIB).toFixed(2)} GiB)`);
  return bytes;
}

/** Creates a qcow2 overlay over base (or an empty qcow2 without one) of `bytes` virtual bytes. */
export async function createOverlay(
  file: string,
  base: { file: string; format: DiskFormat } | null,
  bytes: number,
): Promise<void> {
  const tmp = `${file}.part`;
  fs.rmSync(tmp, { force: true });
  const args = ['create', '-q', '-f', 'qcow2'];
  if (base) args.push('-F', base.format, '-b', base.file);
  args.push(tmp, String(bytes));
  await qemuImg(args, `creating the disk ${file}`);
  fs.renameSync(tmp, file);
}

/** Points an overlay at another path of the same base (after it moved hosts), without touching its data. */
export async function rebaseOverlay(file: string, base: { file: string; format: DiskFormat } | null): Promise<void> {
  const args = ['rebase', '-u', '-f', 'qcow2'];
  if (base) args.push('-F', base.format, '-b', base.file);
  else args.push('-b', '');
  args.push(file);
  await qemuImg(args, `re-pointing ${file} at its base`);
}

/** SHA-256 of a file (hex) and its size, streamed. */
export async function fileSha256(file: string): Promise<{ sha256: string; bytes: number }> {
  const hash = crypto.createHash('sha256');
  let bytes = 0;
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

/** Copies a file keeping holes (a qcow2 overlay is mostly holes): cp --sparse=always. */
export async function sparseCopy(from: string, to: string): Promise<void> {
  const tmp = `${to}.part`;
  try {
    await run('cp', ['--sparse=always', from, tmp], { timeout: 600_000 });
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new Error(`copying ${from}: ${((err as { stderr?: string }).stderr || (err as Error).message).trim()}`);
  }
  fs.renameSync(tmp, to);
}

/** A path inside a QEMU option value: commas are doubled (QEMU's escape), so a path cannot add options. */
export function optPath(p: string): string {
  return p.replace(/,/g, ',,');
}
