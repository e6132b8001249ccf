// How long an item waited in one of the data path's own queues (the writer and sender threads', worker.h),
// and how long is too long. A thread's queue refuses whole batches while the item it took last had waited
// longer than kQueueDelayMaxNs: a standing queue is latency for every packet behind it (a ping behind a bulk
// stream), and refusing whole batches keeps what belongs together together (IP fragments of one datagram:
// a lost fragment holds the receiver's reassembly memory for 30 s).
//
// Per-packet CoDel (RFC 8289) was tried here and on the socket's receive queue, and measured worse on this
// project's busy 2-core host: a thread's wait there is mostly the scheduler's, so CoDel kept dropping
// single packets of flows that were not the cause (fragments, and pings while the daemon digested a flood
// of forged handshakes).
#pragma once

#include <cstdint>
#include <ctime>

namespace delay {

constexpr uint64_t kQueueDelayMaxNs = 20'000'000;  // 20 ms

inline uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1'000'000'000ull + (uint64_t)ts.tv_nsec;
}

}  // namespace delay
