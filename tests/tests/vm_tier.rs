//! VM tier: real guest kernel, real agent, real KVM. Run with `tests/vm-tier.sh`, which
//! builds what these need and picks a host whose KVM boots Linux.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use husk_tests::{
    assert_nothing_left, output, output_within, output_within_or_dump, process_with_arg_exists,
    pseudo_random, sha256_hex, show, vsock_connect_retry, VmTier,
};

const MIB64: usize = 64 << 20;

fn tier() -> (VmTier, tempfile::TempDir) {
    (VmTier::from_env(), tempfile::tempdir().unwrap())
}

fn guest_kernel_release(vmlinux: &Path) -> String {
    let data = std::fs::read(vmlinux).unwrap();
    let needle = b"Linux version ";
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("vmlinux has a Linux version banner");
    let rest = &data[at + needle.len()..];
    let end = rest.iter().position(|&b| b == b' ').unwrap();
    String::from_utf8(rest[..end].to_vec()).unwrap()
}

/// Runs `sh -c script` in a microVM whose extra `husk vm run` options are `opts`.
fn sh(t: &VmTier, tmp: &Path, opts: &[&str], script: &str) -> std::process::Output {
    output(t.vm_run(tmp).args(opts).args(["--", "sh", "-c", script]))
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn guest_reports_its_own_kernel_release() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    let o = output(
        t.vm_run(tmp.path())
            .arg("--disk")
            .arg(&img)
            .args(["--", "uname", "-r"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let want = guest_kernel_release(&t.kernel);
    assert_eq!(stdout_of(&o), want, "{}", show(&o));
    let host = nix::sys::utsname::uname().unwrap();
    assert_ne!(
        want,
        host.release().to_string_lossy(),
        "guest runs its own kernel"
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn nonzero_exit_status_and_signals_come_back_intact() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    let disk = ["--disk", img.to_str().unwrap()];
    let o = sh(&t, tmp.path(), &disk, "echo out; echo err >&2; exit 42");
    assert_eq!(o.status.code(), Some(42), "{}", show(&o));
    assert_eq!(stdout_of(&o), "out");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "err",
        "stdout and stderr stay apart"
    );
    let o = sh(&t, tmp.path(), &disk, "kill -9 $$");
    assert_eq!(o.status.code(), Some(137), "{}", show(&o));
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn file_written_in_the_guest_is_on_the_host_image_after_shutdown() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    let disk = ["--disk", img.to_str().unwrap()];
    let o = sh(
        &t,
        tmp.path(),
        &disk,
        "echo written-in-the-guest > /hello.txt",
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let d = Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&d.stdout).trim(),
        "written-in-the-guest",
        "{}",
        show(&d)
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn read_only_disks_refuse_writes() {
    let (t, tmp) = tier();
    let root = t.rootfs_copy(tmp.path(), "root.img");
    let ro = t.rootfs_copy(tmp.path(), "ro.img");
    let before = sha256_hex(&std::fs::read(&ro).unwrap());
    let ro_disk = format!("{}:ro", ro.display());
    // A raw write to the read-only second disk fails in the guest.
    let o = sh(
        &t,
        tmp.path(),
        &["--disk", root.to_str().unwrap(), "--disk", &ro_disk],
        "test -b /dev/vdb || exit 3; dd if=/dev/zero of=/dev/vdb bs=4096 count=16 conv=fsync && exit 0; exit 4",
    );
    assert_eq!(
        o.status.code(),
        Some(4),
        "the write must be attempted and fail: {}",
        show(&o)
    );
    // A read-only root refuses file creation.
    let o = sh(&t, tmp.path(), &["--disk", &ro_disk], "touch /new-file");
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only"),
        "{}",
        show(&o)
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&ro).unwrap()),
        before,
        "read-only image changed"
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn host_initiated_vsock_connection_carries_64_mib_both_ways() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    let uds = tmp.path().join("vm.vsock");
    let child = t
        .vm_run(tmp.path())
        .args(["--memory", "512", "--disk"])
        .arg(&img)
        .arg("--vsock-socket")
        .arg(&uds)
        .args(["--", "/husk-vsock-peer", "listen", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = pseudo_random(MIB64, 1);
    let mut s = vsock_connect_retry(&uds, 5000, Duration::from_secs(300));
    // A stall fails the test with what husk's threads were doing, instead of hanging it.
    let stall = Duration::from_secs(120);
    s.set_read_timeout(Some(stall)).unwrap();
    s.set_write_timeout(Some(stall)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    let read = s.read_to_end(&mut back);
    let written = w.join().unwrap();
    if read.is_err() || written.is_err() {
        let dump = husk_tests::dump_threads(child.id());
        let mut child = child;
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!(
            "stalled (read {read:?} after {} bytes, write {written:?}); {dump}{}",
            back.len(),
            show(&o)
        );
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let nl = back.iter().position(|&b| b == b'\n').expect("digest line");
    assert_eq!(
        String::from_utf8_lossy(&back[..nl]),
        sha256_hex(&data),
        "host -> guest intact"
    );
    assert_eq!(back.len() - nl - 1, MIB64, "guest -> host length");
    assert!(back[nl + 1..] == data[..], "guest -> host intact");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn guest_initiated_stdio_streams_carry_64_mib_both_ways() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    // Host -> guest: stdin into sha256sum.
    let data = pseudo_random(MIB64, 2);
    let mut child = t
        .vm_run(tmp.path())
        .args(["-i", "--disk"])
        .arg(&img)
        .args(["--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || stdin.write_all(&sent));
    // A stall fails the test with what husk's threads were doing, instead of hanging it.
    let stall = Duration::from_secs(300);
    let o = husk_tests::wait_within_or_dump(child, stall)
        .unwrap_or_else(|dump| panic!("host -> guest stalled: {dump}"));
    let written = w.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(written.is_ok(), "stdin: {written:?}");
    assert_eq!(
        stdout_of(&o).split_whitespace().next(),
        Some(sha256_hex(&data).as_str())
    );

    // Guest -> host: 64 MiB on stdout, its digest on stderr.
    let o = husk_tests::output_within_or_dump(
        t.vm_run(tmp.path()).args([
            "--memory",
            "256",
            "--disk",
            img.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "head -c 67108864 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob",
        ]),
        stall,
    )
    .unwrap_or_else(|dump| panic!("guest -> host stalled: {dump}"));
    assert_eq!(
        o.status.code(),
        Some(0),
        "status {:?} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout.len(), MIB64);
    let want = String::from_utf8_lossy(&o.stderr)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(sha256_hex(&o.stdout), want, "guest -> host intact");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn guest_sees_the_chosen_vcpus_and_memory() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    let o = sh(
        &t,
        tmp.path(),
        &[
            "--cpus",
            "2",
            "--memory",
            "256",
            "--disk",
            img.to_str().unwrap(),
        ],
        "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout_of(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2"), "{}", show(&o));
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {}", show(&o)));
    assert!(
        kib > 200 * 1024 && kib <= 256 * 1024,
        "MemTotal {kib} KiB for a 256 MiB guest"
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn guest_poweroff_halt_and_reboot_end_the_vm_cleanly() {
    let (t, tmp) = tier();
    let ro = format!("{}:ro", t.rootfs.display());
    // Without ACPI, poweroff and halt stop every vCPU with interrupts off (the VMM's halt
    // watchdog notices); reboot resets through the keyboard controller.
    for (cmd, how) in [
        ("poweroff -f", "powered off"),
        ("halt -f", "powered off"),
        ("reboot -f", "reset the machine"),
    ] {
        let o = output_within(
            t.vm_run(tmp.path())
                .args(["--disk", &ro, "--", "sh", "-c", cmd]),
            Duration::from_secs(300),
        )
        .unwrap_or_else(|| panic!("`{cmd}` in the guest left the VM running"));
        assert_eq!(o.status.code(), Some(0), "{cmd}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(how) && err.contains("before the command finished"),
            "{cmd}: {}",
            show(&o)
        );
    }
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn twenty_boots_in_a_row_succeed() {
    let (t, tmp) = tier();
    let img = t.rootfs_copy(tmp.path(), "root.img");
    let ro = format!("{}:ro", img.display());
    let run_dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let run = output_within_or_dump(
            t.vm_run(run_dir.path()).args(["--disk", &ro, "--", "true"]),
            Duration::from_secs(300),
        );
        let o = run.unwrap_or_else(|dump| panic!("boot {i} hung: {dump}"));
        assert_eq!(o.status.code(), Some(0), "boot {i}: {}", show(&o));
    }
    assert_eq!(
        std::fs::read_dir(run_dir.path()).unwrap().count(),
        0,
        "runtime files left behind"
    );
}

/// Runs husk with a broken input and checks it fails clearly and leaves nothing behind.
fn assert_clean_failure(t: &VmTier, args: &[&str], marker: &Path, expect_in_error: &str) {
    let run_dir = tempfile::tempdir().unwrap();
    let o = output(
        t.vm_run_bare(run_dir.path())
            .args(args)
            .args(["--", "true"]),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(expect_in_error),
        "error should mention {expect_in_error:?}: {}",
        show(&o)
    );
    assert!(
        !process_with_arg_exists(&marker.display().to_string()),
        "a process was left behind"
    );
    assert_eq!(
        std::fs::read_dir(run_dir.path()).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn bad_kernel_initrd_or_disk_fails_clearly_and_leaves_nothing() {
    let (t, tmp) = tier();
    let kernel = t.kernel.display().to_string();
    let initrd = t.initrd.display().to_string();
    let missing = tmp.path().join("missing-file");
    let corrupt = tmp.path().join("corrupt-file");
    std::fs::write(&corrupt, pseudo_random(4 << 20, 3)).unwrap();
    let (m, c) = (missing.display().to_string(), corrupt.display().to_string());
    assert_clean_failure(&t, &["--kernel", &m, "--initrd", &initrd], &missing, &m);
    assert_clean_failure(
        &t,
        &["--kernel", &c, "--initrd", &initrd],
        &corrupt,
        "not a loadable",
    );
    assert_clean_failure(&t, &["--kernel", &kernel, "--initrd", &m], &missing, &m);
    assert_clean_failure(
        &t,
        &["--kernel", &kernel, "--initrd", &c],
        &corrupt,
        "stopped before its agent answered",
    );
    assert_clean_failure(
        &t,
        &["--kernel", &kernel, "--initrd", &initrd, "--disk", &m],
        &missing,
        &m,
    );
    let o = output(t.vm_run(tmp.path()).args(["--disk", &c, "--", "true"]));
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/dev/vda"),
        "{}",
        show(&o)
    );
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn serial_log_shows_the_kernel_booting() {
    let (t, tmp) = tier();
    let log = tmp.path().join("console.log");
    let img = format!("{}:ro", t.rootfs.display());
    let o = output(
        t.vm_run(tmp.path())
            .arg("--serial-log")
            .arg(&log)
            .args(["--disk", &img, "--", "true"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Linux version"), "console log: {text}");
}

fn oci_bundle(t: &VmTier, dir: &Path, args: &[&str]) -> std::path::PathBuf {
    t.oci_bundle(dir, args)
}

fn husk_oci(t: &VmTier, root: &Path) -> Command {
    t.husk_oci(root)
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn oci_run_in_a_microvm_returns_the_exit_status_and_leaves_nothing() {
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["sh", "-c", "uname -r; exit 3"]);
    let root = tmp.path().join("state");
    let o = output(
        t.husk_oci(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("oci-run"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert_eq!(
        stdout_of(&o),
        guest_kernel_release(&t.kernel),
        "{}",
        show(&o)
    );
    husk_tests::assert_nothing_left(&root, "oci-run");
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn oci_create_with_a_missing_program_fails_clearly_and_leaves_nothing() {
    let (t, tmp) = tier();
    let bundle = t.oci_bundle(tmp.path(), &["/no/such/program"]);
    let root = tmp.path().join("state");
    let o = output(
        t.husk_oci(&root)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg("oci-bad"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/no/such/program"),
        "the error names the program: {}",
        show(&o)
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one clear line: {}",
        show(&o)
    );
    husk_tests::assert_nothing_left(&root, "oci-bad");
    let o = output(t.husk_oci(&root).args(["state", "oci-bad"]));
    assert_eq!(
        o.status.code(),
        Some(1),
        "the id is unknown again: {}",
        show(&o)
    );
}

/// A bundle whose network namespace is `netns` (a path) instead of a new one.
fn with_netns_path(bundle: &Path, netns: &Path) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for n in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = serde_json::json!(netns);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn oci_container_gets_its_namespaces_interface_and_moves_1_mib_both_ways() {
    use husk_tests::net::{describe_netns, fetch_or, husk_leftovers, HttpServer, Netns};
    let (t, tmp) = tier();
    // The engine's part, by hand: a veth from the host into a namespace, configured.
    let ns = Netns::new("husk-vt-net");
    husk_tests::net::ip(&[
        "link", "add", "vt-host", "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    husk_tests::net::ip(&["addr", "add", "10.123.0.1/24", "dev", "vt-host"]);
    husk_tests::net::ip(&["link", "set", "vt-host", "up"]);
    ns.ip(&[
        "link",
        "set",
        "eth0",
        "address",
        "02:42:0a:7b:00:02",
        "mtu",
        "1400",
        "up",
    ]);
    ns.ip(&["addr", "add", "10.123.0.2/24", "dev", "eth0"]);
    ns.ip(&["addr", "add", "fd00:7b::2/64", "dev", "eth0", "nodad"]);
    ns.ip(&["route", "add", "default", "via", "10.123.0.1"]);
    let _host_end = scopeguard_link("vt-host");

    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let down = pseudo_random(1 << 20, 7);
    std::fs::write(www.join("down"), &down).unwrap();
    let _server = HttpServer::start("10.123.0.1:8081", &www);

    let script = "ip -o link show eth0; ip -o addr show eth0; ip route; \
        ping -c 2 -W 5 10.123.0.1; ip neigh; cat /proc/net/dev; \
        wget -q -O /tmp/down http://10.123.0.1:8081/down && sha256sum /tmp/down; \
        mkdir -p /www && dd if=/dev/urandom of=/www/up bs=1024 count=1024 2>/dev/null; \
        sha256sum /www/up; echo small > /www/small; exec httpd -f -p 8082 -h /www";
    let bundle = oci_bundle(&t, tmp.path(), &["sh", "-c", script]);
    with_netns_path(&bundle, &ns.path());
    // The script writes to its root (`husk spec` makes it read-only).
    husk_tests::edit_spec(&bundle, |s| s["root"]["readonly"] = false.into());
    let root = tmp.path().join("state");
    let out = tmp.path().join("out");
    let err = tmp.path().join("err");
    // The sandbox keeps create's stdout and stderr: files, not pipes waited on.
    let st = husk_oci(&t, &root)
        .args(["--debug", "create", "--bundle"])
        .arg(&bundle)
        .arg("net1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "create: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let o = output(husk_oci(&t, &root).args(["start", "net1"]));
    assert!(o.status.success(), "{}", show(&o));
    let nspath = ns.path();
    let up = fetch_or(
        "http://10.123.0.2:8082/up",
        Duration::from_secs(120),
        || {
            let small = output(Command::new("sh").args([
                "-c",
                "ip route get 10.123.0.2; ip neigh; \
                 timeout 5 busybox wget -O - http://10.123.0.2:8082/small; \
                 grep Tcp /proc/net/snmp",
            ]));
            let inside = output(husk_oci(&t, &root).args([
                "exec",
                "net1",
                "sh",
                "-c",
                "cat /proc/net/dev /proc/net/snmp; netstat -tan",
            ]));
            format!(
                "small GET: {}\nin the container: {}\ncontainer stdout: {}\nhusk: {}\nconsole: {}\nnamespace:\n{}\nhost:\n{}",
                show(&small),
                show(&inside),
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default(),
                std::fs::read_to_string(root.join("net1/console.log")).unwrap_or_default(),
                describe_netns(Some(&nspath)),
                describe_netns(None)
            )
        },
    );
    assert_eq!(up.len(), 1 << 20);
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(
        printed.contains("02:42:0a:7b:00:02") && printed.contains("mtu 1400"),
        "{printed}"
    );
    assert!(
        printed.contains("10.123.0.2/24") && printed.contains("fd00:7b::2/64"),
        "{printed}"
    );
    assert!(printed.contains("default via 10.123.0.1"), "{printed}");
    assert!(
        printed.contains(&format!("{}  /tmp/down", sha256_hex(&down))),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("{}  /www/up", sha256_hex(&up))),
        "{printed}"
    );
    let o = output(husk_oci(&t, &root).args(["delete", "--force", "net1"]));
    assert!(o.status.success(), "{}", show(&o));
    assert_nothing_left(&root, "net1");
    // The namespace outlives the container (it is the engine's): husk's tap and filters
    // must be gone from it, the interface still there.
    let left = husk_leftovers(&[]);
    assert!(left.is_empty(), "left behind: {left:?}\n{}", ns.describe());
    assert!(ns.describe().contains("eth0"));
}

#[test]
#[ignore = "VM tier: needs a KVM that boots Linux; run tests/vm-tier.sh"]
fn oci_container_without_interfaces_has_only_loopback() {
    let (t, tmp) = tier();
    let bundle = oci_bundle(
        &t,
        tmp.path(),
        &[
            "sh",
            "-c",
            "ip -o link | cut -d: -f2 | tr -d ' ' | tr '\\n' ,",
        ],
    );
    let root = tmp.path().join("state");
    let o = output(
        husk_oci(&t, &root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("nonet"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout_of(&o), "lo,", "{}", show(&o));
    assert_nothing_left(&root, "nonet");
}

/// Deletes host link `name` on drop.
struct LinkGuard(&'static str);
impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
    }
}
fn scopeguard_link(name: &'static str) -> LinkGuard {
    LinkGuard(name)
}
