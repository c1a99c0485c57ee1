#!/usr/bin/env bash
# Runs a command inside husk's "test host": a Linux VM under QEMU software emulation (TCG)
# with an emulated AMD SVM CPU, so that its kernel has a real /dev/kvm (kvm_amd).
# This machine's own /dev/kvm cannot boot Linux guests: see /work/shared/ENVIRONMENT.md
# and tests/testhost/README.md.
#
#   tests/testhost/run.sh [--memory 4G] [--cpus 2] [--rwdir DIR]... [--timeout SECONDS] -- COMMAND [ARGS...]
#
# The command runs as root in the caller's working directory, on the caller's root
# filesystem (read-only 9p under a tmpfs overlay; --rwdir DIRs are shared read-write at the
# same path), and run.sh exits with its exit status. 124: timeout; 125: test host failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Kernel modules put in the initramfs and loaded at boot, in dependency order (their
# dependencies are resolved from modules.dep; built-in ones are skipped). Anything else can
# be modprobe'd inside: the kernel's whole module tree is mounted at /lib/modules/$(uname -r).
MODULES=(
    virtio_pci virtio_console 9pnet_virtio 9p overlay   # boot: 9p root, output ports
    kvm kvm_amd                                          # /dev/kvm
    tun veth bridge br_netfilter                         # networking tests
)

# Environment variables passed through to the command (extended regex on the name), plus any
# names listed in $HUSK_TESTHOST_ENV.
PASS_ENV_RE='^(PATH|TERM|LANG|LANGUAGE|LC_[A-Z]+|TZ|CI|NO_COLOR|RUST[A-Z0-9_]*|CARGO[A-Z0-9_]*|HUSK_[A-Z0-9_]*)$'

# EPYC with SVM; the features listed with '-' are ones TCG cannot emulate anyway (dropping
# them only silences QEMU's warnings).
CPU=EPYC,+svm,-fxsr-opt,-misalignsse,-osvw,-topoext,-nrip-save,-xsavec
CACHE_ROOT=${HUSK_CACHE_DIR:-$HOME/.cache/husk}/testhost
QEMU=${HUSK_TESTHOST_QEMU:-qemu-system-x86_64}
DEBUG=${HUSK_TESTHOST_DEBUG:-0}

msg() { echo "testhost: $*" >&2; }
fail() { msg "$*"; exit 125; }

usage() {
    cat >&2 <<'EOF'
usage: tests/testhost/run.sh [--memory 4G] [--cpus 2] [--rwdir DIR]... [--timeout SECONDS] -- COMMAND [ARGS...]
  --memory SIZE     test host RAM (QEMU -m syntax), default 4G
  --cpus N          test host vCPUs, default 2
  --rwdir DIR       share DIR read-write at the same path (repeatable); everything else is
                    the caller's root filesystem, read-only with a throw-away tmpfs overlay
  --timeout SECS    kill the test host after SECS seconds (exit status 124); default none
environment: HUSK_CACHE_DIR, HUSK_TESTHOST_DEBUG=1 (kernel log on stderr, keep run dir),
             HUSK_TESTHOST_CGROUP=v1|v2 (default v2), HUSK_TESTHOST_ENV="VAR ..." (more env to pass),
             HUSK_TESTHOST_KERNEL=linux-image-6.1.0-NN-amd64 (pin the kernel package),
             HUSK_TESTHOST_APPEND="..." (more kernel command line)
EOF
    exit 2
}

