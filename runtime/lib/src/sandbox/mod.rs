//! The sandbox process: `husk sandbox`, started by `create` the way runc starts
//! `runc init`, and from then on the container as far as the host can see.
//!
//! It mounts the container's shares (see [`crate::shares`]), gets its root's layer images
//! and scratch disk (see [`crate::rootfs`]), boots the container's microVM, connects to
//! the guest agent, has it create the container (the process exists, stopped before
//! `execve`), serves the control socket, and only then tells `create` it is ready, over
//! a pipe. Its pid is the one in `--pid-file` and in `state`, and its exit status is the
//! container's (128+N when a signal N killed it), so the runc shim, conmon and dockerd
//! reap it as they would reap runc's container process. It inherits `create`'s stdio and
//! relays it to the guest (or a pty, see [`crate::stdio`]); signals it receives
//! (SIGTERM, SIGINT, SIGHUP, ...) are passed on to the container's process. When that
//! process exits, the sandbox flushes stdio, has the agent write the container's root
//! changes back to the bundle (as runc leaves them there), powers the guest off,
//! unmounts the shares and exits.

pub mod backend;
pub mod cgroup;
pub mod confine;
pub mod jail;
mod loopdev;
pub mod process_backend;
pub mod vm_backend;

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use husk_protocol::{
    ContainerRequest, ContainerRoot, ExitStatus, LayeredRoot, Request, Response, RootDisk,
};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::agent::{expect_ok, start_process, AgentAddress, AgentEndpoint, AgentMux};
use crate::bundle::Bundle;
use crate::control::{self, ControlRequest, ControlResponse};
use crate::globals::Globals;
use crate::network::NetworkPlan;
use crate::rootfs::RootLayers;
use crate::shares::Shares;
use crate::state::{ContainerDir, Status};
use crate::stdio::{window_size, IoMode, ProcessIo, Relays, StdioListener};
use backend::{Backend, GuestDisk, GuestSpec, NetDevice};

/// Host vsock port the agent connects the container's stdio streams to.
const CONTAINER_STDIO_PORT: u32 = 2000;
/// How long output may keep flowing after the container's process has exited.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// After `kill KILL`, how long the guest has to end the container before the host ends
/// the VM itself: SIGKILL must not depend on a guest that obeys.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Options of the hidden `husk sandbox` command (only `create` runs it).
#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// The container id.
    #[arg(long)]
    pub id: String,
    /// The bundle directory (absolute).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The descriptor to report readiness on.
    #[arg(long)]
    pub ready_fd: i32,
    /// The container's lock, held by `create`: the sandbox keeps it held until it has
    /// reported, so that a `delete` after `create` was killed waits for the sandbox to
    /// finish or give up instead of racing it for the state directory.
    #[arg(long)]
    pub lock_fd: Option<i32>,
    /// Send a pty master here; relay its slave to the container's terminal.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Use this process's own stdin and stdout as the container's terminal.
    #[arg(long)]
    pub own_terminal: bool,
}

/// The one line the sandbox writes on the readiness pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// The container exists, stopped before exec.
    Ready {
        /// How to reach the agent (for `exec`).
        agent: AgentAddress,
        /// The backend's name.
        backend: String,
    },
    /// Creation failed; the sandbox has released everything and exits.
    Failed {
        /// One line for the user.
        message: String,
    },
}

/// How the container ended.
enum Ended {
    /// Its process exited.
    Exited(ExitStatus),
    /// The VM was stopped under it (SIGKILL of a paused container): this status.
    Killed(i32),
    /// The guest or the agent went away.
    Lost(String),
}

