//! Root disks for tests: a real ext4 image holding static busybox, on a loop device.
//! Needs root, loop devices, busybox and unshare (CI and the development machines have
//! them); where any is missing the tests fail and say which.

use std::path::Path;
use std::process::Command;

use husk_rootfs_builder::{build_ext4, Ext4Options};
use tempfile::TempDir;

/// Busybox applets the images link, enough for the tests' shell scripts.
const APPLETS: &[&str] = &[
    "sh", "cat", "touch", "test", "echo", "id", "hostname", "pwd", "ls", "mkdir", "sleep", "grep",
    "wc", "stty", "tty", "mount", "cut", "tr", "readlink", "true", "env", "head", "stat", "kill",
];

/// A loop device over an image, detached when dropped.
pub struct LoopDevice {
    /// E.g. `/dev/loop3`.
    pub device: String,
    _image_dir: TempDir,
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts filesystems and needs root"
    );
}

/// An ext4 image on a loop device holding static busybox (with the applets above in
/// /bin), /hello.txt, an /etc/passwd with root and `tester` (1000), and a /secret
/// directory. Panics, naming what is missing, where this machine cannot provide one.
pub fn busybox_root_device() -> LoopDevice {
    require_root();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file() && Command::new("unshare").arg("--version").output().is_ok(),
        "this test needs /bin/busybox (busybox-static) and unshare"
    );
    let src = tempfile::tempdir().unwrap();
    for dir in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "secret",
        "home/tester",
    ] {
        std::fs::create_dir_all(src.path().join(dir)).unwrap();
    }
    std::fs::copy(busybox, src.path().join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", src.path().join("bin").join(applet)).unwrap();
    }
    std::fs::write(src.path().join("hello.txt"), "hello from the root disk\n").unwrap();
    std::fs::write(src.path().join("secret/key"), "do not show\n").unwrap();
    std::fs::write(
        src.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/home/tester:/bin/sh\n",
    )
    .unwrap();
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
    let out = out.expect("this test needs a free loop device (losetup --find failed)");
    LoopDevice {
        device: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        _image_dir: image_dir,
    }
}
