// Noise IK handshakes (Noise_IK_25519_ChaChaPoly_BLAKE2b, via noise-protocol). Runs only from the handshake
// queue, never on the data path. Every HandshakeState maps protected memory: each one is destroyed on
// every path, and the split cipher states are copied out and freed at once.
import { createRequire } from 'node:module';
import {
  HANDSHAKE_INIT_BYTES,
  HANDSHAKE_RESP_BYTES,
  NOISE_KEY_BYTES,
  NOISE_PROLOGUE,
  TIMESTAMP_BYTES,
} from '../constants.ts';
import {
  END_INIT_NOISE,
  END_RESP_NOISE,
  OFF_INIT_NOISE,
  OFF_RESP_NOISE,
  readSender,
  writeHandshakeInit,
  writeHandshakeResp,
} from './wire.ts';

const require = createRequire(import.meta.url);
// noise-protocol allocates through its own sodium instance: free its buffers with that same instance.
const noise = require('noise-protocol') as NoiseProtocol;
const { sodium_free, sodium_malloc } = require('sodium-universal/memory') as {
  sodium_free(b: Buffer): void;
  sodium_malloc(n: number): Buffer;
};

/** The part of noise-protocol homewire uses. A HandshakeState is opaque but for the remote static key. */
interface NoiseState {
  rs: Uint8Array;
}
interface NoiseSplit {
  tx: Buffer;
  rx: Buffer;
}
interface NoiseProtocol {
  initialize(
    pattern: 'IK',
    initiator: boolean,
    prologue: Buffer,
    s: StaticKeys,
    e: null,
    rs: Buffer | null,
  ): NoiseState;
  /** Returns the split cipher states when the message completes the handshake. */
  writeMessage(state: NoiseState, payload: Buffer, out: Buffer): NoiseSplit | undefined;
  readMessage: ((state: NoiseState, msg: Buffer, payload: Buffer) => NoiseSplit | undefined) & { bytes: number };
  destroy(state: NoiseState): void;
}

export interface StaticKeys {
  publicKey: Buffer;
  secretKey: Buffer;
}

export interface SessionKeys {
  send: Buffer;
  recv: Buffer;
}

/** An initiation in flight: owns a HandshakeState until consumeResponse() or abandon(). */
export class PendingHandshake {
  constructor(
    private state: NoiseState | null,
    readonly localIndex: number,
    readonly sentMs: number,
  ) {}

  /**
   * Completes the handshake from a response datagram; null if it does not authenticate. A response that does
   * not authenticate leaves this handshake pending (it is tried on a copy of the state), so a forged response
   * cannot cancel the real one still on its way. The state is freed once a response authenticates.
   */
  consumeResponse(msg: Buffer): SessionKeys | null {
    const state = this.state;
    if (!state) return null;
    const trial = cloneState(state);
    try {
      const split = noise.readMessage(trial, msg.subarray(OFF_RESP_NOISE, END_RESP_NOISE), Buffer.alloc(0));
      if (!split) return null;
      this.state = null;
      noise.destroy(state);
      return takeSplit(split);
    } catch {
      return null;
    } finally {
      noise.destroy(trial);
    }
  }

  get pending(): boolean {
    return this.state !== null;
  }

  abandon(): void {
    if (this.state) noise.destroy(this.state);
    this.state = null;
  }
}

/** Starts an IK handshake to the peer's static key; the payload carries a strictly increasing timestamp. */
export function createInitiation(
  local: StaticKeys,
  remote: Buffer,
  localIndex: number,
  nowMs: number,
  timestamp: Buffer,
): { msg: Buffer; pending: PendingHandshake } {
  const state = noise.initialize('IK', true, NOISE_PROLOGUE, local, null, remote);
  try {
    const msg = Buffer.alloc(HANDSHAKE_INIT_BYTES);
    writeHandshakeInit(msg, localIndex);
    noise.writeMessage(state, timestamp, msg.subarray(OFF_INIT_NOISE, END_INIT_NOISE));
    return { msg, pending: new PendingHandshake(state, localIndex, nowMs) };
  } catch (err) {
    noise.destroy(state);
    throw err;
  }
}