/// Runs the sandbox; returns its exit status.
pub fn main(globals: &Globals, args: SandboxArgs) -> i32 {
    // SAFETY: `create` passed this socket for this process alone.
    let mut ready = unsafe { UnixStream::from_raw_fd(args.ready_fd) };
    // SAFETY: as above, `create` passed its lock's descriptor for this process alone.
    let lock = args.lock_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some(fd) = &lock {
        // Not for anything the sandbox starts: they would keep the container locked.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let signals = crate::signal::block_forwarded();
    // Hold no directory of the caller's busy.
    let _ = std::env::set_current_dir("/");
    let span = tracing::info_span!("sandbox", id = %args.id);
    let _entered = span.enter();
    let sandbox = match confine::set_rlimits().and_then(|()| Sandbox::setup(globals, &args, &ready))
    {
        Ok(s) => s,
        Err(e) => {
            let message = crate::logging::one_line(&format!("{e:#}"));
            // `create` reports it (on stderr and in the log); once is enough.
            tracing::debug!("create failed: {message}");
            let _ = write_readiness(&mut ready, &Readiness::Failed { message });
            drop(lock);
            return 1;
        }
    };
    let readiness = Readiness::Ready {
        agent: sandbox.shared.backend.agent_address(),
        backend: sandbox.shared.backend.name().to_owned(),
    };
    if let Err(e) = write_readiness(&mut ready, &readiness) {
        // `create` is gone: nobody would ever start, kill or reap this container.
        tracing::error!("create went away before the container was ready: {e}");
        sandbox.shared.backend.teardown();
        drop(lock);
        return 1;
    }
    drop(ready);
    // Closed, not unlocked: `create` still holds the lock (the same open file) until it
    // has recorded the container.
    drop(lock);
    sandbox.run(signals)
}

fn write_readiness(pipe: &mut UnixStream, r: &Readiness) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    pipe.write_all(&line)
}

/// What the control socket, the signal thread and the main thread share.
struct Shared {
    id: String,
    status: Mutex<Status>,
    agent: Arc<AgentMux>,
    backend: Box<dyn Backend>,
    ended: Mutex<Sender<Ended>>,
    /// The host terminal whose size the guest's terminal follows.
    size_fd: Option<OwnedFd>,
    /// Control requests being handled.
    control_busy: Arc<control::Busy>,
    /// Started with `HUSK_TEST_SECCOMP_VIOLATION=1`: honour
    /// [`ControlRequest::TestSeccompViolation`].
    test_violation: bool,
}

struct Sandbox {
    shared: Arc<Shared>,
    io: ProcessIo,
    relays: Relays,
    ended: Receiver<Ended>,
    /// The shares, in the jail: their mounts end with the sandbox's mount namespace.
    _shares: Shares,
    /// Held (open and locked) while the VM reads them.
    _root: RootLayers,
}

fn seconds_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

