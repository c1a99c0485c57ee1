#!/usr/bin/env bash
# Builds the guest userspace: the static husk-agent and the initramfs that runs it as
# /init. Prints the initramfs path as the last line of stdout; everything else goes to
# stderr. Usage: scripts/build-guest.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
triple=x86_64-unknown-linux-gnu

# The initramfs has no libc or dynamic loader: the agent must be fully static. An
# explicit --target keeps RUSTFLAGS off build scripts and proc macros, and keeps this
# build apart from the host builds in target/release.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p husk-agent --target "$triple" >&2
agent=$target_dir/$triple/release/husk-agent

cargo build --release -p husk-rootfs-builder >&2
# The builder refuses an agent that is not a static ELF executable.
out=$target_dir/husk-guest/initramfs.cpio
"$target_dir/release/husk-rootfs-builder" initramfs --agent "$agent" --out "$out" >/dev/null
echo "build-guest: agent $(stat -c %s "$agent") bytes, initramfs $(stat -c %s "$out") bytes" >&2
echo "$out"
