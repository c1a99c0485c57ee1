//! `RemoveContainer`: kill what is left, wait for it, release the root and the id.

use std::time::Duration;

use anyhow::Context;

use super::unmount_root;
use crate::server::Agent;

/// How long killed processes get to disappear before removal gives up on them.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes container `id`. Whatever could not be cleaned up is logged and reported, but
/// the id is freed either way.
pub fn remove(agent: &Agent, id: &str) -> anyhow::Result<()> {
    let container = agent.containers.begin_removal(id)?;
    // A created process blocks on its socket; closing it lets it go too.
    drop(
        container
            .start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(),
    );
    let killed = container.cgroup.signal_all(libc::SIGKILL);
    let execs: Vec<String> = container
        .execs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for exec_id in std::iter::once(id.to_owned()).chain(execs) {
        if agent.table.wait_timeout(&exec_id, KILL_TIMEOUT).is_none()
            && agent.table.pid(&exec_id).is_some()
        {
            diag!("container {id:?}: {exec_id:?} did not die");
        }
        agent.table.forget(&exec_id);
    }
    let removed = container.cgroup.remove(KILL_TIMEOUT);
    unmount_root(&container.rootfs, &container.root.parts, &container.dir);
    agent.containers.end_removal(id);
    diag!("container {id:?} removed");
    killed
        .and(removed)
        .with_context(|| format!("remove container {id:?}"))
}
