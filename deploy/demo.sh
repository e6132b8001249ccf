#!/usr/bin/env bash
# homewire in five minutes: a home LAN and two VM hosts in network namespaces on this machine, joined by
# homewire's encrypted UDP mesh. Installs what is missing, builds the TAP addon, runs the demo, cleans up.
#
#   sudo bash deploy/demo.sh            run the demo and clean up (Ctrl-C cleans up too)
#   sudo bash deploy/demo.sh --keep     leave it running until Ctrl-C, to poke at it from another terminal
#   sudo bash deploy/demo.sh --ipv6     the same over an IPv6 underlay
#   sudo bash deploy/demo.sh --vms      then real QEMU guests via the coordinator: start, live-migrate, stop
#
# Touches nothing outside namespaces named hwdemo-*; uses documentation addresses only (192.0.2.0/24,
# 198.51.100.0/24, 2001:db8::/64). Exits non-zero if a ping through the mesh fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '%s\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "homewire needs Linux (TAP devices, network namespaces)."
if [ "$(id -u)" -ne 0 ]; then
  die "needs root: it creates network namespaces, bridges and TAP devices. Run: sudo bash deploy/demo.sh"
fi

# --- system packages ----------------------------------------------------------------------------------
addon=build/Release/homewire_tap.node
need_build=0
if [ ! -f "$addon" ] || [ native/tap.cc -nt "$addon" ] || [ binding.gyp -nt "$addon" ]; then need_build=1; fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v busybox >/dev/null 2>&1 || missing+=(busybox-static)
case " $* " in *" --vms "*)
  command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
  command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
  command -v cpio >/dev/null 2>&1 || missing+=(cpio)
  command -v etcd >/dev/null 2>&1 || true ;;
esac
if [ "$need_build" = 1 ]; then
  { command -v make >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; } || missing+=(build-essential)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "please install: ${missing[*]} (no apt-get here)"
  say "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  fi
fi

# --- Node.js and the project's dependencies -------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "Node.js 20 or newer is needed (https://nodejs.org/ or your distribution's nodejs)."
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || die "Node.js $(node -v) is too old: homewire needs 20 or newer."
if [ ! -d node_modules/tsx ] || [ ! -d node_modules/node-addon-api ] || [ ! -d node_modules/sodium-native ]; then
  say "Installing npm dependencies"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
fi
if [ "$need_build" = 1 ]; then
  say "Building the native TAP addon (npm run build)"
  npm run build --silent || die "building the TAP addon failed (see above); it needs make, g++ and python3"
fi

# --- the demo ---------------------------------------------------------------------------------------------
# tsx is resolved from the project (the working directory), so this runs the TypeScript sources directly.
exec node --import tsx lab/demo.ts "$@"
