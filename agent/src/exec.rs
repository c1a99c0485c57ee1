//! `Exec`: start a process whose stdio are host sockets.
//!
//! Everything the child needs is prepared before the fork, because between fork and
//! execve a child of a multi-threaded process may only make async-signal-safe calls (no
//! allocation, no locks). The child reports a failure before execve through a close-on-exec
//! pipe, so the parent knows whether the program really started before answering.

use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr;

use anyhow::{bail, Context};
use husk_protocol::{ExecRequest, StdioSpec, StreamHello, StreamKind};
use nix::fcntl::{self, FcntlArg, OFlag};

use crate::reaper::ProcessTable;
use crate::roots::Roots;
use crate::terminal::{self, Terminals};
use crate::transport::Transport;

/// `PATH` for the lookup of `argv[0]` when the request's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts the process of `req` (in the guest itself, or chrooted into its root disk) and
/// returns its pid once it runs the requested program.
pub fn exec(
    req: &ExecRequest,
    transport: &Transport,
    roots: &Roots,
    table: &ProcessTable,
    terminals: &Terminals,
) -> anyhow::Result<libc::pid_t> {
    let Some(argv0) = req.argv.first() else {
        bail!("exec {:?}: empty argv", req.exec_id);
    };
    let reservation = table.reserve(&req.exec_id)?;
    let root = match &req.root {
        Some(disk) => Some(roots.mount(disk)?),
        None => None,
    };
    let argv = c_strings(&req.argv).context("argv")?;
    let env = c_strings(&req.env).context("env")?;
    let candidates = c_strings(&program_candidates(argv0, &req.env)).context("argv[0]")?;
    let cwd = CString::new(if req.cwd.is_empty() { "/" } else { &req.cwd })
        .context("cwd contains a NUL byte")?;
    let root_c = match &root {
        Some(path) => Some(CString::new(path.as_os_str().as_encoded_bytes()).context("root path")?),
        None => None,
    };
    // Connected before the fork so the process cannot write a byte before the host has
    // its end of the stream.
    let stdio = if req.stdio.terminal {
        let pty = terminal::open_pty().context("allocate a terminal")?;
        terminals.attach(&req.exec_id, pty.master, transport, req.stdio.port)?;
        let slave = above_stdio(pty.slave)?;
        [slave.try_clone()?, slave.try_clone()?, slave]
    } else {
        connect_stdio(&req.exec_id, &req.stdio, transport)?
    };
    let (report_r, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("create exec status pipe")?;

    let argv_ptrs = null_terminated(&argv);
    let env_ptrs = null_terminated(&env);
    let plan = ChildPlan {
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        candidates: candidates.iter().map(|c| c.as_ptr()).collect(),
        root: root_c.as_ref().map_or(ptr::null(), |r| r.as_ptr()),
        cwd: cwd.as_ptr(),
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        report: report_w.as_raw_fd(),
        controlling_terminal: req.stdio.terminal,
    };

    let pid = table
        .spawn(reservation, || {
            // SAFETY: the child runs only `run_child`, which makes async-signal-safe calls
            // on memory prepared above and never returns into Rust code of this process.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                0 => run_child(&plan),
                pid => Ok(pid),
            }
        })
        .context("fork")?;
    // The parent's copies: the streams now belong to the child, and the pipe's write end
    // must be closed here for the read below to see end-of-file once the child execs.
    drop(stdio);
    drop(report_w);

    match read_report(report_r) {
        Ok(None) => Ok(pid),
        Ok(Some((stage, errno))) => {
            table.abandon(&req.exec_id);
            let err = io::Error::from_raw_os_error(errno);
            Err(match stage {
                Stage::Setsid => anyhow::anyhow!("setsid: {err}"),
                Stage::Stdio => anyhow::anyhow!("set up stdio: {err}"),
                Stage::Chroot => {
                    let root = root.as_deref().unwrap_or(Path::new("/"));
                    anyhow::anyhow!("chroot {}: {err}", root.display())
                }
                Stage::Chdir => anyhow::anyhow!("chdir {:?}: {err}", req.cwd),
                Stage::Exec => anyhow::anyhow!("exec {argv0:?}: {err}"),
            })
        }
        Err(e) => {
            // The child's fate is unknown; it is reaped either way.
            table.abandon(&req.exec_id);
            Err(e).context("read the exec status of the child")
        }
    }
}

