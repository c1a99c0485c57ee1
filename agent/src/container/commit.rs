//! `CommitRoot`: write a stopped container's root changes back to the bundle, as runc's
//! containers leave them.
//!
//! The changes are overlayfs's upper layer on the guest's scratch disk: new and changed
//! files (whole), directories, symlinks, hard links, and the deletions overlayfs records
//! as whiteouts (character devices 0/0) and opaque directories (an xattr saying "nothing
//! below survives"). They are applied to the bundle's root through the shared directory,
//! with plain file operations: on the host that directory is the engine's own overlay
//! mount (or a plain directory), so the engine records them in its layer as it would
//! from runc (`docker diff` sees them, `docker cp` copies them out).
//!
//! The bundle's root is walked with descriptors and `O_NOFOLLOW`: a symlink in it is
//! replaced or removed, never followed.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};

use crate::server::Agent;

/// How long the container's leftover processes get to die before the changes are read.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What was written back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Entries created, replaced or removed.
    pub changes: u64,
    /// What could not be written, one line each.
    pub skipped: Vec<String>,
}

/// Serves `CommitRoot` for container `id`.
pub fn commit(agent: &Agent, id: &str) -> anyhow::Result<Committed> {
    let container = agent.containers.get(id)?;
    let (Some(upper), Some(target)) = (&container.root.upper, &container.root.commit_to) else {
        return Ok(Committed::default());
    };
    if agent.table.pid(id).is_some() {
        bail!("container {id:?} is still running: commit its root after it exits");
    }
    // Whatever the container left behind (a daemon it forked) must not write any more.
    let _ = container.cgroup.signal_all(libc::SIGKILL);
    let deadline = Instant::now() + KILL_TIMEOUT;
    while container.cgroup.pids().is_ok_and(|p| !p.is_empty()) {
        if Instant::now() > deadline {
            bail!("container {id:?} has processes that did not die");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::unistd::sync();
    let started = Instant::now();
    let opaque = if container
        .root
        .overlay_options
        .iter()
        .any(|o| o == "userxattr")
    {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    };
    let out = apply(upper, target, opaque)
        .with_context(|| format!("write container {id:?}'s changes to {}", target.display()))?;
    diag!(
        "container {id:?}: {} changes written back in {} ms, {} skipped",
        out.changes,
        started.elapsed().as_millis(),
        out.skipped.len()
    );
    Ok(out)
}

/// Applies the overlayfs upper layer `upper` to the directory `target`. `opaque` is the
/// xattr marking opaque directories.
pub fn apply(upper: &Path, target: &Path, opaque: &str) -> anyhow::Result<Committed> {
    let dir = open_dir_at(None, target.as_os_str())
        .with_context(|| format!("open {}", target.display()))?;
    let mut w = Writer {
        opaque: CString::new(opaque)?,
        links: HashMap::new(),
        out: Committed::default(),
    };
    w.apply_dir(upper, &dir, Path::new(""))?;
    Ok(w.out)
}

struct Writer {
    opaque: CString,
    /// Upper-layer inodes with several links, by (dev, ino): the first path written.
    links: HashMap<(u64, u64), std::path::PathBuf>,
    out: Committed,
}

fn c(name: &OsStr) -> anyhow::Result<CString> {
    Ok(CString::new(name.as_bytes())?)
}

/// Opens directory `name` in `parent` (or the path `name` itself), never through a
/// symlink.
fn open_dir_at(parent: Option<&OwnedFd>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match parent {
        Some(p) => openat(p, name, flags, Mode::empty())?,
        None => openat(nix::fcntl::AT_FDCWD, name, flags, Mode::empty())?,
    };
    Ok(fd)
}

fn lstat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<libc::stat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Removes `name` in `dir`, a whole tree if it is a directory. Missing is fine.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> anyhow::Result<bool> {
    let st = match lstat_at(dir, name) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = open_dir_at(Some(dir), name)?;
        clear_dir(&sub)?;
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)?;
    } else {
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(true)
}

/// Removes everything in `dir`.
fn clear_dir(dir: &OwnedFd) -> anyhow::Result<()> {
    let dup = dir.try_clone()?;
    let mut listing = nix::dir::Dir::from_fd(dup)?;
    let names: Vec<CString> = listing
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for n in names {
        remove_at(dir, OsStr::from_bytes(n.as_bytes()))?;
    }
    Ok(())
}

fn xattrs(path: &Path) -> Vec<(CString, Vec<u8>)> {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: the path is NUL-terminated and the buffer's length is passed with it.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        // overlayfs's own markers and host-private namespaces are not the container's.
        if name.starts_with(b"trusted.") || name.starts_with(b"user.overlay.") {
            continue;
        }
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: as above; the value buffer's length is passed with it.
        let len = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((cname, value));
        }
    }
    out
}

