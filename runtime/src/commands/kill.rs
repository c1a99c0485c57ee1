//! `husk kill`: send a signal to the container's process (or, with `--all`, to every
//! process in the container).

use std::time::Duration;

use anyhow::{bail, Result};
use liboci_cli::Kill;

use crate::container::{ContainerDir, Status};
use crate::globals::Globals;
use crate::sandbox::control::ControlRequest;

/// `husk kill ID SIGNAL`.
pub fn run(g: &Globals, args: Kill) -> Result<i32> {
    let signal = crate::signal::parse(&args.signal)?;
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("kill", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let rec = dir.load()?;
    kill(&dir, &rec, signal, args.all)?;
    Ok(0)
}

/// Sends `signal` through the sandbox.
pub fn kill(
    dir: &ContainerDir,
    rec: &crate::container::ContainerRecord,
    signal: i32,
    all: bool,
) -> Result<()> {
    let id = dir.id();
    match dir.status(rec) {
        Status::Stopped => bail!("container {id:?} is not running"),
        Status::Creating => bail!("container {id:?} is still being created"),
        _ => {}
    }
    dir.control(
        ControlRequest::Kill { signal, all },
        Duration::from_secs(30),
    )?
    .into_result()?;
    tracing::info!(id, signal, all, "signalled");
    Ok(())
}
