// Batched UDP sends on the daemon's dgram socket (its fd), for the mesh's outbound path.
//
// node:dgram sends one datagram per JS call, one syscall each, and each syscall walks the whole IP stack.
// The mesh sends runs of equal-size datagrams to one peer (full-size TCP segments, encrypted), so a run
// goes out as ONE sendmsg with UDP_SEGMENT (UDP GSO): the kernel (or the NIC) cuts it into datagrams after
// the stack. Everything else in the batch goes out with one sendmmsg. The socket stays dgram's: binding
// and closing are node:dgram's; this only writes.
//
//   udpSendBatch(fd, address, port, packets: Uint8Array[], count, gso: boolean) -> sent (>= 0) or -errno
//   (on EAGAIN it returns how many went out; the caller sends the rest through dgram, which queues)
//
//   new UdpSender(fd, { counters: Float64Array, queueMax, queueBytes?, thread: boolean })   on a dup() of fd
//   .send(address, port, packets, count) -> datagrams accepted (sent or queued; the rest dropped, counted)
//   .syncCounters()  .close()   UDP_TX_COUNTER_NAMES: the layout of counters
// With thread (the daemon turns it on with HOMEWIRE_UDP_SEND_THREAD=1), a batch is copied into a queue slot (worker.h)
// and a thread of the sender's own sends it, so the kernel's work for it (the whole stack down to the wire, and on a
// veth the receiver's side too) runs on another core; it waits out EAGAIN with poll(). A batch of at most
// kInlinePackets goes out inline when the queue is empty (a lone ping does not wait for a thread to wake up). A kernel
// without UDP GSO gets plain sendmmsg from the first refusal on. A batch is refused whole while the queue is full or
// its delay is above delay::kQueueDelayMaxNs.
#include <napi.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "delay.h"
#include "udp_send.h"
#include "worker.h"

