//! Pod and container configurations as the kubelet writes them for a plain pod: the
//! pod's network, IPC and UTS namespaces for every container, a pid namespace of each
//! container's own, logs under the pod's log directory, and the pod's cgroup, which the
//! kubelet makes before `RunPodSandbox` and removes after `RemovePodSandbox`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{cri, IMAGE};

/// Where the kubelet's cgroupfs driver puts BestEffort pods.
const BESTEFFORT: &str = "/kubepods/besteffort";

/// The kubelet's default namespaces (no `shareProcessNamespace`, no host namespaces).
pub fn namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Pod `name` in Kubernetes namespace `namespace`, its logs under `logs/<name>`.
pub fn pod_config(name: &str, namespace: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("{BESTEFFORT}/poduid-{namespace}-{name}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cgroup hierarchies of this host: the cgroup v2 root, or every v1 controller
/// hierarchy (the kubelet makes a pod's cgroup in each), and whether it is v2.
fn hierarchies() -> Result<(Vec<PathBuf>, bool)> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Ok((vec![root.to_owned()], true));
    }
    let mut v1 = Vec::new();
    for e in std::fs::read_dir(root).context("reading /sys/fs/cgroup")? {
        let e = e?;
        let name = e.file_name();
        if e.file_type()?.is_dir() && name != "unified" && e.path().join("cgroup.procs").exists() {
            v1.push(e.path());
        }
    }
    Ok((v1, false))
}

/// Makes the pod cgroup `config` names (`linux.cgroup_parent`), as the kubelet does before
/// `RunPodSandbox`: on cgroup v2 with the cpu, memory and pids controllers enabled down
/// to it (what the CRI's pod stats read), on v1 in every hierarchy.
pub fn make_pod_cgroup(config: &cri::PodSandboxConfig) -> Result<()> {
    let parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.trim_start_matches('/'))
        .filter(|p| !p.is_empty())
        .context("the pod config has no cgroup_parent")?;
    let (roots, v2) = hierarchies()?;
    for root in roots {
        let mut dir = root;
        for part in Path::new(parent) {
            if v2 {
                enable_controllers(&dir)?;
            }
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("making {}", dir.display()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Enables in `dir`'s children the controllers of cpu, memory and pids that `dir` has.
fn enable_controllers(dir: &Path) -> Result<()> {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .with_context(|| format!("reading {}/cgroup.controllers", dir.display()))?;
    for c in ["cpu", "memory", "pids"] {
        if have.split_whitespace().any(|h| h == c) {
            std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"))
                .with_context(|| format!("enabling {c} in {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The pod cgroups made by [`make_pod_cgroup`] on this host.
fn pod_cgroups() -> Result<Vec<PathBuf>> {
    let mut pods = Vec::new();
    for root in hierarchies()?.0 {
        let Ok(dir) = std::fs::read_dir(root.join(BESTEFFORT.trim_start_matches('/'))) else {
            continue;
        };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("pod") && e.path().is_dir() {
                pods.push(e.path());
            }
        }
    }
    Ok(pods)
}

/// The cgroups a runtime left inside pod cgroups (each pod container's and the sandbox's
/// own are the runtime's to remove when the pod is removed).
pub fn runtime_cgroups_left() -> Result<Vec<String>> {
    let mut left = Vec::new();
    for pod in pod_cgroups()? {
        for e in std::fs::read_dir(&pod)?.flatten() {
            if e.path().is_dir() {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    Ok(left)
}

/// Removes every pod cgroup, as the kubelet does once its pods are removed; fails if one
/// still holds a process or a cgroup.
pub fn remove_pod_cgroups() -> Result<()> {
    for pod in pod_cgroups()? {
        if let Err(e) = std::fs::remove_dir(&pod) {
            bail!("removing the pod cgroup {}: {e}", pod.display());
        }
    }
    Ok(())
}

/// Container `name` (restart count `attempt`) of the busybox image running `command`,
/// its log at `<name>-<attempt>.log` in the pod's log directory.
pub fn container_config(name: &str, attempt: u32, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}-{attempt}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
