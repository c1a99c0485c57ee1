//! Host directories and files shared with the guest: the sandbox's shared directory.
//!
//! Kata's layout, in the container's state directory:
//!
//! - `mounts/` is a bind mount of itself made *shared*; husk bind-mounts each share into
//!   it as `mounts/s0`, `mounts/s1`, ... (and the bundle's root as `mounts/rootfs`, where
//!   the guest writes the container's changes back at exit).
//! - `shared/` is a recursive bind of `mounts/` made a *slave* of it and read-only at its
//!   top. This is what the VM's virtio-fs device exports: the guest can write inside a
//!   read-write share but cannot create anything beside the shares.
//!
//! Because `shared/` is a slave of `mounts/`, a share bind-mounted into `mounts/` later,
//! by any process in the host's mount namespace (a containerd shim adding a container to
//! a running pod), appears in `shared/` at once, and so in every mount namespace holding
//! a slave copy of it (the sandbox's own, once it confines itself: it must copy its
//! mounts as slaves, not private ones, for that to keep working).
//!
//! Each share is one detached clone of its source (`open_tree`), given its attributes
//! while still detached (`mount_setattr`: read-only for `ro`, recursively, and always
//! `nosuid` and `nodev`), then attached (`move_mount`). A bind remounted read-only after
//! it was attached would leave the copy already propagated to `shared/` writable. The
//! source is opened once, its type checked on that descriptor, and that very descriptor
//! is what gets mounted: a path swapped for something else during create is refused, never
//! mounted. Shares are slaves of their sources: a mount made on the host beneath a shared
//! directory later shows up in the guest, nothing the guest does comes back.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bundle::{Share, ShareKind};
use crate::mounts;

/// The state directory's directory of share mounts.
pub const MOUNTS_DIR: &str = "mounts";
/// The state directory's exported view of it.
pub const SHARED_DIR: &str = "shared";
/// The name of the bundle's root in the shared directory.
pub const ROOTFS_SHARE: &str = "rootfs";

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_RDONLY: u64 = 1;
const MOUNT_ATTR_NOSUID: u64 = 2;
const MOUNT_ATTR_NODEV: u64 = 4;

/// `struct mount_attr` from linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL", p.display()))
}

fn mount(src: &Path, dst: &Path, flags: libc::c_ulong) -> Result<()> {
    let (s, d) = (c_path(src)?, c_path(dst)?);
    // SAFETY: NUL-terminated paths alive for the call; no file system type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "mount {} on {} (flags {flags:#x})",
                src.display(),
                dst.display()
            )
        });
    }
    Ok(())
}

/// A share's source, opened once (`O_PATH`, following symlinks as runc does) and checked.
pub struct Source {
    fd: OwnedFd,
    kind: ShareKind,
}

impl Source {
    /// Opens `share`'s source and checks it is still what the bundle said.
    pub fn open(share: &Share) -> Result<Self> {
        let path = c_path(&share.source)?;
        // SAFETY: open with a NUL-terminated path and flags.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "bind mount source {} (for {})",
                    share.source.display(),
                    share.destination.display()
                )
            });
        }
        // SAFETY: open just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = File::from(fd.try_clone()?).metadata()?;
        let kind = ShareKind::of(&meta).with_context(|| {
            format!(
                "bind mount source {} (for {})",
                share.source.display(),
                share.destination.display()
            )
        })?;
        if kind != share.kind {
            bail!(
                "bind mount source {} changed while the container was being created (it is \
                 now a {kind}, it was a {})",
                share.source.display(),
                share.kind
            );
        }
        Ok(Self { fd, kind })
    }
}

/// Clones `source` detached, gives it its attributes, and attaches it at `target`.
fn bind(source: &Source, target: &Path, readonly: bool, recursive: bool) -> Result<()> {
    let tree = clone_detached(source, readonly, recursive)?;
    attach_tree(&tree, &c_path(target)?)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("move_mount to {}", target.display()))
}

/// A detached clone of `source` (`open_tree`) with the share's attributes: nosuid, nodev,
/// a slave of its source, read-only (recursively) when asked.
fn clone_detached(source: &Source, readonly: bool, recursive: bool) -> Result<OwnedFd> {
    let empty = CString::default();
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree takes a descriptor, an empty NUL-terminated path and flags; it
    // returns a new descriptor or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    if tree < 0 {
        return Err(std::io::Error::last_os_error()).context("open_tree");
    }
    // SAFETY: open_tree just returned this descriptor.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: libc::MS_SLAVE,
        userns_fd: 0,
    };
    if readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    // SAFETY: mount_setattr reads `size` bytes of the struct we pass; the path is empty
    // and NUL-terminated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mount_setattr");
    }
    Ok(tree)
}

