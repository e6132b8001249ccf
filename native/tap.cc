// homewire_tap: a Linux TAP device for the daemon's data plane.
//
// Shape (see src/tap/native.ts, the only user):
//   open({ name, mtu, bridge?, counters: Float64Array, writeQueueMax, writeYieldFrames? }) -> Tap
//   Tap.startReading(slab, lengths: Uint32Array, stride, maxFrames, onRead(count))
//   Tap.stopReading()
//   Tap.writeBatch(frames: Uint8Array[], count) -> frames accepted (written now or queued)
//   Tap.readNow()        a read wake-up now, without waiting for the poll (onRead, synchronously, if anything)
//   Tap.syncCounters()   (writer thread: brings the thread's counters into the shared array)
//   Tap.close()
//   Tap.name / ifindex / mac (Buffer) / mtu / persistent / fd
//   COUNTER_NAMES: the layout of the shared counters array (native writes, JS reads)
//   Test hooks: socketPair(sndbufBytes) -> [fdA, fdB]; wrapFd(fd, { counters, writeQueueMax }) -> Tap
//
// Data path, all on the main libuv loop, no threads, no per-frame allocation:
//   read:  one uv_poll (UV_READABLE) wake-up -> up to maxFrames read()s into the shared slab (one
//          frame per stride) with their lengths in the shared Uint32Array -> the express path
//          (native/express.cc) sends the leading run it can carry, and what is left moves to the slab's
//          front -> ONE JS call onRead(n). Stops at EAGAIN or maxFrames. With offloads (virtio_net_hdr) the
//          ring is read ahead (ReadAhead): TSO frames are held in slots of our own and taken about
//          kHeldShare segments per loop turn (a uv_idle handle brings the next share), while other flows'
//          frames go first; a TCP stream that keeps the ring full no longer holds the loop for milliseconds
//          while the mesh's socket waits, nor a ping behind its queue. A fatal read error stops reading and
//          calls onRead(-errno).
//   write: writeBatch() write()s each frame at once (one syscall per frame: a TAP takes one frame
//          per write). On EAGAIN the rest is copied into a bounded ring (reused slots), UV_WRITABLE
//          is polled and the ring drained when writable; frames beyond the bound are dropped and
//          counted. Order is kept: while the ring is not empty, new frames go behind it.
//   writer thread (open({ writerThread: true }); off by default, HOMEWIRE_TAP_WRITER_THREAD=1): the ring
//          is a queue to a thread of the TAP's own (worker.h) that does the write()s, so the kernel's work
//          for each frame (the bridge, the receiving stack) runs on another core while JS goes on; it waits out EAGAIN
//          with poll(). A batch of at most kInlineFrames frames is written inline when the queue is empty (a lone ping
//          does not wait for a thread to wake up). Counters the thread moves are atomics, copied into the shared array
//          by writeBatch() and syncCounters(). A batch is refused whole while the queue's delay is above
//          delay::kQueueDelayMaxNs; writeQueueBytes bounds its memory.
//
// Lifetime: close() stops polling, closes the fd at once (libuv documents this as safe right after
// uv_poll_stop/uv_close, and it makes the interface disappear when close() returns) and uv_close()s
// the poll handle, whose memory is freed in the close callback. An async env cleanup hook does the
// same on environment teardown (worker exit), and the GC finalizer does it for an object dropped
// without close() (while reading, the callback reference keeps the object alive, like a socket).
//
// Errors: C++ exceptions are off (NAPI_DISABLE_CPP_EXCEPTIONS); control-plane errors are thrown as
// JS Errors with code (EPERM...), errno (negative, like Node's), syscall, and a message that says
// what to do. Data-plane errors are never thrown: they are counters.

#include <napi.h>
#include <sched.h>
#include <sys/uio.h>

#include "delay.h"
#include "express.h"
#include "gro.h"
#include "sparse.h"
#include "worker.h"
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

void InitUdp(Napi::Env env, Napi::Object exports);      // native/udp.cc: batched UDP sends
void InitUdpRx(Napi::Env env, Napi::Object exports);    // native/udp_rx.cc: batched UDP receives
void InitAead(Napi::Env env, Napi::Object exports);     // native/aead.cc: ChaCha20-Poly1305 per key
void InitExpress(Napi::Env env, Napi::Object exports);  // native/express.cc: lone packets without JS

namespace {

// ---- Shared counters (Float64Array; doubles are exact to 2^53) ---------------------------------
enum Counter : int {
  C_TX_FRAMES = 0,         // frames handed to the kernel
  C_TX_BYTES,              // their bytes
  C_TX_DROPPED_QUEUE = 2,  // dropped: write queue full
  C_TX_DROPPED_ERROR,      // dropped: write() failed (interface gone, malformed frame, closed)
  C_RX_ERRORS,             // read() errors other than EAGAIN
  C_TX_QUEUED,             // frames waiting in the write queue now
  C_TX_EAGAIN,             // times write() said EAGAIN (kernel back-pressure)
  C_LAST_ERRNO,            // last data-path errno seen (positive), 0 if none
  C_TX_COALESCED,          // frames written as part of a coalesced (GSO) frame
  C_TX_WRITES,             // write() calls that succeeded (coalesced frames count once)
  C_RX_SEGMENTED,          // frames cut out of large (TSO) reads
  C_TX_YIELDS,             // sched_yield()s inside a long write batch (see yieldEvery_)
  C_TX_SPARSE_FIRST,       // frames of sparse flows written ahead of a bulk flow's (sparse.h)
  C_RX_WAKEUPS_FULL,       // read turns that left frames for the next loop turn (held, or in the ring)
  C_RX_AHEAD,              // frames taken ahead of frames held (read ahead) of other flows
  C_COUNT
};
const char* const kCounterNames[] = {"txFrames",    "txBytes",  "txDroppedQueue", "txDroppedError", "rxErrors",
                                     "txQueued",    "txEagain", "lastErrno",      "txCoalesced",    "txWrites",
                                     "rxSegmented", "txYields", "txSparseFirst",  "rxWakeupsFull",  "rxAhead"};
static_assert(sizeof(kCounterNames) / sizeof(kCounterNames[0]) == C_COUNT, "one name per counter");

// ---- Errors ------------------------------------------------------------------------------------
struct SysErr {
  int err = 0;  // positive errno; 0 = no error
  const char* syscall = "";
  std::string message;
};

const char* ErrName(int err) {
  const char* n = strerrorname_np(err);
  return n ? n : uv_err_name(-err);
}

bool SetErr(SysErr* e, int err, const char* syscall, const std::string& message) {
  e->err = err;
  e->syscall = syscall;
  e->message = message;
  return false;
}

Napi::Value ThrowSys(Napi::Env env, const SysErr& e) {
  Napi::Error error = Napi::Error::New(env, e.message);
  error.Set("code", Napi::String::New(env, ErrName(e.err)));
  error.Set("errno", Napi::Number::New(env, -e.err));
  error.Set("syscall", Napi::String::New(env, e.syscall));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

std::string Describe(int err) {
  return std::string(strerror(err)) + " (" + ErrName(err) + ")";
}

const char* kNeedsAdmin = "run as root or grant CAP_NET_ADMIN (e.g. AmbientCapabilities=CAP_NET_ADMIN)";

// ---- Interface setup (plain C++, no N-API) -----------------------------------------------------
struct OpenArgs {
  std::string name;
  int mtu = 0;
  std::string bridge;  // empty = none
  int txQueueLen = 0;  // 0 = leave the kernel's default (1000)
};

struct OpenResult {
  int fd = -1;
  bool vnet = false;  // frames carry a virtio_net_hdr (read: stripped; write: coalescing possible)
  std::string name;
  int ifindex = 0;
  uint8_t mac[6] = {0, 0, 0, 0, 0, 0};
  int mtu = 0;
  bool persistent = false;
};

// Linux's dev_valid_name(), plus "%d" which the kernel expands.
bool ValidIfName(const std::string& n) {
  if (n.empty() || n.size() >= IFNAMSIZ || n == "." || n == "..") return false;
  for (char c : n)
    if (c == '/' || c == ':' || c == ' ' || c == '\t' || c == '\n') return false;
  return true;
}

void SetName(struct ifreq* ifr, const std::string& name) {
  memset(ifr, 0, sizeof(*ifr));
  memcpy(ifr->ifr_name, name.data(), name.size());  // size < IFNAMSIZ checked; rest is zero
}

bool SysfsExists(const std::string& ifname) {
  return access(("/sys/class/net/" + ifname).c_str(), F_OK) == 0;
}

// Name of the interface's master (bridge), or "" if none.
std::string MasterOf(const std::string& ifname) {
  char buf[256];
  ssize_t n = readlink(("/sys/class/net/" + ifname + "/master").c_str(), buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  const char* slash = strrchr(buf, '/');
  return slash ? slash + 1 : buf;
}

// An AF_INET (else AF_PACKET) datagram socket for interface ioctls.
int ControlSocket() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) s = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  return s;
}

bool LinkUp(int sock, const std::string& ifname, const char* what, SysErr* e) {
  struct ifreq ifr;
  SetName(&ifr, ifname);
  if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
    return SetErr(e, errno, "ioctl(SIOCGIFFLAGS)",
                  std::string("reading flags of ") + what + " " + ifname + " failed: " + Describe(errno));
  if (ifr.ifr_flags & IFF_UP) return true;
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) {
    int err = errno;
    if (err == EPERM || err == EACCES)
      return SetErr(e, err, "ioctl(SIOCSIFFLAGS)",
                    std::string("bringing ") + what + " " + ifname + " up needs root or CAP_NET_ADMIN (" +
                        ErrName(err) + "); " + kNeedsAdmin + ", or bring it up beforehand (ip link set " + ifname +
                        " up)");
    return SetErr(e, err, "ioctl(SIOCSIFFLAGS)",
                  std::string("bringing ") + what + " " + ifname + " up failed: " + Describe(err));
  }
  return true;
}

