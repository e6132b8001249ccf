// What a frame is, as far as the segment's defences care: DHCP server or client traffic, ARP, neighbour
// discovery, router advertisements. Reads a few header bytes in place (no copies, no allocation): it runs on
// every frame from a guest. One 802.1Q/802.1ad tag is looked through; a second tag, an IPv6 header chain
// that does not fit the frame, or a first fragment that hides its ICMPv6 header is UNPARSEABLE (RFC 7112:
// a guest must not hide an RA behind extension headers or fragments).

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const ETHERTYPE_QINQ = 0x88a8;

export const K_OTHER = 0;
export const K_DHCP4_SERVER = 1; // UDP 67 -> 68
export const K_DHCP4_CLIENT = 2; // UDP 68 -> 67
export const K_DHCP6_SERVER = 3; // UDP 547 -> 546
export const K_ARP = 4;
export const K_ND_RS = 5; // ICMPv6 133
export const K_ND_RA = 6; // 134
export const K_ND_NS = 7; // 135
export const K_ND_NA = 8; // 136
export const K_ND_REDIRECT = 9; // 137
export const K_UNPARSEABLE = 10;

const IP_PROTO_UDP = 17;
const IP_PROTO_ICMPV6 = 58;
const IPV6_HEADER_BYTES = 40;
const EXT_HEADERS_MAX = 8;

/** Offset of the L3 header (after at most one VLAN tag), or -1 if there is a second tag or no room. */
export function l3Offset(frame: Buffer): number {
  if (frame.length < 14) return -1;
  const t = (frame[12] << 8) | frame[13];
  if (t !== ETHERTYPE_VLAN && t !== ETHERTYPE_QINQ) return 14;
  if (frame.length < 18) return -1;
  const inner = (frame[16] << 8) | frame[17];
  return inner === ETHERTYPE_VLAN || inner === ETHERTYPE_QINQ ? -1 : 18;
}

/** The ethertype at the L3 offset (the inner one of a tagged frame). */
export function etherType(frame: Buffer, l3: number): number {
  return (frame[l3 - 2] << 8) | frame[l3 - 1];
}

/** Offset of the ICMPv6 message or UDP header found by classify() (valid until the next call). */
export let l4Offset = 0;

/** One of the K_* kinds. Sets l4Offset for UDP and ICMPv6 kinds. */
export function classify(frame: Buffer): number {
  const l3 = l3Offset(frame);
  if (l3 < 0) return K_UNPARSEABLE;
  const type = etherType(frame, l3);
  if (type === ETHERTYPE_ARP) return K_ARP;
  if (type === ETHERTYPE_IPV4) return classify4(frame, l3);
  if (type === ETHERTYPE_IPV6) return classify6(frame, l3);
  return K_OTHER;
}

function classify4(frame: Buffer, ip: number): number {
  if (frame.length < ip + 20 || frame[ip] >> 4 !== 4) return K_OTHER;
  if (frame[ip + 9] !== IP_PROTO_UDP) return K_OTHER;
  if (((frame[ip + 6] & 0x1f) | frame[ip + 7]) !== 0) return K_OTHER; // a later fragment: no UDP header
  const udp = ip + (frame[ip] & 15) * 4;
  if (frame.length < udp + 8) return K_OTHER;
  l4Offset = udp;
  const src = (frame[udp] << 8) | frame[udp + 1];
  const dst = (frame[udp + 2] << 8) | frame[udp + 3];
  if (src === 67 && dst === 68) return K_DHCP4_SERVER;
  if (src === 68 && dst === 67) return K_DHCP4_CLIENT;
  return K_OTHER;
}

