// Signal messages of the mesh itself for sites behind NAT (codes 16-31), carried encrypted in MSG_SIGNAL (5)
// or, where noted, MSG_RELAY_SIGNAL (7). The mesh consumes them; the switch never sees them.
//
//   INTRODUCE  (16) introducer → site: site id u24 BE | public key (32) | flags u8 | name length u8 | name |
//                   count u8 | endpoints   "this site exists; reach it at these endpoints, or through me"
//   WITHDRAW   (17) introducer → site: public key (32)                      "forget this site"
//   CANDIDATES (18) site → introducer: count u8 | endpoints | known u16 BE   "my own (local) addresses; I know
//                   this many sites from you" (fewer than the introducer has: it sends its whole directory)
//   PUNCH      (19) site → site, relayed: (nothing)                          "I am sending you initiations now"
//   PING       (20) site → site, direct: nonce u32 BE                        "is this direct path working?"
//   PONG       (21) site → site, direct: nonce u32 BE                        "yes"
// An endpoint is family u8 (4|6) | address (4|16) | port u16 BE. Decoders return null on anything malformed
// (never throw); the caller counts it.
import net from 'node:net';
import { CANDIDATES_MAX } from '../constants.ts';
import type { Endpoint } from './peer.ts';

export const SIG_INTRODUCE = 16;
export const SIG_WITHDRAW = 17;
export const SIG_CANDIDATES = 18;
export const SIG_PUNCH = 19;
export const SIG_PING = 20;
export const SIG_PONG = 21;
export const NAT_SIGNAL_FIRST = 16;
export const NAT_SIGNAL_LAST = 31;

/** The introducer relays frames for this site. */
export const INTRO_FLAG_RELAY = 1;
/** The introducer reaches this site over TCP only: no UDP path to punch. */
export const INTRO_FLAG_NO_UDP = 2;

const KEY_BYTES = 32;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$/;

export interface Introduction {
  siteId: number;
  publicKey: Buffer;
  flags: number;
  name: string;
  endpoints: Endpoint[];
}

export type NatSignal =
  | ({ type: typeof SIG_INTRODUCE } & Introduction)
  | { type: typeof SIG_WITHDRAW; publicKey: Buffer }
  | { type: typeof SIG_CANDIDATES; endpoints: Endpoint[]; known: number }
  | { type: typeof SIG_PUNCH }
  | { type: typeof SIG_PING | typeof SIG_PONG; nonce: number };

export function isNatSignal(payload: Buffer): boolean {
  return payload.length > 0 && payload[0] >= NAT_SIGNAL_FIRST && payload[0] <= NAT_SIGNAL_LAST;
}

function endpointsBytes(eps: Endpoint[]): number {
  let n = 1;
  for (const e of eps) n += e.address.includes(':') ? 19 : 7;
  return n;
}

function writeEndpoints(b: Buffer, off: number, eps: Endpoint[]): number {
  b[off++] = eps.length;
  for (const e of eps) {
    const v6 = e.address.includes(':');
    b[off++] = v6 ? 6 : 4;
    off += writeAddress(b, off, e.address, v6);
    b.writeUInt16BE(e.port, off);
    off += 2;
  }
  return off;
}

function writeAddress(b: Buffer, off: number, address: string, v6: boolean): number {
  if (!v6) {
    const parts = address.split('.').map(Number);
    for (let i = 0; i < 4; i++) b[off + i] = parts[i];
    return 4;
  }
  // Expand "::" and write 8 groups.
  const [head, tail] = address.includes('::') ? address.split('::') : [address, null];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === null ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  for (let i = 0; i < 8; i++) b.writeUInt16BE(Number.parseInt(groups[i] || '0', 16), off + 2 * i);
  return 16;
}

