// The express path: packets of established unicast flows cross the daemon without entering JavaScript.
//
// At rest a ping costs the daemon far more in JavaScript's fixed costs (a call into JS, cold inline caches,
// N-API unwrapping) than in work; measured with bench/floor, a C path inside Node's own event loop answers
// as fast as tinc. Under load the same holds per packet: JavaScript's share (a Buffer per receive batch, a call
// per packet, the switch's and the mesh's lookups) is what kept the daemon behind tinc on small datagrams. So
// every TAP wake-up's frames and every UDP wake-up's datagrams are offered here first, in order; the leading
// run this path can vouch for is carried, and JavaScript gets the rest unchanged (nothing overtakes anything):
//
//   TAP -> mesh:  an untagged unicast frame of a plain kind (below) whose source MAC JavaScript placed on the
//                 local side and whose destination MAC it placed behind peer P, with P's sending session
//                 installed: sealed under that session's key and counter, sent to P's endpoint (a wake-up's
//                 datagrams to one peer leave together, runs of equal size as one UDP GSO send).
//   mesh -> TAP:  a data message (type 4, no relay) under an installed receiving session, from exactly the
//                 endpoint installed with it, fresh by its replay window and authentic; its frame of a plain
//                 kind, its source MAC placed behind that session's peer, its destination MAC on the local side:
//                 written to the TAP (a wake-up's frames as one batch: sparse flows first, coalesced).
//
// Everything else, and anything that fails any check, goes to JavaScript unchanged with everything after it in
// its wake-up (a datagram is decrypted into an arena of its own here, so JavaScript sees the original and counts
// what it refuses), except a datagram under an installed session that is not authentic: JavaScript would only
// count and drop it, so that is done here (one decryption per forgery, not two; JavaScript adds the count to the
// mesh's auth_failed drops). JavaScript installs an entry only after its own path carried a frame of that flow
// (switch.ts, mesh.ts: src/express.ts), each for at most EXPRESS_LEASE_MS, and flushes the whole table on any
// change of a MAC's port, a session, an endpoint or a peer: an entry is never older than JavaScript's last look,
// so nothing passes here that JavaScript would have stopped (the security model's checks on plain frames are all
// about which port a MAC is on). A lapsed lease hands the flow's next wake-up to JavaScript, which installs again.
//
// Plain kinds (JavaScript's inspection passes them without a look: classify() says K_OTHER): IPv4 that is not
// fragmented and not UDP to or from port 67/68; IPv6 TCP, UDP not to or from 546/547, ICMPv6 echo request and
// reply. DHCP, ARP, neighbour discovery, VLAN tags, fragments, extension headers: JavaScript.
//
// Counters and replay window are shared with JavaScript (the Keypair's Float64Array state: [0] the next send
// counter, [1] the highest counter received; its Uint32Array ring): one thread, no locks. Per-peer and per-MAC
// statistics accumulate here and JavaScript collects them every tick (collect()).
//
//   new Express({ counters: Float64Array, maxFrameBytes, readAfterWrite })
//   .mac(mac, port /* -1: local side, else a peer id */, untilMs)
//   .send(peerId, aeadKey, state, remoteIndex, address, port, untilMs) -> bool
//   .recv(localIndex, peerId, aeadKey, state, ring, address, port, untilMs) -> bool
//   .flush()   .collect(out: Float64Array) -> records (8 numbers each)   .size -> entries installed
//   EXPRESS_COUNTER_NAMES; test hook expressReplay(state, ring, low) -> the counter accepted, or -1
#include <napi.h>
#include <uv.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include <time.h>

#include "aead.h"
#include "express.h"
#include "tagged.h"
#include "udp_send.h"

