//! Execs with a root disk: a real ext4 image on a loop device, mounted by the agent in a
//! mount namespace of its own. Needs root, loop devices, busybox and unshare; where any
//! is missing the tests say so and pass without checking anything.

use std::path::Path;
use std::process::Command;

use husk_protocol::{ExecRequest, ExitStatus, Request, Response, RootDisk, StdioSpec};
use husk_rootfs_builder::{build_ext4, Ext4Options};
use tempfile::TempDir;

use crate::support::{read_all, TestAgent};

/// A loop device over an image, detached when dropped.
struct LoopDevice {
    device: String,
    _image_dir: TempDir,
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// An ext4 image holding static busybox (as sh, cat, touch, test) and /hello.txt, on a
/// loop device; `None` (after saying why) where this machine cannot provide one.
fn busybox_root_device() -> Option<LoopDevice> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: root disks need root");
        return None;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: needs /bin/busybox and unshare");
        return None;
    }
    let src = tempfile::tempdir().unwrap();
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir(src.path().join(dir)).unwrap();
    }
    std::fs::copy(busybox, src.path().join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "touch", "test", "echo"] {
        std::os::unix::fs::symlink("busybox", src.path().join("bin").join(applet)).unwrap();
    }
    std::fs::write(src.path().join("hello.txt"), "hello from the root disk\n").unwrap();
    let image_dir = tempfile::tempdir().unwrap();
    let image = image_dir.path().join("root.img");
    build_ext4(&Ext4Options {
        from: src.path().to_owned(),
        out: image.clone(),
        size_mib: None,
        readonly_friendly: false,
    })
    .expect("build the test image");
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(out) = out else {
        eprintln!("skipped: no loop device available");
        return None;
    };
    Some(LoopDevice {
        device: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        _image_dir: image_dir,
    })
}

fn exec_in_root(exec_id: &str, script: &str, port: u32, root: RootDisk) -> Request {
    Request::Exec(ExecRequest {
        exec_id: exec_id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        root: Some(root),
        stdio: StdioSpec {
            port,
            stdin: false,
            stdout: true,
            stderr: false,
        },
    })
}

#[test]
fn process_runs_chrooted_in_its_read_only_root_disk_with_proc_dev_and_tmp() {
    let Some(disk) = busybox_root_device() else {
        return;
    };
    let mut agent = TestAgent::start_in_own_mount_namespace();
    let mut client = agent.client();
    let root = RootDisk {
        device: disk.device.clone(),
        fstype: "ext4".into(),
        readonly: true,
    };
    let script = "cat /hello.txt; \
        test -d /proc/self && test -c /dev/null && echo system-mounts; \
        echo scratch > /tmp/t && cat /tmp/t; \
        touch /new-file 2>/dev/null || echo read-only";
    for exec_id in ["first", "second (same mount, reused)"] {
        let listener = agent.stdio_listener();
        let response = client.request(exec_in_root(exec_id, script, listener.port, root.clone()));
        assert!(matches!(response, Response::Started { .. }), "{response:?}");
        let stdio = StdioSpec {
            port: listener.port,
            stdout: true,
            ..StdioSpec::default()
        };
        let mut streams = listener.accept_streams(exec_id, &stdio);
        let stdout = read_all(streams.remove(&husk_protocol::StreamKind::Stdout).unwrap());
        assert_eq!(
            String::from_utf8_lossy(&stdout),
            "hello from the root disk\nsystem-mounts\nscratch\nread-only\n"
        );
        assert_eq!(client.exit_status(exec_id), ExitStatus::Code(0));
    }

    // The device is mounted read-only already; it is not silently reused read-write.
    let rw = RootDisk {
        readonly: false,
        ..root
    };
    let response = client.request(exec_in_root("rw", "true", 1, rw));
    assert!(
        matches!(&response, Response::Error { message } if message.contains("already mounted")),
        "{response:?}"
    );
    assert_eq!(client.request(Request::Shutdown), Response::Ok);
    assert!(agent
        .wait_exit(std::time::Duration::from_secs(10))
        .success());
}

#[test]
fn a_root_that_cannot_be_mounted_is_an_error_naming_the_device() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let agent = TestAgent::start_in_own_mount_namespace();
    let mut client = agent.client();
    let root = RootDisk {
        device: "/dev/null".into(),
        fstype: "ext4".into(),
        readonly: true,
    };
    let response = client.request(exec_in_root("bad", "true", 1, root));
    assert!(
        matches!(&response, Response::Error { message } if message.contains("mount /dev/null")),
        "{response:?}"
    );
}
