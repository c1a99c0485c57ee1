//! Kill: send a signal to the container's process (or, with `all`, to every process in
//! the container).

use std::time::Duration;

use anyhow::{bail, Result};

use crate::control::ControlRequest;
use crate::state::{ContainerDir, ContainerRecord, Status};

/// Sends `signal` through the sandbox.
pub fn kill(dir: &ContainerDir, rec: &ContainerRecord, signal: i32, all: bool) -> Result<()> {
    let id = dir.id();
    match super::status(dir, rec) {
        Status::Stopped => bail!("container {id:?} is not running"),
        Status::Creating => bail!("container {id:?} is still being created"),
        _ => {}
    }
    super::request(
        dir,
        ControlRequest::Kill { signal, all },
        Duration::from_secs(30),
    )?
    .into_result()?;
    tracing::info!(id, signal, all, "signalled");
    Ok(())
}