bool SetMtu(int sock, const std::string& ifname, int mtu, SysErr* e) {
  struct ifreq ifr;
  SetName(&ifr, ifname);
  if (ioctl(sock, SIOCGIFMTU, &ifr) == 0 && ifr.ifr_mtu == mtu) return true;  // nothing to do
  SetName(&ifr, ifname);
  ifr.ifr_mtu = mtu;
  if (ioctl(sock, SIOCSIFMTU, &ifr) == 0) return true;
  int err = errno;
  std::string m = std::to_string(mtu);
  if (err == EPERM || err == EACCES)
    return SetErr(e, err, "ioctl(SIOCSIFMTU)",
                  "setting MTU " + m + " on " + ifname + " needs root or CAP_NET_ADMIN (" + ErrName(err) + "); " +
                      kNeedsAdmin + ", or set it beforehand (ip link set " + ifname + " mtu " + m + ")");
  if (err == EINVAL)
    return SetErr(
        e, err, "ioctl(SIOCSIFMTU)",
        "MTU " + m + " is out of range for " + ifname + " (EINVAL); use 68..65521 (and at most the frame slab stride)");
  return SetErr(e, err, "ioctl(SIOCSIFMTU)", "setting MTU " + m + " on " + ifname + " failed: " + Describe(err));
}

bool Enslave(int sock, const std::string& ifname, int ifindex, const std::string& bridge, SysErr* e) {
  if (MasterOf(ifname) == bridge) return LinkUp(sock, bridge, "bridge", e);  // already there
  char brname[IFNAMSIZ];
  memset(brname, 0, sizeof brname);
  memcpy(brname, bridge.data(), bridge.size());
  if (ioctl(sock, SIOCBRADDBR, brname) < 0 && errno != EEXIST) {
    int err = errno;
    if (err == EPERM || err == EACCES)
      return SetErr(e, err, "ioctl(SIOCBRADDBR)",
                    "creating bridge " + bridge + " needs root or CAP_NET_ADMIN (" + ErrName(err) + "); " +
                        kNeedsAdmin + ", or create it beforehand (ip link add " + bridge + " type bridge)");
    if (err == ENOPKG || err == ENOSYS)
      return SetErr(e, err, "ioctl(SIOCBRADDBR)",
                    "creating bridge " + bridge + " failed: bridge support is missing (" + ErrName(err) +
                        "); load the bridge module (modprobe bridge)");
    return SetErr(e, err, "ioctl(SIOCBRADDBR)", "creating bridge " + bridge + " failed: " + Describe(err));
  }
  if (!LinkUp(sock, bridge, "bridge", e)) return false;
  struct ifreq ifr;
  SetName(&ifr, bridge);
  ifr.ifr_ifindex = ifindex;
  if (ioctl(sock, SIOCBRADDIF, &ifr) == 0) return true;
  int err = errno;
  if (err == EBUSY && MasterOf(ifname) == bridge) return true;
  if (err == EOPNOTSUPP || err == EINVAL)
    return SetErr(e, err, "ioctl(SIOCBRADDIF)",
                  "cannot enslave " + ifname + " to " + bridge + ": " + bridge + " exists but is not a bridge (" +
                      ErrName(err) + "); delete it or name another bridge");
  if (err == EBUSY)
    return SetErr(e, err, "ioctl(SIOCBRADDIF)",
                  "cannot enslave " + ifname + " to " + bridge + ": it already has master " + MasterOf(ifname) +
                      " (EBUSY); release it (ip link set " + ifname + " nomaster)");
  if (err == EPERM || err == EACCES)
    return SetErr(e, err, "ioctl(SIOCBRADDIF)",
                  "enslaving " + ifname + " to bridge " + bridge + " needs root or CAP_NET_ADMIN (" + ErrName(err) +
                      "); " + kNeedsAdmin);
  return SetErr(e, err, "ioctl(SIOCBRADDIF)",
                "enslaving " + ifname + " to bridge " + bridge + " failed: " + Describe(err));
}