/// Attaches the detached `tree` at `target` (`move_mount`).
fn attach_tree(tree: &OwnedFd, target: &CString) -> std::io::Result<()> {
    let empty = c"";
    // SAFETY: move_mount takes the detached tree, an empty path, and the target path,
    // all alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A running sandbox's share layout, reached from outside the sandbox (the shim bringing a
/// pod's container into its VM, and taking it out again).
///
/// The sandbox made its layout in its own mount namespace, in its jail, which is that
/// namespace's root: the mounts exist nowhere else. The directories are the jail's on the
/// host too, so a share's mount point is made and removed from here; the mount itself is
/// cloned here (from the host's view of the source) and attached, or detached, by a
/// thread that has entered the sandbox's mount namespace. Attached to `mounts/`, a
/// share appears in `shared/` at once (a slave of `mounts/`), where the VM's virtio-fs
/// device serves it.
pub struct RunningLayout {
    /// The layout's directory (holding `mounts/`) as the host sees it.
    host_dir: PathBuf,
    /// The same directory as the sandbox's mount namespace sees it.
    dir_in_ns: PathBuf,
    /// That mount namespace.
    ns: OwnedFd,
}

impl RunningLayout {
    /// The layout of the sandbox process `pid`, whose jail (its root) is `jail` on the host.
    pub fn of_sandbox(jail: &Path, pid: i32) -> Result<Self> {
        Self::new(jail, Path::new("/"), pid)
    }

    /// The layout in `host_dir` on the host, `dir_in_ns` in the mount namespace of `pid`.
    pub fn new(host_dir: &Path, dir_in_ns: &Path, pid: i32) -> Result<Self> {
        let ns_path = format!("/proc/{pid}/ns/mnt");
        let ns = File::open(&ns_path)
            .with_context(|| format!("opening the sandbox's mount namespace {ns_path}"))?;
        Ok(Self {
            host_dir: host_dir.to_owned(),
            dir_in_ns: dir_in_ns.to_owned(),
            ns: ns.into(),
        })
    }

    /// Adds `share` as `name`: it appears in the exported directory at once.
    pub fn attach(&self, name: &str, share: &Share) -> Result<()> {
        check_name(name)?;
        let what = || {
            format!(
                "sharing {} (for {})",
                share.source.display(),
                share.destination.display()
            )
        };
        let source = Source::open(share).with_context(what)?;
        let tree = clone_detached(&source, share.readonly, share.recursive).with_context(what)?;
        let target = self.host_dir.join(MOUNTS_DIR).join(name);
        make_mount_point(&target, source.kind).with_context(what)?;
        let inside = c_path(&self.dir_in_ns.join(MOUNTS_DIR).join(name))?;
        let attached = self.in_namespace(|| attach_tree(&tree, &inside));
        if let Err(e) = attached {
            let _ = remove_mount_point(&target);
            return Err(anyhow::Error::from(e))
                .context("move_mount in the sandbox's mount namespace")
                .with_context(what);
        }
        Ok(())
    }

    /// Removes the share `name`; a missing one is fine.
    pub fn detach(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let target = self.host_dir.join(MOUNTS_DIR).join(name);
        if std::fs::symlink_metadata(&target).is_err() {
            return Ok(());
        }
        let inside = c_path(&self.dir_in_ns.join(MOUNTS_DIR).join(name))?;
        self.in_namespace(|| {
            // SAFETY: umount2 with a NUL-terminated path alive for the call.
            if unsafe { libc::umount2(inside.as_ptr(), libc::MNT_DETACH) } != 0 {
                let e = std::io::Error::last_os_error();
                // Not mounted (any more): only the mount point is left.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
            Ok(())
        })
        .map_err(anyhow::Error::from)
        .with_context(|| format!("unmounting share {name} in the sandbox's mount namespace"))?;
        remove_mount_point(&target)
    }

    /// Runs `op` in the sandbox's mount namespace, on a thread of its own: the thread
    /// leaves the process's shared file-system context (`unshare(CLONE_FS)`, which
    /// `setns` into a mount namespace requires), enters the namespace, runs `op` and ends,
    /// taking the namespace switch with it. No child process: a shim reaps every child it
    /// has, and a helper's exit status would be lost to it.
    fn in_namespace(&self, op: impl FnOnce() -> std::io::Result<()> + Send) -> std::io::Result<()> {
        let ns = self.ns.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                op()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the mount thread panicked")))
        })
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("share name {name:?} is not a plain name");
    }
    Ok(())
}

/// Makes the (empty) mount point of a share of `kind` at `target`.
fn make_mount_point(target: &Path, kind: ShareKind) -> Result<()> {
    match kind {
        ShareKind::Directory => std::fs::DirBuilder::new().mode(0o700).create(target),
        ShareKind::File => File::options()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop),
    }
    .with_context(|| format!("creating {}", target.display()))
}

