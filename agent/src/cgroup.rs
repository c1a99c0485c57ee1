//! Containers' cgroups (v2) in the guest: they are how `Ps` and `Signal { all }` find
//! every process of a container, including those that left its process tree, and they
//! hold `linux.resources` (within the VM the host sized for them).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::runtime::LinuxResources;

/// Where containers' cgroups are made in the guest (cgroup2 is mounted there at boot).
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directory that holds one cgroup per container.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
}

impl CgroupRoot {
    /// Containers' cgroups will be made under `dir` (created when first needed).
    pub fn new(dir: PathBuf) -> Self {
        CgroupRoot { dir }
    }

    /// Makes the cgroup of container `name`; an empty one left by an earlier container
    /// of that name is reused.
    pub fn create(&self, name: &str) -> anyhow::Result<Cgroup> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create the cgroup directory {}", self.dir.display()))?;
        let path = self.dir.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("create cgroup {}", path.display())),
        }
        let cgroup = Cgroup { path };
        if !cgroup.procs_file().exists() {
            let _ = std::fs::remove_dir(&cgroup.path);
            bail!(
                "{} is not a cgroup v2 hierarchy (no cgroup.procs in {})",
                self.dir.display(),
                cgroup.path.display()
            );
        }
        if !cgroup.pids()?.is_empty() {
            bail!("cgroup {} still has processes", cgroup.path.display());
        }
        // Accounting for Stats and OOM events, whether or not the config sets limits.
        for controller in ["memory", "pids"] {
            self.enable(controller);
        }
        Ok(cgroup)
    }
}

impl CgroupRoot {
    /// Enables `controller` for the cgroups below the root; false if it is not there.
    fn enable(&self, controller: &str) -> bool {
        let control = self.dir.join("cgroup.subtree_control");
        let enabled = |c: &str| {
            std::fs::read_to_string(&control).is_ok_and(|s| s.split_whitespace().any(|e| e == c))
        };
        enabled(controller)
            || (std::fs::write(&control, format!("+{controller}")).is_ok() && enabled(controller))
    }

    /// Writes `resources` into `cgroup`'s files. Limits whose controller this kernel or
    /// hierarchy lacks are skipped and returned as warnings (the VM's size bounds the
    /// container anyway); values the kernel refuses are errors.
    pub fn limit(
        &self,
        cgroup: &Cgroup,
        resources: &LinuxResources,
    ) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for (file, value) in resource_files(resources)? {
            let controller = file.split('.').next().unwrap_or_default();
            let path = cgroup.path.join(&file);
            if !self.enable(controller) || !path.exists() {
                warnings.push(format!(
                    "{file} = {value} not applied: no {controller} controller in {}",
                    self.dir.display()
                ));
                continue;
            }
            std::fs::write(&path, &value).with_context(|| format!("set {file} to {value}"))?;
        }
        Ok(warnings)
    }
}

