#!/usr/bin/env bash
# Builds the busybox image the client tests run, locally (no registry is reachable):
#   tests/clients/build-image.sh OUT_DIR
# writes OUT_DIR/busybox-oci.tar (oci-archive, for containerd and podman) and
# OUT_DIR/busybox-docker.tar (docker-archive, for `docker load`), both tagged
# localhost/busybox:latest, and OUT_DIR/pause-oci.tar (localhost/husk-pause:latest: the same
# tree whose command waits for SIGTERM, the pod tests' sandbox image), and prints OUT_DIR.
# Rebuilt only when busybox or this script changes.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
out=${1:?usage: build-image.sh OUT_DIR}
mkdir -p "$out"
stamp="$out/.busybox-$(cat /bin/busybox "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ -f "$out/busybox-oci.tar" ] && [ -f "$out/busybox-docker.tar" ] &&
    [ -f "$out/pause-oci.tar" ]; then
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
# The pod sandbox ("pause") image: it sleeps until SIGTERM or SIGINT, and as pid 1 of a
# shared pid namespace it reaps what is reparented to it (ash waits for any child).
umoci config --image "$work/oci:latest" --tag pause --config.entrypoint /bin/sh \
    --config.entrypoint -c --config.entrypoint \
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait \$!; done" --clear config.cmd >/dev/null
rm -f "$out/busybox-oci.tar" "$out/busybox-docker.tar" "$out/pause-oci.tar"
skopeo copy -q "oci:$work/oci:latest" "oci-archive:$out/busybox-oci.tar:localhost/busybox:latest"
skopeo copy -q "oci:$work/oci:latest" "docker-archive:$out/busybox-docker.tar:localhost/busybox:latest"
skopeo copy -q "oci:$work/oci:pause" "oci-archive:$out/pause-oci.tar:localhost/husk-pause:latest"
rm -f "$out"/.busybox-*
touch "$stamp"
echo "$out"