function classify6(frame: Buffer, ip: number): number {
  if (frame.length < ip + IPV6_HEADER_BYTES) return K_UNPARSEABLE;
  let next = frame[ip + 6];
  let off = ip + IPV6_HEADER_BYTES;
  for (let n = 0; n <= EXT_HEADERS_MAX; n++) {
    switch (next) {
      case IP_PROTO_ICMPV6: {
        if (frame.length < off + 4) return K_UNPARSEABLE;
        l4Offset = off;
        const t = frame[off];
        if (t === 133) return K_ND_RS;
        if (t === 134) return K_ND_RA;
        if (t === 135) return K_ND_NS;
        if (t === 136) return K_ND_NA;
        if (t === 137) return K_ND_REDIRECT;
        return K_OTHER;
      }
      case IP_PROTO_UDP: {
        if (frame.length < off + 8) return K_UNPARSEABLE;
        l4Offset = off;
        const src = (frame[off] << 8) | frame[off + 1];
        const dst = (frame[off + 2] << 8) | frame[off + 3];
        return src === 547 && dst === 546 ? K_DHCP6_SERVER : K_OTHER;
      }
      case 0: // hop-by-hop options
      case 43: // routing
      case 60: // destination options
        if (frame.length < off + 2) return K_UNPARSEABLE;
        next = frame[off];
        off += (frame[off + 1] + 1) * 8;
        break;
      case 51: // authentication header
        if (frame.length < off + 2) return K_UNPARSEABLE;
        next = frame[off];
        off += (frame[off + 1] + 2) * 4;
        break;
      case 44: // fragment: a later fragment has no upper-layer header; the first must hold all of it
        if (frame.length < off + 8) return K_UNPARSEABLE;
        if ((((frame[off + 2] << 8) | frame[off + 3]) & 0xfff8) !== 0) return K_OTHER;
        next = frame[off];
        off += 8;
        break;
      default:
        return K_OTHER; // TCP, ESP, no next header, ...: nothing the defences look at
    }
    if (off > frame.length) return K_UNPARSEABLE;
  }
  return K_UNPARSEABLE;
}

export interface ArpFields {
  op: number;
  senderMac: number;
  senderIp: number;
  targetIp: number;
}

/** The Ethernet/IPv4 ARP packet at l3, or null. Reuses one result object: copy what you keep. */
export function readArp(frame: Buffer, l3: number, out: ArpFields): ArpFields | null {
  if (frame.length < l3 + 28) return null;
  if (frame.readUInt16BE(l3) !== 1 || frame.readUInt16BE(l3 + 2) !== ETHERTYPE_IPV4) return null;
  if (frame[l3 + 4] !== 6 || frame[l3 + 5] !== 4) return null;
  out.op = frame.readUInt16BE(l3 + 6);
  out.senderMac = frame.readUInt16BE(l3 + 8) * 0x1_0000_0000 + frame.readUInt32BE(l3 + 10);
  out.senderIp = frame.readUInt32BE(l3 + 14);
  out.targetIp = frame.readUInt32BE(l3 + 24);
  return out;
}

/**
 * The neighbour-discovery claim in an NS or NA at l4 (ICMPv6): the IPv6 address it claims for its
 * link-layer address (NA: the target; NS: the source address, unless unspecified), as a 32-hex-digit
 * string, and the link-layer address option (source for NS, target for NA) as a MAC number, or -1 if absent.
 * Returns null if the message is truncated.
 */
export function readNdClaim(
  frame: Buffer,
  ip6: number,
  l4: number,
  kind: number,
): { address: string; lladdr: number } | null {
  if (frame.length < l4 + 24) return null;
  const address = kind === K_ND_NA ? frame.toString('hex', l4 + 8, l4 + 24) : frame.toString('hex', ip6 + 8, ip6 + 24); // NS: the sender's own address
  let lladdr = -1;
  const want = kind === K_ND_NA ? 2 : 1;
  const end = Math.min(frame.length, ip6 + 40 + frame.readUInt16BE(ip6 + 4)); // Ethernet padding is no option
  for (let o = l4 + 24; o + 8 <= end; ) {
    const len = frame[o + 1] * 8;
    if (len === 0) return null;
    if (frame[o] === want && len >= 8) lladdr = frame.readUInt16BE(o + 2) * 0x1_0000_0000 + frame.readUInt32BE(o + 4);
    o += len;
  }
  return { address, lladdr };
}
