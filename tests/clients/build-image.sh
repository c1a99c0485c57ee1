#!/usr/bin/env bash
# Builds the busybox image the client tests run, locally (no registry is reachable):
#   tests/clients/build-image.sh OUT_DIR
# writes OUT_DIR/busybox-oci.tar (oci-archive, for containerd and podman) and
# OUT_DIR/busybox-docker.tar (docker-archive, for `docker load`), both tagged
# localhost/busybox:latest, and prints OUT_DIR. Rebuilt only when busybox changes.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
out=${1:?usage: build-image.sh OUT_DIR}
mkdir -p "$out"
stamp="$out/.busybox-$(sha256sum /bin/busybox | cut -c1-16)"
if [ -f "$stamp" ] && [ -f "$out/busybox-oci.tar" ] && [ -f "$out/busybox-docker.tar" ]; then
    echo "$out"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/oci"
umoci new --image "$work/oci:latest"
umoci unpack --rootless --image "$work/oci:latest" "$work/bundle" >/dev/null
husk_busybox_tree "$work/bundle/rootfs"
umoci repack --image "$work/oci:latest" "$work/bundle" >/dev/null
umoci config --image "$work/oci:latest" --config.cmd /bin/sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
rm -f "$out/busybox-oci.tar" "$out/busybox-docker.tar"
skopeo copy -q "oci:$work/oci:latest" "oci-archive:$out/busybox-oci.tar:localhost/busybox:latest"
skopeo copy -q "oci:$work/oci:latest" "docker-archive:$out/busybox-docker.tar:localhost/busybox:latest"
rm -f "$out"/.busybox-*
touch "$stamp"
echo "$out"
