//! `Ps`: the guest pids of a container's processes, its own process first.

use crate::server::Agent;

/// Every process in the container's cgroup.
pub fn ps(agent: &Agent, id: &str) -> anyhow::Result<Vec<libc::pid_t>> {
    let container = agent.containers.get(id)?;
    let mut pids = container.cgroup.pids()?;
    if let Some(init) = agent.table.pid(id) {
        pids.retain(|&p| p != init);
        pids.insert(0, init);
    }
    Ok(pids)
}
