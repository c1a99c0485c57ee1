//! Delete: release everything a container holds.
//!
//! A stopped container's state directory (state, root image, sockets) is removed. A
//! created container is killed first, as runc does; a running or paused one only with
//! `force`, which kills its sandbox process (SIGKILL: the VM, its devices and anything
//! the process backend started go with it) before removing the directory. Then what the
//! container holds outside it is undone ([`release`]) and the poststop hooks run.

use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use oci_spec::runtime::{ContainerState, Spec};

use crate::hooks::{self, Phase};
use crate::network;
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
    // A stopped container's sandbox may still be flushing output and powering off: give
    // it a moment before cutting it short.
    let grace = if status == Status::Stopped {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    end_sandbox(dir, rec, grace)?;
    remove_all(dir, rec)
}

/// Deletes a container whose lock the caller holds at once, whatever its state: no
/// question to its sandbox (which may be too busy or too far gone to answer: `status`
/// can wait 15 s for that) and no grace before SIGKILL. For containerd's clean-up after a
/// dead shim, which gives the shim's `delete` 5 s before killing it.
pub fn delete_at_once(dir: &ContainerDir, rec: &ContainerRecord) -> Result<()> {
    end_sandbox(dir, rec, Duration::ZERO)?;
    remove_all(dir, rec)
}

/// Waits up to `grace` for the sandbox process to end, then kills it.
fn end_sandbox(dir: &ContainerDir, rec: &ContainerRecord, grace: Duration) -> Result<()> {
    let Some(pid) = rec.sandbox_pid() else {
        return Ok(());
    };
    let start = rec.husk.sandbox_start_time;
    if !procfs::wait_gone(pid, start, grace) {
        procfs::signal_if_same(pid, start, Signal::SIGKILL);
        if !procfs::wait_gone(pid, start, Duration::from_secs(10)) {
            bail!(
                "the sandbox process {pid} of container {:?} did not exit after SIGKILL",
                dir.id()
            );
        }
    }
    Ok(())
}

/// What is left once the sandbox is gone: its cgroup, what the container holds outside
/// the state directory, and the directory.
fn remove_all(dir: &ContainerDir, rec: &ContainerRecord) -> Result<()> {
    remove_cgroup(dir, rec)?;
    release(dir, rec, None);
    dir.remove()?;
    tracing::info!(id = dir.id(), "deleted");
    Ok(())
}

/// Removes the container's host cgroup (that of its sandbox), once the sandbox is gone.
pub fn remove_cgroup(dir: &ContainerDir, rec: &ContainerRecord) -> Result<()> {
    match &rec.husk.cgroup {
        Some(cgroup) => cgroup.remove(dir.id()),
        None => Ok(()),
    }
}

/// Undoes what a container holds outside its state directory once its sandbox is gone:
/// the network plumbing (in its namespace, if that still exists), the process backend's
/// leftovers; then runs the poststop hooks (failures are warnings). `spec` defaults to
/// the copy of config.json saved at create.
pub fn release(dir: &ContainerDir, rec: &ContainerRecord, spec: Option<&Spec>) {
    if let Some(net) = &rec.husk.network {
        if !net.carried.is_empty() {
            if let Some(ns) = network::find_netns(&net.netns, None) {
                network::unplumb(ns.as_fd(), &net.carried);
            }
        }
    }
    crate::sandbox::process_backend::remove_leftovers(&dir.jail());
    let saved;
    let spec = match spec {
        Some(s) => Some(s),
        None => {
            saved = std::fs::read(dir.config_copy())
                .ok()
                .and_then(|d| serde_json::from_slice::<Spec>(&d).ok());
            saved.as_ref()
        }
    };
    if let Some(spec) = spec {
        hooks::run_warn(
            spec,
            Phase::Poststop,
            &rec.hook_state(ContainerState::Stopped),
        );
    }
}
