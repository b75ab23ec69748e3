#!/usr/bin/env bash
# Proves the image real: starts a containerd of its own (socket, root and
# state under a temporary directory; stopped at the end, also on failure),
# imports the archive scripts/image.sh wrote with `ctr`, and runs the image
# the way the DaemonSet does:
#   1. init step: `kindnet-cni install /opt/cni/bin` into a host directory
#      mounted in; the plugins land there and run on the host;
#   2. `kindnetd --version`;
#   3. the privileged init step `kindnetd --sysctls-only`, then kindnetd
#      with the DaemonSet's environment (nodes from a file instead of the
#      API server), inside a network namespace this script made: it writes
#      the conflist into the mounted directory and serves /healthz on the
#      node address;
#   4. `kindnetd doctor` exec-ed in that container (as `kubectl exec`):
#      it checks the node with the running daemon's configuration.
# Needs root, containerd, ctr, runc and ip (scripts/setup.sh installs them).
#   scripts/image-test.sh [ARCHIVE]   (default: build it with scripts/image.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=ghcr.io/kindnet-rs/kindnet:0.1.0
archive=${1:-}
if [ -z "$archive" ]; then
  scripts/image.sh
  archive=$root/target/image/kindnet-image.tar
fi
[ -f "$archive" ] || { echo "image-test: $archive missing" >&2; exit 1; }
for t in containerd ctr runc ip; do
  command -v "$t" >/dev/null || { echo "image-test: $t missing (scripts/setup.sh)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/kindnet-image-test.XXXXXX)
sock=$work/containerd.sock
ns=kindnet-img-$$
ctrd_pid=
ctr_() { ctr --address "$sock" --namespace kindnet-test "$@"; }
# ctr run with runc's state and the IO fifos under $work too.
run_() { ctr_ run --snapshotter native --runc-root "$work/runc" --fifo-dir "$work/fifo" "$@"; }
# containerd's shims put their sockets in /run/containerd/s whatever the
# configuration: what this run created there is removed if left empty.
made_dirs=()
for d in /run/containerd /run/containerd/s; do [ -e "$d" ] || made_dirs=("$d" "${made_dirs[@]}"); done
cleanup() {
  local rc=$?
  if [ -n "$ctrd_pid" ]; then
    for c in kd init; do
      # -f kills a running task first and waits for it.
      ctr_ task delete -f "$c-$$" >/dev/null 2>&1 || true
      ctr_ container delete "$c-$$" >/dev/null 2>&1 || true
    done
    kill "$ctrd_pid" 2>/dev/null || true
    wait "$ctrd_pid" 2>/dev/null || true
    # A shim of this containerd still alive (it names our socket): by PID.
    for p in /proc/[0-9]*; do
      if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "-address $sock "; then
        kill "${p#/proc/}" 2>/dev/null || true
      fi
    done
  fi
  ip netns del "$ns" 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    echo "image-test: FAILED; containerd log:" >&2
    tail -n 20 "$work/containerd.log" >&2 2>/dev/null || true
    echo "image-test: kindnetd log:" >&2
    tail -n 30 "$work/kindnetd.log" >&2 2>/dev/null || true
  fi
  # Whatever is still mounted under $work (a container's rootfs), deepest first.
  awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
  for d in "${made_dirs[@]}"; do rmdir "$d" 2>/dev/null || true; done
  exit $rc
}
trap cleanup EXIT
fail() { echo "image-test: $*" >&2; exit 1; }
# Waits (polling, bounded) until the command succeeds.
wait_for() {
  local what=$1 deadline=$((SECONDS + 20))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}

cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/opt"
EOF
containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctrd_pid=$!
wait_for containerd ctr_ version

# As `kind load image-archive` imports it on a node: from stdin, every
# platform, digest references too.
ctr_ images import --all-platforms --digests --snapshotter native - <"$archive" >/dev/null
ctr_ images ls -q | grep -qx "$image" || fail "the archive did not give $image: $(ctr_ images ls -q)"
echo "image-test: imported $image"

# 1. The init step: the plugins land in the host directory and run there.
mkdir -p "$work/host/opt-cni-bin"
run_ --rm \
  --mount "type=bind,src=$work/host/opt-cni-bin,dst=/opt/cni/bin,options=rbind:rw" \
  "$image" "init-$$" /bin/kindnet-cni install /opt/cni/bin >/dev/null
for p in ptp bridge host-local portmap loopback; do
  [ -x "$work/host/opt-cni-bin/$p" ] || fail "kindnet-cni install left no $p"
done
CNI_COMMAND=VERSION "$work/host/opt-cni-bin/ptp" </dev/null | grep -q cniVersion \
  || fail "the installed ptp does not answer VERSION"
echo "image-test: kindnet-cni install put the plugins into the host directory"

# 2. The version.
v=$(run_ --rm "$image" "kd-$$" /bin/kindnetd --version)
[[ $v == "kindnetd "* ]] || fail "kindnetd --version printed '$v'"
echo "image-test: $v"

# 3. A node: a namespace with its address, the DaemonSet's environment.
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name gw0
ip -n "$ns" addr add 10.99.0.2/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set gw0 up
ip -n "$ns" route add default via 10.99.0.1 dev eth0 onlink
mkdir -p "$work/host/etc-cni-net.d" "$work/host/config"
cat >"$work/host/config/nodes.json" <<'EOF'
{"apiVersion":"v1","kind":"NodeList","items":[{"apiVersion":"v1","kind":"Node",
 "metadata":{"name":"node1"},"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"]},
 "status":{"addresses":[{"type":"InternalIP","address":"10.99.0.2"}]}}]}
