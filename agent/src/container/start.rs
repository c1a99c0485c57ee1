//! `StartContainer`: let a created container's process run its program.

use anyhow::{bail, Context};

use crate::server::Agent;
use crate::setup::messages::{Command, Report};

/// Releases the process of container `id` into its `execve` and returns once the program
/// runs (its setup socket closed on exec) or the exec failed.
pub fn start(agent: &Agent, id: &str) -> anyhow::Result<()> {
    let container = agent.containers.get(id)?;
    let mut start = container
        .start
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut channel) = start.take() else {
        bail!("container {id:?} has already been started");
    };
    if agent.table.pid(id).is_none() {
        bail!("container {id:?} is not running: its process has exited");
    }
    channel
        .send(&Command::Start)
        .with_context(|| format!("start container {id:?}"))?;
    loop {
        match channel.recv()? {
            None => {
                diag!("container {id:?} started");
                return Ok(());
            }
            Some(Report::Log { message }) => diag!("container {id:?}: {message}"),
            Some(Report::Error { message }) => bail!(message),
            Some(other) => bail!("unexpected report from container {id:?}: {other:?}"),
        }
    }
}
