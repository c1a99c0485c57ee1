//! What runs the guest: a KVM microVM (the real thing) or, for tests on hosts without a
//! KVM that boots Linux, the agent as a host process (`HUSK_SANDBOX_BACKEND=process`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::jail::{Confined, Jail};
use crate::agent::AgentAddress;

/// What a backend needs to start a guest.
pub struct GuestSpec<'a> {
    /// The sandbox's jail directory (host path; also the working directory), where the
    /// backend keeps its files and sockets.
    pub dir: PathBuf,
    /// The jail to confine the sandbox in once the VM is built (VM backend only).
    pub jail: &'a Jail,
    /// Disks, in the order the guest gets them: the root's layers, then its scratch disk.
    pub disks: Vec<GuestDisk>,
    /// The shared directory to export to the guest (see [`crate::shares`]).
    pub shared_dir: Option<PathBuf>,
    /// Guest memory.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Keep the guest's console log (`--debug`).
    pub debug: bool,
    /// Network devices, in order.
    pub nets: Vec<NetDevice>,
}

/// A network device of the guest.
#[derive(Debug)]
pub struct NetDevice {
    /// The MAC it starts with.
    pub mac: [u8; 6],
    /// The MTU offered, when the interface is known at boot.
    pub mtu: Option<u16>,
    /// Its tap; `None`: link down until [`Backend::attach_net`].
    pub tap: Option<OwnedFd>,
}

/// A disk for the guest.
#[derive(Debug, Clone)]
pub struct GuestDisk {
    /// The image (a `/proc/self/fd/N` path for a cached layer this process holds).
    pub path: PathBuf,
    /// Attach it read-only.
    pub readonly: bool,
}

/// A started guest.
pub trait Backend: Send + Sync {
    /// Where its agent listens.
    fn agent_address(&self) -> AgentAddress;
    /// Each disk's device path as the agent sees it, in [`GuestSpec::disks`] order.
    fn disk_devices(&self) -> Vec<String>;
    /// How the agent reaches the shared directory.
    fn shared(&self) -> Option<husk_protocol::SharedDir>;
    /// `Some(why)` once the guest has ended; waits up to `timeout` for that.
    fn ended(&self, timeout: Duration) -> Option<String>;
    /// Freezes the guest.
    fn pause(&self) -> Result<()>;
    /// Thaws the guest.
    fn resume(&self) -> Result<()>;
    /// Ends the guest now.
    fn stop(&self);
    /// Ends the guest if it still runs and waits until it is gone and has released
    /// everything it held outside the state directory.
    fn teardown(&self) {
        self.stop();
        let _ = self.ended(std::time::Duration::from_secs(10));
    }
    /// The name recorded in state.
    fn name(&self) -> &'static str;
    /// Gives network device `slot` its tap.
    fn attach_net(&self, slot: usize, _tap: OwnedFd) -> Result<()> {
        bail!("the {} backend has no network device {slot}", self.name())
    }
    /// How the sandbox was confined when the guest started (`None`: not at all, as the
    /// test-only process backend leaves it).
    fn confined(&self) -> Option<&Confined> {
        None
    }
    /// System calls the backend makes from the sandbox's control threads beyond the
    /// control role's allowlist.
    fn seccomp_extra(&self) -> husk_vmm::seccomp::Allowlist {
        husk_vmm::seccomp::Allowlist::new()
    }
}

/// Which backend runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A microVM.
    Vm,
    /// The agent as a host process, unconfined: test builds only.
    Process,
}

/// The backend `HUSK_SANDBOX_BACKEND` names (default `vm`). The process backend runs the
/// container on the host with no VM around it, so only debug builds (the host-tier
/// tests) accept it: a release husk refuses to be talked out of its isolation.
pub fn choose(env: Option<&str>, test_build: bool) -> Result<Kind> {
    match env {
        None | Some("") | Some("vm") => Ok(Kind::Vm),
        Some("process") if test_build => Ok(Kind::Process),
        Some("process") => {
            bail!("HUSK_SANDBOX_BACKEND=process is for husk's own tests; this build runs containers in microVMs only")
        }
        Some(other) => bail!("HUSK_SANDBOX_BACKEND={other:?}: use vm"),
    }
}

/// The backend `HUSK_SANDBOX_BACKEND` picks for this build.
pub fn kind() -> Result<Kind> {
    let env = std::env::var("HUSK_SANDBOX_BACKEND").ok();
    choose(env.as_deref(), cfg!(debug_assertions))
}

/// Starts the backend [`choose`] picks.
pub fn start(spec: &GuestSpec<'_>) -> Result<Box<dyn Backend>> {
    match kind()? {
        Kind::Vm => Ok(Box::new(super::vm_backend::VmBackend::start(spec)?)),
        Kind::Process => Ok(Box::new(super::process_backend::ProcessBackend::start(
            spec,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_builds_refuse_the_process_backend() {
        assert_eq!(choose(Some("process"), true).unwrap(), Kind::Process);
        let err = choose(Some("process"), false).unwrap_err().to_string();
        assert!(err.contains("microVMs only"), "{err}");
        assert_eq!(choose(None, false).unwrap(), Kind::Vm);
        assert_eq!(choose(Some("vm"), false).unwrap(), Kind::Vm);
        assert!(choose(Some("qemu"), true).is_err());
    }
}
