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
. scripts/common.sh
husk_build
image=$(husk_busybox_image "$repo/target/husk-demo")
run=(target/release/husk vm run --kernel "$HUSK_KERNEL" --initrd "$HUSK_INITRD" --disk "$image:ro" -- "$@")
echo "host kernel: $(uname -r)" >&2
if husk_kvm_boots_linux; then
    exec "${run[@]}"
else
    echo "demo: this /dev/kvm cannot boot Linux; running inside a software-emulated KVM test host (slow)" >&2
    exec tests/testhost/run.sh --timeout 900 -- "${run[@]}"
fi
