//! The test backend (`HUSK_SANDBOX_BACKEND=process`): no VM, the guest agent runs as a
//! host process in test mode (`husk-agent --listen-unix ... --stdio-unix-prefix ...`)
//! and mounts the root's disks through loop devices (the host kernel reads the erofs
//! layers husk built and the scratch disk; the agent here is husk's own, not a guest) and
//! the shared directory where it is. Everything above the backend (the
//! CLI, the sandbox, stdio, the protocol) is the same as with a VM, so the whole
//! lifecycle can be tested on a host whose KVM cannot boot Linux. Needs root.
//!
//! The agent runs in a pid and mount namespace of its own, under a tiny init
//! (`husk sandbox-agent-init`) that dies with the sandbox (parent-death signal): when
//! the sandbox ends, however it ends, the kernel kills everything the agent started and
//! drops its mounts, as the end of a VM would.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::backend::{Backend, GuestSpec};
use super::loopdev::LoopDevice;
use crate::agent::AgentAddress;
use crate::procfs;

const CONTROL: &str = "agent.sock";
const STDIO_PREFIX: &str = "vsock.sock";
/// File in the state directory naming the cgroup directory the agent's containers use,
/// so that `delete` can remove it after a sandbox that was killed.
const CGROUP_RECORD: &str = "cgroup-root";

/// The agent as a host process.
pub struct ProcessBackend {
    init_pid: i32,
    /// Why the init ended, once it has.
    exit: Arc<(Mutex<Option<String>>, Condvar)>,
    devices: Vec<LoopDevice>,
    dir: PathBuf,
    shared_dir: Option<PathBuf>,
}

/// The agent binary: `HUSK_AGENT_BIN`, else `husk-agent` beside husk, else on PATH.
fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_AGENT_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("husk-agent")))
        .filter(|p| p.is_file())
    {
        return Ok(beside);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("husk-agent"))
        .find(|p| p.is_file())
        .context("husk-agent not found (set HUSK_AGENT_BIN)")
}

