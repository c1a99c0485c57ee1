#!/usr/bin/env bash
# Runs husk's VM tier: real guest kernel, real agent, real KVM.
#
#   tests/vm-tier.sh [--core | --storage | --hardening | --clients | --pods] [cargo test filter and flags...]
#
# Five suites: tests/tests/vm_tier.rs (the microVM core through `husk vm run` and
# `husk run`), tests/tests/storage.rs (volumes over virtio-fs, escape attempts, the root
# from cached layer images), tests/tests/hardening.rs (the sandbox's confinement, a
# hostile guest, conformance fixes) and tests/tests/clients.rs (containerd, podman and
# dockerd driving the runtime under test: husk, or HUSK_CLIENT_RUNTIME, e.g.
# /usr/sbin/runc to check the harness, with a locally built busybox image) and
# tests/cri/tests/pods.rs (Kubernetes pods through containerd's CRI plugin and husk's
# shim v2, one microVM per pod). All by default; --core, --storage, --hardening, --clients
# or --pods picks one.
#
# Builds everything the tier needs (guest kernel, cached; static agent and initramfs; the
# husk binary; a busybox test disk), then runs tests/tests/vm_tier.rs:
#   - directly, where /dev/kvm can boot a Linux guest (hardware vmx/svm with kvm_intel or
#     kvm_amd);
#   - inside a test-host VM under software emulation (tests/testhost/run.sh) where it
#     cannot, such as a machine whose /dev/kvm is kvm_pvm (see shared/ENVIRONMENT.md).
# It prints which mode it used. HUSK_VM_TIER_MODE=direct|testhost forces one.
# In a test host each suite boots its own, with a time limit (HUSK_VM_TIER_TIMEOUT seconds
# overrides it) and one rerun if the test host itself crashes or hangs.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=$repo/target/husk-vm-tier
mkdir -p "$out"
log() { echo "vm-tier: $*" >&2; }
. scripts/common.sh

suites=(vm_tier storage hardening clients pods)
case "${1:-}" in
    --clients) suites=(clients); shift ;;
    --pods) suites=(pods); shift ;;
    --core) suites=(vm_tier); shift ;;
    --storage) suites=(storage); shift ;;
    --hardening) suites=(hardening); shift ;;
esac
mode=${HUSK_VM_TIER_MODE:-}
if [ -z "$mode" ]; then
    if husk_kvm_boots_linux; then mode=direct; else mode=testhost; fi
fi
case "$mode" in
    direct) log "MODE: direct (this host's /dev/kvm boots Linux guests)" ;;
    testhost) log "MODE: test host (this host's /dev/kvm cannot boot Linux guests; running inside a software-emulated KVM host)" ;;
    *) log "unknown HUSK_VM_TIER_MODE=$mode (direct or testhost)"; exit 2 ;;
esac

log "building the guest kernel (cached), the agent, initramfs and husk"
husk_build
log "building the test binaries"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p husk-tests \
    --bin husk-vsock-peer --bin husk-fs-probe --bin husk-hostile --target x86_64-unknown-linux-gnu
