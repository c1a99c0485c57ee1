//! `process` of config.json: limits, privileges, identity, the program's path, and execve.
//!
//! runc's order: rlimits; no_new_privs; seccomp now if it needs CAP_SYS_ADMIN (no
//! no_new_privs), else as the very last thing before execve; the bounding set, then
//! groups, gid and uid with capabilities kept, then the other four sets; umask; the
//! working directory and the program lookup as the new user.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimit, Process};

use super::caps::CapSets;
use super::seccomp::{self, Filter};
use super::Channel;
use crate::exec::program_candidates;

/// A process ready for execve.
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Installed right before execve (no_new_privs is set, so no privilege is needed).
    late_seccomp: Option<Filter>,
}

/// Everything up to the execve; the caller may still wait (for `Start`) before [`exec`].
pub fn prepare(
    process: &Process,
    seccomp_spec: Option<&LinuxSeccomp>,
    channel: &mut Channel,
) -> anyhow::Result<Program> {
    let args = process.args().as_deref().unwrap_or_default();
    let Some(argv0) = args.first() else {
        bail!("process.args must not be empty");
    };
    let user = process.user();
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(user.uid())));
    }
    for rlimit in process.rlimits().iter().flatten() {
        set_rlimit(rlimit)?;
    }
    let filter = seccomp_spec
        .map(seccomp::compile)
        .transpose()
        .context("seccomp profile")?;
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    if no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(io::Error::last_os_error()).context("set no_new_privs");
        }
    }
    let mut late_seccomp = None;
    if let Some(filter) = filter {
        if no_new_privs {
            late_seccomp = Some(filter);
        } else {
            filter.install().context("install the seccomp filter")?;
        }
    }

    let caps = process
        .capabilities()
        .as_ref()
        .map(CapSets::from_spec)
        .transpose()?;
    if let Some(caps) = &caps {
        caps.limit_bounding_set()?;
    }
    set_keep_caps(true)?;
    set_identity(user.uid(), user.gid(), user.additional_gids().as_deref())?;
    set_keep_caps(false)?;
    if let Some(caps) = &caps {
        for skipped in caps.apply()? {
            channel.log(format!("capability not raised: {skipped}"));
        }
    }
    let umask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        umask as libc::mode_t,
    ));

    let cwd = process.cwd();
    let cwd = if cwd.as_os_str().is_empty() {
        Path::new("/")
    } else {
        cwd.as_path()
    };
    nix::unistd::chdir(cwd).with_context(|| format!("chdir to {}", cwd.display()))?;
    let path = find_program(argv0, &env)?;

    let c = |s: &str| CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"));
    Ok(Program {
        path: CString::new(path.into_os_string().into_encoded_bytes()).context("program path")?,
        argv: args.iter().map(|a| c(a)).collect::<anyhow::Result<_>>()?,
        env: env.iter().map(|e| c(e)).collect::<anyhow::Result<_>>()?,
        late_seccomp,
    })
}

impl Program {
    /// Replaces this process with the program; returns only on failure.
    pub fn exec(self) -> anyhow::Error {
        // The agent (Rust) ignores SIGPIPE and ignored signals survive execve.
        // SAFETY: resetting a signal disposition to its default has no memory effects.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        if let Some(filter) = &self.late_seccomp {
            if let Err(e) = filter.install() {
                return anyhow::Error::new(e).context("install the seccomp filter");
            }
        }
        let Err(e) = nix::unistd::execve(&self.path, &self.argv, &self.env);
        anyhow::anyhow!("exec {:?}: {}", self.path, io::Error::from(e))
    }
}

