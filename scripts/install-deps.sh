#!/usr/bin/env bash
# Installs every system package husk needs to build and to run both test tiers on Debian 12.
# Idempotent: a warm machine skips what is already there.
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# QEMU 10.x from bookworm-backports (7.2 is untested for nested SVM under TCG).
# The backports source is derived from the machine's own Debian source, so no host is named here.
if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
    src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ]; then
        uris=$(awk '/^URIs:/{print $2; exit}' "$src")
        cat >/etc/apt/sources.list.d/husk-backports.sources <<SRC
Types: deb
URIs: $uris
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    apt-get update -qq
fi
[ -f /var/lib/apt/periodic/update-success-stamp ] || [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || apt-get update -qq

for p in linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio \
         busybox-static e2fsprogs kmod zstd xz-utils python3; do
    have "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 10'; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86
fi
