// ChaCha20-Poly1305 (RFC 8439) for the mesh's transport messages, one key per object, through the OpenSSL that
// Node itself carries (its EVP symbols are exported to addons; the headers come with Node's).
//
// sodium-native needs one JS call with five Buffer arguments per packet, three of them fresh subarrays of the
// datagram; here a packet is one call with the datagram alone: the wire format fixes where everything is.
//   transport message: header (12 bytes: type, 3 reserved, receiver index, counter's low 32 bits LE) | ciphertext
//   | tag. AAD = the header; nonce = 4 zero bytes | the full 64-bit counter LE (as WireGuard): its low half from
//   the header, its high half from the caller (the receiver reconstructs it from its replay window).
//
//   new AeadKey(key: 32-byte Buffer)      the EVP context is keyed once; the caller may wipe its copy
//   .open(msg, counterHigh) -> plaintext length, or -1 if not authentic (msg is decrypted in place)
//   .seal(out, payload, counterHigh) -> 0, or -1   out[0..12) holds the header; out = header | ciphertext | tag
//   .wipe()                               frees the context (OpenSSL cleanses the key); later calls return -1
#include <napi.h>
#include <openssl/evp.h>

#include "aead.h"
#include "tagged.h"

#include <cstdint>
#include <cstring>

namespace {

constexpr size_t kHeader = 12;
constexpr size_t kTag = 16;
constexpr size_t kKey = 32;

class AeadKey : public Napi::ObjectWrap<AeadKey> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "AeadKey",
                       {
                           InstanceMethod<&AeadKey::Open>("open"),
                           InstanceMethod<&AeadKey::Seal>("seal"),
                           InstanceMethod<&AeadKey::Wipe>("wipe"),
                       });
  }

  explicit AeadKey(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AeadKey>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsBuffer() || info[0].As<Napi::Buffer<uint8_t>>().Length() != kKey) {
      Napi::TypeError::New(env, "new AeadKey(key: 32-byte Buffer)").ThrowAsJavaScriptException();
      return;
    }
    const uint8_t* key = info[0].As<Napi::Buffer<uint8_t>>().Data();
    napi_type_tag_object(env, info.This(), &aead::kTypeTag);  // native/express.cc finds its keys by this tag
    enc_ = NewCtx(key, 1);
    dec_ = NewCtx(key, 0);
    if (enc_ == nullptr || dec_ == nullptr) {
      Free();
      Napi::Error::New(env, "ChaCha20-Poly1305 is not available from Node's OpenSSL").ThrowAsJavaScriptException();
    }
  }

  ~AeadKey() override { Free(); }

 private:
  static EVP_CIPHER_CTX* NewCtx(const uint8_t* key, int enc) {
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    if (c == nullptr) return nullptr;
    if (EVP_CipherInit_ex(c, EVP_chacha20_poly1305(), nullptr, key, nullptr, enc) != 1) {
      EVP_CIPHER_CTX_free(c);
      return nullptr;
    }
    return c;
  }

  void Free() {
    if (enc_ != nullptr) EVP_CIPHER_CTX_free(enc_);
    if (dec_ != nullptr) EVP_CIPHER_CTX_free(dec_);
    enc_ = dec_ = nullptr;
  }

  // 4 zero bytes | counter u64 LE: the low half as the header carries it, then the high half.
  static void Nonce(const uint8_t* header, uint32_t high, uint8_t nonce[12]) {
    std::memset(nonce, 0, 4);
    std::memcpy(nonce + 4, header + 8, 4);
    for (int i = 0; i < 4; i++) nonce[8 + i] = (uint8_t)(high >> (8 * i));
  }
  // The counter's high half, argument i: required (a missing one would silently seal under the wrong nonce).
  static bool High(const Napi::CallbackInfo& info, size_t i, uint32_t* high) {
    if (info.Length() <= i || !info[i].IsNumber()) return false;
    *high = info[i].As<Napi::Number>().Uint32Value();
    return true;
  }

  // open(msg, counterHigh): authenticates and decrypts msg[12 .. len-16) in place.
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t high;
    if (!info[0].IsBuffer() || !High(info, 1, &high)) return Napi::Number::New(env, -1);
    Napi::Buffer<uint8_t> b = info[0].As<Napi::Buffer<uint8_t>>();
    if (b.Length() < kHeader + kTag) return Napi::Number::New(env, -1);
    bool ok = OpenTo(b.Data(), b.Length(), b.Data() + kHeader, high);
    return Napi::Number::New(env, ok ? (double)(b.Length() - kHeader - kTag) : -1);
  }

  // seal(out, payload, counterHigh): out[0..12) is the header; writes ciphertext and tag after it.
  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t high;
    if (!info[0].IsBuffer() || !info[1].IsBuffer() || !High(info, 2, &high)) return Napi::Number::New(env, -1);
    Napi::Buffer<uint8_t> o = info[0].As<Napi::Buffer<uint8_t>>();
    Napi::Buffer<uint8_t> p = info[1].As<Napi::Buffer<uint8_t>>();
    if (o.Length() != kHeader + p.Length() + kTag) return Napi::Number::New(env, -1);
    return Napi::Number::New(env, SealTo(o.Data(), p.Data(), p.Length(), high) ? 0 : -1);
  }

 public:
  // msg = header | ciphertext | tag (len >= 28); the plaintext goes to plain (may be msg + 12: in place).
  bool OpenTo(const uint8_t* m, size_t len, uint8_t* plain, uint32_t high) {
    if (dec_ == nullptr || len < kHeader + kTag) return false;
    size_t ct = len - kHeader - kTag;
    uint8_t nonce[12];
    Nonce(m, high, nonce);
    int outl = 0;
    uint8_t fin[16];
    uint8_t tag[kTag];
    std::memcpy(tag, m + len - kTag, kTag);
    return EVP_CipherInit_ex(dec_, nullptr, nullptr, nullptr, nonce, 0) == 1 &&
           EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_AEAD_SET_TAG, (int)kTag, tag) == 1 &&
           EVP_CipherUpdate(dec_, nullptr, &outl, m, (int)kHeader) == 1 &&
           (ct == 0 || EVP_CipherUpdate(dec_, plain, &outl, m + kHeader, (int)ct) == 1) &&
           EVP_CipherFinal_ex(dec_, fin, &outl) == 1;
  }

  // out[0..12) holds the header; ciphertext of payload[0..plen) and the tag follow it.
  bool SealTo(uint8_t* out, const uint8_t* payload, size_t plen, uint32_t high) {
    if (enc_ == nullptr) return false;
    uint8_t nonce[12];
    Nonce(out, high, nonce);
    int outl = 0;
    uint8_t fin[16];
    return EVP_CipherInit_ex(enc_, nullptr, nullptr, nullptr, nonce, 1) == 1 &&
           EVP_CipherUpdate(enc_, nullptr, &outl, out, (int)kHeader) == 1 &&
           (plen == 0 || EVP_CipherUpdate(enc_, out + kHeader, &outl, payload, (int)plen) == 1) &&
           EVP_CipherFinal_ex(enc_, fin, &outl) == 1 &&
           EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_AEAD_GET_TAG, (int)kTag, out + kHeader + plen) == 1;
  }

 private:
  Napi::Value Wipe(const Napi::CallbackInfo& info) {
    Free();
    return info.Env().Undefined();
  }

  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;
};

}  // namespace

namespace aead {

const napi_type_tag kTypeTag = {0x6877'6165'6164'6b65ULL, 0x7931'0000'0000'0001ULL};

Key* FromJs(napi_env env, napi_value v) {
  return static_cast<Key*>(tagged::Unwrap(env, v, &kTypeTag));
}

bool Seal(Key* k, uint8_t* out, const uint8_t* payload, size_t plen, uint32_t high) {
  return reinterpret_cast<AeadKey*>(k)->SealTo(out, payload, plen, high);
}

bool Open(Key* k, const uint8_t* msg, size_t len, uint8_t* plain, uint32_t high) {
  return reinterpret_cast<AeadKey*>(k)->OpenTo(msg, len, plain, high);
}

}  // namespace aead

void InitAead(Napi::Env env, Napi::Object exports) {
  exports.Set("AeadKey", AeadKey::Define(env));
}
