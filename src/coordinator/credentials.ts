// Per-host credentials. `homewire host add NAME` (admin) mints a token bound to NAME; the coordinator keeps
// only its SHA-256, so a copy of the store does not let anyone act as a host. `homewire host remove NAME`
// deletes the record: the token stops working at once.
//
// A token is NAME.SECRET (SECRET: 32 random bytes, base64url). The name lets the coordinator find the one
// record to compare against, and the comparison of digests is constant-time, so neither the secret nor its
// length leaks through timing. The name in a token is not a secret (host names are in every host list).
import crypto from 'node:crypto';
import { HOST_TOKEN_SECRET_BYTES } from './constants.ts';
import { checkName } from './images.ts';
import type { Store } from './store.ts';
import { ApiError } from './types.ts';

export interface CredentialRecord {
  name: string;
  /** SHA-256 of the whole token, hex. */
  token_sha256: string;
  created_at: string;
}

/** Why a host token was refused (metric label values). */
export type HostAuthFailure = 'malformed_token' | 'unknown_host' | 'wrong_token';

export type HostAuth = { ok: true; host: string } | { ok: false; reason: HostAuthFailure };

const SECRET_RE = /^[A-Za-z0-9_-]{43}$/; // 32 bytes, base64url without padding

export function sha256Hex(s: string): string {
  return crypto.createHash('sha256').update(s).digest('hex');
}

/** Splits NAME.SECRET; null if it is not shaped like a host token. */
export function parseHostToken(token: string): { name: string; secret: string } | null {
  const dot = token.lastIndexOf('.');
  if (dot <= 0) return null;
  const name = token.slice(0, dot);
  const secret = token.slice(dot + 1);
  try {
    checkName(name, 'host');
  } catch {
    return null;
  }
  return SECRET_RE.test(secret) ? { name, secret } : null;
}

// Compared against when no record exists, so a miss costs the same work as a wrong secret.
const DUMMY_DIGEST = crypto.createHash('sha256').update('no such host').digest();

export class Credentials {
  constructor(
    private readonly store: Store,
    private readonly now: () => number,
  ) {}

  /** Mints a token for `name`; with rotate, replaces an existing one (which then stops working). */
  async add(name: string, rotate: boolean): Promise<{ token: string; rotated: boolean }> {
    checkName(name, 'host');
    const token = `${name}.${crypto.randomBytes(HOST_TOKEN_SECRET_BYTES).toString('base64url')}`;
    const rec: CredentialRecord = {
      name,
      token_sha256: sha256Hex(token),
      created_at: new Date(this.now()).toISOString(),
    };
    if (await this.store.create('credentials', name, rec)) return { token, rotated: false };
    if (!rotate)
      throw new ApiError(
        409,
        'name_taken',
        `host ${name} has a token already: \`homewire host add ${name} --rotate\` replaces it (the old one stops working), \`homewire host remove ${name}\` revokes it`,
      );
    await this.store.put('credentials', name, rec);
    return { token, rotated: true };
  }

  /** Revokes `name`'s token; false if it had none. */
  remove(name: string): Promise<boolean> {
    return this.store.delete('credentials', name);
  }

  async has(name: string): Promise<boolean> {
    return (await this.store.get<CredentialRecord>('credentials', name)) !== null;
  }

  /** Which host a bearer token belongs to, or why it belongs to none. */
  async authenticate(token: string): Promise<HostAuth> {
    const parsed = parseHostToken(token);
    if (!parsed) return { ok: false, reason: 'malformed_token' };
    const rec = await this.store.get<CredentialRecord>('credentials', parsed.name);
    const want = rec ? Buffer.from(rec.token_sha256, 'hex') : DUMMY_DIGEST;
    const got = crypto.createHash('sha256').update(token).digest();
    const same = want.length === got.length && crypto.timingSafeEqual(want, got);
    if (!rec) return { ok: false, reason: 'unknown_host' };
    return same ? { ok: true, host: parsed.name } : { ok: false, reason: 'wrong_token' };
  }
}
