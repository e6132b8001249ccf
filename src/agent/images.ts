// The host's image cache: each file of an image is fetched once, its SHA-256 checked while it streams, and
// kept as <cache_dir>/<sha256>. A file is written under a temporary name and renamed only after the checksum
// matched, so the cache never holds a wrong or partial file, and concurrent requests for the same file share
// one download. Cached files are read-only for everyone (a VM's disk base is never written: guests write to
// their own overlay).
//
// Warm images' files (saved state, frozen overlay) are `blob:SHA256` locations: fetched from the coordinator's
// blob store with this host's own credentials, and content-addressed like everything here.
//
// Where a file may come from is checked here again, whatever the coordinator said: an http(s) URL whose host
// is in the launch's image_sources, connected to only after DNS resolution showed an address that is public
// or listed (no loopback, link-local or private service by way of a name); no redirects; at most
// IMAGE_FILE_MAX_BYTES. A path on this host only with allow_local_images, and only a regular file. Errors name
// the location and the status or error code, never what the source sent.
import crypto from 'node:crypto';
import dns from 'node:dns';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import path from 'node:path';
import { type Readable, Transform } from 'node:stream';
import tls from 'node:tls';
import { pipeline } from 'node:stream/promises';
import { IMAGE_FETCH_TIMEOUT_MS, IMAGE_FILE_MAX_BYTES } from '../coordinator/constants.ts';
import {
  addressAllowed,
  effectivePort,
  type ImageSource,
  parseImageSources,
  rangeOf,
  refuseUrl,
} from '../coordinator/image-sources.ts';
import type { ImageRecord } from '../coordinator/types.ts';
import type { Logger } from '../log.ts';
import { CommandRefused } from './validate.ts';

export interface ImageFiles {
  kernel: string;
  initrd: string;
  disk?: string;
  /** A warm image's saved state and frozen overlay. */
  state?: string;
  overlay?: string;
}

/** Opens blob:SHA256 locations (the coordinator's blob store, with this host's credentials). */
export type BlobSource = (sha256: string, what: string) => Promise<Readable>;

/** Where images may come from, for one launch. */
export interface ImagePolicy {
  sources: readonly string[];
  allowLocal: boolean;
  /** Extra CA certificates for https:// image servers (the agent's ca_file). */
  ca?: string;
}

