#!/bin/sh
# Build the headbits images, one per service target of the Dockerfile (`make image`).
#
# Uses buildah where it is installed (the base comes from scripts/base-image.sh when no registry
# is reachable), docker otherwise. Prints one JSON object per image on stdout: target, tag,
# seconds the build took, and the image's size in bytes.
#
# Usage: scripts/build-images.sh [TARGET...]     default: collector featurizer scorer trainer
# Environment: IMAGE_PREFIX (default: headbits), IMAGE_TAG (default: the project's version),
#              BASE_IMAGE (a --build-arg: production pins debian:bookworm-slim@sha256:...),
#              BUILD_CA_BUNDLE (the CA bundle pip trusts during the build; default: the host's
#              system bundle, so a build behind an intercepting proxy trusts what the host
#              trusts; empty: pip's own), BUILDAH_STORAGE_DRIVER (default: vfs),
#              MIN_FREE_GB (buildah: prune untagged layers first below this; default 40).
set -eu
cd "$(dirname "$0")/.."

prefix="${IMAGE_PREFIX:-headbits}"
tag="${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)}"
[ "$#" -gt 0 ] || set -- collector featurizer scorer trainer

build_args=""
[ -n "${BASE_IMAGE:-}" ] && build_args="--build-arg BASE_IMAGE=$BASE_IMAGE"
ca_args=""
host_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$host_bundle" ] && : "${BUILD_CA_BUNDLE=$host_bundle}"
if [ -n "${BUILD_CA_BUNDLE:-}" ]; then
    ca_args="-v $(dirname "$BUILD_CA_BUNDLE"):/run/build-ca:ro --build-arg PIP_CERT=/run/build-ca/$(basename "$BUILD_CA_BUNDLE")"
fi

if command -v buildah >/dev/null 2>&1; then
    driver="${BUILDAH_STORAGE_DRIVER:-vfs}"
    # vfs keeps a full copy of the file system for every layer, so each generation of the
    # images leaves about 12 GB of untagged layers behind. Where less than MIN_FREE_GB (default
    # 40) is free, those are removed first: the layer cache is lost, the disk is not filled.
    storage="$(buildah --storage-driver "$driver" info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)"
    mkdir -p "$storage"
    free_gb=$(( $(df --output=avail -k "$storage" | tail -1) / 1048576 ))
    if [ "$free_gb" -lt "${MIN_FREE_GB:-40}" ]; then
        echo "build-images: ${free_gb} GB free under $storage: removing untagged image layers" >&2
        buildah --storage-driver "$driver" rmi --prune >/dev/null
    fi
    [ -n "${BASE_IMAGE:-}" ] || scripts/base-image.sh
    build() { buildah --storage-driver "$driver" bud --isolation chroot --layers $ca_args $build_args --target "$1" -t "$2" . >&2; }
    # The image's size: the sum of its (uncompressed) layers.
    size() { buildah --storage-driver "$driver" inspect --type image --format '{{.Manifest}}' "$1" \
        | python3 -c 'import json, sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))'; }
elif command -v docker >/dev/null 2>&1; then
    build() { docker build $ca_args $build_args --target "$1" -t "$2" . >&2; }
    size() { docker image inspect --format '{{.Size}}' "$1"; }
else
    echo "build-images: neither buildah nor docker is installed" >&2
    exit 1
fi

for target in "$@"; do
    image="$prefix-$target:$tag"
    started="$(date +%s)"
    build "$target" "$image"
    echo "{\"target\": \"$target\", \"image\": \"$image\", \"build_seconds\": $(( $(date +%s) - started )), \"size_bytes\": $(size "$image")}"
done
