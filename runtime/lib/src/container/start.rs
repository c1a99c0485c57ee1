//! Start: let a created container's process run the user's program.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::control::ControlRequest;
use crate::state::{ContainerDir, ContainerRecord, Status};

/// Starts a created container and records it as running; the caller holds its lock.
pub fn start(dir: &ContainerDir, rec: &mut ContainerRecord) -> Result<()> {
    let id = dir.id();
    match super::status(dir, rec) {
        Status::Created => {}
        Status::Stopped => bail!("cannot start container {id:?}: it has stopped"),
        Status::Creating => bail!("cannot start container {id:?}: it is still being created"),
        other => bail!("cannot start container {id:?}: it is already {other}"),
    }
    super::request(dir, ControlRequest::Start, Duration::from_secs(90))?.into_result()?;
    rec.set_status(Status::Running);
    rec.save(&dir.state_file())?;
    tracing::info!(id, "started");
    Ok(())
}
