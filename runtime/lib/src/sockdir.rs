//! Unix socket paths that always fit.
//!
//! A socket address holds at most 107 bytes of path, and engines put state directories
//! deep (`/run/containerd/runc/<namespace>/<64-hex id>/...`). A directory opened with
//! `O_PATH` is reachable as `/proc/self/fd/N/`, which is short whatever the directory's
//! real path; binding or connecting through it lands on the same socket file.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

/// Room left in `sun_path` for names such as `vsock.sock_65535`.
const MAX_DIRECT: usize = 80;

/// A directory holding sockets.
#[derive(Debug)]
pub struct SocketDir {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl SocketDir {
    /// Opens `path` (only when its real path is too long to use directly).
    pub fn open(path: &Path) -> Result<Self> {
        let fd = if path.as_os_str().len() > MAX_DIRECT {
            Some(
                open(
                    path,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .with_context(|| format!("opening {}", path.display()))?,
            )
        } else {
            None
        };
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    /// A path for socket `name` in the directory, valid in this process while `self`
    /// lives.
    pub fn socket(&self, name: &str) -> PathBuf {
        match &self.fd {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd())),
            None => self.path.join(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn sockets_in_deep_directories_bind_and_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(100)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let dir = SocketDir::open(&deep).unwrap();
        let path = dir.socket("vsock.sock_2000");
        assert!(path.as_os_str().len() < 100, "{}", path.display());
        let _l = UnixListener::bind(&path).unwrap();
        assert!(deep.join("vsock.sock_2000").exists());
        UnixStream::connect(dir.socket("vsock.sock_2000")).unwrap();
    }

    #[test]
    fn short_directories_are_used_as_they_are() {
        let dir = SocketDir::open(Path::new("/run/husk/x")).unwrap();
        assert_eq!(dir.socket("a"), Path::new("/run/husk/x/a"));
    }
}