impl Sandbox {
    fn setup(globals: &Globals, args: &SandboxArgs, create: &UnixStream) -> Result<Self> {
        let dir = ContainerDir::new(&globals.root, &args.id)?;
        let bundle = Bundle::load(&args.bundle)?;
        let kind = backend::kind()?;
        confine::record_violations_in(&globals.log)?;
        if kind == backend::Kind::Vm {
            // Before guest memory exists, so that all of it is charged there; before the
            // cgroup namespace, whose root this cgroup becomes.
            cgroup::CgroupPlace::for_container(&bundle, &args.id, globals.systemd_cgroup)
                .join(&args.id, &bundle)?;
        }
        // Still single-threaded: namespaces apply to every thread to come. The process
        // backend's agent manages cgroups of the host's and keeps the host's cgroup view.
        confine::enter_namespaces(kind == backend::Kind::Vm, bundle.hostname())?;
        // From here on the working directory is the jail, and what the sandbox makes there
        // is named relative to it (the names stay valid once it is the root).
        let jail = jail::Jail::prepare(&dir.jail())?;
        let mode = match (&args.console_socket, args.own_terminal) {
            (Some(s), _) => IoMode::ConsoleSocket(s.clone()),
            (None, true) => IoMode::OwnTerminal,
            (None, false) => IoMode::Pipes,
        };
        let mut io = ProcessIo::prepare(mode)?;
        io.release_caller_stdio()?;

        let started = Instant::now();
        // In the jail: its mount namespace keeps them once it is the root (the old root
        // goes, and with it every path out of the jail).
        let mut shares = Shares::setup(
            jail.dir(),
            &bundle
                .shares
                .iter()
                .map(|(_, s)| s.clone())
                .collect::<Vec<_>>(),
            Some(bundle.rootfs.as_path()),
        )?;
        // The mounts are the sandbox's own mount namespace's and go with it: nothing to
        // unmount at the end, when the control role's filter forbids it anyway (and a
        // jailed sandbox no longer reaches them by path).
        shares.leave_to_namespace();
        let root = crate::rootfs::prepare(&bundle.rootfs, dir.path())?;
        let mut disks: Vec<GuestDisk> = root
            .layers
            .iter()
            .map(|l| GuestDisk {
                path: l.fd_path(),
                readonly: true,
            })
            .collect();
        if let Some(scratch) = &root.scratch {
            disks.push(GuestDisk {
                path: scratch.clone(),
                readonly: false,
            });
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "shares and root ready"
        );

        // The network: `create` ran the hooks that set it up and made the taps.
        let (plan, taps): (NetworkPlan, Vec<OwnedFd>) =
            crate::fdpass::recv_frame(create).context("receiving the network plan")?;
        let mut taps = taps.into_iter();
        let mut nets = Vec::new();
        for d in &plan.devices {
            let tap = if d.tap {
                Some(taps.next().context("the network plan lacks a tap")?)
            } else {
                None
            };
            nets.push(NetDevice {
                mac: d.mac,
                mtu: d.mtu,
                tap,
            });
        }
        let backend = backend::start(&GuestSpec {
            dir: jail.dir().to_owned(),
            jail: &jail,
            disks,
            shared_dir: Some(shares.shared_dir()),
            memory_mib: bundle.memory_mib(),
            vcpus: bundle.vcpus(),
            debug: globals.log.debug,
            nets,
        })?;
        // The guest runs (its VM threads under their own filters): from here on this thread
        // and every thread it starts is the control role.
        confine::install_control_filter(&backend.seccomp_extra())?;
        let endpoint = AgentEndpoint::open(&backend.agent_address().in_dir(Path::new(".")))?;
        let deadline = Instant::now() + seconds_from_env("HUSK_BOOT_TIMEOUT", 120);
        let hint = if globals.log.debug {
            format!(
                "; the guest's console is in {}",
                jail.dir().join(ContainerDir::CONSOLE_LOG).display()
            )
        } else {
            "; run with --debug to keep the guest's console log".into()
        };
        let client = endpoint.connect(deadline, || match backend.ended(Duration::ZERO) {
            Some(why) => bail!("the guest ended before its agent answered: {why}{hint}"),
            None => Ok(()),
        })?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "agent connected");
        let agent = AgentMux::new(client)?;

        let stdio = StdioListener::bind(&endpoint.stdio_prefix(), CONTAINER_STDIO_PORT)?;
        let control = UnixListener::bind(ContainerDir::CONTROL_SOCKET)
            .context("listening on the control socket")?;

        let shared_dir = backend
            .shared()
            .context("the guest has no shared directory")?;
        let devices = backend.disk_devices();
        let layer_count = root.layers.len();
        let disk = |device: &String, fstype: &str, readonly| RootDisk {
            device: device.clone(),
            fstype: fstype.into(),
            readonly,
        };
        let request = Request::CreateContainer(ContainerRequest {
            container_id: args.id.clone(),
            spec: bundle.guest_spec(&shared_dir.path),
            root: ContainerRoot::Layers(LayeredRoot {
                lowers: devices[..layer_count]
                    .iter()
                    .map(|d| disk(d, "erofs", true))
                    .collect(),
                scratch: devices.get(layer_count).map(|d| disk(d, "ext4", false)),
                overlay_options: root.overlay_options.clone(),
                commit_to: Some(format!(
                    "{}/{}",
                    shared_dir.path,
                    crate::shares::ROOTFS_SHARE
                )),
            }),
            stdio: io.spec(CONTAINER_STDIO_PORT),
            shared: Some(shared_dir),
        });
        let (guest_pid, streams) = start_process(
            &agent,
            &stdio,
            &args.id,
            &io.wanted(),
            request,
            "creating the container in the guest",
        )?;
        tracing::debug!(guest_pid, "container created");
        if !plan.interfaces.is_empty() {
            let resp = agent.call_timeout(
                Request::ConfigureNetwork {
                    container_id: args.id.clone(),
                    interfaces: plan.interfaces,
                },
                Duration::from_secs(30),
            )?;
            expect_ok(resp, "configuring the container's network in the guest")?;
        }
        // The container's streams are connected: nothing else may connect to its stdio
        // port (a guest could otherwise open connections there without end).
        drop(stdio);
        let relays = io.relay(streams)?;

