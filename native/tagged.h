// Objects of the addon found from their JS objects by an N-API type tag: one part of the addon (express.cc)
// is handed another's object (an AeadKey, an Express) by JavaScript and must not trust that it is one.
#pragma once
#include <node_api.h>

namespace tagged {

// The C++ object wrapped in v if v carries tag, else null.
inline void* Unwrap(napi_env env, napi_value v, const napi_type_tag* tag) {
  bool ok = false;
  if (napi_check_object_type_tag(env, v, tag, &ok) != napi_ok || !ok) return nullptr;
  void* p = nullptr;
  return napi_unwrap(env, v, &p) == napi_ok ? p : nullptr;
}

}  // namespace tagged
