//! What the agent does as PID 1 before it can serve: leave the initramfs root, mount the
//! guest's pseudo filesystems.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::mount::{self, MsFlags};
use nix::sys::stat::{self, Mode, SFlag};

/// Where PID 1 builds the root it moves to.
const NEW_ROOT: &str = "/.husk-root";
/// `statfs` type of ramfs (linux/magic.h), the initramfs root without CONFIG_TMPFS.
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

/// Moves PID 1 off the kernel's initramfs root ("rootfs"), which pivot_root cannot move
/// (it has no parent mount) and containers are set up with pivot_root. Like switch_root,
/// the new root is a tmpfs over the old one holding a copy of everything but the running
/// agent binary (its setup processes exec it through /proc/self/exe). Failure is logged:
/// containers then fall back to moving their root and chrooting.
pub fn leave_initramfs() {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC};
    // The kernel makes the initramfs root a tmpfs, or a ramfs without CONFIG_TMPFS.
    let on_initramfs = nix::sys::statfs::statfs("/").is_ok_and(|s| {
        let t = s.filesystem_type();
        t == TMPFS_MAGIC || t == FsType(RAMFS_MAGIC)
    });
    if !on_initramfs {
        return;
    }
    if let Err(e) = move_to_tmpfs_root() {
        diag!("staying on the initramfs root: {e:#}");
    }
}

fn move_to_tmpfs_root() -> anyhow::Result<()> {
    let new = Path::new(NEW_ROOT);
    fs::create_dir(new).with_context(|| format!("create {NEW_ROOT}"))?;
    mount::mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .with_context(|| format!("mount a tmpfs on {NEW_ROOT}"))?;
    let agent = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| "/init".into());
    copy_tree(Path::new("/"), new, &[new, &agent]).context("copy the initramfs")?;
    nix::unistd::chdir(new)?;
    mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("move the tmpfs over /")?;
    nix::unistd::chroot(".").context("chroot into the tmpfs")?;
    nix::unistd::chdir("/")?;
    Ok(())
}

