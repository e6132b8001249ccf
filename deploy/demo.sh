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

die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "homewire needs Linux (TAP devices, network namespaces)."
if [ "$(id -u)" -ne 0 ]; then
  die "needs root: it creates network namespaces, bridges and TAP devices. Run: sudo bash deploy/demo.sh"
fi

# --- what the demo needs: Debian packages, npm dependencies, the TAP addon (and QEMU for --vms) ----------------
case " $* " in *" --vms "*) bash deploy/install.sh vms ;; *) bash deploy/install.sh demo ;; esac

# --- the demo ---------------------------------------------------------------------------------------------
# tsx is resolved from the project (the working directory), so this runs the TypeScript sources directly.
exec node --import tsx lab/demo.ts "$@"
