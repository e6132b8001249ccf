// The host's image cache: each file of an image is fetched once (http(s):// or a path on this host, or
// blob:SHA256 from the coordinator's blob store, where warm images live), its SHA-256 checked while it streams,
// and kept as <cache_dir>/<sha256>. A file is written under a temporary name and renamed only after the
// checksum matched, so the cache never holds a wrong or partial file, and concurrent requests for the same file
// share one download. Cached files are read-only for everyone (a VM's disk base is never written: guests write
// to their own overlay).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ImageRecord } from '../coordinator/types.ts';
import type { Logger } from '../log.ts';

const FETCH_TIMEOUT_MS = 300_000;

export interface ImageFiles {
  kernel: string;
  initrd: string;
  disk?: string;
  /** A warm image's saved state and frozen overlay. */
  state?: string;
  overlay?: string;
}

/** Opens blob:SHA256 locations (the coordinator's blob store, with the host token). */
export type BlobSource = (sha256: string, what: string) => Promise<Readable>;

export class ImageCache {
  private readonly inflight = new Map<string, Promise<string>>();
  readonly stats = { hits: 0, fetched: 0, bytes: 0, mismatches: 0 };

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly blobs: BlobSource | null = null,
  ) {}

  async image(img: ImageRecord): Promise<ImageFiles> {
    const w = img.warm;
    const [kernel, initrd, disk, state, overlay] = await Promise.all([
      this.file(img.kernel, img.sha256.kernel, `image ${img.name} kernel`),
      this.file(img.initrd, img.sha256.initrd, `image ${img.name} initrd`),
      img.disk ? this.file(img.disk, img.sha256.disk!, `image ${img.name} disk`) : Promise.resolve(undefined),
      w
        ? this.file(`blob:${w.state.sha256}`, w.state.sha256, `warm image ${img.name} state`)
        : Promise.resolve(undefined),
      w?.overlay
        ? this.file(`blob:${w.overlay.sha256}`, w.overlay.sha256, `warm image ${img.name} disk overlay`)
        : Promise.resolve(undefined),
    ]);
    return {
      kernel,
      initrd,
      ...(disk ? { disk } : {}),
      ...(state ? { state } : {}),
      ...(overlay ? { overlay } : {}),
    };
  }

  /** Moves a file made on this host (a snapshot) into the cache under its SHA-256; returns the cached path. */
  adopt(file: string, sha256: string): string {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    const target = path.join(this.dir, sha256);
    if (fs.existsSync(target)) fs.rmSync(file, { force: true });
    else {
      fs.chmodSync(file, 0o444);
      fs.renameSync(file, target);
    }
    return target;
  }

  /** The local path of a verified copy of `location`. */
  file(location: string, sha256: string, what: string): Promise<string> {
    const want = sha256.toLowerCase();
    const target = path.join(this.dir, want);
    if (fs.existsSync(target)) {
      this.stats.hits++;
      return Promise.resolve(target);
    }
    let p = this.inflight.get(want);
    if (!p) {
      p = this.fetch(location, want, target, what).finally(() => this.inflight.delete(want));
      this.inflight.set(want, p);
    }
    return p;
  }

  private async fetch(location: string, want: string, target: string, what: string): Promise<string> {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    const tmp = `${target}.part-${crypto.randomBytes(4).toString('hex')}`;
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    const started = Date.now();
    try {
      const source =
        location.startsWith('blob:') && this.blobs ? await this.blobs(want, what) : await open(location, what);
      source.on('data', (c: Buffer) => {
        hash.update(c);
        bytes += c.length;
      });
      await pipeline(source, fs.createWriteStream(tmp, { mode: 0o444 }));
      const got = hash.digest('hex');
      if (got !== want) {
        this.stats.mismatches++;
        throw new Error(
          `${what}: ${location} has SHA-256 ${got}, but the image says ${want}: the file changed or the image definition is wrong`,
        );
      }
      fs.renameSync(tmp, target);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
    this.stats.fetched++;
    this.stats.bytes += bytes;
    this.log.info({ what, location, bytes, ms: Date.now() - started }, 'image file fetched and verified');
    return target;
  }
}

async function open(location: string, what: string): Promise<Readable> {
  if (location.startsWith('/')) {
    try {
      await fs.promises.access(location, fs.constants.R_OK);
    } catch (err) {
      throw new Error(`${what}: cannot read ${location} on this host (${(err as NodeJS.ErrnoException).code})`);
    }
    return fs.createReadStream(location);
  }
  let res: Response;
  try {
    res = await fetch(location, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    throw new Error(`${what}: cannot fetch ${location} (${cause}): is the image server reachable from this host?`);
  }
  if (!res.ok || !res.body) {
    res.body?.cancel().catch(() => {});
    throw new Error(`${what}: ${location} answered HTTP ${res.status}`);
  }
  return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
}
