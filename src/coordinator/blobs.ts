// The coordinator's blob store: content-addressed files (warm images' saved state and frozen disk overlays)
// that host agents upload after a snapshot and download to resume one. `PUT|GET /v1/agent/blobs/SHA256`, host
// token. A blob is stored as <data_dir>/blobs/<sha256> only after the bytes that arrived hash to the name they
// were sent under, so a host can never plant content under another hash; a blob that exists is not written again.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ApiError } from './types.ts';

const SHA256_RE = /^[0-9a-f]{64}$/;
/** Larger uploads are cut off (a warm image is RAM plus a disk overlay). */
export const BLOB_MAX_BYTES = 64 * 1024 ** 3;

export class BlobStore {
  readonly dir: string;
  readonly stats = { stored: 0, served: 0, rejected: 0, bytesIn: 0 };

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, 'blobs');
  }

  private file(sha256: string): string {
    if (!SHA256_RE.test(sha256))
      throw new ApiError(400, 'bad_request', `blob name ${JSON.stringify(sha256)} is not a SHA-256 (64 hex digits)`);
    return path.join(this.dir, sha256);
  }

  has(sha256: string): boolean {
    return fs.existsSync(this.file(sha256));
  }

  /** Stores the request body under sha256 if it hashes to that; returns the size. */
  async put(sha256: string, req: http.IncomingMessage): Promise<{ bytes: number; existed: boolean }> {
    const target = this.file(sha256);
    if (fs.existsSync(target)) {
      req.resume();
      await new Promise((r) => req.once('end', r));
      return { bytes: fs.statSync(target).size, existed: true };
    }
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const tmp = path.join(this.dir, `.${sha256}.${crypto.randomBytes(4).toString('hex')}`);
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
      if (bytes > BLOB_MAX_BYTES) req.destroy(new Error('too large'));
    });
    try {
      await pipeline(req, fs.createWriteStream(tmp, { mode: 0o600 }));
      if (bytes > BLOB_MAX_BYTES)
        throw new ApiError(400, 'bad_request', `a blob may hold at most ${BLOB_MAX_BYTES} bytes`);
      const got = hash.digest('hex');
      if (got !== sha256) {
        this.stats.rejected++;
        throw new ApiError(400, 'bad_request', `the upload hashes to ${got}, not ${sha256}: nothing stored`);
      }
      fs.renameSync(tmp, target);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      if (err instanceof ApiError) throw err;
      throw new ApiError(400, 'bad_request', `the upload of blob ${sha256} broke off: ${(err as Error).message}`);
    }
    this.stats.stored++;
    this.stats.bytesIn += bytes;
    return { bytes, existed: false };
  }

  /** Streams a blob as the answer (404 if unknown). */
  async get(sha256: string, res: http.ServerResponse): Promise<void> {
    const file = this.file(sha256);
    let size: number;
    try {
      size = fs.statSync(file).size;
    } catch {
      throw new ApiError(404, 'not_found', `no blob ${sha256}`);
    }
    this.stats.served++;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    await pipeline(fs.createReadStream(file), res).catch(() => res.destroy());
  }
}
