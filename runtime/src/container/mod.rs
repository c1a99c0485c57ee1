//! A container on the host: its state directory `<root>/<id>/`, its lock, its state file,
//! and its live status.
//!
//! The directory holds `state.json`, `lock`, the root filesystem image, and the sockets:
//! `control.sock` (the sandbox's control socket) and `vsock.sock` (the VM's hybrid vsock;
//! guest connections to host port P arrive at `vsock.sock_P`).

pub mod id;
pub mod lock;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procfs;
use crate::sandbox::control::{self, ControlRequest, ControlResponse};
pub use lock::ContainerLock;
pub use state::{ContainerRecord, Status};

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

    /// The root filesystem image.
    pub fn rootfs_image(&self) -> PathBuf {
        self.path.join("rootfs.img")
    }

    /// Name of the sandbox's control socket in the directory.
    pub const CONTROL_SOCKET: &'static str = "control.sock";
    /// Name of the VM's hybrid vsock socket in the directory.
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

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the sandbox process recorded in `rec` still runs.
    pub fn sandbox_alive(&self, rec: &ContainerRecord) -> bool {
        rec.sandbox_pid()
            .is_some_and(|pid| procfs::is_alive(pid, rec.husk.sandbox_start_time))
    }

    /// The live status: the sandbox's own answer while it runs, `stopped` once it is gone.
    pub fn status(&self, rec: &ContainerRecord) -> Status {
        let recorded = rec.recorded_status();
        if recorded == Status::Creating {
            // `create` holds the lock until it has recorded `created`; a dead creator left
            // a container that will never get there.
            return match rec.sandbox_pid() {
                Some(_) if !self.sandbox_alive(rec) => Status::Stopped,
                _ => Status::Creating,
            };
        }
        if !self.sandbox_alive(rec) {
            return Status::Stopped;
        }
        match self.control(ControlRequest::State, Duration::from_secs(10)) {
            Ok(ControlResponse::State { status }) => status,
            // The sandbox is still there but no longer answers: it is on its way out.
            _ => recorded,
        }
    }

    /// Sends one request to the sandbox's control socket.
    pub fn control(&self, req: ControlRequest, timeout: Duration) -> Result<ControlResponse> {
        control::request(&self.path, req, timeout)
    }
}
