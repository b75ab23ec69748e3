#!/usr/bin/env bash
# Pod network setup benchmark, through libcni (target/libcni-driver bench,
# built from tools/libcni-driver by scripts/setup.sh), inside a network
# namespace of its own, IPAM state on tmpfs as kind has it. Side by side and
# interleaved in every round:
#   ours       the conflist kindnetd writes (kindnetd --print-conflist: one
#              `kindnet` plugin) on our binary
#   classic    the conflist kindnetd writes with --cni-chain=classic (kind's
#              ptp + portmap) on our binary
#   reference  that classic conflist on the reference plugins (/usr/lib/cni)
#   floor      libcni plus one exec of the smallest plugin (our loopback)
# Prints one JSON line per run, then per (stack, pods) the medians over the
# rounds and the ratios reference/ours (> 1: we are faster) and ours/floor.
#   scripts/bench-cni.sh [SERIAL_PODS=50] [PODS=100] [PARALLEL=8] [ROUNDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
serial=${1:-50} many=${2:-100} par=${3:-8} rounds=${4:-5}
[ "$(id -u)" = 0 ] || { echo "bench-cni: needs root (network namespaces)" >&2; exit 1; }
scripts/setup.sh >&2
driver=$PWD/target/libcni-driver
[ -x "$driver" ] || { echo "bench-cni: $driver missing (tools/libcni-driver/build.sh)" >&2; exit 1; }
[ -x /usr/lib/cni/ptp ] || { echo "bench-cni: reference plugins missing (containernetworking-plugins)" >&2; exit 1; }
scripts/build.sh >&2
kindnetd=$PWD/target/release/kindnetd

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

conflist() { # IMPL STACK -> the conflist file
  local cidrs=10.244.0.0/16 f="$work/$1-$2.conflist"
  [ "$2" = dual ] && cidrs=10.244.0.0/16,fd00:10:244::/64
  case $1 in
    ours) "$kindnetd" --print-conflist --static-pod-cidrs "$cidrs" --mtu 1500 \
            --ipam-data-dir "$work/ipam-$1" > "$f" ;;
    classic|reference) "$kindnetd" --print-conflist --cni-chain classic --static-pod-cidrs "$cidrs" \
            --mtu 1500 --ipam-data-dir "$work/ipam-$1" > "$f" ;;
    floor) echo '{"cniVersion":"1.0.0","name":"floor","plugins":[{"type":"loopback"}]}' > "$f" ;;
  esac
  echo "$f"
}

run() { # ROUND IMPL STACK PODS PAR -> JSON line
  local dir="$work/ours"; [ "$2" = reference ] && dir=/usr/lib/cni
  local f out
  f=$(conflist "$2" "$3")
  out=$(CNI_PATH=$dir CNI_CACHE_DIR="$work/cache-$2" ip netns exec "$node" "$driver" bench "$f" "$4" "$5")
  echo "{\"round\":$1,\"impl\":\"$2\",\"stack\":\"$3\",${out#\{}"
}

impls=(ours classic reference floor)
results="$work/results.jsonl"
for round in $(seq 1 "$rounds"); do
  for stack in ipv4 dual; do
    for mode in "$serial 1" "$many $par"; do
      set -- $mode
      # rotate which implementation goes first: on a 2-core machine the
      # first run of a round measures slower
      for k in 0 1 2 3; do
        impl=${impls[$(( (k + round) % 4 ))]}
        run "$round" "$impl" "$stack" "$1" "$2" | tee -a "$results"
      done
    done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(impl, stack, pods, key):
    v = [r[key] for r in runs if r["impl"] == impl and r["stack"] == stack and r["pods"] == pods]
    return round(statistics.median(v), 3) if v else None
def ratio(a, b):
    return round(a / b, 2) if a and b else None
for stack in ("ipv4", "dual"):
    for pods in sorted({r["pods"] for r in runs}):
        par = next(r["parallel"] for r in runs if r["pods"] == pods)
        out = {"summary": stack, "pods": pods, "parallel": par,
               "rounds": len({r["round"] for r in runs}),
               "errors": sum(r["errors"] for r in runs if r["stack"] == stack and r["pods"] == pods and r["impl"] != "floor")}
        for key in ("add_p50_ms", "add_p99_ms", "del_p50_ms", "add_wall_ms", "del_wall_ms"):
            vals = {i: med(i, stack, pods, key) for i in ("ours", "classic", "reference", "floor")}
            out[key] = vals
            out[key.replace("_ms", "") + "_ref_over_ours"] = ratio(vals["reference"], vals["ours"])
            out[key.replace("_ms", "") + "_ours_over_floor"] = ratio(vals["ours"], vals["floor"])
        print(json.dumps(out))
PY
