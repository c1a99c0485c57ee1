//! A container's state on the host: its directory `<root>/<id>/`, its lock and its state
//! file. A leaf: what the sandbox says about the container live is in [`crate::container`].
//!
//! The directory holds `state.json`, `lock`, the copy of `config.json`, the writable
//! layer's disk (`scratch.img`), the shares (`mounts/`, `shared/`: see [`crate::shares`]),
//! and the sandbox's jail `sandbox/` (the root of the sandbox's mount namespace once it is
//! confined, see [`crate::sandbox::jail`]): the console log and the sockets,
//! `control.sock` (the sandbox's control socket) and `vsock.sock` (the VM's hybrid vsock;
//! guest connections to host port P arrive at `vsock.sock_P`). What the sandbox may not
//! touch (the state file above all, whose pid `kill` and `delete` signal) stays outside.

pub mod id;
pub mod lock;
pub mod record;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::procfs;
pub use lock::ContainerLock;
pub use record::{ContainerRecord, Status};

/// A container's state directory.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    id: String,
    path: PathBuf,
}

impl ContainerDir {
    /// The directory of container `id` under `root`; checks the id.
    pub fn new(root: &Path, id: &str) -> Result<Self> {
        id::validate(id)?;
        Ok(Self {
            id: id.to_owned(),
            path: root.join(id),
        })
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.path.join("lock")
    }

    /// The bundle's config.json as it was at create (exec builds on its process).
    pub fn config_copy(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// The sandbox's jail: everything the sandbox process may reach once confined.
    pub fn jail(&self) -> PathBuf {
        self.path.join(Self::JAIL)
    }

    /// Name of the jail directory in the state directory.
    pub const JAIL: &'static str = "sandbox";
    /// Name of the root filesystem image in the jail.
    pub const ROOTFS_IMAGE: &'static str = "rootfs.img";
    /// Name of the guest's console log in the jail (kept with `--debug`).
    pub const CONSOLE_LOG: &'static str = "console.log";

    /// Name of the sandbox's control socket in the jail.
    pub const CONTROL_SOCKET: &'static str = "control.sock";
    /// Name of the VM's hybrid vsock socket in the jail.
    pub const VSOCK_SOCKET: &'static str = "vsock.sock";

    /// Takes the container's lock; fails if the container does not exist.
    pub fn lock(&self) -> Result<ContainerLock> {
        if !self.path.is_dir() {
            bail!("container {:?} does not exist", self.id);
        }
        ContainerLock::acquire(&self.lock_file())
    }

    /// Reads the state file; a missing one means the container does not exist.
    pub fn load(&self) -> Result<ContainerRecord> {
        let path = self.state_file();
        if !path.exists() {
            bail!("container {:?} does not exist", self.id);
        }
        ContainerRecord::load(&path)
    }

    /// Removes the directory and everything in it, unmounting the shares in it first (a
    /// sandbox that was killed leaves them mounted) and never reaching through a mount.
    pub fn remove(&self) -> Result<()> {
        crate::mounts::remove_tree(&self.path)
    }

    /// Whether the sandbox process recorded in `rec` still runs.
    pub fn sandbox_alive(&self, rec: &ContainerRecord) -> bool {
        rec.sandbox_pid()
            .is_some_and(|pid| procfs::is_alive(pid, rec.husk.sandbox_start_time))
    }
}
