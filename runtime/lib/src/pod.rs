//! Kubernetes pods: every container of a pod in the one microVM its sandbox (pause)
//! container booted, as Kata Containers runs them.
//!
//! The CRI marks each container with `io.kubernetes.cri.container-type` (`sandbox` for the
//! pause container, `container` for the others) and `io.kubernetes.cri.sandbox-id`. The
//! sandbox container is created like any container: its sandbox process boots the VM,
//! sized for the whole pod from the CRI's `sandbox-memory` and `sandbox-cpu-*`
//! annotations. A later container joins that VM instead of booting one ([`Member`]):
//!
//! - its root (the engine's mount at `<bundle>/rootfs`) and its volumes are bind-mounted
//!   into the running sandbox's shared directory (`rootfs-<token>`, `<token>-s0`, ...),
//!   inside the sandbox's own mount namespace (see [`crate::shares::RunningLayout`]), where
//!   the VM's virtio-fs device serves them at once;
//! - the namespaces config.json names by path (the pod's network, IPC and UTS namespaces,
//!   and its pid namespace when the pod shares one) are the pause container's in the
//!   guest: their paths are rewritten to `/proc/<its guest pid>/ns/...`, and the agent
//!   joins them;
//! - the agent creates it in its own cgroup with its own limits, its stdio on streams to
//!   the caller (the shim), which waits for it and signals it through the agent.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_protocol::{
    ContainerRequest, ContainerRoot, ContainerStats, Request, Response, SharedDir, StdioSpec,
    StreamKind, SHARED_DIR, SHARED_FS_TAG,
};

use crate::agent::{expect_ok, start_process, AgentEndpoint, AgentMux};
use crate::bundle::{Bundle, Share, ShareKind};
use crate::shares;
use crate::state::ContainerDir;
use crate::stdio::StdioListener;

/// The CRI's annotation saying what a container is to its pod.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI's annotation naming the pod's sandbox container.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The pod's memory: the sum of its containers' limits, in bytes.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// The pod's CPU quota, with [`SANDBOX_CPU_PERIOD`].
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// The pod's CPU period.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// First host port tried for a pod container's stdio (the sandbox's own container uses
/// 2000, execs 3000 and up).
const FIRST_MEMBER_PORT: u32 = 24_000;

/// What a container is to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not part of a pod (or the CRI did not say): a VM of its own.
    Standalone,
    /// A pod's sandbox (pause) container: it boots the pod's VM.
    Sandbox,
    /// A container of the pod whose sandbox container is this id.
    Member(String),
}

/// The role the annotations give a container.
pub fn role(annotations: Option<&HashMap<String, String>>, id: &str) -> Role {
    let Some(a) = annotations else {
        return Role::Standalone;
    };
    match (a.get(CONTAINER_TYPE).map(String::as_str), a.get(SANDBOX_ID)) {
        (Some("sandbox"), _) => Role::Sandbox,
        (Some("container"), Some(sandbox)) if sandbox != id => Role::Member(sandbox.clone()),
        _ => Role::Standalone,
    }
}

/// The share names of a member container: a token from its id (ids are long and
/// unique; the first 16 characters are plenty within one pod).
fn token(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect()
}

/// Which of a member's stdio streams are wanted.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemberIo {
    /// Connect stdin.
    pub stdin: bool,
    /// Connect stdout.
    pub stdout: bool,
    /// Connect stderr.
    pub stderr: bool,
    /// A terminal (one stream both ways; the three above are ignored).
    pub terminal: bool,
}

/// A container running in a pod's VM, as its host side sees it.
pub struct Member {
    id: String,
    pod: ContainerDir,
    agent: Arc<AgentMux>,
    /// Its shares in the pod's shared directory, until it is removed.
    shares: std::sync::Mutex<Vec<String>>,
    /// Guest pid of its process.
    pub guest_pid: i32,
}