fn c_strings(items: &[String]) -> anyhow::Result<Vec<CString>> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).with_context(|| format!("{s:?} contains a NUL byte")))
        .collect()
}

fn null_terminated(items: &[CString]) -> Vec<*const c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// The paths to try for `argv0`, in order, as execvp would (inside the process's root).
pub fn program_candidates(argv0: &str, env: &[String]) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_owned()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| match dir.trim_end_matches('/') {
            // An empty entry means the working directory.
            "" if dir.is_empty() => argv0.to_owned(),
            dir => format!("{dir}/{argv0}"),
        })
        .collect()
}

/// `/dev/null` three times, all above 2.
pub fn null_stdio() -> anyhow::Result<[OwnedFd; 3]> {
    let null = above_stdio(open_null()?)?;
    Ok([null.try_clone()?, null.try_clone()?, null])
}

fn open_null() -> anyhow::Result<OwnedFd> {
    Ok(File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?
        .into())
}

/// One socket (or `/dev/null`) per stdio stream, in the order stdin, stdout, stderr.
pub fn connect_stdio(
    exec_id: &str,
    spec: &StdioSpec,
    transport: &Transport,
) -> anyhow::Result<[OwnedFd; 3]> {
    let null = open_null()?;
    let mut fds = Vec::with_capacity(3);
    for (kind, name, piped) in [
        (StreamKind::Stdin, "stdin", spec.stdin),
        (StreamKind::Stdout, "stdout", spec.stdout),
        (StreamKind::Stderr, "stderr", spec.stderr),
    ] {
        let fd = if piped {
            let mut conn = transport
                .connect_stdio(spec.port)
                .with_context(|| format!("{name} stream"))?;
            let hello = StreamHello {
                exec_id: exec_id.to_owned(),
                stream: kind,
            };
            husk_protocol::write_frame(&mut conn, &hello)
                .with_context(|| format!("send the hello of the {name} stream"))?;
            conn.into_fd()
        } else {
            null.try_clone().context("duplicate /dev/null")?
        };
        fds.push(above_stdio(fd)?);
    }
    Ok(fds.try_into().expect("exactly three streams"))
}

/// Moves `fd` above 0..=2 if needed, so that the child's dup2 onto 0, 1 and 2 cannot
/// overwrite one source with another.
pub fn above_stdio(fd: OwnedFd) -> anyhow::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let raw = fcntl::fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3)).context("duplicate a stream fd")?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) just created this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Where the child failed before execve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Stage {
    Setsid = 1,
    Stdio = 2,
    Chroot = 3,
    Chdir = 4,
    Exec = 5,
}