namespace express {

namespace {

constexpr size_t kHeader = 12;
constexpr size_t kTag = 16;
constexpr uint8_t kMsgData = 4;
constexpr int64_t kMaxCounter = 9007199254740991LL;  // Number.MAX_SAFE_INTEGER (mesh/wire.ts MAX_COUNTER)
constexpr int64_t kWireSpan = 0x100000000LL;
constexpr int64_t kHalfSpan = 0x80000000LL;
constexpr int64_t kWordBits = 32;                            // constants.ts REPLAY_WORD_BITS
constexpr int64_t kWords = 256;                              // REPLAY_WINDOW_BITS / REPLAY_WORD_BITS
constexpr int64_t kWindow = kWords * kWordBits - kWordBits;  // mesh/replay.ts REPLAY_WINDOW_SIZE
constexpr size_t kEthHeader = 14;
constexpr size_t kBufBytes = 65536 + kHeader + kTag;
constexpr int32_t kLocal = -1;
constexpr size_t kRecord = 8;
constexpr size_t kAlign = 16;  // frames in the receive arena start 16-byte aligned

enum Counter : int {
  X_TX_FRAMES = 0,  // frames carried TAP -> mesh
  X_TX_BYTES,
  X_RX_FRAMES,  // frames carried mesh -> TAP
  X_RX_BYTES,
  X_TX_TO_JS,        // lone frames offered and handed to JavaScript
  X_RX_TO_JS,        // datagrams offered and handed to JavaScript
  X_TX_ERRORS,       // sends the kernel refused (the frame went to JavaScript)
  X_LAST_ERRNO,      // of the last of those
  X_RX_AUTH_FAILED,  // under an installed session but not authentic: dropped here (JavaScript would drop it too)
  X_COUNT
};
const char* const kCounterNames[] = {"txFrames", "txBytes",  "rxFrames",  "rxBytes",     "txToJs",
                                     "rxToJs",   "txErrors", "lastErrno", "rxAuthFailed"};
static_assert(sizeof(kCounterNames) / sizeof(kCounterNames[0]) == X_COUNT, "one name per counter");

const napi_type_tag kTypeTag = {0x6877'6578'7072'6573ULL, 0x7331'0000'0000'0001ULL};

double NowMs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)(ts.tv_nsec / 1000000);
}

uint64_t Mac(const uint8_t* p) {
  return ((uint64_t)p[0] << 40) | ((uint64_t)p[1] << 32) | ((uint64_t)p[2] << 24) | ((uint64_t)p[3] << 16) |
         ((uint64_t)p[4] << 8) | (uint64_t)p[5];
}

uint32_t Le32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

uint16_t Be16(const uint8_t* p) {
  return (uint16_t)((p[0] << 8) | p[1]);
}

bool PortIs(uint16_t p, uint16_t a, uint16_t b) {
  return p == a || p == b;
}

// A frame JavaScript's inspection would pass without a look (frames.ts classify() == K_OTHER), judged
// conservatively: anything unusual is not plain.
bool Plain(const uint8_t* f, size_t len) {
  uint16_t type = Be16(f + 12);
  if (type == 0x0800) {
    if (len < kEthHeader + 20) return false;
    const uint8_t* ip = f + kEthHeader;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || kEthHeader + ihl > len) return false;
    if ((ip[6] & 0x3f) != 0 || ip[7] != 0) return false;  // a fragment (more fragments, or an offset)
    if (ip[9] != 17) return true;
    if (len < kEthHeader + ihl + 8) return false;
    const uint8_t* udp = ip + ihl;
    return !PortIs(Be16(udp), 67, 68) && !PortIs(Be16(udp + 2), 67, 68);
  }
  if (type == 0x86dd) {
    if (len < kEthHeader + 40 + 8) return false;
    const uint8_t* ip = f + kEthHeader;
    if ((ip[0] >> 4) != 6) return false;
    const uint8_t* l4 = ip + 40;
    switch (ip[6]) {
      case 6:
        return true;
      case 17:
        return !PortIs(Be16(l4), 546, 547) && !PortIs(Be16(l4 + 2), 546, 547);
      case 58:
        return l4[0] == 128 || l4[0] == 129;
      default:
        return false;
    }
  }
  return false;
}

// ---- the replay window, as mesh/replay.ts and mesh/wire.ts fullCounter (the same bits, shared) ---------

int64_t FullCounter(uint32_t low, int64_t highest) {
  int64_t expected = highest + 1;
  int64_t candidate = expected - (expected % kWireSpan) + (int64_t)low;
  if (candidate + kHalfSpan <= expected)
    candidate += kWireSpan;
  else if (candidate > expected + kHalfSpan && candidate >= kWireSpan)
    candidate -= kWireSpan;
  return candidate;
}

int64_t FloorWord(int64_t c) {
  return c < 0 ? -1 : c / kWordBits;
}

bool WouldAccept(const double* state, const uint32_t* ring, int64_t c) {
  int64_t top = (int64_t)state[1];
  if (c > top) return true;
  if (top - c >= kWindow) return false;
  return (ring[(c / kWordBits) % kWords] & (1u << (c % kWordBits))) == 0;
}

