// An in-memory DHCP client twin for tests and benchmarks: builds the frames real clients send (with the
// option sets of busybox udhcpc, ISC dhclient and dhcpcd) and reads the server's replies. Not used by the
// daemon.
import {
  BOOTP_FLAG_BROADCAST,
  BOOTREQUEST,
  DHCP_CLIENT_PORT,
  DHCP_SERVER_PORT,
  DHCPDECLINE,
  DHCPDISCOVER,
  DHCPINFORM,
  DHCPRELEASE,
  DHCPREQUEST,
  HTYPE_ETHERNET,
  OPT_CLIENT_ID,
  OPT_HOSTNAME,
  OPT_LEASE_TIME,
  OPT_MAX_MESSAGE_SIZE,
  OPT_MESSAGE_TYPE,
  OPT_PARAMETER_LIST,
  OPT_REQUESTED_IP,
  OPT_SERVER_ID,
} from '../src/dhcp/constants.ts';
import {
  decodeDhcp,
  encodeDhcp,
  messageType,
  optionIp,
  u16,
  u32,
  u8,
  type DhcpMessage,
  type OptionList,
} from '../src/dhcp/codec.ts';
import { FRAME_HEADROOM_BYTES, fillUdpHeaders, finish, parseUdp, sum16 } from '../src/dhcp/frame.ts';
import { formatMac } from '../src/addr.ts';

export type ClientStyle = 'udhcpc' | 'dhclient' | 'dhcpcd' | 'plain';

export interface ClientFrameSpec {
  type: number;
  mac: Buffer;
  xid: number;
  style?: ClientStyle;
  ciaddr?: number;
  requestedIp?: number;
  serverId?: number;
  clientId?: Buffer | null; // null: none even if the style sends one
  hostname?: string;
  broadcastFlag?: boolean;
  srcIp?: number; // default: ciaddr
  dstIp?: number; // default: 255.255.255.255
  dstMac?: Buffer; // default: broadcast
  extra?: OptionList;
}

const BCAST_MAC = Buffer.alloc(6, 0xff);

/** The client identifier each style sends by default. */
export function defaultClientId(style: ClientStyle, mac: Buffer): Buffer | null {
  if (style === 'udhcpc') return Buffer.concat([Buffer.from([HTYPE_ETHERNET]), mac]); // type 1 + MAC
  if (style === 'dhcpcd') {
    // RFC 4361: type 255, IAID (4 bytes, from the MAC), DUID-LL (type 3, hardware type 1, MAC)
    return Buffer.concat([Buffer.from([255]), mac.subarray(2, 6), Buffer.from([0, 3, 0, 1]), mac]);
  }
  return null; // dhclient sends none unless configured
}

/** A whole Ethernet frame as a client of `style` would send it. */
export function clientFrame(s: ClientFrameSpec): Buffer {
  const style = s.style ?? 'plain';
  const opts: OptionList = [[OPT_MESSAGE_TYPE, u8(s.type)]];
  const clientId = s.clientId === undefined ? defaultClientId(style, s.mac) : s.clientId;
  if (clientId) opts.push([OPT_CLIENT_ID, clientId]);
  if (s.requestedIp !== undefined) opts.push([OPT_REQUESTED_IP, u32(s.requestedIp)]);
  if (s.serverId !== undefined) opts.push([OPT_SERVER_ID, u32(s.serverId)]);
  const asking = s.type === DHCPDISCOVER || s.type === DHCPREQUEST || s.type === DHCPINFORM;
  if (style === 'udhcpc' && asking) {
    opts.push(
      [OPT_MAX_MESSAGE_SIZE, u16(576)],
      [OPT_PARAMETER_LIST, Buffer.from([1, 3, 6, 12, 15, 28, 42])],
      [60, Buffer.from('udhcp 1.36.1')],
    );
  } else if (style === 'dhclient' && asking) {
    opts.push([OPT_PARAMETER_LIST, Buffer.from([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])]);
  } else if (style === 'dhcpcd' && asking) {
    opts.push(
      [OPT_MAX_MESSAGE_SIZE, u16(1472)],
      [60, Buffer.from('dhcpcd-10.0.6:Linux-6.1.0:x86_64:QEMU')],
      [145, Buffer.from([1])],
      [OPT_PARAMETER_LIST, Buffer.from([1, 121, 33, 3, 6, 28, 51, 58, 59, 12, 15, 26, 119])],
    );
    if (s.type === DHCPDISCOVER) opts.push([80, Buffer.alloc(0)]); // rapid commit: empty option
  }
  if (s.hostname !== undefined) opts.push([OPT_HOSTNAME, Buffer.from(s.hostname)]);
  for (const o of s.extra ?? []) opts.push(o);
  const chaddr = Buffer.alloc(16);
  s.mac.copy(chaddr);
  const ciaddr = s.ciaddr ?? 0;
  // udhcpc always sends a 548-byte message (options field of 308); others end after END (>= 300 bytes).
  const frame = encodeDhcp(
    {
      op: BOOTREQUEST,
      htype: HTYPE_ETHERNET,
      hlen: 6,
      hops: 0,
      xid: s.xid,
      secs: 0,
      flags: s.broadcastFlag ? BOOTP_FLAG_BROADCAST : 0,
      ciaddr,
      yiaddr: 0,
      siaddr: 0,
      giaddr: 0,
      chaddr,
    },
    opts,
    576 - 28,
    FRAME_HEADROOM_BYTES,
  );
  if (frame === null) throw new Error('client-sim: options do not fit');
  const full =
    style === 'udhcpc' ? Buffer.concat([frame, Buffer.alloc(FRAME_HEADROOM_BYTES + 548 - frame.length)]) : frame;
  return fillUdpHeaders(
    full,
    s.dstMac ?? BCAST_MAC,
    s.mac,
    s.srcIp ?? ciaddr,
    s.dstIp ?? 0xffffffff,
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
  );
}

