// CoDel (RFC 8289) for the data path's queues: the UDP socket's receive queue in front of a busy daemon, and
// the queues in front of the TAP writer and UDP sender threads. A queue that is ever deeper only adds delay
// for everything behind it (a ping waiting behind a bulk TCP stream); drop-tail at a fixed depth holds it
// full, so TCP backs off in bursts and the delay stays. CoDel looks at how long each packet waited (its
// sojourn time): once that stayed above `target` for a whole `interval`, it drops one packet and then more
// often (interval / sqrt(count)) until the delay is back under target. TCP senders back off, the standing
// queue drains to about `target`, and the queue still absorbs bursts.
//
// One decision per dequeued packet (or coalesced run); the caller drops and counts. Times in nanoseconds.
#pragma once

#include <cmath>
#include <cstdint>

namespace codel {

constexpr uint64_t kTargetNs = 5'000'000;      // 5 ms: the standing delay CoDel lets a queue keep
constexpr uint64_t kIntervalNs = 100'000'000;  // 100 ms: about a worst-case round trip

class Codel {
 public:
  // sojournNs: how long this packet waited; now: a monotonic clock. True: drop it.
  bool Drop(uint64_t now, uint64_t sojournNs) {
    bool okToDrop = false;
    if (sojournNs < kTargetNs) {
      firstAbove_ = 0;
    } else if (firstAbove_ == 0) {
      firstAbove_ = now + kIntervalNs;
    } else if (now >= firstAbove_) {
      okToDrop = true;
    }
    if (dropping_) {
      if (!okToDrop) {
        dropping_ = false;
        return false;
      }
      if (now < dropNext_) return false;
      count_++;
      dropNext_ = ControlLaw(dropNext_, count_);
      return true;
    }
    if (!okToDrop) return false;
    dropping_ = true;
    // Dropping again soon after the last episode: start near the rate that worked then.
    uint32_t delta = count_ - lastCount_;
    count_ = (delta > 1 && now - dropNext_ < 16 * kIntervalNs) ? delta : 1;
    lastCount_ = count_;
    dropNext_ = ControlLaw(now, count_);
    return true;
  }

 private:
  static uint64_t ControlLaw(uint64_t t, uint32_t count) {
    return t + (uint64_t)((double)kIntervalNs / std::sqrt((double)count));
  }

  bool dropping_ = false;
  uint64_t firstAbove_ = 0;
  uint64_t dropNext_ = 0;
  uint32_t count_ = 0;
  uint32_t lastCount_ = 0;
};

inline uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1'000'000'000ull + (uint64_t)ts.tv_nsec;
}

}  // namespace codel
