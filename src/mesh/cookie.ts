// The handshake guard: WireGuard's defence against handshake floods (the WireGuard paper, section 5.4.7),
// with homewire's own labels and BLAKE2b. It runs on the receive path BEFORE a handshake is queued, so a
// bogus message costs a keyed hash, never a Diffie-Hellman.
//
//   mac1 = BLAKE2b-128(key = BLAKE2b-256("homewire mac1" | receiver's static public key), msg[0 .. mac1))
//          Every handshake message carries it; a message whose mac1 is wrong is dropped at once. Only someone
//          who knows the receiver's public key can make one (a key in a config, not on the wire).
//   mac2 = BLAKE2b-128(key = cookie, msg[0 .. mac2)), or 16 zero bytes without a fresh cookie.
//   cookie = BLAKE2b-128(key = responder's secret (random, new every 2 minutes), source address and port)
//
// Under load (32 queued initiations or 100 arriving within a second, and for 1 s after), an initiation without a valid mac2
// gets a cookie reply (message type 3) instead of being processed: a sender at a spoofed address never sees
// the cookie and gets nowhere, a real one retries at once with mac2 (we resend our initiation as soon as a
// cookie arrives, rather than at the next 5 s retry). With a valid mac2, each source address has a token
// bucket (20 per second, burst 5). Responses are exempt: they are admitted only for a handshake we have
// pending (the mesh checks the index) and are processed first. Cookie replies go at once to a source that is
// a configured peer's known endpoint; to any other source at most 1,000 per second (a spoofed flood then costs
// a keyed hash per datagram and few sends; a peer whose address we do not know yet may need a retry).
//
//   cookie reply (3): type | 0 0 0 | receiver index u32 LE (the sender index of the message answered)
//                     | nonce (24) | XChaCha20-Poly1305(key = BLAKE2b-256("homewire cookie" | responder's public
//                       key), nonce, cookie, associated data = the mac1 of the message answered) (16 + 16)
import sodium from 'sodium-native';
import {
  COOKIE_BYTES,
  COOKIE_NONCE_BYTES,
  COOKIE_REPLY_BYTES,
  COOKIE_REPLIES_UNKNOWN_PER_SECOND,
  COOKIE_SECRET_MS,
  COOKIE_VALID_MS,
  HANDSHAKE_MAC_BYTES,
  HANDSHAKE_SOURCE_BURST,
  HANDSHAKE_SOURCE_PER_SECOND,
  HANDSHAKE_SOURCES_MAX,
  MSG_COOKIE_REPLY,
  MSG_HANDSHAKE_INIT,
  UNDER_LOAD_HOLD_MS,
  UNDER_LOAD_INITIATIONS_PER_SECOND,
  UNDER_LOAD_QUEUE_LEN,
} from '../constants.ts';

const LABEL_MAC1 = Buffer.from('homewire mac1');
const LABEL_COOKIE = Buffer.from('homewire cookie');
const ZERO_MAC = Buffer.alloc(HANDSHAKE_MAC_BYTES);

/** admit() verdicts. */
export const ADMIT = 0;
export const DROP = 1;
export const SEND_COOKIE = 2; // under load, no valid mac2: answer with cookieReply(), do not process
export const NO_COOKIE = 3; // under load, no valid mac2, and the cookie budget for unknown sources is spent

function labelledKey(label: Buffer, publicKey: Buffer): Buffer {
  const out = Buffer.alloc(32);
  sodium.crypto_generichash(out, Buffer.concat([label, publicKey]));
  return out;
}

/** What an initiator (or responder) keeps per remote static key: its mac1 and cookie keys, the last mac1 it
 *  sent (a cookie reply must be bound to it), a cookie received from it, and the last initiation (resent with
 *  mac2 when a cookie arrives). */
export class RemoteCookie {
  readonly mac1Key: Buffer;
  readonly cookieKey: Buffer;
  readonly lastMac1 = Buffer.alloc(HANDSHAKE_MAC_BYTES);
  hasLastMac1 = false;
  readonly cookie = Buffer.alloc(COOKIE_BYTES);
  cookieAtMs = Number.NEGATIVE_INFINITY;
  /** The last initiation sent to this remote (resent once with mac2 when a cookie reply comes). */
  lastInit: Buffer | null = null;

  constructor(publicKey: Buffer) {
    this.mac1Key = labelledKey(LABEL_MAC1, publicKey);
    this.cookieKey = labelledKey(LABEL_COOKIE, publicKey);
  }
}

export class GuardStats {
  mac1_invalid = 0; // dropped before any other work
  cookies_sent = 0; // under load: answered with a cookie reply instead of a Diffie-Hellman
  cookies_withheld = 0; // under load, from an unknown source beyond the cookie budget: dropped
  rate_limited = 0; // valid mac2, but the source's token bucket was empty
  cookie_replies_accepted = 0;
  cookie_replies_invalid = 0; // not for a pending handshake, or did not decrypt
  under_load = 0; // times the guard went under load
}

