// Sparse flows first: the order a batch of frames is written to the TAP in.
//
// A receive batch can hold a bulk flow's many frames (a TCP stream's segments, or the ACKs coming back to its
// sender) and one frame of a flow that sends little (an echo, a DNS answer, a keystroke). Every TAP write runs
// the receiving stack at once (the ACKs make the local TCP sender transmit inside that very write), so a lone
// frame written after them waits for all of it: under a full-speed stream that was most of a ping's round trip.
// As fq_codel serves flows that keep no queue first, the frames of flows with one frame (of at most
// kSparseBytes) in the batch are written first, then the rest. The bulk need not be large in bytes to be
// bulk: at a TCP sender, the batch is the stream's ACKs (a few hundred bytes) and the echo reply behind them.
// Each flow's frames keep their order (a flow is wholly in one class), so nothing a flow sees is reordered;
// frames of different flows never had an order to keep.
//
// A flow is the Ethernet header's addresses and type, and for IPv4 and IPv6 the protocol, the addresses and
// (TCP and UDP, not fragments) the ports. Keys that collide only make a sparse flow count as bulk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparse {

constexpr size_t kSparseBytes = 1514;  // one full-size Ethernet frame (fq_codel's default quantum)

struct Frame {
  uint8_t* data;
  size_t len;
};

inline uint64_t Mix(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;  // FNV-1a
  return h;
}

inline uint64_t FlowKey(const uint8_t* f, size_t len) {
  uint64_t h = 0xcbf29ce484222325ULL;
  if (len < 14) return Mix(h, f, len) | 1;
  h = Mix(h, f, 14);  // destination, source, type
  uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
  if (type == 0x0800 && len >= 34) {
    const uint8_t* ip = f + 14;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    uint8_t proto = ip[9];
    h = Mix(h, &ip[9], 1);
    h = Mix(h, ip + 12, 8);
    bool fragment = ((ip[6] & 0x3f) | ip[7]) != 0;  // more fragments, or an offset
    if ((proto == 6 || proto == 17) && !fragment && ihl >= 20 && len >= 14 + ihl + 4) h = Mix(h, ip + ihl, 4);
  } else if (type == 0x86dd && len >= 54) {
    const uint8_t* ip = f + 14;
    uint8_t next = ip[6];
    h = Mix(h, &ip[6], 1);
    h = Mix(h, ip + 8, 32);
    if ((next == 6 || next == 17) && len >= 58) h = Mix(h, ip + 40, 4);
  }
  return h | 1;  // 0 marks an empty slot
}

// Reusable memory for Order (one per TAP: no allocation per batch once grown).
struct Scratch {
  std::vector<uint64_t> keys;
  std::vector<uint32_t> frames;  // per slot: the flow's frames in this batch
  std::vector<uint32_t> slotOf;
};

// Fills order with 0..n-1, sparse flows' frames (one per flow) first (each class in arrival order). Returns how many
// frames are sparse; the order is the identity when all or none are.
inline uint32_t Order(const Frame* frames, uint32_t n, std::vector<uint32_t>* order, Scratch* s) {
  order->resize(n);
  for (uint32_t i = 0; i < n; i++) (*order)[i] = i;
  if (n <= 1) return n;
  size_t cap = 16;
  while (cap < (size_t)n * 2) cap <<= 1;
  s->keys.assign(cap, 0);
  s->frames.assign(cap, 0);
  s->slotOf.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    // Not a frame (the caller drops it): a flow of its own.
    uint64_t k = frames[i].data == nullptr ? 1 : FlowKey(frames[i].data, frames[i].len);
    size_t slot = (size_t)(k ^ (k >> 29)) & (cap - 1);
    while (s->keys[slot] != 0 && s->keys[slot] != k) slot = (slot + 1) & (cap - 1);
    s->keys[slot] = k;
    s->frames[slot]++;
    s->slotOf[i] = (uint32_t)slot;
  }
  // A flow's one frame is sparse if it is at most a full-size frame (a bad element counts as sparse).
  auto isSparse = [frames, s](uint32_t i) {
    return s->frames[s->slotOf[i]] == 1 && (frames[i].data == nullptr || frames[i].len <= kSparseBytes);
  };
  uint32_t sparse = 0;
  for (uint32_t i = 0; i < n; i++)
    if (isSparse(i)) sparse++;
  if (sparse == 0 || sparse == n) return sparse;
  uint32_t a = 0, b = sparse;
  for (uint32_t i = 0; i < n; i++) (*order)[isSparse(i) ? a++ : b++] = i;
  return sparse;
}

}  // namespace sparse