bool OpenTap(const OpenArgs& a, OpenResult* r, SysErr* e) {
  if (!ValidIfName(a.name))
    return SetErr(e, EINVAL, "open",
                  "invalid TAP name '" + a.name + "': use 1..15 characters without '/', ':' or spaces");
  if (!a.bridge.empty() && (!ValidIfName(a.bridge) || a.bridge.find('%') != std::string::npos))
    return SetErr(e, EINVAL, "open",
                  "invalid bridge name '" + a.bridge + "': use 1..15 characters without '/', ':', '%' or spaces");

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENODEV || err == ENXIO)
      return SetErr(e, err, "open",
                    "/dev/net/tun is not available (" + std::string(ErrName(err)) +
                        "); load the tun module (modprobe tun)" +
                        (err == ENOENT ? ", or create the node (mknod /dev/net/tun c 10 200)" : ""));
    if (err == EACCES || err == EPERM)
      return SetErr(e, err, "open",
                    "opening /dev/net/tun for TAP " + a.name + " needs root or CAP_NET_ADMIN (" + ErrName(err) + "); " +
                        kNeedsAdmin);
    return SetErr(e, err, "open", "opening /dev/net/tun failed: " + Describe(err));
  }
  // O_CLOEXEC/O_NONBLOCK were asked for at open(); make sure (cheap, and some kernels ignore flags).
  fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

  struct ifreq ifr;
  SetName(&ifr, a.name);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    const std::string& n = a.name;
    if (err == EPERM || err == EACCES)
      return SetErr(e, err, "ioctl(TUNSETIFF)",
                    "creating TAP " + n + " needs root or CAP_NET_ADMIN (" + ErrName(err) + "); " + kNeedsAdmin +
                        (SysfsExists(n) ? " (or, if " + n + " is a persistent TAP, make it yours: ip tuntap add " + n +
                                              " mode tap user <uid>)"
                                        : ""));
    if (err == EBUSY)
      return SetErr(
          e, err, "ioctl(TUNSETIFF)",
          "TAP name " + n + " is in use by another process (EBUSY); stop that process or choose another name");
    if (err == EINVAL && SysfsExists(n))
      return SetErr(e, err, "ioctl(TUNSETIFF)",
                    "an interface named " + n + " already exists and is not a TAP (EINVAL); delete it (ip link del " +
                        n + ") or choose another name");
    if (err == ENFILE || err == EMFILE)
      return SetErr(e, err, "ioctl(TUNSETIFF)",
                    "creating TAP " + n + " failed: " + Describe(err) + "; too many interfaces or open files");
    return SetErr(e, err, "ioctl(TUNSETIFF)", "creating TAP " + n + " failed: " + Describe(err));
  }
  {
    // virtio_net_hdr on every frame: writes may then carry coalesced TCP (see gro.h). No offloads are
    // enabled for reads, so frames from the kernel arrive whole, with checksums, and a zero header.
    int hdrSize = (int)gro::kVnetHdrBytes;
    (void)ioctl(fd, TUNSETVNETHDRSZ, &hdrSize);  // 10 is also the kernel's default
    // Reads: the kernel may hand over large TCP frames (TSO) and partial checksums; the addon cuts and
    // completes them (gro.h, gso::) before JS sees them, so the mesh only ever carries ordinary frames.
    if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) != 0 &&
        ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) != 0)
      (void)ioctl(fd, TUNSETOFFLOAD, 0UL);
    r->vnet = true;
  }

  r->name.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  if (ioctl(fd, TUNGETIFF, &ifr) == 0) r->persistent = (ifr.ifr_flags & IFF_PERSIST) != 0;

  int sock = ControlSocket();
  if (sock < 0) {
    int err = errno;
    close(fd);
    return SetErr(e, err, "socket", "opening a control socket to configure " + r->name + " failed: " + Describe(err));
  }
  bool ok = true;
  SetName(&ifr, r->name);
  if (ioctl(sock, SIOCGIFINDEX, &ifr) < 0) {
    ok = SetErr(e, errno, "ioctl(SIOCGIFINDEX)", "reading the index of " + r->name + " failed: " + Describe(errno));
  } else {
    r->ifindex = ifr.ifr_ifindex;
  }
  if (ok) {
    SetName(&ifr, r->name);
    if (ioctl(sock, SIOCGIFHWADDR, &ifr) < 0)
      ok = SetErr(e, errno, "ioctl(SIOCGIFHWADDR)",
                  "reading the MAC address of " + r->name + " failed: " + Describe(errno));
    else
      memcpy(r->mac, ifr.ifr_hwaddr.sa_data, 6);
  }
  ok = ok && SetMtu(sock, r->name, a.mtu, e);
  if (ok && a.txQueueLen > 0) {
    // Best effort: a deeper kernel queue towards the daemon absorbs bursts while JS is busy.
    SetName(&ifr, r->name);
    ifr.ifr_qlen = a.txQueueLen;
    (void)ioctl(sock, SIOCSIFTXQLEN, &ifr);
  }
  ok = ok && (a.bridge.empty() || Enslave(sock, r->name, r->ifindex, a.bridge, e));
  ok = ok && LinkUp(sock, r->name, "TAP", e);
  if (ok) {
    SetName(&ifr, r->name);
    r->mtu = ioctl(sock, SIOCGIFMTU, &ifr) == 0 ? ifr.ifr_mtu : a.mtu;
  }
  close(sock);
  if (!ok) {
    close(fd);  // a non-persistent TAP disappears with its last fd
    return false;
  }
  r->fd = fd;
  return true;
}

// ---- The Tap object ----------------------------------------------------------------------------
class Tap;

// Heap box for the poll and idle handles: it outlives the Tap until libuv's close callbacks (both).
struct PollBox {
  uv_poll_t poll;
  uv_idle_t idle;  // runs the next turn of frames held (read ahead) while there are any
  int handles = 0;
  Tap* owner = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
};

// Frames read ahead of their turn (offloads on), at most this many (each a slot of up to 64 KB, allocated at
// first use): a TCP stream's standing queue, taken out of the kernel's ring so what is behind it can go first.
constexpr size_t kHeldMax = 32;
constexpr size_t kHeldBytes = 65536 + 256;  // a slot: one read, the largest TSO frame the TAP hands over
// Segments of held frames taken per loop turn: about one 64 KB TSO frame (46 segments of 1400 bytes), then the
// mesh's socket and the TAP's newest frames get their turn. peers-ab, 3 alternating rounds per pair (2026-12-02):
// the ping beside TCP 1.09 ms without read-ahead against 0.68 with shares of 128 (TCP 4,300 / 4,182 Mbit/s); 0.73
// with 128 against 0.56 with 48 (TCP 4,296 / 4,205).
constexpr size_t kHeldShare = 48;

struct Init {
  int fd;
  OpenResult info;
  Napi::Float64Array counters;
  uint32_t queueMax;
  bool writerThread = false;
  size_t queueBytes = 0;     // writer thread: bytes queued at most (0: no bound beyond queueMax)
  bool coalesceUdp = false;  // UDP runs too (off: see groOff_)
  uint32_t yieldEvery = 0;   // 0: never yield inside a batch (see yieldEvery_)
};

constexpr uint32_t kInlineFrames = 32;  // writer thread: batches this small are written inline when it is idle

// One write() for the writer thread: a frame (with its virtio_net_hdr) or a coalesced run.
struct Unit {
  std::vector<uint8_t> bytes;
  uint32_t frames = 0;
  uint64_t queuedNs = 0;  // when it was queued (delay.h)
};

struct AddonData {
  Napi::FunctionReference tapCtor;
};

constexpr size_t kBadFrame = SIZE_MAX;  // a scratch frame's len: the element is not a Uint8Array

// A write batch's scratch, one per nesting depth (readBetween's onRead may write to the TAP again).
struct WriteScratch {
  std::vector<sparse::Frame> frames;  // the batch being written (views into JS buffers or express's arena)
  std::vector<uint32_t> order;        // the order they are written in
  sparse::Scratch sparse;
};