bool Accept(double* state, uint32_t* ring, int64_t c) {
  int64_t top = (int64_t)state[1];
  int64_t index = c / kWordBits;
  if (c > top) {
    int64_t current = FloorWord(top);
    int64_t diff = index - current;
    if (diff > kWords) diff = kWords;
    for (int64_t i = 1; i <= diff; i++) ring[(current + i) % kWords] = 0;
    state[1] = (double)c;
  } else if (top - c >= kWindow) {
    return false;
  }
  uint32_t bit = 1u << (c % kWordBits);
  uint32_t& word = ring[index % kWords];
  if (word & bit) return false;
  word |= bit;
  return true;
}

// ---- addresses --------------------------------------------------------------------------------------

using Addr = udpsend::Dest;

bool ParseAddr(const std::string& text, uint32_t port, Addr* a) {
  std::memset(&a->ss, 0, sizeof a->ss);
  if (text.find(':') != std::string::npos) {
    if (uv_ip6_addr(text.c_str(), (int)port, reinterpret_cast<sockaddr_in6*>(&a->ss)) != 0) return false;
    a->len = sizeof(sockaddr_in6);
  } else {
    if (uv_ip4_addr(text.c_str(), (int)port, reinterpret_cast<sockaddr_in*>(&a->ss)) != 0) return false;
    a->len = sizeof(sockaddr_in);
  }
  return true;
}

