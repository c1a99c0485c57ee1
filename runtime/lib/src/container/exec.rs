//! Exec into a running container: the host side of a process started in the guest
//! next to the container's own, with its own stdio or terminal.
//!
//! The exec client connects to the container's guest agent itself (through the VM's
//! vsock socket in the state directory), asks it to start the process in the
//! container's namespaces, relays stdio, passes on the signals it receives, waits, and
//! returns the process's status (128+N for signal N). So the process whose pid goes in
//! `--pid-file` is a host process with the exec'd process's exit status, as the runc
//! shim, conmon and dockerd expect: the exec client itself, or with `--detach` a child
//! (`exec-child`) that it leaves running, re-parented to the caller's subreaper.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use husk_protocol::{ExecRequest, Request, Response};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::agent::{start_process, AgentAddress, AgentEndpoint, AgentMux};
use crate::control::ControlRequest;
use crate::globals::Globals;
use crate::stdio::{window_size, IoMode, ProcessIo, StdioListener};

/// First host port tried for an exec's stdio (the container's own uses 2000).
const FIRST_EXEC_PORT: u32 = 3000;

/// Everything an exec needs, handed to a detached exec child over a pipe.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecPlan {
    /// The container.
    pub container_id: String,
    /// Its sandbox's jail (for the sandbox's control socket).
    pub sandbox_dir: PathBuf,
    /// Where its agent listens.
    pub agent: AgentAddress,
    /// The OCI process to run.
    pub process: serde_json::Value,
    /// Send the pty master here.
    pub console_socket: Option<PathBuf>,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// What a detached exec child reports to `husk exec`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExecReadiness {
    Started,
    Failed { message: String },
}

/// Options of the hidden `exec-child` command.
#[derive(Args, Debug)]
pub struct ExecChildArgs {
    /// Descriptor to read the plan from.
    #[arg(long)]
    pub plan_fd: i32,
    /// Descriptor to report readiness on.
    #[arg(long)]
    pub ready_fd: i32,
}

