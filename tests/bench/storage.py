#!/usr/bin/env python3
"""Storage benchmark: husk against runc, same host, same run, the same bundles.

1. Create cost, first and second container of an image: `RUNTIME create` + `delete` on
   bundles whose rootfs is an overlayfs mount over the image's layer (what containerd,
   Docker and podman hand a runtime), for busybox, a ~300 MB Debian root (debootstrap,
   python3) and busybox + 1 GiB. husk's first create builds the layer's image; the second
   finds it in the layer cache. Also husk with the rootfs a plain directory.
   Target: husk's second create of every image within 1.2x of its second busybox create.
2. Volume I/O (a host directory bind-mounted at /vol): sequential 256 MiB write (fsync)
   and read (page cache dropped first), and a metadata-heavy job (unpack 20,000 small
   files, then find + stat them all); the same metadata job on the container's root.
   --seq-mib and --meta-files scale the jobs down where the full ones take too long (the
   software-emulated test host).
   Each is `RUNTIME run` of tests/src/bin/husk-io-bench.rs, which times itself.

Prints tables with ratios and writes JSON to --out.
"""
import argparse, atexit, json, os, shutil, statistics, subprocess, sys, tempfile, time


def sh(*args, check=True, **kw):
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r


def make_layers(work, base_rootfs, debian_tar, tool):
    layers = {}
    bb = f"{work}/layers/busybox"
    shutil.copytree(base_rootfs, bb, symlinks=True)
    shutil.copy(tool, f"{bb}/husk-io-bench")
    layers["busybox"] = bb
    deb = f"{work}/layers/debian"
    os.makedirs(deb)
    if debian_tar and os.path.exists(debian_tar):
        sh("tar", "-xf", debian_tar, "-C", deb, "--numeric-owner")
    else:
        print("NOTE: no Debian tarball; synthesizing a ~300 MB tree of ~12,000 files", flush=True)
        shutil.copytree(base_rootfs, deb, symlinks=True, dirs_exist_ok=True)
        for d in range(400):
            os.makedirs(f"{deb}/usr/lib/synth/d{d}")
            for i in range(30):
                size = [200, 2000, 20000, 60000][i % 4]
                with open(f"{deb}/usr/lib/synth/d{d}/f{i}", "wb") as f:
                    f.write(os.urandom(size))
    shutil.copy(tool, f"{deb}/husk-io-bench")
    layers["debian"] = deb
    big = f"{work}/layers/big"
    shutil.copytree(bb, big, symlinks=True)
    chunk = os.urandom(1 << 20)
    with open(f"{big}/filler", "wb") as f:
        for _ in range(1024):
            f.write(chunk)
    layers["busybox+1GiB"] = big
    for name, d in layers.items():
        mb = int(sh("du", "-sm", d).stdout.split()[0])
        files = int(sh("sh", "-c", f"find {d} | wc -l").stdout)
        print(f"layer {name:14} {mb:6} MB {files:7} entries", flush=True)
    return layers


def write_config(bundle, husk, args, rootfs="rootfs", binds=(), privileged=False):
    sh(husk, "spec", cwd=bundle)
    with open(f"{bundle}/config.json") as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["root"]["path"] = rootfs
    spec["root"]["readonly"] = False  # as engines give containers
    for src, dst in binds:
        spec["mounts"].append({"destination": dst, "type": "bind", "source": src,
                               "options": ["rbind", "rw"]})
    if privileged:
        caps = spec["process"]["capabilities"]
        for k in caps:
            caps[k] = sorted(set(caps[k]) | {"CAP_SYS_ADMIN"})
        spec["linux"]["readonlyPaths"] = []
        spec["linux"]["maskedPaths"] = []
    with open(f"{bundle}/config.json", "w") as f:
        json.dump(spec, f)


