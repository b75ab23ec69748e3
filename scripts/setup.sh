#!/usr/bin/env bash
# Installs what building, testing and the lab need on a fresh Debian machine.
# Idempotent: skips what is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in iproute2:ip nftables:nft iputils-ping:ping conntrack:conntrack iperf3:iperf3 \
           containernetworking-plugins:/usr/lib/cni/ptp; do
  name=${pkg%%:*} probe=${pkg#*:}
  if [[ $probe == /* ]]; then [ -e "$probe" ] || need+=("$name")
  else command -v "$probe" >/dev/null 2>&1 || need+=("$name"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# cnidrive: a driver on libcni, the library container runtimes use.
if ! command -v cnidrive >/dev/null 2>&1; then
  shared=${KINDNET_SHARED:-$here/../shared}
  if [ -x "$shared/tools/cnidrive/build.sh" ] || [ -f "$shared/tools/cnidrive/build.sh" ]; then
    echo "setup: building cnidrive"
    bash "$shared/tools/cnidrive/build.sh" /usr/local/bin/cnidrive >/dev/null
  else
    echo "setup: $shared/tools/cnidrive/build.sh not found; libcni tests will be skipped" >&2
  fi
fi
