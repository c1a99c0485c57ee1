//! Container stats and OOM kills for containerd, from the guest agent: `Stats` answers
//! with containerd's cgroup v2 metrics (`io.containerd.cgroups.v2.Metrics`, what the CRI
//! reads for `crictl stats` and the kubelet), and a watcher turns the guest's OOM kills
//! into `TaskOOM` events.

use anyhow::{bail, Result};
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use husk_protocol::{ContainerStats, Request, Response};
use husk_runtime::agent::{AgentAddress, AgentClient, AgentEndpoint};

/// The type containerd decodes the metrics as.
const METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

fn connect(agent: &AgentAddress) -> Result<AgentClient> {
    AgentEndpoint::open(agent)?.connect_now()
}

/// The container's usage as containerd's metrics.
pub fn metrics(agent: &AgentAddress, container_id: &str) -> Result<Any> {
    let stats = match connect(agent)?.call(Request::Stats {
        container_id: container_id.to_owned(),
    })? {
        Response::Stats(s) => s,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the guest agent: {other:?}"),
    };
    Ok(Any {
        type_url: METRICS_TYPE.to_owned(),
        value: to_metrics(&stats).write_to_bytes()?,
        ..Default::default()
    })
}

fn to_metrics(s: &ContainerStats) -> Metrics {
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            anon: s.memory_anon_bytes,
            file: s.memory_file_bytes,
            inactive_file: s.memory_inactive_file_bytes,
            usage: s.memory_usage_bytes,
            usage_limit: s.memory_limit_bytes,
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: s.oom_kills,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Calls `on_oom` each time the guest OOM-kills a process of the container, until the
/// container or its VM goes away.
pub fn watch_oom(agent: &AgentAddress, container_id: &str, mut on_oom: impl FnMut()) {
    let Ok(mut client) = connect(agent) else {
        return;
    };
    let mut seen = 0;
    loop {
        match client.call(Request::WaitOom {
            container_id: container_id.to_owned(),
            seen,
        }) {
            Ok(Response::Oom { oom_kills }) if oom_kills > seen => {
                seen = oom_kills;
                on_oom();
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_become_containerd_cgroup_v2_metrics() {
        let m = to_metrics(&ContainerStats {
            cpu_usage_usec: 10,
            cpu_user_usec: 6,
            cpu_system_usec: 4,
            memory_usage_bytes: 4096,
            memory_limit_bytes: 8192,
            memory_anon_bytes: 1024,
            memory_file_bytes: 2048,
            memory_inactive_file_bytes: 512,
            pids_current: 3,
            pids_limit: 100,
            oom_kills: 2,
        });
        let back = Metrics::parse_from_bytes(&m.write_to_bytes().unwrap()).unwrap();
        assert_eq!(back.cpu.usage_usec, 10);
        assert_eq!(back.memory.usage, 4096);
        assert_eq!(back.memory.usage_limit, 8192);
        assert_eq!(back.memory.inactive_file, 512);
        assert_eq!(back.pids.current, 3);
        assert_eq!(back.memory_events.oom_kill, 2);
        use containerd_shim::protos::protobuf::MessageFull;
        assert_eq!(Metrics::descriptor().full_name(), METRICS_TYPE);
    }
}