namespace {

using namespace udpsend;

Napi::Value UdpSendBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsArray() ||
      !info[4].IsNumber()) {
    Napi::TypeError::New(env, "udpSendBatch(fd, address, port, packets, count, gso)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  Dest d;
  if (!ParseDest(info[1].As<Napi::String>().Utf8Value(), info[2].As<Napi::Number>().Uint32Value(), &d))
    return Napi::Number::New(env, -EINVAL);
  napi_value arr = info[3];
  uint32_t count = info[4].As<Napi::Number>().Uint32Value();
  bool gso = info[5].ToBoolean().Value();
  static thread_local std::vector<Pkt> pkts;
  pkts.clear();
  for (uint32_t i = 0; i < count; i++) {
    napi_value v;
    void* data = nullptr;
    size_t len = 0;
    if (napi_get_element(env, arr, i, &v) != napi_ok || napi_get_buffer_info(env, v, &data, &len) != napi_ok)
      return Napi::Number::New(env, -EINVAL);
    pkts.push_back({static_cast<uint8_t*>(data), len});
  }
  int err = 0;
  bool gsoFailed = false;
  size_t calls = 0;
  size_t sent = SendPackets(fd, d, pkts.data(), pkts.size(), gso, &err, &gsoFailed, &calls);
  if (err != 0 && err != EAGAIN && err != EWOULDBLOCK && sent == 0) return Napi::Number::New(env, -err);
  return Napi::Number::New(env, (double)sent);
}

// ---- UdpSender: batches on a thread of their own ------------------------------------------------------
enum TxCounter : int {
  T_DATAGRAMS = 0,  // datagrams handed to the kernel
  T_BYTES,          // their bytes
  T_CALLS,          // send syscalls (a GSO run or up to 64 sendmmsg datagrams each)
  T_INLINE,         // datagrams sent inline by the event loop (the queue was empty, the batch small)
  T_EAGAIN,         // times the kernel said EAGAIN (the thread waits; inline: the rest is queued)
  T_DROPPED_QUEUE,  // dropped: the queue was full, or too slow (delay::kQueueDelayMaxNs)
  T_DROPPED_ERROR,  // dropped: the kernel refused them (unreachable, bad address...)
  T_QUEUED,         // datagrams waiting in the queue now
  T_LAST_ERRNO,     // last errno seen (positive), 0 if none
  T_GSO_OFF,        // 1 once a GSO send was refused: plain sendmmsg from then on
  T_COUNT
};
const char* const kTxCounterNames[] = {"txDatagrams",    "txBytes",        "txCalls",  "txInline",  "txEagain",
                                       "txDroppedQueue", "txDroppedError", "txQueued", "lastErrno", "gsoOff"};
static_assert(sizeof(kTxCounterNames) / sizeof(kTxCounterNames[0]) == T_COUNT, "one name per counter");

constexpr uint32_t kInlinePackets = 32;

struct SendJob {
  Dest dest;
  std::vector<uint8_t> data;
  std::vector<uint32_t> lens;
  uint64_t queuedNs = 0;  // when it was queued (delay.h)
};

class UdpSender : public Napi::ObjectWrap<UdpSender> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UdpSender",
                       {
                           InstanceMethod<&UdpSender::Send>("send"),
                           InstanceMethod<&UdpSender::SyncCountersJs>("syncCounters"),
                           InstanceMethod<&UdpSender::Close>("close"),
                       });
  }

  explicit UdpSender(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UdpSender>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsObject()) {
      Napi::TypeError::New(env, "new UdpSender(fd, { counters, queueMax, thread })").ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Value c = o.Get("counters"), q = o.Get("queueMax");
    if (!c.IsTypedArray() || c.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        c.As<Napi::Float64Array>().ElementLength() < T_COUNT || !q.IsNumber() ||
        q.As<Napi::Number>().Uint32Value() < 1) {
      Napi::TypeError::New(env, "counters: Float64Array of UDP_TX_COUNTER_NAMES.length, queueMax >= 1")
          .ThrowAsJavaScriptException();
      return;
    }
    ctr_ = c.As<Napi::Float64Array>().Data();
    ctrRef_ = Napi::Persistent(c.As<Napi::Object>());
    fd_ = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 3);
    if (fd_ < 0) {
      Napi::Error::New(env, std::string("dup of the UDP socket failed: ") + strerror(errno))
          .ThrowAsJavaScriptException();
      return;
    }
    Napi::Value qb = o.Get("queueBytes");
    queueBytesMax_ = qb.IsNumber() ? (size_t)qb.As<Napi::Number>().Int64Value() : 0;
    if (o.Get("thread").ToBoolean().Value())
      ring_.Start(q.As<Napi::Number>().Uint32Value(), [this](SendJob& j) { SendJobNow(j); });
  }

  ~UdpSender() override { CloseNow(); }

 private:
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsArray() || !info[3].IsNumber()) {
      Napi::TypeError::New(env, "send(address, port, packets, count)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint32_t count = info[3].As<Napi::Number>().Uint32Value();
    if (fd_ < 0) {
      ctr_[T_DROPPED_ERROR] += count;
      return Napi::Number::New(env, 0);
    }
    Dest d;
    if (!ParseDest(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Number>().Uint32Value(), &d)) {
      aDropErr_.fetch_add(count, std::memory_order_relaxed);
      aErrno_.store(EINVAL, std::memory_order_relaxed);
      Sync();
      return Napi::Number::New(env, 0);
    }
    napi_value arr = info[2];
    pkts_.clear();
    for (uint32_t i = 0; i < count; i++) {
      napi_value v;
      void* data = nullptr;
      size_t len = 0;
      if (napi_get_element(env, arr, i, &v) != napi_ok || napi_get_buffer_info(env, v, &data, &len) != napi_ok)
        continue;  // not a Buffer: counted below as refused
      pkts_.push_back({static_cast<uint8_t*>(data), len});
    }
    size_t bad = count - pkts_.size();
    if (bad > 0) aDropErr_.fetch_add(bad, std::memory_order_relaxed);
    size_t done = 0;
    if (!ring_.Running() || (pkts_.size() <= kInlinePackets && ring_.Empty())) {
      // Inline: now, on this thread. Without a thread, EAGAIN leaves the rest to the caller (dgram queues).
      int err;
      bool gsoFailed;
      size_t calls = 0;
      done = SendPackets(fd_, d, pkts_.data(), pkts_.size(), !gsoOff_.load(), &err, &gsoFailed, &calls);
      if (gsoFailed) {
        gsoOff_.store(true);
        size_t more = SendPackets(fd_, d, pkts_.data() + done, pkts_.size() - done, false, &err, &gsoFailed, &calls);
        done += more;
      }
      Count(pkts_.data(), done, calls);
      aInline_.fetch_add(done, std::memory_order_relaxed);
      if (err != 0 && done < pkts_.size()) {
        if (err == EAGAIN || err == EWOULDBLOCK) {
          aEagain_.fetch_add(1, std::memory_order_relaxed);
        } else {
          // Refused (unreachable, no route...): this datagram is lost, the others may go.
          aErrno_.store(err, std::memory_order_relaxed);
          aDropErr_.fetch_add(1, std::memory_order_relaxed);
          done++;
        }
      }
      if (!ring_.Running()) {
        Sync();
        return Napi::Number::New(env, (double)done);
      }
    }
    if (done < pkts_.size()) {
      SendJob* j = ring_.Reserve();
      size_t rest = pkts_.size() - done;
      size_t restBytes = 0;
      for (size_t i = done; i < pkts_.size(); i++) restBytes += pkts_[i].len;
      if (j != nullptr && !ring_.Empty() &&
          ((queueBytesMax_ > 0 && queuedBytes_.load(std::memory_order_relaxed) + restBytes > queueBytesMax_) ||
           lastSojournNs_.load(std::memory_order_relaxed) > delay::kQueueDelayMaxNs))
        j = nullptr;  // full, or already too slow: the batch is refused whole (its datagrams belong together)
      if (j == nullptr) {
        dropQueueMain_ += (double)rest;
      } else {
        j->dest = d;
        j->data.clear();
        j->lens.clear();
        for (size_t i = done; i < pkts_.size(); i++) {
          j->data.insert(j->data.end(), pkts_[i].data, pkts_[i].data + pkts_[i].len);
          j->lens.push_back((uint32_t)pkts_[i].len);
        }
        aQueued_.fetch_add(rest, std::memory_order_relaxed);
        queuedBytes_.fetch_add(restBytes, std::memory_order_relaxed);
        j->queuedNs = delay::MonotonicNs();
        ring_.Publish();
        done = pkts_.size();
      }
    }
    Sync();
    return Napi::Number::New(env, (double)(done + bad));
  }

  // The thread: one batch, waiting out EAGAIN.
  void SendJobNow(SendJob& j) {
    lastSojournNs_.store(delay::MonotonicNs() - j.queuedNs, std::memory_order_relaxed);
    std::vector<Pkt>& pk = threadPkts_;
    pk.clear();
    size_t off = 0;
    for (uint32_t l : j.lens) {
      pk.push_back({j.data.data() + off, l});
      off += l;
    }
    size_t done = 0;
    while (done < pk.size()) {
      int err;
      bool gsoFailed;
      size_t calls = 0;
      size_t k =
          SendPackets(fd_, j.dest, pk.data() + done, pk.size() - done, !gsoOff_.load(), &err, &gsoFailed, &calls);
      Count(pk.data() + done, k, calls);
      done += k;
      if (gsoFailed) {
        gsoOff_.store(true);
        continue;
      }
      if (err == 0) break;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        aEagain_.fetch_add(1, std::memory_order_relaxed);
        pollfd p = {fd_, POLLOUT, 0};
        (void)poll(&p, 1, 50);
        if (ring_.Stopping()) break;
        continue;
      }
      aErrno_.store(err, std::memory_order_relaxed);
      aDropErr_.fetch_add(1, std::memory_order_relaxed);
      done++;  // that datagram is refused; go on with the rest
    }
    if (done < pk.size()) aDropErr_.fetch_add(pk.size() - done, std::memory_order_relaxed);
    aQueued_.fetch_sub(pk.size(), std::memory_order_relaxed);
    queuedBytes_.fetch_sub(j.data.size(), std::memory_order_relaxed);
  }

  void Count(const Pkt* p, size_t n, size_t calls) {
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += p[i].len;
    aDatagrams_.fetch_add(n, std::memory_order_relaxed);
    aBytes_.fetch_add(bytes, std::memory_order_relaxed);
    aCalls_.fetch_add(calls, std::memory_order_relaxed);
  }

  void Sync() {
    ctr_[T_DATAGRAMS] = (double)aDatagrams_.load(std::memory_order_relaxed);
    ctr_[T_BYTES] = (double)aBytes_.load(std::memory_order_relaxed);
    ctr_[T_CALLS] = (double)aCalls_.load(std::memory_order_relaxed);
    ctr_[T_INLINE] = (double)aInline_.load(std::memory_order_relaxed);
    ctr_[T_EAGAIN] = (double)aEagain_.load(std::memory_order_relaxed);
    ctr_[T_DROPPED_ERROR] = (double)aDropErr_.load(std::memory_order_relaxed);
    ctr_[T_DROPPED_QUEUE] = dropQueueMain_;
    ctr_[T_QUEUED] = (double)aQueued_.load(std::memory_order_relaxed);
    int e = aErrno_.load(std::memory_order_relaxed);
    if (e != 0) ctr_[T_LAST_ERRNO] = e;
    ctr_[T_GSO_OFF] = gsoOff_.load() ? 1 : 0;
  }

  Napi::Value SyncCountersJs(const Napi::CallbackInfo& info) {
    if (ctr_ != nullptr && fd_ >= 0) Sync();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseNow();
    return info.Env().Undefined();
  }

  void CloseNow() {
    if (fd_ < 0) return;
    if (ring_.Running()) {
      ring_.Stop();
      aDropErr_.fetch_add(aQueued_.exchange(0), std::memory_order_relaxed);
    }
    if (ctr_ != nullptr) Sync();
    close(fd_);  // our dup: the socket stays open until dgram closes its own fd
    fd_ = -1;
  }

  int fd_ = -1;
  double* ctr_ = nullptr;
  Napi::ObjectReference ctrRef_;
  std::vector<Pkt> pkts_;        // event loop
  std::vector<Pkt> threadPkts_;  // the thread
  worker::Ring<SendJob> ring_;
  std::atomic<bool> gsoOff_{false};
  std::atomic<uint64_t> aDatagrams_{0}, aBytes_{0}, aCalls_{0}, aInline_{0}, aEagain_{0}, aDropErr_{0}, aQueued_{0};
  std::atomic<int> aErrno_{0};
  std::atomic<size_t> queuedBytes_{0};
  size_t queueBytesMax_ = 0;
  std::atomic<uint64_t> lastSojournNs_{0};  // how long the batch the thread sent last had waited
  double dropQueueMain_ = 0;                // datagrams dropped: the queue was full or too slow
};

}  // namespace

void InitUdp(Napi::Env env, Napi::Object exports) {
  exports.Set("udpSendBatch", Napi::Function::New(env, UdpSendBatch, "udpSendBatch"));
  Napi::Array names = Napi::Array::New(env, T_COUNT);
  for (uint32_t i = 0; i < T_COUNT; i++) names.Set(i, Napi::String::New(env, kTxCounterNames[i]));
  exports.Set("UDP_TX_COUNTER_NAMES", names);
  exports.Set("UdpSender", UdpSender::Define(env));
}
