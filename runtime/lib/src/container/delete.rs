//! Delete: release everything a container holds.
//!
//! A stopped container's state directory (state, root image, sockets) is removed. A
//! created container is killed first, as runc does; a running or paused one only with
//! `force`, which kills its sandbox process (SIGKILL: the VM, its devices and anything
//! the process backend started go with it) before removing the directory.

use std::time::Duration;

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use crate::procfs;
use crate::state::{ContainerDir, ContainerRecord, Status};

/// Deletes a container whose lock the caller holds.
pub fn delete(dir: &ContainerDir, rec: &ContainerRecord, force: bool) -> Result<()> {
    let id = dir.id();
    let status = super::status(dir, rec);
    match status {
        Status::Running | Status::Paused if !force => {
            bail!(
                "cannot delete container {id:?} that is not stopped: it is {status} (use --force)"
            )
        }
        _ => {}
    }
    if let Some(pid) = rec.sandbox_pid() {
        let start = rec.husk.sandbox_start_time;
        // A stopped container's sandbox may still be flushing output and powering off:
        // give it a moment before cutting it short.
        let grace = if status == Status::Stopped {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        };
        if !procfs::wait_gone(pid, start, grace) {
            procfs::signal_if_same(pid, start, Signal::SIGKILL);
            if !procfs::wait_gone(pid, start, Duration::from_secs(10)) {
                bail!("the sandbox process {pid} of container {id:?} did not exit after SIGKILL");
            }
        }
    }
    if let Some(cgroup) = &rec.husk.cgroup {
        cgroup.remove(id)?;
    }
    crate::sandbox::process_backend::remove_leftovers(&dir.jail());
    dir.remove()?;
    tracing::info!(id, "deleted");
    Ok(())
}
