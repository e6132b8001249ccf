// The express path (native/express.cc) as seen from the TAP (tap.cc) and the UDP receiver (udp_rx.cc): a
// wake-up that brings exactly one frame or one datagram offers it here first; true means it was carried (sent
// or written) and JavaScript never sees it; false means it goes to JavaScript unchanged.
#pragma once
#include <node_api.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace express {

// What the express path needs from the TAP.
class TapPort {
 public:
  virtual ~TapPort() = default;
  // Writes one frame (no virtio_net_hdr) behind anything already queued; false if it was dropped.
  virtual bool ExpressWrite(const uint8_t* frame, size_t len) = 0;
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

// A frame read from the TAP (complete: offloads already resolved).
bool FromTap(Engine* e, const uint8_t* frame, size_t len);
// A datagram received on the mesh's socket.
bool FromUdp(Engine* e, const uint8_t* msg, size_t len, const sockaddr_storage& src, socklen_t srcLen);

}  // namespace express
