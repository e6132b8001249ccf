// DHCP message codec (RFC 2131 layout, RFC 2132 options, RFC 3396 long options, RFC 3442 classless routes).
// Decoding never throws: anything malformed decodes to null. Encoding sizes the reply first, allocates once
// (with headroom for the Ethernet/IPv4/UDP headers in front) and writes in place.
import {
  BOOTP_FILE_BYTES,
  BOOTP_FILE_OFFSET,
  BOOTP_FIXED_BYTES,
  BOOTP_MIN_MESSAGE_BYTES,
  BOOTP_SNAME_BYTES,
  BOOTP_SNAME_OFFSET,
  DHCP_MAGIC_COOKIE,
  DHCP_OPTIONS_OFFSET,
  DHCP_OPTION_VALUE_MAX_BYTES,
  OPT_END,
  OPT_MESSAGE_TYPE,
  OPT_OVERLOAD,
  OPT_PAD,
  OVERLOAD_FILE,
  OVERLOAD_SNAME,
} from './constants.ts';
import { prefixMask } from './ip.ts';

export interface DhcpHeader {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: number;
  yiaddr: number;
  siaddr: number;
  giaddr: number;
  /** Client hardware address field (16 bytes; the first `hlen` are the address). */
  chaddr: Buffer;
}

export interface DhcpMessage extends DhcpHeader {
  /** Option values by code. Repeated codes are concatenated (RFC 3396) in the order options field, file,
   *  sname; pads, END and the overload option itself are not included. Values may be views into the input:
   *  BORROWED, valid as long as the decoded buffer is. */
  options: Map<number, Buffer>;
  /** Which of file (1) / sname (2) carried options (option 52), 0 if none. */
  overload: number;
}

/** Decode a DHCP/BOOTP message (the UDP payload). Null if it is not a well-formed DHCP message. */
export function decodeDhcp(buf: Buffer): DhcpMessage | null {
  if (buf.length < DHCP_OPTIONS_OFFSET) return null;
  if (buf.readUInt32BE(BOOTP_FIXED_BYTES) !== DHCP_MAGIC_COOKIE) return null;
  const hlen = buf[2];
  if (hlen > 16) return null;
  const options = new Map<number, Buffer>();
  const overload = readOptionArea(buf, DHCP_OPTIONS_OFFSET, buf.length, options, true);
  if (overload < 0) return null;
  if (overload & OVERLOAD_FILE) {
    if (readOptionArea(buf, BOOTP_FILE_OFFSET, BOOTP_FILE_OFFSET + BOOTP_FILE_BYTES, options, false) < 0) return null;
  }
  if (overload & OVERLOAD_SNAME) {
    if (readOptionArea(buf, BOOTP_SNAME_OFFSET, BOOTP_SNAME_OFFSET + BOOTP_SNAME_BYTES, options, false) < 0)
      return null;
  }
  return {
    op: buf[0],
    htype: buf[1],
    hlen,
    hops: buf[3],
    xid: buf.readUInt32BE(4),
    secs: buf.readUInt16BE(8),
    flags: buf.readUInt16BE(10),
    ciaddr: buf.readUInt32BE(12),
    yiaddr: buf.readUInt32BE(16),
    siaddr: buf.readUInt32BE(20),
    giaddr: buf.readUInt32BE(24),
    chaddr: buf.subarray(28, 44),
    options,
    overload,
  };
}