fn has_xattr(path: &Path, name: &CString, want: &[u8]) -> bool {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 8];
    // SAFETY: NUL-terminated strings and a buffer with its length.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n >= 0 && &value[..n as usize] == want
}

/// `/proc/self/fd/N/name`: a path for the *at-less calls (xattrs) that resolves `name` in
/// the directory `dir` without walking the tree again.
fn proc_path(dir: &OwnedFd, name: &OsStr) -> anyhow::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    Ok(CString::new(p)?)
}

impl Writer {
    fn skip(&mut self, what: &Path, why: impl std::fmt::Display) {
        self.out.skipped.push(format!("/{}: {why}", what.display()));
    }

    fn apply_dir(&mut self, upper: &Path, dir: &OwnedFd, rel: &Path) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(upper)
            .with_context(|| format!("read {}", upper.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let src = e.path();
            let rel = rel.join(&name);
            let meta = std::fs::symlink_metadata(&src)?;
            let kind = meta.mode() & libc::S_IFMT;
            if kind == libc::S_IFCHR && meta.rdev() == 0 {
                // A whiteout: the file is gone.
                if remove_at(dir, &name)? {
                    self.out.changes += 1;
                }
                continue;
            }
            if let Err(e) = self.apply_one(&src, &meta, dir, &name, &rel) {
                self.skip(&rel, format!("{e:#}"));
            }
        }
        Ok(())
    }

