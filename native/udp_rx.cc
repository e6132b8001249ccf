// Batched UDP receives on the daemon's dgram socket, for the mesh's inbound path.
//
// node:dgram delivers one JS event, one freshly allocated Buffer (64 KB, then shrunk) and one rinfo object per
// datagram, with one recvmsg per datagram. Here one wake-up drains the socket with recvmmsg (up to kVlen
// messages per call) and, with UDP_GRO, each message may be a run of equal-size datagrams of one flow that the
// kernel kept together (the sender's UDP GSO run crosses the stack as ONE skb): the cmsg gives the segment
// size and the run is cut here. A wake-up's datagrams are offered to the express path (native/express.cc) first,
// which carries the leading run of established flows; the rest go to JS in ONE call.
//
//   new UdpReceiver(fd, { counters: Float64Array, meta: Uint32Array, maxDatagrams, bufferBytes, slabBytes, gro,
//                         wakeHistogram?: Float64Array })
//   .start(onBatch(count, slab, sources))   .stop()   .close()   .gro (UDP_GRO is on)   .fd (our dup)
//   UDP_RX_COUNTER_NAMES: the layout of the counters array (native writes, JS reads)
//
// Ownership: each message is copied from a reused scratch area into a native staging area (compacted, 16-byte
// aligned), and when the batch is delivered the staging area's used bytes are copied once more into a fresh JS
// Buffer of exactly that size, the batch's own: datagram i is buf[meta[4i] .. meta[4i] + meta[4i+1]). JS may
// keep a view as long as it likes (the mesh hands frames on without copying); nothing writes that Buffer again.
// Why a copy per batch and not the slab itself: a long-lived slab lives in V8's old space, so only a full
// mark-compact could find its last view gone, and slabs handed out at line rate made V8 run one every ~60 ms
// (2-9 ms pauses, each a burst of drops); a batch's own Buffer dies young and a scavenge frees it. The copy is
// cheap only if its memory is: glibc serves an allocation above its mmap threshold (128 KB, then adaptive) from
// a fresh mmap, so every bulk batch cost page faults and then an munmap; the first receiver raises the
// process's thresholds (kMallocMmapThreshold, kMallocTrimThreshold) so batches reuse warm heap memory (without
// that, the copy held bulk TCP at 1.2-1.3 Gbit/s with the receiver at 89 % CPU; with it, 2.1 at 67 %, as fast as
// handing out slabs had been). meta[4i+2] is the datagram's
// source: an index into this batch's sources ([address, port, address, port, ...], each distinct source once,
// formatted as node:dgram (libuv) does; the previous batch's array again when the sources are the same, so JS
// only reads it); meta[4i+3] holds flags (1: the datagram came in a coalesced run).
//
// The socket stays dgram's: dgram binds it, sends on it and closes it. This object polls a dup() of its fd
// (libuv allows one watcher per fd, and dgram keeps its own for queued sends); the caller stops dgram's own
// receiving (handle.recvStop()) so only one reader is left. close() stops polling and closes the dup only.
//
// wakeHistogram (a debug flag, see src/trace.ts): for the first datagram of each batch the time from the
// kernel queueing it to recvmmsg returning it goes into log2 µs buckets.
//
// Errors never throw on the data path: a datagram longer than bufferBytes is cut by the kernel (MSG_TRUNC) and
// counted as truncated; other recvmmsg errors are counted (rxErrors, lastErrno) and end the wake-up.
#include <napi.h>
#include <uv.h>

#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include "express.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

