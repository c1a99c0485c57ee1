#!/usr/bin/env python3
"""Boot benchmark: boot-to-agent-ready time and VMM process memory, husk vs QEMU microvm.

Both VMMs boot the same vmlinux, initramfs (husk-agent as /init) and read-only busybox
disk with 1 vCPU and 128 MiB, in the same host and run, alternating. Agent ready means:
  husk: `husk vm run --report` timestamps the completed vsock handshake with the agent;
  QEMU: the agent writes HUSK_AGENT_READY to ttyS0 (kernel arg husk.ready=ttyS0; QEMU has
        no vhost-vsock here), seen in QEMU's serial log file.
Memory is the VMM process's RSS and PSS (smaps_rollup) at agent ready. Prints medians,
spread and husk/QEMU ratios; writes JSON to --out.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time


def smaps(pid):
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in ("Rss:", "Pss:"):
                vals[parts[0][:-1].lower()] = int(parts[1])
    return vals["rss"], vals["pss"]


def husk_boot(a, tmp):
    report = os.path.join(tmp, "report.json")
    cmd = [a.husk, "vm", "run", "--kernel", a.kernel, "--initrd", a.initrd,
           "--memory", "128", "--disk", a.disk + ":ro", "--report", report, "--", "true"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"husk failed ({r.returncode}): {r.stderr}")
    with open(report) as f:
        rep = json.load(f)
    return rep["agent_ready_ms"], rep["rss_kib_at_agent_ready"], rep["pss_kib_at_agent_ready"]


def qemu_boot(a, tmp):
    log = os.path.join(tmp, "serial.log")
    open(log, "w").close()
    cmd = [a.qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", "1",
           "-nodefaults", "-no-user-config", "-display", "none", "-serial", f"file:{log}",
           "-kernel", a.kernel, "-initrd", a.initrd,
           "-append", "reboot=t panic=1 no_timer_check tsc=reliable "
                      "rcupdate.rcu_expedited=1 cryptomgr.notests husk.ready=ttyS0",
           "-drive", f"id=r,file={a.disk},format=raw,if=none,readonly=on",
           "-device", "virtio-blk-device,drive=r", "-no-reboot"]
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        while True:
            with open(log, "rb") as f:
                if b"HUSK_AGENT_READY" in f.read():
                    ready = (time.monotonic() - start) * 1000
                    break
            if p.poll() is not None:
                sys.exit(f"qemu exited ({p.returncode}) before the agent was ready: "
                         f"{p.stderr.read().decode(errors='replace')}")
            if time.monotonic() - start > 600:
                sys.exit("qemu: agent not ready after 600 s")
            time.sleep(0.002)
        rss, pss = smaps(p.pid)
    finally:
        p.kill()
        p.wait()
    return ready, rss, pss


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--husk", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--disk", required=True)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--boots", type=int, default=10)
    ap.add_argument("--out")
    a = ap.parse_args()
    res = {"husk": {"ms": [], "rss": [], "pss": []}, "qemu": {"ms": [], "rss": [], "pss": []}}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.boots):
            for name, fn in (("husk", husk_boot), ("qemu", qemu_boot)):
                ms, rss, pss = fn(a, tmp)
                res[name]["ms"].append(ms)
                res[name]["rss"].append(rss)
                res[name]["pss"].append(pss)
                print(f"boot {i + 1:2}/{a.boots} {name:4}: agent ready {ms:8.1f} ms, "
                      f"RSS {rss / 1024:6.1f} MiB, PSS {pss / 1024:6.1f} MiB", flush=True)
    out = {k: {m: summary(v) for m, v in d.items()} for k, d in res.items()}
    h, q = out["husk"], out["qemu"]
    out["ratios_husk_over_qemu"] = {
        "boot_median": h["ms"]["median"] / q["ms"]["median"],
        "rss_median": h["rss"]["median"] / q["rss"]["median"],
        "pss_median": h["pss"]["median"] / q["pss"]["median"],
    }
    print()
    print(f"{'':6}{'boot median ms':>16}{'min':>9}{'max':>9}{'stdev':>8}{'RSS MiB':>9}{'PSS MiB':>9}")
    for name, s in (("husk", h), ("qemu", q)):
        print(f"{name:6}{s['ms']['median']:16.1f}{s['ms']['min']:9.1f}{s['ms']['max']:9.1f}"
              f"{s['ms']['stdev']:8.1f}{s['rss']['median'] / 1024:9.1f}{s['pss']['median'] / 1024:9.1f}")
    r = out["ratios_husk_over_qemu"]
    print(f"ratio husk/qemu: boot {r['boot_median']:.2f}, RSS {r['rss_median']:.2f}, "
          f"PSS {r['pss_median']:.2f}  (below 1.0: husk is faster / smaller)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
