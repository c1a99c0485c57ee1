#!/usr/bin/env python3
"""Container benchmark through containerd: husk against runc and runsc, same host, same run.

1. `ctr run --rm IMAGE /bin/true` latency per runtime (all through the runc v2 shim with
   --runc-binary), alternating runtimes each round; medians, spread and ratios to runc.
2. `RUNTIME create` + `delete` time on a bundle whose rootfs is busybox, busybox + 100 MiB,
   busybox + 1 GiB (husk turns the rootfs into a block image, so this grows with size).
3. Memory of one idle running container: the pid the runtime reports (husk: the sandbox
   process holding the VM; runc/runsc: the container's init, plus runsc's sandbox) RSS+PSS.

Prints a table and writes JSON to --out. Runtimes that are missing are reported and skipped
(the table says so); husk is required unless --no-husk.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

IMAGE = "localhost/busybox:latest"


def sh(*args, check=True, **kw):
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}")
    return r


def smaps_kib(pid):
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if p and p[0] == "Rss:":
                rss = int(p[1])
            if p and p[0] == "Pss:":
                pss = int(p[1])
    return rss, pss


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class Containerd:
    def __init__(self, images):
        self.dir = "/run/husk-bench/containerd"
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.sock = f"{self.dir}/containerd.sock"
        cfg = f"{self.dir}/config.toml"
        with open(cfg, "w") as f:
            f.write(f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{self.sock}"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.dir}/opt"\n')
        self.proc = subprocess.Popen(["containerd", "--config", cfg],
                                     stdout=open(f"{self.dir}/log", "w"), stderr=subprocess.STDOUT)
        for _ in range(600):
            if os.path.exists(self.sock):
                break
            time.sleep(0.1)
        else:
            sys.exit("containerd did not start")
        self.ctr("images", "import", f"{images}/busybox-oci.tar")

    def ctr(self, *args, check=True):
        return sh("ctr", "-a", self.sock, *args, check=check)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def run_latency(c, runtimes, rounds):
    res = {name: [] for name in runtimes}
    for i in range(rounds):
        for name, binary in runtimes.items():
            t = time.monotonic()
            c.ctr("run", "--rm", "--runc-binary", binary, IMAGE, f"lat-{name}-{i}", "/bin/true")
            res[name].append((time.monotonic() - t) * 1000)
            print(f"round {i + 1:2}/{rounds} {name:5} ctr run --rm /bin/true {res[name][-1]:8.1f} ms",
                  flush=True)
    return res


def make_bundle(base, extra_mib, rt, work):
    bundle = tempfile.mkdtemp(prefix=f"bundle-{extra_mib}-", dir=work)
    rootfs = f"{bundle}/rootfs"
    shutil.copytree(base, rootfs, symlinks=True)
    if extra_mib:
        with open(f"{rootfs}/filler", "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(extra_mib):
                f.write(chunk)
    sh(rt, "spec", cwd=bundle)
    with open(f"{bundle}/config.json") as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    with open(f"{bundle}/config.json", "w") as f:
        json.dump(spec, f)
    return bundle


def create_cost(runtimes, base_rootfs, sizes, rounds, work):
    res = {}
    for extra in sizes:
        for name, binary in runtimes.items():
            bundle = make_bundle(base_rootfs, extra, binary, work)
            root = f"{work}/root-{name}"
            times = []
            for i in range(rounds):
                cid = f"cc-{name}-{extra}-{i}"
                t = time.monotonic()
                # The created container keeps create's stdio open: capturing it would wait
                # for an EOF that only comes when the container is gone.
                with open(f"{work}/create.err", "w") as err:
                    r = subprocess.run([binary, "--root", root, "create", "--bundle", bundle, cid],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=err)
                times.append((time.monotonic() - t) * 1000)
                if r.returncode != 0:
                    sys.exit(f"{name} create failed ({r.returncode}) on busybox + {extra} MiB: "
                             + open(f"{work}/create.err").read())
                sh(binary, "--root", root, "delete", "--force", cid)
            res[f"{name} +{extra} MiB"] = times
            print(f"{name:5} create, busybox + {extra:4} MiB rootfs: median {statistics.median(times):8.1f} ms",
                  flush=True)
            shutil.rmtree(bundle)
    return res


def idle_memory(c, runtimes):
    res = {}
    for name, binary in runtimes.items():
        cid = f"idle-{name}"
        c.ctr("run", "-d", "--runc-binary", binary, IMAGE, cid, "sleep", "1000")
        time.sleep(2)
        pid = int(c.ctr("task", "ls").stdout.split(cid, 1)[1].split()[0])
        if name == "runsc":
            # The container's processes live in gVisor's sandbox, a sibling of the reported pid.
            parent = int(open(f"/proc/{pid}/stat").read().split(")")[1].split()[1])
            pids = [p for p in descendants(parent)]
        else:
            pids = [pid]
        rss = pss = 0
        for p in pids:
            try:
                r, s = smaps_kib(p)
            except OSError:
                continue
            rss += r
            pss += s
        res[name] = {"rss_kib": rss, "pss_kib": pss, "pids": len(pids)}
        print(f"{name:5} idle container: RSS {rss / 1024:7.1f} MiB, PSS {pss / 1024:7.1f} MiB "
              f"({len(pids)} processes)", flush=True)
        c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        time.sleep(1)
        c.ctr("task", "delete", cid, check=False)
        c.ctr("container", "delete", cid, check=False)
    return res


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--husk")
    ap.add_argument("--images", required=True)
    ap.add_argument("--base-rootfs", required=True, help="busybox rootfs directory")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--create-rounds", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--work-dir", default="/run/husk-bench",
                    help="bundles and runtime state for the create-cost runs (needs ~4 GiB)")
    a = ap.parse_args()
    os.makedirs(a.work_dir, exist_ok=True)
    runtimes = {}
    if a.husk:
        runtimes["husk"] = a.husk
    for name in ("runc", "runsc"):
        path = shutil.which(name)
        if path:
            runtimes[name] = path
        else:
            print(f"NOTE: {name} is not installed; its column is missing", flush=True)
    os.makedirs("/run/husk-bench", exist_ok=True)
    c = Containerd(a.images)
    try:
        lat = run_latency(c, runtimes, a.rounds)
        mem = idle_memory(c, runtimes)
    finally:
        c.stop()
    create_rt = {k: v for k, v in runtimes.items() if k != "runsc"}
    cc = create_cost(create_rt, a.base_rootfs, [0, 100, 1024], a.create_rounds, a.work_dir)
    out = {"ctr_run_true_ms": {k: summary(v) for k, v in lat.items()},
           "create_ms": {k: summary(v) for k, v in cc.items()},
           "idle_memory": mem}
    ref = out["ctr_run_true_ms"]["runc"]["median"]
    out["ratios_to_runc"] = {k: v["median"] / ref for k, v in out["ctr_run_true_ms"].items()}
    print()
    print(f"{'ctr run --rm /bin/true':24}{'median ms':>11}{'min':>9}{'max':>9}{'x runc':>8}")
    for k, v in out["ctr_run_true_ms"].items():
        print(f"{k:24}{v['median']:11.1f}{v['min']:9.1f}{v['max']:9.1f}{out['ratios_to_runc'][k]:8.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
