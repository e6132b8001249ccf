// Receive-side coalescing for the TAP write path (what GRO does in a NIC driver).
//
// The mesh delivers one packet per datagram. Written one by one, every packet crosses the bridge and the
// receiving stack on its own (and a TCP receiver ACKs every other segment): per-packet kernel work that
// dominates the daemon's CPU. So consecutive packets of one flow in a write batch are merged into one frame
// with a virtio_net_hdr that says how the kernel cuts it again ("GSO, segment size S, checksum partial"); the
// kernel carries it as one skb and segments it only where it must (a socket without UDP GRO, a device
// without the offload). Merged: in-order TCP segments (IPv4 and IPv6) with equal headers, and runs of
// equal-size UDP datagrams of one flow (IPv4 and IPv6; all but the last of the run the same size, as UDP GSO
// requires). Anything else (other protocols, IP options or IPv6 extension headers, fragments, TCP flags
// other than ACK/PSH, gaps) is written as it came, with an all-zero header.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace gro {

constexpr size_t kVnetHdrBytes = 10;  // struct virtio_net_hdr (TUNSETVNETHDRSZ default)
constexpr uint8_t kVnetFlagNeedsCsum = 1;
constexpr uint8_t kVnetGsoTcpV4 = 1;
constexpr uint8_t kVnetGsoTcpV6 = 4;
constexpr uint8_t kVnetGsoUdpL4 = 5;
constexpr size_t kEth = 14;
constexpr size_t kMaxMergedIpBytes = 65535;
constexpr int kMaxSegments = 64;

// What a merge candidate is; frames of different kinds never merge.
enum Kind : uint8_t { kTcp4 = 0, kTcp6, kUdp4, kUdp6, kKinds };

// A parsed merge candidate.
struct Seg {
  const uint8_t* f = nullptr;  // the frame (borrowed)
  size_t len = 0;
  Kind kind = kTcp4;
  size_t ipl = 0;      // IP header length (20 or 40)
  size_t thl = 0;      // L4 header length (TCP: with options; UDP: 8)
  size_t payload = 0;  // L4 payload bytes
  uint32_t seq = 0;    // TCP
  uint8_t flags = 0;   // TCP
};

