// TLS for the streams between two QEMUs (live migration RAM, the NBD disk mirror, a stopped VM's disk copy):
// QEMU's own TLS with a pre-shared key (tls-creds-psk), a fresh key per operation. The coordinator makes the
// key and hands it to both agents in the commands of that one operation; each agent writes it into a private
// directory (keys.psk, mode 600) that only that operation's QEMU objects read, and removes it afterwards.
// Nothing else ever uses the key, so a captured or replayed stream is useless for any other migration.
//
// Used by migrations (source: object-add + migrate-set-parameters tls-creds, blockdev-add nbd tls-creds;
// destination: -object at launch + tls-creds on migrate-incoming and nbd-server-start) and by cold disk
// copies (qemu-nbd --tls-creds, qemu-img convert --object).
import fs from 'node:fs';
import path from 'node:path';
import { optPath } from './disks.ts';
import { TLS_OBJECT } from './driver.ts';

/** The PSK identity QEMU sends (the username of tls-creds-psk; it is not a secret). */
export const PSK_IDENTITY = 'homewire';
const PSK_RE = /^[0-9a-f]{64}$/;

export interface TlsKey {
  dir: string;
  identity: string;
}

/** Checks a key from a command: 32 bytes as 64 lowercase hex digits. */
export function checkPsk(psk: unknown): string {
  if (typeof psk !== 'string' || !PSK_RE.test(psk))
    throw new Error('the migration key (tls_psk) must be 64 lowercase hex digits (32 random bytes)');
  return psk;
}

/**
 * Writes dir/keys.psk (0600 in a fresh 0700 directory) for one operation, owned by `owner` (QEMU's user after
 * -runas: it reads the key when the TLS session starts, after it dropped root).
 */
export function writePsk(dir: string, psk: string, owner?: { uid: number; gid: number }): TlsKey {
  checkPsk(psk);
  fs.rmSync(dir, { recursive: true, force: true }); // a leftover of an interrupted operation
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, 'keys.psk');
  fs.writeFileSync(file, `${PSK_IDENTITY}:${psk}\n`, { mode: 0o600, flag: 'wx' });
  if (owner) {
    fs.chownSync(dir, owner.uid, owner.gid);
    fs.chownSync(file, owner.uid, owner.gid);
  }
  return { dir, identity: PSK_IDENTITY };
}

export function removePsk(key: TlsKey | null): void {
  if (key) fs.rmSync(key.dir, { recursive: true, force: true });
}

/** QMP object-add arguments for the credentials of one operation. */
export function pskObject(key: TlsKey, endpoint: 'client' | 'server', id = TLS_OBJECT): Record<string, unknown> {
  // The server side takes no username (QEMU refuses one): it looks the client's identity up in keys.psk.
  return {
    'qom-type': 'tls-creds-psk',
    id,
    endpoint,
    dir: key.dir,
    ...(endpoint === 'client' ? { username: key.identity } : {}),
  };
}

/** The same as a command-line object (qemu-nbd, qemu-img --object). */
export function pskObjectArg(key: TlsKey, endpoint: 'client' | 'server', id = TLS_OBJECT): string {
  return `tls-creds-psk,id=${id},endpoint=${endpoint},dir=${optPath(key.dir)}${endpoint === 'client' ? `,username=${key.identity}` : ''}`;
}
