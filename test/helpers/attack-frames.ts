// Frames an attacker (a guest, or a hostile host's daemon) sends in the security tests: DHCP server replies
// from a rogue server, IPv6 router advertisements (plain and hidden behind extension headers), neighbour
// advertisements with a foreign link-layer address. Built byte by byte, as a raw socket would send them.
import { encodeDhcp, u32, u8 } from '../../src/dhcp/codec.ts';
import { FRAME_HEADROOM_BYTES, fillUdpHeaders } from '../../src/dhcp/frame.ts';
import { parseIPv4 } from '../../src/dhcp/ip.ts';
import { frame } from './memory-mesh.ts';

const mac = (s: string) => Buffer.from(s.replace(/:/g, ''), 'hex');

/** A DHCP server reply (OFFER 2 / ACK 5) from `serverMac`/`serverIp` to `clientMac`, broadcast. */
export function dhcpServerReply(
  type: 2 | 5,
  serverMac: string,
  serverIp: string,
  clientMac: string,
  yiaddr: string,
  leaseSeconds = 600,
): Buffer {
  const chaddr = Buffer.alloc(16);
  mac(clientMac).copy(chaddr);
  const f = encodeDhcp(
    {
      op: 2,
      htype: 1,
      hlen: 6,
      hops: 0,
      xid: 0x1234,
      secs: 0,
      flags: 0x8000,
      ciaddr: 0,
      yiaddr: parseIPv4(yiaddr)!,
      siaddr: 0,
      giaddr: 0,
      chaddr,
    },
    [
      [53, u8(type)],
      [54, u32(parseIPv4(serverIp)!)],
      [51, u32(leaseSeconds)],
      [1, u32(0xffffff00)],
      [3, u32(parseIPv4(serverIp)!)],
    ],
    548,
    FRAME_HEADROOM_BYTES,
  )!;
  return fillUdpHeaders(f, Buffer.alloc(6, 0xff), mac(serverMac), parseIPv4(serverIp)!, 0xffffffff, 67, 68);
}

/** An IPv6 frame from `src` (link-local derived from the MAC) to all-nodes with the given next header and body. */
function ipv6(src: string, nextHeader: number, body: Buffer, dst = '33:33:00:00:00:01'): Buffer {
  const ip = Buffer.alloc(40);
  ip[0] = 0x60;
  ip.writeUInt16BE(body.length, 4);
  ip[6] = nextHeader;
  ip[7] = 255;
  ip.writeUInt16BE(0xfe80, 8);
  mac(src).copy(ip, 18); // not EUI-64 exact: the switch does not care
  ip.writeUInt16BE(0xff02, 24);
  ip[39] = 1;
  return frame(dst, src, 0x86dd, Buffer.concat([ip, body]));
}

/** ICMPv6 router advertisement (type 134) with a source link-layer option. */
function raBody(src: string): Buffer {
  const b = Buffer.alloc(16 + 8);
  b[0] = 134;
  b[4] = 64; // hop limit
  b.writeUInt16BE(1800, 6); // router lifetime
  b[16] = 1;
  b[17] = 1;
  mac(src).copy(b, 18);
  return b;
}

export function routerAdvertisement(src: string): Buffer {
  return ipv6(src, 58, raBody(src));
}

/** An RA behind a hop-by-hop header and a fragment header (offset 0): RA guard evasion (RFC 7113). */
export function hiddenRouterAdvertisement(src: string): Buffer {
  const hbh = Buffer.from([44, 0, 1, 4, 0, 0, 0, 0]); // next: fragment; PadN
  const frag = Buffer.from([58, 0, 0, 0, 0, 0, 0, 7]); // next: ICMPv6, offset 0, id 7
  return ipv6(src, 0, Buffer.concat([hbh, frag, raBody(src)]));
}

/** An RA whose first fragment ends inside the extension headers (the ICMPv6 header is not in it). */
export function truncatedChainRouterAdvertisement(src: string): Buffer {
  const dst = Buffer.alloc(8 * 20); // a destination-options header longer than the frame
  dst[0] = 58;
  dst[1] = 40; // (40 + 1) * 8 = 328 bytes claimed, 160 present
  return ipv6(src, 60, dst);
}

/** A neighbour advertisement for `target` (IPv6 text) carrying `lladdr` as its target link-layer option. */
export function neighbourAdvertisement(src: string, target: string, lladdr: string): Buffer {
  const b = Buffer.alloc(24 + 8);
  b[0] = 136;
  b[4] = 0x20; // override
  ipv6Bytes(target).copy(b, 8);
  b[24] = 2;
  b[25] = 1;
  mac(lladdr).copy(b, 26);
  return ipv6(src, 58, b);
}

function ipv6Bytes(text: string): Buffer {
  const [head, tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const tl = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - tl.length).fill('0'), ...tl];
  const b = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) b.writeUInt16BE(Number.parseInt(groups[i], 16), i * 2);
  return b;
}
