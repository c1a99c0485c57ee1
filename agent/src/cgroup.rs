//! Containers' cgroups (v2) in the guest: they are how `Ps` and `Signal { all }` find
//! every process of a container, including those that left its process tree.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

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
        Ok(cgroup)
    }
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
