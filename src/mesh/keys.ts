// Curve25519 static keys as base64 text, the same habit as `wg genkey | wg pubkey`.
import sodium from 'sodium-native';
import { NOISE_KEY_BYTES } from '../constants.ts';

export function generatePrivateKey(): Buffer {
  const sk = Buffer.alloc(NOISE_KEY_BYTES);
  sodium.randombytes_buf(sk);
  // Clamp as X25519 does, so the stored key is the scalar actually used.
  sk[0] &= 248;
  sk[31] = (sk[31] & 127) | 64;
  return sk;
}

export function publicKeyOf(privateKey: Buffer): Buffer {
  const pk = Buffer.alloc(NOISE_KEY_BYTES);
  sodium.crypto_scalarmult_base(pk, privateKey);
  return pk;
}

/** Decodes a base64 key of exactly 32 bytes, or returns null. */
export function decodeKey(text: string): Buffer | null {
  const trimmed = text.trim();
  if (!/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/.test(trimmed)) return null;
  const key = Buffer.from(trimmed, 'base64');
  return key.length === NOISE_KEY_BYTES ? key : null;
}

export function encodeKey(key: Buffer): string {
  return key.toString('base64');
}