/// Removes a share's mount point (nothing is mounted on it any more).
fn remove_mount_point(target: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(target)
        .with_context(|| format!("examining {}", target.display()))?;
    if meta.is_dir() {
        std::fs::remove_dir(target)
    } else {
        std::fs::remove_file(target)
    }
    .with_context(|| format!("removing {}", target.display()))
}

/// The shared directory of one sandbox, mounted; unmounted when dropped.
#[derive(Debug)]
pub struct Shares {
    state_dir: PathBuf,
    names: Vec<String>,
    active: bool,
}

impl Shares {
    /// Sets up the layout in `state_dir` and mounts `shares`, plus the bundle's root as
    /// [`ROOTFS_SHARE`] when `rootfs` is given. On failure nothing stays mounted.
    pub fn setup(state_dir: &Path, shares: &[Share], rootfs: Option<&Path>) -> Result<Self> {
        let mut this = Self {
            state_dir: state_dir.to_owned(),
            names: Vec::new(),
            active: true,
        };
        this.mount_all(shares, rootfs)?;
        Ok(this)
    }

    fn mount_all(&mut self, shares: &[Share], rootfs: Option<&Path>) -> Result<()> {
        let (mounts, shared) = (self.mounts_dir(), self.shared_dir());
        for d in [&mounts, &shared] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        mount(&mounts, &mounts, libc::MS_BIND)?;
        mount(Path::new("none"), &mounts, libc::MS_SHARED)?;
        mount(&mounts, &shared, libc::MS_BIND | libc::MS_REC)?;
        mount(Path::new("none"), &shared, libc::MS_SLAVE)?;
        mount(
            Path::new("none"),
            &shared,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        )?;
        for share in shares {
            let source = Source::open(share)?;
            self.add(&share.name, &source, share.readonly, share.recursive)
                .with_context(|| {
                    format!(
                        "sharing {} (for {})",
                        share.source.display(),
                        share.destination.display()
                    )
                })?;
        }
        if let Some(rootfs) = rootfs {
            let share = Share {
                name: ROOTFS_SHARE.into(),
                source: rootfs.to_owned(),
                destination: "/".into(),
                kind: ShareKind::Directory,
                readonly: false,
                recursive: false,
            };
            let source = Source::open(&share)?;
            self.add(ROOTFS_SHARE, &source, false, false)
                .context("sharing the bundle's root")?;
        }
        Ok(())
    }

    /// Adds one share to the running layout (the shim's way to bring a volume into a
    /// running pod uses the same steps).
    pub fn add(
        &mut self,
        name: &str,
        source: &Source,
        readonly: bool,
        recursive: bool,
    ) -> Result<()> {
        check_name(name)?;
        let target = self.mounts_dir().join(name);
        make_mount_point(&target, source.kind)?;
        bind(source, &target, readonly, recursive)?;
        self.names.push(name.to_owned());
        Ok(())
    }

    fn mounts_dir(&self) -> PathBuf {
        self.state_dir.join(MOUNTS_DIR)
    }

    /// The directory the VM exports.
    pub fn shared_dir(&self) -> PathBuf {
        self.state_dir.join(SHARED_DIR)
    }

    /// The names of the shares mounted so far.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Leaves the mounts to the mount namespace they were made in, which ends with the
    /// process (a jailed sandbox's): nothing is unmounted, and the empty directories go
    /// with the state directory.
    pub fn leave_to_namespace(&mut self) {
        self.active = false;
    }

    /// Unmounts everything and removes the two directories.
    pub fn teardown(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let shared = mounts::remove_tree(&self.shared_dir());
        let mounts = mounts::remove_tree(&self.mounts_dir());
        shared.and(mounts)
    }
}

