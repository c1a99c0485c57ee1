//! `husk start`: let a created container's process run the user's program.

use std::time::Duration;

use anyhow::{bail, Result};
use liboci_cli::Start;

use crate::container::{ContainerDir, Status};
use crate::globals::Globals;
use crate::sandbox::control::ControlRequest;

/// `husk start ID`.
pub fn run(g: &Globals, args: Start) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("start", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let mut rec = dir.load()?;
    start(&dir, &mut rec)?;
    Ok(0)
}

/// Starts a created container and records it as running.
pub fn start(dir: &ContainerDir, rec: &mut crate::container::ContainerRecord) -> Result<()> {
    let id = dir.id();
    match dir.status(rec) {
        Status::Created => {}
        Status::Stopped => bail!("cannot start container {id:?}: it has stopped"),
        Status::Creating => bail!("cannot start container {id:?}: it is still being created"),
        other => bail!("cannot start container {id:?}: it is already {other}"),
    }
    dir.control(ControlRequest::Start, Duration::from_secs(90))?
        .into_result()?;
    rec.set_status(Status::Running);
    rec.save(&dir.state_file())?;
    tracing::info!(id, "started");
    Ok(())
}
