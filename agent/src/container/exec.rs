//! `Exec` into a container: a setup process forked into the container's pid namespace
//! joins its other namespaces and cgroup, takes on the exec's `process` (or the container's
//! own with the request's argv, env and cwd) under the container's seccomp profile, and
//! execs at once.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context};
use husk_protocol::ExecRequest;
use nix::sched::CloneFlags;
use oci_spec::runtime::Process;

use super::create::early_end;
use super::launch::{self, Launch};
use super::Container;
use crate::exec::{connect_stdio, null_stdio};
use crate::reaper::Reservation;
use crate::server::Agent;
use crate::setup::messages::{Job, NamespaceFd, Report, SetupConfig};

/// The namespaces an exec joins, by their /proc/<pid>/ns names. The pid namespace is
/// joined by the forking thread instead (it applies to children only).
const NAMESPACES: [(&str, libc::c_int); 6] = [
    ("user", libc::CLONE_NEWUSER),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// Starts the exec in container `container_id` and returns its guest pid once the
/// program runs.
pub fn exec(agent: &Agent, req: &ExecRequest, container_id: &str) -> anyhow::Result<libc::pid_t> {
    let container = agent.containers.get(container_id)?;
    let Some(init) = agent.table.pid(container_id) else {
        bail!("container {container_id:?} is not running");
    };
    let process_json = exec_process(&container.spec, req)?;
    let process: Process =
        serde_json::from_value(process_json.clone()).context("the exec's process")?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("exec {:?}: empty args", req.exec_id);
    }
    let terminal = req.stdio.terminal || process.terminal().unwrap_or(false);
    let reservation = agent.table.reserve(&req.exec_id)?;
    let stdio: [OwnedFd; 3] = if terminal {
        null_stdio()?
    } else {
        connect_stdio(&req.exec_id, &req.stdio, &agent.transport)?
    };
    let exec = Exec {
        exec_id: &req.exec_id,
        process: process_json,
        terminal,
        port: req.stdio.port,
    };
    spawn_in(
        agent,
        &container,
        container_id,
        init,
        reservation,
        exec,
        stdio,
    )
}

/// One process to start in a container.
pub(super) struct Exec<'a> {
    pub exec_id: &'a str,
    /// Its OCI `process`.
    pub process: serde_json::Value,
    pub terminal: bool,
    /// Host port for a terminal's stream.
    pub port: u32,
}

/// Forks `exec` into the namespaces of container `container_id` (whose process is `init`)
/// with `stdio`, and returns its pid once it has exec'd.
pub(super) fn spawn_in(
    agent: &Agent,
    container: &Container,
    container_id: &str,
    init: libc::pid_t,
    reservation: Reservation<'_>,
    exec: Exec<'_>,
    stdio: [OwnedFd; 3],
) -> anyhow::Result<libc::pid_t> {
    let exec_id = exec.exec_id;
    let terminal = exec.terminal;
    let pid_ns = namespace_if_other(init, "pid")?;
    let mut joined: Vec<(libc::c_int, OwnedFd)> = Vec::new();
    for (name, nstype) in NAMESPACES {
        if let Some(fd) = namespace_if_other(init, name)? {
            joined.push((nstype, fd));
        }
    }
    let inherit: Vec<i32> = joined.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let launch = Launch {
        new_namespaces: CloneFlags::empty(),
        stdio: stdio.each_ref().map(|f| f.as_raw_fd()),
        inherit: &inherit,
    };
    // pid_for_children is per thread: a short-lived thread joins the container's pid
    // namespace and forks, and the agent's other threads stay where they are.
    let (pid, mut channel) = std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = &pid_ns {
                nix::sched::setns(ns, CloneFlags::CLONE_NEWPID)
                    .context("join the container's pid namespace")?;
            }
            launch::spawn(&agent.table, reservation, &launch)
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the forking thread panicked")))
    })?;
    drop(stdio);
    let namespaces: Vec<NamespaceFd> = joined
        .iter()
        .map(|(nstype, fd)| NamespaceFd {
            nstype: *nstype,
            fd: fd.as_raw_fd(),
        })
        .collect();
    let result = (|| {
        container.cgroup.add(pid)?;
        channel.send(&SetupConfig {
            container_id: container_id.to_owned(),
            spec: container.spec.clone(),
            terminal,
            job: Job::Exec {
                process: exec.process,
                namespaces,
            },
        })?;
        let mut execing = false;
        loop {
            match channel.recv()? {
                Some(Report::Log { message }) => diag!("exec {exec_id:?}: {message}"),
                Some(Report::Terminal) => {
                    let master = channel
                        .take_fd()
                        .context("the setup process sent no terminal descriptor")?;
                    agent
                        .terminals
                        .attach(exec_id, master, &agent.transport, exec.port)?;
                }
                Some(Report::Execing) => execing = true,
                Some(Report::Error { message }) => bail!(message),
                Some(Report::Ready) => bail!("unexpected ready report from an exec"),
                None if execing => return anyhow::Ok(()),
                None => bail!(early_end(agent, exec_id)),
            }
        }
    })();
    drop(joined);
    match result {
        Ok(()) => {
            container
                .execs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(exec_id.to_owned());
            Ok(pid)
        }
        Err(e) => {
            // It may still wait for its configuration; the table knows whether the pid
            // is still this process.
            let _ = agent.table.signal(exec_id, libc::SIGKILL);
            agent.table.abandon(exec_id);
            Err(e)
        }
    }
}

/// Fields of an exec's own process that default to the container's process.
const INHERITED: [&str; 5] = ["user", "cwd", "capabilities", "noNewPrivileges", "rlimits"];

/// The exec's OCI process: the request's own, or the container's with the request's
/// argv, env, cwd and terminal.
fn exec_process(spec: &serde_json::Value, req: &ExecRequest) -> anyhow::Result<serde_json::Value> {
    let template = spec
        .get("process")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(process) = &req.process {
        // What the exec leaves out comes from the container, as in runc: above all the
        // privileges, which would otherwise be the agent's (every capability).
        let mut process = process.clone();
        let fields = process
            .as_object_mut()
            .context("the exec's process is not an object")?;
        for key in INHERITED {
            if !fields.contains_key(key) {
                if let Some(value) = template.get(key) {
                    fields.insert(key.into(), value.clone());
                }
            }
        }
        return Ok(process);
    }
    let mut process = template;
    let fields = process
        .as_object_mut()
        .context("config.json: process is not an object")?;
    fields.insert("args".into(), serde_json::json!(req.argv));
    fields.insert("env".into(), serde_json::json!(req.env));
    if !req.cwd.is_empty() {
        fields.insert("cwd".into(), serde_json::json!(req.cwd));
    }
    fields.insert("terminal".into(), serde_json::json!(req.stdio.terminal));
    Ok(process)
}

/// `/proc/<pid>/ns/<name>` opened, unless the agent is in that namespace itself (joining
/// one's own user namespace is an error, the others a waste).
fn namespace_if_other(pid: libc::pid_t, name: &str) -> anyhow::Result<Option<OwnedFd>> {
    let theirs = format!("/proc/{pid}/ns/{name}");
    let file = File::open(&theirs).with_context(|| format!("open {theirs}"))?;
    let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
        .with_context(|| format!("stat /proc/self/ns/{name}"))?;
    let meta = file.metadata()?;
    if meta.ino() == ours.ino() && meta.dev() == ours.dev() {
        return Ok(None);
    }
    Ok(Some(file.into()))
}