EOF
run_ --rm --privileged --with-ns "network:/var/run/netns/$ns" \
  "$image" "init-$$" /bin/kindnetd --sysctls-only >>"$work/kindnetd.log" 2>&1 \
  || fail "kindnetd --sysctls-only failed"
[ "$(ip netns exec "$ns" cat /proc/sys/net/ipv4/ip_forward)" = 1 ] \
  || fail "--sysctls-only left ip_forward off in the node's namespace"
run_ -d --with-ns "network:/var/run/netns/$ns" \
  --cap-add CAP_NET_ADMIN --cap-add CAP_NET_RAW \
  --log-uri "file://$work/kindnetd.log" \
  --mount "type=bind,src=$work/host/etc-cni-net.d,dst=/etc/cni/net.d,options=rbind:rw" \
  --mount "type=bind,src=$work/host/config,dst=/config,options=rbind:ro" \
  --env HOST_IP=10.99.0.2 --env POD_IP=10.99.0.2 --env NODE_NAME=node1 \
  --env POD_SUBNET=10.244.0.0/16 --env KINDNET_LOG_JSON=true \
  --env KINDNET_CONFIGURE_SYSCTLS=false --env KINDNET_NODES_FILE=/config/nodes.json \
  "$image" "kd-$$" /bin/kindnetd >/dev/null
get() { # PATH: the response of kindnetd on the node address, from the node
  ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/10.99.0.2/19080 &&
    printf "GET %s HTTP/1.0\r\nHost: node\r\n\r\n" "$1" >&3 && cat <&3' _ "$1"
}
healthy() { get /healthz | head -1 | grep -q ' 200 '; }
wait_for "kindnetd's /healthz on 10.99.0.2:19080" healthy
echo "image-test: kindnetd serves /healthz on the node address in $ns"
wait_for "the conflist" test -s "$work/host/etc-cni-net.d/10-kindnet.conflist"
grep -q '10.244.1.0/24' "$work/host/etc-cni-net.d/10-kindnet.conflist" \
  || fail "the conflist lacks the node's pod CIDR"
echo "image-test: kindnetd wrote 10-kindnet.conflist for 10.244.1.0/24"
# no nft in the image: masquerade is programmed over nf_tables netlink
ready() { get /readyz | head -1 | grep -q ' 200 '; }
wait_for "kindnetd's /readyz (routes, conflist, masquerade)" ready
ip netns exec "$ns" nft list table inet kindnet-masq >/dev/null 2>&1 \
  || fail "kindnetd in the image did not program table inet kindnet-masq"
echo "image-test: kindnetd is ready and programmed its masquerade table without nft"

# 4. `kubectl exec ds/kindnet -- kindnetd doctor`: an exec in the running
# container (its environment, no flags) checks what the daemon uses.
doctor_rc=0
ctr_ task exec --exec-id doctor "kd-$$" kindnetd doctor >"$work/doctor.txt" 2>&1 || doctor_rc=$?
[ "$doctor_rc" = 0 ] || fail "the doctor in the container found a failure: $(cat "$work/doctor.txt")"
grep -q '^\[pass\] config .*the running kindnetd .* at 10.99.0.2:19080: node "node1", ptp mode, conflist in "/etc/cni/net.d".*not checked here' \
  "$work/doctor.txt" || fail "the doctor in the container did not use the daemon's configuration: $(cat "$work/doctor.txt")"
grep -q '^\[pass\] conflist ' "$work/doctor.txt" || fail "the doctor did not find the conflist: $(cat "$work/doctor.txt")"
echo "image-test: kindnetd doctor in the container checked the daemon's configuration"
echo "image-test: ok"
