//! `CreateContainer`: mount the root disk, fork the container's process into its new
//! namespaces and cgroup, and let it set itself up up to right before `execve` (the OCI
//! "created" state). A failure anywhere undoes everything that was done.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use husk_protocol::ContainerRequest;
use nix::mount::{self, MsFlags};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use super::launch::{self, Launch, SetupChannel};
use super::{unmount_root, Container};
use crate::cgroup::Cgroup;
use crate::exec::{connect_stdio, null_stdio};
use crate::server::Agent;
use crate::setup::messages::{Job, NamespaceFd, Report, SetupConfig};

/// What has been done so far, for undoing it.
#[derive(Default)]
struct Partial {
    dir: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    pid: Option<libc::pid_t>,
}

/// Creates the container and returns the guest pid of its process.
pub fn create(agent: &Agent, req: &ContainerRequest) -> anyhow::Result<libc::pid_t> {
    let id = req.container_id.as_str();
    let spec: Spec = serde_json::from_value(req.spec.clone()).context("config.json")?;
    let namespaces = namespaces(&spec)?;
    let joins = open_joins(&namespaces.join)?;
    let pid_join = joins
        .iter()
        .find(|(f, _)| *f == CloneFlags::CLONE_NEWPID)
        .map(|(_, fd)| fd);
    let inherit: Vec<i32> = joins
        .iter()
        .filter(|(f, _)| *f != CloneFlags::CLONE_NEWPID)
        .map(|(_, fd)| fd.as_raw_fd())
        .collect();
    let join_fds: Vec<NamespaceFd> = joins
        .iter()
        .filter(|(f, _)| *f != CloneFlags::CLONE_NEWPID)
        .map(|(f, fd)| NamespaceFd {
            nstype: f.bits(),
            fd: fd.as_raw_fd(),
        })
        .collect();
    let created = namespaces.create;
    let process = spec
        .process()
        .as_ref()
        .context("config.json has no process")?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("config.json: process.args must not be empty");
    }
    let terminal = req.stdio.terminal || process.terminal().unwrap_or(false);
    let id_reservation = agent.containers.reserve(id)?;
    let exec_reservation = agent.table.reserve(id)?;

    let mut partial = Partial::default();
    let result = (|| {
        let (dir, rootfs) = agent.containers.paths(id);
        std::fs::create_dir_all(&rootfs).with_context(|| format!("create {}", rootfs.display()))?;
        partial.dir = Some(dir.clone());
        let readonly = req.root.readonly
            || spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false);
        mount_root(req, &rootfs, readonly)?;
        partial.rootfs = Some(rootfs.clone());
        let cgroup = agent.containers.cgroups.create(id)?;
        let cgroup_path = cgroup.path().to_owned();
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            let warnings = agent
                .containers
                .cgroups
                .limit(&cgroup, resources)
                .context("linux.resources")?;
            for warning in warnings {
                diag!("container {id:?}: {warning}");
            }
        }
        partial.cgroup = Some(cgroup);

        let stdio: [OwnedFd; 3] = if terminal {
            null_stdio()?
        } else {
            connect_stdio(id, &req.stdio, &agent.transport)?
        };
        let launch = Launch {
            new_namespaces: created & !CloneFlags::CLONE_NEWCGROUP,
            stdio: stdio.each_ref().map(|f| f.as_raw_fd()),
            inherit: &inherit,
        };
        // pid_for_children is per thread: joining a pod's pid namespace happens on a
        // short-lived forking thread, as for an exec.
        let (pid, mut channel) = std::thread::scope(|s| {
            s.spawn(|| {
                if let Some(ns) = pid_join {
                    nix::sched::setns(ns, CloneFlags::CLONE_NEWPID)
                        .context("join the pod's pid namespace")?;
                }
                launch::spawn(&agent.table, exec_reservation, &launch)
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the forking thread panicked")))
        })?;
        partial.pid = Some(pid);
        drop(stdio);
        partial.cgroup.as_ref().expect("set above").add(pid)?;
        if created.contains(CloneFlags::CLONE_NEWUSER) {
            write_id_maps(pid, &spec)?;
            channel.release_id_maps()?;
        }
        channel.send(&SetupConfig {
            container_id: id.to_owned(),
            spec: req.spec.clone(),
            terminal,
            job: Job::Create {
                rootfs: rootfs.clone(),
                cgroup: cgroup_path,
                new_cgroup_namespace: created.contains(CloneFlags::CLONE_NEWCGROUP),
                new_network_namespace: created.contains(CloneFlags::CLONE_NEWNET),
                join: join_fds.clone(),
                no_pivot: agent.containers.no_pivot,
            },
        })?;
        wait_until_created(agent, id, req.stdio.port, &mut channel)?;
        Ok((pid, dir, rootfs, channel))
    })();

    match result {
        Ok((pid, dir, rootfs, channel)) => {
            let container = Container {
                id: id.to_owned(),
                spec: req.spec.clone(),
                dir,
                rootfs,
                cgroup: partial.cgroup.take().expect("made before the fork"),
                start: std::sync::Mutex::new(Some(channel)),
                execs: std::sync::Mutex::new(Vec::new()),
            };
            agent.containers.commit(id_reservation, container);
            diag!("container {id:?} created, pid {pid}");
            Ok(pid)
        }
        Err(e) => {
            diag!("container {id:?}: create failed: {e:#}");
            undo(agent, id, partial);
            Err(e)
        }
    }
}

