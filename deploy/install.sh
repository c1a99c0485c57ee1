#!/usr/bin/env bash
# Installs husk: the binary and the guest it boots (kernel + initramfs with the agent).
#
#   deploy/install.sh [--prefix DIR]       (default /usr/local)
#
# Builds what is missing first (the guest kernel is cached; see scripts/common.sh), then
# installs DIR/bin/husk, DIR/bin/containerd-shim-husk-v2 (containerd finds it on its PATH
# for runtime_type "io.containerd.husk.v2"; it runs the husk beside it),
# DIR/share/husk/vmlinux and DIR/share/husk/initramfs.cpio, where husk looks for its guest
# by default. It changes no engine configuration: merge the
# snippets in deploy/ by hand (see deploy/README.md).
set -euo pipefail
prefix=/usr/local
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        *) echo "usage: $0 [--prefix DIR]" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/common.sh
husk_build
install -D -m 0755 target/release/husk "$prefix/bin/husk"
install -D -m 0755 target/release/containerd-shim-husk-v2 "$prefix/bin/containerd-shim-husk-v2"
install -D -m 0644 "$HUSK_KERNEL" "$prefix/share/husk/vmlinux"
install -D -m 0644 "$HUSK_INITRD" "$prefix/share/husk/initramfs.cpio"
echo "installed $prefix/bin/husk, $prefix/bin/containerd-shim-husk-v2 and the guest in $prefix/share/husk" >&2