export class ImageCache {
  private readonly inflight = new Map<string, Promise<string>>();
  readonly stats = { hits: 0, fetched: 0, bytes: 0, mismatches: 0 };

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly blobs: BlobSource | null = null,
  ) {}

  async image(img: ImageRecord, policy: ImagePolicy): Promise<ImageFiles> {
    const w = img.warm;
    const [kernel, initrd, disk, state, overlay] = await Promise.all([
      this.file(img.kernel, img.sha256.kernel, `image ${img.name} kernel`, policy),
      this.file(img.initrd, img.sha256.initrd, `image ${img.name} initrd`, policy),
      img.disk ? this.file(img.disk, img.sha256.disk!, `image ${img.name} disk`, policy) : Promise.resolve(undefined),
      w ? this.blob(w.state.sha256, `warm image ${img.name} state`) : Promise.resolve(undefined),
      w?.overlay ? this.blob(w.overlay.sha256, `warm image ${img.name} disk overlay`) : Promise.resolve(undefined),
    ]);
    return {
      kernel,
      initrd,
      ...(disk ? { disk } : {}),
      ...(state ? { state } : {}),
      ...(overlay ? { overlay } : {}),
    };
  }

  /** A blob of the coordinator's store (no image_sources check: it comes from the coordinator, by hash). */
  blob(sha256: string, what: string): Promise<string> {
    const want = sha256.toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(want)) return Promise.reject(new CommandRefused('bad_image', `${what}: bad hash`));
    const target = path.join(this.dir, want);
    if (fs.existsSync(target)) {
      this.stats.hits++;
      return Promise.resolve(target);
    }
    const blobs = this.blobs;
    if (!blobs) return Promise.reject(new Error(`${what}: this agent cannot fetch blobs`));
    let p = this.inflight.get(want);
    if (!p) {
      p = this.store(`blob:${want}`, want, target, what, () => blobs(want, what)).finally(() =>
        this.inflight.delete(want),
      );
      this.inflight.set(want, p);
    }
    return p;
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

  /** The local path of a verified copy of `location`. The source is checked even when the file is cached. */
  file(location: string, sha256: string, what: string, policy: ImagePolicy): Promise<string> {
    const sources = parseImageSources(policy.sources);
    try {
      checkLocation(location, what, sources, policy.allowLocal);
    } catch (err) {
      return Promise.reject(err);
    }
    const want = sha256.toLowerCase();
    const target = path.join(this.dir, want);
    if (fs.existsSync(target)) {
      this.stats.hits++;
      return Promise.resolve(target);
    }
    let p = this.inflight.get(want);
    if (!p) {
      p = this.fetch(location, want, target, what, sources, policy.ca).finally(() => this.inflight.delete(want));
      this.inflight.set(want, p);
    }
    return p;
  }

  private fetch(
    location: string,
    want: string,
    target: string,
    what: string,
    sources: ImageSource[],
    ca: string | undefined,
  ): Promise<string> {
    return this.store(location, want, target, what, () =>
      location.startsWith('/') ? openLocal(location, what) : openUrl(location, what, sources, ca),
    );
  }

  /** Streams what open() gives into the cache as `want`, checking size and SHA-256 on the way. */
  private async store(
    location: string,
    want: string,
    target: string,
    what: string,
    open: () => Promise<Readable>,
  ): Promise<string> {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    const tmp = `${target}.part-${crypto.randomBytes(4).toString('hex')}`;
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    const started = Date.now();
    try {
      const source = await open();
      const meter = new Transform({
        transform(c: Buffer, _enc, cb) {
          bytes += c.length;
          if (bytes > IMAGE_FILE_MAX_BYTES) {
            cb(new Error(`${what}: ${location} is larger than ${IMAGE_FILE_MAX_BYTES} bytes`));
            return;
          }
          hash.update(c);
          cb(null, c);
        },
      });
      await pipeline(source, meter, fs.createWriteStream(tmp, { mode: 0o444 }));
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

/** Throws CommandRefused unless `location` is an allowed URL, or an allowed plain absolute path. */
function checkLocation(location: string, what: string, sources: ImageSource[], allowLocal: boolean): void {
  if (location.startsWith('/')) {
    if (!allowLocal)
      throw new CommandRefused(
        'local_image',
        `${what}: ${location} is a path on this host, and this host does not take local images (coordinator.allow_local_images)`,
      );
    if (location.includes('\0') || path.posix.normalize(location) !== location)
      throw new CommandRefused('local_image', `${what}: "${location}" is not a plain absolute path`);
    return;
  }
  const why = refuseUrl(location, sources);
  if (why) throw new CommandRefused('image_source', `${what}: ${location} refused: ${why}`);
}

async function openLocal(location: string, what: string): Promise<Readable> {
  let st: fs.Stats;
  try {
    st = await fs.promises.stat(location);
  } catch (err) {
    throw new Error(`${what}: cannot read ${location} on this host (${(err as NodeJS.ErrnoException).code})`);
  }
  if (!st.isFile()) throw new CommandRefused('local_image', `${what}: ${location} is not a regular file`);
  return fs.createReadStream(location);
}

/**
 * GET with the address check in the connection's own DNS lookup: what is checked is what is connected to
 * (no second resolution an attacker's DNS could answer differently). No redirects are followed.
 */
function openUrl(location: string, what: string, sources: ImageSource[], ca: string | undefined): Promise<Readable> {
  const u = new URL(location);
  const port = effectivePort(u);
  let refused: CommandRefused | null = null;
  const lookup: net.LookupFunction = (host, opts, cb) => {
    dns.lookup(host, { all: true }, (err, addrs) => {
      if (err) return cb(err, '', 4);
      const bad = addrs.find((a) => !addressAllowed(a.address, port, sources));
      if (bad) {
        refused = new CommandRefused(
          'image_source',
          `${what}: ${u.hostname} resolves to ${bad.address}, a ${rangeOf(bad.address)} address that image_sources does not list`,
        );
        return cb(refused, '', 4);
      }
      if ((opts as dns.LookupOptions).all) return cb(null, addrs as unknown as string, 4);
      cb(null, addrs[0].address, addrs[0].family);
    });
  };
  return new Promise((resolve, reject) => {
    const onResponse = (res: http.IncomingMessage) => {
      if (res.statusCode !== 200) {
        res.resume();
        const redirect = res.statusCode! >= 300 && res.statusCode! < 400 ? ' (redirects are not followed)' : '';
        return reject(new Error(`${what}: ${location} answered HTTP ${res.statusCode}${redirect}`));
      }
      const len = Number(res.headers['content-length']);
      if (Number.isFinite(len) && len > IMAGE_FILE_MAX_BYTES) {
        res.destroy();
        return reject(new Error(`${what}: ${location} is larger than ${IMAGE_FILE_MAX_BYTES} bytes`));
      }
      resolve(res);
    };
    const o = { lookup, timeout: IMAGE_FETCH_TIMEOUT_MS, agent: false as const };
    const req =
      u.protocol === 'https:'
        ? https.request(u, { ...o, ...(ca ? { ca: [...tls.rootCertificates, ca] } : {}) }, onResponse)
        : http.request(u, o, onResponse);
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (refused) return reject(refused);
      reject(
        new Error(
          `${what}: cannot fetch ${location} (${err.code ?? err.message}): is the image server reachable from this host?`,
        ),
      );
    });
    req.end();
  });
}
