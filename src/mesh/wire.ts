// Wire format of the underlay datagrams. Every message starts with a type byte and 3 reserved zero bytes.
//
//   handshake init  (1): type | 0 0 0 | sender index u32 LE | Noise IK message 1 (e, s, timestamp) | mac1 | mac2
//   handshake resp  (2): type | 0 0 0 | sender index u32 LE | receiver index u32 LE | Noise IK message 2 | mac1 | mac2
//   cookie reply    (3): type | 0 0 0 | receiver index u32 LE | nonce (24) | sealed cookie (32)   (cookie.ts)
//   data / signal  (4/5): type | 0 0 0 | receiver index u32 LE | counter low u32 LE | ChaCha20-Poly1305(payload)
//   relayed        (6/7): type | site id u24 BE | receiver index u32 LE | counter low u32 LE | ChaCha20-Poly1305(...)
//                         (to the relay: the target site; from the relay: the origin site; see mesh/relay.ts)
//
// The 12-byte transport header is the AEAD's associated data, so type, index and counter are authenticated.
// The counter is 64 bits (the nonce holds all of it) but only its low 32 bits travel: the receiver takes the
// counter nearest to the highest it has accepted on that session (fullCounter), as QUIC does with packet
// numbers. A wrong guess (a datagram delayed by 2^31 others) fails authentication; it can never be accepted
// under another counter. Four bytes fewer per datagram let a 1500-byte underlay carry a 1430-byte TAP MTU, so a
// 1400-byte UDP datagram (a common application size) crosses as one frame instead of two fragments.
// Decoders never throw: a malformed datagram classifies as null and is counted by the caller.
import {
  COOKIE_REPLY_BYTES,
  HANDSHAKE_INIT_BYTES,
  HANDSHAKE_INIT_NOISE_END,
  HANDSHAKE_RESP_BYTES,
  HANDSHAKE_RESP_NOISE_END,
  MSG_COOKIE_REPLY,
  MSG_SIGNAL,
  MSG_DATA,
  MSG_HANDSHAKE_INIT,
  MSG_HANDSHAKE_RESP,
  MSG_RELAY_DATA,
  MSG_RELAY_SIGNAL,
  TRANSPORT_HEADER_BYTES,
  AEAD_TAG_BYTES,
} from '../constants.ts';

// Offsets (bytes) of the fields above.
export const OFF_TYPE = 0;
export const OFF_SENDER = 4; // handshake init and resp: the sender's session index
export const OFF_RECEIVER = 4; // transport: the receiver's session index
export const OFF_RESP_RECEIVER = 8; // handshake resp: the initiator's session index
export const OFF_COUNTER = 8; // transport: counter, low 32 bits
export const OFF_INIT_NOISE = 8; // handshake init: Noise message 1
export const OFF_RESP_NOISE = 12; // handshake resp: Noise message 2
export const END_INIT_NOISE = HANDSHAKE_INIT_NOISE_END; // handshake init: Noise message 1 ends, mac1 starts
export const END_RESP_NOISE = HANDSHAKE_RESP_NOISE_END;
export const OFF_PAYLOAD = TRANSPORT_HEADER_BYTES; // transport: ciphertext, then the 16-byte tag

/** Largest counter we accept: counters are JS numbers on the hot path (2^53 is ~285 years at 1 Mpps). */
export const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

export type Classified =
  | typeof MSG_HANDSHAKE_INIT
  | typeof MSG_HANDSHAKE_RESP
  | typeof MSG_COOKIE_REPLY
  | typeof MSG_DATA
  | typeof MSG_SIGNAL
  | typeof MSG_RELAY_DATA
  | typeof MSG_RELAY_SIGNAL;

