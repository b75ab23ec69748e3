#!/usr/bin/env bash
# Writes the kindnet container image as an archive, from scratch: no
# container engine, no network, no base image. One layer holding the two
# static binaries (/bin/kindnetd, /bin/kindnet-cni) and nothing else (no
# shell, no distribution). The archive is an OCI image layout (oci-layout,
# index.json, blobs/sha256/...) that also carries a Docker manifest.json, so
# `kind load image-archive`, `ctr images import`, `podman load` and
# `docker load` all take it. Reproducible: the same binaries give the same
# bytes (fixed order, owners and times; SOURCE_DATE_EPOCH, default 0).
#
#   scripts/image.sh                 build the static release binaries, then the archive
#   KINDNET_IMAGE_BIN_DIR=DIR scripts/image.sh   use DIR/kindnetd and DIR/kindnet-cni
#   KINDNET_IMAGE_OUT=FILE            where to write (default target/image/kindnet-image.tar)
#
# Prints the archive's path, its size and the image name.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The name the manifests in deploy/ use (one source: checked below and by
# crates/kindnetd/tests/manifests.rs), and what goes into /bin.
image=ghcr.io/kindnet-rs/kindnet:0.1.0
binaries="kindnetd kindnet-cni"
for m in deploy/install-kindnet.yaml deploy/install-kindnet-bridge.yaml; do
  if grep -E '^\s*image:' "$m" | grep -qv "image: $image\$"; then
    echo "image.sh: $m names another image than $image" >&2
    exit 1
  fi
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ "${image##*:}" = "$version" ] || {
  echo "image.sh: the tag of $image is not the workspace version $version" >&2
  exit 1
}
epoch=${SOURCE_DATE_EPOCH:-0}
out=${KINDNET_IMAGE_OUT:-$root/target/image/kindnet-image.tar}

if [ -n "${KINDNET_IMAGE_BIN_DIR:-}" ]; then
  bin=$KINDNET_IMAGE_BIN_DIR
else
  scripts/build.sh static
  bin=$root/target/release
fi
for b in $binaries; do
  [ -x "$bin/$b" ] || { echo "image.sh: $bin/$b missing" >&2; exit 1; }
  # Nothing else is in the image: a dynamically linked binary cannot run.
  case $(ldd "$bin/$b" 2>&1 || true) in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *) echo "image.sh: $bin/$b is dynamically linked (build with scripts/build.sh static)" >&2
       exit 1 ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/oci/blobs/sha256"
for b in $binaries; do install -m 0755 "$bin/$b" "$work/rootfs/bin/$b"; done
chmod 0755 "$work/rootfs/bin"

# Deterministic tar: sorted names, root-owned, one mtime, no pax times.
det_tar() {
  tar --create --format=gnu --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime="@$epoch" --mode='a+rX,u+w,go-w' "$@"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
blob() { # FILE -> moves it into blobs/, prints its digest
  local d
  d=$(sha "$1")
  mv "$1" "$work/oci/blobs/sha256/$d"
  echo "$d"
}

det_tar -C "$work/rootfs" -f "$work/layer.tar" bin
diff_id=$(sha "$work/layer.tar")
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"
layer_size=$(size "$work/layer.tar.gz")
layer=$(blob "$work/layer.tar.gz")

created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
# JSON by printf (no jq needed): every value here is a fixed string, a
# digest, a number or the version from Cargo.toml (checked below).
case $version in *[!0-9A-Za-z.+-]*|'') echo "image.sh: odd version '$version'" >&2; exit 1 ;; esac
printf '{"architecture":"amd64","config":{"Entrypoint":["/bin/kindnetd"],"Env":["PATH=/bin"],"Labels":{"org.opencontainers.image.description":"kindnet in Rust: kindnetd and the kindnet-cni plugins (static, nothing else)","org.opencontainers.image.licenses":"Apache-2.0","org.opencontainers.image.title":"kindnet","org.opencontainers.image.version":"%s"}},"created":"%s","history":[{"created":"%s","created_by":"scripts/image.sh"}],"os":"linux","rootfs":{"diff_ids":["sha256:%s"],"type":"layers"}}' \
  "$version" "$created" "$created" "$diff_id" >"$work/config.json"
config_size=$(size "$work/config.json")
config=$(blob "$work/config.json")

printf '{"config":{"digest":"sha256:%s","mediaType":"application/vnd.oci.image.config.v1+json","size":%s},"layers":[{"digest":"sha256:%s","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":%s}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest"
manifest_size=$(size "$work/manifest")
manifest=$(blob "$work/manifest")

printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '{"manifests":[{"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"},"digest":"sha256:%s","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"amd64","os":"linux"},"size":%s}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}' \
  "$image" "$image" "$manifest" "$manifest_size" >"$work/oci/index.json"
# What `docker load` (before and after Docker 25) reads; layers by path.
printf '[{"Config":"blobs/sha256/%s","Layers":["blobs/sha256/%s"],"RepoTags":["%s"]}]' \
  "$config" "$layer" "$image" >"$work/oci/manifest.json"
touch -d "@$epoch" "$work/oci/oci-layout" "$work/oci/index.json" "$work/oci/manifest.json"

mkdir -p "$(dirname "$out")"
# oci-layout first: tools that sniff the format read the start.
det_tar -C "$work/oci" -f "$out.tmp" --no-recursion oci-layout index.json manifest.json \
  blobs blobs/sha256 $(cd "$work/oci" && find blobs/sha256 -type f | LC_ALL=C sort)
mv "$out.tmp" "$out"

echo "image $image"
echo "archive $out ($(size "$out") bytes; layer $layer_size bytes compressed, $(size "$work/layer.tar") uncompressed)"
echo "manifest sha256:$manifest"
