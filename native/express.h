// The express path (native/express.cc) as seen from the TAP (tap.cc) and the UDP receiver (udp_rx.cc): a
// wake-up's frames or datagrams are offered here first, in order; the express path carries (sends or writes) a
// leading run of them and JavaScript gets the rest unchanged, so nothing overtakes anything.
#pragma once
#include <node_api.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

#include "sparse.h"

namespace express {

// What the express path needs from the TAP.
class TapPort {
 public:
  virtual ~TapPort() = default;
  // Writes frames (no virtio_net_hdr) behind anything already queued, as writeBatch does (sparse flows first,
  // coalesced, the TAP read between the parts when readBetween); drops are the TAP's counters.
  virtual void ExpressWrite(const sparse::Frame* frames, uint32_t n, bool readBetween) = 0;
  // A read wake-up now (the kernel's answer to the frame just written leaves in this turn).
  virtual void ExpressReadNow() = 0;
  // The engine is going away (its JS object was collected): forget it.
  virtual void ExpressGone() = 0;
};

// What the express path needs from the UDP receiver: only to hear that the engine is gone.
class UdpPort {
 public:
  virtual ~UdpPort() = default;
  virtual void ExpressGone() = 0;
};

struct Engine;  // an Express object (opaque)

// The engine behind a JS Express object, or null if v is not one (type-tagged).
Engine* FromJs(napi_env env, napi_value v);
// setExpress(express | null)'s argument: the engine, or null for null or undefined (anything else: a pending
// TypeError, and null).
Engine* EngineArg(napi_env env, napi_value v);
void AttachTap(Engine* e, TapPort* tap);
void DetachTap(Engine* e, TapPort* tap);
// The UDP socket (the receiver's dup of dgram's fd) that express sends on.
void AttachUdp(Engine* e, UdpPort* port, int fd);
void DetachUdp(Engine* e, UdpPort* port);

// A wake-up's frames read from the TAP (complete: offloads already resolved), frame i at slab + i * stride,
// lens[i] bytes: how many of the leading ones were carried (sent); the rest go to JavaScript.
uint32_t FromTap(Engine* e, const uint8_t* slab, size_t stride, const uint32_t* lens, uint32_t n);
// A datagram received on the mesh's socket, and where from.
struct Datagram {
  const uint8_t* data;
  size_t len;
  const sockaddr_storage* src;
  socklen_t srcLen;
};
// A wake-up's datagrams, in order: how many of the leading ones were carried (written to the TAP, or dropped
// as forgeries under an installed session); the rest go to JavaScript.
uint32_t FromUdp(Engine* e, const Datagram* d, uint32_t n);

}  // namespace express
