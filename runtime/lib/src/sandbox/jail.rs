//! The sandbox's jail, after Firecracker's jailer: a directory holding only what the
//! sandbox needs once its VM is built (the root image, the console log, its sockets),
//! which becomes the root of its mount namespace; then every privilege goes.
//!
//! [`Jail::prepare`] makes the directory (`<state dir>/sandbox`, see
//! [`crate::state::ContainerDir::jail`]) and moves into it, so that everything the sandbox
//! makes from then on is there and is named by a path relative to it (`vsock.sock`,
//! `control.sock`): the same names work before and after the pivot, and they are short
//! whatever the state directory's real path. [`Jail::enter`], called once the VM is built
//! and before any of its threads runs, with the process still single-threaded:
//! - pivots the mount namespace's root to the directory (bind-mounted onto itself with
//!   nosuid, nodev, noexec) and detaches the old root: the host's files are out of reach;
//! - drops the capability bounding set and the ambient set;
//! - switches to a uid and gid of the sandbox's own (see [`sandbox_uid`]) with no
//!   supplementary groups, where the host allows it (root in the initial user namespace);
//!   else it stays, with no capabilities;
//! - leaves only the capabilities the VM's devices declared (none for virtio-blk and
//!   virtio-vsock) in the permitted and effective sets, none inheritable;
//! - sets no_new_privs and makes the process non-dumpable (no ptrace by its own uid, no
//!   core).

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// First uid (and gid) of the range sandboxes run as: a sandbox runs as this plus its
/// pid, so no two live sandboxes share one. 0x7000_0000 plus the largest pid (2^22) stays
/// inside the range systemd leaves unallocated (above its container ranges, below
/// 0x7FFE_0000); `HUSK_SANDBOX_UID_BASE` moves it.
pub const DEFAULT_UID_BASE: u32 = 0x7000_0000;

/// The uid and gid the sandbox with process id `pid` runs as.
pub fn sandbox_uid(pid: u32) -> u32 {
    let base = std::env::var("HUSK_SANDBOX_UID_BASE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&b| b > 0)
        .unwrap_or(DEFAULT_UID_BASE);
    base.saturating_add(pid)
}

/// What [`Jail::enter`] did, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// The uid the sandbox runs as now.
    pub uid: u32,
    /// Why it kept its uid, if it did.
    pub kept_uid: Option<String>,
}

/// The sandbox's jail directory, made and entered (as the working directory) but not yet
/// pivoted into.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
}

impl Jail {
    /// Makes `dir` (mode 0700), a mount of its own (bound onto itself), and makes it the
    /// working directory. Call it in a mount namespace of the sandbox's own.
    ///
    /// The jail is a mount from the start so that what is mounted in it (the shares) and
    /// opened there before the pivot (the virtio-fs server's root) stays connected: the
    /// pivot then makes this very mount the root, and only the old root is detached.
    pub fn prepare(dir: &Path) -> Result<Self> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the sandbox's jail {}", dir.display()))?;
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting the jail {} onto itself", dir.display()))?;
        std::env::set_current_dir(dir)
            .with_context(|| format!("entering the sandbox's jail {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory's path on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pivots into the jail and drops privileges, keeping capabilities `keep` (numbers
    /// from linux/capability.h) for the devices that declared them. Must be called while
    /// the process has a single thread: credentials and capability sets are per thread.
    ///
    /// With `keep_root_uid` (a device serves files as the guest's users: virtio-fs), the
    /// process stays uid 0, with no capability but `keep`.
    pub fn enter(&self, keep: &[u8], keep_root_uid: bool) -> Result<Confined> {
        let threads = thread_count()?;
        if threads != 1 {
            bail!("the sandbox must confine itself with one thread, it has {threads}");
        }
        let uid = sandbox_uid(std::process::id());
        if !keep_root_uid {
            // The sandbox binds its control and stdio sockets here after dropping root,
            // and connects to the VM's socket made before (connecting takes write
            // permission on the socket file): the jail and what it holds are the sandbox
            // user's.
            give_dir_to(&self.dir, uid, uid)?;
        }
        self.pivot()?;
        drop_bounding_set(keep)?;
        // SAFETY: prctl with integer arguments only.
        if unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error()).context("clearing ambient capabilities");
        }
        let kept_uid = if keep_root_uid {
            // SAFETY: setgroups with a null list of zero groups.
            if unsafe { libc::setgroups(0, std::ptr::null()) } < 0 {
                return Err(std::io::Error::last_os_error())
                    .context("dropping supplementary groups");
            }
            Some(format!(
                "a device serves files as the guest's users (virtio-fs): uid 0 with only \
                 capabilities {keep:?}"
            ))
        } else {
            match switch_user(uid, !keep.is_empty()) {
                Ok(()) => None,
                // A user namespace without that uid mapped, or no CAP_SETUID: stay, with
                // no capabilities (and no_new_privs) below.
                Err(e) => {
                    tracing::debug!("the sandbox keeps its uid: {e:#}");
                    // SAFETY: getuid and getgid have no preconditions.
                    let (me, group) = unsafe { (libc::getuid(), libc::getgid()) };
                    give_dir_to(Path::new("/"), me, group).context("taking the jail back")?;
                    Some(format!("{e:#}"))
                }
            }
        };
        set_capabilities(keep)?;
        // SAFETY: prctl with integer arguments only.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error()).context("setting no_new_privs");
            }
            if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error())
                    .context("making the sandbox non-dumpable");
            }
        }
        Ok(Confined {
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            kept_uid,
        })
    }

    /// Makes the jail the root of the (private) mount namespace; the old root goes.
    fn pivot(&self) -> Result<()> {
        let ctx = |what: &str| format!("{what} (jail {})", self.dir.display());
        // The jail is a mount already (see [`Jail::prepare`]).
        mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| ctx("making the jail nosuid, nodev, noexec"))?;
        std::env::set_current_dir(&self.dir).with_context(|| ctx("entering the jail"))?;
        // The file server reaches files through "/proc/self/fd/N" for xattrs: the
        // sandbox's own descriptor table (and nothing else of /proc) at that path.
        let fd_dir = self.dir.join("proc/self/fd");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o500)
            .create(&fd_dir)
            .with_context(|| ctx("making proc/self/fd"))?;
        mount(
            Some(Path::new(&format!("/proc/{}/fd", std::process::id()))),
            &fd_dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| ctx("binding the sandbox's descriptor table"))?;
        mount(
            None::<&str>,
            &fd_dir,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| ctx("making the descriptor table read-only"))?;
        // pivot_root(".", "."): the old root ends up stacked on the new one, where a lazy
        // unmount takes it away (runc's way, with no directory for the old root).
        let dot = CString::new(".").expect("no NUL");
        // SAFETY: pivot_root takes two valid C strings.
        if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| ctx("pivot_root"));
        }
        umount2(".", MntFlags::MNT_DETACH).with_context(|| ctx("detaching the old root"))?;
        std::env::set_current_dir("/").with_context(|| ctx("entering the new root"))?;
        Ok(())
    }
}