class Tap : public Napi::ObjectWrap<Tap>, public express::TapPort {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Tap",
                       {
                           InstanceMethod<&Tap::StartReading>("startReading"),
                           InstanceMethod<&Tap::StopReading>("stopReading"),
                           InstanceMethod<&Tap::WriteBatch>("writeBatch"),
                           InstanceMethod<&Tap::ReadNow>("readNow"),
                           InstanceMethod<&Tap::SyncCountersJs>("syncCounters"),
                           InstanceMethod<&Tap::Close>("close"),
                           InstanceMethod<&Tap::SetExpress>("setExpress"),
                           InstanceAccessor<&Tap::GetName>("name"),
                           InstanceAccessor<&Tap::GetIfindex>("ifindex"),
                           InstanceAccessor<&Tap::GetMac>("mac"),
                           InstanceAccessor<&Tap::GetMtu>("mtu"),
                           InstanceAccessor<&Tap::GetPersistent>("persistent"),
                           InstanceAccessor<&Tap::GetFd>("fd"),
                       });
  }

  explicit Tap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsExternal()) {
      ThrowType(env, "Tap cannot be constructed directly: use open()");
      return;
    }
    Init* init = info[0].As<Napi::External<Init>>().Data();
    fd_ = init->fd;
    info_ = init->info;
    ctr_ = init->counters.Data();
    ctrRef_ = Napi::Persistent(static_cast<Napi::Object>(init->counters));
    if (!init->coalesceUdp) groOff_ = (1u << gro::kUdp4) | (1u << gro::kUdp6);
    yieldEvery_ = init->yieldEvery;
    if (init->writerThread) {
      threaded_ = true;
      queueBytesMax_ = init->queueBytes;
      writer_.Start(init->queueMax, [this](Unit& u) { WriteUnit(u); });
    } else {
      ring_.resize(init->queueMax);
    }

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      CloseNow(false);
      ThrowType(env, "no libuv loop");
      return;
    }
    box_ = new PollBox();
    int rc = uv_poll_init(loop, &box_->poll, fd_);
    if (rc != 0) {
      delete box_;
      box_ = nullptr;
      CloseNow(false);
      SysErr e;
      SetErr(&e, -rc, "uv_poll_init", std::string("polling the TAP fd failed: ") + uv_strerror(rc));
      ThrowSys(env, e);
      return;
    }
    uv_idle_init(loop, &box_->idle);  // cannot fail (it only fills in the handle)
    box_->handles = 2;
    box_->owner = this;
    box_->poll.data = box_;
    box_->idle.data = box_;
    held_.resize(kHeldMax);
    napi_add_async_cleanup_hook(env, OnEnvTeardown, box_, &box_->hook);
  }

  ~Tap() override { CloseNow(false); }

 private:
  // --- JS methods ---
  Napi::Value StartReading(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return ThrowType(env, "TAP is closed");
    if (reading_) return ThrowType(env, "already reading");
    if (info.Length() < 5 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsNumber() ||
        !info[3].IsNumber() || !info[4].IsFunction())
      return ThrowType(env, "startReading(slab: Uint8Array, lengths: Uint32Array, stride, maxFrames, onRead)");
    Napi::TypedArray slab = info[0].As<Napi::TypedArray>();
    Napi::TypedArray lens = info[1].As<Napi::TypedArray>();
    if (slab.TypedArrayType() != napi_uint8_array || lens.TypedArrayType() != napi_uint32_array)
      return ThrowType(env, "slab must be a Uint8Array/Buffer and lengths a Uint32Array");
    int64_t stride = info[2].As<Napi::Number>().Int64Value();
    int64_t maxFrames = info[3].As<Napi::Number>().Int64Value();
    if (stride < 64 || maxFrames < 1 || (uint64_t)(stride * maxFrames) > slab.ByteLength() ||
        (size_t)maxFrames > lens.ElementLength())
      return ThrowType(env, "slab or lengths too small for stride * maxFrames");
    slab_ = static_cast<uint8_t*>(slab.ArrayBuffer().Data()) + slab.ByteOffset();
    lens_ = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(lens.ArrayBuffer().Data()) + lens.ByteOffset());
    stride_ = (size_t)stride;
    maxFrames_ = (size_t)maxFrames;
    slabRef_ = Napi::Persistent(static_cast<Napi::Object>(slab));
    lensRef_ = Napi::Persistent(static_cast<Napi::Object>(lens));
    onRead_ = Napi::Persistent(info[4].As<Napi::Function>());
    if (asyncCtx_ == nullptr) {
      napi_value resName = Napi::String::New(env, "HomewireTap");
      napi_async_init(env, nullptr, resName, &asyncCtx_);
    }
    reading_ = true;
    UpdatePoll();
    return env.Undefined();
  }

  Napi::Value StopReading(const Napi::CallbackInfo& info) {
    if (!closed_) {
      reading_ = false;
      UpdatePoll();
      ReleaseReader(true);
    }
    return info.Env().Undefined();
  }

  // writeBatch(frames: Uint8Array[], count, readBetween?): writes frames[0..count), sparse flows' frames first
  // (sparse.h). Returns how many were accepted (written or queued); the rest were dropped and counted. With a
  // virtio_net_hdr TAP, runs of in-order segments of one TCP flow are coalesced into one GSO frame first
  // (gro.h). readBetween: when the batch has both sparse and bulk frames, the TAP is read (as readNow) right
  // after the sparse ones, so the kernel's answer to them (an echo reply) leaves before the bulk is taken; the
  // read calls onRead, which may write to this TAP again (a nested call: each depth has its own scratch).
  Napi::Value WriteBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsNumber())
      return ThrowType(env, "writeBatch(frames: Uint8Array[], count: number, readBetween?: boolean)");
    napi_value arr = info[0];
    uint32_t n = info[1].As<Napi::Number>().Uint32Value();
    bool readBetween = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
    if (closed_) {
      ctr_[C_TX_DROPPED_ERROR] += n;
      return Napi::Number::New(env, 0);
    }
    WriteScratch& w = Scratch();
    w.frames.resize(n);
    for (uint32_t k = 0; k < n; k++)
      if (!Frame(env, arr, k, &w.frames[k].data, &w.frames[k].len)) w.frames[k] = {nullptr, kBadFrame};
    return Napi::Number::New(env, WriteFrames(w, readBetween));
  }

  // The write scratch of the current nesting depth.
  WriteScratch& Scratch() {
    if (writeScratch_.size() <= writeDepth_) writeScratch_.push_back(std::make_unique<WriteScratch>());
    return *writeScratch_[writeDepth_];
  }

  // Writes w.frames (see writeBatch) and returns how many were accepted.
  uint32_t WriteFrames(WriteScratch& w, bool readBetween) {
    uint32_t n = (uint32_t)w.frames.size();
    if (closed_) {
      ctr_[C_TX_DROPPED_ERROR] += n;
      return 0;
    }
    if (qcount_ > 0) DrainQueue();
    inline_ = n <= kInlineFrames;
    if (QueueTooSlow()) {
      dropQueueMain_ += n;
      if (threaded_) SyncCounters();
      return 0;
    }
    // The order to write them in: sparse flows first (sparse.h).
    std::vector<sparse::Frame>& frames = w.frames;
    std::vector<uint32_t>& order = w.order;
    uint32_t sparseFirst = sparse::Order(frames.data(), n, &order, &w.sparse);
    if (sparseFirst == n) sparseFirst = 0;  // all sparse: nothing went ahead of anything
    ctr_[C_TX_SPARSE_FIRST] += sparseFirst;
    uint32_t accepted = 0;
    uint32_t i = 0;
    uint32_t writes = 0;
    while (i < n) {
      if (i == sparseFirst && sparseFirst > 0 && readBetween && !threaded_) {
        writeDepth_++;
        ReadNowIfIdle();
        writeDepth_--;
        if (closed_) {  // onRead closed the TAP: the bulk cannot be written any more
          DroppedError(n - i, EBADF);
          return accepted;
        }
      }
      if (yieldEvery_ != 0 && !threaded_ && writes == yieldEvery_) {
        // Each write runs the receiving stack at once and queues on an application's socket; let that
        // application (or a guest's QEMU) take its share of the CPU before the next yieldEvery_ frames.
        writes = 0;
        sched_yield();
        ctr_[C_TX_YIELDS]++;
      }
      writes++;
      uint8_t* data = frames[order[i]].data;
      size_t len = frames[order[i]].len;
      if (len == kBadFrame) {
        DroppedError(1, EINVAL);
        i++;
        continue;
      }
      gro::Seg first;
      if (!info_.vnet || !gro::Parse(data, len, &first) || ((groBroken_ | groOff_) & (1u << first.kind))) {
        accepted += Emit(data, len, info_.vnet, 1, len);
        i++;
        continue;
      }
      segs_.clear();
      segs_.push_back(first);
      size_t payload = first.payload, bytes = len;
      uint32_t j = i + 1;
      for (; j < n; j++) {
        gro::Seg next;
        const sparse::Frame& f2 = frames[order[j]];
        if (f2.len == kBadFrame || !gro::Parse(f2.data, f2.len, &next) ||
            !gro::Follows(first, segs_.back(), next, payload, (int)segs_.size()))
          break;
        segs_.push_back(next);
        payload += next.payload;
        bytes += f2.len;
      }
      if (segs_.size() == 1) {
        accepted += Emit(data, len, true, 1, len);
      } else {
        gro::Build(segs_.data(), (int)segs_.size(), payload, &merged_);
        accepted += EmitMerged((uint32_t)segs_.size(), bytes);
      }
      i = j;
    }
    ctr_[C_TX_QUEUED] = (double)qcount_;
    if (threaded_) SyncCounters();
    UpdatePoll();
    return accepted;
  }

  Napi::Value SyncCountersJs(const Napi::CallbackInfo& info) {
    if (threaded_ && !closed_) SyncCounters();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseNow(true);
    return info.Env().Undefined();
  }

  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), info_.name); }
  Napi::Value GetIfindex(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), info_.ifindex); }
  Napi::Value GetMac(const Napi::CallbackInfo& info) { return Napi::Buffer<uint8_t>::Copy(info.Env(), info_.mac, 6); }
  Napi::Value GetMtu(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), info_.mtu); }
  Napi::Value GetPersistent(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), info_.persistent); }
  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  // setExpress(express | null): lone frames are offered to the express path (native/express.cc) first.
  Napi::Value SetExpress(const Napi::CallbackInfo& info) {
    if (express_ != nullptr) express::DetachTap(express_, this);
    express_ = closed_ ? nullptr : express::EngineArg(info.Env(), info[0]);
    if (express_ != nullptr) express::AttachTap(express_, this);
    return info.Env().Undefined();
  }

  // express::TapPort
  void ExpressWrite(const sparse::Frame* frames, uint32_t n, bool readBetween) override {
    WriteScratch& w = Scratch();
    w.frames.assign(frames, frames + n);
    WriteFrames(w, readBetween);
  }
  void ExpressReadNow() override { ReadNowIfIdle(); }
  void ExpressGone() override { express_ = nullptr; }

  // readNow(): reads what the TAP holds now, as a wake-up would (onRead is called, synchronously, if there is
  // anything), without waiting for the poll. The daemon calls it right after writing a receive batch to the
  // TAP: the kernel answers some frames within the write itself (an ICMP echo, TCP ACKs), and reading the
  // answer in the same turn saves an event-loop wake-up per round trip. Does nothing inside onRead.
  Napi::Value ReadNow(const Napi::CallbackInfo& info) {
    ReadNowIfIdle();
    return info.Env().Undefined();
  }

  void ReadNowIfIdle() {
    if (!closed_ && reading_ && !inCallback_ && slab_ != nullptr) ReadBatch();
  }

  // --- internals ---
  // A frame read with its virtio_net_hdr: copied into the slab as it is, with its checksum
  // completed, or cut into segments (TSO). Delivers the batch first when the segments would not fit.
  // False if the frame was malformed (dropped).
  bool TakeOffloaded(const uint8_t* hdr, uint8_t* f, size_t len, size_t* n, size_t* taken) {
    gso::VnetHdr h = gso::ReadHdr(hdr);
    if (h.gsoType == 0) {
      if (len > stride_) return false;
      if ((h.flags & gro::kVnetFlagNeedsCsum) && !gso::CompleteChecksum(f, len, h)) return false;
      std::memcpy(slab_ + *n * stride_, f, len);
      lens_[(*n)++] = (uint32_t)len;
      (*taken)++;
      return true;
    }
    size_t hdrs = 0;
    bool tcp = h.gsoType == gro::kVnetGsoTcpV4 || h.gsoType == gro::kVnetGsoTcpV6;
    size_t k = tcp ? gso::SegmentCount(f, len, h, &hdrs) : 0;
    if (k == 0 || k > maxFrames_ || hdrs + h.gsoSize > stride_) return false;
    if (*n + k > maxFrames_) {
      Deliver(*n);
      *n = 0;
      if (closed_ || !reading_) return true;
    }
    gso::Segment(f, len, h, hdrs, slab_ + *n * stride_, stride_, lens_ + *n);
    *n += k;
    *taken += k;
    ctr_[C_RX_SEGMENTED] += (double)k;
    return true;
  }

  // Writes the frame made of iov[0..n) with one writev(), or queues a copy of it behind a non-empty queue or
  // on EAGAIN. Returns the frames accepted; *refused is the errno of a write the kernel refused, else 0.
  uint32_t Put(const iovec* iov, int n, uint32_t frames, size_t bytes, int* refused) {
    *refused = 0;
    if (threaded_) return PutThreaded(iov, n, frames, bytes, refused);
    if (qcount_ == 0) {
      ssize_t w;
      do w = writev(fd_, iov, n);
      while (w < 0 && errno == EINTR);
      if (w >= 0) {
        Written(frames, bytes);
        return frames;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *refused = errno;
        return 0;
      }
      ctr_[C_TX_EAGAIN]++;
    }
    if (qcount_ >= ring_.size()) {
      ctr_[C_TX_DROPPED_QUEUE] += frames;
      return 0;
    }
    std::vector<uint8_t>& slot = ring_[(qhead_ + qcount_) % ring_.size()];  // reuses the slot's capacity
    slot.clear();
    for (int i = 0; i < n; i++) {
      const uint8_t* b = static_cast<const uint8_t*>(iov[i].iov_base);
      slot.insert(slot.end(), b, b + iov[i].iov_len);
    }
    qcount_++;
    return frames;
  }

  // Writer thread: inline when allowed and nothing is queued, else queued for the thread.
  uint32_t PutThreaded(const iovec* iov, int n, uint32_t frames, size_t bytes, int* refused) {
    if ((inline_ || forceInline_) && writer_.Empty()) {
      ssize_t w;
      do w = writev(fd_, iov, n);
      while (w < 0 && errno == EINTR);
      if (w >= 0) {
        aFrames_.fetch_add(frames, std::memory_order_relaxed);
        aBytes_.fetch_add(bytes, std::memory_order_relaxed);
        aWrites_.fetch_add(1, std::memory_order_relaxed);
        return frames;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *refused = errno;
        return 0;
      }
      aEagain_.fetch_add(1, std::memory_order_relaxed);
    }
    size_t size = bytes + (info_.vnet ? gro::kVnetHdrBytes : 0);
    Unit* u = writer_.Reserve();
    if (u == nullptr || (queueBytesMax_ > 0 && !writer_.Empty() &&
                         queuedBytes_.load(std::memory_order_relaxed) + size > queueBytesMax_)) {
      dropQueueMain_ += frames;
      return 0;
    }
    queuedBytes_.fetch_add(size, std::memory_order_relaxed);
    u->bytes.clear();
    for (int i = 0; i < n; i++) {
      const uint8_t* b = static_cast<const uint8_t*>(iov[i].iov_base);
      u->bytes.insert(u->bytes.end(), b, b + iov[i].iov_len);
    }
    u->frames = frames;
    u->queuedNs = delay::MonotonicNs();
    writer_.Publish();
    return frames;
  }

  // The writer thread: one unit (noting how long it waited), waiting out EAGAIN.
  void WriteUnit(Unit& u) {
    lastSojournNs_.store(delay::MonotonicNs() - u.queuedNs, std::memory_order_relaxed);
    WriteUnitNow(u);
    queuedBytes_.fetch_sub(u.bytes.size(), std::memory_order_relaxed);
  }

  void WriteUnitNow(Unit& u) {
    for (;;) {
      ssize_t w = write(fd_, u.bytes.data(), u.bytes.size());
      if (w >= 0) {
        aFrames_.fetch_add(u.frames, std::memory_order_relaxed);
        aBytes_.fetch_add(u.bytes.size() - (info_.vnet ? gro::kVnetHdrBytes : 0), std::memory_order_relaxed);
        aWrites_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        aEagain_.fetch_add(1, std::memory_order_relaxed);
        pollfd p = {fd_, POLLOUT, 0};
        (void)poll(&p, 1, 50);
        if (writer_.Stopping()) break;
        continue;
      }
      aErrno_.store(errno, std::memory_order_relaxed);
      break;
    }
    aDropErr_.fetch_add(u.frames, std::memory_order_relaxed);
  }

  // Writer thread: is the queue already too slow? Judged by how long the unit the thread wrote last had waited
  // (none when the queue is empty). Then the whole batch is refused, not single frames: the frames of a batch
  // belong together (IP fragments of one datagram, a TCP run), and a lost fragment holds the receiver's
  // reassembly memory for 30 s.
  bool QueueTooSlow() {
    if (!threaded_ || writer_.Empty()) return false;
    return lastSojournNs_.load(std::memory_order_relaxed) > delay::kQueueDelayMaxNs;
  }

  // Writer thread: the thread's counters into the shared array (the main thread's own go there directly).
  void SyncCounters() {
    ctr_[C_TX_FRAMES] = (double)aFrames_.load(std::memory_order_relaxed);
    ctr_[C_TX_BYTES] = (double)aBytes_.load(std::memory_order_relaxed);
    ctr_[C_TX_WRITES] = (double)aWrites_.load(std::memory_order_relaxed);
    ctr_[C_TX_EAGAIN] = (double)aEagain_.load(std::memory_order_relaxed);
    ctr_[C_TX_DROPPED_ERROR] = (double)aDropErr_.load(std::memory_order_relaxed);
    ctr_[C_TX_DROPPED_QUEUE] = dropQueueMain_;
    int e = aErrno_.load(std::memory_order_relaxed);
    if (e != 0) ctr_[C_LAST_ERRNO] = e;
    ctr_[C_TX_QUEUED] = (double)writer_.Size();
  }

  void DroppedError(uint32_t frames, int err) {
    if (threaded_) {
      aDropErr_.fetch_add(frames, std::memory_order_relaxed);
      aErrno_.store(err, std::memory_order_relaxed);
    } else {
      ctr_[C_TX_DROPPED_ERROR] += frames;
      ctr_[C_LAST_ERRNO] = err;
    }
  }

  void Refused(int err, uint32_t frames) { DroppedError(frames, err); }

  // One frame as it came (with an all-zero virtio_net_hdr in front when zeroHdr).
  uint32_t Emit(const uint8_t* data, size_t len, bool zeroHdr, uint32_t frames, size_t bytes) {
    static const uint8_t kZero[gro::kVnetHdrBytes] = {};
    iovec iov[2];
    int n = 0;
    if (zeroHdr) iov[n++] = {const_cast<uint8_t*>(kZero), gro::kVnetHdrBytes};
    iov[n++] = {const_cast<uint8_t*>(data), len};
    int refused;
    uint32_t ok = Put(iov, n, frames, bytes, &refused);
    if (refused != 0) Refused(refused, frames);
    return ok;
  }

  // merged_ (a coalesced frame with its header). A kernel that refuses it (EINVAL: e.g. no UDP GSO from a
  // TAP before Linux 6.2) gets that kind's segments one by one from now on.
  uint32_t EmitMerged(uint32_t frames, size_t bytes) {
    iovec iov = {merged_.data(), merged_.size()};
    int refused;
    // Writer thread: the first coalesced frame of each kind is written here, after the queue drained, so a
    // kernel that refuses the kind says so to us (and gets segments) rather than to the thread.
    uint32_t kind = 1u << segs_[0].kind;
    bool probe = threaded_ && !(provenKinds_ & kind);
    if (probe) {
      while (!writer_.Empty()) std::this_thread::yield();
      forceInline_ = true;
    }
    uint32_t ok = Put(&iov, 1, frames, bytes, &refused);
    forceInline_ = false;
    if (probe && ok > 0 && writer_.Empty()) provenKinds_ |= kind;
    if (ok > 0) ctr_[C_TX_COALESCED] += frames;
    if (refused == EINVAL) {
      groBroken_ |= 1u << segs_[0].kind;
      ctr_[C_LAST_ERRNO] = EINVAL;
      for (const gro::Seg& sg : segs_) ok += Emit(sg.f, sg.len, true, 1, sg.len);
    } else if (refused != 0) {
      Refused(refused, frames);
    }
    return ok;
  }

  void Written(uint32_t frames, size_t bytes) {
    ctr_[C_TX_FRAMES] += frames;
    ctr_[C_TX_BYTES] += (double)bytes;
    ctr_[C_TX_WRITES]++;
  }

  static bool Frame(napi_env env, napi_value arr, uint32_t i, uint8_t** data, size_t* len) {
    napi_value v;
    void* d = nullptr;
    if (napi_get_element(env, arr, i, &v) != napi_ok) return false;
    if (napi_get_buffer_info(env, v, &d, len) != napi_ok) {
      // A Uint8Array that is not a Buffer (napi_get_buffer_info accepts those on current Node anyway).
      napi_typedarray_type type;
      size_t length, offset;
      napi_value ab;
      if (napi_get_typedarray_info(env, v, &type, &length, &d, &ab, &offset) != napi_ok || type != napi_uint8_array)
        return false;
      *len = length;
    }
    *data = static_cast<uint8_t*>(d);
    return d != nullptr || *len == 0;
  }

  void UpdatePoll() {
    if (box_ == nullptr) return;
    if (reading_ && heldCount_ > 0)
      uv_idle_start(&box_->idle, OnIdle);  // no-ops when already in that state
    else
      uv_idle_stop(&box_->idle);
    int want = (reading_ ? UV_READABLE : 0) | (qcount_ > 0 ? UV_WRITABLE : 0);
    if (want == events_) return;
    int rc = want ? uv_poll_start(&box_->poll, want, OnPoll) : uv_poll_stop(&box_->poll);
    if (rc != 0) {
      ctr_[C_LAST_ERRNO] = -rc;
      want = 0;
    }
    events_ = want;
  }

  void DrainQueue() {
    while (qcount_ > 0) {
      std::vector<uint8_t>& s = ring_[qhead_];
      ssize_t w = write(fd_, s.data(), s.size());
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          ctr_[C_TX_EAGAIN]++;
          break;
        }
        Refused(errno, 1);
      } else {
        Written(1, s.size());
      }
      qhead_ = (qhead_ + 1) % ring_.size();
      qcount_--;
    }
    if (qcount_ == 0) qhead_ = 0;
    ctr_[C_TX_QUEUED] = (double)qcount_;
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    PollBox* box = static_cast<PollBox*>(handle->data);
    Tap* t = box->owner;
    if (t == nullptr) return;
    if (status < 0) {
      // libuv stopped the handle (POLLERR): the fd is broken, e.g. the interface was deleted.
      t->events_ = 0;
      t->ctr_[C_RX_ERRORS]++;
      t->ctr_[C_LAST_ERRNO] = -status;
      t->ctr_[C_TX_DROPPED_ERROR] += (double)t->qcount_;
      t->qcount_ = t->qhead_ = 0;
      t->ctr_[C_TX_QUEUED] = 0;
      t->FailReading(-status);
      return;
    }
    if (events & UV_WRITABLE) {
      t->DrainQueue();
      t->UpdatePoll();
    }
    if ((events & UV_READABLE) && t->reading_) t->ReadBatch();
  }

  // A loop turn with frames held: their next share (the poll is not waited on while this handle runs).
  static void OnIdle(uv_idle_t* handle) {
    PollBox* box = static_cast<PollBox*>(handle->data);
    Tap* t = box->owner;
    if (t == nullptr) return;
    if (t->reading_ && t->heldCount_ > 0)
      t->ReadBatch();
    else
      t->UpdatePoll();
  }

  void ReadBatch() {
    size_t taken = 0;  // frames taken this turn (delivered ones too): at most maxFrames_ of each kind
    int err = info_.vnet ? ReadAhead(&taken) : ReadPlain(&taken);
    if (closed_ || !reading_) return;  // a callback closed or stopped us
    UpdatePoll();                      // held frames left: the idle handle brings their next share
    if (err == 0) {
      errWakeups_ = 0;
      return;
    }
    ctr_[C_RX_ERRORS]++;
    ctr_[C_LAST_ERRNO] = err;
    // A transient error (one bad frame) is counted and skipped. The device being gone, or errors
    // on every wake-up (the poll would spin), stops reading.
    errWakeups_ = taken > 0 ? 0 : errWakeups_ + 1;
    if (err == EBADFD || err == EBADF || err == ENODEV || err == ENXIO || errWakeups_ >= 1000) FailReading(err);
  }

  // No offloads: frames straight into the slab, up to maxFrames_, then one delivery. Returns a read's errno, or 0.
  int ReadPlain(size_t* taken) {
    size_t n = 0;
    int err = 0;
    while (n < maxFrames_) {
      ssize_t r = read(fd_, slab_ + n * stride_, stride_);
      if (r > 0) {
        lens_[n++] = (uint32_t)r;
      } else if (r == 0) {
        break;
      } else if (errno == EINTR) {
        continue;
      } else {
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
    }
    *taken = n;
    if (n == maxFrames_) ctr_[C_RX_WAKEUPS_FULL]++;
    if (n > 0) Deliver(n);
    return err;
  }

  // Offloads on: the TAP's ring is read ahead into slots of our own, as far as there are free ones. A TSO frame
  // (a TCP stream's 64 KB), and any frame of a flow with frames held, is held; any other frame (an echo, an
  // ACK, a DNS answer, a UDP stream's datagrams) goes into the slab at once and is delivered first. Then the
  // held frames in order, about kHeldShare segments this turn; the rest in the next turns (the idle handle),
  // each after the mesh's socket had its turn. Under a TCP stream its standing queue was in the kernel's ring,
  // where a ping waited behind it; now it is here, and the ping goes ahead of it. No flow's frames are
  // reordered (a flow with frames held is held whole); frames of different flows had no order to keep.
  int ReadAhead(size_t* taken) {
    size_t n = 0, reads = 0;
    int err = 0;
    while (n < maxFrames_ && heldCount_ < kHeldMax && reads < maxFrames_ + kHeldMax) {
      Held& h = held_[(heldHead_ + heldCount_) % kHeldMax];
      if (h.buf.empty()) h.buf.resize(kHeldBytes);
      struct iovec iov[2] = {{h.hdr, gro::kVnetHdrBytes}, {h.buf.data(), h.buf.size()}};
      ssize_t r = readv(fd_, iov, 2);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno;
        break;
      }
      if (r == 0) break;
      reads++;
      h.len = r > (ssize_t)gro::kVnetHdrBytes ? (size_t)r - gro::kVnetHdrBytes : 0;
      if (h.len == 0) continue;
      // The flow key only matters while something is held or this frame will be.
      bool tso = gso::ReadHdr(h.hdr).gsoType != 0;
      if (tso || heldCount_ > 0) h.key = sparse::FlowKey(h.buf.data(), h.len);
      if (tso || Holds(h.key)) {
        heldCount_++;
        continue;
      }
      if (heldCount_ > 0) ctr_[C_RX_AHEAD]++;
      if (!TakeOffloaded(h.hdr, h.buf.data(), h.len, &n, taken)) ctr_[C_RX_ERRORS]++;
    }
    if (n > 0) {
      Deliver(n);
      if (closed_ || !reading_) return 0;
      n = 0;
    }
    size_t share = 0;  // segments of held frames taken this turn
    while (heldCount_ > 0 && share < kHeldShare) {
      Held& h = held_[heldHead_];
      heldHead_ = (heldHead_ + 1) % kHeldMax;
      heldCount_--;
      size_t before = *taken;
      if (!TakeOffloaded(h.hdr, h.buf.data(), h.len, &n, taken)) {
        ctr_[C_RX_ERRORS]++;
        (*taken)++;
      }
      if (closed_ || !reading_) return 0;
      share += *taken - before;
    }
    if (heldCount_ > 0) ctr_[C_RX_WAKEUPS_FULL]++;
    if (heldCount_ == 0) heldHead_ = 0;
    if (n > 0) Deliver(n);
    return err;
  }

  bool Holds(uint64_t key) const {
    for (size_t i = 0; i < heldCount_; i++)
      if (held_[(heldHead_ + i) % kHeldMax].key == key) return true;
    return false;
  }

  // A wake-up's n frames in the slab: the express path (native/express.cc) sends a leading run of them, the
  // rest moves to the front of the slab and goes to JavaScript.
  void Deliver(size_t n) {
    size_t k = express_ != nullptr ? express::FromTap(express_, slab_, stride_, lens_, (uint32_t)n) : 0;
    if (k == n) return;
    if (k > 0) {
      std::memmove(slab_, slab_ + k * stride_, (n - k) * stride_);
      std::memmove(lens_, lens_ + k, (n - k) * sizeof lens_[0]);
    }
    CallRead((int32_t)(n - k));
  }

  void FailReading(int err) {
    if (!reading_) return;
    reading_ = false;
    UpdatePoll();
    CallRead(-err);
    if (!closed_ && !reading_) ReleaseReader(true);
  }

  void CallRead(int32_t value) {
    napi_env env = Env();
    Napi::HandleScope scope(env);
    napi_value fn = onRead_.Value();
    napi_value recv = Value(), arg, result;  // napi_make_callback wants an object receiver
    napi_create_int32(env, value, &arg);
    inCallback_ = true;
    napi_status st = napi_make_callback(env, asyncCtx_, recv, fn, 1, &arg, &result);
    inCallback_ = false;
    if (ctxToDestroy_ != nullptr) {  // released by close()/stopReading() inside the callback
      napi_async_destroy(env, ctxToDestroy_);
      ctxToDestroy_ = nullptr;
    }
    if (st == napi_pending_exception) {
      // Like an exception thrown in any I/O callback: 'uncaughtException', by default fatal.
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
    }
  }

  void ReleaseReader(bool fromJs) {
    onRead_.Reset();
    slabRef_.Reset();
    lensRef_.Reset();
    slab_ = nullptr;
    lens_ = nullptr;
    if (asyncCtx_ != nullptr && fromJs) {
      if (inCallback_)
        ctxToDestroy_ = asyncCtx_;  // still in use by the running napi_make_callback
      else
        napi_async_destroy(Env(), asyncCtx_);
    }
    asyncCtx_ = nullptr;  // at teardown/finalization it is leaked rather than destroyed
  }

  void CloseNow(bool fromJs) {
    if (closed_) return;
    closed_ = true;
    if (express_ != nullptr) express::DetachTap(express_, this);
    express_ = nullptr;
    reading_ = false;
    if (box_ != nullptr) {
      uv_poll_stop(&box_->poll);
      box_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&box_->poll), OnPollClosed);
      uv_idle_stop(&box_->idle);
      uv_close(reinterpret_cast<uv_handle_t*>(&box_->idle), OnPollClosed);
      box_ = nullptr;
    }
    heldHead_ = heldCount_ = 0;  // frames read ahead go with the TAP, as the kernel's ring does
    events_ = 0;
    if (threaded_ && writer_.Running()) {
      writer_.Stop();  // joins: the thread is done with the fd before it is closed
      aDropErr_.fetch_add(writer_.Size(), std::memory_order_relaxed);
      if (ctr_ != nullptr) SyncCounters();
    }
    if (fd_ >= 0) {
      close(fd_);  // safe right after uv_poll_stop(); the TAP disappears now (unless persistent)
      fd_ = -1;
    }
    if (ctr_ != nullptr) {
      ctr_[C_TX_DROPPED_ERROR] += (double)qcount_;
      ctr_[C_TX_QUEUED] = 0;
    }
    qcount_ = qhead_ = 0;
    std::vector<std::vector<uint8_t>>().swap(ring_);
    ReleaseReader(fromJs);
  }

  static void OnPollClosed(uv_handle_t* handle) {
    PollBox* box = static_cast<PollBox*>(handle->data);
    if (--box->handles > 0) return;
    if (box->hook != nullptr) napi_remove_async_cleanup_hook(box->hook);  // also "done" for OnEnvTeardown
    delete box;
  }

  // Environment teardown (worker exit, process end): close, and let the close callback say done.
  static void OnEnvTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
    PollBox* box = static_cast<PollBox*>(arg);
    if (box->owner != nullptr) box->owner->CloseNow(false);
  }

  int fd_ = -1;
  express::Engine* express_ = nullptr;
  OpenResult info_;
  PollBox* box_ = nullptr;
  int events_ = 0;
  bool closed_ = false;
  bool reading_ = false;
  // reading
  uint32_t errWakeups_ = 0;  // consecutive wake-ups that read nothing but an error
  uint8_t* slab_ = nullptr;
  uint32_t* lens_ = nullptr;
  size_t stride_ = 0, maxFrames_ = 0;
  Napi::ObjectReference slabRef_, lensRef_;
  Napi::FunctionReference onRead_;
  napi_async_context asyncCtx_ = nullptr;
  napi_async_context ctxToDestroy_ = nullptr;
  bool inCallback_ = false;
  // counters
  double* ctr_ = nullptr;
  Napi::ObjectReference ctrRef_;
  // write queue: ring of reusable slots (with their virtio_net_hdr when info_.vnet)
  std::vector<std::vector<uint8_t>> ring_;
  // coalescing (gro.h)
  std::vector<gro::Seg> segs_;
  // reading ahead (offloads on): a ring of slots, each one read with its virtio_net_hdr (ReadAhead)
  struct Held {
    uint8_t hdr[gro::kVnetHdrBytes];
    std::vector<uint8_t> buf;  // allocated at first use, then reused
    size_t len = 0;
    uint64_t key = 0;  // sparse::FlowKey
  };
  std::vector<Held> held_;
  size_t heldHead_ = 0, heldCount_ = 0;
  std::vector<uint8_t> merged_;
  // Kinds not coalesced by choice. UDP runs are off by default: the receiving stack hands a coalesced run to a
  // socket that did not ask for UDP_GRO as one burst of up to 64 datagrams, which overflows a default-size
  // receive buffer (an application's own socket behind the TAP) where single frames would not.
  uint32_t groOff_ = 0;
  // A long batch (a receive wake-up's worth of datagrams) written in one go runs the receiving stack for every
  // frame within our time slice and fills an application's socket faster than it can be scheduled to drain it:
  // with a default 208 KB buffer (~100 datagrams of 1400 B) iperf3 -u lost 1.3-3.9 % at 350 Mbit/s here, nearly
  // all at its own socket. A sched_yield() after every yieldEvery_ writes lets it run (0.6-2.3 %).
  uint32_t yieldEvery_ = 0;
  std::vector<std::unique_ptr<WriteScratch>> writeScratch_;
  size_t writeDepth_ = 0;
  uint32_t groBroken_ = 0;  // kinds (bits) whose coalesced frames the kernel refused: written one by one
  size_t qhead_ = 0, qcount_ = 0;
  // writer thread (worker.h): the queue, whether this batch may write inline, and the counters it moves
  bool threaded_ = false;
  bool inline_ = false;
  bool forceInline_ = false;
  uint32_t provenKinds_ = 0;  // coalesced kinds (bits) the kernel took from us once: the thread may write them
  worker::Ring<Unit> writer_;
  std::atomic<uint64_t> aFrames_{0}, aBytes_{0}, aWrites_{0}, aEagain_{0}, aDropErr_{0};
  std::atomic<int> aErrno_{0};
  std::atomic<size_t> queuedBytes_{0};
  size_t queueBytesMax_ = 0;
  std::atomic<uint64_t> lastSojournNs_{0};  // how long the unit the thread wrote last had waited
  double dropQueueMain_ = 0;                // frames dropped: the queue was full or too slow
};

