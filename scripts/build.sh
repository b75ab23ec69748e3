#!/usr/bin/env bash
# Release build into target/release/:
#   kindnet-cni, kindnetd  static (glibc, crt-static): no dynamic loader, so
#                          they run from an image holding nothing else, and
#                          kindnet-cni (exec-ed on every pod setup) starts fast
#   kindnet-lab            (unless the argument is "cni" or "static")
#   scripts/build.sh [all|cni|static]
# The explicit --target keeps build scripts and proc-macros dynamic (they
# run on this host at build time); only the target binaries are static.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
what=${1:-all}
pkgs=(-p kindnet-cni --bin kindnet-cni)
[ "$what" = cni ] || pkgs+=(-p kindnetd --bin kindnetd)
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q --locked --target "$triple" "${pkgs[@]}"
mkdir -p target/release
install -m 0755 "target/$triple/release/kindnet-cni" target/release/kindnet-cni
[ "$what" = cni ] || install -m 0755 "target/$triple/release/kindnetd" target/release/kindnetd
if [ "$what" = all ]; then
  cargo build --release -q --locked -p kindnet-lab
fi
