#!/usr/bin/env bash
# Runs every husk test: installs what is missing, checks formatting and lints, runs the
# host tier (cargo test), a short smoke of each fuzz target, and the VM tier (tests/vm-tier.sh: real kernel, real KVM, directly
# or inside a software-emulated test host, whichever this machine supports).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== host tier (cargo test; the VM-tier tests show as ignored here and run below)"
cargo test --workspace -q
echo "== fuzz smoke (each target briefly; long runs: scripts/fuzz.sh --time N)"
scripts/fuzz.sh --time 10 --sanitizer none
echo "== VM tier"
# Each suite has its own time limit in tests/vm-tier.sh, so a hung test fails the run
# inside CI's 90 minutes (the tier takes 30-40 there).
tests/vm-tier.sh