class OverlayBundle:
    """A bundle whose rootfs is an overlayfs mount over `layer`, as engines make them."""

    def __init__(self, work, layer, husk, args, **kw):
        self.dir = tempfile.mkdtemp(prefix="bundle-", dir=work)
        for d in ("rootfs", "upper", "work"):
            os.makedirs(f"{self.dir}/{d}")
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={layer},upperdir={self.dir}/upper,workdir={self.dir}/work",
           f"{self.dir}/rootfs")
        write_config(self.dir, husk, args, **kw)

    def close(self):
        sh("umount", "-l", f"{self.dir}/rootfs", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def timed_create(rt, root, bundle, cid, env):
    t = time.monotonic()
    with open(os.devnull, "w") as null, open(f"{root}.err", "w") as err:
        r = subprocess.run([rt, "--root", root, "create", "--bundle", bundle, cid],
                           stdin=subprocess.DEVNULL, stdout=null, stderr=err, env=env)
    ms = (time.monotonic() - t) * 1000
    if r.returncode != 0:
        sys.exit(f"{rt} create failed ({r.returncode}): " + open(f"{root}.err").read())
    sh(rt, "--root", root, "delete", "--force", cid, env=env)
    return ms


def create_cost(a, layers, work, rounds):
    res = {}
    env = dict(os.environ)
    cache = f"{work}/layer-cache"
    env["HUSK_LAYER_CACHE"] = cache
    root = f"{work}/state"
    for name, layer in layers.items():
        for kind in ("overlay", "plain"):
            if kind == "overlay":
                b = OverlayBundle(work, layer, a.husk, ["/bin/true"])
                bundle = b.dir
            else:
                b = None
                bundle = tempfile.mkdtemp(prefix="plain-", dir=work)
                write_config(bundle, a.husk, ["/bin/true"], rootfs=layer)
            shutil.rmtree(cache, ignore_errors=True)
            first = timed_create(a.husk, root, bundle, f"c-{name}-{kind}-0".replace("+", "-"), env)
            second = [timed_create(a.husk, root, bundle,
                                   f"c-{name}-{kind}-{i}".replace("+", "-"), env)
                      for i in range(1, rounds + 1)]
            res[f"husk {kind} {name}"] = {"first_ms": first,
                                          "second_ms": statistics.median(second),
                                          "second_all": second}
            print(f"husk {kind:7} {name:14} first {first:9.0f} ms  second {statistics.median(second):8.0f} ms",
                  flush=True)
            if kind == "overlay":
                runc = [timed_create(a.runc, root + "-runc", bundle,
                                     f"r-{name}-{i}".replace("+", "-"), env)
                        for i in range(rounds + 1)]
                res[f"runc overlay {name}"] = {"first_ms": runc[0],
                                               "second_ms": statistics.median(runc[1:]),
                                               "second_all": runc[1:]}
                print(f"runc overlay  {name:14} first {runc[0]:9.0f} ms  second {statistics.median(runc[1:]):8.0f} ms",
                      flush=True)
                b.close()
            else:
                shutil.rmtree(bundle, ignore_errors=True)
    return res


def run_job(rt, root, bundle, cid, env):
    r = subprocess.run([rt, "--root", root, "run", "--bundle", bundle, cid],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{rt} run failed ({r.returncode}): {r.stderr}{r.stdout}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def seq_job(a, where):
    return f"seq {a.seq_mib} MiB ({where})"


def meta_job(a, where):
    return f"meta {a.meta_files} files ({where})"


def volume_io(a, layers, work, rounds):
    res = {}
    env = dict(os.environ)
    env["HUSK_LAYER_CACHE"] = f"{work}/layer-cache"
    vol = f"{work}/volume"
    jobs = {
        seq_job(a, "volume"): (["/husk-io-bench", "seq", "/vol", str(a.seq_mib)], "seq"),
        meta_job(a, "volume"): (["/husk-io-bench", "meta", "/vol", str(a.meta_files)], "meta"),
        meta_job(a, "root"): (["/husk-io-bench", "meta", "/work-on-root", str(a.meta_files)],
                              "meta"),
    }
    for job, (args, kind) in jobs.items():
        if "root" in job:
            args = ["sh", "-c", "mkdir -p /work-on-root && exec " + " ".join(args)]
        for name, rt in (("husk", a.husk), ("runc", a.runc)):
            os.makedirs(vol, exist_ok=True)
            results = []
            for i in range(rounds):
                b = OverlayBundle(work, layers["busybox"], a.husk, args,
                                  binds=[(vol, "/vol")], privileged=True)
                results.append(run_job(rt, f"{work}/state-{name}", b.dir, f"io-{name}-{i}", env))
                b.close()
            keys = ("write_ms", "read_ms") if kind == "seq" else ("unpack_ms", "find_stat_ms")
            med = {k: statistics.median(r[k] for r in results) for k in keys}
            res[f"{name} {job}"] = med
            print(f"{name:4} {job:26} " + "  ".join(f"{k} {v:9.1f}" for k, v in med.items()),
                  flush=True)
            shutil.rmtree(vol, ignore_errors=True)
    return res


def unmount_under(path):
    """Lazily unmounts every mount at or below `path` (bundles left by an earlier run)."""
    with open("/proc/self/mountinfo") as f:
        points = [l.split()[4] for l in f]
    for p in sorted((p for p in points if p == path or p.startswith(path + "/")),
                    key=len, reverse=True):
        subprocess.run(["umount", "-l", p], stderr=subprocess.DEVNULL)


def clean(work):
    unmount_under(work)
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--husk", required=True)
    ap.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    ap.add_argument("--base-rootfs", required=True)
    ap.add_argument("--io-tool", required=True)
    ap.add_argument("--debian-tar")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--io-rounds", type=int,
                    help="rounds of the volume/root I/O jobs (default: --rounds); each is "
                         "minutes in the software-emulated test host")
    ap.add_argument("--only", choices=("create", "io"), help="run one half of the benchmark")
    ap.add_argument("--seq-mib", type=int, default=256,
                    help="size of the sequential write + read job (MiB)")
    ap.add_argument("--meta-files", type=int, default=20000,
                    help="files of the unpack + find/stat job")
    ap.add_argument("--out")
    ap.add_argument("--work-dir", default="/run/husk-bench-storage")
    a = ap.parse_args()
    clean(a.work_dir)
    os.makedirs(a.work_dir)
    atexit.register(clean, a.work_dir)
    layers = make_layers(a.work_dir, a.base_rootfs, a.debian_tar, a.io_tool)
    cc = create_cost(a, layers, a.work_dir, a.rounds) if a.only != "io" else {}
    io = (volume_io(a, layers, a.work_dir, a.io_rounds or a.rounds)
          if a.only != "create" else {})
    ratios = {}
    if cc:
        print()
        print(f"{'create (ms)':34}{'first':>9}{'second':>9}{'2nd/bb 2nd':>12}{'x runc':>8}")
        bb = cc["husk overlay busybox"]["second_ms"]
    for k, v in cc.items():
        name = k.split(" ", 2)[2]
        runc = cc.get(f"runc overlay {name}", {}).get("second_ms")
        r_bb = v["second_ms"] / bb
        r_runc = v["second_ms"] / runc if runc and k.startswith("husk") else None
        ratios[k] = {"second_over_busybox_second": r_bb, "second_over_runc": r_runc}
        print(f"{k:34}{v['first_ms']:9.0f}{v['second_ms']:9.0f}{r_bb:12.2f}"
              f"{(f'{r_runc:8.2f}' if r_runc else ''):>8}")
    if io:
        print()
        print(f"{'volume / root I/O (ms)':40}{'husk':>10}{'runc':>10}{'x runc':>8}")
    for job in (seq_job(a, "volume"), meta_job(a, "volume"), meta_job(a, "root")):
        if not io:
            break
        h, r = io[f"husk {job}"], io[f"runc {job}"]
        for k in h:
            ratios[f"{job} {k}"] = h[k] / r[k] if r[k] else None
            print(f"{job + ' ' + k:40}{h[k]:10.1f}{r[k]:10.1f}{h[k] / max(r[k], 0.1):8.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"create": cc, "io": io, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
