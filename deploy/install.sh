#!/usr/bin/env bash
# Installs what homewire needs for one purpose, and nothing when it is all there (quiet then). Shared by the
# demo (deploy/demo.sh), the tests (npm test, npm run test:unit), the benchmarks and CI (.ci/run).
#
#   bash deploy/install.sh unit        npm dependencies (no root needed): for npm run test:unit
#   sudo bash deploy/install.sh demo   + Debian packages for the namespace demo, the built TAP addon
#   sudo bash deploy/install.sh vms    + QEMU and the lab guest image (demo --vms)
#   sudo bash deploy/install.sh test   + everything the whole test suite uses (npm test)
#   sudo bash deploy/install.sh check  + what CI's static checks use (clang-format)
#   sudo bash deploy/install.sh bench  + the reference overlays the benchmarks compare against
#
# Idempotent: Debian packages are installed only when missing (apt-get update only when an install needs it),
# npm ci runs only when package-lock.json changed since the last install, the addon is rebuilt only when its
# sources are newer, so is the web page (web/dist), the guest image is built once and cached. Without root, a missing Debian package is an
# error that names it and the command to run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

profile="${1:-}"
case "$profile" in unit | demo | vms | test | check | bench) ;; *)
  die "usage: deploy/install.sh unit|demo|vms|test|check|bench" ;;
esac

# --- Debian packages, by purpose ------------------------------------------------------------------------
demo_pkgs=(iproute2 iputils-ping iperf3 procps busybox-static)
build_pkgs=(python3 make g++)
vm_pkgs=(qemu-system-x86 qemu-utils cpio xz-utils kmod curl)
test_pkgs=(
  iputils-arping tcpdump psmisc util-linux curl              # traffic, captures, raw API requests
  isc-dhcp-client dhcpcd-base dnsmasq                        # real DHCP clients, a rogue DHCP server
  conntrack iptables nftables ipset socat openssl            # NATs, floods, TLS certificates
  etcd-server prometheus                                     # coordinator store, scraping
  chromium                                                   # the web page in a real browser
)
check_pkgs=(clang-format)
bench_pkgs=(tinc nebula wireguard-go wireguard-tools)

pkgs=()
case "$profile" in
  demo) pkgs=("${demo_pkgs[@]}" "${build_pkgs[@]}") ;;
  vms) pkgs=("${demo_pkgs[@]}" "${build_pkgs[@]}" "${vm_pkgs[@]}") ;;
  test) pkgs=("${demo_pkgs[@]}" "${build_pkgs[@]}" "${vm_pkgs[@]}" "${test_pkgs[@]}") ;;
  check) pkgs=("${check_pkgs[@]}") ;;
  bench) pkgs=("${demo_pkgs[@]}" "${build_pkgs[@]}" "${vm_pkgs[@]}" "${bench_pkgs[@]}") ;;
esac

if [ "${#pkgs[@]}" -gt 0 ]; then
  [ "$(uname -s)" = Linux ] || die "homewire needs Linux (TAP devices, network namespaces)"
  command -v dpkg-query >/dev/null 2>&1 || die "no dpkg here: install by hand: ${pkgs[*]}"
  missing=()
  installed="$( (dpkg-query -W -f='${Package} ${Status}\n' "${pkgs[@]}" 2>/dev/null || true) | awk '$4 == "installed" {print $1}')"
  for p in "${pkgs[@]}"; do grep -qx "$p" <<<"$installed" || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]}. Run as root: sudo bash deploy/install.sh $profile"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed (see above)"
    fi
    # Debian starts packaged services on install; the tests start their own on loopback.
    for svc in etcd prometheus prometheus-node-exporter dnsmasq; do
      systemctl stop "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
      systemctl disable "$svc" >/dev/null 2>&1 || true
    done
  fi
fi
# A service Debian started earlier (or a leftover of a crashed run) would hold the tests' ports.
if [ "$profile" = test ] && [ "$(id -u)" -eq 0 ]; then
  for svc in etcd prometheus; do systemctl stop "$svc" >/dev/null 2>&1 || true; done
  pkill -x etcd >/dev/null 2>&1 || true
  pkill -x prometheus >/dev/null 2>&1 || true
fi
[ "$profile" = check ] && exit 0

# --- Node.js and the npm dependencies --------------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "Node.js 20 or newer is needed (https://nodejs.org/ or Debian's nodejs)"
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || die "Node.js $(node -v) is too old: homewire needs 20 or newer"
# npm writes node_modules/.package-lock.json at every install: older than package-lock.json means stale.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed (see above)"
fi

# --- the web page (the coordinator serves web/dist; esbuild bundles it, no root needed) ----------------------
page=web/dist/app.js
stale=0
[ -f "$page" ] || stale=1
for f in web/*.ts web/*.css web/*.html package-lock.json; do [ "$f" -nt "$page" ] && stale=1; done
if [ "$stale" = 1 ]; then
  say "building the web page (npm run build:web)"
  npm run build:web --silent >/dev/null || die "building the web page failed (see above): npm run build:web"
fi
[ "$profile" = unit ] && exit 0

# --- the native addon ------------------------------------------------------------------------------------
addon=build/Release/homewire_tap.node
stale=0
[ -f "$addon" ] || stale=1
for f in binding.gyp native/*; do [ "$f" -nt "$addon" ] && stale=1; done
if [ "$stale" = 1 ]; then
  say "building the TAP addon (npm run build:addon)"
  npm run build:addon --silent >/dev/null || die "building the TAP addon failed (see above); it needs make, g++ and python3"
fi

# --- the lab guest image (QEMU tests, demo --vms, benchmarks) -------------------------------------------
if [ "$profile" = vms ] || [ "$profile" = test ] || [ "$profile" = bench ]; then
  # Built from Debian's kernel and busybox, cached; apt-get download needs current package lists.
  node --import tsx lab/guest-image.ts >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && node --import tsx lab/guest-image.ts >/dev/null; } ||
    die "building the QEMU guest image failed: node --import tsx lab/guest-image.ts"
fi
exit 0
