#!/bin/sh
# Make sure the base image `debian:bookworm-slim` exists in the local buildah storage.
#
# The Dockerfile starts FROM debian:bookworm-slim. Where an image registry is reachable, buildah
# pulls it as usual and this script is not needed. Where only Debian's package archive is
# reachable (our machines and CI), the same base is made from Debian's packages with mmdebstrap
# (the `minbase` variant is what the slim image holds: essential packages and apt; like the slim
# image, dpkg leaves out documentation, manual pages and translations, also in packages installed
# later) and tagged with the name the Dockerfile uses, so the very same Dockerfile is built
# everywhere.
#
# Usage: scripts/base-image.sh           (idempotent: returns at once when the tag exists)
# Environment: BUILDAH_STORAGE_DRIVER     buildah storage driver (default: vfs)
set -eu

driver="${BUILDAH_STORAGE_DRIVER:-vfs}"
tag="docker.io/library/debian:bookworm-slim"
buildah() { command buildah --storage-driver "$driver" "$@"; }

if buildah inspect --type image "$tag" >/dev/null 2>&1; then
    exit 0
fi
for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "base-image: '$tool' is not installed (apt-get install buildah mmdebstrap)" >&2
        exit 1
    }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM
echo "base-image: building $tag from Debian bookworm with mmdebstrap" >&2
mmdebstrap --quiet --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar"
container="$(buildah from scratch)"
buildah add --quiet "$container" "$work/rootfs.tar" / >/dev/null
buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
buildah commit --quiet "$container" "$tag" >/dev/null
buildah rm "$container" >/dev/null
echo "base-image: $tag ready" >&2
