#!/usr/bin/env bash
# bench/floor: what an encrypted L2 data path costs when it runs in C inside Node's event loop (floor.cc), in a
# bed like bench:peers' (two namespaces, a veth on TEST-NET-1, the TAPs on TEST-NET-2): the idle ping after a
# 20,000-ping flood, 3 × 400 pings at 10 ms. A yardstick for a native fast path in homewire, not a test.
#   sudo bash bench/floor/run.sh
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
P="${HOMEWIRE_BENCH_PREFIX:-hwf-}"
[ "$(id -u)" -eq 0 ] || { echo "bench/floor: needs root (namespaces, TAP)" >&2; exit 1; }
if [ ! -f "$DIR/build/Release/floor.node" ]; then
  (cd "$DIR" && "$DIR/../../node_modules/.bin/node-gyp" rebuild --silent --nodedir=/usr)
fi
down() {
  for s in a b; do ip netns pids "${P}$s" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  for s in a b; do ip netns del "${P}$s" 2>/dev/null || true; done
}
trap down EXIT
down
for s in a b; do ip netns add "${P}$s"; done
ip link add ul0 netns "${P}a" type veth peer name ul0 netns "${P}b"
ip -n "${P}a" addr add 192.0.2.1/24 dev ul0
ip -n "${P}b" addr add 192.0.2.2/24 dev ul0
for s in a b; do ip -n "${P}$s" link set lo up; ip -n "${P}$s" link set ul0 up; done
ip netns exec "${P}a" node "$DIR/floor.mjs" "${P}t" 51820 192.0.2.2 51820 &
ip netns exec "${P}b" node "$DIR/floor.mjs" "${P}t" 51820 192.0.2.1 51820 &
for s in a b; do
  for _ in $(seq 50); do ip -n "${P}$s" link show "${P}t" >/dev/null 2>&1 && break; sleep 0.1; done
done
ip -n "${P}a" addr add 198.51.100.1/24 dev "${P}t"
ip -n "${P}b" addr add 198.51.100.2/24 dev "${P}t"
for s in a b; do ip -n "${P}$s" link set "${P}t" mtu 1400 up; done
ip netns exec "${P}a" ping -n -q -c 3 -i 0.2 -W 1 198.51.100.2 >/dev/null
echo "flood: $(ip netns exec "${P}a" ping -n -q -f -c 20000 198.51.100.2 | tail -1)"
for i in 1 2 3; do echo "at rest $i: $(ip netns exec "${P}a" ping -n -q -c 400 -i 0.01 198.51.100.2 | tail -1)"; done
