//! `husk pause`: freeze the container's microVM (every vCPU stops; nothing in the guest
//! runs until `resume`).

use std::time::Duration;

use anyhow::{bail, Result};
use liboci_cli::Pause;

use crate::container::{ContainerDir, Status};
use crate::globals::Globals;
use crate::sandbox::control::ControlRequest;

/// `husk pause ID`.
pub fn run(g: &Globals, args: Pause) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("pause", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let mut rec = dir.load()?;
    let status = dir.status(&rec);
    if status != Status::Running {
        bail!("container {:?} is not running (it is {status})", dir.id());
    }
    dir.control(ControlRequest::Pause, Duration::from_secs(30))?
        .into_result()?;
    rec.set_status(Status::Paused);
    rec.save(&dir.state_file())?;
    Ok(0)
}
