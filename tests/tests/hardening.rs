//! VM tier: the sandbox's confinement and a hostile guest, with real microVMs. Run with
//! `tests/vm-tier.sh` (`--hardening` for this suite alone).
//!
//! The hostile-guest test runs `/husk-hostile all` (tests/src/bin/husk-hostile.rs) as the
//! container's process and measures the sandbox process while it attacks; the bounds it
//! asserts are printed with what was measured.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_tests::{assert_nothing_left, output, read_config, show, write_config, VmTier};

fn tier() -> (VmTier, tempfile::TempDir) {
    (VmTier::from_env(), tempfile::tempdir().unwrap())
}

fn ok(cmd: &mut Command) -> std::process::Output {
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    o
}

/// `husk create` with the container's stdio on /dev/null; returns the sandbox's pid.
fn create(t: &VmTier, root: &Path, bundle: &Path, id: &str, env: &[(&str, &str)]) -> i32 {
    let mut c = t.husk_oci(root);
    c.args(["--log"])
        .arg(root.with_extension("log"))
        .args(["--log-format", "json", "create", "--bundle"])
        .arg(bundle)
        .arg(id)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = c.status().unwrap();
    assert!(status.success(), "create {id} failed");
    state(t, root, id)["pid"].as_i64().unwrap() as i32
}

