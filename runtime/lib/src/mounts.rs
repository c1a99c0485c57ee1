//! The host's mount table, and removing a directory without ever reaching through a
//! mount in it (a leaf: used by the state directory, the shares and the root layers).
//!
//! A container's state directory holds bind mounts of the user's host directories (its
//! shares). A plain recursive removal that met one still mounted would delete the user's
//! files; [`remove_tree`] unmounts everything beneath the directory first, and refuses to
//! descend into anything that is still a mount root.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The file system type.
    pub fstype: String,
    /// The file system's own options (`lowerdir=...` for overlayfs).
    pub super_options: String,
}

/// mountinfo writes space, tab, newline and backslash (and more, in option values) as
/// `\ooo` octal escapes.
pub fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_owned();
            let _source = r.next()?;
            let super_options = r.next().unwrap_or("").to_owned();
            Some(MountEntry {
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(mount_point))),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// This process's mounts, in mount order.
pub fn mountinfo() -> Result<Vec<MountEntry>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Mount points at or below `path`, deepest first.
pub fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    let mut points: Vec<PathBuf> = mountinfo()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL", p.display()))
}

/// Detaches every mount at or below `path` (deepest first, several times over for stacked
/// mounts) and fails, naming one, if any is left.
pub fn unmount_under(path: &Path) -> Result<()> {
    for _ in 0..8 {
        let points = mounts_under(path)?;
        if points.is_empty() {
            return Ok(());
        }
        for p in points {
            let cp = c_path(&p)?;
            // SAFETY: a NUL-terminated path alive for the call.
            unsafe { libc::umount2(cp.as_ptr(), libc::MNT_DETACH) };
        }
    }
    match mounts_under(path)?.first() {
        Some(p) => bail!("{} is still mounted", p.display()),
        None => Ok(()),
    }
}

/// Whether `name` in the directory `dir` is the root of a mount (statx says so).
fn is_mount_root(dir: &File, name: &CString) -> std::io::Result<bool> {
    // SAFETY: statx fills the zeroed struct we pass; the name is NUL-terminated.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(stx.stx_attributes_mask & attr != 0 && stx.stx_attributes & attr != 0)
}

fn open_dir_at(dir: Option<&File>, name: &CString) -> std::io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: openat with a directory descriptor (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe { libc::openat(fd, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn remove_contents(dir: &File, at: &Path) -> Result<()> {
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .with_context(|| format!("listing {}", at.display()))?;
    for e in listing {
        let e = e?;
        let name = CString::new(e.file_name().as_bytes())?;
        let path = at.join(e.file_name());
        if is_mount_root(dir, &name).with_context(|| format!("stat {}", path.display()))? {
            bail!(
                "{} is still mounted: not removing anything beneath it",
                path.display()
            );
        }
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let flags = if is_dir {
            let sub = open_dir_at(Some(dir), &name)
                .with_context(|| format!("opening {}", path.display()))?;
            remove_contents(&sub, &path)?;
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: unlinkat with a directory descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("removing {}", path.display()));
        }
    }
    Ok(())
}

/// Unmounts everything beneath `path`, then removes it and all it holds, refusing to
/// touch anything under a mount that would not go. A missing `path` is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    unmount_under(path)?;
    let dir =
        open_dir_at(None, &c_path(path)?).with_context(|| format!("opening {}", path.display()))?;
    remove_contents(&dir, path)?;
    drop(dir);
    std::fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_their_escapes() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - overlay overlay rw,lowerdir=/l/1:/l/2,upperdir=/u,workdir=/w\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "overlay");
        assert!(m[0].super_options.contains("lowerdir=/l/1:/l/2"));
        assert_eq!(unescape(r"a\054b\134"), b"a,b\\");
    }

    #[test]
    fn remove_tree_unmounts_first_and_keeps_what_was_mounted() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts and needs root"
        );
        let t = tempfile::tempdir().unwrap();
        let precious = t.path().join("precious");
        std::fs::create_dir_all(&precious).unwrap();
        std::fs::write(precious.join("data"), "keep me").unwrap();
        let state = t.path().join("state");
        std::fs::create_dir_all(state.join("mounts/v0")).unwrap();
        std::fs::write(state.join("other"), "x").unwrap();
        nix::mount::mount(
            Some(&precious),
            &state.join("mounts/v0"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        remove_tree(&state).unwrap();
        assert!(!state.exists());
        assert_eq!(
            std::fs::read_to_string(precious.join("data")).unwrap(),
            "keep me"
        );
        remove_tree(&state).unwrap();
    }

    #[test]
    fn a_mount_that_stays_stops_the_removal_beneath_it() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts and needs root"
        );
        let t = tempfile::tempdir().unwrap();
        let precious = t.path().join("precious");
        std::fs::create_dir_all(&precious).unwrap();
        std::fs::write(precious.join("data"), "keep me").unwrap();
        let dir = t.path().join("d");
        std::fs::create_dir_all(dir.join("m")).unwrap();
        let f = open_dir_at(None, &c_path(&dir).unwrap()).unwrap();
        nix::mount::mount(
            Some(&precious),
            &dir.join("m"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        // Without unmounting first: the guard alone must stop it.
        let e = remove_contents(&f, &dir).unwrap_err();
        assert!(format!("{e:#}").contains("still mounted"), "{e:#}");
        assert_eq!(
            std::fs::read_to_string(precious.join("data")).unwrap(),
            "keep me"
        );
        unmount_under(&dir).unwrap();
    }
}