memory=4G cpus=2 timeout=0 rwdirs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --memory) memory=${2:?--memory needs a value}; shift 2 ;;
        --memory=*) memory=${1#*=}; shift ;;
        --cpus) cpus=${2:?--cpus needs a value}; shift 2 ;;
        --cpus=*) cpus=${1#*=}; shift ;;
        --rwdir) rwdirs+=("${2:?--rwdir needs a value}"); shift 2 ;;
        --rwdir=*) rwdirs+=("${1#*=}"); shift ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
        --timeout=*) timeout=${1#*=}; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) msg "unknown argument: $1"; usage ;;
    esac
done
[ $# -gt 0 ] || usage
[[ $cpus =~ ^[1-9][0-9]*$ ]] || fail "--cpus must be a positive integer"
[[ $timeout =~ ^[0-9]+$ ]] || fail "--timeout must be a number of seconds"
[[ $memory =~ ^[0-9]+[MGmg]?$ ]] || fail "--memory must look like 4G or 2048M"

# Already inside a test host: just run the command.
if [ "${HUSK_IN_TESTHOST:-}" = 1 ]; then exec "$@"; fi

# ---------------------------------------------------------------------------------------
# Kernel and initramfs, cached per kernel package version + hash of these scripts.

resolve_kernel() {
    # apt-cache takes a second or two: remember its answer until the package lists change.
    local stamp memo=$CACHE_ROOT/.resolved
    stamp="${HUSK_TESTHOST_KERNEL:-} $( (stat -c %Y /var/lib/apt/lists /var/cache/apt/pkgcache.bin 2>/dev/null || true) | tr '\n' ' ')"
    if [ -f "$memo" ] && [ "$(head -n 1 "$memo")" = "$stamp" ]; then
        { read -r _; read -r pkg pkgver; } <"$memo"
        [ -n "$pkgver" ] && return
    fi
    pkg=${HUSK_TESTHOST_KERNEL:-}
    if [ -z "$pkg" ]; then
        pkg=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null |
              grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -n 1) || true
    fi
    pkgver=
    [ -n "$pkg" ] && pkgver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null |
                              awk '/^Version:/ { print $2; exit }') || true
    [ -z "$pkgver" ] || printf '%s\n%s %s\n' "$stamp" "$pkg" "$pkgver" >"$memo"
}