    fn apply_one(
        &mut self,
        src: &Path,
        meta: &std::fs::Metadata,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
    ) -> anyhow::Result<()> {
        let kind = meta.mode() & libc::S_IFMT;
        let existing = lstat_at(dir, name).ok();
        if kind == libc::S_IFDIR {
            let is_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if existing.is_some() && !is_dir {
                remove_at(dir, name)?;
            }
            if !is_dir {
                nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700))?;
            }
            let sub = open_dir_at(Some(dir), name)?;
            if is_dir && has_xattr(src, &self.opaque, b"y") {
                clear_dir(&sub)?;
            }
            self.out.changes += 1;
            self.apply_dir(src, &sub, rel)?;
            // After the children: their creation changed the directory's times.
            return self.set_metadata(src, meta, dir, name);
        }
        if existing.is_some() {
            remove_at(dir, name)?;
        }
        self.out.changes += 1;
        let key = (meta.dev(), meta.ino());
        if kind != libc::S_IFDIR && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                // The first path was written from this layer: link to it. Paths are
                // relative to the root the walk started at, which `dir` descends from.
                let first = first.clone();
                return self.link_to(dir, name, rel, &first);
            }
            self.links.insert(key, rel.to_owned());
        }
        let cname = c(name)?;
        match kind {
            libc::S_IFREG => {
                let fd = openat(
                    dir,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let mut to = File::from(fd);
                let mut from = File::open(src)?;
                io::copy(&mut from, &mut to)?;
            }
            libc::S_IFLNK => {
                let target = std::fs::read_link(src)?;
                nix::unistd::symlinkat(&target, dir, name)?;
            }
            _ => {
                // SAFETY: mknodat takes a directory descriptor, a NUL-terminated name and
                // integers.
                let rc = unsafe {
                    libc::mknodat(
                        dir.as_raw_fd(),
                        cname.as_ptr(),
                        meta.mode() & (libc::S_IFMT | 0o7777),
                        meta.rdev(),
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error()).context("mknod");
                }
            }
        }
        self.set_metadata(src, meta, dir, name)
    }

    /// Links `name` in `dir` to `first` (a path relative to the walk's root, which is
    /// reached from `dir` by going up as many levels as `rel` is deep).
    fn link_to(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        first: &Path,
    ) -> anyhow::Result<()> {
        let up = rel.components().count().saturating_sub(1);
        let mut from = std::path::PathBuf::new();
        for _ in 0..up {
            from.push("..");
        }
        from.push(first);
        nix::unistd::linkat(dir, from.as_os_str(), dir, name, AtFlags::empty())
            .with_context(|| format!("link to /{}", first.display()))?;
        Ok(())
    }

    /// Owner, mode, xattrs and times of `src` onto `name` in `dir`.
    fn set_metadata(
        &mut self,
        src: &Path,
        meta: &std::fs::Metadata,
        dir: &OwnedFd,
        name: &OsStr,
    ) -> anyhow::Result<()> {
        let symlink = meta.file_type().is_symlink();
        nix::unistd::fchownat(
            dir,
            name,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .context("chown")?;
        if !symlink {
            // After chown, which clears setuid bits.
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode() & 0o7777),
                FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|e| {
                // Linux has no lchmod: for a non-symlink, following is the same thing.
                if e == nix::errno::Errno::EOPNOTSUPP {
                    fchmodat(
                        dir,
                        name,
                        Mode::from_bits_truncate(meta.mode() & 0o7777),
                        FchmodatFlags::FollowSymlink,
                    )
                } else {
                    Err(e)
                }
            })
            .context("chmod")?;
        }
        let path = proc_path(dir, name)?;
        for (xname, value) in xattrs(src) {
            // SAFETY: NUL-terminated strings and a value buffer with its length.
            let rc = unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    xname.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                self.skip(
                    Path::new(name),
                    format!("xattr {}: {e}", xname.to_string_lossy()),
                );
            }
        }
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        let cname = c(name)?;
        // SAFETY: a directory descriptor, a NUL-terminated name and two timespecs.
        let rc = unsafe {
            libc::utimensat(
                dir.as_fd().as_raw_fd(),
                cname.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("set times");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn whiteout(at: &Path) {
        nix::sys::stat::mknod(
            at,
            nix::sys::stat::SFlag::S_IFCHR,
            Mode::from_bits_truncate(0),
            0,
        )
        .unwrap();
    }

    fn set_opaque(at: &Path) {
        let p = CString::new(at.as_os_str().as_bytes()).unwrap();
        let n = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: NUL-terminated strings and a one-byte value.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn new_changed_and_deleted_files_reach_the_target() {
        let t = tempfile::tempdir().unwrap();
        let (upper, target) = (t.path().join("upper"), t.path().join("target"));
        // The lower view: what the target holds before.
        for d in ["etc", "var/cache", "opaque/old", "gone-dir/sub"] {
            std::fs::create_dir_all(target.join(d)).unwrap();
        }
        std::fs::write(target.join("etc/changed"), "old").unwrap();
        std::fs::write(target.join("etc/deleted"), "x").unwrap();
        std::fs::write(target.join("opaque/old/file"), "x").unwrap();
        std::fs::write(target.join("var/cache/kept"), "kept").unwrap();
        symlink("/", target.join("was-link")).unwrap();
        // The upper layer.
        for d in ["etc", "opaque", "was-link", "new-dir/deep"] {
            std::fs::create_dir_all(upper.join(d)).unwrap();
        }
        std::fs::write(upper.join("etc/changed"), "new").unwrap();
        std::fs::write(upper.join("etc/new"), "fresh").unwrap();
        std::fs::set_permissions(
            upper.join("etc/new"),
            std::fs::Permissions::from_mode(0o4711),
        )
        .unwrap();
        std::fs::hard_link(upper.join("etc/new"), upper.join("new-dir/deep/hard")).unwrap();
        whiteout(&upper.join("etc/deleted"));
        whiteout(&upper.join("gone-dir"));
        set_opaque(&upper.join("opaque"));
        std::fs::write(upper.join("opaque/only"), "only").unwrap();
        std::fs::write(upper.join("was-link/inside"), "not through the link").unwrap();
        symlink("../etc/new", upper.join("new-dir/rel")).unwrap();
        nix::unistd::mkfifo(&upper.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();

        let out = apply(&upper, &target, "trusted.overlay.opaque").unwrap();
        assert!(out.skipped.is_empty(), "{:?}", out.skipped);
        let read = |p: &str| std::fs::read_to_string(target.join(p)).unwrap();
        assert_eq!(read("etc/changed"), "new");
        assert_eq!(read("etc/new"), "fresh");
        assert_eq!(
            std::fs::metadata(target.join("etc/new")).unwrap().mode() & 0o7777,
            0o4711
        );
        assert!(!target.join("etc/deleted").exists());
        assert!(!target.join("gone-dir").exists());
        assert!(!target.join("opaque/old").exists(), "opaque dir cleared");
        assert_eq!(read("opaque/only"), "only");
        assert_eq!(read("var/cache/kept"), "kept", "untouched dirs stay");
        assert!(target.join("was-link").symlink_metadata().unwrap().is_dir());
        assert_eq!(read("was-link/inside"), "not through the link");
        assert_eq!(
            std::fs::read_link(target.join("new-dir/rel")).unwrap(),
            Path::new("../etc/new")
        );
        let a = std::fs::metadata(target.join("etc/new")).unwrap();
        let b = std::fs::metadata(target.join("new-dir/deep/hard")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard links stay linked");
        assert!(std::fs::symlink_metadata(target.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn a_symlink_in_the_target_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (upper, target, outside) = (
            t.path().join("upper"),
            t.path().join("target"),
            t.path().join("outside"),
        );
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        symlink(&outside, target.join("d")).unwrap();
        std::fs::create_dir_all(upper.join("d")).unwrap();
        std::fs::write(upper.join("d/f"), "x").unwrap();
        apply(&upper, &target, "trusted.overlay.opaque").unwrap();
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "wrote through the symlink"
        );
        assert!(target.join("d/f").exists());
    }

    use std::os::unix::fs::FileTypeExt;
}
