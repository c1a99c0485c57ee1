#!/usr/bin/env bash
# Build husk's guest kernel (uncompressed ELF vmlinux) from Debian's linux-source-6.1
# with the Kconfig fragment husk-guest.config applied on top of allnoconfig.
#
# Usage: build-kernel.sh [--print-path | --config-only | --help]
#
#   (no flag)      build if needed; the path of vmlinux is the last line of stdout
#   --print-path   print the path the build produces (built or not) and exit 0
#   --config-only  extract, configure and verify the fragment, but do not compile
#
# Result: ${HUSK_CACHE_DIR:-$HOME/.cache/husk}/kernel/<key>/{vmlinux,config,build.log}
# where <key> = <debian source version>-<sha256(fragment + this script)[:16]>.
# Progress goes to stderr; stdout carries only the vmlinux path. The object tree under
# kernel/build/<key> is deleted after success unless HUSK_KEEP_KERNEL_BUILD=1.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$SCRIPT_DIR/husk-guest.config"
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mode=build
case "${1:-}" in
    "") ;;
    --print-path) mode=print ;;
    --config-only) mode=config ;;
    -h|--help) sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "$SCRIPT_PATH"; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac
[ $# -le 1 ] || die "too many arguments"

[ -f "$FRAGMENT" ] || die "missing fragment $FRAGMENT"
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
    die "package $SRC_PKG is not installed (apt-get install $SRC_PKG)"
[ -n "$src_version" ] || die "package $SRC_PKG has no version (not installed?)"
# Version strings may contain ':' '+' '~': keep the key a plain directory name.
src_version_safe=$(printf '%s' "$src_version" | tr -c 'A-Za-z0-9._-' '_')
hash=$(cat "$FRAGMENT" "$SCRIPT_PATH" | sha256sum | cut -c1-16)
key="${src_version_safe}-${hash}"

cache_root="${HUSK_CACHE_DIR:-$HOME/.cache/husk}/kernel"
out_dir="$cache_root/$key"
vmlinux="$out_dir/vmlinux"

if [ "$mode" = print ]; then
    printf '%s\n' "$vmlinux"
    exit 0
fi
if [ "$mode" = build ] && [ -f "$vmlinux" ]; then
    printf '%s\n' "$vmlinux"
    exit 0
fi

[ -f "$SRC_TARBALL" ] || die "missing $SRC_TARBALL (apt-get install $SRC_PKG)"
for tool in make gcc flex bison bc tar xz strip readelf flock sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "missing build tool: $tool"
done

mkdir -p "$cache_root" "$out_dir"
# One build at a time per cache: a second caller waits, then finds the result.
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
    log "another build holds $cache_root/.lock; waiting"
    flock 9
fi
if [ "$mode" = build ] && [ -f "$vmlinux" ]; then
    printf '%s\n' "$vmlinux"
    exit 0
fi
rm -f "$out_dir"/.tmp.*                     # leftovers of an interrupted install

# --- 1. source tree, shared by every key of the same Debian source version -------------
src_dir="$cache_root/src/$src_version_safe"
if [ ! -f "$src_dir/.husk-extracted" ]; then
    rm -rf "$src_dir" "$src_dir".tmp.*      # leftovers of an interrupted extraction
    mkdir -p "$src_dir.tmp.$$"
    log "extracting $SRC_TARBALL ($src_version) into $src_dir"
    tar -C "$src_dir.tmp.$$" --strip-components=1 -xJf "$SRC_TARBALL"
    printf '%s\n' "$src_version" >"$src_dir.tmp.$$/.husk-extracted"
    mv "$src_dir.tmp.$$" "$src_dir"
fi

# --- 2. configure: allnoconfig + fragment, out of tree (O=) so the source stays clean -----
build_dir="$cache_root/build/$key"
mkdir -p "$build_dir"
build_log="$out_dir/build.log"
export KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk
make_args=(-C "$src_dir" O="$build_dir" ARCH=x86_64)

log "configuring (allnoconfig + $(basename "$FRAGMENT")) in $build_dir"
if ! KCONFIG_ALLCONFIG="$FRAGMENT" make "${make_args[@]}" allnoconfig \
        </dev/null >"$out_dir/config.log" 2>&1; then
    tail -n 40 "$out_dir/config.log" >&2
    die "allnoconfig failed (log: $out_dir/config.log)"
fi

# Every option the fragment sets must survive Kconfig's dependency resolution.
dropped=0
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        CONFIG_*=*)
            if ! grep -qxF -- "$line" "$build_dir/.config"; then
                sym=${line%%=*}
                got=$(grep -E "^(# )?${sym}[= ]" "$build_dir/.config" || true)
                log "dropped: wanted '$line', got '${got:-<absent: dependencies not met>}'"
                dropped=$((dropped + 1))
            fi ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }; sym=${sym%% *}
            if got=$(grep -E "^${sym}=" "$build_dir/.config"); then
                log "forced on: wanted '$line', got '$got' (selected by another option)"
                dropped=$((dropped + 1))
            fi ;;
    esac
done <"$FRAGMENT"
if [ "$dropped" -ne 0 ]; then
    die "$dropped fragment line(s) did not stick; fix husk-guest.config"
fi
log "all fragment options present in .config"
if [ "$mode" = config ]; then
    log "config only: $build_dir/.config"
    exit 0
fi

# --- 3. compile ------------------------------------------------------------------------
jobs=$(nproc 2>/dev/null || echo 2)
log "building vmlinux with -j$jobs (log: $build_log)"
start=$(date +%s)
# Run make as a child we can stop: on INT/TERM/HUP forward the signal (make passes it on
# to its jobs and deletes half-written targets), so a re-run resumes cleanly.
make "${make_args[@]}" -j"$jobs" vmlinux </dev/null >"$build_log" 2>&1 &
make_pid=$!
trap 'log "interrupted; stopping make"; kill -TERM "$make_pid" 2>/dev/null; wait "$make_pid"; exit 130' INT TERM HUP
make_rc=0
wait "$make_pid" || make_rc=$?
trap - INT TERM HUP
if [ "$make_rc" -ne 0 ]; then
    tail -n 60 "$build_log" >&2
    die "kernel build failed with status $make_rc (full log: $build_log)"
fi
log "compiled in $(( $(date +%s) - start )) s"

# --- 4. install atomically: config first, vmlinux last (its presence means "done") ------
tmp="$out_dir/.tmp.$$"
cp "$build_dir/.config" "$tmp.config"
mv -f "$tmp.config" "$out_dir/config"
strip --strip-debug -o "$tmp.vmlinux" "$build_dir/vmlinux"
elf_type=$(readelf -h "$tmp.vmlinux" | awk '$1 == "Type:" { print $2 }')
[ "$elf_type" = EXEC ] || die "stripped vmlinux is not an ELF executable (type '$elf_type')"
mv -f "$tmp.vmlinux" "$vmlinux"
log "installed $vmlinux ($(stat -c %s "$vmlinux") bytes)"
# The object tree (~hundreds of MiB) is only useful to resume an interrupted build.
[ -n "${HUSK_KEEP_KERNEL_BUILD:-}" ] || rm -rf "$build_dir"
printf '%s\n' "$vmlinux"
