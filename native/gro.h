// Receive-side coalescing for the TAP write path (what GRO does in a NIC driver).
//
// The mesh delivers one TCP segment per datagram. Written one by one, every segment crosses the bridge
// and the receiving TCP stack on its own, and the receiver ACKs every other one: per-segment kernel work
// that dominates the daemon's CPU. So consecutive in-order segments of one IPv4 TCP flow in a write batch
// are merged into one frame with a virtio_net_hdr saying "TCP GSO, segment size S, checksum partial"; the
// kernel carries it as one skb (and segments it again only if it must leave through a device that cannot
// take it). Anything else (other protocols, options that differ, flags other than ACK/PSH, gaps) is
// written as it came, with an all-zero header.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace gro {

constexpr size_t kVnetHdrBytes = 10;  // struct virtio_net_hdr (TUNSETVNETHDRSZ default)
constexpr uint8_t kVnetFlagNeedsCsum = 1;
constexpr uint8_t kVnetGsoTcpV4 = 1;
constexpr size_t kEth = 14;
constexpr size_t kMaxMergedIpBytes = 65535;
constexpr int kMaxSegments = 64;

// A parsed IPv4 TCP segment that is a merge candidate.
struct Seg {
  const uint8_t* f = nullptr;  // the frame (borrowed)
  size_t len = 0;
  size_t thl = 0;      // TCP header length
  size_t payload = 0;  // TCP payload bytes
  uint32_t seq = 0;
  uint8_t flags = 0;
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

// True if the frame is an untagged IPv4 (no options, not fragmented) TCP segment with payload and only
// ACK/PSH set: the only kind that is merged.
inline bool Parse(const uint8_t* f, size_t len, Seg* s) {
  if (len < kEth + 20 + 20 || f[12] != 0x08 || f[13] != 0x00) return false;
  const uint8_t* ip = f + kEth;
  if (ip[0] != 0x45 || ip[9] != 6) return false;
  if ((Rd16(ip + 6) & 0x3fff) != 0) return false;  // MF or a fragment offset
  size_t total = Rd16(ip + 2);
  if (total != len - kEth) return false;  // Ethernet padding or truncation: leave it alone
  const uint8_t* tcp = ip + 20;
  size_t thl = (size_t)(tcp[12] >> 4) * 4;
  if (thl < 20 || 20 + thl >= total) return false;  // no payload
  uint8_t flags = tcp[13];
  if ((flags & ~0x18) != 0 || (flags & 0x10) == 0) return false;  // only ACK, or ACK|PSH
  s->f = f;
  s->len = len;
  s->thl = thl;
  s->payload = total - 20 - thl;
  s->seq = Rd32(tcp + 4);
  s->flags = flags;
  return true;
}

// Can `n` follow `last` in the group that `first` opened?
inline bool Follows(const Seg& first, const Seg& last, const Seg& n, size_t groupPayload, int groupSegs) {
  if (groupSegs >= kMaxSegments) return false;
  if (last.flags & 0x08) return false;  // PSH ends a group (as GRO flushes on it)
  if (last.payload != first.payload || n.payload > first.payload) return false;  // all but the last full-size
  if (n.seq != last.seq + (uint32_t)last.payload) return false;
  if (20 + first.thl + groupPayload + n.payload > kMaxMergedIpBytes) return false;
  if (n.thl != first.thl) return false;
  const uint8_t* a = first.f;
  const uint8_t* b = n.f;
  if (std::memcmp(a, b, kEth) != 0) return false;                              // MACs, ethertype
  if (a[kEth + 1] != b[kEth + 1] || a[kEth + 8] != b[kEth + 8]) return false;  // TOS/ECN, TTL
  if (std::memcmp(a + kEth + 12, b + kEth + 12, 8) != 0) return false;         // addresses
  const uint8_t* ta = a + kEth + 20;
  const uint8_t* tb = b + kEth + 20;
  if (std::memcmp(ta, tb, 4) != 0) return false;                         // ports
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

// Builds the merged frame (virtio_net_hdr + headers of the first segment + all payloads) into out.
inline void Build(const Seg* segs, int count, size_t totalPayload, std::vector<uint8_t>* out) {
  const Seg& first = segs[0];
  size_t hdrs = kEth + 20 + first.thl;
  out->resize(kVnetHdrBytes + hdrs + totalPayload);
  uint8_t* v = out->data();
  // virtio_net_hdr, little-endian fields (x86 and arm64 hosts; TUNSETVNETLE is the default there).
  v[0] = kVnetFlagNeedsCsum;
  v[1] = kVnetGsoTcpV4;
  uint16_t hdrLen = (uint16_t)hdrs, gsoSize = (uint16_t)first.payload, csumStart = (uint16_t)(kEth + 20),
           csumOffset = 16;
  std::memcpy(v + 2, &hdrLen, 2);
  std::memcpy(v + 4, &gsoSize, 2);
  std::memcpy(v + 6, &csumStart, 2);
  std::memcpy(v + 8, &csumOffset, 2);
  uint8_t* f = v + kVnetHdrBytes;
  std::memcpy(f, first.f, hdrs);
  size_t off = hdrs;
  for (int i = 0; i < count; i++) {
    std::memcpy(f + off, segs[i].f + kEth + 20 + segs[i].thl, segs[i].payload);
    off += segs[i].payload;
  }
  uint8_t* ip = f + kEth;
  uint8_t* tcp = ip + 20;
  size_t tcpLen = first.thl + totalPayload;
  Wr16(ip + 2, (uint16_t)(20 + tcpLen));
  Wr16(ip + 10, 0);
  Wr16(ip + 10, (uint16_t)~Fold(Sum16(ip, 20, 0)));
  tcp[13] |= segs[count - 1].flags & 0x08;  // PSH of the last segment
  // CHECKSUM_PARTIAL: the checksum field holds the (uncomplemented) pseudo-header sum.
  uint32_t pseudo = Sum16(ip + 12, 8, 0) + 6 + (uint32_t)tcpLen;
  Wr16(tcp + 16, Fold(pseudo));
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

// Number of segments a TSO frame becomes, or 0 if it is not an IPv4 TCP frame this code can cut.
inline size_t SegmentCount(const uint8_t* f, size_t len, const VnetHdr& h, size_t* hdrs) {
  if (h.gsoSize == 0 || len < gro::kEth + 20 || f[12] != 0x08 || f[13] != 0x00) return 0;
  const uint8_t* ip = f + gro::kEth;
  size_t ihl = (size_t)(ip[0] & 15) * 4;
  if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 6 || len < gro::kEth + ihl + 20) return 0;
  size_t thl = (size_t)(ip[ihl + 12] >> 4) * 4;
  *hdrs = gro::kEth + ihl + thl;
  if (thl < 20 || *hdrs >= len) return 0;
  return (len - *hdrs + h.gsoSize - 1) / h.gsoSize;
}

// Cuts a TSO frame into segment frames of at most gsoSize payload bytes, each with its own IPv4 header
// (length, ID, checksum) and full TCP checksum; FIN/PSH only on the last, CWR only on the first.
// Segment i goes to out + i*stride; its length to lens[i].
inline void Segment(const uint8_t* f, size_t len, const VnetHdr& h, size_t hdrs, uint8_t* out, size_t stride,
                    uint32_t* lens) {
  const uint8_t* ip = f + gro::kEth;
  size_t ihl = (size_t)(ip[0] & 15) * 4;
  size_t thl = hdrs - gro::kEth - ihl;
  size_t payload = len - hdrs;
  uint32_t seq0 = gro::Rd32(ip + ihl + 4);
  uint16_t id0 = gro::Rd16(ip + 4);
  uint32_t pseudoAddrs = gro::Sum16(ip + 12, 8, 0) + 6;
  size_t i = 0;
  for (size_t off = 0; off < payload; off += h.gsoSize, i++) {
    size_t n = payload - off < h.gsoSize ? payload - off : h.gsoSize;
    bool last = off + n >= payload;
    uint8_t* s = out + i * stride;
    std::memcpy(s, f, hdrs);
    std::memcpy(s + hdrs, f + hdrs + off, n);
    uint8_t* sip = s + gro::kEth;
    uint8_t* tcp = sip + ihl;
    gro::Wr16(sip + 2, (uint16_t)(ihl + thl + n));
    gro::Wr16(sip + 4, (uint16_t)(id0 + i));
    gro::Wr16(sip + 10, 0);
    gro::Wr16(sip + 10, (uint16_t)~gro::Fold(gro::Sum16(sip, ihl, 0)));
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
