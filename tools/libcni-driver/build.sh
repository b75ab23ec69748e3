#!/usr/bin/env bash
# Builds kindnet-libcni-driver (main.go beside this file), a CNI runtime
# driver on libcni, from Debian's packages alone: libcni's sources
# (golang-github-appc-cni-dev) and Go 1.19 (golang-1.19-go), in GOPATH mode.
# Installs the packages when missing; skips the build when OUTPUT is newer
# than this script and main.go (--force builds anyway).
#   tools/libcni-driver/build.sh [--force] [OUTPUT]   (default OUTPUT: target/libcni-driver)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
force=
if [ "${1:-}" = --force ]; then force=1; shift; fi
out=${1:-$repo/target/libcni-driver}
go=/usr/lib/go-1.19/bin/go
libcni=/usr/share/gocode/src/github.com/containernetworking/cni
if [ -z "$force" ] && [ -x "$out" ] && [ "$out" -nt "$here/main.go" ] && [ "$out" -nt "$here/build.sh" ]; then
  echo "libcni-driver: $out is up to date"
  exit 0
fi
need=()
[ -x "$go" ] || need+=(golang-1.19-go)
[ -f "$libcni/libcni/api.go" ] || need+=(golang-github-appc-cni-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "libcni-driver: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
version=$(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev 2>/dev/null || echo unknown)
gopath=$(mktemp -d)
trap 'rm -rf "$gopath" "$out.tmp.$$"' EXIT
mkdir -p "$gopath/src/kindnet-libcni-driver" "$(dirname "$out")"
cp "$here/main.go" "$gopath/src/kindnet-libcni-driver/"
cd "$gopath/src/kindnet-libcni-driver"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$gopath/cache" GOFLAGS=
"$go" vet .
# Built beside OUTPUT, then renamed: a test running meanwhile never sees half a binary.
"$go" build -trimpath -ldflags "-X main.libcniPackage=$version" -o "$out.tmp.$$" .
mv -f "$out.tmp.$$" "$out"
echo "libcni-driver: built $out (libcni $version)"