// ---- Module functions --------------------------------------------------------------------------
// The options open() and wrapFd() share: counters, the write queue, the writer thread, UDP coalescing, the yield.
bool ReadCommon(Napi::Env env, Napi::Object o, Init* init) {
  Napi::Value c = o.Get("counters");
  if (!c.IsTypedArray() || c.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      c.As<Napi::Float64Array>().ElementLength() < C_COUNT) {
    ThrowType(env, "counters must be a Float64Array of COUNTER_NAMES.length elements");
    return false;
  }
  init->counters = c.As<Napi::Float64Array>();
  Napi::Value q = o.Get("writeQueueMax");
  if (!q.IsNumber() || q.As<Napi::Number>().Int64Value() < 1 || q.As<Napi::Number>().Int64Value() > 1 << 20) {
    ThrowType(env, "writeQueueMax must be a number in 1..1048576");
    return false;
  }
  init->queueMax = q.As<Napi::Number>().Uint32Value();
  Napi::Value b = o.Get("writeQueueBytes");
  init->queueBytes = b.IsNumber() ? (size_t)b.As<Napi::Number>().Int64Value() : 0;
  init->writerThread = o.Get("writerThread").ToBoolean().Value();
  init->coalesceUdp = o.Get("coalesceUdp").ToBoolean().Value();
  Napi::Value y = o.Get("writeYieldFrames");
  init->yieldEvery = y.IsNumber() && y.As<Napi::Number>().Int64Value() > 0 ? y.As<Napi::Number>().Uint32Value() : 0;
  return true;
}