interface Bucket {
  tokens: number;
  atMs: number;
}

export class HandshakeGuard {
  /** Checking on (the default). Benchmarks turn it off to measure a daemon without it (bench/security-*). */
  enabled = true;
  readonly stats = new GuardStats();
  private readonly mac1Key: Buffer; // ours: checks incoming mac1
  private readonly cookieKey: Buffer; // ours: seals cookie replies
  private readonly secret = Buffer.alloc(32);
  private secretAtMs = Number.NEGATIVE_INFINITY;
  private underLoadUntilMs = 0;
  private readonly buckets = new Map<string, Bucket>();
  private readonly remotes = new WeakMap<object, RemoteCookie>();
  private known = new Set<string>(); // "address|port" of configured peers' current endpoints
  private cookieSecond = 0;
  private cookiesThisSecond = 0;
  private arrivalSecond = 0;
  private arrivalsThisSecond = 0;
  private readonly scratch = Buffer.alloc(HANDSHAKE_MAC_BYTES);
  private readonly cookieScratch = Buffer.alloc(COOKIE_BYTES);

  constructor(
    localPublicKey: Buffer,
    private readonly now: () => number,
  ) {
    this.mac1Key = labelledKey(LABEL_MAC1, localPublicKey);
    this.cookieKey = labelledKey(LABEL_COOKIE, localPublicKey);
  }

  /** Per-remote state (kept as long as `owner`, the Peer, lives). */
  remote(owner: object, publicKey: Buffer): RemoteCookie {
    let r = this.remotes.get(owner);
    if (r === undefined) {
      r = new RemoteCookie(publicKey);
      this.remotes.set(owner, r);
    }
    return r;
  }

  /** Writes mac1 (and mac2 with a fresh cookie) into the last 32 bytes of an outgoing handshake message. */
  stamp(msg: Buffer, r: RemoteCookie): void {
    const mac1At = msg.length - 2 * HANDSHAKE_MAC_BYTES;
    const mac2At = mac1At + HANDSHAKE_MAC_BYTES;
    const mac1 = msg.subarray(mac1At, mac2At);
    sodium.crypto_generichash(mac1, msg.subarray(0, mac1At), r.mac1Key);
    mac1.copy(r.lastMac1);
    r.hasLastMac1 = true;
    const mac2 = msg.subarray(mac2At);
    if (this.now() - r.cookieAtMs < COOKIE_VALID_MS) sodium.crypto_generichash(mac2, msg.subarray(0, mac2At), r.cookie);
    else ZERO_MAC.copy(mac2);
    if (msg[0] === MSG_HANDSHAKE_INIT) r.lastInit = msg;
  }

  /** Is mac1 right for us? (Cheap; every handshake message is checked before anything else.) */
  mac1Valid(msg: Buffer): boolean {
    if (!this.enabled) return true;
    const mac1At = msg.length - 2 * HANDSHAKE_MAC_BYTES;
    sodium.crypto_generichash(this.scratch, msg.subarray(0, mac1At), this.mac1Key);
    if (sodium.sodium_memcmp(this.scratch, msg.subarray(mac1At, mac1At + HANDSHAKE_MAC_BYTES))) return true;
    this.stats.mac1_invalid++;
    return false;
  }

  /**
   * An initiation (mac1 already checked): ADMIT to the queue, SEND_COOKIE (under load without a valid mac2)
   * or DROP (rate limited). `queued`: initiations waiting now.
   */
  admit(msg: Buffer, address: string, port: number, queued: number): number {
    if (!this.enabled) return ADMIT;
    const now = this.now();
    const second = Math.floor(now / 1000);
    if (second !== this.arrivalSecond) {
      this.arrivalSecond = second;
      this.arrivalsThisSecond = 0;
    }
    if (queued >= UNDER_LOAD_QUEUE_LEN || ++this.arrivalsThisSecond >= UNDER_LOAD_INITIATIONS_PER_SECOND) {
      if (now >= this.underLoadUntilMs) this.stats.under_load++;
      this.underLoadUntilMs = now + UNDER_LOAD_HOLD_MS;
    }
    if (now >= this.underLoadUntilMs) return ADMIT;
    if (!this.mac2Valid(msg, address, port, now)) {
      if (this.known.has(`${address}|${port}`)) return SEND_COOKIE;
      if (second !== this.cookieSecond) {
        this.cookieSecond = second;
        this.cookiesThisSecond = 0;
      }
      if (this.cookiesThisSecond++ < COOKIE_REPLIES_UNKNOWN_PER_SECOND) return SEND_COOKIE;
      this.stats.cookies_withheld++;
      return NO_COOKIE;
    }
    if (this.allow(address, now)) return ADMIT;
    this.stats.rate_limited++;
    return DROP;
  }

