#!/usr/bin/env bash
# husk's main job on a built-in default: run a busybox OCI container with `husk run`, the
# way containerd, podman or Docker would, in a microVM with its own guest kernel.
#
#   scripts/demo.sh [COMMAND [ARGS...]]      (default: show the container's kernel)
#
# On a machine whose /dev/kvm cannot boot Linux (see shared/ENVIRONMENT.md) it runs inside
# a software-emulated test host, which is slow but real.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh >&2
. scripts/common.sh
husk_build >&2
out=$repo/target/husk-demo
mkdir -p "$out"
husk_busybox_image "$out" >/dev/null # leaves the busybox tree in $out/rootfs
bundle=$out/bundle
rm -rf "$bundle"
mkdir -p "$bundle"
cp -a "$out/rootfs" "$bundle/rootfs"
(cd "$bundle" && "$repo/target/release/husk" spec)
[ $# -gt 0 ] || set -- sh -c 'echo "container kernel: $(uname -r)"'
python3 - "$bundle/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
spec = json.load(open(path))
spec["process"]["args"] = args
spec["process"]["terminal"] = False
json.dump(spec, open(path, "w"), indent=2)
PY
echo "host kernel:      $(uname -r)"
run=(target/release/husk run --bundle "$bundle" "demo-$$")
husk_on_kvm_host 900 -- "${run[@]}"
