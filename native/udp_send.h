// Batched UDP sends (UDP GSO runs and sendmmsg) on a socket fd: what the mesh's sender (udp.cc) and the
// express path (express.cc) share.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

namespace udpsend {

constexpr size_t kMaxGsoSegments = 64;  // UDP_MAX_SEGMENTS on older kernels
constexpr size_t kMaxGsoBytes = 65000;  // IP datagram limit, with room for headers
constexpr size_t kMaxMmsg = 64;

struct Dest {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

inline bool ParseDest(const std::string& address, uint32_t port, Dest* d) {
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
inline int SendGso(int fd, const Dest& d, const Pkt* pkts, size_t n, size_t seg) {
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
inline size_t SendEach(int fd, const Dest& d, const Pkt* pkts, size_t n, int* err) {
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

// Sends pkts[0..n): runs of equal-size datagrams (the last may be shorter) as one GSO sendmsg each, the rest
// with sendmmsg. Returns how many went out; *err is the errno that stopped it (0 if all went), *gsoFailed
// says a GSO send was refused for another reason than EAGAIN (the caller then sends without GSO).
inline size_t SendPackets(int fd, const Dest& d, const Pkt* pkts, size_t n, bool gso, int* err, bool* gsoFailed,
                          size_t* calls) {
  size_t sent = 0;
  *err = 0;
  *gsoFailed = false;
  size_t i = 0;
  size_t singlesFrom = 0, singlesCount = 0;  // a contiguous stretch of pkts sent one by one
  auto flushSingles = [&]() -> bool {
    if (singlesCount == 0) return true;
    size_t k = SendEach(fd, d, pkts + singlesFrom, singlesCount, err);
    *calls += (singlesCount + kMaxMmsg - 1) / kMaxMmsg;
    sent += k;
    singlesCount = 0;
    return *err == 0;
  };
  while (i < n) {
    size_t seg = pkts[i].len;
    size_t j = i + 1, bytes = seg;
    if (gso) {
      while (j < n && j - i < kMaxGsoSegments && bytes + pkts[j].len <= kMaxGsoBytes && pkts[j].len <= seg &&
             pkts[j - 1].len == seg) {
        bytes += pkts[j].len;
        j++;
      }
    }
    if (j - i >= 2) {
      if (!flushSingles()) return sent;
      int e = SendGso(fd, d, &pkts[i], j - i, seg);
      (*calls)++;
      if (e != 0) {
        *err = e;
        if (e != EAGAIN && e != EWOULDBLOCK) *gsoFailed = true;
        return sent;
      }
      sent += j - i;
    } else {
      if (singlesCount == 0) singlesFrom = i;
      singlesCount++;
    }
    i = j;
  }
  flushSingles();
  return sent;
}

}  // namespace udpsend
