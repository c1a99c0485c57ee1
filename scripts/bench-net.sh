#!/usr/bin/env bash
# Network benchmark: iperf3 both ways and ping round trip to a container, for husk, runc
# and QEMU `-M microvm` with a tap virtio-net-device on the same guest kernel, all on one
# bridge in the same host and run; prints medians and the ratios.
#   scripts/bench-net.sh [--rounds N] [--seconds S]
# Runs directly where /dev/kvm boots Linux, else inside the software-emulated test host
# (absolute figures there are slow; compare the ratios). Results: target/husk-bench/net.json
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/common.sh
husk_bench_prepare
# A rootfs with busybox and iperf3 (with the libraries it links), for all three.
rootfs=$out/net-rootfs
rm -rf "$rootfs"
husk_busybox_tree "$rootfs"
for f in /usr/bin/iperf3 $(ldd /usr/bin/iperf3 | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$f")"
    cp -L "$f" "$rootfs$f"
done
# QEMU's guest has no agent: this init configures eth0 and serves iperf3.
cat >"$rootfs/bench-init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys
ip link set lo up
ip addr add "$(cat /bench-ip)" dev eth0
ip link set eth0 up
echo BENCH_READY > /dev/ttyS0
exec iperf3 -s
INIT
chmod +x "$rootfs/bench-init"
bench=(python3 tests/bench/net.py --husk "$repo/target/release/husk" --kernel "$HUSK_KERNEL"
       --rootfs "$rootfs" --rootfs-builder "$repo/target/release/husk-rootfs-builder"
       --out "$out/net.json" "$@")
husk_on_kvm_host 5400 -- "${bench[@]}"
