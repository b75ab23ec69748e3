#!/usr/bin/env bash
# The quick-start demo. Until kindnetd and kindnet-lab land, it shows what the
# plugins do on one simulated node: two dual-stack pods wired with ptp,
# reaching their gateway and each other, then removed. Everything happens in
# network namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (it creates network namespaces)" >&2; exit 1; }
scripts/setup.sh
cargo build --release -q -p kindnet-cni
tag="kindnet-demo-$$"
work=$(mktemp -d)
cleanup() {
  for ns in "$tag-node" "$tag-a" "$tag-b"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
target/release/kindnet-cni install "$work/bin" >/dev/null
for ns in node a b; do ip netns add "$tag-$ns"; done
conf=$(cat <<JSON
{"cniVersion":"1.1.0","name":"kindnet","type":"ptp","mtu":1500,
 "ipam":{"type":"host-local","dataDir":"$work/ipam",
         "ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],
         "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}}
JSON
)
cni() { # COMMAND POD
  echo "$conf" | CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$tag-$2 CNI_IFNAME=eth0 \
    CNI_PATH="$work/bin" ip netns exec "$tag-node" "$work/bin/ptp"
}
echo "== ADD two dual-stack pods on one node (ptp + host-local, in-process IPAM)"
for p in a b; do cni ADD $p | sed 's/^/   /'; done
echo "== pod a: addresses and routes (seed layout: default via GW, SUBNET via GW, GW scope link)"
ip -n "$tag-a" -br addr show eth0; ip -n "$tag-a" route; ip -n "$tag-a" -6 route | grep -v fe80
echo "== node: one /32 and /128 per pod, the gateway on every host veth"
ip -n "$tag-node" route; ip -n "$tag-node" -br addr show type veth
echo "== connectivity (no wait for IPv6 DAD)"
b4=$(ip -n "$tag-b" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
b6=$(ip -n "$tag-b" -6 -o addr show eth0 scope global | awk '{print $4}' | cut -d/ -f1)
for dst in 10.244.1.1 fd00:10:244:1::1 "$b4" "$b6"; do
  if ip netns exec "$tag-a" ping -c1 -W2 -q "$dst" >/dev/null; then echo "   pod a -> $dst: ok"; else echo "   pod a -> $dst: FAILED"; exit 1; fi
done
echo "== DEL both pods"
for p in a b; do cni DEL $p; done
echo "   addresses left in the IPAM store: $(ls "$work/ipam/kindnet" | grep -c '^[0-9a-f.:]*$' || true)"
echo
echo "Not built yet: kindnetd (routes between nodes, masquerade, conflist) and kindnet-lab"
echo "(a multi-node cluster in namespaces). This demo will grow into that."
