//! Create: boot the container's microVM and create its process, stopped before it runs
//! the user's program.
//!
//! The work happens in the sandbox process (see [`crate::sandbox`]), which `create`
//! starts as its child and waits for on a pipe; the sandbox's pid goes in `--pid-file`.
//! `create` holds the container's lock throughout, and on any failure it stops the
//! sandbox, reaps it and removes the state directory, so a failed create leaves nothing
//! behind: no process, state directory, image or socket.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::bundle::Bundle;
use crate::globals::Globals;
use crate::procfs;
use crate::sandbox::cgroup::CgroupPlace;
use crate::sandbox::Readiness;
use crate::state::{ContainerDir, ContainerLock, ContainerRecord, Status};

/// What `create` and `run` ask for.
pub struct CreateOptions<'a> {
    /// The container id.
    pub id: &'a str,
    /// The bundle directory.
    pub bundle: &'a Path,
    /// `--pid-file`.
    pub pid_file: Option<&'a Path>,
    /// `--console-socket`.
    pub console_socket: Option<&'a Path>,
    /// `--preserve-fds`.
    pub preserve_fds: i32,
    /// `run` in the foreground: a terminal may use husk's own stdio.
    pub foreground: bool,
    /// The container's stdin, stdout and stderr, if not this process's own (the shim
    /// passes containerd's fifos; without a terminal they are the container's stdio).
    pub stdio: Option<[OwnedFd; 3]>,
}

/// A created container: its sandbox process (a child of this process) and its lock.
pub struct Created {
    /// The sandbox.
    pub sandbox: Child,
    /// The container's directory.
    pub dir: ContainerDir,
    /// Held until dropped.
    pub lock: ContainerLock,
}

/// Creates the container; on failure nothing is left behind.
pub fn create(g: &Globals, opts: &CreateOptions<'_>) -> Result<Created> {
    crate::state::id::validate(opts.id)?;
    let span = tracing::info_span!("create", id = opts.id);
    let _entered = span.enter();
    if opts.preserve_fds > 0 {
        bail!("--preserve-fds is not supported: descriptors cannot be passed into a microVM");
    }
    let bundle = Bundle::load(opts.bundle)?;
    let terminal = bundle.terminal();
    match (terminal, opts.console_socket) {
        (true, None) if !opts.foreground => {
            bail!("process.terminal is set but no --console-socket was given to receive the pty")
        }
        (false, Some(_)) => bail!("--console-socket needs process.terminal in config.json"),
        _ => {}
    }

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&g.root)
        .with_context(|| format!("creating the state root {}", g.root.display()))?;
    let root = std::fs::canonicalize(&g.root)?;
    let dir = ContainerDir::new(&root, opts.id)?;
    match std::fs::DirBuilder::new().mode(0o711).create(dir.path()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container {:?} already exists", opts.id)
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.path().display())),
    }
    let mut guard = RemoveOnFailure(Some((dir.clone(), None)));
    let lock = dir.lock()?;
    let mut rec = ContainerRecord::new(opts.id, &bundle.dir, &bundle.rootfs, bundle.annotations());
    // The sandbox of a microVM joins the container's host cgroup (the test-only process
    // backend's agent manages cgroups of its own on the host).
    if crate::sandbox::backend::kind()? == crate::sandbox::backend::Kind::Vm {
        let place = CgroupPlace::for_container(&bundle, opts.id, g.systemd_cgroup);
        guard.0 = Some((dir.clone(), Some(place.clone())));
        rec.husk.cgroup = Some(place);
    }
    rec.save(&dir.state_file())?;
    crate::state::record::write_private(&dir.config_copy(), &serde_json::to_vec(&bundle.raw)?)
        .context("saving a copy of config.json")?;

    let globals = Globals {
        root: root.clone(),
        ..g.clone()
    };
    let mut sandbox = spawn_sandbox(&globals, opts, &bundle, terminal)?;
    let pid = sandbox.child.id() as i32;
    rec.oci.set_pid(Some(pid));
    rec.husk.sandbox_start_time = procfs::start_time(pid);
    let outcome = rec
        .save(&dir.state_file())
        .and_then(|()| sandbox.wait_ready(create_timeout()));
    match outcome {
        Ok(Readiness::Ready { agent, backend }) => {
            rec.husk.agent = Some(agent);
            rec.husk.backend = backend;
            rec.set_status(Status::Created);
            let recorded = rec
                .save(&dir.state_file())
                .and_then(|()| match opts.pid_file {
                    Some(p) => super::write_pid_file(p, pid),
                    None => Ok(()),
                });
            if let Err(e) = recorded {
                sandbox.kill_and_reap(Duration::ZERO);
                return Err(e);
            }
            guard.0 = None;
            tracing::info!(pid, "created");
            Ok(Created {
                sandbox: sandbox.child,
                dir,
                lock,
            })
        }
        Ok(Readiness::Failed { message }) => {
            sandbox.kill_and_reap(Duration::from_secs(30));
            bail!("{message}")
        }
        Err(e) => {
            sandbox.kill_and_reap(Duration::ZERO);
            Err(e)
        }
    }
}

