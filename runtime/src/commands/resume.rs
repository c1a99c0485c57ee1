//! `husk resume`: thaw a paused container's microVM.

use std::time::Duration;

use anyhow::{bail, Result};
use liboci_cli::Resume;

use crate::container::{ContainerDir, Status};
use crate::globals::Globals;
use crate::sandbox::control::ControlRequest;

/// `husk resume ID`.
pub fn run(g: &Globals, args: Resume) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let _span = tracing::info_span!("resume", id = dir.id()).entered();
    let _lock = dir.lock()?;
    let mut rec = dir.load()?;
    let status = dir.status(&rec);
    if status != Status::Paused {
        bail!("container {:?} is not paused (it is {status})", dir.id());
    }
    dir.control(ControlRequest::Resume, Duration::from_secs(30))?
        .into_result()?;
    rec.set_status(Status::Running);
    rec.save(&dir.state_file())?;
    Ok(0)
}
