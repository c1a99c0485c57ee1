//! Paths inside a container's root, resolved so that `..` and symlinks in the image never
//! lead outside it (an image could otherwise make a mount land on the guest's files).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// More symlinks than this in one path is a loop.
const MAX_SYMLINKS: usize = 255;

/// `path` (absolute or not, read as relative to the container's `/`) under `root`, with
/// every symlink that exists so far resolved as if `root` were `/`. Components that do not
/// exist yet are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut expanded = components(&target);
                expanded.extend(pending);
                pending = expanded;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn dot_dot_stops_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            resolve_in_root(r, Path::new("/../../etc/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("a/../b")).unwrap(),
            r.join("b")
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("real/dir")).unwrap();
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../real/dir", r.join("real/rel")).unwrap();
        symlink("/", r.join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/abs/dir/x")).unwrap(),
            r.join("real/dir/x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/real/rel")).unwrap(),
            r.join("real/dir")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/escape/etc")).unwrap(),
            r.join("etc")
        );
    }

    #[test]
    fn symlink_loops_are_errors() {
        let root = tempfile::tempdir().unwrap();
        symlink("b", root.path().join("a")).unwrap();
        symlink("a", root.path().join("b")).unwrap();
        let err = resolve_in_root(root.path(), Path::new("/a/x")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }
}
