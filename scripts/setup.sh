#!/usr/bin/env bash
# Installs what building, testing and the lab need on a fresh Debian machine.
# Idempotent: skips what is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
need=()
# containerd and runc: scripts/image-test.sh runs the image on a containerd
# of its own (its own socket and directories; the packaged service is not used).
for pkg in iproute2:ip nftables:nft iputils-ping:ping conntrack:conntrack iperf3:iperf3 \
           containernetworking-plugins:/usr/lib/cni/ptp containerd:containerd runc:runc; do
  name=${pkg%%:*} probe=${pkg#*:}
  if [[ $probe == /* ]]; then [ -e "$probe" ] || need+=("$name")
  else command -v "$probe" >/dev/null 2>&1 || need+=("$name"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The libcni driver (tools/libcni-driver): the libcni tests and
# scripts/bench-cni.sh run the plugins through it. Skips when up to date.
bash "$here/tools/libcni-driver/build.sh"
