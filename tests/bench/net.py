#!/usr/bin/env python3
"""Network benchmark: husk against runc and QEMU microvm, same host, same bridge, same run.

Each target runs `iperf3 -s` behind its own interface on one bridge (br-hbench,
10.55.0.1/24, the client side):
  husk  - a container whose network namespace holds a veth into the bridge (what an
          engine does); husk carries it into the microVM (tap + tc redirect, virtio-net).
  runc  - the same bundle with runc in a namespace wired the same way (no VM).
  qemu  - QEMU `-M microvm -accel kvm` on the same guest kernel, a tap on the bridge and a
          `virtio-net-device` (no vhost: /dev/vhost-net may not exist), booting the same
          rootfs as an ext4 disk with an init that configures eth0 and runs iperf3 -s.
For each, rounds alternate targets: iperf3 host->container and container->host (-R) for
--seconds each, and ping round trip (the median of 20 pings). Prints medians and ratios; JSON to --out.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

BR, BR_IP = "br-hbench", "10.55.0.1"
IPS = {"husk": "10.55.0.2", "runc": "10.55.0.3", "qemu": "10.55.0.4"}


def sh(*args, check=True, **kw):
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r


def iperf_run(args):
    """Mbit/s received, or None and why (iperf3 -J exits 0 on some errors)."""
    r = sh(*args, check=False)
    try:
        j = json.loads(r.stdout)
    except ValueError:
        j = {}
    got = j.get("end", {}).get("sum_received")
    if r.returncode == 0 and got:
        return got["bits_per_second"] / 1e6, ""
    return None, j.get("error") or f"{r.stdout[-400:]}{r.stderr[-400:]}"


def wait_port(ip, deadline_s=300):
    end = time.time() + deadline_s
    why = ""
    while time.time() < end:
        mbps, why = iperf_run(["iperf3", "-c", ip, "-t", "1", "-J"])
        if mbps is not None:
            return
        time.sleep(1)
    sys.exit(f"iperf3 on {ip} never answered: {why}")


def iperf(ip, seconds, reverse):
    args = ["iperf3", "-c", ip, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    why = ""
    for _ in range(3):
        mbps, why = iperf_run(args)
        if mbps is not None:
            return mbps
        # A run the server cut short has no totals: try again.
        time.sleep(1)
    sys.exit(f"iperf3 to {ip} failed: {why}")


def ping_ms(ip):
    """The median round trip of 20 pings: one slow reply (a stall of the software-emulated
    test host) moves an average, not a median."""
    # iputils' ping where installed, else busybox's (Debian's busybox-static has it).
    ping = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    r = sh(*ping, "-c", "20", "-i", "0.2", ip)
    # "64 bytes from ...: icmp_seq=1 ttl=64 time=0.421 ms" (iputils and busybox alike)
    times = [float(l.split("time=")[1].split()[0]) for l in r.stdout.splitlines()
             if "time=" in l]
    if not times:
        sys.exit(f"no ping replies from {ip}: {r.stdout}")
    return statistics.median(times)


def veth_netns(name, ip):
    sh("ip", "netns", "del", name, check=False)
    sh("ip", "netns", "add", name)
    host = f"v{name}"[:15]
    sh("ip", "link", "del", host, check=False)
    sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name)
    sh("ip", "link", "set", host, "master", BR, "up")
    sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
    sh("ip", "-n", name, "link", "set", "eth0", "up")
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return f"/run/netns/{name}"


def bundle(rootfs, work, name, netns):
    b = os.path.join(work, name)
    os.makedirs(b)
    # A copy each: runc refuses a rootfs that is a symlink, and neither may see the
    # other's writes.
    subprocess.run(["cp", "-a", rootfs, os.path.join(b, "rootfs")], check=True)
    cfg = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": ["iperf3", "-s"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"]},
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "network", "path": netns}]},
    }
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(cfg, f)
    return b


class Target:
    def __init__(self, name):
        self.name = name
        self.ip = IPS[name]
        self.results = {"to_container_mbps": [], "from_container_mbps": [], "ping_ms": []}


def start_husk(a, rootfs, work):
    ns = veth_netns("hb-husk", IPS["husk"])
    b = bundle(rootfs, work, "husk", ns)
    root = os.path.join(work, "husk-state")
    # The sandbox keeps the caller's stdio open: give it none of ours.
    r = subprocess.run([a.husk, "--root", root, "run", "--detach", "--bundle", b, "hbench"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=open(os.path.join(work, "husk.err"), "w"))
    if r.returncode != 0:
        sys.exit(f"husk run failed: {open(os.path.join(work, 'husk.err')).read()}")
    return lambda: (sh(a.husk, "--root", root, "delete", "--force", "hbench", check=False),
                    sh("ip", "netns", "del", "hb-husk", check=False))


def start_runc(a, rootfs, work):
    ns = veth_netns("hb-runc", IPS["runc"])
    b = bundle(rootfs, work, "runc", ns)
    root = os.path.join(work, "runc-state")
    # The container keeps runc's stdio: a file, not a pipe nobody would close.
    err = os.path.join(work, "runc.err")
    r = subprocess.run(["runc", "--root", root, "run", "--detach", "--bundle", b, "hbench"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=open(err, "w"))
    if r.returncode != 0:
        sys.exit(f"runc run failed: {open(err).read()}")
    return lambda: (sh("runc", "--root", root, "delete", "--force", "hbench", check=False),
                    sh("ip", "netns", "del", "hb-runc", check=False))


def start_qemu(a, rootfs, work):
    img = os.path.join(work, "qemu.img")
    with open(os.path.join(rootfs, "bench-ip"), "w") as f:
        f.write(f"{IPS['qemu']}/24\n")
    sh(a.rootfs_builder, "ext4", "--from", rootfs, "--out", img)
    tap = "hbtap0"
    sh("ip", "link", "del", tap, check=False)
    sh("ip", "tuntap", "add", tap, "mode", "tap", "vnet_hdr")
    sh("ip", "link", "set", tap, "master", BR, "up")
    log = os.path.join(work, "qemu.log")
    p = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
         "-m", "256", "-smp", "1",
         "-nodefaults", "-no-user-config", "-display", "none", "-serial", f"file:{log}",
         "-kernel", a.kernel,
         "-append", "console=ttyS0 reboot=t panic=1 root=/dev/vda rw init=/bench-init",
         "-drive", f"id=r,file={img},format=raw,if=none", "-device", "virtio-blk-device,drive=r",
         "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
         "-device", "virtio-net-device,netdev=n0,mac=02:42:0a:37:00:04", "-no-reboot"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log + ".err", "w"))
    return lambda: (p.kill(), p.wait(), sh("ip", "link", "del", tap, check=False))


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--husk", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--rootfs-builder", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="husk-bench-net-", dir="/run")
    sh("ip", "link", "del", BR, check=False)
    sh("ip", "link", "add", BR, "type", "bridge")
    sh("ip", "addr", "add", f"{BR_IP}/24", "dev", BR)
    sh("ip", "link", "set", BR, "up")
    targets = [Target(n) for n in ("husk", "runc", "qemu")]
    stops = []
    try:
        def said(t):
            # What the target said before it stopped answering.
            for log in ("husk.err", "runc.err", "qemu.log", "qemu.log.err"):
                path = os.path.join(work, log)
                if log.startswith(t.name) and os.path.exists(path):
                    print(f"--- {log}:\n" + open(path, errors="replace").read()[-3000:],
                          file=sys.stderr)

        for t, start in zip(targets, (start_husk, start_runc, start_qemu)):
            stops.append(start(a, a.rootfs, work))
            try:
                wait_port(t.ip)
            except SystemExit:
                said(t)
                raise
        for r in range(a.rounds):
            for t in targets:
                try:
                    t.results["to_container_mbps"].append(iperf(t.ip, a.seconds, False))
                    t.results["from_container_mbps"].append(iperf(t.ip, a.seconds, True))
                    t.results["ping_ms"].append(ping_ms(t.ip))
                except SystemExit:
                    said(t)
                    raise
                print(f"round {r + 1} {t.name}: " + ", ".join(
                    f"{k} {v[-1]:.2f}" for k, v in t.results.items()), file=sys.stderr)
    finally:
        for s in stops:
            s()
        sh("ip", "link", "del", BR, check=False)
        shutil.rmtree(work, ignore_errors=True)
    m = {t.name: {k: med(v) for k, v in t.results.items()} for t in targets}
    rows = [("iperf3 host -> container (Mbit/s)", "to_container_mbps", True),
            ("iperf3 container -> host (Mbit/s)", "from_container_mbps", True),
            ("ping round trip (ms)", "ping_ms", False)]
    print(f"{a.rounds} rounds, {a.seconds} s each | husk | runc | QEMU microvm | husk/QEMU | husk/runc")
    print("|---|---|---|---|---|---|")
    ratios = {}
    for label, k, higher_better in rows:
        h, r, q = m["husk"][k], m["runc"][k], m["qemu"][k]
        ratios[k] = {"husk_over_qemu": h / q, "husk_over_runc": h / r}
        print(f"| {label} | {h:.2f} | {r:.2f} | {q:.2f} | {h / q:.2f} | {h / r:.2f} |")
    print("(throughput: higher is better; round trip: lower is better)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rounds": a.rounds, "seconds": a.seconds,
                       "raw": {t.name: t.results for t in targets},
                       "median": m, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
