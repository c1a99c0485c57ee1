//! Starting a container setup process: a child forked (into new namespaces, for a create)
//! that re-executes the agent binary as [`SETUP_ARGV0`], and the socket to talk to it.
//!
//! Between the fork and the execve the child is a copy of a multi-threaded process, so it
//! makes only async-signal-safe calls on memory prepared before the fork (no allocation,
//! no glibc wrappers that touch thread state: the fork is a raw clone so that it can
//! create namespaces, and glibc does not know about it).

use std::collections::VecDeque;
use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use husk_protocol::MAX_FRAME_SIZE;
use nix::sched::CloneFlags;
use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::Serialize;

use crate::exec::above_stdio;
use crate::reaper::{ProcessTable, Reservation};
use crate::setup::messages::{Report, SETUP_ARGV0};

/// Exit codes of the child when it fails before the setup process runs.
const EXIT_SETSID: i32 = 121;
const EXIT_STDIO: i32 = 122;
const EXIT_ID_MAPS: i32 = 123;
const EXIT_EXEC: i32 = 124;

/// How to start one setup process.
pub struct Launch<'a> {
    /// Namespaces the child is created in (none for an exec, whose thread has joined the
    /// container's pid namespace already).
    pub new_namespaces: CloneFlags,
    /// Descriptors for fds 0, 1 and 2, all above 2.
    pub stdio: [RawFd; 3],
    /// Descriptors the setup process inherits under the same numbers.
    pub inherit: &'a [RawFd],
}

/// The agent binary, opened once: the setup process is exec'd from this descriptor, which
/// works from any mount namespace.
fn agent_binary() -> anyhow::Result<RawFd> {
    static EXE: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = EXE.get() {
        return Ok(fd.as_raw_fd());
    }
    let exe: OwnedFd = File::open("/proc/self/exe")
        .context("open the agent binary (/proc/self/exe)")?
        .into();
    let exe = above_stdio(exe)?;
    Ok(EXE.get_or_init(|| exe).as_raw_fd())
}

/// Forks the setup process and records it under `reservation`. With a new user namespace
/// the child waits, before it execs, for [`SetupChannel::release_id_maps`].
pub fn spawn(
    table: &ProcessTable,
    reservation: Reservation<'_>,
    launch: &Launch<'_>,
) -> anyhow::Result<(libc::pid_t, SetupChannel)> {
    let exe = agent_binary()?;
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("create the setup socket pair")?;
    let theirs = above_stdio(theirs)?;
    let argv = [
        CString::new(SETUP_ARGV0).expect("no NUL"),
        CString::new(theirs.as_raw_fd().to_string()).expect("no NUL"),
    ];
    let argv_ptrs: Vec<*const c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    let envp: [*const c_char; 1] = [ptr::null()];
    let plan = ChildPlan {
        exe,
        argv: argv_ptrs.as_ptr(),
        envp: envp.as_ptr(),
        stdio: launch.stdio,
        sync: theirs.as_raw_fd(),
        inherit: launch.inherit,
        wait_for_id_maps: launch.new_namespaces.contains(CloneFlags::CLONE_NEWUSER),
    };
    let flags = launch.new_namespaces.bits() | libc::SIGCHLD;
    let pid = table
        .spawn(reservation, || {
            // SAFETY: a fork-like clone (no CLONE_VM, no new stack): the child runs only
            // `run_child`, which makes raw syscalls on memory prepared above and never
            // returns into Rust code of this process.
            match unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) } {
                -1 => Err(io::Error::last_os_error()),
                0 => run_child(&plan),
                pid => Ok(pid as libc::pid_t),
            }
        })
        .context("fork the container setup process")?;
    Ok((pid, SetupChannel::new(ours)))
}

/// Raw pointers into memory the parent prepared; valid in the child, which has a copy.
struct ChildPlan<'a> {
    exe: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdio: [RawFd; 3],
    sync: RawFd,
    inherit: &'a [RawFd],
    wait_for_id_maps: bool,
}