        let (ended_tx, ended) = mpsc::channel();
        let shared = Arc::new(Shared {
            id: args.id.clone(),
            status: Mutex::new(Status::Created),
            agent: agent.clone(),
            backend,
            ended: Mutex::new(ended_tx.clone()),
            size_fd: io.size_fd(),
            control_busy: Arc::default(),
            test_violation: std::env::var_os("HUSK_TEST_SECCOMP_VIOLATION")
                .is_some_and(|v| v == "1"),
        });
        if io.terminal() {
            if let Some((rows, cols)) = io.window_size() {
                shared.resize(rows, cols);
            }
            io.take_controlling_terminal();
        }

        let wait = agent.submit(Request::Wait {
            exec_id: args.id.clone(),
        })?;
        std::thread::Builder::new()
            .name("wait".into())
            .spawn(move || {
                let ended = match wait.wait() {
                    Ok(Response::Exited { status }) => Ended::Exited(status),
                    Ok(other) => Ended::Lost(format!("unexpected answer to wait: {other:?}")),
                    Err(e) => Ended::Lost(format!("{e:#}")),
                };
                let _ = ended_tx.send(ended);
            })?;
        let handler_shared = shared.clone();
        let busy = shared.control_busy.clone();
        std::thread::Builder::new()
            .name("control-server".into())
            .spawn(move || {
                control::serve(
                    control,
                    Arc::new(move |r, fds| handler_shared.handle(r, fds)),
                    busy,
                )
            })?;
        Ok(Self {
            shared,
            io,
            relays,
            ended,
            _shares: shares,
            _root: root,
        })
    }

    /// Serves until the container ends; returns the exit status.
    fn run(mut self, signals: nix::sys::signal::SigSet) -> i32 {
        let for_signals = self.shared.clone();
        crate::signal::spawn_handler(signals, move |sig| for_signals.on_signal(sig));

        let ended = loop {
            match self.ended.recv_timeout(Duration::from_millis(200)) {
                Ok(e) => break e,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(why) = self.shared.backend.ended(Duration::ZERO) {
                        break Ended::Lost(why);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break Ended::Lost("no waiter".into()),
            }
        };
        *self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Status::Stopped;
        let code = match ended {
            Ended::Exited(status) => {
                if !self.relays.finish(FLUSH_TIMEOUT) {
                    tracing::warn!("the container's output did not end within {FLUSH_TIMEOUT:?}");
                }
                self.shared.commit_root();
                // Power the guest off; it answers first.
                let _ = self
                    .shared
                    .agent
                    .call_timeout(Request::Shutdown, Duration::from_secs(10));
                if self.shared.backend.ended(Duration::from_secs(30)).is_none() {
                    tracing::warn!("the guest did not power off within 30 s; stopping it");
                }
                status.shell_code()
            }
            Ended::Killed(code) => code,
            Ended::Lost(why) => {
                tracing::error!("the container's guest went away: {why}");
                255
            }
        };
        // A `kill` may be waiting for the end it caused: answer it before exiting.
        self.shared.control_busy.wait_idle(Duration::from_secs(5));
        self.shared.backend.teardown();
        self.shared.agent.close();
        self.io.restore();
        code
    }
}