inline uint16_t Rd16(const uint8_t* p) {
  return (uint16_t)(p[0] << 8 | p[1]);
}
inline uint32_t Rd32(const uint8_t* p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
inline void Wr16(uint8_t* p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

// The L4 part of Parse: TCP with payload and only ACK/PSH set, or UDP whose length field matches.
inline bool ParseL4(const uint8_t* l4, size_t l4len, uint8_t proto, bool v6, Seg* s) {
  if (proto == 6) {
    if (l4len < 20) return false;
    size_t thl = (size_t)(l4[12] >> 4) * 4;
    if (thl < 20 || thl >= l4len) return false;  // no payload
    uint8_t flags = l4[13];
    if ((flags & ~0x18) != 0 || (flags & 0x10) == 0) return false;  // only ACK, or ACK|PSH
    s->kind = v6 ? kTcp6 : kTcp4;
    s->thl = thl;
    s->payload = l4len - thl;
    s->seq = Rd32(l4 + 4);
    s->flags = flags;
    return true;
  }
  if (proto == 17) {
    if (l4len <= 8 || Rd16(l4 + 4) != l4len) return false;  // empty, or a length that disagrees
    s->kind = v6 ? kUdp6 : kUdp4;
    s->thl = 8;
    s->payload = l4len - 8;
    return true;
  }
  return false;
}

// True if the frame is an untagged IPv4 (no options, not fragmented) or IPv6 (no extension headers) TCP or
// UDP packet of the kinds that are merged.
inline bool Parse(const uint8_t* f, size_t len, Seg* s) {
  if (len < kEth + 20 + 8) return false;
  s->f = f;
  s->len = len;
  const uint8_t* ip = f + kEth;
  if (f[12] == 0x08 && f[13] == 0x00) {
    if (ip[0] != 0x45) return false;
    if ((Rd16(ip + 6) & 0x3fff) != 0) return false;  // MF or a fragment offset
    size_t total = Rd16(ip + 2);
    if (total != len - kEth) return false;  // Ethernet padding or truncation: leave it alone
    s->ipl = 20;
    return ParseL4(ip + 20, total - 20, ip[9], false, s);
  }
  if (f[12] == 0x86 && f[13] == 0xdd) {
    if (len < kEth + 40 + 8 || (ip[0] >> 4) != 6) return false;
    if ((size_t)Rd16(ip + 4) != len - kEth - 40) return false;
    s->ipl = 40;
    return ParseL4(ip + 40, len - kEth - 40, ip[6], true, s);
  }
  return false;
}

// Can `n` follow `last` in the group that `first` opened?
inline bool Follows(const Seg& first, const Seg& last, const Seg& n, size_t groupPayload, int groupSegs) {
  if (groupSegs >= kMaxSegments || n.kind != first.kind) return false;
  if (last.payload != first.payload || n.payload > first.payload) return false;  // all but the last full-size
  if (first.ipl + first.thl + groupPayload + n.payload > kMaxMergedIpBytes) return false;
  const uint8_t* a = first.f;
  const uint8_t* b = n.f;
  const uint8_t* ia = a + kEth;
  const uint8_t* ib = b + kEth;
  if (std::memcmp(a, b, kEth) != 0) return false;  // MACs, ethertype
  if (first.ipl == 20) {
    if (ia[1] != ib[1] || ia[8] != ib[8]) return false;       // TOS/ECN, TTL
    if ((ia[6] & 0x40) != (ib[6] & 0x40)) return false;       // DF
    if (std::memcmp(ia + 12, ib + 12, 8) != 0) return false;  // addresses
  } else {
    if (std::memcmp(ia, ib, 4) != 0 || ia[7] != ib[7]) return false;  // traffic class, flow label, hop limit
    if (std::memcmp(ia + 8, ib + 8, 32) != 0) return false;           // addresses
  }
  const uint8_t* ta = ia + first.ipl;
  const uint8_t* tb = ib + n.ipl;
  if (std::memcmp(ta, tb, 4) != 0) return false;  // ports
  if (first.kind == kUdp4 || first.kind == kUdp6) return true;
  if (last.flags & 0x08) return false;  // PSH ends a group (as GRO flushes on it)
  if (n.seq != last.seq + (uint32_t)last.payload) return false;
  if (n.thl != first.thl) return false;
  if (std::memcmp(ta + 8, tb + 8, 4) != 0) return false;                 // ACK number
  if (std::memcmp(ta + 14, tb + 14, 2) != 0) return false;               // window
  if (std::memcmp(ta + 20, tb + 20, first.thl - 20) != 0) return false;  // options (timestamps...)
  return true;
}

inline uint32_t Sum16(const uint8_t* p, size_t n, uint32_t sum) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += Rd16(p + i);
  if (n & 1) sum += (uint32_t)p[n - 1] << 8;
  return sum;
}

inline uint16_t Fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

// Builds the merged frame (virtio_net_hdr + headers of the first packet + all payloads) into out.
inline void Build(const Seg* segs, int count, size_t totalPayload, std::vector<uint8_t>* out) {
  const Seg& first = segs[0];
  bool udp = first.kind == kUdp4 || first.kind == kUdp6;
  bool v6 = first.kind == kTcp6 || first.kind == kUdp6;
  size_t hdrs = kEth + first.ipl + first.thl;
  out->resize(kVnetHdrBytes + hdrs + totalPayload);
  uint8_t* v = out->data();
  // virtio_net_hdr, little-endian fields (x86 and arm64 hosts; TUNSETVNETLE is the default there).
  v[0] = kVnetFlagNeedsCsum;
  v[1] = udp ? kVnetGsoUdpL4 : (v6 ? kVnetGsoTcpV6 : kVnetGsoTcpV4);
  uint16_t hdrLen = (uint16_t)hdrs, gsoSize = (uint16_t)first.payload, csumStart = (uint16_t)(kEth + first.ipl),
           csumOffset = udp ? 6 : 16;
  std::memcpy(v + 2, &hdrLen, 2);
  std::memcpy(v + 4, &gsoSize, 2);
  std::memcpy(v + 6, &csumStart, 2);
  std::memcpy(v + 8, &csumOffset, 2);
  uint8_t* f = v + kVnetHdrBytes;
  std::memcpy(f, first.f, hdrs);
  size_t off = hdrs;
  for (int i = 0; i < count; i++) {
    std::memcpy(f + off, segs[i].f + kEth + segs[i].ipl + segs[i].thl, segs[i].payload);
    off += segs[i].payload;
  }
  uint8_t* ip = f + kEth;
  uint8_t* l4 = ip + first.ipl;
  size_t l4Len = first.thl + totalPayload;
  uint32_t pseudo;
  if (v6) {
    Wr16(ip + 4, (uint16_t)l4Len);
    pseudo = Sum16(ip + 8, 32, 0) + (udp ? 17 : 6) + (uint32_t)l4Len;
  } else {
    Wr16(ip + 2, (uint16_t)(20 + l4Len));
    Wr16(ip + 10, 0);
    Wr16(ip + 10, (uint16_t)~Fold(Sum16(ip, 20, 0)));
    pseudo = Sum16(ip + 12, 8, 0) + (udp ? 17 : 6) + (uint32_t)l4Len;
  }
  if (udp) {
    Wr16(l4 + 4, (uint16_t)l4Len);  // the run's length: the kernel gives each datagram its own
    Wr16(l4 + 6, Fold(pseudo));
  } else {
    l4[13] |= segs[count - 1].flags & 0x08;  // PSH of the last segment
    // CHECKSUM_PARTIAL: the checksum field holds the (uncomplemented) pseudo-header sum.
    Wr16(l4 + 16, Fold(pseudo));
  }
}

}  // namespace gro

