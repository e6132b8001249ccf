#!/usr/bin/env bash
# `npm run bench`: homewire's throughput and latency in network namespaces beside the plain underlay.
#   sudo npm run bench                       3 runs of 10 s, one stream
#   sudo npm run bench -- --runs 5 --parallel --seconds 10
#   sudo npm run bench -- --ipv6
# Results: a table and JSON on stdout, and bench/results/throughput-<date>.json. Needs root, iproute2,
# iputils-ping, iperf3 and the built TAP addon (built here if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, TAP devices): sudo npm run bench"
for p in ip ping iperf3; do
  command -v "$p" >/dev/null 2>&1 || die "$p is missing: apt-get install iproute2 iputils-ping iperf3"
done
[ -d node_modules/tsx ] || die "npm dependencies are missing: run npm ci"
if [ ! -f build/Release/homewire_tap.node ]; then
  echo "bench: building the TAP addon (npm run build)" >&2
  npm run build --silent
fi

exec node --import tsx bench/throughput.ts "$@"