/// Removes a half-created container's directory and host cgroup unless disarmed (the
/// sandbox is reaped by then).
struct RemoveOnFailure(Option<(ContainerDir, Option<CgroupPlace>)>);

impl Drop for RemoveOnFailure {
    fn drop(&mut self) {
        if let Some((dir, cgroup)) = self.0.take() {
            if let Some(c) = cgroup {
                if let Err(e) = c.remove(dir.id()) {
                    tracing::warn!("{e:#}");
                }
            }
            let _ = dir.remove();
        }
    }
}

struct SpawnedSandbox {
    child: Child,
    ready: File,
}

fn create_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("HUSK_CREATE_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

fn spawn_sandbox(
    g: &Globals,
    opts: &CreateOptions<'_>,
    bundle: &Bundle,
    terminal: bool,
) -> Result<SpawnedSandbox> {
    let (read, write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("creating the readiness pipe")?;
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(crate::globals::husk_binary()?);
    cmd.args(g.to_args())
        .arg("sandbox")
        .arg("--id")
        .arg(opts.id)
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg("--ready-fd")
        .arg(write_fd.to_string());
    if let Some([stdin, stdout, stderr]) = &opts.stdio {
        cmd.stdin(stdin.try_clone()?)
            .stdout(stdout.try_clone()?)
            .stderr(stderr.try_clone()?);
    }
    if let Some(s) = opts.console_socket {
        cmd.arg("--console-socket").arg(absolute(s)?);
    } else if terminal {
        cmd.arg("--own-terminal");
    }
    // SAFETY: fcntl is async-signal-safe; the closure only clears close-on-exec on the
    // pipe's write end so that the sandbox inherits it.
    unsafe {
        cmd.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(write_fd);
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the sandbox process")?;
    drop(write);
    Ok(SpawnedSandbox {
        child,
        ready: File::from(read),
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

impl SpawnedSandbox {
    /// Waits for the sandbox's one line; a sandbox that dies without one is an error.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Readiness> {
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        loop {
            let mut fds = [PollFd::new(self.ready.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for the sandbox"),
                Ok(0) => bail!("the sandbox was not ready within {timeout:?}"),
                Ok(_) => break,
            }
        }
        let mut line = String::new();
        BufReader::new(&self.ready)
            .read_line(&mut line)
            .context("reading from the sandbox")?;
        if line.trim().is_empty() {
            let status = self.child.wait()?;
            bail!("the sandbox process ended before the container was created ({status})");
        }
        serde_json::from_str(line.trim()).context("reading the sandbox's readiness line")
    }

    /// Ends a sandbox that failed, giving it `grace` to exit by itself (after reporting
    /// a failure it releases everything and exits), and reaps it.
    fn kill_and_reap(&mut self, grace: Duration) {
        let deadline = std::time::Instant::now() + grace;
        while let Ok(None) = self.child.try_wait() {
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}