impl Shared {
    /// Has the agent write the stopped container's root changes back to the bundle.
    /// Failing leaves the changes unwritten, which is logged; the container's exit status
    /// stands.
    fn commit_root(&self) {
        let started = Instant::now();
        let timeout = seconds_from_env("HUSK_COMMIT_TIMEOUT", 600);
        let req = Request::CommitRoot {
            container_id: self.id.clone(),
        };
        match self.agent.call_timeout(req, timeout) {
            Ok(Response::Committed { changes, skipped }) => {
                tracing::info!(
                    changes,
                    skipped = skipped.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "root changes written back to the bundle"
                );
                for s in skipped {
                    tracing::warn!("not written back to the bundle's root: {s}");
                }
            }
            Ok(Response::Error { message }) => {
                tracing::error!("writing the root's changes back to the bundle: {message}")
            }
            Ok(other) => tracing::error!("unexpected answer to commit: {other:?}"),
            Err(e) => tracing::error!("writing the root's changes back to the bundle: {e:#}"),
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let _ = self.agent.post(Request::Resize {
            exec_id: self.id.clone(),
            rows,
            cols,
        });
    }

    fn on_signal(&self, sig: Signal) {
        if sig == Signal::SIGWINCH {
            let size = self.size_fd.as_ref().and_then(|fd| window_size(fd.as_fd()));
            if let Some((rows, cols)) = size {
                self.resize(rows, cols);
            }
            return;
        }
        let status = *self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status != Status::Stopped {
            tracing::debug!(signal = %sig, "passing a signal on to the container");
            let _ = self.agent.post(Request::Signal {
                exec_id: self.id.clone(),
                signal: sig as i32,
                all: false,
            });
        }
    }

    /// Ends the VM under the container, which then counts as killed by SIGKILL.
    fn kill_vm(&self) {
        // The reason goes first: the main loop must not see the VM end without it.
        let _ = self
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Ended::Killed(128 + Signal::SIGKILL as i32));
        self.backend.stop();
    }