export interface ServerReply {
  dstMac: string;
  srcMac: string;
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  type: number;
  msg: DhcpMessage;
  ipChecksumOk: boolean;
  udpChecksumOk: boolean;
}

/** Read a frame the server sent; null if it is not an IPv4/UDP DHCP message. */
export function parseReply(frame: Buffer): ServerReply | null {
  const u = parseUdp(frame);
  if (u === null) return null;
  const msg = decodeDhcp(Buffer.from(u.payload));
  if (msg === null) return null;
  const ihl = (frame[14] & 15) * 4;
  const udpOff = 14 + ihl;
  const udpLen = frame.readUInt16BE(udpOff + 4);
  const ipChecksumOk = finish(sum16(frame, 14, ihl, 0)) === 0;
  const udpSum = finish(sum16(frame, udpOff, udpLen, sum16(frame, 14 + 12, 8, 0) + 17 + udpLen));
  return {
    dstMac: formatMac(frame, 0),
    srcMac: formatMac(frame, 6),
    srcIp: u.srcIp,
    dstIp: u.dstIp,
    srcPort: u.srcPort,
    dstPort: u.dstPort,
    type: messageType(msg),
    msg,
    ipChecksumOk,
    udpChecksumOk: frame.readUInt16BE(udpOff + 6) === 0 || udpSum === 0,
  };
}

/** A client walking RFC 2131's states against a server, frame by frame (the caller carries the frames). */
export class SimClient {
  xid: number;
  ip = 0;
  serverId = 0;
  serverMac: Buffer | null = null;
  leaseSeconds = 0;

  constructor(
    readonly mac: Buffer,
    readonly style: ClientStyle = 'plain',
    readonly hostname?: string,
    readonly clientId?: Buffer | null,
  ) {
    this.xid = mac.readUInt32BE(2) ^ 0x5a5a5a5a;
  }

  private frame(type: number, extra: Partial<ClientFrameSpec>): Buffer {
    return clientFrame({
      type,
      mac: this.mac,
      xid: this.xid,
      style: this.style,
      hostname: this.hostname,
      clientId: this.clientId,
      ...extra,
    });
  }

  discover(requestedIp?: number): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPDISCOVER, { requestedIp });
  }

  /** SELECTING: accept an OFFER. */
  select(offer: ServerReply): Buffer {
    this.serverId = optionIp(offer.msg, OPT_SERVER_ID) ?? 0;
    return this.frame(DHCPREQUEST, { requestedIp: offer.msg.yiaddr, serverId: this.serverId });
  }

  /** Note an ACK. */
  bound(ack: ServerReply): void {
    this.ip = ack.msg.yiaddr;
    this.serverId = optionIp(ack.msg, OPT_SERVER_ID) ?? this.serverId;
    this.serverMac = Buffer.from(ack.srcMac.split(':').join(''), 'hex');
    const lt = ack.msg.options.get(OPT_LEASE_TIME);
    this.leaseSeconds = lt ? lt.readUInt32BE(0) : 0;
  }

  /** RENEWING: unicast to the server, ciaddr set. */
  renew(): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPREQUEST, { ciaddr: this.ip, dstIp: this.serverId, dstMac: this.serverMac ?? BCAST_MAC });
  }

  /** REBINDING: broadcast, ciaddr set. */
  rebind(): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPREQUEST, { ciaddr: this.ip });
  }

  /** INIT-REBOOT: broadcast, requested address, no server id. */
  reboot(ip = this.ip): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPREQUEST, { requestedIp: ip });
  }

  release(): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPRELEASE, {
      ciaddr: this.ip,
      serverId: this.serverId,
      dstIp: this.serverId,
      dstMac: this.serverMac ?? BCAST_MAC,
    });
  }

  decline(ip = this.ip): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPDECLINE, { requestedIp: ip, serverId: this.serverId });
  }

  inform(ip: number): Buffer {
    this.xid = (this.xid + 1) >>> 0;
    return this.frame(DHCPINFORM, { ciaddr: ip });
  }
}

/** A MAC for client number n (locally administered, QEMU-like). */
export function simMac(n: number): Buffer {
  return Buffer.from([0x52, 0x54, (n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
}

export { DHCPDISCOVER, DHCPREQUEST, DHCPRELEASE, DHCPDECLINE, DHCPINFORM };
