//! What runs the guest: a KVM microVM (the real thing) or, for tests on hosts without a
//! KVM that boots Linux, the agent as a host process (`HUSK_SANDBOX_BACKEND=process`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::agent::AgentAddress;
use crate::sockdir::SocketDir;

/// What a backend needs to start a guest.
pub struct GuestSpec<'a> {
    /// The container's state directory.
    pub dir: PathBuf,
    /// Sockets in that directory, by short paths.
    pub sockets: &'a SocketDir,
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
}

/// Starts the backend `HUSK_SANDBOX_BACKEND` names (default `vm`).
pub fn start(spec: &GuestSpec<'_>) -> Result<Box<dyn Backend>> {
    match std::env::var("HUSK_SANDBOX_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("vm") => Ok(Box::new(super::vm_backend::VmBackend::start(spec)?)),
        Ok("process") => Ok(Box::new(super::process_backend::ProcessBackend::start(
            spec,
        )?)),
        Ok(other) => bail!("HUSK_SANDBOX_BACKEND={other:?}: use vm or process"),
    }
}