/** Endpoints at off, or null if malformed. */
function readEndpoints(b: Buffer, off: number): { endpoints: Endpoint[]; end: number } | null {
  if (off >= b.length) return null;
  const count = b[off++];
  if (count > CANDIDATES_MAX) return null;
  const endpoints: Endpoint[] = [];
  for (let i = 0; i < count; i++) {
    const family = b[off++];
    if (family !== 4 && family !== 6) return null;
    const len = family === 4 ? 4 : 16;
    if (off + len + 2 > b.length) return null;
    let address: string;
    if (family === 4) address = `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
    else {
      const g: string[] = [];
      for (let j = 0; j < 8; j++) g.push(b.readUInt16BE(off + 2 * j).toString(16));
      address = compress6(g);
    }
    off += len;
    const port = b.readUInt16BE(off);
    off += 2;
    if (port === 0 || net.isIP(address) !== family) return null;
    endpoints.push({ address, port });
  }
  return { endpoints, end: off };
}

/** The canonical short form of 8 hex groups (longest run of zero groups as "::"), as node prints them. */
function compress6(g: string[]): string {
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return g.join(':');
  return `${g.slice(0, best).join(':')}::${g.slice(best + bestLen).join(':')}`;
}

export function encodeIntroduce(i: Introduction): Buffer {
  const name = Buffer.from(i.name, 'ascii');
  const eps = i.endpoints.slice(0, CANDIDATES_MAX);
  const b = Buffer.alloc(1 + 3 + KEY_BYTES + 1 + 1 + name.length + endpointsBytes(eps));
  b[0] = SIG_INTRODUCE;
  b.writeUIntBE(i.siteId, 1, 3);
  i.publicKey.copy(b, 4);
  b[36] = i.flags;
  b[37] = name.length;
  name.copy(b, 38);
  writeEndpoints(b, 38 + name.length, eps);
  return b;
}

export function encodeWithdraw(publicKey: Buffer): Buffer {
  const b = Buffer.alloc(1 + KEY_BYTES);
  b[0] = SIG_WITHDRAW;
  publicKey.copy(b, 1);
  return b;
}

export function encodeCandidates(endpoints: Endpoint[], known: number): Buffer {
  const eps = endpoints.slice(0, CANDIDATES_MAX);
  const b = Buffer.alloc(1 + endpointsBytes(eps) + 2);
  b[0] = SIG_CANDIDATES;
  const off = writeEndpoints(b, 1, eps);
  b.writeUInt16BE(Math.min(known, 0xffff), off);
  return b;
}

export const PUNCH = Buffer.from([SIG_PUNCH]);

export function encodePing(type: typeof SIG_PING | typeof SIG_PONG, nonce: number): Buffer {
  const b = Buffer.alloc(5);
  b[0] = type;
  b.writeUInt32BE(nonce >>> 0, 1);
  return b;
}

/** Decodes a NAT signal message, or null if malformed (never throws). */
export function decodeNatSignal(b: Buffer): NatSignal | null {
  if (b.length === 0) return null;
  switch (b[0]) {
    case SIG_INTRODUCE: {
      if (b.length < 38) return null;
      const siteId = b.readUIntBE(1, 3);
      if (siteId === 0) return null;
      const n = b[37];
      if (n === 0 || 38 + n > b.length) return null;
      const name = b.toString('latin1', 38, 38 + n);
      if (!NAME_RE.test(name)) return null;
      const eps = readEndpoints(b, 38 + n);
      if (!eps || eps.end !== b.length) return null;
      return {
        type: SIG_INTRODUCE,
        siteId,
        publicKey: Buffer.from(b.subarray(4, 36)),
        flags: b[36],
        name,
        endpoints: eps.endpoints,
      };
    }
    case SIG_WITHDRAW:
      return b.length === 1 + KEY_BYTES ? { type: SIG_WITHDRAW, publicKey: Buffer.from(b.subarray(1)) } : null;
    case SIG_CANDIDATES: {
      const eps = readEndpoints(b, 1);
      if (!eps || eps.end + 2 !== b.length) return null;
      return { type: SIG_CANDIDATES, endpoints: eps.endpoints, known: b.readUInt16BE(eps.end) };
    }
    case SIG_PUNCH:
      return b.length === 1 ? { type: SIG_PUNCH } : null;
    case SIG_PING:
    case SIG_PONG:
      return b.length === 5 ? { type: b[0] as typeof SIG_PING, nonce: b.readUInt32BE(1) } : null;
    default:
      return null;
  }
}
