// The part of sodium-native that homewire uses (the published @types lack the IETF ChaCha20-Poly1305 calls).
declare module 'sodium-native' {
  const sodium: {
    randombytes_buf(buf: Uint8Array): void;
    randombytes_random(): number;
    crypto_scalarmult_base(pk: Uint8Array, sk: Uint8Array): void;
    crypto_aead_chacha20poly1305_ietf_encrypt(
      c: Uint8Array,
      m: Uint8Array,
      ad: Uint8Array | null,
      nsec: null,
      npub: Uint8Array,
      k: Uint8Array,
    ): number;
    /** Throws if the ciphertext does not authenticate. */
    crypto_aead_chacha20poly1305_ietf_decrypt(
      m: Uint8Array,
      nsec: null,
      c: Uint8Array,
      ad: Uint8Array | null,
      npub: Uint8Array,
      k: Uint8Array,
    ): number;
    sodium_memzero(buf: Uint8Array): void;
    /** Constant-time comparison of equal-length buffers. */
    sodium_memcmp(a: Uint8Array, b: Uint8Array): boolean;
    /** BLAKE2b; output 16-64 bytes, key (optional) 16-64 bytes. */
    crypto_generichash(out: Uint8Array, input: Uint8Array, key?: Uint8Array): void;
    crypto_aead_xchacha20poly1305_ietf_encrypt(
      c: Uint8Array,
      m: Uint8Array,
      ad: Uint8Array | null,
      nsec: null,
      npub: Uint8Array,
      k: Uint8Array,
    ): number;
    /** Throws if the ciphertext does not authenticate. */
    crypto_aead_xchacha20poly1305_ietf_decrypt(
      m: Uint8Array,
      nsec: null,
      c: Uint8Array,
      ad: Uint8Array | null,
      npub: Uint8Array,
      k: Uint8Array,
    ): number;
  };
  export default sodium;
}
