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

inline uint16_t Rd16(const uint8_t* p) { return (uint16_t)(p[0] << 8 | p[1]); }
inline uint32_t Rd32(const uint8_t* p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
inline void Wr16(uint8_t* p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

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
  if (std::memcmp(a, b, kEth) != 0) return false;                      // MACs, ethertype
  if (a[kEth + 1] != b[kEth + 1] || a[kEth + 8] != b[kEth + 8]) return false;  // TOS/ECN, TTL
  if (std::memcmp(a + kEth + 12, b + kEth + 12, 8) != 0) return false;  // addresses
  const uint8_t* ta = a + kEth + 20;
  const uint8_t* tb = b + kEth + 20;
  if (std::memcmp(ta, tb, 4) != 0) return false;                  // ports
  if (std::memcmp(ta + 8, tb + 8, 4) != 0) return false;          // ACK number
  if (std::memcmp(ta + 14, tb + 14, 2) != 0) return false;        // window
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
