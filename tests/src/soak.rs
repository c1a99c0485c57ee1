//! The lifecycle soak: create/start/kill/delete cycles through the `husk` CLI, with
//! `kill -9` of the CLI or of the sandbox at random points, then a census of what is
//! left: processes, mounts, loop devices, descriptors, files, cgroups and sockets that
//! name the soak's state root or its containers. Used by the host tier (process backend)
//! and the VM tier; `scripts/soak.sh` runs the long versions.
//!
//! The calling process is made a child subreaper, as the runc shim is: sandboxes whose
//! `create` was killed are re-parented to it and reaped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How to run a soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The husk binary.
    pub husk: PathBuf,
    /// Environment for every husk command (e.g. the process backend).
    pub env: Vec<(String, String)>,
    /// The bundle every container is created from.
    pub bundle: PathBuf,
    /// The state root (`--root`), made by the caller, empty.
    pub root: PathBuf,
    /// Cycles to run.
    pub cycles: usize,
    /// The longest random wait before a `kill -9` (about how long a create takes).
    pub max_delay: Duration,
    /// Random seed (printed, so a failure can be replayed).
    pub seed: u64,
    /// Container ids are `<prefix>-<cycle>`.
    pub id_prefix: String,
}

impl SoakConfig {
    /// The seed from `HUSK_SOAK_SEED`, else the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("HUSK_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
    }
}

/// What is left that names the soak's root or containers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// Processes whose command line names the root or a soak container.
    pub processes: Vec<String>,
    /// Mounts whose source or target lies under the root.
    pub mounts: Vec<String>,
    /// Loop devices backed by a file under the root.
    pub loop_devices: Vec<String>,
    /// Open descriptors (of any process) on a file under the root.
    pub fds: Vec<String>,
    /// Files under the root.
    pub files: Vec<String>,
    /// cgroups named after a soak container, or a process-backend sandbox's.
    pub cgroups: Vec<String>,
    /// Unix sockets bound under the root.
    pub sockets: Vec<String>,
}

impl Census {
    /// Takes the census for `root` and containers `<id_prefix>-*`.
    pub fn take(root: &Path, id_prefix: &str) -> Self {
        let root_s = root.display().to_string();
        let id_marker = format!("{id_prefix}-");
        let mut c = Census::default();
        let me = std::process::id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            if cmdline.contains(&root_s) || cmdline.contains(&format!("--id {id_marker}")) {
                c.processes.push(format!("{name}: {}", cmdline.trim()));
            }
            for fd in std::fs::read_dir(entry.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    if target.starts_with(root) {
                        c.fds.push(format!("{name}: {}", target.display()));
                    }
                }
            }
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        c.mounts = mountinfo
            .lines()
            .filter(|l| l.contains(&root_s))
            .map(str::to_owned)
            .collect();
        for entry in std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
        {
            let backing = entry.path().join("loop/backing_file");
            if let Ok(file) = std::fs::read_to_string(&backing) {
                if file.contains(&root_s) {
                    c.loop_devices.push(format!(
                        "{}: {}",
                        entry.file_name().to_string_lossy(),
                        file.trim()
                    ));
                }
            }
        }
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p.clone());
                }
                c.files.push(p.display().to_string());
            }
        }
        let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().join("cgroup.procs").exists() {
                hierarchies.push(e.path());
            }
        }
        for h in hierarchies {
            for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && n.starts_with(&id_marker) {
                    c.cgroups.push(e.path().display().to_string());
                }
            }
        }
        let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        c.sockets = unix
            .lines()
            .filter(|l| l.contains(&root_s))
            .map(str::to_owned)
            .collect();
        c
    }

    /// Total of everything left.
    pub fn total(&self) -> usize {
        self.processes.len()
            + self.mounts.len()
            + self.loop_devices.len()
            + self.fds.len()
            + self.files.len()
            + self.cgroups.len()
            + self.sockets.len()
    }

    /// One line of counts.
    pub fn counts(&self) -> String {
        format!(
            "processes {}, mounts {}, loop devices {}, fds {}, files {}, cgroups {}, sockets {}",
            self.processes.len(),
            self.mounts.len(),
            self.loop_devices.len(),
            self.fds.len(),
            self.files.len(),
            self.cgroups.len(),
            self.sockets.len()
        )
    }
}

/// Where a cycle's fault goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: the plain lifecycle, which must succeed.
    None,
    /// `kill -9` of `husk create` at a random moment.
    KillCreate,
    /// `kill -9` of the sandbox of a created container.
    KillSandboxCreated,
    /// `kill -9` of the sandbox of a running container.
    KillSandboxRunning,
    /// `kill -9` of `husk start` at a random moment.
    KillStart,
}

const FAULTS: [Fault; 5] = [
    Fault::None,
    Fault::KillCreate,
    Fault::KillSandboxCreated,
    Fault::KillSandboxRunning,
    Fault::KillStart,
];

/// What a soak did.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Cycles per fault kind, in [`FAULTS`] order.
    pub per_fault: [usize; 5],
    /// Failures of steps that had to succeed (cycle, what).
    pub failures: Vec<String>,
    /// The census after the last cycle (and a grace for exits to finish).
    pub left: Census,
    /// Wall time.
    pub elapsed: Duration,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs the soak and takes the census.
