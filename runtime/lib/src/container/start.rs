//! Start: let a created container's process run the user's program: interfaces that
//! appeared in its network namespace since create are carried into the guest, the
//! startContainer hooks run (in the guest), then the program; poststart hooks after.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{ContainerState, Spec};

use crate::control::{self, ControlRequest};
use crate::hooks::{self, Phase};
use crate::network;
use crate::state::{ContainerDir, ContainerRecord, Status};

/// Starts a created container and records it as running.
pub fn start(dir: &ContainerDir, rec: &mut ContainerRecord) -> Result<()> {
    let id = dir.id();
    match super::status(dir, rec) {
        Status::Created => {}
        Status::Stopped => bail!("cannot start container {id:?}: it has stopped"),
        Status::Creating => bail!("cannot start container {id:?}: it is still being created"),
        other => bail!("cannot start container {id:?}: it is already {other}"),
    }
    let spec: Option<Spec> = std::fs::read(dir.config_copy())
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok());
    attach_late_interfaces(dir, rec)?;
    let start_hooks = spec
        .as_ref()
        .and_then(|s| s.hooks().as_ref())
        .and_then(|h| h.start_container().as_ref())
        .is_some_and(|h| !h.is_empty());
    let hook_state = start_hooks.then(|| rec.hook_state(ContainerState::Created));
    // startContainer hooks run first, in the guest; without a timeout of their own they
    // may take as long as they take (as in runc).
    let timeout = if start_hooks {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_secs(90)
    };
    super::request(dir, ControlRequest::Start { hook_state }, timeout)?.into_result()?;
    rec.set_status(Status::Running);
    rec.save(&dir.state_file())?;
    tracing::info!(id, "started");
    if let Some(spec) = &spec {
        hooks::run_warn(
            spec,
            Phase::Poststart,
            &rec.hook_state(ContainerState::Running),
        );
    }
    Ok(())
}

/// Interfaces an engine put into the namespace after `create` (`ctr run --cni`) go to
/// the VM's spare network devices before the program starts.
fn attach_late_interfaces(dir: &ContainerDir, rec: &mut ContainerRecord) -> Result<()> {
    let Some(net) = rec.husk.network.clone() else {
        return Ok(());
    };
    if net.spare_slots == 0 {
        return Ok(());
    }
    let Some(pid) = rec.sandbox_pid() else {
        return Ok(());
    };
    let ns = network::netns_of_pid(pid)?;
    let first = net.carried.len();
    let macs: Vec<[u8; 6]> = (0..net.spare_slots)
        .map(|i| network::spare_mac(first + i))
        .collect();
    let plumbed = network::plumb(ns.as_fd(), &net.carried, Some(&macs))?;
    if plumbed.interfaces.is_empty() {
        return Ok(());
    }
    // Recorded first: if anything below fails, delete still finds what to undo.
    let n = plumbed.interfaces.len();
    if let Some(r) = rec.husk.network.as_mut() {
        r.carried.extend(plumbed.carried.iter().cloned());
        r.spare_slots -= n;
    }
    rec.save(&dir.state_file())?;
    let fds: Vec<i32> = plumbed.taps.iter().map(|t| t.as_raw_fd()).collect();
    control::request_with_fds(
        &dir.jail(),
        ControlRequest::AttachNetwork {
            interfaces: plumbed.interfaces,
        },
        &fds,
        Duration::from_secs(60),
    )?
    .into_result()
    .context("attaching the container's network")
}
