#!/usr/bin/env bash
# The test command: set up a fresh machine, check formatting and lints, then
# run every test (the integration tests need root and create their own
# network namespaces; as non-root they skip with a message). The run sets
# KINDNET_TEST_REQUIRE_ROOT=1: here a test that would skip (not root, a tool
# missing) fails instead, so nothing is silently left out. Last, the image:
# scripts/image.sh builds the archive (static release binaries) and
# scripts/image-test.sh runs it on a containerd of its own as the DaemonSet
# does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
KINDNET_TEST_REQUIRE_ROOT=1 cargo test --workspace --locked -- --test-threads=2
scripts/image-test.sh