impl ProcessBackend {
    /// Attaches the image and starts the agent.
    pub fn start(spec: &GuestSpec<'_>) -> Result<Self> {
        if spec.nets.iter().any(|n| n.tap.is_some()) {
            bail!("the process backend has no network devices: it cannot carry interfaces");
        }
        let agent = agent_binary()?;
        // The agent gets plain paths (it cannot use this process's short ones).
        let control = spec.dir.join(CONTROL);
        if control.as_os_str().len() > 90 {
            bail!(
                "state directory {} is too deep for the process backend's sockets",
                spec.dir.display()
            );
        }
        let devices = spec
            .disks
            .iter()
            .map(|d| LoopDevice::attach(&d.path, d.readonly))
            .collect::<Result<Vec<_>>>()?;
        let log = File::create(spec.dir.join("agent.log")).context("creating agent.log")?;
        // The containers' cgroups go in a directory of this sandbox's own in the host's
        // cgroup2 hierarchy (a guest has the whole hierarchy to itself).
        let cgroup_root =
            cgroup2_mount().map(|m| m.join(format!("husk-sandbox-{}", std::process::id())));
        if let Some(c) = &cgroup_root {
            std::fs::write(
                spec.dir.join(CGROUP_RECORD),
                c.as_os_str().as_encoded_bytes(),
            )
            .context("recording the agent's cgroup directory")?;
        }
        let mut cmd = Command::new(std::env::current_exe().context("finding husk")?);
        cmd.arg("sandbox-agent-init")
            .arg("--")
            .arg(&agent)
            .arg("--listen-unix")
            .arg(&control)
            .arg("--stdio-unix-prefix")
            .arg(spec.dir.join(STDIO_PREFIX))
            .arg("--roots-dir")
            .arg(spec.dir.join("roots"))
            .arg("--containers-dir")
            .arg(spec.dir.join("containers"))
            .arg("--cgroup-root")
            .arg(
                cgroup_root
                    .as_deref()
                    .unwrap_or(std::path::Path::new("/sys/fs/cgroup")),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: the closure only makes async-signal-safe system calls (prctl, unshare,
        // mount) in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                Ok(())
            });
        }
        // A thread of its own starts the init and waits for it: after
        // unshare(CLONE_NEWPID) a thread may fork (its next child is pid 1 of the new
        // namespace) but no longer start threads, and the parent-death signal follows
        // this thread, which lives as long as the init does.
        let exit = Arc::new((Mutex::new(None), Condvar::new()));
        let (pid_tx, pid_rx) = mpsc::channel();
        let for_thread = exit.clone();
        std::thread::Builder::new()
            .name("agent-parent".into())
            .spawn(move || {
                let spawned = unshare(CloneFlags::CLONE_NEWPID)
                    .context("creating a pid namespace for the agent")
                    .and_then(|()| cmd.spawn().context("starting husk-agent"));
                let mut child = match spawned {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                };
                let _ = pid_tx.send(Ok(child.id() as i32));
                let status = match child.wait() {
                    Ok(s) => format!("the agent process ended ({s})"),
                    Err(e) => format!("the agent process is gone ({e})"),
                };
                let (lock, cvar) = &*for_thread;
                *lock.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                cvar.notify_all();
            })
            .context("starting the agent's parent thread")?;
        let init_pid = pid_rx.recv().context("the agent's parent thread ended")??;
        Ok(Self {
            init_pid,
            exit,
            devices,
            dir: spec.dir.clone(),
            shared_dir: spec.shared_dir.clone(),
        })
    }

    fn signal_all(&self, sig: Signal) {
        for pid in procfs::descendants(self.init_pid) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

impl Backend for ProcessBackend {
    fn agent_address(&self) -> AgentAddress {
        AgentAddress::Unix {
            dir: self.dir.clone(),
            control: CONTROL.into(),
            stdio_prefix: STDIO_PREFIX.into(),
        }
    }

    fn disk_devices(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.path().to_owned()).collect()
    }

    fn shared(&self) -> Option<husk_protocol::SharedDir> {
        // The agent's mount namespace is a copy of this one: the shares are there already.
        self.shared_dir.as_ref().map(|d| husk_protocol::SharedDir {
            tag: None,
            path: d.display().to_string(),
        })
    }

    fn ended(&self, timeout: Duration) -> Option<String> {
        let (lock, cvar) = &*self.exit;
        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |e| e.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.clone()
    }

    fn pause(&self) -> Result<()> {
        self.signal_all(Signal::SIGSTOP);
        Ok(())
    }

    fn resume(&self) -> Result<()> {
        self.signal_all(Signal::SIGCONT);
        Ok(())
    }

    fn stop(&self) {
        if self.ended(Duration::ZERO).is_none() {
            // The init is our child and has not been reaped, so the pid is still its.
            let _ = kill(Pid::from_raw(self.init_pid), Signal::SIGKILL);
        }
    }

    fn teardown(&self) {
        self.stop();
        // The namespace's mounts go with its last process; the cgroup directory can go
        // once the namespace is empty.
        let _ = self.ended(Duration::from_secs(10));
        remove_leftovers(&self.dir);
    }

    fn name(&self) -> &'static str {
        "process"
    }

    /// Stopping, freezing and thawing the agent's processes (found through /proc),
    /// reaping them, and removing their cgroup directory.
    fn seccomp_extra(&self) -> husk_vmm::seccomp::Allowlist {
        let mut l = husk_vmm::seccomp::Allowlist::new();
        l.allow(&[
            libc::SYS_kill,
            libc::SYS_wait4,
            libc::SYS_waitid,
            libc::SYS_openat,
            libc::SYS_getdents64,
            libc::SYS_rmdir,
            libc::SYS_unlinkat,
        ]);
        l
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `husk sandbox-agent-init -- AGENT ARGS...`: pid 1 of the agent's pid namespace. It
/// gives the namespace its own /proc, runs the agent, reaps orphans, and exits with the
/// agent; the kernel then kills whatever is left in the namespace.
pub fn agent_init_main(argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("husk sandbox-agent-init: no agent command");
        return 2;
    };
    let _ = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    let child = match Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk sandbox-agent-init: starting {program}: {e}");
            return 127;
        }
    };
    let agent = Pid::from_raw(child.id() as i32);
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(pid, code)) if pid == agent => return code,
            Ok(nix::sys::wait::WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                return 128 + sig as i32
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
    }
}

/// Where this host mounts a cgroup v2 hierarchy, if anywhere.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Removes what a process-backend sandbox leaves outside its state directory (the
/// cgroup directory of its agent), once its processes are gone. Called by the sandbox
/// itself and by `delete` for a sandbox that was killed.
pub fn remove_leftovers(state_dir: &std::path::Path) {
    let Ok(recorded) = std::fs::read(state_dir.join(CGROUP_RECORD)) else {
        return;
    };
    let root = PathBuf::from(String::from_utf8_lossy(&recorded).into_owned());
    if !root.is_absolute() || !root.exists() {
        return;
    }
    // Anything still in it (nothing should be: the pid namespace is gone) is killed.
    let _ = std::fs::write(root.join("cgroup.kill"), "1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut dirs = vec![root.clone()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
            dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        i += 1;
    }
    // Deepest first.
    for dir in dirs.iter().rev() {
        while std::fs::remove_dir(dir).is_err()
            && dir.exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(state_dir.join(CGROUP_RECORD));
}
