//! The lifecycle soak with the process backend: create/start/kill/delete cycles with
//! `kill -9` of the CLI or the sandbox at random points, then a census of leaked
//! processes, mounts, loop devices, descriptors, files, cgroups and sockets (see
//! husk_tests::soak). `cargo test` runs a short smoke (`HUSK_SOAK_CYCLES`, default 20);
//! `scripts/soak.sh` runs 1,000. A process of its own: it reaps orphaned sandboxes as a
//! subreaper, which would steal other tests' children.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use husk_tests::soak::{run, SoakConfig};

fn agent_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HUSK_AGENT_BIN") {
        return p.into();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-q", "-p", "husk-agent"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo build -p husk-agent");
    assert!(
        out.status.success(),
        "building husk-agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Path::new(env!("CARGO_BIN_EXE_husk")).with_file_name("husk-agent")
}

fn bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    assert!(
        Path::new("/bin/busybox").is_file(),
        "the soak needs /bin/busybox (busybox-static)"
    );
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sleep", "1000"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "network"}]}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn lifecycle_soak_with_kill_9_at_random_points_leaks_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the soak attaches loop devices and mounts filesystems: run it as root"
    );
    let cycles = std::env::var("HUSK_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bundle_dir = tempfile::tempdir().unwrap();
    bundle(bundle_dir.path());
    let root = tempfile::Builder::new()
        .prefix("husk-soak-")
        .tempdir()
        .unwrap();
    let cfg = SoakConfig {
        husk: env!("CARGO_BIN_EXE_husk").into(),
        env: vec![
            ("HUSK_SANDBOX_BACKEND".into(), "process".into()),
            ("HUSK_AGENT_BIN".into(), agent_bin().display().to_string()),
        ],
        bundle: bundle_dir.path().to_owned(),
        root: root.path().to_owned(),
        cycles,
        max_delay: Duration::from_millis(400),
        seed: SoakConfig::seed_from_env(),
        id_prefix: format!("soak{}", std::process::id()),
    };
    let report = run(&cfg);
    println!(
        "soak (process backend): {cycles} cycles in {:?}, seed {}, faults none/kill-create/kill-sandbox-created/kill-sandbox-running/kill-start = {:?}; left: {}",
        report.elapsed,
        cfg.seed,
        report.per_fault,
        report.left.counts()
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.left.total(), 0, "leaked: {:#?}", report.left);
}
