//! Pause and resume: freeze the container's microVM (every vCPU stops; nothing in the
//! guest runs) and thaw it.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::control::ControlRequest;
use crate::state::{ContainerDir, ContainerRecord, Status};

/// Freezes a running container's VM and records it as paused.
pub fn pause(dir: &ContainerDir, rec: &mut ContainerRecord) -> Result<()> {
    let status = super::status(dir, rec);
    if status != Status::Running {
        bail!("container {:?} is not running (it is {status})", dir.id());
    }
    super::request(dir, ControlRequest::Pause, Duration::from_secs(30))?.into_result()?;
    rec.set_status(Status::Paused);
    rec.save(&dir.state_file())
}

/// Thaws a paused container's VM and records it as running.
pub fn resume(dir: &ContainerDir, rec: &mut ContainerRecord) -> Result<()> {
    let status = super::status(dir, rec);
    if status != Status::Paused {
        bail!("container {:?} is not paused (it is {status})", dir.id());
    }
    super::request(dir, ControlRequest::Resume, Duration::from_secs(30))?.into_result()?;
    rec.set_status(Status::Running);
    rec.save(&dir.state_file())
}
