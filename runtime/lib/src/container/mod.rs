//! The runtime's operations on a container, one file each (as youki's libcontainer has
//! `container_start.rs`, `container_kill.rs`, ...): what the `husk` CLI's commands and
//! the containerd shim call. Each takes the container's state ([`crate::state`]) and
//! reaches its running sandbox through the control socket ([`crate::control`]).

pub mod create;
pub mod delete;
pub mod exec;
pub mod kill;
pub mod pause;
pub mod ps;
pub mod start;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control::{self, ControlRequest, ControlResponse};
use crate::state::{ContainerDir, ContainerRecord, Status};

/// The live status: the sandbox's own answer while it runs, `stopped` once it is gone.
pub fn status(dir: &ContainerDir, rec: &ContainerRecord) -> Status {
    let recorded = rec.recorded_status();
    if recorded == Status::Creating {
        // `create` holds the lock until it has recorded `created`; a dead creator left
        // a container that will never get there.
        return match rec.sandbox_pid() {
            Some(_) if !dir.sandbox_alive(rec) => Status::Stopped,
            _ => Status::Creating,
        };
    }
    if !dir.sandbox_alive(rec) {
        return Status::Stopped;
    }
    match request(dir, ControlRequest::State, Duration::from_secs(10)) {
        Ok(ControlResponse::State { status }) => status,
        // The sandbox is still there but no longer answers: it is on its way out (its
        // container has exited, and `state` may already have said so: the VM is powering
        // off). Give it a moment to go rather than report the recorded status again.
        _ => match rec.sandbox_pid() {
            Some(pid)
                if crate::procfs::wait_gone(
                    pid,
                    rec.husk.sandbox_start_time,
                    Duration::from_secs(5),
                ) =>
            {
                Status::Stopped
            }
            _ => recorded,
        },
    }
}

/// Sends one request to the container's sandbox through its control socket.
pub fn request(
    dir: &ContainerDir,
    req: ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse> {
    control::request(&dir.jail(), req, timeout)
}

/// Writes `pid` to `path` the way runc does: whole or not at all (a temporary file
/// renamed into place), with no newline.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("pid file {} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("writing the pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing the pid file {}", path.display()))
}
