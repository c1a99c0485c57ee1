#!/usr/bin/env bash
# Container benchmark through containerd: husk vs runc vs runsc in the same host and run
# (ctr run --rm /bin/true latency, create cost as the rootfs grows, idle container memory).
#   scripts/bench-clients.sh [--rounds N]       (HUSK_BENCH_NO_HUSK=1: runc/runsc only)
# Runs directly where /dev/kvm boots Linux, else inside the software-emulated test host.
# Results: target/husk-bench/clients.json
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/common.sh
husk_bench_prepare
rm -rf "$out/work"
husk_busybox_image "$out" >/dev/null
images=$(tests/clients/build-image.sh "$out/images")
husk=(--husk "$repo/target/release/husk")
[ "${HUSK_BENCH_NO_HUSK:-0}" = 1 ] && husk=()
bench=(python3 tests/bench/clients.py "${husk[@]}" --images "$images"
       --base-rootfs "$out/rootfs" --out "$out/clients.json" --work-dir "$out/work" "$@")
husk_on_kvm_host 5400 -- "${bench[@]}"
