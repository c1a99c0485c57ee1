//! The real backend: the container's own KVM microVM, run by husk's VMM inside the
//! sandbox process (vCPU and device threads), so the VM lives and dies with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_vmm::{DiskConfig, RunningVm, VmConfig, VmExit, VsockConfig};

use super::backend::{Backend, GuestSpec};
use super::jail::Confined;
use crate::agent::AgentAddress;
use crate::state::ContainerDir;

const GUEST_CID: u64 = 3;

/// Where an installed husk finds its guest kernel and initramfs: `HUSK_KERNEL` and
/// `HUSK_INITRD` if set, else `<prefix>/share/husk/{vmlinux,initramfs.cpio}` for the
/// prefix husk is installed in (`<prefix>/bin/husk`), then /usr/local and /usr.
pub fn guest_files() -> Result<(PathBuf, PathBuf)> {
    Ok((
        find_guest_file("HUSK_KERNEL", "vmlinux")?,
        find_guest_file("HUSK_INITRD", "initramfs.cpio")?,
    ))
}

fn find_guest_file(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} does not exist", p.display());
        }
        return Ok(p);
    }
    let mut candidates = Vec::new();
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_owned))
    {
        candidates.push(prefix.join("share/husk").join(name));
    }
    candidates.push(Path::new("/usr/local/share/husk").join(name));
    candidates.push(Path::new("/usr/share/husk").join(name));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "guest {name} not found: set {env} or install it as one of {}",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A running microVM.
pub struct VmBackend {
    vm: RunningVm,
    dir: PathBuf,
    confined: Confined,
}

impl VmBackend {
    /// Builds the VM, confines the sandbox in its jail (see [`super::jail`]), and only
    /// then lets the guest run. The sandbox's working directory is the jail: the VM's
    /// files and sockets are named relative to it.
    pub fn start(spec: &GuestSpec<'_>) -> Result<Self> {
        let (kernel, initrd) = guest_files()?;
        let config = VmConfig {
            kernel,
            initrd: Some(initrd),
            extra_cmdline: String::new(),
            vcpus: spec.vcpus,
            mem_mib: spec.memory_mib,
            disks: vec![DiskConfig {
                path: spec.image.clone(),
                read_only: spec.readonly,
            }],
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: PathBuf::from(ContainerDir::VSOCK_SOCKET),
            }),
            serial_log: spec.debug.then(|| PathBuf::from(ContainerDir::CONSOLE_LOG)),
            seccomp: true,
        };
        let built = husk_vmm::build_vm(&config).context("building the microVM")?;
        let confined = spec
            .jail
            .enter(&built.confinement_needs().capabilities)
            .context("confining the sandbox")?;
        tracing::debug!(?confined, "sandbox confined");
        let vm = built
            .start(config.seccomp)
            .context("starting the microVM")?;
        Ok(Self {
            vm,
            dir: spec.dir.clone(),
            confined,
        })
    }
}

fn describe(exit: &VmExit) -> String {
    match exit {
        VmExit::GuestReset => {
            "the guest reset the machine (reboot, kernel panic or no init?)".into()
        }
        VmExit::GuestHalted => "the guest powered off".into(),
        VmExit::Stopped => "the VM was stopped".into(),
        VmExit::Error(e) => format!("the VM failed: {e}"),
    }
}

impl Backend for VmBackend {
    fn agent_address(&self) -> AgentAddress {
        AgentAddress::Vsock {
            dir: self.dir.clone(),
            socket: ContainerDir::VSOCK_SOCKET.to_owned(),
        }
    }

    fn root_device(&self) -> String {
        "/dev/vda".into()
    }

    fn ended(&self, timeout: Duration) -> Option<String> {
        self.vm.wait_timeout(timeout).map(|e| describe(&e))
    }

    fn pause(&self) -> Result<()> {
        self.vm.pause().context("pausing the microVM")
    }

    fn resume(&self) -> Result<()> {
        self.vm.resume();
        Ok(())
    }

    fn stop(&self) {
        self.vm.stop();
    }

    fn name(&self) -> &'static str {
        "vm"
    }

    fn seccomp_extra(&self) -> husk_vmm::seccomp::Allowlist {
        // The VM sandbox's control threads were seen opening a file once the guest's
        // container exists (the call site is not known yet). Inside the jail the only
        // files are the sandbox's own (image, console log, sockets), which it holds
        // already: opening them gives nothing new.
        let mut l = husk_vmm::seccomp::Allowlist::new();
        l.allow(&[libc::SYS_openat]);
        l
    }

    fn confined(&self) -> Option<&Confined> {
        Some(&self.confined)
    }
}