/** Parse one option area into `out`. Returns the overload value found (0 if none), or -1 if malformed. */
function readOptionArea(buf: Buffer, start: number, end: number, out: Map<number, Buffer>, main: boolean): number {
  let overload = 0;
  let i = start;
  while (i < end) {
    const code = buf[i];
    if (code === OPT_PAD) {
      i++;
      continue;
    }
    if (code === OPT_END) return overload; // what follows END is padding, whatever it holds
    if (i + 1 >= end) return -1; // code without a length byte
    const len = buf[i + 1];
    const vstart = i + 2;
    if (vstart + len > end) return -1; // value runs past the area
    const value = buf.subarray(vstart, vstart + len);
    if (code === OPT_OVERLOAD) {
      // Only meaningful in the options field; the value says which fields hold more options.
      if (main) {
        if (len !== 1 || value[0] < 1 || value[0] > 3) return -1;
        overload = value[0];
      }
    } else {
      const prev = out.get(code);
      out.set(code, prev === undefined ? value : Buffer.concat([prev, value]));
    }
    i = vstart + len;
  }
  return overload; // no END: tolerated (some clients omit it when the packet ends exactly there)
}

export type OptionList = Array<[code: number, value: Buffer]>;

/**
 * Encode a message with `options` (in the given order; values longer than 255 bytes are split, RFC 3396) into
 * at most `maxBytes` bytes of DHCP message. When the options field is too small, options go to the file and
 * then the sname field (option 52, RFC 2131): each option whole into the first field with room, and split
 * across fields (RFC 3396) only if it fits no field whole. Returns a buffer of `headroom + message` bytes with
 * the message at `headroom`, or null if the options cannot fit at all.
 */
export function encodeDhcp(h: DhcpHeader, options: OptionList, maxBytes: number, headroom = 0): Buffer | null {
  const mainRoom = maxBytes - DHCP_OPTIONS_OFFSET - 1; // minus END
  let total = 0;
  for (const [, v] of options) total += encodedSize(v.length);
  // Per field (options, file, sname): the pieces placed there, in order.
  const areas: Array<Array<[number, Buffer]>> = [[], [], []];
  let overload = 0;
  if (total <= mainRoom) {
    for (const [code, v] of options) pushPieces(areas[0], code, v);
  } else {
    const rooms = [mainRoom - 3, BOOTP_FILE_BYTES - 1, BOOTP_SNAME_BYTES - 1]; // 52 takes 3 bytes; each field ends with END
    const used = [0, 0, 0];
    for (const [code, v] of options) {
      const size = encodedSize(v.length);
      const whole = used.findIndex((u, a) => rooms[a] - u >= size);
      if (whole >= 0) {
        pushPieces(areas[whole], code, v);
        used[whole] += size;
        continue;
      }
      let off = 0;
      for (let a = 0; a < 3 && off < v.length; a++) {
        while (off < v.length && rooms[a] - used[a] >= 3) {
          const n = Math.min(DHCP_OPTION_VALUE_MAX_BYTES, rooms[a] - used[a] - 2, v.length - off);
          areas[a].push([code, v.subarray(off, off + n)]);
          used[a] += 2 + n;
          off += n;
        }
      }
      if (off < v.length) return null;
    }
    overload = (used[1] > 0 ? OVERLOAD_FILE : 0) | (used[2] > 0 ? OVERLOAD_SNAME : 0);
    total = used[0] + 3;
  }
  const size = Math.max(DHCP_OPTIONS_OFFSET + total + 1, BOOTP_MIN_MESSAGE_BYTES);
  const out = Buffer.alloc(headroom + size); // zero-filled: pads, empty sname/file
  const b = out.subarray(headroom);
  b[0] = h.op;
  b[1] = h.htype;
  b[2] = h.hlen;
  b[3] = h.hops;
  b.writeUInt32BE(h.xid >>> 0, 4);
  b.writeUInt16BE(h.secs, 8);
  b.writeUInt16BE(h.flags, 10);
  b.writeUInt32BE(h.ciaddr >>> 0, 12);
  b.writeUInt32BE(h.yiaddr >>> 0, 16);
  b.writeUInt32BE(h.siaddr >>> 0, 20);
  b.writeUInt32BE(h.giaddr >>> 0, 24);
  h.chaddr.copy(b, 28, 0, Math.min(16, h.chaddr.length));
  b.writeUInt32BE(DHCP_MAGIC_COOKIE, BOOTP_FIXED_BYTES);
  const starts = [DHCP_OPTIONS_OFFSET, BOOTP_FILE_OFFSET, BOOTP_SNAME_OFFSET];
  for (let a = 0; a < 3; a++) {
    if (a > 0 && areas[a].length === 0) continue;
    let o = starts[a];
    if (a === 0 && overload) {
      b[o++] = OPT_OVERLOAD;
      b[o++] = 1;
      b[o++] = overload;
    }
    for (const [code, v] of areas[a]) {
      b[o++] = code;
      b[o++] = v.length;
      v.copy(b, o);
      o += v.length;
    }
    b[o] = OPT_END;
  }
  return out;
}

