// Ethernet/IPv4/UDP and ARP framing for the DHCP server: classify an offered frame without copying it, and
// build complete reply frames (IPv4 header checksum and UDP checksum both computed).
//
// Received UDP checksums are NOT verified: guests behind virtio/TAP often hand over frames with a partial
// (offloaded) UDP checksum, and frames from peers were already authenticated by the mesh.
import {
  ARP_OP_REPLY,
  ARP_PACKET_BYTES,
  DHCP_CLIENT_PORT,
  DHCP_SERVER_PORT,
  ETHERNET_MIN_FRAME_BYTES,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  IP_PROTO_UDP,
  IP_TTL_HOPS,
} from './constants.ts';

const ETH_BYTES = 14;
const IP_BYTES = 20;
const UDP_BYTES = 8;
/** Bytes in front of a DHCP message in a reply frame: encodeDhcp(..., FRAME_HEADROOM_BYTES). */
export const FRAME_HEADROOM_BYTES = ETH_BYTES + IP_BYTES + UDP_BYTES;

export interface UdpView {
  srcMac: Buffer; // views into the frame: BORROWED, valid only while the frame is
  dstMac: Buffer;
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  payload: Buffer;
}

export interface ArpView {
  op: number;
  senderMac: Buffer;
  senderIp: number;
  targetMac: Buffer;
  targetIp: number;
}

export function ethertype(frame: Buffer): number {
  return frame.length >= ETH_BYTES ? frame.readUInt16BE(12) : -1;
}

/** An untagged IPv4/UDP frame, or null (not IPv4/UDP, a fragment, or lengths that do not add up). */
export function parseUdp(frame: Buffer): UdpView | null {
  if (frame.length < ETH_BYTES + IP_BYTES + UDP_BYTES || frame.readUInt16BE(12) !== ETHERTYPE_IPV4) return null;
  const ip = ETH_BYTES;
  const vihl = frame[ip];
  if (vihl >> 4 !== 4) return null;
  const ihl = (vihl & 15) * 4;
  if (ihl < IP_BYTES) return null;
  const total = frame.readUInt16BE(ip + 2);
  if (total < ihl + UDP_BYTES || ip + total > frame.length) return null; // frame may be longer: Ethernet padding
  if ((frame.readUInt16BE(ip + 6) & 0x3fff) !== 0) return null; // MF set or offset != 0: a fragment
  if (frame[ip + 9] !== IP_PROTO_UDP) return null;
  const udp = ip + ihl;
  const udpLen = frame.readUInt16BE(udp + 4);
  if (udpLen < UDP_BYTES || udp + udpLen > ip + total) return null;
  return {
    dstMac: frame.subarray(0, 6),
    srcMac: frame.subarray(6, 12),
    srcIp: frame.readUInt32BE(ip + 12),
    dstIp: frame.readUInt32BE(ip + 16),
    srcPort: frame.readUInt16BE(udp),
    dstPort: frame.readUInt16BE(udp + 2),
    payload: frame.subarray(udp + UDP_BYTES, udp + udpLen),
  };
}

/** An Ethernet/IPv4 ARP packet, or null. */
export function parseArp(frame: Buffer): ArpView | null {
  if (frame.length < ETH_BYTES + ARP_PACKET_BYTES || frame.readUInt16BE(12) !== ETHERTYPE_ARP) return null;
  const a = ETH_BYTES;
  if (frame.readUInt16BE(a) !== 1 || frame.readUInt16BE(a + 2) !== ETHERTYPE_IPV4) return null;
  if (frame[a + 4] !== 6 || frame[a + 5] !== 4) return null;
  return {
    op: frame.readUInt16BE(a + 6),
    senderMac: frame.subarray(a + 8, a + 14),
    senderIp: frame.readUInt32BE(a + 14),
    targetMac: frame.subarray(a + 18, a + 24),
    targetIp: frame.readUInt32BE(a + 24),
  };
}

let ipId = 0;

/**
 * Fill the Ethernet/IPv4/UDP headers in front of a DHCP message that encodeDhcp placed at
 * FRAME_HEADROOM_BYTES in `frame`: server port 67 to client port 68.
 */
