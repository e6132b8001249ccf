// Building a server reply (RFC 2131 section 4.3.1 table 3 for the fields, section 4.1 for where it goes) as
// one complete Ethernet frame: size first, allocate once, headers written in front of the message.
import {
  BOOTP_FLAG_BROADCAST,
  BOOTREPLY,
  DHCPACK,
  DHCPNAK,
  HTYPE_ETHERNET,
  IP_DATAGRAM_MIN_BYTES,
  MAC_BYTES,
  OPT_CLIENT_ID,
  OPT_HOSTNAME,
  OPT_LEASE_TIME,
  OPT_MAX_MESSAGE_SIZE,
  OPT_MESSAGE,
  OPT_MESSAGE_TYPE,
  OPT_REBINDING_TIME,
  OPT_RENEWAL_TIME,
  OPT_SERVER_ID,
  REBINDING_TIME_FRACTION,
  RENEWAL_TIME_FRACTION,
} from './constants.ts';
import { encodeDhcp, optionU16, u32, u8, type DhcpMessage, type OptionList } from './codec.ts';
import { fillDhcpReplyHeaders, FRAME_HEADROOM_BYTES } from './frame.ts';

const BROADCAST_IP = 0xffffffff;
const BROADCAST_MAC = Buffer.alloc(6, 0xff);
const NAK_TEXT = Buffer.from('address not available');
const IP_UDP_HEADER_BYTES = FRAME_HEADROOM_BYTES - 14;

/** What every reply of one server shares. */
export interface ReplyContext {
  serverIp: number;
  serverMac: Buffer;
  leaseSeconds: number;
  /** Configured options of every OFFER/ACK (mask, broadcast, router, DNS, domain, MTU, routes), built once. */
  commonOptions: OptionList;
  /** Largest IP datagram a reply may be (the overlay MTU). */
  maxIpBytes: number;
}

/** The parts of the requesting client a reply echoes. */
export interface ReplyClient {
  chaddr: Buffer; // 16 bytes
  hostname: string | null;
  clientIdRaw: Buffer | undefined;
}

/**
 * A complete reply frame of `type` (OFFER, ACK or NAK) to request `m`, or null if it cannot be encoded.
 * `withLease` adds lease time, T1 and T2 (not for INFORM). `informIp` is where an INFORM's ACK goes.
 */
export function buildReply(
  ctx: ReplyContext,
  type: number,
  m: DhcpMessage,
  c: ReplyClient,
  yiaddr: number,
  withLease: boolean,
  informIp = 0,
): Buffer | null {
  const opts: OptionList = [
    [OPT_MESSAGE_TYPE, u8(type)],
    [OPT_SERVER_ID, u32(ctx.serverIp)],
  ];
  if (type === DHCPNAK) {
    opts.push([OPT_MESSAGE, NAK_TEXT]);
  } else {
    if (withLease) {
      const s = ctx.leaseSeconds;
      opts.push(
        [OPT_LEASE_TIME, u32(s)],
        [OPT_RENEWAL_TIME, u32(Math.floor(s * RENEWAL_TIME_FRACTION))],
        [OPT_REBINDING_TIME, u32(Math.floor(s * REBINDING_TIME_FRACTION))],
      );
    }
    for (const o of ctx.commonOptions) opts.push(o);
  }
  const configured = opts.length;
  if (type !== DHCPNAK && c.hostname !== null) opts.push([OPT_HOSTNAME, Buffer.from(c.hostname, 'ascii')]);
  if (c.clientIdRaw !== undefined) opts.push([OPT_CLIENT_ID, c.clientIdRaw]); // RFC 6842

  // Size: 576 unless the client allows more (option 57), never more than the overlay MTU.
  let maxIp = IP_DATAGRAM_MIN_BYTES;
  const asked = optionU16(m, OPT_MAX_MESSAGE_SIZE);
  if (asked !== null && asked > maxIp) maxIp = asked;
  maxIp = Math.min(maxIp, ctx.maxIpBytes);
  const header = {
    op: BOOTREPLY,
    htype: HTYPE_ETHERNET,
    hlen: MAC_BYTES,
    hops: 0,
    xid: m.xid,
    secs: 0,
    flags: m.flags,
    ciaddr: type === DHCPACK ? m.ciaddr : 0,
    yiaddr,
    siaddr: 0,
    giaddr: 0,
    chaddr: c.chaddr,
  };
  const maxDhcp = maxIp - IP_UDP_HEADER_BYTES;
  // The configured options always fit the smallest reply (config.ts checks); the echoes are dropped if need be.
  const frame =
    encodeDhcp(header, opts, maxDhcp, FRAME_HEADROOM_BYTES) ??
    encodeDhcp(header, opts.slice(0, configured), maxDhcp, FRAME_HEADROOM_BYTES);
  if (frame === null) return null;

  // Where it goes (4.1; giaddr is always 0: relays are not served): a NAK is broadcast; a client with an
  // address (ciaddr) gets unicast; a client that asked for broadcast gets broadcast; else unicast to yiaddr
  // at chaddr (the client accepts it before configuring the address).
  let dstIp: number;
  let dstMac: Uint8Array;
  if (type === DHCPNAK) {
    dstIp = BROADCAST_IP;
    dstMac = BROADCAST_MAC;
  } else if (informIp !== 0 || m.ciaddr !== 0) {
    dstIp = informIp !== 0 ? informIp : m.ciaddr;
    dstMac = c.chaddr;
  } else if (m.flags & BOOTP_FLAG_BROADCAST) {
    dstIp = BROADCAST_IP;
    dstMac = BROADCAST_MAC;
  } else {
    dstIp = yiaddr;
    dstMac = c.chaddr;
  }
  return fillDhcpReplyHeaders(frame, dstMac, ctx.serverMac, ctx.serverIp, dstIp);
}