/** Bytes an option value takes encoded: 2 header bytes per piece of at most 255 bytes. */
function encodedSize(len: number): number {
  return len === 0 ? 2 : len + 2 * Math.ceil(len / DHCP_OPTION_VALUE_MAX_BYTES);
}

function pushPieces(area: Array<[number, Buffer]>, code: number, v: Buffer): void {
  if (v.length === 0) area.push([code, v]);
  for (let off = 0; off < v.length; off += DHCP_OPTION_VALUE_MAX_BYTES) {
    area.push([code, v.subarray(off, off + DHCP_OPTION_VALUE_MAX_BYTES)]);
  }
}

// --- Option value helpers --------------------------------------------------------------------------

export function messageType(m: DhcpMessage): number {
  const v = m.options.get(OPT_MESSAGE_TYPE);
  return v !== undefined && v.length === 1 ? v[0] : 0;
}

/** A single IPv4 address option, or null if absent or not 4 bytes. */
export function optionIp(m: DhcpMessage, code: number): number | null {
  const v = m.options.get(code);
  return v !== undefined && v.length === 4 ? v.readUInt32BE(0) : null;
}

export function optionU16(m: DhcpMessage, code: number): number | null {
  const v = m.options.get(code);
  return v !== undefined && v.length === 2 ? v.readUInt16BE(0) : null;
}

export function u8(n: number): Buffer {
  return Buffer.from([n & 255]);
}

export function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n, 0);
  return b;
}

export function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export function ipList(ips: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(4 * ips.length);
  for (let i = 0; i < ips.length; i++) b.writeUInt32BE(ips[i] >>> 0, 4 * i);
  return b;
}

// --- RFC 3442 classless static routes (option 121) ---------------------------------------------------

export interface ClasslessRoute {
  network: number;
  prefix: number;
  gateway: number;
}

/** Each route: prefix length, the significant octets of the destination (ceil(prefix/8)), the router. */
export function encodeClasslessRoutes(routes: readonly ClasslessRoute[]): Buffer {
  let size = 0;
  for (const r of routes) size += 1 + Math.ceil(r.prefix / 8) + 4;
  const b = Buffer.alloc(size);
  let o = 0;
  for (const r of routes) {
    b[o++] = r.prefix;
    const net = (r.network & prefixMask(r.prefix)) >>> 0;
    for (let i = 0; i < Math.ceil(r.prefix / 8); i++) b[o++] = (net >>> (24 - 8 * i)) & 255;
    b.writeUInt32BE(r.gateway >>> 0, o);
    o += 4;
  }
  return b;
}

/** Inverse of encodeClasslessRoutes; null if malformed (prefix > 32, truncated). */
export function decodeClasslessRoutes(b: Buffer): ClasslessRoute[] | null {
  const routes: ClasslessRoute[] = [];
  let o = 0;
  while (o < b.length) {
    const prefix = b[o++];
    if (prefix > 32) return null;
    const n = Math.ceil(prefix / 8);
    if (o + n + 4 > b.length) return null;
    let net = 0;
    for (let i = 0; i < 4; i++) net = net * 256 + (i < n ? b[o + i] : 0);
    o += n;
    routes.push({ network: (net & prefixMask(prefix)) >>> 0, prefix, gateway: b.readUInt32BE(o) });
    o += 4;
  }
  return routes;
}
