// A reader for the classic pcap files tcpdump writes (-w), Ethernet link type only: enough for the lab to
// look at what the underlay carried (protocol mix, UDP ports, plaintext leaks) and to replay real datagrams.
// Malformed input ends the packet list early; it never throws past readPcap's header check.

export type Kind = 'udp' | 'tcp' | 'icmp' | 'icmp6' | 'arp' | 'other';

export interface Packet {
  /** Seconds since the epoch (fractional). */
  ts: number;
  frame: Buffer;
  ethertype: number;
  kind: Kind;
  src?: string;
  dst?: string;
  sport?: number;
  dport?: number;
  /** ICMP / ICMPv6 type. */
  icmpType?: number;
  /** UDP or TCP payload (a view into the file buffer). */
  payload?: Buffer;
  /** TCP sequence number of the payload's first byte. */
  seq?: number;
}

const LINKTYPE_ETHERNET = 1;
const LINKTYPE_LINUX_SLL = 113; // tcpdump -i any (16-byte cooked header, protocol at 14)
const LINKTYPE_LINUX_SLL2 = 276; // tcpdump -i any, newer (20-byte header, protocol at 0)

export function readPcap(buf: Buffer): Packet[] {
  if (buf.length < 24) throw new Error('not a pcap file: shorter than its header');
  const magic = buf.readUInt32LE(0);
  let le: boolean;
  let nano: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) {
    le = true;
    nano = magic === 0xa1b23c4d;
  } else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) {
    le = false;
    nano = magic === 0x4d3cb2a1;
  } else throw new Error(`not a classic pcap file (magic ${magic.toString(16)}); pcapng is not supported`);
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linktype = u32(20) & 0xffff;
  if (linktype !== LINKTYPE_ETHERNET && linktype !== LINKTYPE_LINUX_SLL && linktype !== LINKTYPE_LINUX_SLL2) {
    throw new Error(`pcap link type ${linktype} is not Ethernet or Linux cooked capture`);
  }
  const out: Packet[] = [];
  for (let off = 24; off + 16 <= buf.length; ) {
    const ts = u32(off) + u32(off + 4) / (nano ? 1e9 : 1e6);
    const caplen = u32(off + 8);
    if (off + 16 + caplen > buf.length) break; // truncated last record (capture killed mid-write)
    const rec = buf.subarray(off + 16, off + 16 + caplen);
    out.push(linktype === LINKTYPE_ETHERNET ? decodeEthernet(rec, ts) : decodeCooked(rec, ts, linktype));
    off += 16 + caplen;
  }
  return out;
}

/** A Linux cooked-capture record: decoded as an Ethernet frame whose type field sits at typeOffset. */
function decodeCooked(rec: Buffer, ts: number, linktype: number): Packet {
  const [typeOffset, headerBytes] = linktype === LINKTYPE_LINUX_SLL ? [14, 16] : [0, 20];
  if (rec.length < headerBytes) return { ts, frame: rec, ethertype: 0, kind: 'other' };
  return decodeFrom(rec, rec.readUInt16BE(typeOffset), headerBytes, ts);
}

export function decodeEthernet(frame: Buffer, ts = 0): Packet {
  if (frame.length < 14) return { ts, frame, ethertype: 0, kind: 'other' };
  let off = 12;
  let type = frame.readUInt16BE(off);
  while ((type === 0x8100 || type === 0x88a8) && frame.length >= off + 6) {
    off += 4;
    type = frame.readUInt16BE(off);
  }
  return decodeFrom(frame, type, off + 2, ts);
}

/** Decodes the network and transport headers of a frame whose ethertype is type, starting at off. */
function decodeFrom(frame: Buffer, type: number, off: number, ts: number): Packet {
  const p: Packet = { ts, frame, ethertype: type, kind: 'other' };
  if (type === 0x0806) {
    p.kind = 'arp';
    return p;
  }
  let proto = -1;
  let end = frame.length; // where the IP packet ends (Ethernet pads short frames)
  if (type === 0x0800 && frame.length >= off + 20) {
    const ihl = (frame[off] & 0x0f) * 4;
    proto = frame[off + 9];
    end = Math.min(frame.length, off + frame.readUInt16BE(off + 2));
    p.src = Array.from(frame.subarray(off + 12, off + 16)).join('.');
    p.dst = Array.from(frame.subarray(off + 16, off + 20)).join('.');
    const fragOffset = frame.readUInt16BE(off + 6) & 0x1fff;
    off += ihl;
    if (fragOffset !== 0) return p; // a later fragment: no transport header here
    if (proto === 1) {
      p.kind = 'icmp';
      p.icmpType = frame[off];
      return p;
    }
  } else if (type === 0x86dd && frame.length >= off + 40) {
    proto = frame[off + 6];
    end = Math.min(frame.length, off + 40 + frame.readUInt16BE(off + 4));
    p.src = ip6(frame.subarray(off + 8, off + 24));
    p.dst = ip6(frame.subarray(off + 24, off + 40));
    off += 40;
    if (proto === 58) {
      p.kind = 'icmp6';
      p.icmpType = frame[off];
      return p;
    }
  } else {
    return p;
  }
  if (proto === 6) {
    p.kind = 'tcp';
    if (frame.length >= off + 20) {
      p.sport = frame.readUInt16BE(off);
      p.dport = frame.readUInt16BE(off + 2);
      p.seq = frame.readUInt32BE(off + 4);
      p.payload = frame.subarray(Math.min(end, off + (frame[off + 12] >> 4) * 4), end);
    }
    return p;
  }
  if (proto === 17 && frame.length >= off + 8) {
    p.kind = 'udp';
    p.sport = frame.readUInt16BE(off);
    p.dport = frame.readUInt16BE(off + 2);
    const len = frame.readUInt16BE(off + 4);
    p.payload = frame.subarray(off + 8, Math.min(frame.length, off + Math.max(8, len)));
  }
  return p;
}

function ip6(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return groups
    .join(':')
    .replace(/(^|:)0(:0)+(:|$)/, '::')
    .replace(/:{3,}/, '::');
}

/**
 * The bytes each TCP direction carried, reassembled by sequence number (retransmissions and overlaps
 * counted once; a gap, e.g. a packet the capture lost, is left out), keyed "SRC:PORT>DST:PORT". Only a
 * reassembled stream shows a string that crossed a segment boundary.
 */
export function tcpStreams(packets: Packet[]): Map<string, Buffer> {
  const flows = new Map<string, Packet[]>();
  for (const p of packets) {
    if (p.kind !== 'tcp' || !p.payload?.length || p.seq === undefined) continue;
    const key = `${p.src}:${p.sport}>${p.dst}:${p.dport}`;
    const list = flows.get(key) ?? [];
    list.push(p);
    flows.set(key, list);
  }
  const out = new Map<string, Buffer>();
  for (const [key, list] of flows) {
    const base = list[0].seq!;
    const rel = (p: Packet) => (p.seq! - base + 2 ** 32) % 2 ** 32; // sequence numbers wrap
    list.sort((a, b) => rel(a) - rel(b));
    const parts: Buffer[] = [];
    let next = 0;
    for (const p of list) {
      const start = rel(p);
      const stop = start + p.payload!.length;
      if (stop <= next) continue;
      parts.push(p.payload!.subarray(Math.max(0, next - start)));
      next = stop;
    }
    out.set(key, Buffer.concat(parts));
  }
  return out;
}