/// Undoes a member's shares unless disarmed.
struct SharesGuard<'a> {
    pod: &'a ContainerDir,
    names: Vec<String>,
}

impl Drop for SharesGuard<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        // A sandbox that is gone took its mount namespace, and the mounts, with it: only
        // the mount points are left, and its state directory goes as a whole.
        let layout = self
            .pod
            .load()
            .ok()
            .and_then(|rec| rec.sandbox_pid())
            .and_then(|pid| shares::RunningLayout::of_sandbox(&self.pod.jail(), pid).ok());
        let Some(layout) = layout else {
            self.names.clear();
            return;
        };
        for name in self.names.drain(..).rev() {
            if let Err(e) = layout.detach(&name) {
                tracing::warn!("unsharing {name}: {e:#}");
            }
        }
    }
}

impl Member {
    /// Creates container `id` from `bundle` in the running VM of the pod whose sandbox
    /// container's state is `pod`: stopped before `execve`, as `create` leaves a
    /// container. Returns it and its stdio streams. On failure nothing is left in the VM
    /// or in the pod's shared directory.
    pub fn create(
        pod: &ContainerDir,
        id: &str,
        mut bundle: Bundle,
        io: MemberIo,
    ) -> Result<(Self, HashMap<StreamKind, UnixStream>)> {
        let rec = pod.load().context("the pod's sandbox container")?;
        let address = rec
            .husk
            .agent
            .clone()
            .context("the pod's sandbox has no running VM")?;
        let endpoint = AgentEndpoint::open(&address)?;
        let agent = AgentMux::new(endpoint.connect_now()?)?;
        let pause = match agent.call_timeout(
            Request::Ps {
                container_id: pod.id().to_owned(),
            },
            Duration::from_secs(30),
        )? {
            Response::Pids { pids } if !pids.is_empty() => pids[0],
            Response::Error { message } => bail!("the pod's sandbox container: {message}"),
            other => bail!("the pod's sandbox container has no process: {other:?}"),
        };
        let shared = if rec.husk.backend == "process" {
            SharedDir {
                tag: None,
                path: pod.path().join(shares::SHARED_DIR).display().to_string(),
            }
        } else {
            SharedDir {
                tag: Some(SHARED_FS_TAG.into()),
                path: SHARED_DIR.into(),
            }
        };

        let sandbox_pid = rec
            .sandbox_pid()
            .context("the pod's sandbox has no process")?;
        let layout = shares::RunningLayout::of_sandbox(&pod.jail(), sandbox_pid)?;
        let tok = token(id);
        let mut guard = SharesGuard {
            pod,
            names: Vec::new(),
        };
        let root_name = format!("{}-{tok}", shares::ROOTFS_SHARE);
        let root = Share {
            name: root_name.clone(),
            source: bundle.rootfs.clone(),
            destination: "/".into(),
            kind: ShareKind::Directory,
            readonly: false,
            recursive: false,
        };
        layout
            .attach(&root_name, &root)
            .context("sharing the container's root")?;
        guard.names.push(root_name.clone());
        for (_, share) in bundle.shares.iter_mut() {
            share.name = format!("{tok}-{}", share.name);
            layout.attach(&share.name, share)?;
            guard.names.push(share.name.clone());
        }

        // The guest spec drops the network namespace's path (a standalone container's is
        // the host's, joined by the sandbox): a member's is the pod's, so it goes back in
        // before the paths become the pause container's in the guest.
        let pod_network = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|list| {
                list.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::Network && n.path().is_some()
                })
            });
        let mut spec = bundle.guest_spec(&shared.path);
        if pod_network {
            mark_network_joined(&mut spec);
        }
        join_pod_namespaces(&mut spec, pause)?;
        let first = FIRST_MEMBER_PORT + std::process::id() % 4000;
        let (listener, port) = StdioListener::bind_free(&endpoint.stdio_prefix(), first)?;
        let stdio = StdioSpec {
            port,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            terminal: io.terminal,
        };
        let wanted: Vec<StreamKind> = if io.terminal {
            vec![StreamKind::Terminal]
        } else {
            [
                (io.stdin, StreamKind::Stdin),
                (io.stdout, StreamKind::Stdout),
                (io.stderr, StreamKind::Stderr),
            ]
            .into_iter()
            .filter_map(|(on, k)| on.then_some(k))
            .collect()
        };
        let req = Request::CreateContainer(ContainerRequest {
            container_id: id.to_owned(),
            spec,
            root: ContainerRoot::Shared {
                path: format!("{}/{root_name}", shared.path),
            },
            stdio,
            shared: Some(shared),
        });
        let (guest_pid, streams) = start_process(
            &agent,
            &listener,
            id,
            &wanted,
            req,
            "creating the container in its pod's VM",
        )?;
        drop(listener);
        let shares = std::mem::take(&mut guard.names);
        tracing::info!(id, pod = pod.id(), guest_pid, "created in the pod's VM");
        Ok((
            Self {
                id: id.to_owned(),
                pod: pod.clone(),
                agent,
                shares: std::sync::Mutex::new(shares),
                guest_pid,
            },
            streams,
        ))
    }

    /// The pod's sandbox container.
    pub fn pod(&self) -> &ContainerDir {
        &self.pod
    }

    /// Lets the container run its program.
    pub fn start(&self) -> Result<()> {
        let resp = self.agent.call_timeout(
            Request::StartContainer {
                container_id: self.id.clone(),
            },
            Duration::from_secs(60),
        )?;
        expect_ok(resp, "starting the container")
    }

    /// Blocks until the container's process ends; its status as a shell reports it. A
    /// VM that goes away under it (the pod ended) is SIGKILL's 137.
    pub fn wait(&self) -> i32 {
        match self.agent.call(Request::Wait {
            exec_id: self.id.clone(),
        }) {
            Ok(Response::Exited { status }) => status.shell_code(),
            Ok(other) => {
                tracing::warn!(id = %self.id, "unexpected answer to wait: {other:?}");
                128 + libc::SIGKILL
            }
            Err(e) => {
                tracing::info!(id = %self.id, "the pod's VM went away: {e:#}");
                128 + libc::SIGKILL
            }
        }
    }

    /// Signals the container's process (or every process of it).
    pub fn signal(&self, signal: i32, all: bool) -> Result<()> {
        let resp = self.agent.call_timeout(
            Request::Signal {
                exec_id: self.id.clone(),
                signal,
                all,
            },
            Duration::from_secs(30),
        )?;
        expect_ok(resp, "signalling the container")
    }

    /// The terminal's new size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.agent.post(Request::Resize {
            exec_id: self.id.clone(),
            rows,
            cols,
        })
    }

    /// The guest pids of its processes.
    pub fn pids(&self) -> Result<Vec<i32>> {
        match self.agent.call_timeout(
            Request::Ps {
                container_id: self.id.clone(),
            },
            Duration::from_secs(30),
        )? {
            Response::Pids { pids } => Ok(pids),
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer to ps: {other:?}"),
        }
    }

    /// Its resource usage.
    pub fn stats(&self) -> Result<ContainerStats> {
        match self.agent.call_timeout(
            Request::Stats {
                container_id: self.id.clone(),
            },
            Duration::from_secs(30),
        )? {
            Response::Stats(s) => Ok(s),
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer to stats: {other:?}"),
        }
    }

    /// Removes it from the VM (killing what is left of it) and its shares from the pod's
    /// shared directory. A VM already gone leaves only the shares to remove.
    pub fn remove(&self) -> Result<()> {
        let removed = self
            .agent
            .call_timeout(
                Request::RemoveContainer {
                    container_id: self.id.clone(),
                },
                Duration::from_secs(60),
            )
            .and_then(|r| expect_ok(r, "removing the container from its pod's VM"));
        self.agent.close();
        let guard = SharesGuard {
            pod: &self.pod,
            names: std::mem::take(
                &mut *self
                    .shares
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
        };
        drop(guard);
        match removed {
            Err(e) if self.pod.load().is_ok_and(|r| r.husk.agent.is_some()) => Err(e),
            _ => Ok(()),
        }
    }
}

