#!/usr/bin/env bash
# Pod network setup benchmark: kind's conflist (ptp + host-local + portmap),
# IPv4 and dual-stack, driven through libcni (target/libcni-driver bench,
# built from tools/libcni-driver by scripts/setup.sh) with our
# plugins and with the reference plugins (/usr/lib/cni) side by side, inside
# a network namespace of its own. Prints one JSON line per run and one per
# comparison (ratios: reference / ours, so > 1 means we are faster).
#   scripts/bench-cni.sh [SERIAL_PODS] [PARALLEL_PODS] [PARALLELISM]
set -euo pipefail
cd "$(dirname "$0")/.."
serial=${1:-50} many=${2:-100} par=${3:-8}
[ "$(id -u)" = 0 ] || { echo "bench-cni: needs root (network namespaces)" >&2; exit 1; }
scripts/setup.sh >&2
driver=$PWD/target/libcni-driver
[ -x "$driver" ] || { echo "bench-cni: $driver missing (tools/libcni-driver/build.sh)" >&2; exit 1; }
[ -x /usr/lib/cni/ptp ] || { echo "bench-cni: reference plugins missing (containernetworking-plugins)" >&2; exit 1; }
scripts/build.sh cni >&2

# IPAM state (and libcni's cache) on tmpfs, as kind has it (/run/cni-ipam-state): run in a private
# mount namespace so the tmpfs is ours alone and vanishes with us.
if [ -z "${KINDNET_BENCH_PRIVATE:-}" ]; then
  KINDNET_BENCH_PRIVATE=1 exec unshare --mount --propagation private "$0" "$@"
fi
work=$(mktemp -d /tmp/kindnet-bench.XXXXXX)
mount -t tmpfs kindnet-bench "$work"
node="kindnet-bench-$$"
cleanup() { ip netns del "$node" 2>/dev/null || true; umount "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
ip netns add "$node"
ip -n "$node" link set lo up
target/release/kindnet-cni install "$work/ours" >/dev/null

conflist() { # NAME STACK
  local ranges='[[{"subnet":"10.244.0.0/16"}]]' routes='[{"dst":"0.0.0.0/0"}]'
  if [ "$2" = dual ]; then
    ranges='[[{"subnet":"10.244.0.0/16"}],[{"subnet":"fd00:10:244::/64"}]]'
    routes='[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]'
  fi
  cat <<JSON
{"cniVersion":"1.0.0","name":"bench-$1-$2","plugins":[
 {"type":"ptp","ipMasq":false,"mtu":1500,
  "ipam":{"type":"host-local","dataDir":"$work/ipam-$1","ranges":$ranges,"routes":$routes}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
JSON
}

run() { # IMPL STACK PODS PAR -> JSON line
  local dir=/usr/lib/cni; [ "$1" = ours ] && dir="$work/ours"
  conflist "$1" "$2" > "$work/$1-$2.conflist"
  local out
  out=$(CNI_PATH=$dir CNI_CACHE_DIR="$work/cache-$1" ip netns exec "$node" "$driver" bench "$work/$1-$2.conflist" "$3" "$4")
  echo "{\"impl\":\"$1\",\"stack\":\"$2\",${out#\{}"
}

field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "null" }'; }

for stack in ipv4 dual; do
  for mode in "$serial 1" "$many $par"; do
    set -- $mode
    ref=$(run reference $stack "$1" "$2"); echo "$ref"
    ours=$(run ours $stack "$1" "$2"); echo "$ours"
    printf '{"compare":"%s","pods":%s,"parallel":%s,"add_p50_ref_over_ours":%s,"del_p50_ref_over_ours":%s,"add_wall_ref_over_ours":%s,"ours_add_p50_ms":%s,"ours_del_p50_ms":%s,"ours_errors":%s}\n' \
      "$stack" "$1" "$2" \
      "$(ratio "$(field "$ref" add_p50_ms)" "$(field "$ours" add_p50_ms)")" \
      "$(ratio "$(field "$ref" del_p50_ms)" "$(field "$ours" del_p50_ms)")" \
      "$(ratio "$(field "$ref" add_wall_ms)" "$(field "$ours" add_wall_ms)")" \
      "$(field "$ours" add_p50_ms)" "$(field "$ours" del_p50_ms)" "$(field "$ours" errors)"
  done
done