  /** The endpoints of configured peers (refreshed by the mesh every tick): their cookies are never withheld. */
  setKnownEndpoints(endpoints: Iterable<{ address: string; port: number }>): void {
    const known = new Set<string>();
    for (const e of endpoints) known.add(`${e.address}|${e.port}`);
    this.known = known;
  }

  get underLoad(): boolean {
    return this.now() < this.underLoadUntilMs;
  }

  private cookieFor(address: string, port: number, now: number, out: Buffer): Buffer {
    if (now - this.secretAtMs >= COOKIE_SECRET_MS) {
      sodium.randombytes_buf(this.secret);
      this.secretAtMs = now;
    }
    sodium.crypto_generichash(out, Buffer.from(`${address}|${port}`), this.secret);
    return out;
  }

  private mac2Valid(msg: Buffer, address: string, port: number, now: number): boolean {
    const mac2At = msg.length - HANDSHAKE_MAC_BYTES;
    // No cookie: the sender sent zeros (every spoofed flood does). Two keyed hashes saved per datagram.
    let any = 0;
    for (let i = mac2At; i < msg.length; i++) any |= msg[i];
    if (any === 0) return false;
    const cookie = this.cookieFor(address, port, now, this.cookieScratch);
    sodium.crypto_generichash(this.scratch, msg.subarray(0, mac2At), cookie);
    return sodium.sodium_memcmp(this.scratch, msg.subarray(mac2At));
  }

  /** The cookie reply to a handshake message from address:port (64 bytes; no amplification: smaller than it). */
  cookieReply(msg: Buffer, address: string, port: number): Buffer {
    const out = Buffer.alloc(COOKIE_REPLY_BYTES);
    out[0] = MSG_COOKIE_REPLY;
    msg.copy(out, 4, 4, 8); // the sender index of the message answered
    const nonce = out.subarray(8, 8 + COOKIE_NONCE_BYTES);
    sodium.randombytes_buf(nonce);
    const mac1At = msg.length - 2 * HANDSHAKE_MAC_BYTES;
    const cookie = this.cookieFor(address, port, this.now(), Buffer.alloc(COOKIE_BYTES));
    sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
      out.subarray(8 + COOKIE_NONCE_BYTES),
      cookie,
      msg.subarray(mac1At, mac1At + HANDSHAKE_MAC_BYTES),
      null,
      nonce,
      this.cookieKey,
    );
    this.stats.cookies_sent++;
    return out;
  }

  /** A cookie reply for a handshake we have pending with `r`'s owner: store the cookie. false: invalid. */
  consumeReply(msg: Buffer, r: RemoteCookie): boolean {
    if (!r.hasLastMac1) {
      this.stats.cookie_replies_invalid++;
      return false;
    }
    const nonce = msg.subarray(8, 8 + COOKIE_NONCE_BYTES);
    try {
      sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        r.cookie,
        null,
        msg.subarray(8 + COOKIE_NONCE_BYTES),
        r.lastMac1,
        nonce,
        r.cookieKey,
      );
    } catch {
      this.stats.cookie_replies_invalid++;
      return false;
    }
    r.cookieAtMs = this.now();
    r.hasLastMac1 = false; // one reply per message sent: a replayed reply does nothing
    this.stats.cookie_replies_accepted++;
    return true;
  }

  /** Valid mac2 under load: one token per handshake from this source address (IPv6: its /64). */
  private allow(address: string, now: number): boolean {
    const key = address.includes(':') ? address.split(':').slice(0, 4).join(':') : address;
    let b = this.buckets.get(key);
    if (b === undefined) {
      if (this.buckets.size >= HANDSHAKE_SOURCES_MAX) this.tick(now);
      if (this.buckets.size >= HANDSHAKE_SOURCES_MAX) return false;
      b = { tokens: HANDSHAKE_SOURCE_BURST, atMs: now };
      this.buckets.set(key, b);
    } else {
      b.tokens = Math.min(HANDSHAKE_SOURCE_BURST, b.tokens + ((now - b.atMs) * HANDSHAKE_SOURCE_PER_SECOND) / 1000);
      b.atMs = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Forgets full buckets (a full bucket and none behave the same). */
  tick(now: number): void {
    for (const [k, b] of this.buckets) {
      if (b.tokens + ((now - b.atMs) * HANDSHAKE_SOURCE_PER_SECOND) / 1000 >= HANDSHAKE_SOURCE_BURST)
        this.buckets.delete(k);
    }
  }
}
