{
  # The native TAP addon: build/Release/homewire_tap.node (Linux only). Built by `npm run build`.
  "targets": [
    {
      "target_name": "homewire_tap",
      "sources": ["native/tap.cc", "native/udp.cc", "native/udp_rx.cc", "native/aead.cc", "native/express.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # C++ exceptions are disabled: errors are thrown as JS exceptions by hand (see native/tap.cc).
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-fno-exceptions"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-exceptions", "-fno-rtti"],
      "conditions": [
        ["OS!='linux'", { "type": "none", "sources!": ["native/tap.cc", "native/udp.cc", "native/udp_rx.cc", "native/aead.cc", "native/express.cc"] }]
      ]
    }
  ]
}
