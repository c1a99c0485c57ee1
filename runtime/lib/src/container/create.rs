//! Create: boot the container's microVM and create its process, stopped before it runs
//! the user's program.
//!
//! The work happens in the sandbox process (see [`crate::sandbox`]), which `create`
//! starts as its child and waits for on a pipe; the sandbox's pid goes in `--pid-file`.
//! `create` holds the container's lock throughout, and on any failure it stops the
//! sandbox, reaps it and removes the state directory, so a failed create leaves nothing
//! behind: no process, state directory, image or socket.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use oci_spec::runtime::ContainerState;

use crate::bundle::Bundle;
use crate::globals::Globals;
use crate::hooks::{self, Phase};
use crate::network::{self, NetnsRecord, NetnsSpec, NetworkPlan, NetworkRecord};
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
    let netns = network::netns_spec(&bundle.spec)?;
    let join = match &netns {
        NetnsSpec::Join(path) => Some(network::open_join_path(path)?),
        NetnsSpec::New => None,
    };
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
    let mut sandbox = spawn_sandbox(
        &globals,
        opts,
        &bundle,
        terminal,
        join.as_ref(),
        lock.as_raw_fd(),
    )?;
    drop(join);
    let pid = sandbox.child.id() as i32;
    rec.oci.set_pid(Some(pid));
    rec.husk.sandbox_start_time = procfs::start_time(pid);
    let prepared = rec
        .save(&dir.state_file())
        .and_then(|()| prepare_network(&bundle, &netns, &dir, &mut rec, &mut sandbox));
    let outcome = prepared.and_then(|()| sandbox.wait_ready(create_timeout()));
    let outcome = match outcome {
        Ok(Readiness::Ready { agent, backend }) => {
            // In the guest the container exists; createContainer hooks run on the host
            // (see crate::hooks).
            hooks::run(
                &bundle.spec,
                Phase::CreateContainer,
                &rec.hook_state(ContainerState::Creating),
            )
            .map(|()| (agent, backend))
        }
        Ok(Readiness::Failed { message }) => {
            sandbox.kill_and_reap(Duration::from_secs(30));
            Err(anyhow::anyhow!("{message}"))
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok((agent, backend)) => {
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
                super::delete::release(&dir, &rec, Some(&bundle.spec));
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
        Err(e) => {
            // Nothing may stay: the sandbox, the plumbing, the state (the guard); and the
            // runtime spec wants poststop hooks after a failed create, as runc runs them.
            sandbox.kill_and_reap(Duration::ZERO);
            super::delete::release(&dir, &rec, Some(&bundle.spec));
            Err(e)
        }
    }
}

/// With the sandbox in its network namespace: runs the prestart and createRuntime hooks
/// (which may configure that namespace), carries its interfaces to taps, records what was
/// done, and sends the sandbox the plan and the taps.
fn prepare_network(
    bundle: &Bundle,
    netns: &NetnsSpec,
    dir: &ContainerDir,
    rec: &mut ContainerRecord,
    sandbox: &mut SpawnedSandbox,
) -> Result<()> {
    let pid = sandbox.child.id() as i32;
    let ns = network::netns_of_pid(pid)?;
    rec.husk.network = Some(NetworkRecord {
        netns: match netns {
            NetnsSpec::Join(path) => NetnsRecord::Joined { path: path.clone() },
            NetnsSpec::New => NetnsRecord::Own {
                inode: network::inode_of(ns.as_fd()).unwrap_or_default(),
            },
        },
        carried: Vec::new(),
        spare_slots: 0,
    });
    rec.save(&dir.state_file())?;
    let state = rec.hook_state(ContainerState::Creating);
    hooks::run(&bundle.spec, Phase::Prestart, &state)?;
    hooks::run(&bundle.spec, Phase::CreateRuntime, &state)?;
    let plumbed = network::plumb(ns.as_fd(), &[], None)?;
    let plan = NetworkPlan::for_create(&plumbed);
    if let Some(n) = rec.husk.network.as_mut() {
        n.carried = plumbed.carried.clone();
        n.spare_slots = plan.devices.iter().filter(|d| !d.tap).count();
    }
    rec.save(&dir.state_file())?;
    let fds: Vec<i32> = plumbed.taps.iter().map(|t| t.as_raw_fd()).collect();
    if let Err(e) = crate::fdpass::send_frame(&sandbox.channel, &plan, &fds) {
        // The sandbox is gone: its readiness line (next) says why.
        tracing::debug!("handing the network to the sandbox: {e:#}");
    }
    Ok(())
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
    /// Plan and taps go in, readiness lines come out.
    channel: UnixStream,
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
    join: Option<&OwnedFd>,
    lock_fd: RawFd,
) -> Result<SpawnedSandbox> {
    let (ours, theirs) = UnixStream::pair().context("creating the sandbox's channel")?;
    let write_fd = theirs.as_raw_fd();
    let join_fd = join.map(network::raw);
    let mut cmd = Command::new(crate::globals::husk_binary()?);
    cmd.args(g.to_args())
        .arg("sandbox")
        .arg("--id")
        .arg(opts.id)
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg("--ready-fd")
        .arg(write_fd.to_string())
        .arg("--lock-fd")
        .arg(lock_fd.to_string());
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
    // SAFETY: fcntl, setns and unshare are async-signal-safe; the closure clears
    // close-on-exec on the sandbox's end of the channel so that it inherits it, and puts
    // the sandbox in the container's network namespace (joined, or a new one).
    unsafe {
        cmd.pre_exec(move || {
            for fd in [write_fd, lock_fd] {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            network::enter_in_child(join_fd)
        });
    }
    let child = cmd.spawn().context("starting the sandbox process")?;
    drop(theirs);
    Ok(SpawnedSandbox {
        child,
        channel: ours,
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
            let mut fds = [PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for the sandbox"),
                Ok(0) => bail!("the sandbox was not ready within {timeout:?}"),
                Ok(_) => break,
            }
        }
        let mut line = String::new();
        BufReader::new(&self.channel)
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