pub fn run(cfg: &SoakConfig) -> SoakReport {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let started = Instant::now();
    let mut rng = Rng(cfg.seed | 1);
    let mut report = SoakReport::default();
    let mut faults = Vec::with_capacity(cfg.cycles);
    for cycle in 0..cfg.cycles {
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        faults.push(fault);
        report.per_fault[FAULTS.iter().position(|f| *f == fault).unwrap()] += 1;
        let id = format!("{}-{cycle}", cfg.id_prefix);
        if let Err(e) = one_cycle(cfg, &id, fault, &mut rng) {
            report
                .failures
                .push(format!("cycle {cycle} ({fault:?}): {e}"));
            // The failure is counted; what is left behind is husk's to clear.
            let _ = step(cfg, &["delete", "--force", &id]);
        }
        reap_orphans();
    }
    // Orphaned sandboxes of killed creates end by themselves (their create is gone).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reap_orphans();
        report.left = Census::take(&cfg.root, &cfg.id_prefix);
        if report.left.total() == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Which cycles the leftovers are of, and what was done to them.
    let listed = format!("{:?}", report.left);
    for (cycle, fault) in faults.iter().enumerate() {
        let id = format!("{}-{cycle}", cfg.id_prefix);
        let mentioned = listed
            .match_indices(&id)
            .any(|(i, _)| !listed[i + id.len()..].starts_with(|c: char| c.is_ascii_digit()));
        if mentioned {
            report
                .failures
                .push(format!("cycle {cycle} ({fault:?}) left something behind"));
        }
    }
    report.elapsed = started.elapsed();
    report
}

fn husk(cfg: &SoakConfig) -> Command {
    let mut c = Command::new(&cfg.husk);
    c.arg("--root")
        .arg(&cfg.root)
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn wait_limit(child: &mut Child, limit: Duration) -> Result<i32, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s.code().unwrap_or(-1)),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("hung for {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn step(cfg: &SoakConfig, args: &[&str]) -> Result<i32, String> {
    let mut child = husk(cfg).args(args).spawn().map_err(|e| e.to_string())?;
    wait_limit(&mut child, Duration::from_secs(300)).map_err(|e| format!("{args:?}: {e}"))
}

/// Runs a step that must succeed; a failure names the step and carries its error line.
fn must(cfg: &SoakConfig, args: &[&str]) -> Result<(), String> {
    let mut child = husk(cfg)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // husk's error is one line: read it to the end while the step runs (a full pipe
    // would stall it).
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let code =
        wait_limit(&mut child, Duration::from_secs(300)).map_err(|e| format!("{args:?}: {e}"))?;
    let text = reader.join().unwrap_or_default();
    match code {
        0 => Ok(()),
        code => Err(format!(
            "{args:?} exited {code}: {}",
            text.lines().last().unwrap_or("(no error output)")
        )),
    }
}

fn sandbox_pid(cfg: &SoakConfig, id: &str) -> Option<i32> {
    let o = husk(cfg)
        .args(["state", id])
        .stdout(Stdio::piped())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["pid"].as_i64().map(|p| p as i32).filter(|&p| p > 0)
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills a sandbox re-parented to this subreaper and reaps it, as the runc shim would.
fn kill9_sandbox(pid: i32) {
    kill9(pid);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

fn one_cycle(cfg: &SoakConfig, id: &str, fault: Fault, rng: &mut Rng) -> Result<(), String> {
    let delay =
        |rng: &mut Rng| Duration::from_millis(rng.below(cfg.max_delay.as_millis().max(1) as u64));
    let bundle = cfg.bundle.display().to_string();
    let mut create = husk(cfg)
        .args(["create", "--bundle", &bundle, id])
        .spawn()
        .map_err(|e| e.to_string())?;
    if fault == Fault::KillCreate {
        std::thread::sleep(delay(rng));
        kill9(create.id() as i32);
        let _ = create.wait();
        // Whatever create got to, delete --force must clear it (or find nothing).
        return must(cfg, &["delete", "--force", id]);
    }
    let code = wait_limit(&mut create, Duration::from_secs(300))?;
    if code != 0 {
        let _ = step(cfg, &["delete", "--force", id]);
        return Err(format!("create exited {code}"));
    }
    if fault == Fault::KillSandboxCreated {
        std::thread::sleep(delay(rng) / 4);
        if let Some(pid) = sandbox_pid(cfg, id) {
            kill9_sandbox(pid);
        }
        return must(cfg, &["delete", "--force", id]);
    }
    if fault == Fault::KillStart {
        let mut start = husk(cfg)
            .args(["start", id])
            .spawn()
            .map_err(|e| e.to_string())?;
        std::thread::sleep(delay(rng) / 4);
        kill9(start.id() as i32);
        let _ = start.wait();
        return must(cfg, &["delete", "--force", id]);
    }
    must(cfg, &["start", id])?;
    if fault == Fault::KillSandboxRunning {
        std::thread::sleep(delay(rng) / 4);
        if let Some(pid) = sandbox_pid(cfg, id) {
            kill9_sandbox(pid);
        }
        return must(cfg, &["delete", "--force", id]);
    }
    must(cfg, &["kill", id, "KILL"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = husk(cfg)
            .args(["state", id])
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["status"] == "stopped" {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("still {} a minute after kill KILL", v["status"]));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    must(cfg, &["delete", id])
}