/// Starts `husk exec-child` with `plan`; returns its pid once the process has started.
/// `stdio` replaces this process's stdin, stdout and stderr as the child's.
pub fn spawn_detached(g: &Globals, plan: &ExecPlan, stdio: Option<[OwnedFd; 3]>) -> Result<i32> {
    let (plan_read, plan_write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (ready_read, ready_write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (plan_fd, ready_fd) = (plan_read.as_raw_fd(), ready_write.as_raw_fd());
    let mut cmd = Command::new(crate::globals::husk_binary()?);
    if let Some([stdin, stdout, stderr]) = stdio {
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
    }
    cmd.args(g.to_args())
        .arg("exec-child")
        .arg("--plan-fd")
        .arg(plan_fd.to_string())
        .arg("--ready-fd")
        .arg(ready_fd.to_string());
    // SAFETY: fcntl is async-signal-safe; the closure only clears close-on-exec on the
    // two pipe ends the child is meant to inherit.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [plan_fd, ready_fd] {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the exec process")?;
    drop(plan_read);
    drop(ready_write);
    File::from(plan_write).write_all(&serde_json::to_vec(plan)?)?;
    let mut line = String::new();
    File::from(ready_read).read_to_string(&mut line)?;
    match serde_json::from_str::<ExecReadiness>(line.trim()) {
        Ok(ExecReadiness::Started) => Ok(child.id() as i32),
        Ok(ExecReadiness::Failed { message }) => {
            let _ = child.wait();
            bail!("{message}")
        }
        Err(_) => {
            let status = child.wait()?;
            bail!("the exec process ended before the process started ({status})")
        }
    }
}

/// `husk exec-child`: the detached exec's host process.
pub fn child_main(args: ExecChildArgs) -> Result<i32> {
    // SAFETY: `husk exec` passed these descriptors for this process alone.
    let (mut plan_pipe, ready) = unsafe {
        (
            File::from_raw_fd(args.plan_fd),
            File::from_raw_fd(args.ready_fd),
        )
    };
    let mut data = Vec::new();
    plan_pipe.read_to_end(&mut data)?;
    drop(plan_pipe);
    let plan: ExecPlan = serde_json::from_slice(&data).context("reading the exec plan")?;
    let mut ready = Some(ready);
    let result = exec(&plan, &mut |_| {
        if let Some(mut r) = ready.take() {
            let line = serde_json::to_vec(&ExecReadiness::Started)?;
            r.write_all(&line)?;
        }
        Ok(())
    });
    if let (Err(e), Some(mut r)) = (&result, ready.take()) {
        let message = crate::logging::one_line(&format!("{e:#}"));
        let _ = r.write_all(&serde_json::to_vec(&ExecReadiness::Failed { message })?);
    }
    result
}

/// Runs the exec: `started` is called once the process exists (with its guest pid).
pub fn exec(plan: &ExecPlan, started: &mut dyn FnMut(i32) -> Result<()>) -> Result<i32> {
    let signals = crate::signal::block_forwarded();
    let span = tracing::info_span!("exec", id = %plan.container_id);
    let _entered = span.enter();
    let endpoint = AgentEndpoint::open(&plan.agent)?;
    let agent = AgentMux::new(endpoint.connect_now()?)?;
    let mode = match (&plan.console_socket, plan.terminal) {
        (Some(s), _) => IoMode::ConsoleSocket(s.clone()),
        (None, true) => IoMode::OwnTerminal,
        (None, false) => IoMode::Pipes,
    };
    let mut io = ProcessIo::prepare(mode)?;
    io.release_caller_stdio()?;
    let first = FIRST_EXEC_PORT + std::process::id() % 20_000;
    let (listener, port) = StdioListener::bind_free(&endpoint.stdio_prefix(), first)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let exec_id = format!("exec-{}-{nanos}", std::process::id());
    let req = Request::Exec(ExecRequest {
        exec_id: exec_id.clone(),
        argv: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
        root: None,
        stdio: io.spec(port),
        container_id: Some(plan.container_id.clone()),
        process: Some(plan.process.clone()),
    });
    let (guest_pid, streams) = start_process(
        &agent,
        &listener,
        &exec_id,
        &io.wanted(),
        req,
        "exec in the container",
    )?;
    drop(listener);
    tracing::debug!(guest_pid, exec_id, "exec started");
    let relays = io.relay(streams)?;
    let size_fd = io.size_fd();
    if io.terminal() {
        if let Some((rows, cols)) = io.window_size() {
            let _ = agent.post(Request::Resize {
                exec_id: exec_id.clone(),
                rows,
                cols,
            });
        }
        io.take_controlling_terminal();
    }
    // SIGKILL of this process cannot be passed on: the sandbox kills the exec'd process
    // when it sees this process gone.
    let watch = crate::control::request(
        &plan.sandbox_dir,
        ControlRequest::WatchExec {
            exec_id: exec_id.clone(),
            pid: std::process::id() as i32,
        },
        Duration::from_secs(10),
    )
    .and_then(|r| r.into_result());
    if let Err(e) = watch {
        tracing::warn!("the exec'd process will outlive this one if it is killed: {e:#}");
    }
    started(guest_pid)?;
    let (for_signals, id) = (agent.clone(), exec_id.clone());
    crate::signal::spawn_handler(signals, move |sig| {
        let req = if sig == Signal::SIGWINCH {
            use std::os::fd::AsFd;
            match size_fd.as_ref().and_then(|fd| window_size(fd.as_fd())) {
                Some((rows, cols)) => Request::Resize {
                    exec_id: id.clone(),
                    rows,
                    cols,
                },
                None => return,
            }
        } else {
            Request::Signal {
                exec_id: id.clone(),
                signal: sig as i32,
                all: false,
            }
        };
        let _ = for_signals.post(req);
    });
    let code = match agent.call(Request::Wait { exec_id })? {
        Response::Exited { status } => status.shell_code(),
        Response::Error { message } => bail!("waiting for the exec'd process: {message}"),
        other => bail!("unexpected answer to wait: {other:?}"),
    };
    relays.finish(Duration::from_secs(10));
    io.restore();
    agent.close();
    Ok(code)
}