    /// Waits up to `timeout` for the container to be recorded stopped.
    fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if *self.status.lock().unwrap_or_else(PoisonError::into_inner) == Status::Stopped {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills exec `exec_id` in the guest once host process `pid` has ended.
    fn watch_exec(&self, exec_id: String, pid: i32) -> Result<()> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("watching exec process {pid}"));
        }
        // SAFETY: pidfd_open just returned this descriptor; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let agent = self.agent.clone();
        std::thread::Builder::new()
            .name("exec-watch".into())
            .spawn(move || {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                loop {
                    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        _ => break,
                    }
                }
                // Harmless when the exec'd process has already ended with its client.
                let _ = agent.post(Request::Signal {
                    exec_id,
                    signal: Signal::SIGKILL as i32,
                    all: false,
                });
            })?;
        Ok(())
    }

    fn handle(&self, req: ControlRequest, fds: Vec<OwnedFd>) -> ControlResponse {
        self.serve(req, fds)
            .unwrap_or_else(|e| ControlResponse::Error {
                message: crate::logging::one_line(&format!("{e:#}")),
            })
    }

    fn serve(&self, req: ControlRequest, fds: Vec<OwnedFd>) -> Result<ControlResponse> {
        let id = &self.id;
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        match req {
            ControlRequest::State => Ok(ControlResponse::State { status: *status }),
            ControlRequest::AttachNetwork { interfaces } => {
                if *status != Status::Created {
                    bail!(
                        "container {id:?} is {}: networks attach before start",
                        *status
                    );
                }
                if fds.len() != interfaces.len() {
                    bail!(
                        "{} interfaces came with {} taps",
                        interfaces.len(),
                        fds.len()
                    );
                }
                for (slot, tap) in fds.into_iter().enumerate() {
                    self.backend.attach_net(slot, tap)?;
                }
                let resp = self.agent.call_timeout(
                    Request::ConfigureNetwork {
                        container_id: id.clone(),
                        interfaces,
                    },
                    Duration::from_secs(30),
                )?;
                expect_ok(resp, "configuring the container's network in the guest")?;
                Ok(ControlResponse::Ok)
            }
            ControlRequest::Start { hook_state } => {
                match *status {
                    Status::Created => {}
                    Status::Stopped => bail!("cannot start container {id:?}: it has stopped"),
                    other => bail!("cannot start container {id:?}: it is already {other}"),
                }
                // Not held across the round trip: `state` and `kill` must keep answering
                // while a slow (or hostile) guest takes its time.
                drop(status);
                if let Some(state) = hook_state {
                    let resp = self.agent.call_timeout(
                        Request::RunStartHooks {
                            container_id: id.clone(),
                            state,
                        },
                        Duration::from_secs(24 * 3600),
                    )?;
                    if let Err(e) = expect_ok(resp, "running the startContainer hooks") {
                        // The runtime spec: a failing startContainer hook stops the
                        // container.
                        let _ = self.agent.post(Request::Signal {
                            exec_id: id.clone(),
                            signal: Signal::SIGKILL as i32,
                            all: true,
                        });
                        return Err(e);
                    }
                }
                let resp = self.agent.call_timeout(
                    Request::StartContainer {
                        container_id: id.clone(),
                    },
                    Duration::from_secs(60),
                )?;
                expect_ok(resp, "starting the container in the guest")?;
                let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                if *status == Status::Created {
                    *status = Status::Running;
                }
                Ok(ControlResponse::Ok)
            }
            ControlRequest::Kill { signal, all } => {
                let req = Request::Signal {
                    exec_id: id.clone(),
                    signal,
                    all,
                };
                match *status {
                    Status::Stopped | Status::Creating => {
                        bail!("container {id:?} is not running")
                    }
                    Status::Paused if signal == Signal::SIGKILL as i32 => {
                        // A frozen guest cannot act on it; ending the VM has the same
                        // effect and cannot be ignored either.
                        self.kill_vm();
                    }
                    // Delivered when the guest is thawed, as with a frozen cgroup.
                    Status::Paused => self.agent.post(req)?,
                    Status::Created | Status::Running if signal == Signal::SIGKILL as i32 => {
                        drop(status);
                        // The guest is asked, but not relied on.
                        if let Err(e) = self.agent.post(req) {
                            tracing::warn!("asking the guest to kill the container: {e:#}");
                        }
                        if !self.wait_stopped(KILL_GRACE) {
                            tracing::warn!(
                                "the guest did not end the container within {KILL_GRACE:?} of SIGKILL; ending the VM"
                            );
                            self.kill_vm();
                        }
                    }
                    Status::Created | Status::Running => {
                        drop(status);
                        let resp = self.agent.call_timeout(req, Duration::from_secs(10))?;
                        expect_ok(resp, "signalling the container")?;
                    }
                }
                Ok(ControlResponse::Ok)
            }
            ControlRequest::Pause => {
                if *status != Status::Running {
                    bail!("container {id:?} is not running (it is {})", *status);
                }
                self.backend.pause()?;
                *status = Status::Paused;
                Ok(ControlResponse::Ok)
            }
            ControlRequest::Resume => {
                if *status != Status::Paused {
                    bail!("container {id:?} is not paused (it is {})", *status);
                }
                self.backend.resume()?;
                *status = Status::Running;
                Ok(ControlResponse::Ok)
            }
            ControlRequest::TestSeccompViolation => {
                if !self.test_violation {
                    bail!("not a test sandbox");
                }
                drop(status);
                husk_vmm::seccomp::trigger_violation();
                bail!("the forbidden system call was allowed: the sandbox is not confined")
            }
            ControlRequest::WatchExec { exec_id, pid } => {
                drop(status);
                self.watch_exec(exec_id, pid)?;
                Ok(ControlResponse::Ok)
            }
            ControlRequest::Ps => {
                match *status {
                    Status::Created | Status::Running => {}
                    Status::Paused => {
                        bail!("container {id:?} is paused: resume it to list its processes")
                    }
                    other => bail!("container {id:?} is not running (it is {other})"),
                }
                drop(status);
                let resp = self.agent.call_timeout(
                    Request::Ps {
                        container_id: id.clone(),
                    },
                    Duration::from_secs(10),
                )?;
                match resp {
                    Response::Pids { pids } => Ok(ControlResponse::Pids { pids }),
                    Response::Error { message } => {
                        bail!("listing the container's processes: {message}")
                    }
                    other => bail!("unexpected answer to ps: {other:?}"),
                }
            }
        }
    }
}
