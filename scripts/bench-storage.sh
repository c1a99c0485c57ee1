#!/usr/bin/env bash
# Storage benchmark: husk vs runc in the same host and run (create cost of the first and
# second container of busybox, a ~300 MB Debian root and +1 GiB; volume sequential I/O
# and a 20,000-file metadata job, and the same job on the root).
#   scripts/bench-storage.sh [--rounds N] [--only create|io] [--io-rounds N] [--seq-mib M] [--meta-files F]
# The Debian root is debootstrap'ed once (from the machine's own Debian mirror) into
# target/husk-bench/debian-rootfs.tar; without one a synthetic tree of the same size is
# used. Runs directly where /dev/kvm boots Linux, else inside the software-emulated test
# host (8 GiB: the layers and their images live on its tmpfs). Results:
# target/husk-bench/storage.json
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/common.sh
husk_bench_prepare
husk_busybox_image "$out" >/dev/null
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p husk-tests \
    --bin husk-io-bench --target x86_64-unknown-linux-gnu
tool=$repo/target/x86_64-unknown-linux-gnu/release/husk-io-bench
debian=$out/debian-rootfs.tar
if [ ! -f "$debian" ]; then
    src=/etc/apt/sources.list.d/debian.sources
    uris=$(awk '/^URIs:/{print $2; exit}' "$src" 2>/dev/null || true)
    tmp=$(mktemp -d /var/tmp/husk-debian.XXXXXX)
    echo "bench-storage: debootstrap of a Debian root with python3 (once)" >&2
    if [ -n "$uris" ] && debootstrap --variant=minbase --include=python3 bookworm "$tmp" "$uris" \
            >"$out/debootstrap.log" 2>&1; then
        tar -C "$tmp" --numeric-owner -cf "$debian.tmp" . && mv "$debian.tmp" "$debian"
    else
        echo "bench-storage: debootstrap failed (see $out/debootstrap.log); a synthetic tree stands in" >&2
    fi
    rm -rf "$tmp"
fi
bench=(python3 tests/bench/storage.py --husk "$repo/target/release/husk" --base-rootfs "$out/rootfs"
       --io-tool "$tool" --debian-tar "$debian" --out "$out/storage.json" "$@")
HUSK_TESTHOST_MEMORY=${HUSK_TESTHOST_MEMORY:-8G} husk_on_kvm_host 7200 -- "${bench[@]}"
