// Image definitions: a kernel and an initrd (and an optional disk), each an http(s):// URL from a source the
// coordinator's image_sources allow (image-sources.ts) or an absolute path on the hosts (which an agent
// reads only with allow_local_images), each with its SHA-256. The coordinator validates; hosts check the
// source again, fetch, verify and cache (src/agent/images.ts).
import { CMDLINE_MAX_CHARS } from './constants.ts';
import { parseImageSources, refuseUrl } from './image-sources.ts';
import { ApiError, type ImageRecord } from './types.ts';

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const FILES = ['kernel', 'initrd', 'disk'] as const;
const KEYS = ['name', 'kernel', 'initrd', 'disk', 'sha256', 'cmdline'];

function bad(message: string): never {
  throw new ApiError(400, 'bad_request', message);
}

export function checkName(v: unknown, what: string): string {
  if (typeof v !== 'string' || !NAME_RE.test(v)) {
    bad(
      `${what} name ${JSON.stringify(v)} is not valid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return v as string;
}

/** A guest kernel command line: printable ASCII (no control characters, no newlines), bounded. */
export function checkCmdline(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length > CMDLINE_MAX_CHARS || !/^[\x20-\x7e]*$/.test(v))
    bad(`${what} must be printable ASCII of at most ${CMDLINE_MAX_CHARS} characters`);
  return v as string;
}

/**
 * Validates an image definition (config entry or POST /v1/images body); relative locations need imageServer,
 * URLs must come from `sources` (the image_sources allowlist, image_server included).
 */
export function checkImage(
  raw: unknown,
  imageServer: string | undefined,
  sources: readonly string[],
): Omit<ImageRecord, 'created_at'> {
  const allowed = parseImageSources(sources);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    bad('an image is a mapping: { name, kernel, initrd, sha256: { kernel, initrd } }');
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!KEYS.includes(k)) bad(`unknown image key "${k}"; allowed: ${KEYS.join(', ')}`);
  const name = checkName(o.name, 'image');
  const sums = o.sha256;
  if (sums === null || typeof sums !== 'object' || Array.isArray(sums))
    bad(`image ${name}: sha256 must be a mapping { kernel: HEX, initrd: HEX${o.disk ? ', disk: HEX' : ''} }`);
  const s = sums as Record<string, unknown>;
  for (const k of Object.keys(s))
    if (!(FILES as readonly string[]).includes(k)) bad(`image ${name}: sha256.${k} is not one of kernel, initrd, disk`);
  const out: Omit<ImageRecord, 'created_at'> = { name, kernel: '', initrd: '', sha256: { kernel: '', initrd: '' } };
  for (const f of FILES) {
    if (o[f] === undefined || o[f] === null) {
      if (f === 'disk') {
        if (s.disk !== undefined) bad(`image ${name}: sha256.disk given but no disk`);
        continue;
      }
      bad(`image ${name}: ${f} is missing: give an http(s):// URL or an absolute path on the hosts`);
    }
    const location = resolveLocation(o[f], imageServer, `image ${name}: ${f}`);
    if (!location.startsWith('/')) {
      const why = refuseUrl(location, allowed);
      if (why)
        throw new ApiError(
          400,
          'image_source_refused',
          `image ${name}: ${f}: ${why}: add the host to image_sources in the coordinator config if it is meant to serve images`,
        );
    }
    const sum = s[f];
    if (typeof sum !== 'string' || !SHA256_RE.test(sum.toLowerCase())) {
      bad(`image ${name}: sha256.${f} must be the file's SHA-256 as 64 hex digits (sha256sum FILE)`);
    }
    out[f] = location;
    out.sha256[f] = (sum as string).toLowerCase();
  }
  if (o.cmdline !== undefined) out.cmdline = checkCmdline(o.cmdline, `image ${name}: cmdline`);
  return out;
}

function resolveLocation(v: unknown, imageServer: string | undefined, what: string): string {
  if (typeof v !== 'string' || v.length === 0) bad(`${what} must be an http(s):// URL or an absolute path`);
  const text = v as string;
  if (text.startsWith('/')) {
    if (text.includes('\0') || text.split('/').includes('..')) bad(`${what}: "${text}" must be a plain absolute path`);
    return text;
  }
  if (/^https?:\/\//.test(text)) {
    try {
      new URL(text);
    } catch {
      bad(`${what}: "${text}" is not a valid URL`);
    }
    return text;
  }
  if (/^[a-z][a-z0-9+.-]*:/i.test(text))
    bad(`${what}: "${text}": only http://, https:// and absolute paths are supported`);
  if (!imageServer)
    bad(
      `${what}: "${text}" is relative: give a full http(s):// URL or absolute path, or set image_server in the coordinator config`,
    );
  return new URL(text, `${imageServer}/`).toString();
}