Napi::Value NewTap(Napi::Env env, Init* init) {
  AddonData* data = env.GetInstanceData<AddonData>();
  napi_value ext = Napi::External<Init>::New(env, init);
  return data->tapCtor.New({ext});
}

// open({ name, mtu, bridge?, counters, writeQueueMax }) -> Tap
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return ThrowType(env, "open(options) needs an options object");
  Napi::Object o = info[0].As<Napi::Object>();
  OpenArgs args;
  Napi::Value name = o.Get("name"), mtu = o.Get("mtu"), bridge = o.Get("bridge");
  if (!name.IsString()) return ThrowType(env, "name must be a string");
  if (!mtu.IsNumber()) return ThrowType(env, "mtu must be a number");
  if (!bridge.IsUndefined() && !bridge.IsNull() && !bridge.IsString()) return ThrowType(env, "bridge must be a string");
  args.name = name.As<Napi::String>().Utf8Value();
  args.mtu = mtu.As<Napi::Number>().Int32Value();
  if (bridge.IsString()) args.bridge = bridge.As<Napi::String>().Utf8Value();
  Napi::Value qlen = o.Get("txQueueLen");
  if (qlen.IsNumber()) args.txQueueLen = qlen.As<Napi::Number>().Int32Value();
  Init init{-1, {}, Napi::Float64Array(), 0};
  if (!ReadCommon(env, o, &init)) return env.Undefined();
  SysErr e;
  if (!OpenTap(args, &init.info, &e)) return ThrowSys(env, e);
  init.fd = init.info.fd;
  return NewTap(env, &init);  // on failure the constructor closed the fd and threw
}