// ---- Read side: the kernel hands the TAP large TCP frames (TSO) and partial checksums ------------------
namespace gso {

struct VnetHdr {
  uint8_t flags, gsoType;
  uint16_t hdrLen, gsoSize, csumStart, csumOffset;
};

inline VnetHdr ReadHdr(const uint8_t* v) {
  VnetHdr h;
  h.flags = v[0];
  h.gsoType = v[1];
  std::memcpy(&h.hdrLen, v + 2, 2);
  std::memcpy(&h.gsoSize, v + 4, 2);
  std::memcpy(&h.csumStart, v + 6, 2);
  std::memcpy(&h.csumOffset, v + 8, 2);
  return h;
}

// Completes a CHECKSUM_PARTIAL frame in place: the field at csumStart+csumOffset holds the pseudo-header
// sum; the checksum covers everything from csumStart. False if the offsets are out of range.
inline bool CompleteChecksum(uint8_t* f, size_t len, const VnetHdr& h) {
  if ((size_t)h.csumStart + h.csumOffset + 2 > len) return false;
  uint16_t c = (uint16_t)~gro::Fold(gro::Sum16(f + h.csumStart, len - h.csumStart, 0));
  if (c == 0 && f[h.csumStart + 6] == 0) c = 0xffff;  // harmless for TCP; UDP's "no checksum" is 0
  gro::Wr16(f + h.csumStart + h.csumOffset, c);
  return true;
}

// Number of segments a TSO frame becomes, or 0 if it is not an IPv4 or IPv6 (no extension headers) TCP frame
// this code can cut.
inline size_t SegmentCount(const uint8_t* f, size_t len, const VnetHdr& h, size_t* hdrs) {
  if (h.gsoSize == 0 || len < gro::kEth + 40) return 0;
  const uint8_t* ip = f + gro::kEth;
  size_t ihl;
  if (f[12] == 0x08 && f[13] == 0x00) {
    ihl = (size_t)(ip[0] & 15) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 6) return 0;
  } else if (f[12] == 0x86 && f[13] == 0xdd) {
    ihl = 40;
    if ((ip[0] >> 4) != 6 || ip[6] != 6) return 0;
  } else {
    return 0;
  }
  if (len < gro::kEth + ihl + 20) return 0;
  size_t thl = (size_t)(ip[ihl + 12] >> 4) * 4;
  *hdrs = gro::kEth + ihl + thl;
  if (thl < 20 || *hdrs >= len) return 0;
  return (len - *hdrs + h.gsoSize - 1) / h.gsoSize;
}

// Cuts a TSO frame into segment frames of at most gsoSize payload bytes, each with its own IP header (IPv4:
// length, ID, checksum; IPv6: payload length) and full TCP checksum; FIN/PSH only on the last, CWR only on
// the first. Segment i goes to out + i*stride; its length to lens[i].
inline void Segment(const uint8_t* f, size_t len, const VnetHdr& h, size_t hdrs, uint8_t* out, size_t stride,
                    uint32_t* lens) {
  const uint8_t* ip = f + gro::kEth;
  bool v6 = f[12] == 0x86;
  size_t ihl = v6 ? 40 : (size_t)(ip[0] & 15) * 4;
  size_t thl = hdrs - gro::kEth - ihl;
  size_t payload = len - hdrs;
  uint32_t seq0 = gro::Rd32(ip + ihl + 4);
  uint16_t id0 = v6 ? 0 : gro::Rd16(ip + 4);
  uint32_t pseudoAddrs = v6 ? gro::Sum16(ip + 8, 32, 0) + 6 : gro::Sum16(ip + 12, 8, 0) + 6;
  size_t i = 0;
  for (size_t off = 0; off < payload; off += h.gsoSize, i++) {
    size_t n = payload - off < h.gsoSize ? payload - off : h.gsoSize;
    bool last = off + n >= payload;
    uint8_t* s = out + i * stride;
    std::memcpy(s, f, hdrs);
    std::memcpy(s + hdrs, f + hdrs + off, n);
    uint8_t* sip = s + gro::kEth;
    uint8_t* tcp = sip + ihl;
    if (v6) {
      gro::Wr16(sip + 4, (uint16_t)(thl + n));
    } else {
      gro::Wr16(sip + 2, (uint16_t)(ihl + thl + n));
      gro::Wr16(sip + 4, (uint16_t)(id0 + i));
      gro::Wr16(sip + 10, 0);
      gro::Wr16(sip + 10, (uint16_t)~gro::Fold(gro::Sum16(sip, ihl, 0)));
    }
    uint32_t seq = seq0 + (uint32_t)off;
    tcp[4] = (uint8_t)(seq >> 24);
    tcp[5] = (uint8_t)(seq >> 16);
    tcp[6] = (uint8_t)(seq >> 8);
    tcp[7] = (uint8_t)seq;
    if (!last) tcp[13] &= (uint8_t)~0x09;  // FIN, PSH
    if (i > 0) tcp[13] &= (uint8_t)~0x80;  // CWR
    gro::Wr16(tcp + 16, 0);
    uint32_t sum = gro::Sum16(tcp, thl + n, pseudoAddrs + (uint32_t)(thl + n));
    gro::Wr16(tcp + 16, (uint16_t)~gro::Fold(sum));
    lens[i] = (uint32_t)(hdrs + n);
  }
}

}  // namespace gso
