// Batched UDP sends on the daemon's dgram socket (its fd), for the mesh's outbound path.
//
// node:dgram sends one datagram per JS call, one syscall each, and each syscall walks the whole IP stack.
// The mesh sends runs of equal-size datagrams to one peer (full-size TCP segments, encrypted), so a run
// goes out as ONE sendmsg with UDP_SEGMENT (UDP GSO): the kernel (or the NIC) cuts it into datagrams after
// the stack. Everything else in the batch goes out with one sendmmsg. The socket stays dgram's: receiving,
// binding and errors are node:dgram's; this only writes.
//
//   udpSendBatch(fd, address, port, packets: Uint8Array[], count, gso: boolean) -> sent (>= 0) or -errno
//   (on EAGAIN it returns how many went out; the caller sends the rest through dgram, which queues)
#include <napi.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <vector>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

namespace {

constexpr size_t kMaxGsoSegments = 64;  // UDP_MAX_SEGMENTS on older kernels
constexpr size_t kMaxGsoBytes = 65000;  // IP datagram limit, with room for headers
constexpr size_t kMaxMmsg = 64;

struct Dest {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

bool ParseDest(const std::string& address, uint32_t port, Dest* d) {
  std::memset(&d->ss, 0, sizeof d->ss);
  if (address.find(':') == std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in*>(&d->ss);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, address.c_str(), &a->sin_addr) != 1) return false;
    d->len = sizeof(sockaddr_in);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&d->ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    std::string host = address;
    size_t pct = host.find('%');
    if (pct != std::string::npos) host.resize(pct);
    if (inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) != 1) return false;
    d->len = sizeof(sockaddr_in6);
  }
  return true;
}

struct Pkt {
  uint8_t* data;
  size_t len;
};

// One GSO sendmsg of pkts[0..n) (all of size seg, the last <= seg). Returns 0 or errno.
int SendGso(int fd, const Dest& d, const Pkt* pkts, size_t n, size_t seg) {
  iovec iov[kMaxGsoSegments];
  for (size_t i = 0; i < n; i++) iov[i] = {pkts[i].data, pkts[i].len};
  char control[CMSG_SPACE(sizeof(uint16_t))] = {};
  msghdr m{};
  m.msg_name = const_cast<sockaddr_storage*>(&d.ss);
  m.msg_namelen = d.len;
  m.msg_iov = iov;
  m.msg_iovlen = n;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_UDP;
  c->cmsg_type = UDP_SEGMENT;
  c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  uint16_t s = (uint16_t)seg;
  std::memcpy(CMSG_DATA(c), &s, sizeof s);
  ssize_t w;
  do w = sendmsg(fd, &m, 0);
  while (w < 0 && errno == EINTR);
  return w < 0 ? errno : 0;
}

// sendmmsg of pkts[0..n), one datagram each. Returns how many went out; *err is set when it stopped early.
size_t SendEach(int fd, const Dest& d, const Pkt* pkts, size_t n, int* err) {
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < kMaxMmsg ? n - done : kMaxMmsg;
    mmsghdr msgs[kMaxMmsg];
    iovec iov[kMaxMmsg];
    for (size_t i = 0; i < k; i++) {
      iov[i] = {pkts[done + i].data, pkts[done + i].len};
      std::memset(&msgs[i], 0, sizeof msgs[i]);
      msgs[i].msg_hdr.msg_name = const_cast<sockaddr_storage*>(&d.ss);
      msgs[i].msg_hdr.msg_namelen = d.len;
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int r;
    do r = sendmmsg(fd, msgs, (unsigned)k, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
      *err = errno;
      return done;
    }
    done += (size_t)r;
    if ((size_t)r < k) {
      *err = EAGAIN;
      return done;
    }
  }
  return done;
}

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
  size_t sent = 0;
  int err = 0;
  size_t i = 0;
  std::vector<Pkt> singles;
  auto flushSingles = [&]() -> bool {
    if (singles.empty()) return true;
    size_t k = SendEach(fd, d, singles.data(), singles.size(), &err);
    sent += k;
    singles.clear();
    return err == 0;
  };
  while (i < pkts.size()) {
    size_t seg = pkts[i].len;
    size_t j = i + 1, bytes = seg;
    if (gso) {
      while (j < pkts.size() && j - i < kMaxGsoSegments && bytes + pkts[j].len <= kMaxGsoBytes && pkts[j].len <= seg &&
             pkts[j - 1].len == seg) {
        bytes += pkts[j].len;
        j++;
      }
    }
    if (j - i >= 2) {
      if (!flushSingles()) break;
      err = SendGso(fd, d, &pkts[i], j - i, seg);
      if (err != 0) break;
      sent += j - i;
    } else {
      singles.push_back(pkts[i]);
    }
    i = j;
  }
  if (err == 0) flushSingles();
  if (err != 0 && err != EAGAIN && err != EWOULDBLOCK && sent == 0) return Napi::Number::New(env, -err);
  return Napi::Number::New(env, (double)sent);
}

}  // namespace

void InitUdp(Napi::Env env, Napi::Object exports) {
  exports.Set("udpSendBatch", Napi::Function::New(env, UdpSendBatch, "udpSendBatch"));
}
