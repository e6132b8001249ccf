// ChaCha20-Poly1305 for transport messages, keyed once per session key. Two implementations with one shape:
// the addon's (native/aead.cc: Node's own OpenSSL, one call per packet with the datagram alone) and
// sodium-native's (five arguments per call, three of them fresh subarrays). The addon's is used when it is
// built, unless HOMEWIRE_AEAD=sodium; both produce the same bytes (the wire format is RFC 8439 with the
// transport header as AAD and 4 zero bytes | the full 64-bit counter LE as nonce: the header carries the
// counter's low 32 bits, the caller gives the high 32).
import sodium from 'sodium-native';
import { AEAD_TAG_BYTES, TRANSPORT_HEADER_BYTES } from '../constants.ts';
import { addonOrNull } from '../addon.ts';
import { OFF_COUNTER } from './wire.ts';

export interface Aead {
  /** out = header (already written) | ciphertext of payload | tag. False if it could not be sealed. */
  seal(out: Buffer, payload: Buffer, counterHigh: number): boolean;
  /** Authenticates and decrypts msg in place; the plaintext length, or -1 if it is not authentic. */
  open(msg: Buffer, counterHigh: number): number;
  /** Forgets the key. */
  wipe(): void;
  /** The addon's key object (the express path seals and opens with it), or null (sodium). */
  readonly native: object | null;
}

interface NativeAeadKey {
  seal(out: Buffer, payload: Buffer, counterHigh: number): number;
  open(msg: Buffer, counterHigh: number): number;
  wipe(): void;
}
type NativeAeadCtor = new (key: Buffer) => NativeAeadKey;

export type AeadImpl = 'openssl' | 'sodium';

const nativeCtor: NativeAeadCtor | null = (() => {
  if (process.env.HOMEWIRE_AEAD === 'sodium') return null;
  const ctor = addonOrNull()?.AeadKey;
  return typeof ctor === 'function' ? (ctor as NativeAeadCtor) : null;
})();

/** What new keys use in this process. */
export const AEAD_IMPL: AeadImpl = nativeCtor ? 'openssl' : 'sodium';

class OpensslAead implements Aead {
  readonly native: NativeAeadKey;
  constructor(ctor: NativeAeadCtor, key: Buffer) {
    this.native = new ctor(key);
  }
  seal(out: Buffer, payload: Buffer, counterHigh: number): boolean {
    return this.native.seal(out, payload, counterHigh) === 0;
  }
  open(msg: Buffer, counterHigh: number): number {
    return this.native.open(msg, counterHigh);
  }
  wipe(): void {
    this.native.wipe();
  }
}

class SodiumAead implements Aead {
  readonly native = null;
  private readonly nonce = Buffer.alloc(12);
  constructor(private readonly key: Buffer) {}
  /** 4 zero bytes | the counter u64 LE: its low half from the header, its high half given. */
  private nonceFor(header: Buffer, counterHigh: number): Buffer {
    header.copy(this.nonce, 4, OFF_COUNTER, OFF_COUNTER + 4);
    this.nonce.writeUInt32LE(counterHigh, 8);
    return this.nonce;
  }
  seal(out: Buffer, payload: Buffer, counterHigh: number): boolean {
    sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
      out.subarray(TRANSPORT_HEADER_BYTES),
      payload,
      out.subarray(0, TRANSPORT_HEADER_BYTES),
      null,
      this.nonceFor(out, counterHigh),
      this.key,
    );
    return true;
  }
  open(msg: Buffer, counterHigh: number): number {
    const plainLength = msg.length - TRANSPORT_HEADER_BYTES - AEAD_TAG_BYTES;
    if (plainLength < 0) return -1;
    const nonce = this.nonceFor(msg, counterHigh);
    try {
      sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
        msg.subarray(TRANSPORT_HEADER_BYTES, TRANSPORT_HEADER_BYTES + plainLength),
        null,
        msg.subarray(TRANSPORT_HEADER_BYTES),
        msg.subarray(0, TRANSPORT_HEADER_BYTES),
        nonce,
        this.key,
      );
    } catch {
      return -1;
    }
    return plainLength;
  }
  wipe(): void {
    sodium.sodium_memzero(this.key);
  }
}

/** An AEAD keyed with key (the caller keeps and wipes its copy; sodium's keeps a reference to it). */
export function aeadFor(key: Buffer, impl: AeadImpl = AEAD_IMPL): Aead {
  if (impl === 'openssl') {
    if (!nativeCtor) throw new Error('the OpenSSL AEAD needs the addon (npm run build)');
    return new OpensslAead(nativeCtor, key);
  }
  return new SodiumAead(key);
}