/// Reads reports until the process is created (or says why not).
fn wait_until_created(
    agent: &Agent,
    id: &str,
    port: u32,
    channel: &mut SetupChannel,
) -> anyhow::Result<()> {
    loop {
        match channel.recv()? {
            Some(Report::Ready) => return Ok(()),
            Some(Report::Log { message }) => diag!("container {id:?}: {message}"),
            Some(Report::Terminal) => {
                let master = channel
                    .take_fd()
                    .context("the setup process sent no terminal descriptor")?;
                agent.terminals.attach(id, master, &agent.transport, port)?;
            }
            Some(Report::Error { message }) => bail!(message),
            Some(Report::Execing) => bail!("the container's process exec'd before its start"),
            None => bail!(early_end(agent, id)),
        }
    }
}

/// Why a setup process went away without a report.
pub(super) fn early_end(agent: &Agent, exec_id: &str) -> String {
    match agent.table.wait_timeout(exec_id, Duration::from_secs(5)) {
        Some(husk_protocol::ExitStatus::Code(code)) => format!(
            "the container setup process ended early ({}, exit status {code})",
            launch::describe_early_exit(code)
        ),
        Some(husk_protocol::ExitStatus::Signal(sig)) => {
            format!("the container setup process was killed by signal {sig}")
        }
        None => "the container setup process closed its socket without a report".into(),
    }
}

fn mount_root(req: &ContainerRequest, rootfs: &Path, readonly: bool) -> anyhow::Result<()> {
    let flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount::mount(
        Some(req.root.device.as_str()),
        rootfs,
        Some(req.root.fstype.as_str()),
        flags,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mount {} ({}) at {}",
            req.root.device,
            req.root.fstype,
            rootfs.display()
        )
    })
}

/// The container's namespaces: those to create, and those to join by path (a pod's
/// containers join the net, IPC and UTS namespaces of the pod's first container, whose
/// paths the host names as guest paths). A mount namespace of its own is required, a
/// hostname needs a UTS namespace, and the user and mount namespaces cannot be joined.
#[derive(Debug, PartialEq)]
struct Namespaces {
    create: CloneFlags,
    join: Vec<(CloneFlags, PathBuf)>,
}

impl Namespaces {
    fn has(&self, flag: CloneFlags) -> bool {
        self.create.contains(flag) || self.join.iter().any(|(f, _)| *f == flag)
    }
}

fn namespaces(spec: &Spec) -> anyhow::Result<Namespaces> {
    let mut ns_out = Namespaces {
        create: CloneFlags::empty(),
        join: Vec::new(),
    };
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let flag = match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
            LinuxNamespaceType::Time => bail!("time namespaces are not supported"),
        };
        match ns.path() {
            Some(path)
                if matches!(
                    ns.typ(),
                    LinuxNamespaceType::Mount | LinuxNamespaceType::User
                ) =>
            {
                bail!(
                    "joining an existing {} namespace ({}) is not supported in a husk guest",
                    ns.typ(),
                    path.display()
                )
            }
            Some(path) => ns_out.join.push((flag, path.clone())),
            None => ns_out.create |= flag,
        }
    }
    if !ns_out.create.contains(CloneFlags::CLONE_NEWNS) {
        bail!("config.json: linux.namespaces must include a mount namespace");
    }
    let has_hostname = spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        || spec.domainname().as_deref().is_some_and(|d| !d.is_empty());
    if has_hostname && !ns_out.has(CloneFlags::CLONE_NEWUTS) {
        bail!("config.json: a hostname or domainname needs a uts namespace");
    }
    Ok(ns_out)
}