impl Drop for Shares {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("releasing the shared directory: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(name: &str, source: &Path, kind: ShareKind, readonly: bool) -> Share {
        Share {
            name: name.into(),
            source: source.to_owned(),
            destination: PathBuf::from("/x"),
            kind,
            readonly,
            recursive: true,
        }
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests mount and need root"
        );
    }

    #[test]
    fn shares_appear_in_the_exported_directory_read_only_ones_enforced() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (rw, ro, state) = (
            t.path().join("rw"),
            t.path().join("ro"),
            t.path().join("st"),
        );
        for d in [&rw, &ro, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(ro.join("f"), "ro").unwrap();
        let file = t.path().join("hosts");
        std::fs::write(&file, "1.2.3.4 h\n").unwrap();
        let mut shares = Shares::setup(
            &state,
            &[
                share("s0", &rw, ShareKind::Directory, false),
                share("s1", &ro, ShareKind::Directory, true),
                share("s2", &file, ShareKind::File, true),
            ],
            None,
        )
        .unwrap();
        let shared = shares.shared_dir();
        std::fs::write(shared.join("s0/new"), "via the export").unwrap();
        assert_eq!(
            std::fs::read_to_string(rw.join("new")).unwrap(),
            "via the export"
        );
        let e = std::fs::write(shared.join("s1/f"), "x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "read-only in the export"
        );
        assert_eq!(
            std::fs::read_to_string(shared.join("s2")).unwrap(),
            "1.2.3.4 h\n"
        );
        let e = std::fs::write(shared.join("beside"), "x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "nothing beside the shares"
        );
        let st = nix::sys::statvfs::statvfs(&shared.join("s0")).unwrap();
        assert!(st.flags().contains(
            nix::sys::statvfs::FsFlags::ST_NOSUID | nix::sys::statvfs::FsFlags::ST_NODEV
        ));
        // A share added to the running layout appears in the export (what a shim adding a
        // container to a running pod does).
        let late = t.path().join("late");
        std::fs::create_dir_all(&late).unwrap();
        std::fs::write(late.join("hello"), "late").unwrap();
        let source = Source::open(&share("s3", &late, ShareKind::Directory, true)).unwrap();
        shares.add("s3", &source, true, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(shared.join("s3/hello")).unwrap(),
            "late"
        );
        assert_eq!(
            std::fs::write(shared.join("s3/hello"), "x")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EROFS),
            "a late read-only share is read-only in the export too"
        );
        shares.teardown().unwrap();
        assert!(!state.join(MOUNTS_DIR).exists() && !state.join(SHARED_DIR).exists());
        assert!(crate::mounts::mounts_under(&state).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(rw.join("new")).unwrap(),
            "via the export",
            "the sources are untouched by the teardown"
        );
    }

    #[test]
    fn a_share_attached_from_outside_appears_and_detaches_and_the_owner_tears_it_down() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (vol, state) = (t.path().join("vol"), t.path().join("st"));
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(vol.join("f"), "pod volume").unwrap();
        let file = t.path().join("hosts");
        std::fs::write(&file, "1.2.3.4 h\n").unwrap();
        let mut owner = Shares::setup(&state, &[], None).unwrap();
        let shared = owner.shared_dir();
        // Here the "sandbox" is this process: the helper enters our own mount namespace,
        // where the layout has its host path.
        let running = RunningLayout::new(&state, &state, std::process::id() as i32).unwrap();
        running
            .attach("c1-s0", &share("x", &vol, ShareKind::Directory, false))
            .unwrap();
        running
            .attach("c1-s1", &share("x", &file, ShareKind::File, true))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(shared.join("c1-s0/f")).unwrap(),
            "pod volume"
        );
        assert_eq!(
            std::fs::read_to_string(shared.join("c1-s1")).unwrap(),
            "1.2.3.4 h\n"
        );
        assert!(running
            .attach("../x", &share("x", &vol, ShareKind::Directory, false))
            .is_err());
        // A mount point that cannot take the mount: the error says so and no mount point
        // is left behind.
        let wrong =
            RunningLayout::new(&state, Path::new("/nonexistent"), std::process::id() as i32)
                .unwrap();
        let e = wrong
            .attach("c1-s2", &share("x", &vol, ShareKind::Directory, false))
            .unwrap_err();
        assert!(format!("{e:#}").contains("move_mount"), "{e:#}");
        assert!(!state.join(MOUNTS_DIR).join("c1-s2").exists());
        running.detach("c1-s1").unwrap();
        assert!(
            !shared.join("c1-s1").exists(),
            "a detached share leaves the export"
        );
        running.detach("c1-s1").unwrap();
        // What is still attached goes with the owner's teardown.
        owner.teardown().unwrap();
        assert!(crate::mounts::mounts_under(&state).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(vol.join("f")).unwrap(),
            "pod volume"
        );
    }

    #[test]
    fn a_source_of_another_kind_than_the_bundle_said_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "").unwrap();
        let e = Source::open(&share("s0", &f, ShareKind::Directory, false))
            .err()
            .unwrap();
        assert!(e.to_string().contains("changed"), "{e:#}");
        let e = Source::open(&share("s0", &t.path().join("gone"), ShareKind::File, false))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("gone"), "{e:#}");
    }

    #[test]
    fn a_failed_setup_leaves_nothing_mounted() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ok, state) = (t.path().join("ok"), t.path().join("st"));
        std::fs::create_dir_all(&ok).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let e = Shares::setup(
            &state,
            &[
                share("s0", &ok, ShareKind::Directory, false),
                share("s1", &t.path().join("missing"), ShareKind::Directory, false),
            ],
            None,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        assert!(crate::mounts::mounts_under(&state).unwrap().is_empty());
    }
}
