#!/usr/bin/env bash
# Boot benchmark: husk vs QEMU microvm, same kernel/initramfs/disk, same host and run.
#   scripts/bench-boot.sh [--boots N]
# Runs directly where /dev/kvm boots Linux, else inside the software-emulated test host
# (absolute times there are slow; compare the ratios). Results: target/husk-bench/boot.json
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh >&2
kernel=$(guest-kernel-config/build-kernel.sh | tail -n 1)
initrd=$(scripts/build-guest.sh | tail -n 1)
cargo build --release -q -p husk -p husk-rootfs-builder
out=$repo/target/husk-bench
mkdir -p "$out/rootfs/bin" "$out/rootfs"/{proc,sys,dev,tmp,run,etc,root}
cp /bin/busybox "$out/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ -e "$out/rootfs/bin/$a" ] || ln -s busybox "$out/rootfs/bin/$a"; done
target/release/husk-rootfs-builder ext4 --from "$out/rootfs" --out "$out/busybox.img" >/dev/null
bench=(python3 tests/bench/boot.py --husk "$repo/target/release/husk" --kernel "$kernel"
       --initrd "$initrd" --disk "$out/busybox.img" --out "$out/boot.json" "$@")
if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "bench: MODE direct" >&2
    "${bench[@]}"
else
    echo "bench: MODE test host (software-emulated KVM host; compare ratios, not times)" >&2
    tests/testhost/run.sh --rwdir "$out" --timeout 5400 -- "${bench[@]}"
fi
