// A single-producer single-consumer ring of reusable slots with its own thread: the event loop (producer)
// fills a slot and publishes it; the thread (consumer) processes slots in order and sleeps when there are
// none. Used for the kernel work that need not hold up JavaScript: TAP writes (tap.cc) and UDP sends
// (udp.cc), so a second core does them while the loop reads, decrypts and switches the next batch.
//
// Ordering: slots are processed in the order they were published; Empty() is true only when the thread has
// FINISHED every slot (the consumer index moves after processing), so the producer may do a small piece of
// work inline (a lone ping) without overtaking anything queued. Slots keep their buffers' capacity.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace worker {

template <typename Slot>
class Ring {
 public:
  using Process = std::function<void(Slot&)>;

  ~Ring() { Stop(); }

  void Start(size_t capacity, Process process) {
    slots_.resize(capacity);
    process_ = std::move(process);
    thread_ = std::thread([this] { Run(); });
  }

  bool Running() const { return thread_.joinable(); }

  // Producer: the next free slot, or null when the ring is full (the caller drops and counts).
  Slot* Reserve() {
    size_t t = tail_.load(std::memory_order_relaxed);
    if (t - head_.load(std::memory_order_acquire) >= slots_.size()) return nullptr;
    return &slots_[t % slots_.size()];
  }

  // Producer: hands the reserved slot to the thread.
  void Publish() {
    tail_.store(tail_.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
    if (waiting_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> l(m_);
      cv_.notify_one();
    }
  }

  // Everything published has been processed.
  bool Empty() const { return head_.load(std::memory_order_acquire) == tail_.load(std::memory_order_relaxed); }
  size_t Size() const { return tail_.load(std::memory_order_relaxed) - head_.load(std::memory_order_acquire); }

  // For Process: true once Stop() was called (give up waiting on the fd).
  bool Stopping() const { return stop_.load(std::memory_order_relaxed); }

  // Stops and joins the thread; slots not yet processed stay counted in Size().
  void Stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> l(m_);
      stop_.store(true, std::memory_order_seq_cst);
      cv_.notify_one();
    }
    thread_.join();
  }

 private:
  void Run() {
    for (;;) {
      size_t h = head_.load(std::memory_order_relaxed);
      if (h == tail_.load(std::memory_order_seq_cst)) {
        std::unique_lock<std::mutex> l(m_);
        waiting_.store(true, std::memory_order_seq_cst);
        while (h == tail_.load(std::memory_order_seq_cst) && !stop_.load(std::memory_order_relaxed)) cv_.wait(l);
        waiting_.store(false, std::memory_order_relaxed);
        if (h == tail_.load(std::memory_order_seq_cst)) return;  // stopped with nothing left
        continue;
      }
      if (stop_.load(std::memory_order_relaxed)) return;  // stopped: what is left is dropped by the owner
      process_(slots_[h % slots_.size()]);
      head_.store(h + 1, std::memory_order_release);
    }
  }

  std::vector<Slot> slots_;
  Process process_;
  std::thread thread_;
  std::atomic<size_t> head_{0};  // consumer: slots processed
  std::atomic<size_t> tail_{0};  // producer: slots published
  std::atomic<bool> waiting_{false};
  std::atomic<bool> stop_{false};
  std::mutex m_;
  std::condition_variable cv_;
};

}  // namespace worker