impl Stage {
    fn from_u32(v: u32) -> Option<Stage> {
        [
            Stage::Setsid,
            Stage::Stdio,
            Stage::Chroot,
            Stage::Chdir,
            Stage::Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

/// End of file means the program started; 8 bytes are a stage and an errno.
fn read_report(report: OwnedFd) -> io::Result<Option<(Stage, i32)>> {
    let mut buf = Vec::with_capacity(8);
    File::from(report).take(8).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "garbled exec status from the child",
        )
    };
    let bytes: [u8; 8] = buf.try_into().map_err(|_| bad())?;
    let stage = Stage::from_u32(u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes")))
        .ok_or_else(bad)?;
    let errno = i32::from_ne_bytes(bytes[4..].try_into().expect("4 bytes"));
    Ok(Some((stage, errno)))
}

/// Raw pointers into memory the parent prepared; valid in the child, which has a copy.
struct ChildPlan {
    argv: *const *const c_char,
    envp: *const *const c_char,
    candidates: Vec<*const c_char>,
    root: *const c_char,
    cwd: *const c_char,
    stdio: [RawFd; 3],
    report: RawFd,
    /// fd 0 is a terminal to make the controlling terminal of the new session.
    controlling_terminal: bool,
}

/// The child between fork and execve. Async-signal-safe calls only.
/// Marks every descriptor above 2 close-on-exec, in a forked child just before `execve`:
/// whatever the agent itself inherited without close-on-exec (nothing as PID 1, but
/// anything from a test harness) must not reach the program. Async-signal-safe. Failure
/// (a kernel before 5.11) leaves only that inheritance, so it is not fatal.
pub(crate) fn cloexec_above_stdio() {
    // SAFETY: a plain syscall on integers; it only sets flags on descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

fn run_child(plan: &ChildPlan) -> ! {
    let fail = |stage: Stage, errno: i32| -> ! {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: writes 8 bytes from a live stack buffer; _exit skips atexit handlers
        // and destructors, which must not run in a forked copy of the agent.
        unsafe {
            libc::write(plan.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    let errno = || nix::errno::Errno::last_raw();

    // SAFETY: plain syscalls on integers and on a stack-allocated sigset.
    unsafe {
        // Rust ignores SIGPIPE in the agent; the program expects the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
    }
    // Its own session and process group, so the host can signal the whole job.
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        fail(Stage::Setsid, errno());
    }
    for (target, &source) in plan.stdio.iter().enumerate() {
        // dup2 leaves the new descriptor without close-on-exec, so it survives execve.
        // SAFETY: both are plain descriptor numbers; `source` is open (prepared above 2).
        if unsafe { libc::dup2(source, target as RawFd) } < 0 {
            fail(Stage::Stdio, errno());
        }
    }
    // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is open.
    if plan.controlling_terminal && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        fail(Stage::Stdio, errno());
    }
    cloexec_above_stdio();
    if !plan.root.is_null() {
        // SAFETY: `root` and the literal are NUL-terminated strings alive in this copy.
        if unsafe { libc::chroot(plan.root) } < 0 || unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
            fail(Stage::Chroot, errno());
        }
    }
    // SAFETY: `cwd` is a NUL-terminated string alive in this copy of memory.
    if unsafe { libc::chdir(plan.cwd) } < 0 {
        fail(Stage::Chdir, errno());
    }

    // execvp's rules: an entry that does not exist moves on to the next; EACCES is
    // remembered but only reported when nothing else was found.
    let mut saw_eacces = false;
    let mut last = libc::ENOENT;
    for &candidate in &plan.candidates {
        // SAFETY: NUL-terminated path and null-terminated pointer arrays prepared above.
        unsafe { libc::execve(candidate, plan.argv, plan.envp) };
        last = errno();
        match last {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => break,
        }
    }
    if saw_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
        last = libc::EACCES;
    }
    fail(Stage::Exec, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn program_with_slash_is_used_as_is() {
        assert_eq!(program_candidates("./run", &[]), ["./run"]);
        assert_eq!(
            program_candidates("/bin/sh", &env(&["PATH=/x"])),
            ["/bin/sh"]
        );
    }

    #[test]
    fn program_is_searched_in_path_of_the_given_env() {
        assert_eq!(
            program_candidates("ls", &env(&["A=1", "PATH=/opt/bin/:/bin", "PATH=/no"])),
            ["/opt/bin/ls", "/bin/ls"]
        );
    }

    #[test]
    fn default_path_applies_without_path_in_env() {
        let c = program_candidates("ls", &env(&["HOME=/"]));
        assert_eq!(c.first().map(String::as_str), Some("/usr/local/sbin/ls"));
        assert_eq!(c.last().map(String::as_str), Some("/bin/ls"));
        assert_eq!(c.len(), DEFAULT_PATH.split(':').count());
    }

    #[test]
    fn empty_path_entry_means_working_directory_and_root_stays_root() {
        assert_eq!(program_candidates("x", &env(&["PATH=:/"])), ["x", "/x"]);
    }
}