# dependency-ordered module list (paths relative to the module tree) -> stdout
module_closure() {
    local moddir=$1; shift
    local -A deps=() file=() seen=()
    local line f name d
    while IFS= read -r line; do
        f=${line%%:*}
        name=${f##*/}; name=${name%%.ko*}; name=${name//-/_}
        file[$name]=$f
        deps[$name]=${line#*:}
    done <"$moddir/modules.dep"
    visit() {
        local n=${1//-/_} dn
        [ -n "${seen[$n]:-}" ] && return
        seen[$n]=1
        if [ -z "${file[$n]:-}" ]; then
            if grep -qE "/${n//_/[-_]}\.ko" "$moddir/modules.builtin"; then return; fi
            fail "module $n is neither a module nor built into this kernel"
        fi
        for dn in ${deps[$n]}; do
            dn=${dn##*/}; visit "${dn%%.ko*}"
        done
        echo "${file[$n]}"
    }
    for name in "$@"; do visit "$name"; done
}

build_cache() {
    local dest=$1 tmp kver
    msg "building the test host kernel + initramfs into $dest (once per kernel/script version)"
    rm -rf "$CACHE_ROOT"/.build.*   # left by an interrupted build (we hold the lock)
    tmp=$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$pkgver" >/dev/null) \
        || { rm -rf "$tmp"; fail "apt-get download $pkg=$pkgver failed"; }
    dpkg-deb -x "$tmp"/*.deb "$tmp/x"
    local mods=$tmp/x/lib/modules
    [ -d "$mods" ] || mods=$tmp/x/usr/lib/modules
    kver=$(ls "$mods")
    mkdir -p "$tmp/out/root/lib/modules"
    # Boot the uncompressed ELF through its PVH entry point when possible: a bzImage spends
    # about 3.5 s decompressing itself under TCG.
    local vmlinuz=$tmp/x/boot/vmlinuz-$kver off
    if grep -q '^CONFIG_PVH=y' "$tmp/x/boot/config-$kver" &&
       off=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$vmlinuz" | head -n 1 | cut -d: -f1) && [ -n "$off" ] &&
       { tail -c +$((off + 1)) "$vmlinuz" | xz -dcq >"$tmp/out/vmlinux" 2>/dev/null || true; } &&
       [ "$(head -c 4 "$tmp/out/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
        msg "kernel: $kver, booted as an uncompressed ELF (PVH)"
    else
        rm -f "$tmp/out/vmlinux"
        msg "kernel: $kver, booted as bzImage"
    fi
    mv "$vmlinuz" "$tmp/out/vmlinuz"
    mv "$mods/$kver" "$tmp/out/root/lib/modules/"
    depmod -b "$tmp/out/root" "$kver"
    local moddir=$tmp/out/root/lib/modules/$kver

    # initramfs: busybox-static + the modules + init
    local ird=$tmp/initramfs bb
    bb=$(command -v busybox) || fail "busybox not found (install busybox-static)"
    if ldd "$bb" >/dev/null 2>&1; then fail "$bb is not static (install busybox-static)"; fi
    mkdir -p "$ird"/{bin,dev,proc,sys,lib/modules}
    cp "$bb" "$ird/bin/busybox"
    local a
    for a in $("$bb" --list); do [ "$a" = busybox ] || ln -s busybox "$ird/bin/$a"; done
    install -m 0755 "$here/init" "$ird/init"
    mknod -m 600 "$ird/dev/console" c 5 1 2>/dev/null || true
    local order
    order=$(module_closure "$moddir" "${MODULES[@]}")
    local m b
    : >"$ird/modules.load"
    for m in $order; do
        b=${m##*/}
        case "$b" in
            *.ko.xz) xz -dc "$moddir/$m" >"$ird/lib/modules/${b%.xz}"; b=${b%.xz} ;;
            *.ko.zst) zstd -qdc "$moddir/$m" >"$ird/lib/modules/${b%.zst}"; b=${b%.zst} ;;
            *) cp "$moddir/$m" "$ird/lib/modules/$b" ;;
        esac
        echo "$b" >>"$ird/modules.load"
    done
    (cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$tmp/out/initramfs.cpio"
    echo "$kver" >"$tmp/out/kernel-release"
    echo "$pkg $pkgver" >"$tmp/out/kernel-package"
    rm -rf "$dest"
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
    # Drop other builds (older script versions or kernels) unused for a day.
    find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d ! -name '.*' ! -path "$dest" -mtime +0 \
        -exec rm -rf {} + 2>/dev/null || true
}

mkdir -p "$CACHE_ROOT"
resolve_kernel
hash=$(cat "$here/run.sh" "$here/init" | sha256sum | cut -c1-12)
if [ -n "$pkgver" ]; then
    key=${pkg#linux-image-}_${pkgver}-$hash
    kdir=$CACHE_ROOT/$key
    if [ ! -f "$kdir/kernel-release" ]; then
        exec 9>"$CACHE_ROOT/.lock"
        flock 9
        if [ ! -f "$kdir/kernel-release" ]; then build_cache "$kdir"; fi  # not in ||: keeps set -e
        exec 9>&-
    fi
else
    # apt knows no kernel (no package lists?): fall back to the newest build for these scripts
    kdir=$(ls -dt "$CACHE_ROOT"/*-"$hash" 2>/dev/null | head -n 1) || true
    [ -n "$kdir" ] && [ -f "$kdir/kernel-release" ] ||
        fail "apt-cache finds no linux-image-6.1.0-*-amd64 package and nothing is cached"
fi
touch "$kdir"
kver=$(cat "$kdir/kernel-release")
kernel=$kdir/vmlinux
[ -f "$kernel" ] || kernel=$kdir/vmlinuz

# ---------------------------------------------------------------------------------------
# Per-run directory, shared with the test host over 9p (tag huskio).

for i in "${!rwdirs[@]}"; do
    d=$(realpath -e -- "${rwdirs[$i]}" 2>/dev/null) || fail "--rwdir ${rwdirs[$i]}: no such directory"
    [ -d "$d" ] || fail "--rwdir $d is not a directory"
    [ "$d" != / ] || fail "--rwdir / is not allowed"
    [[ $d != *$'\n'* ]] || fail "--rwdir path with a newline"
    rwdirs[$i]=$d
done
if [ ${#rwdirs[@]} -gt 0 ]; then
    mapfile -t rwdirs < <(printf '%s\n' "${rwdirs[@]}" | LC_ALL=C sort -u)
fi

# The working directory must be visible inside: paths under these are fresh there.
cwd=$(pwd -P)
under_rwdir() { local d; for d in ${rwdirs[@]+"${rwdirs[@]}"}; do [[ $1 == "$d" || $1 == "$d"/* ]] && return 0; done; return 1; }
for t in /tmp /run /var/tmp /proc /sys /dev; do
    if [[ $cwd == "$t" || $cwd == "$t"/* ]] && ! under_rwdir "$cwd"; then
        fail "the working directory $cwd is under $t, which is a fresh filesystem inside the test host; pass --rwdir $cwd (or a parent)"
    fi
done

run=$(mktemp -d "${TMPDIR:-/tmp}/husk-testhost.XXXXXX")
qpid= outpid= errpid= tailpid=
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill -TERM "$qpid" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$qpid" 2>/dev/null
        wait "$qpid" 2>/dev/null
    fi
    for p in $outpid $errpid $tailpid; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$DEBUG" = 1 ]; then msg "run directory kept: $run"; else rm -rf "$run"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # single-quote for the guest's sh
{
    echo "TH_KVER=$(sq "$kver")"
    echo "TH_MODDIR=$(sq "$kdir/root/lib/modules/$kver")"
    echo "TH_DEBUG=$(sq "$DEBUG")"
    echo "TH_CGROUP=$(sq "${HUSK_TESTHOST_CGROUP:-v2}")"
    echo "TH_ROOT_CACHE=$(sq "${HUSK_TESTHOST_ROOT_CACHE:-loose}")"
} >"$run/config"
: >"$run/rwdirs"
[ ${#rwdirs[@]} -eq 0 ] || printf '%s\n' "${rwdirs[@]}" >"$run/rwdirs"

std_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{
    echo '# generated by tests/testhost/run.sh'
    extra=" ${HUSK_TESTHOST_ENV:-} "
    while IFS= read -r v; do
        if [[ $v =~ $PASS_ENV_RE || $extra == *" $v "* ]]; then
            [ "$v" = PATH ] && continue
            printf 'export %s=%q\n' "$v" "${!v}"
        fi
    done < <(compgen -e)
    p=${PATH:-}
    for d in ${std_path//:/ }; do [[ :$p: == *:$d:* ]] || p=${p:+$p:}$d; done
    printf 'export PATH=%q\n' "$p"
    echo 'export HOME=/root USER=root LOGNAME=root HUSK_IN_TESTHOST=1'
    printf 'cd -- %q || { echo "testhost: cannot enter the working directory" >&2; exit 125; }\n' "$cwd"
    printf 'exec'; printf ' %q' "$@"; echo
} >"$run/cmd.sh"

# ---------------------------------------------------------------------------------------
# QEMU. The command's stdout/stderr come back over two virtio-serial ports into FIFOs that
# are copied to ours as they arrive; the exit status comes back as a file in $run.

mkfifo "$run/out.fifo" "$run/err.fifo"
cat "$run/out.fifo" &
outpid=$!
cat "$run/err.fifo" >&2 &
errpid=$!
: >"$run/console.log"
if [ "$DEBUG" = 1 ]; then
    tail -n +1 -f "$run/console.log" >&2 &
    tailpid=$!
fi

qesc() { printf '%s' "${1//,/,,}"; }   # QEMU option values: ',' is written ',,'
# No AppArmor: dockerd would try to load its profile (and needs apparmor_parser for it),
# and neither husk's guests nor the tests use it.
# Transparent huge pages stay on: with them off, guests in the test host triple-faulted
# at boot (twice in a night, never seen before with them on) and one stalled; the one
# khugepaged hang seen with them on is caught by the hung-task watch below.
append="console=ttyS0 panic=-1 apparmor=0"
if [ "$DEBUG" = 1 ]; then append+=" husk.debug"; else append+=" quiet"; fi
append+=${HUSK_TESTHOST_APPEND:+ $HUSK_TESTHOST_APPEND}
qemu_args=(
    -accel tcg -cpu "$CPU" -M q35 -m "$memory" -smp "$cpus"
    -nodefaults -no-user-config -display none -monitor none -no-reboot
    -kernel "$kernel" -initrd "$kdir/initramfs.cpio" -append "$append"
    -chardev "file,id=con,path=$(qesc "$run/console.log")" -serial chardev:con
    -device virtio-serial-pci,id=vser
    -chardev "file,id=out,append=on,path=$(qesc "$run/out.fifo")"
    -device virtserialport,bus=vser.0,chardev=out,name=husk.stdout
    -chardev "file,id=err,append=on,path=$(qesc "$run/err.fifo")"
    -device virtserialport,bus=vser.0,chardev=err,name=husk.stderr
    -fsdev local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap
    -device virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot
    -fsdev "local,id=fsio,path=$(qesc "$run"),security_model=none"
    -device virtio-9p-pci,fsdev=fsio,mount_tag=huskio
)
for i in "${!rwdirs[@]}"; do
    qemu_args+=(
        -fsdev "local,id=fsrw$i,path=$(qesc "${rwdirs[$i]}"),security_model=none,multidevs=remap"
        -device "virtio-9p-pci,fsdev=fsrw$i,mount_tag=rw$i"
    )
done

pdeath=()
setpriv --help 2>/dev/null | grep -q pdeathsig && pdeath=(setpriv --pdeathsig KILL --)
start=$(date +%s)
"${pdeath[@]}" "$QEMU" "${qemu_args[@]}" </dev/null >"$run/qemu.log" 2>&1 &
qpid=$!
# Watch QEMU until it exits, the time limit passes, or the test host's own kernel reports
# a task stuck for five minutes or more (under the emulated nested SVM its kernel has hung
# that way, e.g. khugepaged blocked for good: see shared/ENVIRONMENT.md). Such a hang is
# the test host's, not a test's, and waiting out the whole limit would only burn the time
# a rerun needs.
timed_out=0 host_hung=
while kill -0 "$qpid" 2>/dev/null; do
    sleep 2
    if [ "$timeout" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$timeout" ]; then
        timed_out=1
    else
        host_hung=$(grep -m1 -oE 'task [^ ]+ blocked for more than ([3-9][0-9]{2}|[0-9]{4,}) seconds' \
            "$run/console.log" 2>/dev/null || true)
    fi
    if [ "$timed_out" = 1 ] || [ -n "$host_hung" ]; then
        kill -TERM "$qpid" 2>/dev/null || true
        for _ in $(seq 25); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$qpid" 2>/dev/null || true
        break
    fi
done
wait "$qpid" && qrc=0 || qrc=$?
qpid=
# If QEMU never opened a FIFO, its reader is still blocked in open(): release it.
: <>"$run/out.fifo"; : <>"$run/err.fifo"
wait "$outpid" "$errpid" 2>/dev/null || true
outpid= errpid=
if [ -n "$tailpid" ]; then sleep 0.3; kill "$tailpid" 2>/dev/null || true; tailpid=; fi

show_logs() {
    if [ -s "$run/console.log" ]; then
        msg "last lines of the test host console (HUSK_TESTHOST_DEBUG=1 shows it all):"
        tail -n 25 "$run/console.log" | sed 's/^/  | /' >&2
    fi
    if [ -s "$run/qemu.log" ]; then
        msg "QEMU said (exit status $qrc):"
        sed 's/^/  | /' "$run/qemu.log" >&2
    fi
}

if [ -n "$host_hung" ]; then
    msg "the test host's kernel hung ($host_hung): killed QEMU after $(( $(date +%s) - start ))s"
    show_logs
    exit 125
fi
if [ "$timed_out" = 1 ]; then
    msg "timed out after ${timeout}s: killed QEMU (the command did not finish)"
    show_logs
    exit 124
fi
if [ -f "$run/error" ]; then
    msg "test host setup failed: $(cat "$run/error")"
    show_logs
    exit 125
fi
status=$(cat "$run/status" 2>/dev/null || true)
if ! [[ $status =~ ^[0-9]+$ ]]; then
    msg "the test host stopped without reporting the command's exit status (after $(( $(date +%s) - start ))s)"
    show_logs
    exit 125
fi
[ "$DEBUG" = 1 ] && msg "QEMU exit status $qrc, command exit status $status, $(( $(date +%s) - start ))s"
exit "$status"