/// The child between the clone and the execve of the setup process.
fn run_child(plan: &ChildPlan<'_>) -> ! {
    let fail = |code: i32| -> ! {
        // SAFETY: _exit skips destructors and atexit handlers, which must not run here.
        unsafe { libc::_exit(code) }
    };
    // SAFETY: plain syscalls on integers and on a stack-allocated sigset.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
    }
    // Its own session: the container's processes are one job, and a terminal can become
    // its controlling terminal.
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        fail(EXIT_SETSID);
    }
    for (target, &source) in plan.stdio.iter().enumerate() {
        // SAFETY: plain descriptor numbers; the sources are open and above 2.
        if unsafe { libc::dup2(source, target as RawFd) } < 0 {
            fail(EXIT_STDIO);
        }
    }
    crate::exec::cloexec_above_stdio();
    for &fd in plan.inherit.iter().chain([&plan.sync]) {
        // SAFETY: clears close-on-exec of a descriptor this process owns.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            fail(EXIT_STDIO);
        }
    }
    if plan.wait_for_id_maps {
        // Until the agent wrote uid_map and gid_map, nothing here maps to root in the new
        // user namespace, and an execve would drop every capability.
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live stack variable; then raw set*id syscalls
        // (glibc's wrappers would try to synchronise threads this child doesn't have).
        unsafe {
            if libc::read(plan.sync, (&mut byte as *mut u8).cast(), 1) != 1
                || libc::syscall(libc::SYS_setresgid, 0, 0, 0) < 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) < 0
            {
                fail(EXIT_ID_MAPS);
            }
        }
    }
    // SAFETY: execveat on an open descriptor with NUL-terminated strings and
    // null-terminated pointer arrays prepared before the clone.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            plan.exe,
            c"".as_ptr(),
            plan.argv,
            plan.envp,
            libc::AT_EMPTY_PATH,
        )
    };
    fail(EXIT_EXEC)
}

/// What an exit code of the child means, for errors.
pub fn describe_early_exit(code: i32) -> &'static str {
    match code {
        EXIT_SETSID => "setsid failed",
        EXIT_STDIO => "its stdio could not be set up",
        EXIT_ID_MAPS => "the user namespace was not mapped",
        EXIT_EXEC => "the agent binary could not be executed",
        _ => "it exited",
    }
}

/// The agent's end of the socket to a setup process.
#[derive(Debug)]
pub struct SetupChannel {
    sock: OwnedFd,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl SetupChannel {
    fn new(sock: OwnedFd) -> Self {
        SetupChannel {
            sock,
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// Sends one frame.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> anyhow::Result<()> {
        let mut file = File::from(self.sock.try_clone()?);
        husk_protocol::write_frame(&mut file, msg).context("write to the setup process")
    }

    /// Lets a child waiting in a new user namespace go on (its id maps are written).
    pub fn release_id_maps(&mut self) -> anyhow::Result<()> {
        nix::unistd::write(&self.sock, &[1]).context("release the setup process")?;
        Ok(())
    }

    /// The next report; `None` once the setup process has closed its end (it exec'd or
    /// died).
    pub fn recv(&mut self) -> anyhow::Result<Option<Report>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes"));
                if len > MAX_FRAME_SIZE {
                    bail!("the setup process sent a frame of {len} bytes");
                }
                let end = 4 + len as usize;
                if self.buf.len() >= end {
                    let report = serde_json::from_slice(&self.buf[4..end])
                        .context("garbled report from the setup process")?;
                    self.buf.drain(..end);
                    return Ok(Some(report));
                }
            }
            let mut chunk = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = loop {
                match socket::recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.context("read from the setup process")?,
                }
            };
            for c in msg.cmsgs().context("descriptors from the setup process")? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed these descriptors for us.
                    self.fds.extend(
                        fds.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("the setup process closed its socket in the middle of a report");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A descriptor that came with a report.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}