/// Copies the tree at `from` into the existing directory `to`: directories, files,
/// symlinks and device nodes with their modes and owners. `skip` paths are left out;
/// directories of other filesystems are made but not entered.
fn copy_tree(from: &Path, to: &Path, skip: &[&Path]) -> anyhow::Result<()> {
    let device = fs::symlink_metadata(from)?.dev();
    for entry in fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let source = entry.path();
        if skip.contains(&source.as_path()) {
            continue;
        }
        let target = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if kind.is_dir() {
            fs::create_dir(&target).with_context(|| format!("create {}", target.display()))?;
            if meta.dev() == device {
                copy_tree(&source, &target, skip)?;
            }
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            fs::copy(&source, &target).with_context(|| format!("copy {}", source.display()))?;
        } else {
            let sflag = match meta.mode() & libc::S_IFMT {
                libc::S_IFCHR => SFlag::S_IFCHR,
                libc::S_IFBLK => SFlag::S_IFBLK,
                libc::S_IFIFO => SFlag::S_IFIFO,
                // Sockets belong to whoever listens on them.
                _ => continue,
            };
            stat::mknod(&target, sflag, Mode::from_bits_truncate(mode), meta.rdev())
                .with_context(|| format!("create {}", target.display()))?;
        }
        if !kind.is_symlink() {
            fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Kernel command line word asking for a ready line on the first serial port.
const READY_PARAM: &str = "husk.ready=ttyS0";

struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// In mount order: /dev/pts and /dev/shm live inside the devtmpfs on /dev, the cgroup2
/// hierarchy (containers' cgroups) inside /sys.
fn pseudo_filesystems() -> [PseudoFs; 8] {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        PseudoFs {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: hardened,
            data: None,
        },
        PseudoFs {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: hardened,
            data: None,
        },
        PseudoFs {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: hardened,
            data: None,
        },
        PseudoFs {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        PseudoFs {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("mode=0620,ptmxmode=0666"),
        },
        PseudoFs {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: hardened,
            data: Some("mode=1777"),
        },
        PseudoFs {
            source: "run",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        PseudoFs {
            source: "tmp",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
    ]
}

/// Mounts the guest's pseudo filesystems. Each failure is logged and the rest still
/// tried: an agent that can answer the host is more use than one that stopped.
pub fn mount_pseudo_filesystems() {
    for fs in pseudo_filesystems() {
        if let Err(e) = std::fs::create_dir_all(fs.target) {
            diag!("create {}: {e}", fs.target);
        }
        match mount::mount(
            Some(fs.source),
            fs.target,
            Some(fs.fstype),
            fs.flags,
            fs.data,
        ) {
            // The kernel may have mounted devtmpfs itself (CONFIG_DEVTMPFS_MOUNT).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => diag!("mount {} on {}: {e}", fs.fstype, fs.target),
        }
    }
}

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if the kernel found no
/// console), so no socket the agent opens later is mistaken for stdio.
pub fn ensure_std_fds() {
    loop {
        match OpenOptions::new().read(true).write(true).open("/dev/null") {
            Ok(f) => {
                if std::os::fd::AsRawFd::as_raw_fd(&f) > 2 {
                    return;
                }
                // Below 3: it fills a hole in stdio and has to stay open for good.
                std::mem::forget(f);
            }
            Err(e) => {
                diag!("open /dev/null: {e}");
                return;
            }
        }
    }
}

/// Whether the kernel command line asks for [`announce_ready`].
pub fn ready_line_requested() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|cmdline| cmdline_requests_ready(&cmdline))
        .unwrap_or(false)
}

fn cmdline_requests_ready(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == READY_PARAM)
}

/// Tells a VMM without vsock that the agent is listening (it times boots by this line).
pub fn announce_ready() {
    let result = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ttyS0")
        .and_then(|mut tty| tty.write_all(b"HUSK_AGENT_READY\n"));
    if let Err(e) = result {
        diag!("write the ready line to /dev/ttyS0: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ready_line_needs_the_exact_parameter() {
        assert!(cmdline_requests_ready(
            "console=ttyS0 husk.ready=ttyS0 reboot=k\n"
        ));
        assert!(!cmdline_requests_ready(
            "husk.ready=ttyS1 husk.ready=ttyS00"
        ));
        assert!(!cmdline_requests_ready(""));
    }

    #[test]
    fn copy_tree_keeps_kinds_modes_and_leaves_out_what_it_skips() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let f = from.path();
        fs::create_dir_all(f.join("tmp/deep")).unwrap();
        fs::set_permissions(f.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(f.join("tmp/deep/file"), "data").unwrap();
        fs::write(f.join("init"), "agent").unwrap();
        std::os::unix::fs::symlink("tmp/deep", f.join("link")).unwrap();
        let null = stat::makedev(1, 3);
        let have_mknod = stat::mknod(
            &f.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            null,
        )
        .is_ok();
        copy_tree(f, to.path(), &[&f.join("init")]).unwrap();
        let t = to.path();
        assert_eq!(fs::read_to_string(t.join("tmp/deep/file")).unwrap(), "data");
        assert_eq!(fs::metadata(t.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(
            fs::read_link(t.join("link")).unwrap(),
            Path::new("tmp/deep")
        );
        assert!(!t.join("init").exists());
        if have_mknod {
            assert_eq!(fs::symlink_metadata(t.join("null")).unwrap().rdev(), null);
        }
    }

    #[test]
    fn submounts_of_dev_come_after_dev() {
        let order: Vec<_> = pseudo_filesystems().iter().map(|f| f.target).collect();
        let dev = order.iter().position(|t| *t == "/dev").unwrap();
        for sub in ["/dev/pts", "/dev/shm"] {
            assert!(order.iter().position(|t| *t == sub).unwrap() > dev);
        }
        let sys = order.iter().position(|t| *t == "/sys").unwrap();
        assert!(order.iter().position(|t| *t == "/sys/fs/cgroup").unwrap() > sys);
    }
}