bool SameAddr(const Addr& a, const sockaddr_storage& ss, socklen_t len) {
  if (a.ss.ss_family != ss.ss_family) return false;
  if (ss.ss_family == AF_INET) {
    const auto* x = reinterpret_cast<const sockaddr_in*>(&a.ss);
    const auto* y = reinterpret_cast<const sockaddr_in*>(&ss);
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* x = reinterpret_cast<const sockaddr_in6*>(&a.ss);
    const auto* y = reinterpret_cast<const sockaddr_in6*>(&ss);
    return x->sin6_port == y->sin6_port && std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  return false;
}

// ---- the table ----------------------------------------------------------------------------------------

struct MacEnt {
  int32_t port;
  double until;
};

struct Session {
  aead::Key* key = nullptr;
  Napi::ObjectReference keyRef;
  double* state = nullptr;
  Napi::ObjectReference stateRef;
  uint32_t* ring = nullptr;  // receiving only
  Napi::ObjectReference ringRef;
  uint32_t index = 0;  // sending: the peer's receiver index
  uint32_t peer = 0;   // whose session
  Addr addr;           // sending: where to; receiving: where from
  double until = 0;
};

struct PeerStat {
  double rxPackets = 0, rxBytes = 0, txPackets = 0, txBytes = 0, lastRecv = 0, lastSent = 0;
};

struct MacStat {
  double toMesh = 0, toTap = 0, seen = 0;
};

class Express : public Napi::ObjectWrap<Express> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Express",
                       {
                           InstanceMethod<&Express::SetMac>("mac"),
                           InstanceMethod<&Express::SetSend>("send"),
                           InstanceMethod<&Express::SetRecv>("recv"),
                           InstanceMethod<&Express::Flush>("flush"),
                           InstanceMethod<&Express::Collect>("collect"),
                           InstanceAccessor<&Express::GetSize>("size"),
                       });
  }

  explicit Express(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Express>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
      Napi::TypeError::New(env, "new Express({ counters, maxFrameBytes, readAfterWrite })")
          .ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Value c = o.Get("counters"), m = o.Get("maxFrameBytes");
    if (!c.IsTypedArray() || c.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        c.As<Napi::Float64Array>().ElementLength() < X_COUNT || !m.IsNumber()) {
      Napi::TypeError::New(env,
                           "counters must be a Float64Array of EXPRESS_COUNTER_NAMES.length; maxFrameBytes a number")
          .ThrowAsJavaScriptException();
      return;
    }
    ctr_ = c.As<Napi::Float64Array>().Data();
    ctrRef_ = Napi::Persistent(c.As<Napi::Object>());
    maxFrame_ = m.As<Napi::Number>().Uint32Value();
    readAfterWrite_ = o.Get("readAfterWrite").ToBoolean().Value();
    napi_type_tag_object(env, info.This(), &kTypeTag);
  }

  ~Express() override {
    if (tap_ != nullptr) tap_->ExpressGone();
    if (udp_ != nullptr) udp_->ExpressGone();
  }

  // ---- the data path --------------------------------------------------------------------------------

  uint32_t FromTap(const uint8_t* slab, size_t stride, const uint32_t* lens, uint32_t n) {
    uint32_t k = 0;
    if (udpFd_ >= 0) {
      size_t need = 0;
      for (uint32_t i = 0; i < n; i++) need += lens[i] + kHeader + kTag + kAlign;
      if (txBuf_.size() < need) txBuf_.resize(need);
      double now = NowMs();
      txPkts_.clear();
      txSent_.clear();
      size_t off = 0;
      for (; k < n; k++) {  // sealed in order; they leave below, in order
        const uint8_t* f = slab + (size_t)k * stride;
        size_t len = lens[k];
        uint64_t src = 0;
        Session* s = Sending(f, len, now, &src);
        if (s == nullptr) break;
        int64_t counter = (int64_t)s->state[0];
        if (counter >= kMaxCounter) break;
        uint8_t* out = txBuf_.data() + off;
        out[0] = kMsgData;
        out[1] = out[2] = out[3] = 0;
        PutLe32(out + 4, s->index);
        PutLe32(out + 8, (uint32_t)(counter % kWireSpan));
        if (!aead::Seal(s->key, out, f, len, (uint32_t)(counter / kWireSpan))) break;
        s->state[0] = (double)(counter + 1);
        txPkts_.push_back({out, kHeader + len + kTag});
        txSent_.push_back({s, src});
        off = (off + kHeader + len + kTag + kAlign - 1) & ~(kAlign - 1);
      }
      k = Send(now);
    }
    ctr_[X_TX_TO_JS] += n - k;
    return k;
  }

  uint32_t FromUdp(const Datagram* d, uint32_t n) {
    uint32_t k = 0;
    if (tap_ != nullptr) {
      size_t need = 0;
      for (uint32_t i = 0; i < n; i++) need += d[i].len + kAlign;
      if (rxBuf_.size() < need) rxBuf_.resize(need);
      double now = NowMs();
      rxFrames_.clear();
      size_t off = 0;
      for (; k < n; k++) {
        size_t flen = 0;
        if (!Open(d[k], now, rxBuf_.data() + off, &flen)) break;
        if (flen == 0) continue;  // a forgery, dropped
        rxFrames_.push_back({rxBuf_.data() + off, flen});
        off = (off + flen + kAlign - 1) & ~(kAlign - 1);
      }
      if (!rxFrames_.empty()) {
        TapPort* tap = tap_;
        tap->ExpressWrite(rxFrames_.data(), (uint32_t)rxFrames_.size(), readAfterWrite_);
        if (readAfterWrite_ && tap_ == tap) tap->ExpressReadNow();
      }
    }
    ctr_[X_RX_TO_JS] += n - k;
    return k;
  }

  void Attach(TapPort* t) {
    if (tap_ != nullptr && tap_ != t) tap_->ExpressGone();
    tap_ = t;
  }
  void Detach(TapPort* t) {
    if (tap_ == t) tap_ = nullptr;
  }
  void Attach(UdpPort* u, int fd) {
    if (udp_ != nullptr && udp_ != u) udp_->ExpressGone();
    udp_ = u;
    udpFd_ = fd;
  }
  void Detach(UdpPort* u) {
    if (udp_ != u) return;
    udp_ = nullptr;
    udpFd_ = -1;
  }

 private:
  // The sending session for a frame from the TAP, or null if the express path may not carry it: an untagged
  // unicast frame of a plain kind from a MAC on the local side to a MAC behind a peer with a sending session.
  Session* Sending(const uint8_t* f, size_t len, double now, uint64_t* src) {
    if (len < kEthHeader || len > maxFrame_ || (f[0] & 1) != 0 || (f[6] & 1) != 0 || !Plain(f, len)) return nullptr;
    *src = Mac(f + 6);
    auto si = macs_.find(*src);
    auto di = macs_.find(Mac(f));
    if (si == macs_.end() || si->second.port != kLocal || si->second.until <= now || di == macs_.end() ||
        di->second.port < 0 || di->second.until <= now)
      return nullptr;
    auto pi = sends_.find((uint32_t)di->second.port);
    return pi != sends_.end() && pi->second.until > now ? &pi->second : nullptr;
  }

  // Sends the sealed datagrams (txPkts_), each run to one peer as one batch (UDP GSO where sizes allow), in
  // order, and returns how many leading ones went out. The first refusal stops it: the frames of that datagram
  // and after go to JavaScript, which seals them again under the next counters (the receiver's window does not
  // mind the gap) and queues what the kernel cannot take yet.
  uint32_t Send(double now) {
    size_t n = txPkts_.size(), i = 0;
    while (i < n) {
      Session* s = txSent_[i].s;
      size_t j = i + 1;
      while (j < n && txSent_[j].s == s) j++;
      int err = 0;
      bool gsoFailed = false;
      size_t calls = 0;
      size_t sent =
          udpsend::SendPackets(udpFd_, s->addr, txPkts_.data() + i, j - i, !gsoOff_, &err, &gsoFailed, &calls);
      if (gsoFailed) gsoOff_ = true;  // this kernel refuses UDP GSO: single datagrams from now on
      for (size_t q = i; q < i + sent; q++) {
        const Sent& x = txSent_[q];
        double len = (double)(txPkts_[q].len - kHeader - kTag);  // the frame's
        ctr_[X_TX_FRAMES]++;
        ctr_[X_TX_BYTES] += len;
        PeerStat& ps = peerStats_[x.s->peer];
        ps.txPackets++;
        ps.txBytes += len;
        ps.lastSent = now;
        MacStat& ms = macStats_[x.src];
        ms.toMesh += len;
        ms.seen = now;
      }
      if (sent < j - i) {
        ctr_[X_TX_ERRORS]++;
        ctr_[X_LAST_ERRNO] = err;
        return (uint32_t)(i + sent);
      }
      i = j;
    }
    return (uint32_t)n;
  }

  // One datagram of a wake-up: true with its frame in out[0 .. *flen) when it is carried, true with *flen == 0
  // when it was a forgery under an installed session (dropped and counted here: one decryption, not two),
  // false when it is JavaScript's (nothing changed).
  bool Open(const Datagram& g, double now, uint8_t* out, size_t* flen) {
    const uint8_t* msg = g.data;
    size_t len = g.len;
    if (len < kHeader + kTag + kEthHeader || len > kBufBytes || msg[0] != kMsgData || (msg[1] | msg[2] | msg[3]) != 0)
      return false;
    auto ri = recvs_.find(Le32(msg + 4));
    if (ri == recvs_.end() || ri->second.until <= now || !SameAddr(ri->second.addr, *g.src, g.srcLen)) return false;
    Session& s = ri->second;
    int64_t counter = FullCounter(Le32(msg + 8), (int64_t)s.state[1]);
    if (counter > kMaxCounter || !WouldAccept(s.state, s.ring, counter)) return false;
    size_t n = len - kHeader - kTag;
    if (!aead::Open(s.key, msg, len, out, (uint32_t)(counter / kWireSpan))) {
      ctr_[X_RX_AUTH_FAILED]++;
      *flen = 0;
      return true;
    }
    if (n > maxFrame_ || (out[0] & 1) != 0 || (out[6] & 1) != 0 || !Plain(out, n)) return false;
    uint64_t src = Mac(out + 6), dst = Mac(out);
    auto si = macs_.find(src);
    auto di = macs_.find(dst);
    if (si == macs_.end() || si->second.port != (int32_t)s.peer || si->second.until <= now || di == macs_.end() ||
        di->second.port != kLocal || di->second.until <= now)
      return false;
    // Everything JavaScript would have checked holds: only now does the packet change state.
    if (!Accept(s.state, s.ring, counter)) return false;
    ctr_[X_RX_FRAMES]++;
    ctr_[X_RX_BYTES] += (double)n;
    PeerStat& ps = peerStats_[s.peer];
    ps.rxPackets++;
    ps.rxBytes += (double)n;
    ps.lastRecv = now;
    macStats_[dst].toTap += (double)n;
    macStats_[src].seen = now;
    *flen = n;
    return true;
  }

  // ---- installs from JavaScript ---------------------------------------------------------------------

  Napi::Value SetMac(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
      Napi::TypeError::New(env, "mac(mac, port, untilMs)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double mac = info[0].As<Napi::Number>().DoubleValue();
    if (!(mac >= 0 && mac < 281474976710656.0)) return env.Undefined();
    macs_[(uint64_t)mac] = {info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Number>().DoubleValue()};
    return env.Undefined();
  }

  // A keypair's key, state (Float64Array of 2+) and, for receiving, ring (Uint32Array of kWords).
  static bool TakeSession(Napi::Env env, Napi::Value key, Napi::Value state, Napi::Value ring, Session* s) {
    aead::Key* k = aead::FromJs(env, key);
    if (k == nullptr || !state.IsTypedArray() || state.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        state.As<Napi::Float64Array>().ElementLength() < 2)
      return false;
    if (!ring.IsUndefined()) {
      if (!ring.IsTypedArray() || ring.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
          ring.As<Napi::Uint32Array>().ElementLength() != (size_t)kWords)
        return false;
      s->ring = ring.As<Napi::Uint32Array>().Data();
      s->ringRef = Napi::Persistent(ring.As<Napi::Object>());
    }
    s->key = k;
    s->keyRef = Napi::Persistent(key.As<Napi::Object>());
    s->state = state.As<Napi::Float64Array>().Data();
    s->stateRef = Napi::Persistent(state.As<Napi::Object>());
    return true;
  }

  // The endpoint and lease at info[i .. i+3): address, port, untilMs.
  static bool TakeWhere(const Napi::CallbackInfo& info, size_t i, Session* s) {
    if (info.Length() < i + 3 || !info[i].IsString() || !info[i + 1].IsNumber() || !info[i + 2].IsNumber())
      return false;
    s->until = info[i + 2].As<Napi::Number>().DoubleValue();
    return ParseAddr(info[i].As<Napi::String>().Utf8Value(), info[i + 1].As<Napi::Number>().Uint32Value(), &s->addr);
  }

  // send(peerId, key, state, remoteIndex, address, port, untilMs)
  Napi::Value SetSend(const Napi::CallbackInfo& info) {
    Session s;
    bool ok = info[0].IsNumber() && info[3].IsNumber() &&
              TakeSession(info.Env(), info[1], info[2], info.Env().Undefined(), &s) && TakeWhere(info, 4, &s);
    if (ok) {
      s.index = info[3].As<Napi::Number>().Uint32Value();
      s.peer = info[0].As<Napi::Number>().Uint32Value();
      sends_[s.peer] = std::move(s);
    }
    return Napi::Boolean::New(info.Env(), ok);
  }

  // recv(localIndex, peerId, key, state, ring, address, port, untilMs)
  Napi::Value SetRecv(const Napi::CallbackInfo& info) {
    Session s;
    bool ok = info[0].IsNumber() && info[1].IsNumber() && TakeSession(info.Env(), info[2], info[3], info[4], &s) &&
              s.ring != nullptr && TakeWhere(info, 5, &s);
    if (ok) {
      s.peer = info[1].As<Napi::Number>().Uint32Value();
      recvs_[info[0].As<Napi::Number>().Uint32Value()] = std::move(s);
    }
    return Napi::Boolean::New(info.Env(), ok);
  }

  Napi::Value Flush(const Napi::CallbackInfo& info) {
    macs_.clear();
    sends_.clear();
    recvs_.clear();
    return info.Env().Undefined();
  }

  // Statistics since the last collect, as records of kRecord numbers:
  //   [1, peerId, rxPackets, rxBytes, txPackets, txBytes, lastRecvMs, lastSentMs]
  //   [2, mac, toMesh bytes, toTap bytes, lastSeenMs, 0, 0, 0]
  // Returns the records written; what did not fit stays for the next call.
  Napi::Value Collect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      Napi::TypeError::New(env, "collect(out: Float64Array)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Float64Array out = info[0].As<Napi::Float64Array>();
    double* o = out.Data();
    size_t room = out.ElementLength() / kRecord, n = 0;
    for (auto it = peerStats_.begin(); it != peerStats_.end() && n < room; it = peerStats_.erase(it), n++) {
      double* r = o + n * kRecord;
      const PeerStat& p = it->second;
      r[0] = 1, r[1] = it->first, r[2] = p.rxPackets, r[3] = p.rxBytes, r[4] = p.txPackets, r[5] = p.txBytes;
      r[6] = p.lastRecv, r[7] = p.lastSent;
    }
    for (auto it = macStats_.begin(); it != macStats_.end() && n < room; it = macStats_.erase(it), n++) {
      double* r = o + n * kRecord;
      const MacStat& m = it->second;
      r[0] = 2, r[1] = (double)it->first, r[2] = m.toMesh, r[3] = m.toTap, r[4] = m.seen, r[5] = r[6] = r[7] = 0;
    }
    return Napi::Number::New(env, (double)n);
  }

  Napi::Value GetSize(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), (double)(macs_.size() + sends_.size() + recvs_.size()));
  }

  double* ctr_ = nullptr;
  Napi::ObjectReference ctrRef_;
  uint32_t maxFrame_ = 0;
  bool readAfterWrite_ = false;
  TapPort* tap_ = nullptr;
  UdpPort* udp_ = nullptr;
  int udpFd_ = -1;
  std::unordered_map<uint64_t, MacEnt> macs_;
  std::unordered_map<uint32_t, Session> sends_;  // by peer id
  std::unordered_map<uint32_t, Session> recvs_;  // by our receiver index
  std::unordered_map<uint32_t, PeerStat> peerStats_;
  std::unordered_map<uint64_t, MacStat> macStats_;
  std::vector<uint8_t> txBuf_;  // a wake-up's datagrams, sealed
  struct Sent {
    Session* s;
    uint64_t src;
  };
  std::vector<udpsend::Pkt> txPkts_;  // where they are in txBuf_
  std::vector<Sent> txSent_;          // and whose each is (session, source MAC: for the statistics)
  bool gsoOff_ = false;
  std::vector<uint8_t> rxBuf_;           // a wake-up's frames, decrypted
  std::vector<sparse::Frame> rxFrames_;  // and where they are in rxBuf_
};

