// The transport AEAD (src/mesh/aead.ts): the addon's OpenSSL implementation and sodium-native's produce the
// same bytes as node:crypto's ChaCha20-Poly1305 (an independent implementation), open each other's messages,
// and refuse any change to header, ciphertext or tag. Needs the built addon.
import crypto from 'node:crypto';
import { AEAD_IMPL, aeadFor, type AeadImpl } from '../../src/mesh/aead.ts';
import { Keypair, OPEN_NOT_AUTHENTIC, OPEN_REPLAYED } from '../../src/mesh/keypair.ts';
import { MSG_DATA } from '../../src/constants.ts';
import { loadAddon } from '../../src/addon.ts';
import { fullCounter } from '../../src/mesh/wire.ts';
import { missingFor, testIf } from '../helpers/prereq.ts';

/** The OpenSSL implementation is the addon's: without it these tests fail saying so. */
const test = testIf(missingFor({ addon: true }));

const IMPLS: AeadImpl[] = ['openssl', 'sodium'];

const H = 12; // the transport header: type, 3 reserved, receiver index, the counter's low 32 bits

function header(counter: number): Buffer {
  const h = Buffer.alloc(H);
  h[0] = MSG_DATA;
  h.writeUInt32LE(0xdeadbeef, 4);
  h.writeUInt32LE(counter >>> 0, 8);
  return h;
}

const high = (counter: number) => Math.floor(counter / 2 ** 32);

/** node:crypto's sealing of the same message: header as AAD, nonce 4 zero bytes | the full counter u64 LE. */
function reference(key: Buffer, hdr: Buffer, payload: Buffer, counter: number): Buffer {
  const nonce = Buffer.alloc(12);
  nonce.writeBigUInt64LE(BigInt(counter), 4);
  const c = crypto.createCipheriv('chacha20-poly1305', key, nonce, {
    authTagLength: 16,
  });
  c.setAAD(hdr, { plaintextLength: payload.length });
  return Buffer.concat([hdr, c.update(payload), c.final(), c.getAuthTag()]);
}

test('the addon is built, so the OpenSSL implementation is the default', (t) => {
  t.is(AEAD_IMPL, 'openssl');
});

test('both implementations seal exactly what node:crypto seals, and open it', (t) => {
  for (const size of [0, 1, 15, 16, 17, 63, 64, 65, 1400, 1458, 9000]) {
    const key = crypto.randomBytes(32);
    const counter = crypto.randomInt(0, 2 ** 48 - 1);
    const payload = crypto.randomBytes(size);
    const want = reference(key, header(counter), payload, counter);
    for (const impl of IMPLS) {
      const a = aeadFor(key, impl);
      const out = Buffer.alloc(H + size + 16);
      header(counter).copy(out);
      t.true(a.seal(out, payload, high(counter)), `${impl} ${size}`);
      t.true(out.equals(want), `${impl} seals ${size} bytes as node:crypto does`);
      for (const other of IMPLS) {
        const m = Buffer.from(out);
        t.is(aeadFor(key, other).open(m, high(counter)), size, `${other} opens what ${impl} sealed (${size} bytes)`);
        t.true(m.subarray(H, H + size).equals(payload));
        const wrongHigh = Buffer.from(out);
        t.is(
          aeadFor(key, other).open(wrongHigh, high(counter) + 1),
          -1,
          `${other}: the counter's high half is in the nonce`,
        );
      }
    }
  }
});

test('a changed header, ciphertext or tag, or another key, is refused by both', (t) => {
  const key = crypto.randomBytes(32);
  const payload = crypto.randomBytes(200);
  const sealed = reference(key, header(7), payload, 7);
  for (const impl of IMPLS) {
    const a = aeadFor(key, impl);
    for (const at of [0, 3, 4, 8, 11, 12, 100, 211, 212, 227]) {
      const m = Buffer.from(sealed);
      m[at] ^= 0x01;
      t.is(a.open(m, 0), -1, `${impl}: byte ${at} flipped`);
    }
    t.is(aeadFor(crypto.randomBytes(32), impl).open(Buffer.from(sealed), 0), -1, `${impl}: another key`);
    t.is(a.open(sealed.subarray(0, 27), 0), -1, `${impl}: shorter than header and tag`);
    a.wipe();
    if (impl === 'openssl') t.is(a.open(Buffer.from(sealed), 0), -1, 'a wiped key opens nothing');
  }
});

test('keypairs on different implementations talk to each other; replays are still refused', (t) => {
  const k1 = crypto.randomBytes(32);
  const k2 = crypto.randomBytes(32);
  const a = new Keypair(Buffer.from(k1), Buffer.from(k2), 1, 2, true, 0, 'openssl');
  const b = new Keypair(Buffer.from(k2), Buffer.from(k1), 2, 1, false, 0, 'sodium');
  for (let i = 0; i < 100; i++) {
    const p = crypto.randomBytes(i * 13);
    const m = a.seal(MSG_DATA, p)!;
    const copy = Buffer.from(m);
    t.is(b.open(m), p.length);
    t.true(m.subarray(H, H + p.length).equals(p));
    t.is(b.open(copy), OPEN_REPLAYED, 'the same message again');
    const back = b.seal(MSG_DATA, p)!;
    t.is(a.open(back), p.length);
  }
  const forged = a.seal(MSG_DATA, Buffer.alloc(10))!;
  forged[20] ^= 1;
  t.is(b.open(forged), OPEN_NOT_AUTHENTIC);
  a.wipe();
  b.wipe();
});

test("the express path's replay window accepts exactly what mesh/replay.ts accepts, on the same shared bits", (t) => {
  // native/express.cc keeps its own copy of the counter logic (fullCounter, the window) and works on a Keypair's
  // shared state: after each datagram both must agree on accept/refuse and leave the same bits behind.
  const addon = loadAddon() as { expressReplay(state: Float64Array, ring: Uint32Array, low: number): number };
  const js = new Keypair(crypto.randomBytes(32), crypto.randomBytes(32), 1, 2, true, 0);
  const nat = new Keypair(crypto.randomBytes(32), crypto.randomBytes(32), 1, 2, true, 0);
  let top = 0;
  let agreed = 0;
  const rnd = (n: number) => crypto.randomInt(n);
  for (let i = 0; i < 50_000; i++) {
    // Mostly in order, some late, some replayed, some far ahead, some across the 32-bit wrap of the wire field.
    const r = rnd(100);
    let c: number;
    if (r < 60) c = top + 1 + rnd(3);
    else if (r < 80) c = Math.max(0, top - rnd(9000));
    else if (r < 90) c = top + rnd(20_000);
    else if (r < 95) c = 2 ** 32 - 50 + rnd(100);
    else c = top;
    top = Math.max(top, c);
    const low = c % 2 ** 32;
    const full = fullCounter(low, js.replay.highest);
    const want = full <= Number.MAX_SAFE_INTEGER && js.replay.wouldAccept(full) && js.replay.accept(full) ? full : -1;
    const got = addon.expressReplay(nat.state, nat.ring, low);
    if (got === want) agreed++;
    else t.fail(`datagram ${i}: counter low ${low}: JS ${want}, native ${got}`);
    if (nat.replay.highest !== js.replay.highest || !Buffer.from(nat.ring.buffer).equals(Buffer.from(js.ring.buffer)))
      t.fail(`datagram ${i}: the windows differ after counter ${c}`);
  }
  t.is(agreed, 50_000);
});
