//! `husk exec`: run another process in a running container, in the guest, with its own
//! stdio or terminal.
//!
//! The exec client connects to the container's guest agent itself (through the VM's
//! vsock socket in the state directory), asks it to start the process in the
//! container's namespaces, relays stdio, passes on the signals it receives, waits, and
//! exits with the process's status (128+N for signal N). So the process whose pid goes in
//! `--pid-file` is a host process with the exec'd process's exit status, as the runc
//! shim, conmon and dockerd expect: the exec client itself, or with `--detach` a child
//! (`husk exec-child`) that it leaves running, re-parented to the caller's subreaper.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use husk_protocol::{ExecRequest, Request, Response};
use liboci_cli::Exec;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;
use oci_spec::runtime::{Capability, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::agent_link::{start_process, AgentAddress, AgentEndpoint, AgentMux};
use crate::container::{ContainerDir, Status};
use crate::globals::Globals;
use crate::process_io::{window_size, IoMode, ProcessIo};
use crate::sandbox::control::ControlRequest;
use crate::stdio::StdioListener;

/// First host port tried for an exec's stdio (the container's own uses 2000).
const FIRST_EXEC_PORT: u32 = 3000;

/// Everything an exec needs, handed to a detached exec child over a pipe.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecPlan {
    container_id: String,
    state_dir: PathBuf,
    agent: AgentAddress,
    process: serde_json::Value,
    console_socket: Option<PathBuf>,
    terminal: bool,
}

/// What a detached exec child reports to `husk exec`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExecReadiness {
    Started,
    Failed { message: String },
}

/// Options of the hidden `husk exec-child`.
#[derive(Args, Debug)]
pub struct ExecChildArgs {
    /// Descriptor to read the plan from.
    #[arg(long)]
    pub plan_fd: i32,
    /// Descriptor to report readiness on.
    #[arg(long)]
    pub ready_fd: i32,
}

/// `husk exec`.
pub fn run(g: &Globals, args: Exec) -> Result<i32> {
    let dir = ContainerDir::new(&g.root, &args.container_id)?;
    let rec = dir.load()?;
    match dir.status(&rec) {
        Status::Running | Status::Created => {}
        Status::Paused => bail!("cannot exec in a paused container (resume it first)"),
        other => bail!("cannot exec in container {:?}: it is {other}", dir.id()),
    }
    if args.preserve_fds > 0 {
        bail!("--preserve-fds is not supported: descriptors cannot be passed into a microVM");
    }
    let agent = rec
        .husk
        .agent
        .clone()
        .context("the container's state has no agent address")?;
    let process = match &args.process {
        Some(path) => read_process_file(path)?,
        None => process_from_flags(&dir.config_copy(), &args)?,
    };
    let terminal = process
        .get("terminal")
        .and_then(|t| t.as_bool())
        .unwrap_or(false);
    match (terminal, &args.console_socket) {
        (true, None) if args.detach => {
            bail!("a detached exec with a terminal needs --console-socket to receive the pty")
        }
        (false, Some(_)) => bail!("--console-socket needs a terminal (--tty)"),
        _ => {}
    }
    let plan = ExecPlan {
        container_id: args.container_id.clone(),
        state_dir: dir.path().to_owned(),
        agent,
        process,
        console_socket: args
            .console_socket
            .as_ref()
            .map(|p| absolute(p))
            .transpose()?,
        terminal,
    };
    if args.detach {
        let pid = spawn_detached(g, &plan)?;
        if let Some(p) = &args.pid_file {
            super::write_pid_file(p, pid)?;
        }
        return Ok(0);
    }
    exec(&plan, &mut |_| {
        if let Some(p) = &args.pid_file {
            super::write_pid_file(p, std::process::id() as i32)?;
        }
        Ok(())
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// `--process FILE`: an OCI process object, used as it is (other flags do not apply,
/// as with runc).
fn read_process_file(path: &Path) -> Result<serde_json::Value> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: serde_json::Value = serde_json::from_slice(&data)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let p: Process = serde_json::from_value(raw.clone())
        .with_context(|| format!("{} is not a valid OCI process", path.display()))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("{}: args must not be empty", path.display());
    }
    Ok(raw)
}

/// The container's own process with the flags applied, as runc builds it.
fn process_from_flags(config: &Path, args: &Exec) -> Result<serde_json::Value> {
    if args.command.is_empty() {
        bail!("no command given to exec");
    }
    let data = std::fs::read(config).with_context(|| format!("reading {}", config.display()))?;
    let spec: Spec = serde_json::from_slice(&data)
        .with_context(|| format!("{} is not a valid OCI config", config.display()))?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(args.env.iter().map(|(k, v)| format!("{k}={v}")));
    p.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some((uid, gid)) = args.user {
        let mut user = p.user().clone();
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
        p.set_user(user);
    }
    if !args.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(args.additional_gids.clone()));
        p.set_user(user);
    }
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &args.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &args.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    if !args.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let cap: Capability = name
                .parse()
                .map_err(|_| anyhow::anyhow!("unknown capability {name:?}"))?;
            let add = |get: Option<&std::collections::HashSet<Capability>>| {
                let mut s = get.cloned().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            let b = add(caps.bounding().as_ref());
            let e = add(caps.effective().as_ref());
            let pm = add(caps.permitted().as_ref());
            caps.set_bounding(b).set_effective(e).set_permitted(pm);
        }
        p.set_capabilities(Some(caps));
    }
    Ok(serde_json::to_value(p)?)
}

/// Starts `husk exec-child` with `plan`; returns its pid once the process has started.
fn spawn_detached(g: &Globals, plan: &ExecPlan) -> Result<i32> {
    let (plan_read, plan_write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (ready_read, ready_write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (plan_fd, ready_fd) = (plan_read.as_raw_fd(), ready_write.as_raw_fd());
    let mut cmd = Command::new(std::env::current_exe().context("finding the husk binary")?);
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
pub fn child_main(_g: &Globals, args: ExecChildArgs) -> Result<i32> {
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
fn exec(plan: &ExecPlan, started: &mut dyn FnMut(i32) -> Result<()>) -> Result<i32> {
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
    let watch = crate::sandbox::control::request(
        &plan.state_dir,
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
