//! The sandbox process's confinement: what it may use of the host once its VM is built.
//!
//! Applied in steps, each as early as what follows allows:
//! - at start: resource limits sized to the sandbox's own needs ([`set_rlimits`]);
//! - before anything is built: mount, IPC, UTS and cgroup namespaces of its own
//!   ([`enter_namespaces`]), so that what it mounts stays its own and a tool reading
//!   `/proc/<pid>/ns/*` of the container's pid sees namespaces apart from the host's;
//! - once the guest's VM runs (its threads each under their own filter): the control
//!   role's seccomp filter on the main thread, inherited by every thread it starts
//!   ([`install_control_filter`]).

use std::os::fd::IntoRawFd;

use anyhow::{Context, Result};
use husk_vmm::seccomp::{self, Allowlist, RoleFilter, ThreadRole};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::logging::{LogConfig, LogFormat};

/// Descriptors the sandbox may hold: above its connection caps (1024 vsock streams,
/// the control connections, stdio and the VM's own descriptors), so that accepting a
/// control connection never fails for want of one, and room for the virtio-fs server,
/// which holds one per inode the guest knows (a `find` over a workspace of 100,000 files
/// is 100,000), as virtiofsd takes. The kernel's memory for them is charged to the
/// container's cgroup, which holds the sandbox.
pub const NOFILE: u64 = 1 << 20;

fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one valid rlimit struct.
    if unsafe { libc::setrlimit(resource, &limit) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Fewest descriptors the sandbox runs with (its connection caps and more).
pub const MIN_NOFILE: u64 = 4096;

/// Sets the sandbox's resource limits: [`NOFILE`] descriptors (soft and hard: raising the
/// hard limit takes the privilege the sandbox has only now; where even root may not raise
/// it, a container without CAP_SYS_RESOURCE, the hard limit it has, if at least
/// [`MIN_NOFILE`]), and no core dumps (a core of the sandbox would hold guest memory).
pub fn set_rlimits() -> Result<()> {
    if let Err(e) = setrlimit(libc::RLIMIT_NOFILE, NOFILE, NOFILE) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the one struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0
            || lim.rlim_max < MIN_NOFILE
        {
            return Err(e).with_context(|| {
                format!(
                    "setting the sandbox's descriptor limit to {NOFILE} (at least {MIN_NOFILE})"
                )
            });
        }
        setrlimit(libc::RLIMIT_NOFILE, lim.rlim_max, lim.rlim_max).with_context(|| {
            format!("setting the sandbox's descriptor limit to {}", lim.rlim_max)
        })?;
    }
    setrlimit(libc::RLIMIT_CORE, 0, 0).context("disabling the sandbox's core dumps")?;
    Ok(())
}

/// Moves the (still single-threaded) sandbox into new mount, IPC and UTS namespaces, and
/// a new cgroup namespace with `cgroup`; mounts made from now on do not propagate to the
/// host. With `hostname`, the new UTS namespace gets the container's hostname.
pub fn enter_namespaces(cgroup: bool, hostname: Option<&str>) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if cgroup {
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    unshare(flags).context("giving the sandbox namespaces of its own")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the sandbox's mounts private")?;
    if let Some(name) = hostname.filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(name)
            .with_context(|| format!("setting the sandbox's hostname to {name:?}"))?;
    }
    Ok(())
}

/// Where a seccomp violation is recorded: the `--log` file (as runc's JSON error line with
/// `--log-format json`), else stderr. Installs the SIGSYS handler that writes it.
pub fn record_violations_in(log: &LogConfig) -> Result<()> {
    let (fd, json) = match &log.file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {} for the seccomp record", path.display()))?;
            // Kept open for the life of the process: the handler writes to it.
            (f.into_raw_fd(), log.format == LogFormat::Json)
        }
        None => (libc::STDERR_FILENO, false),
    };
    seccomp::install_violation_handler(fd, json)?;
    Ok(())
}

/// The control role's allowlist for this process, plus what its backend needs.
pub fn control_allowlist(extra: &Allowlist) -> Allowlist {
    let mut list = seccomp::control::allowlist(
        std::process::id() as libc::pid_t,
        husk_vmm::vstate::vcpu::kick_signal(),
    );
    list.merge(extra);
    list
}

/// Installs the control role's filter (with `extra`) on the calling thread; threads it
/// starts from now on inherit it.
pub fn install_control_filter(extra: &Allowlist) -> Result<()> {
    RoleFilter::compile(ThreadRole::Control, &control_allowlist(extra))?.install()?;
    Ok(())
}
