#!/usr/bin/env bash
# Installs every system package husk needs to build and to run both test tiers on Debian 12.
# Idempotent: on a warm machine it only checks and returns.
set -euo pipefail

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo is missing: install a Rust toolchain (rustup) first" >&2
    exit 1
fi

packages=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio
          busybox-static e2fsprogs erofs-utils kmod zstd xz-utils python3 debootstrap
          # container clients for the VM tier's client tests, and the image tools they use
          containerd runc crun runsc podman conmon containernetworking-plugins docker.io
          umoci skopeo
          # the CRI client of the pod tests (k8s-cri generates its code with protoc)
          protobuf-compiler
          # networking tests and the network benchmark
          iptables dnsmasq-base iperf3)
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${packages[@]}"; do have "$p" || missing+=("$p"); done
qemu_ok() { qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 10\.'; }

# The fuzz targets (scripts/fuzz.sh) need cargo-fuzz (they build on the stable toolchain).
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install -q --locked cargo-fuzz
fi

if [ ${#missing[@]} -eq 0 ] && qemu_ok; then
    exit 0
fi

# QEMU 10.x comes from bookworm-backports (7.2 is untested for nested SVM under TCG). The
# backports source reuses the machine's own Debian mirror, so no host is named here.
src=/etc/apt/sources.list.d/debian.sources
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/ && [ -f "$src" ]; then
    uris=$(awk '/^URIs:/{print $2; exit}' "$src")
    cat >/etc/apt/sources.list.d/husk-backports.sources <<SRC
Types: deb
URIs: $uris
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! qemu_ok; then
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
