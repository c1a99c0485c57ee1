//! The sandbox in the container's host cgroup, so that the VM (guest memory, vCPU and
//! device threads, the VMM's own allocations) counts against the container's limits and
//! engines find the container's usage where they look for it.
//!
//! The cgroup is `linux.cgroupsPath`, as runc reads it: with `--systemd-cgroup` a
//! `slice:prefix:name` triple (a transient scope `prefix-name.scope` under the slice),
//! else a path in the cgroup hierarchy; without one, `/<id>` (cgroupfs) or
//! `system.slice:husk:<id>` (systemd). cgroup v1, v2 and v1 "hybrid" hosts are handled by
//! youki's libcgroups. With `--systemd-cgroup` on a host where systemd is not running
//! (no manager to ask for a scope), the scope's path is made directly, where systemd
//! would have put it.
//!
//! The sandbox joins it first thing, before it allocates guest memory. What the host
//! cgroup limits is the VM, not the container inside it (the guest applies the
//! container's own limits in its cgroup): its memory limit is the guest's memory plus
//! [`VMM_OVERHEAD_MIB`] when config.json sets a memory limit, its CPU quota, shares and
//! cpuset are config.json's; the pids and device rules are the guest's business (the
//! sandbox's threads are not the container's processes).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use oci_spec::runtime::{LinuxCpu, LinuxMemoryBuilder, LinuxResourcesBuilder};
use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;

/// What the VMM may use beyond guest memory, in the host cgroup's memory limit: its
/// threads, device buffers, the page cache of the root image it writes at create.
pub const VMM_OVERHEAD_MIB: u64 = 128;

/// The container's host cgroup, as recorded in its state (for `delete` to remove it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlace {
    /// `linux.cgroupsPath` or the default: a path, or `slice:prefix:name` with `systemd`.
    pub path: String,
    /// The systemd form (`--systemd-cgroup`).
    pub systemd: bool,
}

impl CgroupPlace {
    /// Where container `id` of `bundle` goes.
    pub fn for_container(bundle: &Bundle, id: &str, systemd: bool) -> Self {
        let given = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string())
            .filter(|p| !p.is_empty());
        let path = match (given, systemd) {
            (Some(p), _) => p,
            (None, true) => format!("system.slice:husk:{id}"),
            (None, false) => format!("/{id}"),
        };
        Self { path, systemd }
    }

    /// The manager for this cgroup on this host.
    fn manager(&self, id: &str) -> Result<AnyCgroupManager> {
        let config = |path: PathBuf, systemd| CgroupConfig {
            cgroup_path: path,
            systemd_cgroup: systemd,
            container_name: id.to_owned(),
        };
        if self.systemd {
            let expanded = systemd_path(&self.path)?;
            if systemd_running() && is_unified() {
                return create_cgroup_manager(config(PathBuf::from(&self.path), true))
                    .map_err(|e| anyhow!("{e}"))
                    .with_context(|| format!("asking systemd for cgroup {}", self.path));
            }
            return create_cgroup_manager(config(expanded, false))
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("cgroup {}", self.path));
        }
        let path = PathBuf::from(&self.path);
        if !path.is_absolute() {
            return Err(anyhow!(
                "linux.cgroupsPath {:?} must be absolute without --systemd-cgroup",
                self.path
            ));
        }
        create_cgroup_manager(config(path, false))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cgroup {}", self.path))
    }

    /// Moves this (single-threaded) process into the cgroup, made if need be, and sets
    /// the VM's limits there.
    pub fn join(&self, id: &str, bundle: &Bundle) -> Result<()> {
        self.add(std::process::id(), id, bundle)
    }

    /// Moves process `pid` into the cgroup, made if need be, and sets the VM's limits.
    pub fn add(&self, pid: u32, id: &str, bundle: &Bundle) -> Result<()> {
        let manager = self.manager(id)?;
        // Sandboxes whose cgroups share a parent not made yet (a Kubernetes node's
        // /k8s.io, when its pods start together) race to make it in libcgroups, which
        // fails the loser with EEXIST for the parent: the parent is there then, so again.
        let mut attempts = 0;
        loop {
            match manager.add_task(nix029_pid(pid)) {
                Ok(()) => break,
                Err(e) if attempts < 5 && e.to_string().contains("(os error 17)") => {
                    attempts += 1;
                    tracing::debug!("cgroup {}: {e}; trying again", self.path);
                }
                Err(e) => {
                    return Err(anyhow!("{e}"))
                        .with_context(|| format!("joining cgroup {}", self.path))
                }
            }
        }
        let resources = vm_resources(bundle)?;
        manager
            .apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("setting the VM's limits in cgroup {}", self.path))
    }

    /// Removes the cgroup (once the sandbox is gone); a cgroup that is not there is fine.
    /// The sandbox's main thread can be reaped while its other threads (vCPUs tearing the
    /// VM down) still run in the cgroup, which cannot go before they do: the removal is
    /// retried for a while, and whatever still runs there is killed, as runc's delete does.
    pub fn remove(&self, id: &str) -> Result<()> {
        let manager = self.manager(id)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let Err(e) = manager.remove() else {
                return Ok(());
            };
            if std::time::Instant::now() >= deadline {
                return Err(anyhow!("{e}"))
                    .with_context(|| format!("removing cgroup {}", self.path));
            }
            for pid in manager.get_all_pids().unwrap_or_default() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid.as_raw()),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