/// Gives the spec's network namespace a path again (any: [`join_pod_namespaces`] points
/// it at the pause container's).
fn mark_network_joined(spec: &mut serde_json::Value) {
    if let Some(list) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
    {
        for ns in list.iter_mut().filter(|n| n["type"] == "network") {
            ns["path"] = serde_json::Value::String("pod".into());
        }
    }
}

/// Points the namespaces config.json names by path at the pause container's in the guest
/// (its guest pid is `pause`): a pod's containers share its network, IPC and UTS
/// namespaces, and its pid namespace when the pod shares one. A mount or user namespace
/// by path cannot be shared this way.
fn join_pod_namespaces(spec: &mut serde_json::Value, pause: i32) -> Result<()> {
    let Some(list) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
    else {
        return Ok(());
    };
    for ns in list.iter_mut() {
        if ns
            .get("path")
            .and_then(|p| p.as_str())
            .is_none_or(str::is_empty)
        {
            continue;
        }
        let kind = match ns.get("type").and_then(|t| t.as_str()) {
            Some("network") => "net",
            Some("ipc") => "ipc",
            Some("uts") => "uts",
            Some("pid") => "pid",
            Some("cgroup") => "cgroup",
            other => bail!(
                "a pod's container cannot join the pod's {} namespace",
                other.unwrap_or("unnamed")
            ),
        };
        ns["path"] = serde_json::Value::String(format!("/proc/{pause}/ns/{kind}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_cri_annotations_give_the_role() {
        assert_eq!(role(None, "a"), Role::Standalone);
        let sandbox = annotations(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "p")]);
        assert_eq!(role(Some(&sandbox), "p"), Role::Sandbox);
        let member = annotations(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "p")]);
        assert_eq!(role(Some(&member), "c"), Role::Member("p".into()));
        // A container naming itself as its sandbox is not joining anything.
        assert_eq!(role(Some(&member), "p"), Role::Standalone);
        let docker = annotations(&[("com.docker.x", "y")]);
        assert_eq!(role(Some(&docker), "c"), Role::Standalone);
    }

    #[test]
    fn a_members_namespaces_by_path_become_the_pause_containers_in_the_guest() {
        let mut spec = serde_json::json!({"linux": {"namespaces": [
            {"type": "mount"}, {"type": "pid"},
            {"type": "network", "path": "/proc/4242/ns/net"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"}]}});
        join_pod_namespaces(&mut spec, 7).unwrap();
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns[0], serde_json::json!({"type": "mount"}));
        assert_eq!(ns[1], serde_json::json!({"type": "pid"}));
        assert_eq!(ns[2]["path"], "/proc/7/ns/net");
        assert_eq!(ns[3]["path"], "/proc/7/ns/ipc");
        assert_eq!(ns[4]["path"], "/proc/7/ns/uts");
        // The network namespace whose path the guest spec dropped joins the pod's too.
        let mut spec = serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}});
        mark_network_joined(&mut spec);
        join_pod_namespaces(&mut spec, 9).unwrap();
        assert_eq!(spec["linux"]["namespaces"][0]["path"], "/proc/9/ns/net");
        let mut bad = serde_json::json!({"linux": {"namespaces": [
            {"type": "mount", "path": "/proc/4242/ns/mnt"}]}});
        let err = join_pod_namespaces(&mut bad, 7).unwrap_err().to_string();
        assert!(err.contains("mount"), "{err}");
    }

    #[test]
    fn share_tokens_are_plain_and_short() {
        let id = "0f3c9a8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a";
        assert_eq!(token(id), "0f3c9a8b7d6e5f4a");
        assert_eq!(token("web.server_1"), "webserver1");
    }
}
