// bench/floor: the smallest encrypted L2 data path inside Node's own event loop, as a yardstick for homewire's
// per-packet cost (not part of homewire). Two uv_poll callbacks on the main thread, no JavaScript per packet:
//   TAP readable: read a frame, seal it (ChaCha20-Poly1305 through Node's OpenSSL, the 12-byte header of
//                 homewire's transport message as AAD, the counter in the nonce), send it on a connected socket
//   UDP readable: receive, refuse a counter not above the last one, open, write the frame to the TAP
// One fixed key, one peer, no handshake: it measures what a native fast path could cost, nothing more.
//   start(tap: string, localPort: number, peer: string (IPv4), peerPort: number, key: 32-byte Buffer)
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <node_api.h>
#include <openssl/evp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <cstring>

namespace {

constexpr size_t kHeader = 12;
constexpr size_t kTag = 16;
constexpr size_t kFrameMax = 2048;

int tap_fd = -1;
int udp_fd = -1;
uv_poll_t tap_poll;
uv_poll_t udp_poll;
EVP_CIPHER_CTX* enc = nullptr;
EVP_CIPHER_CTX* dec = nullptr;
uint64_t send_counter = 1;
uint64_t last_received = 0;

void Nonce(uint64_t counter, uint8_t nonce[12]) {
  std::memset(nonce, 0, 4);
  std::memcpy(nonce + 4, &counter, 8);
}

void OnTap(uv_poll_t*, int, int) {
  uint8_t frame[kFrameMax];
  uint8_t out[kHeader + kFrameMax + kTag];
  for (;;) {
    ssize_t n = read(tap_fd, frame, sizeof frame);
    if (n <= 0) return;
    uint64_t c = send_counter++;
    std::memset(out, 0, kHeader);
    out[0] = 4;
    std::memcpy(out + 8, &c, 4);
    uint8_t nonce[12];
    Nonce(c, nonce);
    int len = 0;
    EVP_EncryptInit_ex(enc, nullptr, nullptr, nullptr, nonce);
    EVP_EncryptUpdate(enc, nullptr, &len, out, kHeader);
    EVP_EncryptUpdate(enc, out + kHeader, &len, frame, (int)n);
    EVP_EncryptFinal_ex(enc, out + kHeader + len, &len);
    EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, kTag, out + kHeader + n);
    send(udp_fd, out, kHeader + n + kTag, 0);
  }
}

void OnUdp(uv_poll_t*, int, int) {
  uint8_t in[kHeader + kFrameMax + kTag];
  uint8_t frame[kFrameMax];
  for (;;) {
    ssize_t n = recv(udp_fd, in, sizeof in, MSG_DONTWAIT);
    if (n < 0) return;
    if ((size_t)n < kHeader + kTag || in[0] != 4) continue;
    uint32_t low;
    std::memcpy(&low, in + 8, 4);
    uint64_t c = low;
    if (c <= last_received) continue;
    uint8_t nonce[12];
    Nonce(c, nonce);
    size_t m = n - kHeader - kTag;
    int len = 0;
    EVP_DecryptInit_ex(dec, nullptr, nullptr, nullptr, nonce);
    EVP_DecryptUpdate(dec, nullptr, &len, in, kHeader);
    EVP_DecryptUpdate(dec, frame, &len, in + kHeader, (int)m);
    EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, kTag, in + kHeader + m);
    if (EVP_DecryptFinal_ex(dec, frame + len, &len) != 1) continue;
    last_received = c;
    if (write(tap_fd, frame, m) < 0) continue;
  }
}

napi_value Fail(napi_env env, const char* what) {
  napi_throw_error(env, nullptr, what);
  return nullptr;
}

napi_value Start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value a[5];
  napi_get_cb_info(env, info, &argc, a, nullptr, nullptr);
  if (argc != 5) return Fail(env, "start(tap, localPort, peer, peerPort, key)");
  char name[IFNAMSIZ] = {0};
  char peer[64] = {0};
  size_t got;
  int32_t local_port, peer_port;
  void* key;
  size_t key_len;
  napi_get_value_string_utf8(env, a[0], name, sizeof name, &got);
  napi_get_value_int32(env, a[1], &local_port);
  napi_get_value_string_utf8(env, a[2], peer, sizeof peer, &got);
  napi_get_value_int32(env, a[3], &peer_port);
  if (napi_get_buffer_info(env, a[4], &key, &key_len) != napi_ok || key_len != 32) return Fail(env, "key: 32 bytes");

  tap_fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  struct ifreq ifr = {};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::memcpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (tap_fd < 0 || ioctl(tap_fd, TUNSETIFF, &ifr) < 0) return Fail(env, "cannot create the TAP (root?)");

  udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in local = {};
  local.sin_family = AF_INET;
  local.sin_port = htons(local_port);
  struct sockaddr_in remote = {};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(peer_port);
  if (inet_pton(AF_INET, peer, &remote.sin_addr) != 1) return Fail(env, "peer: an IPv4 address");
  if (bind(udp_fd, (struct sockaddr*)&local, sizeof local) < 0) return Fail(env, "cannot bind the UDP port");
  if (connect(udp_fd, (struct sockaddr*)&remote, sizeof remote) < 0) return Fail(env, "cannot connect the socket");

  enc = EVP_CIPHER_CTX_new();
  dec = EVP_CIPHER_CTX_new();
  EVP_EncryptInit_ex(enc, EVP_chacha20_poly1305(), nullptr, static_cast<uint8_t*>(key), nullptr);
  EVP_DecryptInit_ex(dec, EVP_chacha20_poly1305(), nullptr, static_cast<uint8_t*>(key), nullptr);

  uv_loop_t* loop;
  napi_get_uv_event_loop(env, &loop);
  uv_poll_init(loop, &tap_poll, tap_fd);
  uv_poll_start(&tap_poll, UV_READABLE, OnTap);
  uv_poll_init(loop, &udp_poll, udp_fd);
  uv_poll_start(&udp_poll, UV_READABLE, OnUdp);
  return nullptr;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value f;
  napi_create_function(env, "start", NAPI_AUTO_LENGTH, Start, nullptr, &f);
  napi_set_named_property(env, exports, "start", f);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
