#!/usr/bin/env bash
# The quick-start demo: builds everything, then `kindnet-lab demo` builds a
# 3-node dual-stack cluster in network namespaces (a real kindnetd per node,
# pods through the CNI plugins), checks it and removes it. Extra arguments go
# to `kindnet-lab demo` (e.g. --mode bridge --stack ipv6 --nodes 4).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (it creates network namespaces, and touches nothing outside them)" >&2; exit 1; }
scripts/setup.sh
echo "building (release; the first build takes a few minutes)..."
scripts/build.sh
exec target/release/kindnet-lab demo "$@"