testbins=()
for suite in "${suites[@]}"; do
    package=husk-tests
    [ "$suite" != pods ] || package=husk-cri
    bin=$(cargo test --release -q -p "$package" --test "$suite" --no-run --message-format=json 2>/dev/null |
        SUITE=$suite python3 -c 'import json,os,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == os.environ["SUITE"] and m.get("executable"):
        print(m["executable"])')
    [ -x "$bin" ] || { log "could not find the $suite test binary"; exit 1; }
    testbins+=("$bin")
done
if [[ " ${suites[*]} " == *" clients "* || " ${suites[*]} " == *" pods "* ]]; then
    log "building the busybox OCI image"
    HUSK_CLIENT_IMAGES=$(tests/clients/build-image.sh "$out/images")
    export HUSK_CLIENT_IMAGES
    log "runtime under test in the client suite: ${HUSK_CLIENT_RUNTIME:-husk}"
fi

log "building the busybox test disk"
husk_busybox_image "$out" target/x86_64-unknown-linux-gnu/release/husk-vsock-peer \
    target/x86_64-unknown-linux-gnu/release/husk-fs-probe \
    target/x86_64-unknown-linux-gnu/release/husk-hostile >/dev/null

export HUSK_BIN=$repo/target/release/husk HUSK_TEST_ROOTFS=$out/busybox.img \
    HUSK_TEST_ROOTFS_DIR=$out/rootfs
log "kernel $HUSK_KERNEL"
log "initrd $HUSK_INITRD"
# Every suite runs even if one fails; the status is the first failure's.
args=(--ignored --test-threads=1 "$@")
if [ "$mode" = direct ]; then
    exec tests/run-suites.sh "${testbins[@]}" -- "${args[@]}"
fi

# In a test host: one boot per suite, so that a crash of the test host itself (its kernel
# has panicked inside KVM_RUN under the emulated nested SVM: see shared/ENVIRONMENT.md)
# costs one suite, not the tier. A suite whose test host crashed or hung (run.sh exits 125
# or 124) is rerun once in a fresh test host, loudly; every test must pass in that rerun.
# The client daemons keep their state under /run, a tmpfs in the test host (bolt's mmap
# fails on the shared 9p root). The checkout is shared read-write: it may live under /tmp,
# a fresh tmpfs inside.
# Guests booting at once in the test host break it: with ten, its own kernel went down (a
# stack overflow in its interrupt path under the emulated nested SVM, two runs of three);
# with three, one guest triple-faulted at boot in two runs of four (QEMU's emulation of
# nested SVM, as far as can be told). So there the parallel pod test does not run, and the
# run says so; it runs where /dev/kvm boots Linux, or with HUSK_PARALLEL_PODS=N here.
pods_skip=()
if [[ " ${suites[*]} " == *" pods "* ]] && [ -z "${HUSK_PARALLEL_PODS:-}" ]; then
    pods_skip=(--skip pods_start_in_parallel)
    log "!!! NOT RUN in the test host: pods_start_in_parallel (guests booting at once crash"
    log "!!! the emulated test host or triple-fault in it); it runs where /dev/kvm boots Linux"
fi
# Guests of the test host sometimes fail under its emulation of nested SVM, one test in a
# run or two: a guest triple-faults at boot or later, stalls before its agent answers, or
# goes quiet (the last sessions' client runs; the emulation, as far as can be told). So in
# the test host the failed tests of a suite (by exact name, at most three: more is not the
# emulation) are rerun once in a fresh test host, loudly; they must pass there. The first
# run's log is kept (SUITE.first.log) and the end of the run names every test that passed
# only on its rerun. A husk bug that fails a test every time fails it in the rerun too.
# Where /dev/kvm boots Linux nothing is retried.
failed_tests() {
    python3 - "$1" <<'PY'
import re, sys
out = open(sys.argv[1], errors="replace").read()
blocks = re.findall(r"\nfailures:\n((?:    \S+\n)+)", out)
if not blocks:
    sys.exit(1)
names = blocks[-1].split()
if len(names) > 3:
    sys.exit(1)
print(" ".join(names))
PY
}
declare -A budget=([vm_tier]=900 [storage]=900 [hardening]=1200 [clients]=1200 [pods]=1200)
deadline=$(( $(date +%s) + ${HUSK_VM_TIER_DEADLINE:-3600} ))
status=0
flaky=()
for i in "${!suites[@]}"; do
    suite=${suites[$i]}
    limit=${HUSK_VM_TIER_TIMEOUT:-${budget[$suite]}}
    only=()
    for attempt in 1 2; do
        echo "== $suite"
        extra=()
        [ "$suite" != pods ] || extra=("${pods_skip[@]}")
        [ ${#only[@]} -eq 0 ] || extra+=(--exact "${only[@]}")
        set +e
        tests/testhost/run.sh --memory "${HUSK_TESTHOST_MEMORY:-4G}" --cpus 2 --rwdir "$repo" \
            --timeout "$limit" -- "${testbins[$i]}" "${args[@]}" "${extra[@]}" 2>&1 |
            tee "$out/$suite.log"
        s=${PIPESTATUS[0]}
        set -e
        if [ $s -eq 0 ]; then
            [ ${#only[@]} -eq 0 ] || flaky+=("$suite: ${only[*]}")
            break
        fi
        if [ $s -ne 124 ] && [ $s -ne 125 ]; then
            [ $attempt -eq 1 ] || break
            read -r -a only <<<"$(failed_tests "$out/$suite.log" || true)"
            [ ${#only[@]} -gt 0 ] || break
            if [ $(( $(date +%s) + limit )) -gt "$deadline" ]; then
                log "FAILED: ${only[*]} in the $suite suite; no time left to rerun them"
                break
            fi
            cp "$out/$suite.log" "$out/$suite.first.log"
            log "!!! FAILED IN THE TEST HOST: ${only[*]} ($suite suite; output above and in"
            log "!!! $out/$suite.first.log): rerunning them once in a fresh test host"
            continue
        fi
        only=()
        if [ $attempt -eq 2 ]; then
            log "FAILED: the test host crashed or hung again in the $suite suite"
        elif [ $(( $(date +%s) + limit )) -gt "$deadline" ]; then
            log "FAILED: the test host crashed or hung in the $suite suite; no time left to rerun it"
            break
        else
            log "!!! THE TEST HOST CRASHED OR HUNG (status $s) IN THE $suite SUITE: not a test"
            log "!!! result; rerunning the whole suite once in a fresh test host"
        fi
    done
    [ $status -ne 0 ] || status=$s
done
for f in "${flaky[@]}"; do
    log "!!! PASSED ONLY ON A RERUN IN THE TEST HOST: $f"
done
exit $status
