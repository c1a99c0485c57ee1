# Shared by scripts/demo.sh, the scripts/bench-*.sh benchmarks and tests/vm-tier.sh. Source it from the
# repository root; it defines functions only.

# Whether this machine's /dev/kvm can boot a Linux guest (hardware vmx/svm with kvm_intel or
# kvm_amd). The development machines' kvm_pvm cannot (see shared/ENVIRONMENT.md).
husk_kvm_boots_linux() {
    [ -c /dev/kvm ] || return 1
    [ -d /sys/module/kvm_pvm ] && return 1
    grep -qwE 'vmx|svm' /proc/cpuinfo || return 1
    [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]
}

# The start of every benchmark: dependencies installed, the guest kernel, agent and husk
# built (husk_build), and `out` set to target/husk-bench, made.
husk_bench_prepare() {
    bash scripts/install-deps.sh >&2
    husk_build
    out=$PWD/target/husk-bench
    mkdir -p "$out"
}

# Builds the guest kernel (cached), the static agent and initramfs, and release husk and
# husk-rootfs-builder. Sets HUSK_KERNEL and HUSK_INITRD, and links both into
# target/share/husk/, where target/release/husk finds them by itself: engines (podman,
# dockerd, the containerd shim) do not pass HUSK_* variables on to the runtime.
husk_build() {
    HUSK_KERNEL=$(guest-kernel-config/build-kernel.sh | tail -n 1)
    HUSK_INITRD=$(scripts/build-guest.sh | tail -n 1)
    cargo build --release -q -p husk -p containerd-shim-husk-v2 -p husk-rootfs-builder
    mkdir -p target/share/husk
    ln -sfn "$HUSK_KERNEL" target/share/husk/vmlinux
    ln -sfn "$HUSK_INITRD" target/share/husk/initramfs.cpio
    export HUSK_KERNEL HUSK_INITRD
}

# husk_busybox_tree ROOTFS: static busybox in ROOTFS/bin with every applet linked, the
# usual top-level directories, and a root user in /etc/passwd and /etc/group.
husk_busybox_tree() {
    local rootfs=$1 applet
    mkdir -p "$rootfs"/{bin,proc,sys,dev,tmp,run,etc,root}
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    echo "root:x:0:0:root:/root:/bin/sh" >"$rootfs/etc/passwd"
    echo "root:x:0:" >"$rootfs/etc/group"
}

# husk_busybox_image DIR [FILE...]: a busybox ext4 image at DIR/busybox.img (its tree left in
# DIR/rootfs) with each FILE copied to the image's root. Prints the image path.
husk_busybox_image() {
    local dir=$1 rootfs=$1/rootfs
    shift
    rm -rf "$rootfs"
    husk_busybox_tree "$rootfs"
    [ $# -eq 0 ] || cp "$@" "$rootfs/"
    target/release/husk-rootfs-builder ext4 --from "$rootfs" --out "$dir/busybox.img" >/dev/null
    echo "$dir/busybox.img"
}

# husk_on_kvm_host TIMEOUT -- CMD...: runs CMD here if /dev/kvm boots Linux, else inside the
# software-emulated test host (tests/testhost/run.sh). Says which. The repository (the
# current directory) is shared read-write: wherever the checkout lives (even under /tmp,
# which is a fresh tmpfs inside the test host), CMD sees it and what it writes there.
husk_on_kvm_host() {
    local timeout=$1
    shift 2
    if husk_kvm_boots_linux; then
        echo "husk: MODE direct (this /dev/kvm boots Linux guests)" >&2
        "$@"
    else
        echo "husk: MODE test host (this /dev/kvm cannot boot Linux; a software-emulated KVM host: slow, compare ratios)" >&2
        tests/testhost/run.sh --memory "${HUSK_TESTHOST_MEMORY:-4G}" --rwdir "$PWD" \
            --timeout "$timeout" -- "$@"
    fi
}
