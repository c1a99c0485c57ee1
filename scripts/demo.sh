#!/usr/bin/env bash
# husk's main job on a built-in default: boot a microVM with its own guest kernel and a
# busybox root disk, and run a command in it (default: uname -a) through the in-guest agent.
#
#   scripts/demo.sh [COMMAND [ARGS...]]
#
# On a machine whose /dev/kvm cannot boot Linux (see shared/ENVIRONMENT.md) it runs inside
# a software-emulated test host, which is slow but real.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh >&2
[ $# -gt 0 ] || set -- uname -a
kernel=$(guest-kernel-config/build-kernel.sh | tail -n 1)
initrd=$(scripts/build-guest.sh | tail -n 1)
cargo build --release -q -p husk -p husk-rootfs-builder
out=$repo/target/husk-demo
mkdir -p "$out/rootfs/bin" "$out/rootfs"/{proc,sys,dev,tmp,run,etc,root}
cp /bin/busybox "$out/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ -e "$out/rootfs/bin/$a" ] || ln -s busybox "$out/rootfs/bin/$a"; done
target/release/husk-rootfs-builder ext4 --from "$out/rootfs" --out "$out/busybox.img" >/dev/null
run=(target/release/husk vm run --kernel "$kernel" --initrd "$initrd" --disk "$out/busybox.img:ro" -- "$@")
echo "host kernel: $(uname -r)" >&2
if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    exec "${run[@]}"
else
    echo "demo: this /dev/kvm cannot boot Linux; running inside a software-emulated KVM test host (slow)" >&2
    exec tests/testhost/run.sh --timeout 900 -- "${run[@]}"
fi
