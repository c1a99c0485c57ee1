#!/usr/bin/env bash
# Pod benchmark through containerd's CRI plugin: husk's shim v2 (one microVM per pod)
# against runc, same containerd, same host and run (tests/cri/src/bin/husk-pod-bench.rs):
# pod ready (run pod + create + start one container) and the PSS of an idle pod's host
# processes, with ratios, and husk's pod memory against Kata's published ~125 MiB.
#   scripts/bench-pods.sh [--rounds N] [--idle SECONDS]
# Runs directly where /dev/kvm boots Linux, else inside the software-emulated test host.
# Results: target/husk-bench/pods.json
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/common.sh
husk_bench_prepare
images=$(tests/clients/build-image.sh "$out/images")
cargo build --release -q -p husk-cri --bin husk-pod-bench
bench=(target/release/husk-pod-bench --bin-dir "$repo/target/release" --images "$images"
       --out "$out/pods.json" "$@")
husk_on_kvm_host 3600 -- "${bench[@]}"
