#!/usr/bin/env bash
# Runs a cargo-fuzz target of husk's device models (libFuzzer; needs the nightly toolchain
# and cargo-fuzz, which scripts/install-deps.sh installs).
#   scripts/fuzz.sh [--time SECONDS] [TARGET]      default: virtio_fs for 60 s
# The corpus starts from fuzz/corpus/TARGET (kept in the repository) and grows in
# target/fuzz-corpus/TARGET; crashes, hangs (-timeout) and runaway memory (-rss_limit_mb)
# land in fuzz/artifacts/TARGET with the input that caused them. CI runs a 30 s smoke;
# anything over 2 minutes is a HEAVY command (flock /work/locks/heavy.lock ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
time=60
while [ $# -gt 0 ]; do
    case "$1" in
        --time) time=${2:?--time needs seconds}; shift 2 ;;
        -h|--help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
target=${1:-virtio_fs}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
    exit 1
fi
work=target/fuzz-corpus/$target
mkdir -p "$work" "fuzz/corpus/$target"
echo "fuzz: $target for ${time}s" >&2
cd fuzz
exec cargo +nightly fuzz run "$target" "../$work" "corpus/$target" -- \
    -max_total_time="$time" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
