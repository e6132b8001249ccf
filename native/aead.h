// The AEAD keys of native/aead.cc as seen from other parts of the addon (native/express.cc): a JS AeadKey
// object carries a type tag, so a key is found from its object without trusting whatever JS passes.
#pragma once
#include <node_api.h>

#include <cstddef>
#include <cstdint>

namespace aead {

struct Key;  // an AeadKey (opaque)
extern const napi_type_tag kTypeTag;

// The key behind a JS AeadKey object, or null if v is not one.
Key* FromJs(napi_env env, napi_value v);
// out[0..12) holds the transport header; writes ciphertext and tag after it. False if the key was wiped.
bool Seal(Key* k, uint8_t* out, const uint8_t* payload, size_t plen, uint32_t counterHigh);
// msg = header | ciphertext | tag; the plaintext (len - 28 bytes) goes to plain. False if not authentic.
bool Open(Key* k, const uint8_t* msg, size_t len, uint8_t* plain, uint32_t counterHigh);

}  // namespace aead