/// Finds `argv0` as Go's `exec.LookPath` does for runc, with runc's messages.
fn find_program(argv0: &str, env: &[String]) -> anyhow::Result<PathBuf> {
    let executable = |p: &Path| -> io::Result<()> {
        let meta = std::fs::metadata(p)?;
        if meta.is_dir()
            || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0
        {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(())
    };
    if argv0.contains('/') {
        return match executable(Path::new(argv0)) {
            Ok(()) => Ok(argv0.into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("exec: {argv0:?}: stat {argv0}: no such file or directory")
            }
            Err(e) => bail!("exec: {argv0:?}: {}", lower(&e)),
        };
    }
    for candidate in program_candidates(argv0, env) {
        if executable(Path::new(&candidate)).is_ok() {
            return Ok(candidate.into());
        }
    }
    bail!("exec: {argv0:?}: executable file not found in $PATH")
}

/// Go prints errno strings in lower case.
fn lower(e: &io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_owned();
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

/// The home directory of `uid` in the container's /etc/passwd, else `/`.
fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 6 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_owned())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

fn set_rlimit(rlimit: &PosixRlimit) -> anyhow::Result<()> {
    let name = serde_json::to_value(rlimit.typ())?;
    let name = name.as_str().unwrap_or_default();
    let resource = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        other => bail!("unknown rlimit {other}"),
    };
    let limit = libc::rlimit {
        rlim_cur: rlimit.soft(),
        rlim_max: rlimit.hard(),
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(resource, &limit) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "set {name} to soft {} hard {}",
                rlimit.soft(),
                rlimit.hard()
            )
        });
    }
    Ok(())
}

fn set_keep_caps(keep: bool) -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error()).context("PR_SET_KEEPCAPS");
    }
    Ok(())
}

fn set_identity(uid: u32, gid: u32, groups: Option<&[u32]>) -> anyhow::Result<()> {
    let groups: Vec<libc::gid_t> = groups.unwrap_or_default().to_vec();
    // SAFETY: the pointer and length describe a live slice for the call.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
        let err = io::Error::last_os_error();
        // In a user namespace with setgroups denied, groups can't change (runc skips).
        if err.raw_os_error() != Some(libc::EPERM) || !groups.is_empty() {
            return Err(err).with_context(|| format!("set additional groups {groups:?}"));
        }
    }
    // SAFETY: plain syscalls on integers.
    if unsafe { libc::setresgid(gid, gid, gid) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("set gid {gid}"));
    }
    // SAFETY: plain syscalls on integers.
    if unsafe { libc::setresuid(uid, uid, uid) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("set uid {uid}"));
    }
    Ok(())
}

/// Gives the process a terminal from the container's devpts: the slave becomes its
/// controlling terminal and fds 0-2 (and, for a container's own process, /dev/console);
/// the master goes to the agent.
pub fn attach_terminal(
    channel: &mut Channel,
    process: &Process,
    console: bool,
) -> anyhow::Result<()> {
    let pty = crate::terminal::open_pty()
        .context("allocate a terminal in the container (is /dev/pts a devpts mount?)")?;
    if let Some(size) = process.console_size() {
        let rows = u16::try_from(size.height()).unwrap_or(u16::MAX);
        let cols = u16::try_from(size.width()).unwrap_or(u16::MAX);
        crate::terminal::set_window_size(pty.slave.as_raw_fd(), rows, cols)
            .context("set the terminal size")?;
    }
    if console {
        let console = Path::new("/dev/console");
        if !console.exists() {
            std::fs::File::create(console).context("create /dev/console")?;
        }
        nix::mount::mount(
            Some(&pty.slave_path),
            console,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind the terminal on /dev/console")?;
    }
    channel
        .send_terminal(pty.master.as_raw_fd())
        .context("pass the terminal to the agent")?;
    drop(pty.master);
    let slave = pty.slave.as_raw_fd();
    // SAFETY: ioctl and dup2 on descriptors this process owns; the setup child made this
    // process a session leader without a controlling terminal.
    unsafe {
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
            return Err(io::Error::last_os_error()).context("make the terminal controlling");
        }
        for target in 0..3 {
            if libc::dup2(slave, target) < 0 {
                return Err(io::Error::last_os_error()).context("make the terminal stdio");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_reads_like_runc() {
        let err = find_program("nosuch-program-x", &["PATH=/bin".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"nosuch-program-x\": executable file not found in $PATH"
        );
        let err = find_program("/nosuch", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"/nosuch\": stat /nosuch: no such file or directory"
        );
    }

    #[test]
    fn directories_and_plain_files_are_not_programs() {
        let err = find_program("/", &[]).unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
        assert!(find_program("sh", &["PATH=/nonexistent:/bin".into()]).is_ok());
    }
}
