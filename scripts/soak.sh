#!/usr/bin/env bash
# The lifecycle soak (issue 9): create/start/kill/delete cycles with kill -9 of the CLI or
# the sandbox at random points, then a census of leaked processes, mounts, loop devices,
# descriptors, files, cgroups and sockets, printed.
#
#   scripts/soak.sh [--cycles N]          process backend on this host (default 1000)
#   scripts/soak.sh --vm [--cycles N]     microVMs in the VM tier (default 100; HEAVY)
#
# HUSK_SOAK_SEED=S replays a run (each run prints its seed). CI runs short smokes of both
# (runtime/tests/soak.rs, 20 cycles; the hardening suite, 3 cycles).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
vm=0
cycles=
while [ $# -gt 0 ]; do
    case "$1" in
        --vm) vm=1; shift ;;
        --cycles) cycles=$2; shift 2 ;;
        *) echo "usage: scripts/soak.sh [--vm] [--cycles N]" >&2; exit 2 ;;
    esac
done
if [ "$vm" = 1 ]; then
    export HUSK_SOAK_VM_CYCLES=${cycles:-100}
    # ~30-60 s a cycle in the software-emulated test host.
    export HUSK_VM_TIER_TIMEOUT=${HUSK_VM_TIER_TIMEOUT:-$((HUSK_SOAK_VM_CYCLES * 90 + 900))}
    exec tests/vm-tier.sh --hardening lifecycle_soak --nocapture
fi
HUSK_SOAK_CYCLES=${cycles:-1000} exec cargo test -q -p husk --test soak -- --nocapture
