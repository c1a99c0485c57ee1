//! Finding the layers of a bundle's root: when the root is an overlayfs mount (containerd's
//! snapshotter, Docker's overlay2, podman), its `lowerdir=` in `/proc/self/mountinfo` lists
//! the image's immutable layers, topmost first; its `upperdir` is the container's own
//! layer, usually empty at create.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::mounts::{unescape, MountEntry};

/// The layers of an overlayfs mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The upper layer, if the mount has one.
    pub upper: Option<PathBuf>,
    /// Options the guest's overlay must repeat (`userxattr`: rootless podman keeps
    /// whiteouts and opaque markers in `user.` xattrs).
    pub options: Vec<String>,
}

/// Splits an overlayfs option value at unescaped `sep` (a `\` escapes it, as overlayfs
/// parses its own options).
fn split_escaped(value: &[u8], sep: u8) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    let mut escaped = false;
    for &b in value {
        if escaped {
            parts.last_mut().unwrap().push(b);
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == sep {
            parts.push(Vec::new());
        } else {
            parts.last_mut().unwrap().push(b);
        }
    }
    parts
}

fn path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

/// The layers of the overlayfs mounted at `at` (the topmost mount there), if `at` is one
/// and every layer is an absolute path to a directory. Relative layer paths (Docker uses
/// them when absolute ones would not fit in a page) give `None`: the root is then used as
/// a plain directory.
pub fn layers_at(mounts: &[MountEntry], at: &Path) -> Option<OverlayLayers> {
    let m = mounts.iter().rev().find(|m| m.mount_point == at)?;
    if m.fstype != "overlay" {
        return None;
    }
    let mut lowers = Vec::new();
    let mut upper = None;
    let mut options = Vec::new();
    // Commas inside values are escaped in mountinfo (\054): splitting first is safe.
    for opt in m.super_options.split(',') {
        let opt = unescape(opt);
        if let Some(v) = opt.strip_prefix(b"lowerdir=") {
            lowers = split_escaped(v, b':').into_iter().map(path).collect();
        } else if let Some(v) = opt.strip_prefix(b"upperdir=") {
            upper = Some(path(split_escaped(v, 0).concat()));
        } else if opt == b"userxattr" {
            options.push("userxattr".to_owned());
        }
    }
    let usable = |p: &PathBuf| p.is_absolute() && p.is_dir();
    if lowers.is_empty() || !lowers.iter().all(usable) || upper.as_ref().is_some_and(|u| !usable(u))
    {
        return None;
    }
    Some(OverlayLayers {
        lowers,
        upper,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::parse_mountinfo;

    #[test]
    fn containerd_style_lowers_are_found_topmost_first() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, u) = (
            t.path().join("2/fs"),
            t.path().join("1/fs"),
            t.path().join("3/fs"),
        );
        for d in [&a, &b, &u] {
            std::fs::create_dir_all(d).unwrap();
        }
        let line = format!(
            "900 30 0:99 / /run/c/rootfs rw,relatime - overlay overlay rw,lowerdir={}:{},upperdir={},workdir=/w,index=off,userxattr\n",
            a.display(),
            b.display(),
            u.display()
        );
        let m = parse_mountinfo(&line);
        let l = layers_at(&m, Path::new("/run/c/rootfs")).unwrap();
        assert_eq!(l.lowers, vec![a, b]);
        assert_eq!(l.upper, Some(u));
        assert_eq!(l.options, vec!["userxattr".to_owned()]);
        assert!(layers_at(&m, Path::new("/elsewhere")).is_none());
    }

    #[test]
    fn relative_or_missing_layers_and_other_file_systems_give_none() {
        let m = parse_mountinfo(
            "1 2 0:1 / /r rw - overlay overlay rw,lowerdir=l/ABC:l/DEF,upperdir=x/diff,workdir=x/work\n\
             3 2 0:2 / /e rw - ext4 /dev/sda1 rw\n\
             4 2 0:3 / /g rw - overlay overlay rw,lowerdir=/nonexistent/husk\n",
        );
        assert!(layers_at(&m, Path::new("/r")).is_none());
        assert!(layers_at(&m, Path::new("/e")).is_none());
        assert!(layers_at(&m, Path::new("/g")).is_none());
    }

    #[test]
    fn escaped_separators_stay_in_the_path() {
        assert_eq!(
            split_escaped(br"/a\:b:/c", b':'),
            vec![b"/a:b".to_vec(), b"/c".to_vec()]
        );
    }
}
