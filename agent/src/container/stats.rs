//! `Stats` and `WaitOom`: a container's resource usage and its OOM kills, read from its
//! cgroup (v2). The host turns them into containerd's metrics and `TaskOOM` events.

use std::path::Path;
use std::time::Duration;

use husk_protocol::ContainerStats;

use crate::server::Agent;

/// How often `WaitOom` looks at `memory.events`.
const OOM_POLL: Duration = Duration::from_millis(250);

/// The container's usage now.
pub fn stats(agent: &Agent, id: &str) -> anyhow::Result<ContainerStats> {
    let container = agent.containers.get(id)?;
    Ok(read(container.cgroup.path()))
}

/// Blocks until the container's OOM-kill count exceeds `seen`; returns the new count.
/// Fails once the container is removed.
pub fn wait_oom(agent: &Agent, id: &str, seen: u64) -> anyhow::Result<u64> {
    loop {
        let container = agent.containers.get(id)?;
        let kills = oom_kills(container.cgroup.path());
        if kills > seen {
            return Ok(kills);
        }
        drop(container);
        std::thread::sleep(OOM_POLL);
    }
}

/// Reads the usage files of the cgroup at `dir`; what is missing counts as 0.
pub fn read(dir: &Path) -> ContainerStats {
    let cpu = keyed(dir, "cpu.stat");
    let memory = keyed(dir, "memory.stat");
    ContainerStats {
        cpu_usage_usec: cpu("usage_usec"),
        cpu_user_usec: cpu("user_usec"),
        cpu_system_usec: cpu("system_usec"),
        memory_usage_bytes: single(dir, "memory.current"),
        memory_limit_bytes: single(dir, "memory.max"),
        memory_anon_bytes: memory("anon"),
        memory_file_bytes: memory("file"),
        memory_inactive_file_bytes: memory("inactive_file"),
        pids_current: single(dir, "pids.current"),
        pids_limit: single(dir, "pids.max"),
        oom_kills: oom_kills(dir),
    }
}

fn oom_kills(dir: &Path) -> u64 {
    keyed(dir, "memory.events")("oom_kill")
}

/// A one-value file (`max` and anything unreadable are 0).
fn single(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A `key value` file, as a lookup.
fn keyed(dir: &Path, file: &str) -> impl Fn(&str) -> u64 {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    move |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cgroup_files_and_treats_max_and_missing_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.stat", "anon 1024\nfile 2048\ninactive_file 512\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n");
        w("pids.current", "7\n");
        let s = read(dir.path());
        assert_eq!(s.cpu_usage_usec, 1500);
        assert_eq!(s.cpu_user_usec, 1000);
        assert_eq!(s.cpu_system_usec, 500);
        assert_eq!(s.memory_usage_bytes, 4096);
        assert_eq!(s.memory_limit_bytes, 0);
        assert_eq!(s.memory_anon_bytes, 1024);
        assert_eq!(s.memory_file_bytes, 2048);
        assert_eq!(s.memory_inactive_file_bytes, 512);
        assert_eq!(s.pids_current, 7);
        assert_eq!(s.pids_limit, 0, "pids.max missing");
        assert_eq!(s.oom_kills, 2);
    }
}
