//! `Signal`: one process, or with `all` every process of the container it belongs to.

use crate::server::Agent;

/// Signals `exec_id`'s process, or with `all` its whole container (found through the
/// container's cgroup, so processes that left the process tree are included). An exec
/// outside any container has its process group signalled instead.
pub fn signal(agent: &Agent, exec_id: &str, signal: i32, all: bool) -> anyhow::Result<()> {
    if !all {
        return agent.table.signal(exec_id, signal);
    }
    match agent.containers.owning(exec_id) {
        Some(container) => container.cgroup.signal_all(signal),
        None => agent.table.signal_group(exec_id, signal),
    }
}
