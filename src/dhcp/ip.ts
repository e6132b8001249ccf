// IPv4 addresses as unsigned 32-bit numbers for the DHCP module. Parsers return null
// on bad input (never throw): config code turns null into a ConfigError naming the key.
import ipaddr from 'ipaddr.js';

/** "192.168.1.2" -> 0xc0a80102; null unless exactly four decimal octets 0-255 (no leading zeros: "010" is octal
 *  to some tools). Parsing is ipaddr.js's; the pool arithmetic works on the number. */
export function parseIPv4(s: string): number | null {
  if (!ipaddr.IPv4.isValidFourPartDecimal(s)) return null;
  const [a, b, c, d] = ipaddr.IPv4.parse(s).octets;
  return a * 0x100_0000 + ((b << 16) | (c << 8) | d);
}

export function formatIPv4(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** Netmask of a prefix length, as an unsigned number (prefix 0 -> 0). */
export function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export interface Cidr {
  network: number;
  prefix: number;
}

/** "10.0.0.0/8" -> {network, prefix}; null if malformed. `hostBitsZero` reports whether bits past the prefix are 0. */
export function parseCidr(s: string): (Cidr & { hostBitsZero: boolean }) | null {
  const slash = s.indexOf('/');
  if (slash < 0) return null;
  const ip = parseIPv4(s.slice(0, slash));
  const p = s.slice(slash + 1);
  if (ip === null || !/^\d{1,2}$/.test(p)) return null;
  const prefix = Number(p);
  if (prefix > 32) return null;
  const network = (ip & prefixMask(prefix)) >>> 0;
  return { network, prefix, hostBitsZero: network === ip };
}

export function inCidr(ip: number, c: Cidr): boolean {
  return (ip & prefixMask(c.prefix)) >>> 0 === c.network;
}

export function broadcastOf(c: Cidr): number {
  return (c.network | ~prefixMask(c.prefix)) >>> 0;
}