export interface Initiation {
  remoteStatic: Buffer;
  timestamp: Buffer;
  remoteIndex: number;
  /** Writes the response (for a peer we accept) and returns it with the session keys; frees the state. */
  respond(localIndex: number): { msg: Buffer; keys: SessionKeys };
  /** Frees the state without answering. */
  reject(): void;
}

/** Reads an initiation; null if it does not authenticate. The caller must call respond() or reject(). */
export function consumeInitiation(local: StaticKeys, msg: Buffer): Initiation | null {
  const state = noise.initialize('IK', false, NOISE_PROLOGUE, local, null, null);
  const payload = Buffer.alloc(TIMESTAMP_BYTES);
  try {
    noise.readMessage(state, msg.subarray(OFF_INIT_NOISE, END_INIT_NOISE), payload);
    if (noise.readMessage.bytes !== TIMESTAMP_BYTES) throw new Error('bad payload');
  } catch {
    noise.destroy(state);
    return null;
  }
  const remoteStatic = Buffer.from(state.rs.subarray(0, NOISE_KEY_BYTES));
  const remoteIndex = readSender(msg);
  let done = false;
  return {
    remoteStatic,
    timestamp: payload,
    remoteIndex,
    respond(localIndex: number) {
      if (done) throw new Error('handshake state already used');
      done = true;
      try {
        const out = Buffer.alloc(HANDSHAKE_RESP_BYTES);
        writeHandshakeResp(out, localIndex, remoteIndex);
        const split = noise.writeMessage(state, Buffer.alloc(0), out.subarray(OFF_RESP_NOISE, END_RESP_NOISE));
        if (!split) throw new Error('noise-protocol: IK message 2 did not complete the handshake');
        return { msg: out, keys: takeSplit(split) };
      } finally {
        noise.destroy(state);
      }
    },
    reject() {
      if (!done) noise.destroy(state);
      done = true;
    },
  };
}

/**
 * A deep copy of an initiator's HandshakeState (noise-protocol's fields: the symmetric state and key buffers
 * in protected memory, the remaining message patterns), so a response can be tried without spending the
 * original. Freed with noise.destroy like any state.
 */
function cloneState(state: NoiseState): NoiseState {
  const s = state as unknown as Record<string, unknown>;
  const copy = Object.create(Object.getPrototypeOf(state)) as Record<string, unknown>;
  for (const [k, v] of Object.entries(s)) {
    if (v instanceof Uint8Array) {
      const b = sodium_malloc(v.byteLength);
      b.set(v);
      copy[k] = b;
    } else if (Array.isArray(v)) copy[k] = v.map((p) => (Array.isArray(p) ? [...p] : p));
    else copy[k] = v;
  }
  return copy as unknown as NoiseState;
}

/** Copies the 32-byte keys out of the split cipher states (k | n) and frees the protected buffers. */
function takeSplit(split: NoiseSplit): SessionKeys {
  const keys = {
    send: Buffer.from(split.tx.subarray(0, NOISE_KEY_BYTES)),
    recv: Buffer.from(split.rx.subarray(0, NOISE_KEY_BYTES)),
  };
  sodium_free(split.tx);
  sodium_free(split.rx);
  return keys;
}

/** A TAI64N-style timestamp (12 bytes, big-endian, so byte order is time order) that never repeats. */
export class TimestampClock {
  private lastMs = 0;
  private seq = 0;
  next(nowMs: number): Buffer {
    const out = Buffer.alloc(TIMESTAMP_BYTES);
    if (nowMs <= this.lastMs) this.seq++;
    else {
      this.lastMs = nowMs;
      this.seq = 0;
    }
    const seconds = Math.floor(this.lastMs / 1000);
    out.writeUInt32BE(0x4000_0000, 0); // TAI64 label offset (2^62) in the high word
    out.writeUInt32BE(seconds, 4);
    out.writeUInt32BE(((this.lastMs % 1000) * 1_000_000 + this.seq) >>> 0, 8);
    return out;
  }
}