fn nix029_pid(pid: u32) -> nix_cgroups::unistd::Pid {
    nix_cgroups::unistd::Pid::from_raw(pid as i32)
}

/// The limits of the VM as a whole, from the container's.
fn vm_resources(bundle: &Bundle) -> Result<oci_spec::runtime::LinuxResources> {
    let asked = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref());
    let mut b = LinuxResourcesBuilder::default();
    let has_memory_limit = asked
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .is_some_and(|l| l > 0);
    if has_memory_limit {
        let bytes = (bundle.memory_mib() + VMM_OVERHEAD_MIB) << 20;
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes as i64)
                .build()
                .context("memory limit")?,
        );
    }
    if let Some(cpu) = asked.and_then(|r| r.cpu().as_ref()) {
        let mut c = LinuxCpu::default();
        c.set_quota(cpu.quota())
            .set_period(cpu.period())
            .set_shares(cpu.shares())
            .set_cpus(cpu.cpus().clone())
            .set_mems(cpu.mems().clone());
        b = b.cpu(c);
    }
    b.build().context("the VM's cgroup limits")
}

/// Whether systemd is the host's init (what `sd_booted` checks).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn is_unified() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The cgroupfs path systemd gives `slice:prefix:name`: the slice's ancestors each a
/// level (`a-b.slice` lies in `a.slice`), then `prefix-name.scope` (or `name` itself
/// when it is a slice).
pub fn systemd_path(triple: &str) -> Result<PathBuf> {
    let parts: Vec<&str> = triple.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(anyhow!(
            "linux.cgroupsPath {triple:?} is not slice:prefix:name (--systemd-cgroup)"
        ));
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') || slice.contains('/') {
        return Err(anyhow!(
            "linux.cgroupsPath {triple:?}: bad slice, prefix or name"
        ));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(anyhow!(
            "linux.cgroupsPath {triple:?}: {slice:?} is not a slice"
        ));
    };
    let mut path = PathBuf::from("/");
    if stem != "-" {
        if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
            return Err(anyhow!("linux.cgroupsPath {triple:?}: bad slice {slice:?}"));
        }
        let mut so_far = String::new();
        for part in stem.split('-') {
            if !so_far.is_empty() {
                so_far.push('-');
            }
            so_far.push_str(part);
            path.push(format!("{so_far}.slice"));
        }
    }
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit file of cgroup `path` and what it holds, on v1 or v2.
    fn memory_limit(path: &str) -> String {
        let rel = path.trim_start_matches('/');
        let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.max");
        let v1 = Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.limit_in_bytes");
        std::fs::read_to_string(v2)
            .or_else(|_| std::fs::read_to_string(v1))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// On this host's cgroups (v1, hybrid or v2): a process is moved into the container's
    /// cgroup, which gets the VM's memory limit, and the cgroup goes on remove.
    #[test]
    fn a_process_joins_the_containers_cgroup_with_the_vms_limit_and_it_goes_after() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let path = format!("/husk-test-cg-{}", std::process::id());
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"cgroupsPath": path, "resources": {"memory": {"limit": 64 << 20}}}
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let bundle = Bundle::load(dir.path()).unwrap();
        let place = CgroupPlace::for_container(&bundle, "c", false);
        assert_eq!(place.path, path);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let added = place.add(child.id(), "c", &bundle);
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        let limit = memory_limit(&path);
        let _ = child.kill();
        let _ = child.wait();
        added.unwrap();
        assert!(
            cgroups.lines().any(|l| l.ends_with(&format!(":{path}"))),
            "{cgroups}"
        );
        let expected = (bundle.memory_mib() + VMM_OVERHEAD_MIB) << 20;
        assert_eq!(limit, expected.to_string(), "the VM's memory limit");
        place.remove("c").unwrap();
        for line in cgroups.lines().filter(|l| l.ends_with(&format!(":{path}"))) {
            let controllers = line.split(':').nth(1).unwrap();
            let mount = match controllers {
                "" => "/sys/fs/cgroup".to_owned(),
                c => format!("/sys/fs/cgroup/{}", c.split(',').next().unwrap()),
            };
            let left = Path::new(&mount).join(path.trim_start_matches('/'));
            if Path::new(&mount).exists() {
                assert!(!left.exists(), "{} left behind", left.display());
            }
        }
    }

    #[test]
    fn sandboxes_joining_cgroups_under_one_new_parent_at_once_all_get_theirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let bundle = Bundle::load(dir.path()).unwrap();
        const N: usize = 16;
        let mut failed = Vec::new();
        // Rounds, each under a parent of its own that none of the N has made yet, all
        // let go at once.
        for round in 0..5 {
            let parent = format!("/husk-test-cgp-{}-{round}", std::process::id());
            let barrier = std::sync::Barrier::new(N);
            let results: Vec<(Result<()>, CgroupPlace)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..N)
                    .map(|i| {
                        let (bundle, parent, barrier) = (&bundle, &parent, &barrier);
                        s.spawn(move || {
                            let place = CgroupPlace {
                                path: format!("{parent}/c{i}"),
                                systemd: false,
                            };
                            let mut child = std::process::Command::new("sleep")
                                .arg("30")
                                .spawn()
                                .unwrap();
                            barrier.wait();
                            let added = place.add(child.id(), &format!("c{i}"), bundle);
                            let _ = child.kill();
                            let _ = child.wait();
                            (added, place)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (i, (added, place)) in results.into_iter().enumerate() {
                if let Err(e) = added {
                    failed.push(format!("round {round}, c{i}: {e:#}"));
                }
                place.remove(&format!("c{i}")).unwrap();
            }
            for mount in [
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
            ] {
                let _ = std::fs::remove_dir(Path::new(mount).join(parent.trim_start_matches('/')));
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn a_relative_cgroupfs_path_is_refused() {
        let place = CgroupPlace {
            path: "relative/x".into(),
            systemd: false,
        };
        let err = place.remove("x").unwrap_err();
        assert!(format!("{err:#}").contains("absolute"), "{err:#}");
    }

    #[test]
    fn systemd_triples_expand_as_systemd_nests_slices() {
        let p = |s: &str| systemd_path(s).unwrap().display().to_string();
        assert_eq!(
            p("system.slice:docker:abc"),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            p("machine.slice:libpod:f00"),
            "/machine.slice/libpod-f00.scope"
        );
        assert_eq!(
            p("kubepods-besteffort-pod1.slice:cri-containerd:c1"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-c1.scope"
        );
        assert_eq!(p(":husk:x"), "/system.slice/husk-x.scope");
        assert_eq!(p("-.slice:p:x"), "/p-x.scope");
        for bad in [
            "a:b",
            "nota:p:x",
            "a.slice:p:",
            "a--b.slice:p:x",
            "a.slice:p:../x",
        ] {
            assert!(systemd_path(bad).is_err(), "{bad}");
        }
    }
}
