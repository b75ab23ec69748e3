#!/usr/bin/env bash
# Release build into target/release/:
#   kindnet-cni  static (no dynamic loader: it is exec-ed on every pod setup)
#   kindnetd, kindnet-lab (unless the argument is "cni")
#   scripts/build.sh [all|cni]
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q --target "$triple" -p kindnet-cni
mkdir -p target/release
install -m 0755 "target/$triple/release/kindnet-cni" target/release/kindnet-cni
if [ "${1:-all}" != cni ]; then
  cargo build --release -q -p kindnetd -p kindnet-lab
fi
