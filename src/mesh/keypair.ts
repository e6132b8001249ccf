// One direction pair of transport keys from a completed handshake, with its counters and replay window.
// encrypt/decrypt are the per-packet hot path: keys set up once (mesh/aead.ts), no closures, no allocation
// but the outgoing datagram.
import sodium from 'sodium-native';
import { AEAD_TAG_BYTES, TRANSPORT_HEADER_BYTES } from '../constants.ts';
import type { ExpressMark } from '../express.ts';
import { scavengePacer } from '../heap.ts';
import { type Aead, type AeadImpl, aeadFor } from './aead.ts';
import { REPLAY_WORDS, ReplayWindow, STATE_SEND } from './replay.ts';
import { counterHigh, fullCounter, MAX_COUNTER, readCounterLow, writeTransportHeader } from './wire.ts';

/** Why Keypair.open refused a datagram (negative, so a result >= 0 is always a plaintext length). */
export const OPEN_NOT_AUTHENTIC = -1;
export const OPEN_REPLAYED = -2; // a counter already seen, or older than the replay window
export const OPEN_COUNTER_RANGE = -3; // a counter beyond MAX_COUNTER
export type OpenRefusal = typeof OPEN_NOT_AUTHENTIC | typeof OPEN_REPLAYED | typeof OPEN_COUNTER_RANGE;

/** Sealed datagrams are Buffers outside V8's heap: they pace scavenges (src/heap.ts). */
const pacer = scavengePacer();

/** One ArrayBuffer per keypair (off V8's heap, so its address is stable): the state, then the replay ring. */
const STATE_BYTES = 16;

export class Keypair {
  /** [STATE_SEND] the next counter to send, [STATE_TOP] the highest received: shared with the express path
   *  (native/express.cc), which sends and receives on this session with the same counters and window. */
  readonly state: Float64Array;
  readonly ring: Uint32Array;
  readonly replay: ReplayWindow;
  readonly sendAead: Aead;
  readonly recvAead: Aead;
  /** The express path's install marks of each direction (src/express.ts). */
  readonly expressSend: ExpressMark = { exGen: -1, exUntil: 0 };
  readonly expressRecv: ExpressMark = { exGen: -1, exUntil: 0 };

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
    const shared = new ArrayBuffer(STATE_BYTES + REPLAY_WORDS * 4);
    this.state = new Float64Array(shared, 0, 2);
    this.ring = new Uint32Array(shared, STATE_BYTES, REPLAY_WORDS);
    this.replay = new ReplayWindow(this.ring, this.state);
  }

  get sendCounter(): number {
    return this.state[STATE_SEND];
  }

  set sendCounter(v: number) {
    this.state[STATE_SEND] = v;
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