Express* Of(Engine* e) {
  return reinterpret_cast<Express*>(e);
}

// expressReplay(state, ring, low): the receive side's counter logic alone (a test compares it with
// mesh/replay.ts and wire.ts on the same sequences): the full counter accepted, or -1.
Napi::Value ReplayHook(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsNumber())
    return Napi::Number::New(env, -1);
  Napi::Float64Array st = info[0].As<Napi::Float64Array>();
  Napi::Uint32Array ring = info[1].As<Napi::Uint32Array>();
  if (st.ElementLength() < 2 || ring.ElementLength() != (size_t)kWords) return Napi::Number::New(env, -1);
  int64_t c = FullCounter(info[2].As<Napi::Number>().Uint32Value(), (int64_t)st.Data()[1]);
  if (c > kMaxCounter || !WouldAccept(st.Data(), ring.Data(), c) || !Accept(st.Data(), ring.Data(), c))
    return Napi::Number::New(env, -1);
  return Napi::Number::New(env, (double)c);
}

}  // namespace

Engine* FromJs(napi_env env, napi_value v) {
  return static_cast<Engine*>(tagged::Unwrap(env, v, &kTypeTag));
}

Engine* EngineArg(napi_env env, napi_value v) {
  napi_valuetype t = napi_undefined;
  napi_typeof(env, v, &t);
  if (t == napi_null || t == napi_undefined) return nullptr;
  Engine* e = FromJs(env, v);
  if (e == nullptr) napi_throw_type_error(env, nullptr, "setExpress(express: Express | null)");
  return e;
}

