//! The sandbox process's confinement: what it may use of the host once its VM is built.
//!
//! Applied in steps, each as early as what follows allows:
//! - at start: resource limits sized to the sandbox's own needs ([`set_rlimits`]);
//! - ... (namespaces, cgroup, jail, identity and capabilities, seccomp follow).

use anyhow::{Context, Result};

/// Descriptors the sandbox may hold: above its connection caps (1024 vsock streams,
/// the control connections, stdio and the VM's own descriptors), so that accepting a
/// control connection never fails for want of one.
pub const NOFILE: u64 = 4096;

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

/// Sets the sandbox's resource limits: [`NOFILE`] descriptors (soft and hard: raising the
/// hard limit takes the privilege the sandbox has only now), and no core dumps (a core of
/// the sandbox would hold guest memory).
pub fn set_rlimits() -> Result<()> {
    setrlimit(libc::RLIMIT_NOFILE, NOFILE, NOFILE)
        .with_context(|| format!("setting the sandbox's descriptor limit to {NOFILE}"))?;
    setrlimit(libc::RLIMIT_CORE, 0, 0).context("disabling the sandbox's core dumps")?;
    Ok(())
}