// Test hook: wrapFd(fd, { counters, writeQueueMax }) -> Tap over any non-blocking datagram fd.
Napi::Value WrapFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsObject())
    return ThrowType(env, "wrapFd(fd, { counters, writeQueueMax })");
  Init init{info[0].As<Napi::Number>().Int32Value(), {}, Napi::Float64Array(), 0};
  if (!ReadCommon(env, info[1].As<Napi::Object>(), &init)) return env.Undefined();
  init.info.fd = init.fd;
  init.info.name = "fd" + std::to_string(init.fd);
  fcntl(init.fd, F_SETFL, fcntl(init.fd, F_GETFL) | O_NONBLOCK);
  return NewTap(env, &init);
}

// Test hook: socketPair(sndbufBytes) -> [fdA, fdB], AF_UNIX SOCK_DGRAM, non-blocking, close-on-exec.
// Datagrams keep frame boundaries like a TAP, and a small send buffer makes write() say EAGAIN.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
    SysErr e;
    SetErr(&e, errno, "socketpair", "socketpair failed: " + Describe(errno));
    return ThrowSys(env, e);
  }
  if (info.Length() > 0 && info[0].IsNumber()) {
    int sz = info[0].As<Napi::Number>().Int32Value();
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, sv[0]));
  a.Set(1u, Napi::Number::New(env, sv[1]));
  return a;
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  InitUdp(env, exports);
  InitUdpRx(env, exports);
  InitAead(env, exports);
  InitExpress(env, exports);
  AddonData* data = new AddonData();
  data->tapCtor = Napi::Persistent(Tap::Define(env));
  env.SetInstanceData<AddonData>(data);
  Napi::Array names = Napi::Array::New(env, C_COUNT);
  for (uint32_t i = 0; i < C_COUNT; i++) names.Set(i, Napi::String::New(env, kCounterNames[i]));
  exports.Set("COUNTER_NAMES", names);
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("wrapFd", Napi::Function::New(env, WrapFd, "wrapFd"));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  return exports;
}

}  // namespace

NODE_API_MODULE(homewire_tap, InitModule)