namespace {

enum RxCounter : int {
  R_DATAGRAMS = 0,  // datagrams handed to JS
  R_BYTES,          // their bytes
  R_WAKEUPS,        // poll wake-ups that read something
  R_CALLS,          // recvmmsg calls that returned datagrams
  R_MESSAGES,       // messages those calls returned (a coalesced run is one message)
  R_COALESCED,      // datagrams that arrived as part of a coalesced (GRO) run
  R_TRUNCATED,      // messages cut by the kernel (longer than bufferBytes): dropped
  R_ERRORS,         // recvmmsg errors other than EAGAIN
  R_LAST_ERRNO,     // last data-path errno seen (positive), 0 if none
  R_BATCHES,        // JS calls
  R_COUNT
};
const char* const kRxCounterNames[] = {"rxDatagrams", "rxBytes",     "rxWakeups", "rxCalls",   "rxMessages",
                                       "rxCoalesced", "rxTruncated", "rxErrors",  "lastErrno", "rxBatches"};
static_assert(sizeof(kRxCounterNames) / sizeof(kRxCounterNames[0]) == R_COUNT, "one name per counter");

constexpr unsigned kVlen = 16;        // messages per recvmmsg
constexpr uint32_t kMaxGroSegs = 64;  // UDP_GRO_CNT_MAX: most datagrams the kernel puts in one run
constexpr size_t kMetaStride = 4;     // offset, length, source id, flags
constexpr size_t kMaxSources = 64;    // distinct sources in a batch before it is delivered early (cheap lookups)
constexpr size_t kSlabAlign = 16;
constexpr size_t kCachedSourcesMax = 4;         // batches with at most this many sources keep their array for the next
constexpr int kMallocMmapThreshold = 8 << 20;   // batches (at most slabBytes, 4 MB) come from the heap, not mmap
constexpr int kMallocTrimThreshold = 64 << 20;  // and the heap's top is not handed back after every batch

// Once per process, from the main thread (the daemon has one receiver; tests may open more).
void TuneMallocForBatches() {
  static bool done = false;
  if (done) return;
  done = true;
  mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
  mallopt(M_TRIM_THRESHOLD, kMallocTrimThreshold);
}

struct Source {
  sockaddr_storage ss;
  socklen_t len;
};

class UdpRx;

struct RxBox {
  uv_poll_t poll;
  UdpRx* owner = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
};

void ThrowType(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
}

class UdpRx : public Napi::ObjectWrap<UdpRx>, public express::UdpPort {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UdpReceiver",
                       {
                           InstanceMethod<&UdpRx::Start>("start"),
                           InstanceMethod<&UdpRx::Stop>("stop"),
                           InstanceMethod<&UdpRx::Close>("close"),
                           InstanceMethod<&UdpRx::SetExpress>("setExpress"),
                           InstanceAccessor<&UdpRx::GetGro>("gro"),
                           InstanceAccessor<&UdpRx::GetFd>("fd"),
                       });
  }

  explicit UdpRx(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UdpRx>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsObject()) {
      ThrowType(env, "new UdpReceiver(fd, { counters, meta, maxDatagrams, bufferBytes, slabBytes, gro })");
      return;
    }
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Value c = o.Get("counters"), m = o.Get("meta");
    if (!c.IsTypedArray() || c.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        c.As<Napi::Float64Array>().ElementLength() < R_COUNT) {
      ThrowType(env, "counters must be a Float64Array of UDP_RX_COUNTER_NAMES.length elements");
      return;
    }
    Napi::Value md = o.Get("maxDatagrams"), bb = o.Get("bufferBytes"), sb = o.Get("slabBytes");
    if (!md.IsNumber() || !bb.IsNumber() || !sb.IsNumber()) {
      ThrowType(env, "maxDatagrams, bufferBytes and slabBytes must be numbers");
      return;
    }
    maxDatagrams_ = md.As<Napi::Number>().Uint32Value();
    bufferBytes_ = bb.As<Napi::Number>().Uint32Value();
    slabBytes_ = sb.As<Napi::Number>().Uint32Value();
    if (maxDatagrams_ < kMaxGroSegs || bufferBytes_ < 64 || bufferBytes_ > 65536 ||
        slabBytes_ < (size_t)kVlen * bufferBytes_) {
      ThrowType(env, "maxDatagrams >= 64, bufferBytes in 64..65536, slabBytes >= 16 * bufferBytes");
      return;
    }
    if (!m.IsTypedArray() || m.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
        m.As<Napi::Uint32Array>().ElementLength() < maxDatagrams_ * kMetaStride) {
      ThrowType(env, "meta must be a Uint32Array of 4 * maxDatagrams elements");
      return;
    }
    ctr_ = c.As<Napi::Float64Array>().Data();
    ctrRef_ = Napi::Persistent(c.As<Napi::Object>());
    meta_ = m.As<Napi::Uint32Array>().Data();
    metaRef_ = Napi::Persistent(m.As<Napi::Object>());
    bool wantGro = o.Get("gro").ToBoolean().Value();
    Napi::Value wh = o.Get("wakeHistogram");
    if (wh.IsTypedArray() && wh.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
      hist_ = wh.As<Napi::Float64Array>().Data();
      histLen_ = wh.As<Napi::Float64Array>().ElementLength();
      histRef_ = Napi::Persistent(wh.As<Napi::Object>());
    }

    int fd = info[0].As<Napi::Number>().Int32Value();
    fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (fd_ < 0) {
      Napi::Error::New(env, std::string("dup of the UDP socket failed: ") + strerror(errno))
          .ThrowAsJavaScriptException();
      return;
    }
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
    if (wantGro) {
      int on = 1;
      gro_ = setsockopt(fd_, SOL_UDP, UDP_GRO, &on, sizeof on) == 0;
    }
    if (hist_ != nullptr) {
      int on = 1;
      if (setsockopt(fd_, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0) hist_ = nullptr;
    }
    scratch_.resize((size_t)kVlen * bufferBytes_);
    stage_.resize(slabBytes_);
    TuneMallocForBatches();

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      CloseNow(false);
      ThrowType(env, "no libuv loop");
      return;
    }
    box_ = new RxBox();
    int rc = uv_poll_init(loop, &box_->poll, fd_);
    if (rc != 0) {
      delete box_;
      box_ = nullptr;
      CloseNow(false);
      Napi::Error::New(env, std::string("polling the UDP socket failed: ") + uv_strerror(rc))
          .ThrowAsJavaScriptException();
      return;
    }
    box_->owner = this;
    box_->poll.data = box_;
    napi_add_async_cleanup_hook(env, OnEnvTeardown, box_, &box_->hook);
  }

  ~UdpRx() override { CloseNow(false); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) {
      ThrowType(env, "the receiver is closed");
      return env.Undefined();
    }
    if (info.Length() < 1 || !info[0].IsFunction()) {
      ThrowType(env, "start(onBatch)");
      return env.Undefined();
    }
    onBatch_ = Napi::Persistent(info[0].As<Napi::Function>());
    if (asyncCtx_ == nullptr) {
      napi_value name = Napi::String::New(env, "HomewireUdpReceive");
      napi_async_init(env, nullptr, name, &asyncCtx_);
    }
    if (!reading_) {
      reading_ = true;
      int rc = uv_poll_start(&box_->poll, UV_READABLE, OnPoll);
      if (rc != 0) {
        reading_ = false;
        ctr_[R_LAST_ERRNO] = -rc;
      }
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (!closed_ && reading_) {
      reading_ = false;
      uv_poll_stop(&box_->poll);
    }
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseNow(true);
    return info.Env().Undefined();
  }

  // setExpress(express | null): a lone datagram is offered to the express path (native/express.cc) first, and
  // express sends on this receiver's dup of the socket.
  Napi::Value SetExpress(const Napi::CallbackInfo& info) {
    if (express_ != nullptr) express::DetachUdp(express_, this);
    express_ = closed_ ? nullptr : express::EngineArg(info.Env(), info[0]);
    if (express_ != nullptr) express::AttachUdp(express_, this, fd_);
    return info.Env().Undefined();
  }

  void ExpressGone() override { express_ = nullptr; }

  Napi::Value GetGro(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), gro_); }
  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    RxBox* box = static_cast<RxBox*>(handle->data);
    UdpRx* rx = box->owner;
    if (rx == nullptr || !rx->reading_) return;
    if (status < 0) {
      rx->ctr_[R_ERRORS]++;
      rx->ctr_[R_LAST_ERRNO] = -status;
      return;
    }
    if (events & UV_READABLE) rx->ReadBatch();
  }

  // The index of a source address in this batch's list (added if it is new to the batch).
  uint32_t SourceId(const sockaddr_storage& ss, socklen_t len) {
    size_t k = batchSources_.size();
    if (lastSource_ < k && SameAddr(batchSources_[lastSource_], ss, len)) return (uint32_t)lastSource_;
    for (size_t i = 0; i < k; i++) {
      if (SameAddr(batchSources_[i], ss, len)) {
        lastSource_ = i;
        return (uint32_t)i;
      }
    }
    batchSources_.push_back({});
    std::memcpy(&batchSources_[k].ss, &ss, len);
    batchSources_[k].len = len;
    lastSource_ = k;
    return (uint32_t)k;
  }

  static bool SameAddr(const Source& s, const sockaddr_storage& ss, socklen_t len) {
    if (s.len != len || s.ss.ss_family != ss.ss_family) return false;
    if (ss.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&s.ss);
      const auto* b = reinterpret_cast<const sockaddr_in*>(&ss);
      return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    if (ss.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&s.ss);
      const auto* b = reinterpret_cast<const sockaddr_in6*>(&ss);
      return a->sin6_port == b->sin6_port && a->sin6_scope_id == b->sin6_scope_id &&
             std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
    }
    return std::memcmp(&s.ss, &ss, len) == 0;
  }

  void ReadBatch() {
    napi_env env = Env();
    Napi::HandleScope scope(env);
    ctr_[R_WAKEUPS]++;
    uint32_t n = 0;  // datagrams in meta_
    mmsghdr msgs[kVlen];
    iovec iov[kVlen];
    sockaddr_storage addrs[kVlen];
    alignas(cmsghdr) char control[kVlen][CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(timespec))];
    for (;;) {
      if (closed_ || !reading_) return;
      // Room for the whole next call: meta entries (a message may hold kMaxGroSegs datagrams) and slab bytes.
      uint32_t perMsg = gro_ ? kMaxGroSegs : 1;
      unsigned vlen = (maxDatagrams_ - n) / perMsg;
      if (vlen > kVlen) vlen = kVlen;
      if (vlen == 0) break;  // the batch is full: deliver it; the poll fires again for the rest
      if (stageOff_ + (size_t)vlen * bufferBytes_ > slabBytes_) {  // the staging area is full: deliver first
        Deliver(n);
        n = 0;
        if (closed_ || !reading_) return;
        continue;
      }
      for (unsigned i = 0; i < vlen; i++) {
        iov[i] = {scratch_.data() + (size_t)i * bufferBytes_, bufferBytes_};
        std::memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control[i];
        msgs[i].msg_hdr.msg_controllen = sizeof control[i];
        msgs[i].msg_len = 0;
      }
      int r;
      do r = recvmmsg(fd_, msgs, vlen, MSG_DONTWAIT, nullptr);
      while (r < 0 && errno == EINTR);
      if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          ctr_[R_ERRORS]++;
          ctr_[R_LAST_ERRNO] = errno;
        }
        break;
      }
      if (r == 0) break;
      ctr_[R_CALLS]++;
      ctr_[R_MESSAGES] += r;
      if (hist_ != nullptr && n == 0) RecordWake(msgs[0]);
      for (int i = 0; i < r; i++) n = Take(msgs[i], addrs[i], iov[i], n);
      if ((unsigned)r < vlen) break;              // drained
      if (batchSources_.size() >= kMaxSources) {  // many senders (a flood of spoofed sources): keep lookups short
        Deliver(n);
        n = 0;
      }
    }
    if (n > 0) Deliver(n);
  }

  // Copies one received message into the slab and records its datagrams (a coalesced run is cut at the
  // segment size). Returns the new datagram count.
  uint32_t Take(const mmsghdr& m, const sockaddr_storage& addr, const iovec& iov, uint32_t n) {
    size_t len = m.msg_len;
    if (m.msg_hdr.msg_flags & MSG_TRUNC) {
      ctr_[R_TRUNCATED]++;
      return n;
    }
    size_t seg = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m.msg_hdr); c != nullptr; c = CMSG_NXTHDR(const_cast<msghdr*>(&m.msg_hdr), c)) {
      if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
        int v;
        std::memcpy(&v, CMSG_DATA(c), sizeof v);
        if (v > 0) seg = (size_t)v;
      }
    }
    if (seg == 0 || seg >= len) seg = len;
    uint32_t src = SourceId(addr, m.msg_hdr.msg_namelen);
    uint32_t base = (uint32_t)stageOff_;
    std::memcpy(stage_.data() + stageOff_, iov.iov_base, len);
    stageOff_ = (stageOff_ + len + kSlabAlign - 1) & ~(kSlabAlign - 1);
    uint32_t segs = 0;
    size_t off = 0;
    do {
      size_t l = len - off < seg ? len - off : seg;
      uint32_t* e = meta_ + (size_t)n * kMetaStride;
      e[0] = base + (uint32_t)off;
      e[1] = (uint32_t)l;
      e[2] = src;
      e[3] = seg < len ? 1u : 0u;
      n++;
      segs++;
      off += l;
    } while (off < len && segs < kMaxGroSegs);
    ctr_[R_DATAGRAMS] += segs;
    ctr_[R_BYTES] += (double)off;
    if (seg < len) ctr_[R_COALESCED] += segs;
    return n;
  }

  // Debug: kernel queueing → now, for the first message of a batch (SCM_TIMESTAMPNS, CLOCK_REALTIME).
  void RecordWake(const mmsghdr& m) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&m.msg_hdr); c != nullptr; c = CMSG_NXTHDR(const_cast<msghdr*>(&m.msg_hdr), c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_TIMESTAMPNS) continue;
      timespec ts, now;
      std::memcpy(&ts, CMSG_DATA(c), sizeof ts);
      clock_gettime(CLOCK_REALTIME, &now);
      double us = (double)(now.tv_sec - ts.tv_sec) * 1e6 + (double)(now.tv_nsec - ts.tv_nsec) / 1e3;
      size_t b = us < 1 ? 0 : (size_t)std::floor(std::log2(us)) + 1;
      hist_[b < histLen_ ? b : histLen_ - 1]++;
      return;
    }
  }

  // The batch's sources as JS [address, port, ...]. A peer's datagrams keep coming from one address, so the
  // array of the previous batch is handed out again when the sources are the same (JS only reads it): no
  // address formatting, strings or array per wake-up, which the profile of an idle round trip showed.
  napi_value SourcesArray(napi_env env) {
    bool same = !prevSourcesRef_.IsEmpty() && prevSources_.size() == batchSources_.size();
    for (size_t i = 0; same && i < batchSources_.size(); i++)
      same = SameAddr(prevSources_[i], batchSources_[i].ss, batchSources_[i].len);
    if (same) return prevSourcesRef_.Value();
    napi_value arr;
    napi_create_array_with_length(env, batchSources_.size() * 2, &arr);
    for (size_t i = 0; i < batchSources_.size(); i++) {
      const sockaddr_storage& ss = batchSources_[i].ss;
      char text[INET6_ADDRSTRLEN] = "";
      uint32_t port = 0;
      if (ss.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        uv_ip4_name(a, text, sizeof text);
        port = ntohs(a->sin_port);
      } else if (ss.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        uv_ip6_name(a, text, sizeof text);
        port = ntohs(a->sin6_port);
      }
      napi_value v;
      napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, &v);
      napi_set_element(env, arr, (uint32_t)(2 * i), v);
      napi_create_uint32(env, port, &v);
      napi_set_element(env, arr, (uint32_t)(2 * i + 1), v);
    }
    if (batchSources_.size() <= kCachedSourcesMax) {
      prevSources_ = batchSources_;
      prevSourcesRef_.Reset();
      prevSourcesRef_ = Napi::Persistent(Napi::Object(env, arr));
    }
    return arr;
  }

  // The express path (native/express.cc) takes a leading run of the batch's n datagrams: how many.
  uint32_t Express(uint32_t n) {
    if (express_ == nullptr) return 0;
    offer_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      const uint32_t* e = meta_ + (size_t)i * kMetaStride;
      const Source& src = batchSources_[e[2]];
      offer_[i] = {stage_.data() + e[0], e[1], &src.ss, src.len};
    }
    return express::FromUdp(express_, offer_.data(), n);
  }

  // The batch's datagrams (the staging area's used bytes, copied into a Buffer of their own) to JS.
  void Deliver(uint32_t n) {
    napi_env env = Env();
    Napi::HandleScope scope(env);
    napi_value args[3];
    size_t used = stageOff_;
    stageOff_ = 0;
    uint32_t base = 0;  // where JS's part of the staging area starts
    uint32_t carried = n > 0 ? Express(n) : 0;
    if (carried > 0) {  // the rest (if any) moves to the front of meta, its offsets from where its bytes start
      n -= carried;
      base = n > 0 ? meta_[(size_t)carried * kMetaStride] : (uint32_t)used;
      for (uint32_t i = 0; i < n; i++) {
        uint32_t* to = meta_ + (size_t)i * kMetaStride;
        const uint32_t* from = meta_ + (size_t)(i + carried) * kMetaStride;
        to[0] = from[0] - base, to[1] = from[1], to[2] = from[2], to[3] = from[3];
      }
    }
    if (n == 0 || closed_) {  // all carried (or the receiver was closed from inside the express path's TAP read)
      batchSources_.clear();
      lastSource_ = 0;
      return;
    }
    void* copy;
    if (napi_create_buffer_copy(env, used - base, stage_.data() + base, &copy, &args[1]) != napi_ok) {
      ctr_[R_ERRORS]++;
      ctr_[R_LAST_ERRNO] = ENOMEM;
      batchSources_.clear();
      lastSource_ = 0;
      return;
    }
    napi_create_uint32(env, n, &args[0]);
    args[2] = SourcesArray(env);
    batchSources_.clear();
    lastSource_ = 0;
    ctr_[R_BATCHES]++;
    napi_value fn = onBatch_.Value(), recv = Value(), result;
    inCallback_ = true;
    napi_status st = napi_make_callback(env, asyncCtx_, recv, fn, 3, args, &result);
    inCallback_ = false;
    if (ctxToDestroy_ != nullptr) {
      napi_async_destroy(env, ctxToDestroy_);
      ctxToDestroy_ = nullptr;
    }
    if (st == napi_pending_exception) {
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
    }
  }

  void CloseNow(bool fromJs) {
    if (closed_) return;
    closed_ = true;
    if (express_ != nullptr) express::DetachUdp(express_, this);
    express_ = nullptr;
    reading_ = false;
    if (box_ != nullptr) {
      uv_poll_stop(&box_->poll);
      box_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&box_->poll), OnPollClosed);
      box_ = nullptr;
    }
    if (fd_ >= 0) {
      close(fd_);  // our dup only: the socket stays open until dgram closes its fd
      fd_ = -1;
    }
    onBatch_.Reset();
    prevSourcesRef_.Reset();
    if (asyncCtx_ != nullptr && fromJs) {
      if (inCallback_)
        ctxToDestroy_ = asyncCtx_;
      else
        napi_async_destroy(Env(), asyncCtx_);
    }
    asyncCtx_ = nullptr;
  }

  static void OnPollClosed(uv_handle_t* handle) {
    RxBox* box = static_cast<RxBox*>(handle->data);
    if (box->hook != nullptr) napi_remove_async_cleanup_hook(box->hook);
    delete box;
  }

  static void OnEnvTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
    RxBox* box = static_cast<RxBox*>(arg);
    if (box->owner != nullptr) box->owner->CloseNow(false);
  }

  int fd_ = -1;
  express::Engine* express_ = nullptr;
  bool gro_ = false;
  bool closed_ = false;
  bool reading_ = false;
  RxBox* box_ = nullptr;
  uint32_t maxDatagrams_ = 0;
  uint32_t bufferBytes_ = 0;
  size_t slabBytes_ = 0;
  std::vector<uint8_t> scratch_;  // recvmmsg's buffers, one of bufferBytes_ per message
  std::vector<uint8_t> stage_;    // the batch being read, compacted; copied to JS at delivery
  size_t stageOff_ = 0;
  double* ctr_ = nullptr;
  Napi::ObjectReference ctrRef_;
  uint32_t* meta_ = nullptr;
  Napi::ObjectReference metaRef_;
  double* hist_ = nullptr;  // debug: wake-up latency buckets, or null
  size_t histLen_ = 0;
  Napi::ObjectReference histRef_;
  std::vector<Source> batchSources_;      // distinct source addresses of the batch being read
  std::vector<express::Datagram> offer_;  // the batch as offered to the express path
  std::vector<Source> prevSources_;       // those of the array in prevSourcesRef_ (handed out again if equal)
  Napi::ObjectReference prevSourcesRef_;
  size_t lastSource_ = 0;
  Napi::FunctionReference onBatch_;
  napi_async_context asyncCtx_ = nullptr;
  napi_async_context ctxToDestroy_ = nullptr;
  bool inCallback_ = false;
};

}  // namespace

void InitUdpRx(Napi::Env env, Napi::Object exports) {
  Napi::Array names = Napi::Array::New(env, R_COUNT);
  for (uint32_t i = 0; i < R_COUNT; i++) names.Set(i, Napi::String::New(env, kRxCounterNames[i]));
  exports.Set("UDP_RX_COUNTER_NAMES", names);
  exports.Set("UdpReceiver", UdpRx::Define(env));
}
