//! What the agent does as PID 1 before it can serve: the guest's pseudo filesystems.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::mount::{self, MsFlags};

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
