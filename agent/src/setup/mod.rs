//! The container setup process.
//!
//! The agent forks a child straight into the container's new namespaces (or, for an exec,
//! into its pid namespace) and that child re-executes the agent binary with `argv[0]` =
//! [`messages::SETUP_ARGV0`]. Being a fresh single-threaded process, it can do what a
//! forked copy of the multi-threaded agent cannot (allocate, join mount and user
//! namespaces), and it ends by exec'ing the container's program itself, so the program
//! keeps the pid the agent forked: the agent's one reaper sees its exit like any other.
//!
//! It reads one [`SetupConfig`] from the socket it was given, reports back with
//! [`Report`]s, and for a create waits for [`Command::Start`] before the execve.

pub mod caps;
pub mod messages;
pub mod mount_options;
pub mod paths;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod syscalls;

use std::convert::Infallible;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};

use anyhow::{bail, Context};
use nix::sched::CloneFlags;
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use oci_spec::runtime::{Process, Spec};
use serde::de::DeserializeOwned;

use self::messages::{Command, Job, NamespaceFd, Report, SetupConfig, SETUP_ARGV0};
use self::rootfs::RootfsPlan;

/// Whether this process was started as a container setup process.
pub fn invoked() -> bool {
    std::env::args_os().next().is_some_and(|a| a == SETUP_ARGV0)
}

/// Runs the setup process; ends in the container's program or in `exit`.
pub fn main() -> ! {
    let Some(fd) = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<RawFd>().ok())
    else {
        eprintln!("{SETUP_ARGV0}: started without its socket (only the agent starts this)");
        std::process::exit(2);
    };
    // Until the execve (which resets it), processes in the container must not ptrace this
    // one or open its /proc files: its descriptors include the agent's socket and, for an
    // exec, the container's namespaces.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: the agent's child left this descriptor open for this process to own.
    let mut channel = Channel::new(unsafe { OwnedFd::from_raw_fd(fd) });
    exit_on_termination_signals();
    // Stderr may be the container's: failures travel to the agent instead.
    panic::set_hook(Box::new(|_| {}));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(&mut channel)));
    let message = match outcome {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => format!("{e:#}"),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            format!("container setup panicked: {what}")
        }
    };
    let _ = channel.report(&Report::Error { message });
    std::process::exit(127)
}

/// As the init of a new pid namespace this process would ignore every signal the agent
/// sends but SIGKILL; until it execs (which resets handlers), the usual termination
/// signals end it instead, as they end runc's init.
fn exit_on_termination_signals() {
    extern "C" fn exit_by(signal: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) }
    }
    for signal in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installs a handler that only calls an async-signal-safe function.
        unsafe { libc::signal(signal, exit_by as *const () as libc::sighandler_t) };
    }
}

fn run(channel: &mut Channel) -> anyhow::Result<Infallible> {
    let config: SetupConfig = channel.recv().context("read the setup configuration")?;
    let spec: Spec = serde_json::from_value(config.spec.clone()).context("parse config.json")?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    match &config.job {
        Job::Create {
            rootfs,
            cgroup,
            new_cgroup_namespace,
            new_network_namespace,
            no_pivot,
            join,
        } => {
            join_namespaces(join)?;
            let process = spec
                .process()
                .as_ref()
                .context("config.json has no process")?;
            if *new_cgroup_namespace {
                nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                    .context("unshare the cgroup namespace")?;
            }
            if let Some(adj) = process.oom_score_adj() {
                std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                    .context("set oomScoreAdj")?;
            }
            if *new_network_namespace {
                loopback_up().context("bring up lo in the network namespace")?;
            }
            let plan = RootfsPlan {
                rootfs,
                cgroup,
                cgroup_namespace: *new_cgroup_namespace,
                no_pivot: *no_pivot,
            };
            rootfs::prepare(&spec, &plan, &mut |line| channel.log(line))?;
            if config.terminal {
                process::attach_terminal(channel, process, true)?;
            }
            rootfs::finish(&spec, process.cwd())?;
            let program = process::prepare(process, seccomp, channel)?;
            channel.report(&Report::Ready)?;
            match channel.recv::<Command>() {
                Ok(Command::Start) => {}
                Err(e) => bail!("no start from the agent: {e:#}"),
            }
            Err(program.exec())
        }
        Job::Exec {
            process,
            namespaces,
        } => {
            let process: Process =
                serde_json::from_value(process.clone()).context("parse the exec's process")?;
            join_namespaces(namespaces)?;
            if config.terminal {
                process::attach_terminal(channel, &process, false)?;
            }
            let program = process::prepare(&process, seccomp, channel)?;
            channel.report(&Report::Execing)?;
            Err(program.exec())
        }
    }
}

/// Joins the container's namespaces: the user namespace first, so that the others are
/// joined with its capabilities; the mount namespace last, as it changes the root.
fn join_namespaces(namespaces: &[NamespaceFd]) -> anyhow::Result<()> {
    let order = |ns: &NamespaceFd| match ns.nstype {
        t if t == libc::CLONE_NEWUSER => 0,
        t if t == libc::CLONE_NEWNS => 2,
        _ => 1,
    };
    let mut namespaces = namespaces.to_vec();
    namespaces.sort_by_key(order);
    for ns in namespaces {
        // SAFETY: the agent's child left this descriptor open for this process to own.
        let fd = unsafe { OwnedFd::from_raw_fd(ns.fd) };
        let kind = CloneFlags::from_bits_truncate(ns.nstype);
        nix::sched::setns(&fd, kind).with_context(|| format!("join the {kind:?} namespace"))?;
    }
    Ok(())
}

/// A new network namespace has a loopback device that is down.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket with integer arguments; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the socket was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed by pointer.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The setup process's end of its socket to the agent.
pub struct Channel {
    sock: File,
}

impl Channel {
    fn new(sock: OwnedFd) -> Channel {
        // Inherited without close-on-exec; the program must not get it, and the agent
        // learns of a successful execve by the end of file this gives.
        let _ = nix::fcntl::fcntl(
            &sock,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Channel { sock: sock.into() }
    }

    fn recv<T: DeserializeOwned>(&mut self) -> anyhow::Result<T> {
        Ok(husk_protocol::read_frame(&mut self.sock)?)
    }

    /// Sends one report.
    pub fn report(&mut self, report: &Report) -> io::Result<()> {
        self.send(report, None)
    }

    /// A line for the agent's log; lost if the agent is gone.
    pub fn log(&mut self, message: String) {
        let _ = self.report(&Report::Log { message });
    }

    /// Sends [`Report::Terminal`] with the master descriptor attached.
    pub fn send_terminal(&mut self, master: RawFd) -> io::Result<()> {
        self.send(&Report::Terminal, Some(master))
    }

    fn send(&mut self, report: &Report, fd: Option<RawFd>) -> io::Result<()> {
        let body = serde_json::to_vec(report)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let fds = fd.map(|f| [f]);
        let cmsgs: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|f| ControlMessage::ScmRights(f))
            .into_iter()
            .collect();
        let mut sent = 0;
        while sent < frame.len() {
            // The descriptor rides on the first byte only.
            let cmsgs = if sent == 0 { &cmsgs[..] } else { &[] };
            match socket::sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[IoSlice::new(&frame[sent..])],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => sent += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
