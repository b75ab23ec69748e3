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
# Then the hostPort case (stack "hostport"): one pod at a time with one TCP
# host port (libcni's portMappings capability), HOSTPORT_RUNS pods per
# round per implementation (each its own run: the port is free again after
# the pod's DEL); its summary is over all those pods' ADD times.
# KINDNET_BENCH_BASELINE=/path/to/an/older/kindnet-cni adds implementation
# "baseline": the conflist kindnetd writes on that binary (e.g. the release
# before a change), interleaved with the others in every case, its ratios
# to the floor printed beside ours.
#   scripts/bench-cni.sh [SERIAL_PODS=50] [PODS=100] [PARALLEL=8] [ROUNDS=5] [HOSTPORT_RUNS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
serial=${1:-50} many=${2:-100} par=${3:-8} rounds=${4:-5} hp_runs=${5:-10}
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
if [ -n "${KINDNET_BENCH_BASELINE:-}" ]; then
  "$KINDNET_BENCH_BASELINE" install "$work/baseline" >/dev/null
fi

conflist() { # IMPL STACK -> the conflist file
  local cidrs=10.244.0.0/16 f="$work/$1-$2.conflist"
  [ "$2" = dual ] && cidrs=10.244.0.0/16,fd00:10:244::/64
  case $1 in
    ours|baseline) "$kindnetd" --print-conflist --static-pod-cidrs "$cidrs" --mtu 1500 \
            --ipam-data-dir "$work/ipam-$1" > "$f" ;;
    classic|reference) "$kindnetd" --print-conflist --cni-chain classic --static-pod-cidrs "$cidrs" \
            --mtu 1500 --ipam-data-dir "$work/ipam-$1" > "$f" ;;
    floor) echo '{"cniVersion":"1.0.0","name":"floor","plugins":[{"type":"loopback"}]}' > "$f" ;;
  esac
  echo "$f"
}

run() { # ROUND IMPL STACK PODS PAR -> JSON line
  local dir="$work/ours"; [ "$2" = reference ] && dir=/usr/lib/cni
  [ "$2" = baseline ] && dir="$work/baseline"
  local f out
  f=$(conflist "$2" "$3")
  # a failed call still prints its JSON line, with "errors"
  out=$(CNI_PATH=$dir CNI_CACHE_DIR="$work/cache-$2" ip netns exec "$node" "$driver" bench "$f" "$4" "$5") || true
  echo "{\"round\":$1,\"impl\":\"$2\",\"stack\":\"$3\",${out#\{}"
}

impls=(ours classic reference floor)
[ -n "${KINDNET_BENCH_BASELINE:-}" ] && impls+=(baseline)
ni=${#impls[@]}
results="$work/results.jsonl"
for round in $(seq 1 "$rounds"); do
  for stack in ipv4 dual; do
    for mode in "$serial 1" "$many $par"; do
      set -- $mode
      # rotate which implementation goes first: on a 2-core machine the
      # first run of a round measures slower
      for k in $(seq 0 $((ni - 1))); do
        impl=${impls[$(( (k + round) % ni ))]}
        run "$round" "$impl" "$stack" "$1" "$2" | tee -a "$results"
      done
    done
  done
done

# hostPort: one pod at a time, each its own driver run with one host port
hp_impls=(ours classic reference floor)
[ -n "${KINDNET_BENCH_BASELINE:-}" ] && hp_impls+=(baseline)
hp_results="$work/hostport.jsonl"
n=${#hp_impls[@]}
for round in $(seq 1 "$rounds"); do
  for k in $(seq 0 $((n - 1))); do
    impl=${hp_impls[$(( (k + round) % n ))]}
    for _ in $(seq 1 "$hp_runs"); do
      PORTMAP='[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]' \
        run "$round" "$impl" ipv4 1 1 >> "$hp_results"
    done
  done
done
tail -n 1 "$hp_results"

python3 - "$results" "$hp_results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
hp = [json.loads(l) for l in open(sys.argv[2])]
impls = ("ours", "classic", "reference", "floor", "baseline")
# errors may be CHECK's (the reference portmap's CHECK fails on an IPv4-only
# pod); the ADD time is there when ADD worked
vals = {i: [r["add_p50_ms"] for r in hp if r["impl"] == i and r.get("add_p50_ms")] for i in impls}
med = {i: round(statistics.median(v), 3) for i, v in vals.items() if v}
errors = {i: sum(r["errors"] for r in hp if r["impl"] == i) for i in impls if any(r["impl"] == i for r in hp)}
out = {"summary": "hostport", "pods_per_impl": {i: len(v) for i, v in vals.items() if v},
       "errors": errors, "add_p50_ms": med}
if med.get("floor"):
    out["ours_over_floor"] = round(med["ours"] / med["floor"], 2) if med.get("ours") else None
    out["classic_over_floor"] = round(med["classic"] / med["floor"], 2) if med.get("classic") else None
    if med.get("baseline"):
        out["baseline_over_floor"] = round(med["baseline"] / med["floor"], 2)
# DEL removes the mappings (deleting elements: the kernel frees them after
# an RCU grace period)
dels = {i: [r["del_p50_ms"] for r in hp if r["impl"] == i and r.get("del_p50_ms")] for i in impls}
dmed = {i: round(statistics.median(v), 3) for i, v in dels.items() if v}
out["del_p50_ms"] = dmed
if dmed.get("floor") and dmed.get("ours"):
    out["del_ours_over_floor"] = round(dmed["ours"] / dmed["floor"], 2)
    if dmed.get("baseline"):
        out["del_baseline_over_floor"] = round(dmed["baseline"] / dmed["floor"], 2)
print(json.dumps(out))
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
        for key in ("add_p50_ms", "add_p99_ms", "del_p50_ms", "del_p99_ms", "add_wall_ms", "del_wall_ms"):
            vals = {i: med(i, stack, pods, key) for i in impls if any(r["impl"] == i for r in runs)}
            out[key] = vals
            out[key.replace("_ms", "") + "_ref_over_ours"] = ratio(vals["reference"], vals["ours"])
            out[key.replace("_ms", "") + "_ours_over_floor"] = ratio(vals["ours"], vals["floor"])
            if vals.get("baseline"):
                out[key.replace("_ms", "") + "_baseline_over_floor"] = ratio(vals["baseline"], vals["floor"])
        print(json.dumps(out))
PY