/** The message type if the datagram's size and reserved bytes are right for it, else 0. */
export function classify(msg: Buffer): Classified | 0 {
  if (msg.length < 4) return 0;
  const type = msg[OFF_TYPE];
  if (type === MSG_RELAY_DATA || type === MSG_RELAY_SIGNAL) {
    // The reserved bytes carry a site id (authenticated: the header is the AEAD's associated data).
    return msg.length >= TRANSPORT_HEADER_BYTES + AEAD_TAG_BYTES ? type : 0;
  }
  if (msg[1] !== 0 || msg[2] !== 0 || msg[3] !== 0) return 0;
  switch (type) {
    case MSG_DATA:
    case MSG_SIGNAL:
      return msg.length >= TRANSPORT_HEADER_BYTES + AEAD_TAG_BYTES ? type : 0;
    case MSG_HANDSHAKE_INIT:
      return msg.length === HANDSHAKE_INIT_BYTES ? type : 0;
    case MSG_HANDSHAKE_RESP:
      return msg.length === HANDSHAKE_RESP_BYTES ? type : 0;
    case MSG_COOKIE_REPLY:
      return msg.length === COOKIE_REPLY_BYTES ? type : 0;
    default:
      return 0;
  }
}

/** `site` goes into the reserved bytes (relayed messages only; 0 otherwise). */
export function writeTransportHeader(out: Buffer, type: number, receiver: number, counter: number, site = 0): void {
  out[OFF_TYPE] = type;
  out[1] = site >>> 16;
  out[2] = (site >>> 8) & 0xff;
  out[3] = site & 0xff;
  out.writeUInt32LE(receiver, OFF_RECEIVER);
  out.writeUInt32LE(counter % COUNTER_WIRE_SPAN, OFF_COUNTER);
}

const COUNTER_WIRE_SPAN = 0x1_0000_0000; // the counter values one wire field can name
const COUNTER_HALF_SPAN = 0x8000_0000;

/** The counter's high 32 bits (the nonce's, beside the header's low 32). */
export function counterHigh(counter: number): number {
  return Math.floor(counter / COUNTER_WIRE_SPAN);
}

/** The counter's low 32 bits as they travel. */
export function readCounterLow(msg: Buffer): number {
  return msg.readUInt32LE(OFF_COUNTER);
}

/**
 * The full counter a datagram's low 32 bits name: the one nearest to the next expected (highest + 1), within
 * half the wire span either side. Never negative; may exceed MAX_COUNTER (the caller refuses it).
 */
export function fullCounter(low: number, highest: number): number {
  const expected = highest + 1;
  let candidate = expected - (expected % COUNTER_WIRE_SPAN) + low;
  if (candidate + COUNTER_HALF_SPAN <= expected) candidate += COUNTER_WIRE_SPAN;
  else if (candidate > expected + COUNTER_HALF_SPAN && candidate >= COUNTER_WIRE_SPAN) candidate -= COUNTER_WIRE_SPAN;
  return candidate;
}

/** Relayed messages: the 24-bit site id in the reserved bytes. */
export function readSite(msg: Buffer): number {
  return (msg[1] << 16) | (msg[2] << 8) | msg[3];
}

export function readReceiver(msg: Buffer): number {
  return msg.readUInt32LE(OFF_RECEIVER);
}

export function writeHandshakeInit(out: Buffer, sender: number): void {
  out[OFF_TYPE] = MSG_HANDSHAKE_INIT;
  out[1] = out[2] = out[3] = 0;
  out.writeUInt32LE(sender, OFF_SENDER);
}

export function writeHandshakeResp(out: Buffer, sender: number, receiver: number): void {
  out[OFF_TYPE] = MSG_HANDSHAKE_RESP;
  out[1] = out[2] = out[3] = 0;
  out.writeUInt32LE(sender, OFF_SENDER);
  out.writeUInt32LE(receiver, OFF_RESP_RECEIVER);
}

/** Handshake messages: the sender's session index. */
export function readSender(msg: Buffer): number {
  return msg.readUInt32LE(OFF_SENDER);
}

/** Handshake response: the initiator's session index it answers. */
export function readRespReceiver(msg: Buffer): number {
  return msg.readUInt32LE(OFF_RESP_RECEIVER);
}
