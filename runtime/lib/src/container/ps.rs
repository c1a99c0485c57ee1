//! The container's processes: guest pids, since they live in the microVM and have no
//! host pids.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::control::{ControlRequest, ControlResponse};
use crate::state::{ContainerDir, ContainerRecord, Status};

/// The guest pids of the container's processes; none once it has stopped.
pub fn pids(dir: &ContainerDir, rec: &ContainerRecord) -> Result<Vec<i32>> {
    Ok(match super::status(dir, rec) {
        Status::Stopped | Status::Creating => Vec::new(),
        _ => match super::request(dir, ControlRequest::Ps, Duration::from_secs(30))? {
            ControlResponse::Pids { pids } => pids,
            ControlResponse::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from the sandbox: {other:?}"),
        },
    })
}