/// Gives directory `dir` (mode 0700) and everything in it (not recursively) to
/// `uid`:`gid`.
fn give_dir_to(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let ctx = || format!("giving the jail {} to uid {uid}", dir.display());
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).with_context(ctx)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(ctx)?;
    for entry in std::fs::read_dir(dir).with_context(ctx)? {
        let path = entry.with_context(ctx)?.path();
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).with_context(ctx)?;
    }
    Ok(())
}

fn thread_count() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")
        .context("counting the sandbox's threads")?
        .count())
}

/// Drops every capability not in `keep` from the bounding set.
fn drop_bounding_set(keep: &[u8]) -> Result<()> {
    for cap in 0..64u8 {
        // SAFETY: prctl with integer arguments only.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap)) };
        if present < 0 {
            break; // past the kernel's last capability
        }
        if present == 1 && !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) } < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("dropping capability {cap} from the bounding set"));
            }
        }
    }
    Ok(())
}

/// Switches to `uid`:`uid` with no supplementary groups; `keep_caps` keeps the permitted
/// set across the switch (for [`set_capabilities`] to narrow).
fn switch_user(uid: u32, keep_caps: bool) -> Result<()> {
    // SAFETY: prctl, setgroups, setresgid and setresuid with integer arguments (and a
    // null list of zero groups).
    unsafe {
        if keep_caps && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_KEEPCAPS");
        }
        if libc::setgroups(0, std::ptr::null()) < 0 {
            return Err(std::io::Error::last_os_error()).context("dropping supplementary groups");
        }
        if libc::setresgid(uid, uid, uid) < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setgid {uid}"));
        }
        if libc::setresuid(uid, uid, uid) < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setuid {uid}"));
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the permitted and effective sets to `keep` and the inheritable set to nothing.
/// (Raw capset: two system calls do not earn a dependency; the agent does the same.)
fn set_capabilities(keep: &[u8]) -> Result<()> {
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let (word, bit) = (usize::from(cap / 32), cap % 32);
        if word < 2 {
            data[word].effective |= 1 << bit;
            data[word].permitted |= 1 << bit;
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a header and two data structs of the v3 layout.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error()).context("dropping capabilities");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_uids_are_apart_per_pid_and_above_the_base() {
        assert_eq!(sandbox_uid(1), DEFAULT_UID_BASE + 1);
        assert_ne!(sandbox_uid(100), sandbox_uid(101));
        // The largest pid still lands below systemd's reserved top range.
        assert!(sandbox_uid(1 << 22) < 0x7FFE_0000);
    }

    #[test]
    fn confining_refuses_a_process_with_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let jail = Jail {
            dir: tmp.path().to_owned(),
        };
        // The test harness runs this on a thread of its own, beside the main thread.
        let err = jail.enter(&[], false).unwrap_err();
        assert!(format!("{err:#}").contains("one thread"), "{err:#}");
    }
}