void AttachTap(Engine* e, TapPort* tap) {
  Of(e)->Attach(tap);
}
void DetachTap(Engine* e, TapPort* tap) {
  Of(e)->Detach(tap);
}
void AttachUdp(Engine* e, UdpPort* port, int fd) {
  Of(e)->Attach(port, fd);
}
void DetachUdp(Engine* e, UdpPort* port) {
  Of(e)->Detach(port);
}
uint32_t FromTap(Engine* e, const uint8_t* slab, size_t stride, const uint32_t* lens, uint32_t n) {
  return Of(e)->FromTap(slab, stride, lens, n);
}
uint32_t FromUdp(Engine* e, const Datagram* d, uint32_t n) {
  return Of(e)->FromUdp(d, n);
}

}  // namespace express

void InitExpress(Napi::Env env, Napi::Object exports) {
  Napi::Array names = Napi::Array::New(env, express::X_COUNT);
  for (uint32_t i = 0; i < express::X_COUNT; i++) names.Set(i, Napi::String::New(env, express::kCounterNames[i]));
  exports.Set("EXPRESS_COUNTER_NAMES", names);
  exports.Set("Express", express::Express::Define(env));
  exports.Set("expressReplay", Napi::Function::New(env, express::ReplayHook, "expressReplay"));
}
