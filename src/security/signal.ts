// Signal messages of the segment defences (codes 32-47 of the mesh's signal space; mesh/signal.ts has 1-31).
//
//   BINDING (32): code | mac(6) | ipv4 u32 BE | seconds u32 BE
//       "mac holds ipv4 (a DHCP lease) for this many more seconds": sent by the site that serves DHCP to the
//       site a leased guest has moved to, so ARP inspection there knows the guest's address at once. Accepted
//       only from a trusted DHCP server peer (security.dhcp_servers).
export const SIG_BINDING = 32;
export const SIG_SECURITY_FIRST = 32;
export const SIG_SECURITY_LAST = 47;

export function encodeBinding(mac: number, ip: number, seconds: number): Buffer {
  const b = Buffer.alloc(15);
  b[0] = SIG_BINDING;
  b.writeUIntBE(mac, 1, 6);
  b.writeUInt32BE(ip >>> 0, 7);
  b.writeUInt32BE(Math.max(0, Math.min(0xffff_ffff, Math.floor(seconds))), 11);
  return b;
}

/** A BINDING message, or null if malformed (never throws). */
export function decodeBinding(b: Buffer): { mac: number; ip: number; seconds: number } | null {
  if (b.length !== 15 || b[0] !== SIG_BINDING) return null;
  const mac = b.readUIntBE(1, 6);
  if (b[1] & 1) return null; // a group address holds no lease
  return { mac, ip: b.readUInt32BE(7), seconds: b.readUInt32BE(11) };
}