fn state(t: &VmTier, root: &Path, id: &str) -> serde_json::Value {
    let o = ok(t.husk_oci(root).args(["state", id]));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn status_field(pid: i32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn kib(pid: i32, key: &str) -> u64 {
    status_field(pid, key)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count_dir(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Waits until `pid` is gone (reaped or a zombie of someone else); false on timeout.
fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn ns(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn the_running_sandbox_is_confined() {
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sleep", "1000"]);
    let mut spec = read_config(&bundle);
    spec["linux"]["cgroupsPath"] = "/husk-tests/confined".into();
    spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": 64 << 20});
    write_config(&bundle, &spec);
    let root = tmp.path().join("state");
    let pid = create(&t, &root, &bundle, "confined", &[]);
    // In the container's cgroup, whose memory limit bounds the whole VM: 64 MiB asked,
    // plus the guest's 128 MiB headroom, plus the VMM's 128 MiB.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(cgroups.trim(), "0::/husk-tests/confined");
    let cg = Path::new("/sys/fs/cgroup/husk-tests/confined");
    let max = std::fs::read_to_string(cg.join("memory.max")).unwrap();
    assert_eq!(max.trim(), ((64u64 + 128 + 128) << 20).to_string());
    let current: u64 = std::fs::read_to_string(cg.join("memory.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "the VM's cgroup: memory.current {current} bytes, memory.max {}",
        max.trim()
    );
    assert!(
        current > 16 << 20,
        "guest memory is charged there: {current}"
    );
    // Every thread runs under a filter: the main (control) thread, vCPUs, devices.
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    // No capability left but the seven of the virtio-fs server (CHOWN, DAC_OVERRIDE,
    // DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID), none inheritable or ambient; it keeps uid 0 for
    // that server (see the README's security model) and no supplementary group.
    for set in ["CapInh:", "CapAmb:"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    for set in ["CapPrm:", "CapEff:", "CapBnd:"] {
        assert_eq!(status_field(pid, set), "00000000000000df", "{set}");
    }
    let uids = status_field(pid, "Uid:");
    assert!(uids.split_whitespace().all(|u| u == "0"), "{uids}");
    assert_eq!(status_field(pid, "Groups:"), "");
    // Its root is the jail: a mount of its own, nosuid, nodev, noexec, with nothing
    // mounted beneath it but the shares.
    use std::os::unix::fs::MetadataExt;
    let jail = root.join("confined").join("sandbox");
    let its_root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let jail_meta = std::fs::metadata(&jail).unwrap();
    assert_eq!(
        (its_root.dev(), its_root.ino()),
        (jail_meta.dev(), jail_meta.ino()),
        "the sandbox's root is not its jail"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let first: Vec<&str> = mounts.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(first[4], "/", "{mounts}");
    for opt in ["nosuid", "nodev", "noexec"] {
        assert!(first[5].split(',').any(|o| o == opt), "{mounts}");
    }
    for line in mounts.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields[4];
        if at == "/proc/self/fd" {
            // Its own descriptor table only (the file server's xattr paths), read-only.
            assert_eq!(fields[3], format!("/{pid}/fd"), "{mounts}");
            assert!(fields[5].split(',').any(|o| o == "ro"), "{mounts}");
            continue;
        }
        assert!(
            at.starts_with("/mounts") || at.starts_with("/shared"),
            "{at} is mounted in the jail: {mounts}"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&jail)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["control.sock", "mounts", "proc", "shared", "vsock.sock"],
        "what the jail holds"
    );
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap();
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "thread {} runs without a seccomp filter",
            comm.trim()
        );
    }
    // Namespaces of its own (conformance: the state pid shows them).
    for n in ["mnt", "ipc", "uts", "cgroup"] {
        assert_ne!(
            ns(&pid.to_string(), n),
            ns("self", n),
            "{n} namespace is the host's"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace()
                .skip(3)
                .take(2)
                .eq(["1048576", "1048576"])),
        "{limits}"
    );
    ok(t.husk_oci(&root).args(["delete", "--force", "confined"]));
    assert_nothing_left(&root, "confined");
    assert!(!cg.exists(), "the container's cgroup is left behind");
    let _ = std::fs::remove_dir("/sys/fs/cgroup/husk-tests");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn a_systemd_cgroups_path_places_the_sandbox_where_systemd_would() {
    // No systemd in the test host: husk makes the scope's path itself.
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sleep", "1000"]);
    let mut spec = read_config(&bundle);
    spec["linux"]["cgroupsPath"] = "husk-tests.slice:husk:sd".into();
    write_config(&bundle, &spec);
    let root = tmp.path().join("state");
    let status = t
        .husk_oci(&root)
        .args(["--systemd-cgroup", "create", "--bundle"])
        .arg(&bundle)
        .arg("sd")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = state(&t, &root, "sd")["pid"].as_i64().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // systemd nests `a-b.slice` in `a.slice`.
    assert_eq!(
        cgroups.trim(),
        "0::/husk.slice/husk-tests.slice/husk-sd.scope"
    );
    ok(t.husk_oci(&root)
        .args(["--systemd-cgroup", "delete", "--force", "sd"]));
    assert_nothing_left(&root, "sd");
    let slice = Path::new("/sys/fs/cgroup/husk.slice/husk-tests.slice");
    assert!(!slice.join("husk-sd.scope").exists());
    let _ = std::fs::remove_dir(slice);
    let _ = std::fs::remove_dir("/sys/fs/cgroup/husk.slice");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn a_forbidden_system_call_ends_the_sandbox_with_a_record() {
    use std::io::{Read, Write};
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sleep", "1000"]);
    let root = tmp.path().join("state");
    let pid = create(
        &t,
        &root,
        &bundle,
        "violation",
        &[("HUSK_TEST_SECCOMP_VIOLATION", "1")],
    );
    let mut s = std::os::unix::net::UnixStream::connect(
        root.join("violation").join("sandbox").join("control.sock"),
    )
    .unwrap();
    let body = br#"{"type":"test_seccomp_violation"}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    assert!(
        wait_gone(pid, Duration::from_secs(30)),
        "the sandbox lives on"
    );
    let log = std::fs::read_to_string(root.with_extension("log")).unwrap();
    assert!(
        log.contains("seccomp: the control thread (")
            && log.contains(&format!(
                ") made the forbidden system call {}",
                libc::SYS_sysinfo
            )),
        "{log}"
    );
    assert_eq!(state(&t, &root, "violation")["status"], "stopped");
    ok(t.husk_oci(&root).args(["delete", "violation"]));
    assert_nothing_left(&root, "violation");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn the_soft_nofile_limit_of_config_json_is_kept() {
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sh", "-c", "ulimit -Sn; ulimit -Hn"]);
    let mut spec = read_config(&bundle);
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 3000, "hard": 4000}]);
    write_config(&bundle, &spec);
    let root = tmp.path().join("state");
    let o = output(
        t.husk_oci(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("nofile"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "3000\n4000",
        "{}",
        show(&o)
    );
    assert_nothing_left(&root, "nofile");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn state_reports_stopped_as_soon_as_a_killed_container_has_exited() {
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sleep", "1000"]);
    let root = tmp.path().join("state");
    let pid = create(&t, &root, &bundle, "killed", &[]);
    ok(t.husk_oci(&root).args(["start", "killed"]));
    let killed = Instant::now();
    ok(t.husk_oci(&root).args(["kill", "killed", "KILL"]));
    let mut stopped_after = None;
    while killed.elapsed() < Duration::from_secs(60) {
        if state(&t, &root, "killed")["status"] == "stopped" {
            stopped_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = stopped_after.expect("still not stopped a minute after kill KILL");
    eprintln!("state said stopped {after:?} after kill KILL");
    assert!(
        after < Duration::from_secs(10),
        "stopped only after {after:?}"
    );
    assert!(wait_gone(pid, Duration::from_secs(60)));
    ok(t.husk_oci(&root).args(["delete", "killed"]));
    assert_nothing_left(&root, "killed");
}

/// What one sample of the sandbox process showed.
#[derive(Default, Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    threads: usize,
    log_bytes: u64,
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn a_hostile_guest_cannot_exhaust_the_host() {
    const ATTACK_SECS: u64 = 20;
    const GUEST_MIB: u64 = 256;
    // The bounds: guest memory plus what the VMM may add; fds above the VM's own but far
    // below 1024 connections; a fixed set of threads; a log that does not grow with the
    // guest's doing.
    const MAX_RSS_KIB: u64 = (GUEST_MIB + 128) << 10;
    const MAX_FDS: usize = 256;
    const MAX_THREADS: usize = 48;
    const MAX_LOG_BYTES: u64 = 256 << 10;
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(
        tmp.path(),
        &["/husk-hostile", "all", &ATTACK_SECS.to_string()],
    );
    let mut spec = read_config(&bundle);
    // /dev/mem and the right to use it, to hammer the virtio-mmio registers.
    spec["linux"]["devices"] = serde_json::json!([
        {"path": "/dev/mem", "type": "c", "major": 1, "minor": 1, "fileMode": 384}
    ]);
    for set in ["bounding", "effective", "permitted"] {
        let caps = spec["process"]["capabilities"][set].as_array_mut().unwrap();
        caps.push("CAP_SYS_RAWIO".into());
    }
    write_config(&bundle, &spec);
    let root = tmp.path().join("state");
    let log = root.with_extension("log");
    let pid = create(&t, &root, &bundle, "hostile", &[]);
    ok(t.husk_oci(&root).args(["start", "hostile"]));
    let mut peak = Sample::default();
    let mut slowest_state = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(ATTACK_SECS + 5) {
        let s = Sample {
            rss_kib: kib(pid, "VmRSS:"),
            fds: count_dir(format!("/proc/{pid}/fd")),
            threads: count_dir(format!("/proc/{pid}/task")),
            log_bytes: std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
        };
        peak.rss_kib = peak.rss_kib.max(s.rss_kib);
        peak.fds = peak.fds.max(s.fds);
        peak.threads = peak.threads.max(s.threads);
        peak.log_bytes = peak.log_bytes.max(s.log_bytes);
        let t0 = Instant::now();
        assert_eq!(state(&t, &root, "hostile")["status"], "running");
        slowest_state = slowest_state.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "hostile guest, measured peaks: RSS {} KiB (bound {MAX_RSS_KIB}), fds {} (bound {MAX_FDS}), \
         threads {} (bound {MAX_THREADS}), log {} bytes (bound {MAX_LOG_BYTES}), slowest state {:?}",
        peak.rss_kib, peak.fds, peak.threads, peak.log_bytes, slowest_state
    );
    // SIGTERM is ignored by the guest: the container keeps running. Its agent may still be
    // busy with what the attacks left behind (thousands of vsock sockets closing at once):
    // under the test host's emulation that once took it past the 10 s a request waits, so
    // a request it did not answer in time is sent again, twice at most.
    for attempt in 1.. {
        let o = output(t.husk_oci(&root).args(["kill", "hostile", "TERM"]));
        let busy = String::from_utf8_lossy(&o.stderr).contains("did not answer");
        if o.status.success() || !busy || attempt == 3 {
            assert_eq!(o.status.code(), Some(0), "kill TERM: {}", show(&o));
            break;
        }
        eprintln!("kill TERM: the guest agent did not answer in time (attempt {attempt}); again");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&t, &root, "hostile")["status"], "running");
    // SIGKILL ends it whatever the guest does.
    let killed = Instant::now();
    ok(t.husk_oci(&root).args(["kill", "hostile", "KILL"]));
    assert!(
        wait_gone(pid, Duration::from_secs(60)),
        "the sandbox outlived SIGKILL"
    );
    eprintln!("kill KILL to sandbox gone: {:?}", killed.elapsed());
    ok(t.husk_oci(&root).args(["delete", "--force", "hostile"]));
    assert_nothing_left(&root, "hostile");
    assert!(peak.rss_kib <= MAX_RSS_KIB, "{peak:?}");
    assert!(peak.fds <= MAX_FDS, "{peak:?}");
    assert!(peak.threads <= MAX_THREADS, "{peak:?}");
    assert!(peak.log_bytes <= MAX_LOG_BYTES, "{peak:?}");
    assert!(
        slowest_state < Duration::from_secs(10),
        "state took {slowest_state:?}"
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn lifecycle_soak_in_microvms_leaks_nothing() {
    // A short smoke by default; `scripts/soak.sh --vm` runs 100 cycles.
    let cycles = std::env::var("HUSK_SOAK_VM_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sleep", "1000"]);
    let root = tmp.path().join("state");
    std::fs::create_dir(&root).unwrap();
    let cfg = husk_tests::soak::SoakConfig {
        husk: t.husk.clone(),
        env: Vec::new(),
        bundle,
        root: root.clone(),
        cycles,
        max_delay: Duration::from_secs(10),
        seed: husk_tests::soak::SoakConfig::seed_from_env(),
        id_prefix: "vmsoak".into(),
    };
    let report = husk_tests::soak::run(&cfg);
    eprintln!(
        "soak (microVMs): {cycles} cycles in {:?}, seed {}, faults none/kill-create/kill-sandbox-created/kill-sandbox-running/kill-start = {:?}; left: {}",
        report.elapsed,
        cfg.seed,
        report.per_fault,
        report.left.counts()
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.left.total(), 0, "leaked: {:#?}", report.left);
}
