// Addresses as homewire reads and writes them: underlay endpoints and MAC addresses. Parsers return null on
// bad input (never throw); config code turns null into a ConfigError naming the key.

/** "192.0.2.1:51820", or "[2001:db8::1]:51820" for IPv6 (also a host without a port: "[2001:db8::1]"). */
export function formatEndpoint(address: string, port?: number): string {
  const host = address.includes(':') ? `[${address}]` : address;
  return port === undefined ? host : `${host}:${port}`;
}

const MAC_RE =
  /^([0-9a-fA-F]{2})([:-])([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})$/;

/** "52:54:00:AB:cd:01" or "52-54-00-ab-cd-01" -> 6 bytes; null otherwise. */
export function parseMac(s: string): Buffer | null {
  const m = MAC_RE.exec(s);
  if (!m) return null;
  return Buffer.from([m[1], m[3], m[4], m[5], m[6], m[7]].join(''), 'hex');
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Six bytes at `off` as "aa:bb:cc:dd:ee:ff" (lower case). */
export function formatMac(b: Uint8Array, off = 0): string {
  return `${HEX[b[off]]}:${HEX[b[off + 1]]}:${HEX[b[off + 2]]}:${HEX[b[off + 3]]}:${HEX[b[off + 4]]}:${HEX[b[off + 5]]}`;
}

// On the data path a MAC is a 48-bit number (exact in a double): a Map key without allocation.

/** The 48-bit MAC at offset as a number. */
export function macKey(buf: Buffer, offset: number): number {
  return buf.readUInt16BE(offset) * 0x1_0000_0000 + buf.readUInt32BE(offset + 2);
}

/** A MAC number as "aa:bb:cc:dd:ee:ff". */
export function macString(mac: number): string {
  return mac
    .toString(16)
    .padStart(12, '0')
    .replace(/(..)(?!$)/g, '$1:');
}

/** "52:54:00:12:34:56" -> its number, or -1. */
export function macNumber(text: string): number {
  const b = parseMac(text);
  return b === null ? -1 : macKey(b, 0);
}