export function fillDhcpReplyHeaders(
  frame: Buffer,
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: number,
  dstIp: number,
): Buffer {
  return fillUdpHeaders(frame, dstMac, srcMac, srcIp, dstIp, DHCP_SERVER_PORT, DHCP_CLIENT_PORT);
}

/** Fill Ethernet, IPv4 (checksummed) and UDP (checksummed) headers in the first FRAME_HEADROOM_BYTES. */
export function fillUdpHeaders(
  frame: Buffer,
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: number,
  dstIp: number,
  srcPort: number,
  dstPort: number,
): Buffer {
  const udpLen = frame.length - ETH_BYTES - IP_BYTES;
  frame.set(dstMac.subarray(0, 6), 0);
  frame.set(srcMac.subarray(0, 6), 6);
  frame.writeUInt16BE(ETHERTYPE_IPV4, 12);
  const ip = ETH_BYTES;
  frame[ip] = 0x45;
  frame[ip + 1] = 0;
  frame.writeUInt16BE(IP_BYTES + udpLen, ip + 2);
  ipId = (ipId + 1) & 0xffff;
  frame.writeUInt16BE(ipId, ip + 4);
  frame.writeUInt16BE(0, ip + 6);
  frame[ip + 8] = IP_TTL_HOPS;
  frame[ip + 9] = IP_PROTO_UDP;
  frame.writeUInt16BE(0, ip + 10);
  frame.writeUInt32BE(srcIp >>> 0, ip + 12);
  frame.writeUInt32BE(dstIp >>> 0, ip + 16);
  frame.writeUInt16BE(finish(sum16(frame, ip, IP_BYTES, 0)), ip + 10);
  const udp = ip + IP_BYTES;
  frame.writeUInt16BE(srcPort, udp);
  frame.writeUInt16BE(dstPort, udp + 2);
  frame.writeUInt16BE(udpLen, udp + 4);
  frame.writeUInt16BE(0, udp + 6);
  // Pseudo-header: source, destination, protocol, UDP length.
  let s = sum16(frame, ip + 12, 8, 0) + IP_PROTO_UDP + udpLen;
  s = sum16(frame, udp, udpLen, s);
  const c = finish(s);
  frame.writeUInt16BE(c === 0 ? 0xffff : c, udp + 6); // 0 means "no checksum" in UDP
  return frame;
}

/** A complete ARP reply frame: `ourMac` has `ourIp`, sent to the requester. */
export function buildArpReply(req: ArpView, ourMac: Uint8Array, ourIp: number): Buffer {
  const f = Buffer.alloc(ETHERNET_MIN_FRAME_BYTES);
  f.set(req.senderMac, 0);
  f.set(ourMac.subarray(0, 6), 6);
  f.writeUInt16BE(ETHERTYPE_ARP, 12);
  const a = ETH_BYTES;
  f.writeUInt16BE(1, a);
  f.writeUInt16BE(ETHERTYPE_IPV4, a + 2);
  f[a + 4] = 6;
  f[a + 5] = 4;
  f.writeUInt16BE(ARP_OP_REPLY, a + 6);
  f.set(ourMac.subarray(0, 6), a + 8);
  f.writeUInt32BE(ourIp >>> 0, a + 14);
  f.set(req.senderMac, a + 18);
  f.writeUInt32BE(req.senderIp >>> 0, a + 24);
  return f;
}

/** One's-complement sum of 16-bit big-endian words (odd tail padded with 0), added to `acc`. */
export function sum16(b: Buffer, off: number, len: number, acc: number): number {
  let s = acc;
  const end = off + (len & ~1);
  for (let i = off; i < end; i += 2) s += (b[i] << 8) | b[i + 1];
  if (len & 1) s += b[off + len - 1] << 8;
  return s;
}

export function finish(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

export function isBroadcastMac(b: Uint8Array): boolean {
  return b[0] === 255 && b[1] === 255 && b[2] === 255 && b[3] === 255 && b[4] === 255 && b[5] === 255;
}

export function macEquals(a: Uint8Array, b: Uint8Array): boolean {
  return a[0] === b[0] && a[1] === b[1] && a[2] === b[2] && a[3] === b[3] && a[4] === b[4] && a[5] === b[5];
}
