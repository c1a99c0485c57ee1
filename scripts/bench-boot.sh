#!/usr/bin/env bash
# Boot benchmark: husk vs QEMU microvm, same kernel/initramfs/disk, same host and run.
#   scripts/bench-boot.sh [--boots N]
# Runs directly where /dev/kvm boots Linux, else inside the software-emulated test host
# (absolute times there are slow; compare the ratios). Results: target/husk-bench/boot.json
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/common.sh
husk_bench_prepare
image=$(husk_busybox_image "$out")
bench=(python3 tests/bench/boot.py --husk "$repo/target/release/husk" --kernel "$HUSK_KERNEL"
       --initrd "$HUSK_INITRD" --disk "$image" --out "$out/boot.json" "$@")
husk_on_kvm_host 5400 -- "${bench[@]}"
