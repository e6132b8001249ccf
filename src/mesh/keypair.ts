// One direction pair of transport keys from a completed handshake, with its counters and replay window.
// encrypt/decrypt are the per-packet hot path: keys set up once (mesh/aead.ts), no closures, no allocation
// but the outgoing datagram.
import sodium from 'sodium-native';
import { AEAD_TAG_BYTES, TRANSPORT_HEADER_BYTES } from '../constants.ts';
import { scavengePacer } from '../heap.ts';
import { type Aead, type AeadImpl, aeadFor } from './aead.ts';
import { ReplayWindow } from './replay.ts';
import { counterHigh, fullCounter, MAX_COUNTER, readCounterLow, writeTransportHeader } from './wire.ts';

/** Why Keypair.open refused a datagram (negative, so a result >= 0 is always a plaintext length). */
export const OPEN_NOT_AUTHENTIC = -1;
export const OPEN_REPLAYED = -2; // a counter already seen, or older than the replay window
export const OPEN_COUNTER_RANGE = -3; // a counter beyond MAX_COUNTER
export type OpenRefusal = typeof OPEN_NOT_AUTHENTIC | typeof OPEN_REPLAYED | typeof OPEN_COUNTER_RANGE;

/** Sealed datagrams are Buffers outside V8's heap: they pace scavenges (src/heap.ts). */
const pacer = scavengePacer();

export class Keypair {
  sendCounter = 0;
  readonly replay = new ReplayWindow();
  private readonly sendAead: Aead;
  private readonly recvAead: Aead;

  constructor(
    private readonly sendKey: Buffer,
    private readonly recvKey: Buffer,
    readonly localIndex: number,
    readonly remoteIndex: number,
    readonly initiator: boolean,
    readonly createdMs: number,
    aead?: AeadImpl,
  ) {
    this.sendAead = aeadFor(sendKey, aead);
    this.recvAead = aeadFor(recvKey, aead);
  }

  /** Encrypts payload (borrowed) into a new datagram with header; returns null if counters are exhausted.
   *  `site` is the relayed messages' site id (authenticated with the header). */
  seal(type: number, payload: Buffer, site = 0): Buffer | null {
    const counter = this.sendCounter;
    if (counter >= MAX_COUNTER) return null;
    this.sendCounter = counter + 1;
    const out = Buffer.allocUnsafe(TRANSPORT_HEADER_BYTES + payload.length + AEAD_TAG_BYTES);
    pacer.note(out.length);
    writeTransportHeader(out, type, this.remoteIndex, counter, site);
    return this.sendAead.seal(out, payload, counterHigh(counter)) ? out : null;
  }

  /**
   * Authenticates and decrypts msg in place (msg is owned by the caller and may be modified).
   * Returns the plaintext length (>= 0) or why it was refused (OPEN_*, all negative).
   * The replay window is only moved by authentic packets.
   */
  open(msg: Buffer): number | OpenRefusal {
    const counter = fullCounter(readCounterLow(msg), this.replay.highest);
    if (counter > MAX_COUNTER) return OPEN_COUNTER_RANGE;
    if (!this.replay.wouldAccept(counter)) return OPEN_REPLAYED;
    const plainLength = this.recvAead.open(msg, counterHigh(counter));
    if (plainLength < 0) return OPEN_NOT_AUTHENTIC;
    if (!this.replay.accept(counter)) return OPEN_REPLAYED;
    return plainLength;
  }

  /** Zeroes the keys (the keypair is no longer usable). */
  wipe(): void {
    this.sendAead.wipe();
    this.recvAead.wipe();
    sodium.sodium_memzero(this.sendKey);
    sodium.sodium_memzero(this.recvKey);
  }
}
