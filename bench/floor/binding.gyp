{
  # bench/floor's yardstick addon (not part of homewire): built by bench/floor/run.sh into bench/floor/build.
  "targets": [{ "target_name": "floor", "sources": ["floor.cc"], "cflags_cc": ["-O2", "-Wall"] }]
}