/// Opens the namespaces to join; each must be a namespace of the kind it is named as.
fn open_joins(joins: &[(CloneFlags, PathBuf)]) -> anyhow::Result<Vec<(CloneFlags, OwnedFd)>> {
    joins
        .iter()
        .map(|(flag, path)| {
            let fd: OwnedFd = std::fs::File::open(path)
                .with_context(|| format!("open the namespace {}", path.display()))?
                .into();
            // SAFETY: NS_GET_NSTYPE takes no argument and returns the type or -1.
            let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
            if kind != flag.bits() {
                bail!("{} is not a {flag:?} namespace", path.display());
            }
            Ok((*flag, fd))
        })
        .collect()
}

/// `ioctl(NS_GET_NSTYPE)` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Maps the user namespace of `pid` as `linux.uidMappings`/`gidMappings` say.
fn write_id_maps(pid: libc::pid_t, spec: &Spec) -> anyhow::Result<()> {
    let linux = spec.linux().as_ref();
    let render = |maps: Option<&Vec<LinuxIdMapping>>, which: &str| -> anyhow::Result<String> {
        let maps = maps.filter(|m| !m.is_empty()).with_context(|| {
            format!("config.json: a user namespace needs linux.{which}Mappings")
        })?;
        Ok(maps
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect())
    };
    let uid = render(linux.and_then(|l| l.uid_mappings().as_ref()), "uid")?;
    let gid = render(linux.and_then(|l| l.gid_mappings().as_ref()), "gid")?;
    std::fs::write(format!("/proc/{pid}/uid_map"), uid).context("write uid_map")?;
    std::fs::write(format!("/proc/{pid}/gid_map"), gid).context("write gid_map")?;
    Ok(())
}

fn undo(agent: &Agent, id: &str, partial: Partial) {
    if let Some(pid) = partial.pid {
        // SAFETY: kill takes plain integers; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = agent.table.wait_timeout(id, Duration::from_secs(5));
        agent.table.forget(id);
    }
    if let Some(cgroup) = partial.cgroup {
        let _ = cgroup.signal_all(libc::SIGKILL);
        if let Err(e) = cgroup.remove(Duration::from_secs(5)) {
            diag!("container {id:?}: {e:#}");
        }
    }
    match (partial.rootfs, partial.dir) {
        (Some(rootfs), Some(dir)) => unmount_root(&rootfs, &dir),
        (None, Some(dir)) => {
            let _ = std::fs::remove_dir(dir.join("rootfs"));
            let _ = std::fs::remove_dir(&dir);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn namespaces_become_clone_flags() {
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "mount"}, {"type": "pid"}, {"type": "network"}, {"type": "user"},
            {"type": "cgroup"}, {"type": "ipc"}, {"type": "uts"}]}}),
        );
        assert_eq!(
            namespaces(&s).unwrap().create,
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWCGROUP
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
        );
    }

    #[test]
    fn a_pods_namespaces_are_joined_by_path() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2", "hostname": "pod",
            "linux": {"namespaces": [
            {"type": "mount"}, {"type": "pid"},
            {"type": "network", "path": "/proc/7/ns/net"},
            {"type": "uts", "path": "/proc/7/ns/uts"}]}}));
        let ns = namespaces(&s).unwrap();
        assert_eq!(
            ns.create,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID
        );
        assert_eq!(
            ns.join,
            vec![
                (CloneFlags::CLONE_NEWNET, PathBuf::from("/proc/7/ns/net")),
                (CloneFlags::CLONE_NEWUTS, PathBuf::from("/proc/7/ns/uts")),
            ]
        );
    }

    #[test]
    fn joining_a_mount_or_user_namespace_is_refused_naming_it() {
        for (typ, shown) in [("mount", "mnt"), ("user", "user")] {
            let s = spec(
                serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
                {"type": "mount"}, {"type": typ, "path": "/proc/7/ns/x"}]}}),
            );
            let err = namespaces(&s).unwrap_err().to_string();
            assert!(err.contains("/proc/7/ns/x") && err.contains(shown), "{err}");
        }
    }

    #[test]
    fn a_path_that_is_not_the_namespace_named_is_refused() {
        let err = open_joins(&[(CloneFlags::CLONE_NEWNET, PathBuf::from("/proc/self/ns/uts"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/proc/self/ns/uts"), "{err}");
        assert!(
            open_joins(&[(CloneFlags::CLONE_NEWUTS, PathBuf::from("/proc/self/ns/uts"))]).is_ok()
        );
    }

    #[test]
    fn a_mount_namespace_is_required() {
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "pid"}]}}),
        );
        assert!(namespaces(&s)
            .unwrap_err()
            .to_string()
            .contains("mount namespace"));
    }
}
