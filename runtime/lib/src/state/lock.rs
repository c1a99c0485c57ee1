//! The per-container lock: an exclusive `flock` on `<root>/<id>/lock`, held by every
//! command that changes a container, so concurrent commands on one container take turns
//! while commands on different containers run in parallel.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Held until dropped.
#[derive(Debug)]
pub struct ContainerLock {
    _lock: Flock<File>,
}

impl ContainerLock {
    /// Waits for the lock on `path`, creating the file if needed.
    pub fn acquire(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Self { _lock: lock })
    }

    /// The locked descriptor. A child that inherits it keeps the lock held after this
    /// process dies (the lock is the open file's), until the child closes it.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self._lock)
    }
}
