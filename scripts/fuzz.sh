#!/usr/bin/env bash
# Runs husk's cargo-fuzz targets (fuzz/): each for a chosen time, one after the other.
#
#   scripts/fuzz.sh [--time SECONDS] [--jobs N] [--sanitizer address|none] [TARGET...]
#
# Targets: mmio, blk, vsock, virtio_fs, virtio_net (device models driven through guest
# memory: descriptor tables, rings, buffers, features, FUSE requests, frames from the tap),
# protocol_agent, protocol_host (the agent protocol, both sides); all by default, 60 s
# each, under
# AddressSanitizer (`--sanitizer none` builds faster: CI's smoke run uses it). The stored
# corpus fuzz/corpus/TARGET seeds each run; what the fuzzer finds goes to
# target/husk-fuzz/corpus/TARGET (not the repo). A crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the run: add that input to fuzz/corpus/TARGET/ (the unit
# tests replay every stored input) with a unit test named after the bug, and fix it.
#
# Runs on the machine's stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# sanitizer flags); installs cargo-fuzz from crates.io if it is missing. Runs longer than
# two minutes are HEAVY on the shared machines: flock /work/locks/heavy.lock scripts/fuzz.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
all=(mmio blk vsock virtio_fs virtio_net protocol_agent protocol_host)
time=60 jobs=1 sanitizer=address targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) time=${2:?--time needs seconds}; shift 2 ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
        --sanitizer) sanitizer=${2:?--sanitizer needs address or none}; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --jobs must be a positive number" >&2; exit 2; }
[[ $time =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --time must be a positive number of seconds" >&2; exit 2; }
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: unknown target $t (one of: ${all[*]})" >&2; exit 2; }
done

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
status=0
# Parallel jobs only when asked: with -jobs libFuzzer writes fuzz-N.log files in the
# working directory instead of printing.
parallel=()
[ "$jobs" -le 1 ] || parallel=(-jobs="$jobs" -workers="$jobs")
for t in "${targets[@]}"; do
    scratch=$repo/target/husk-fuzz/corpus/$t
    mkdir -p "$scratch"
    echo "fuzz: $t for ${time}s"
    if ! cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$t" "$scratch" "fuzz/corpus/$t" -- \
            -max_total_time="$time" "${parallel[@]}" -print_final_stats=1 \
            -rss_limit_mb=2048 -timeout=10; then
        echo "fuzz: $t FOUND A CRASH; its input is in fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit $status