/// cgroup v2 files and values for `resources`, converted from the v1 terms of the OCI
/// spec as runc converts them.
fn resource_files(resources: &LinuxResources) -> anyhow::Result<Vec<(String, String)>> {
    let max = |v: i64| {
        if v < 0 {
            "max".to_owned()
        } else {
            v.to_string()
        }
    };
    let mut out = Vec::new();
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            out.push(("memory.max".into(), max(limit)));
        }
        if let Some(low) = memory.reservation() {
            out.push(("memory.low".into(), max(low)));
        }
        // OCI's swap is memory plus swap; v2 counts swap alone.
        match (memory.swap(), memory.limit()) {
            (Some(-1), _) => out.push(("memory.swap.max".into(), "max".into())),
            (Some(swap), Some(limit)) if swap > 0 && limit > 0 => {
                if swap < limit {
                    bail!("memory.swap ({swap}) must not be below memory.limit ({limit})");
                }
                out.push(("memory.swap.max".into(), (swap - limit).to_string()));
            }
            _ => {}
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares().filter(|&s| s > 0) {
            let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
            out.push(("cpu.weight".into(), weight.to_string()));
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu
                .quota()
                .filter(|&q| q > 0)
                .map_or("max".into(), |q| q.to_string());
            let period = cpu.period().unwrap_or(100_000);
            out.push(("cpu.max".into(), format!("{quota} {period}")));
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            out.push(("cpuset.cpus".into(), cpus.to_owned()));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            out.push(("cpuset.mems".into(), mems.to_owned()));
        }
    }
    if let Some(pids) = resources.pids() {
        out.push((
            "pids.max".into(),
            if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            },
        ));
    }
    for (file, value) in resources.unified().iter().flatten() {
        if file.contains('/') || file.starts_with("cgroup.") {
            bail!("linux.resources.unified: {file:?} is not a controller file");
        }
        out.push((file.clone(), value.clone()));
    }
    Ok(out)
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Moves process `pid` (and later its children) into the cgroup.
    pub fn add(&self, pid: libc::pid_t) -> anyhow::Result<()> {
        std::fs::write(self.procs_file(), pid.to_string())
            .with_context(|| format!("move pid {pid} into cgroup {}", self.path.display()))
    }

    /// The guest pids of every process in the cgroup.
    pub fn pids(&self) -> anyhow::Result<Vec<libc::pid_t>> {
        let procs = std::fs::read_to_string(self.procs_file())
            .with_context(|| format!("read {}", self.procs_file().display()))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Sends `signal` to every process in the cgroup. SIGKILL goes through `cgroup.kill`
    /// where the kernel has it (nothing can fork away from it); other signals are sent
    /// with the cgroup frozen, so no new process escapes the list.
    pub fn signal_all(&self, signal: i32) -> anyhow::Result<()> {
        if signal == libc::SIGKILL {
            let kill = self.path.join("cgroup.kill");
            if kill.exists() {
                return std::fs::write(&kill, "1")
                    .with_context(|| format!("write {}", kill.display()));
            }
        }
        let frozen = self.freeze(true).is_ok();
        let result = self.pids().and_then(|pids| {
            for pid in pids {
                // SAFETY: kill takes plain integers and has no memory effects.
                if unsafe { libc::kill(pid, signal) } < 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::ESRCH) {
                        bail!("signal {signal} to pid {pid}: {err}");
                    }
                }
            }
            Ok(())
        });
        if frozen {
            let _ = self.freeze(false);
        }
        result
    }

    fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let file = self.path.join("cgroup.freeze");
        std::fs::write(&file, if frozen { "1" } else { "0" })
            .with_context(|| format!("write {}", file.display()))?;
        if frozen {
            // Freezing completes asynchronously; cgroup.events says when.
            let events = self.path.join("cgroup.events");
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let text = std::fs::read_to_string(&events).unwrap_or_default();
                if text.lines().any(|l| l.trim() == "frozen 1") {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the cgroup to be empty, then removes it.
    pub fn remove(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("remove cgroup {}", self.path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(json: serde_json::Value) -> Vec<(String, String)> {
        resource_files(&serde_json::from_value(json).unwrap()).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn memory_and_swap_convert_to_v2() {
        assert_eq!(
            files(
                serde_json::json!({"memory": {"limit": 104857600, "swap": 209715200, "reservation": -1}})
            ),
            pairs(&[
                ("memory.max", "104857600"),
                ("memory.low", "max"),
                ("memory.swap.max", "104857600")
            ])
        );
        assert!(resource_files(
            &serde_json::from_value(serde_json::json!({"memory": {"limit": 200, "swap": 100}}))
                .unwrap()
        )
        .is_err());
    }

    #[test]
    fn cpu_shares_quota_and_sets_convert_like_runc() {
        assert_eq!(
            files(
                serde_json::json!({"cpu": {"shares": 1024, "quota": 50000, "period": 100000,
                                               "cpus": "0-1"}})
            ),
            pairs(&[
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0-1")
            ])
        );
        assert_eq!(
            files(serde_json::json!({"cpu": {"quota": -1}, "pids": {"limit": 0}})),
            pairs(&[("cpu.max", "max 100000"), ("pids.max", "max")])
        );
    }

    #[test]
    fn unified_entries_pass_through_but_not_paths() {
        assert_eq!(
            files(serde_json::json!({"unified": {"memory.high": "50M"}})),
            pairs(&[("memory.high", "50M")])
        );
        assert!(resource_files(
            &serde_json::from_value(serde_json::json!({"unified": {"../x": "1"}})).unwrap()
        )
        .is_err());
    }
}
