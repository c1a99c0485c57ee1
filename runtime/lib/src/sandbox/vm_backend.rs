//! The real backend: the container's own KVM microVM, run by husk's VMM inside the
//! sandbox process (vCPU and device threads), so the VM lives and dies with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use std::os::fd::OwnedFd;

use husk_vmm::devices::virtio::net::tap::Tap;
use husk_vmm::{DiskConfig, FsConfig, NetConfig, RunningVm, VmConfig, VmExit, VsockConfig};

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
    disks: usize,
    shared: bool,
    confined: Confined,
}

/// The guest's name for the `i`th virtio-blk disk (`vda`, ..., `vdz`, `vdaa`, ...).
fn disk_name(i: usize) -> String {
    let letter = |n: usize| (b'a' + n as u8) as char;
    if i < 26 {
        format!("/dev/vd{}", letter(i))
    } else {
        format!("/dev/vd{}{}", letter(i / 26 - 1), letter(i % 26))
    }
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
            disks: spec
                .disks
                .iter()
                .map(|d| DiskConfig {
                    path: d.path.clone(),
                    read_only: d.readonly,
                })
                .collect(),
            nets: spec
                .nets
                .iter()
                .map(|n| -> Result<NetConfig> {
                    Ok(NetConfig {
                        mac: n.mac,
                        mtu: n.mtu,
                        tap: n.tap.as_ref().map(OwnedFd::try_clone).transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: PathBuf::from(ContainerDir::VSOCK_SOCKET),
            }),
            fs: spec.shared_dir.as_ref().map(|dir| FsConfig {
                tag: husk_protocol::SHARED_FS_TAG.into(),
                // Named relative to the jail, the working directory before and after
                // the pivot: the file server opens it again when the guest remounts.
                shared_dir: dir.strip_prefix(&spec.dir).unwrap_or(dir).to_owned(),
                container_roots: vec![crate::shares::ROOTFS_SHARE.into()],
            }),
            serial_log: spec.debug.then(|| PathBuf::from(ContainerDir::CONSOLE_LOG)),
            seccomp: true,
        };
        let built = husk_vmm::build_vm(&config).context("building the microVM")?;
        let confined = spec
            .jail
            .enter(
                &built.confinement_needs().capabilities,
                built.confinement_needs().keeps_root_uid,
            )
            .context("confining the sandbox")?;
        tracing::debug!(?confined, "sandbox confined");
        let vm = built
            .start(config.seccomp)
            .context("starting the microVM")?;
        Ok(Self {
            vm,
            dir: spec.dir.clone(),
            disks: spec.disks.len(),
            shared: spec.shared_dir.is_some(),
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

    fn disk_devices(&self) -> Vec<String> {
        (0..self.disks).map(disk_name).collect()
    }

    fn shared(&self) -> Option<husk_protocol::SharedDir> {
        self.shared.then(|| husk_protocol::SharedDir {
            tag: Some(husk_protocol::SHARED_FS_TAG.into()),
            path: husk_protocol::SHARED_DIR.into(),
        })
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

    fn attach_net(&self, slot: usize, tap: OwnedFd) -> Result<()> {
        let handle = self
            .vm
            .net(slot)
            .with_context(|| format!("the microVM has no network device {slot}"))?;
        let tap = Tap::from_fd(tap).context("the tap handed to the sandbox")?;
        handle
            .attach(Box::new(tap))
            .with_context(|| format!("network device {slot}"))
    }

    fn seccomp_extra(&self) -> husk_vmm::seccomp::Allowlist {
        // The VM sandbox's control threads were seen opening a file once the guest's
        // container exists (the call site is not known yet). Inside the jail the only
        // files are the sandbox's own (image, console log, sockets), which it holds
        // already: opening them gives nothing new.
        let mut l = husk_vmm::seccomp::Allowlist::new();
        l.allow(&[libc::SYS_openat]);
        // A tap handed over when the container starts (`attach_net`) is checked and set
        // up on the control thread that received it.
        l.allow_arg_in(
            libc::SYS_ioctl,
            1,
            &[libc::TUNGETIFF, libc::TUNSETVNETHDRSZ, libc::TUNSETOFFLOAD],
        );
        l
    }

    fn confined(&self) -> Option<&Confined> {
        Some(&self.confined)
    }
}

#[cfg(test)]
mod tests {
    use super::disk_name;

    #[test]
    fn disks_are_named_as_linux_names_virtio_blk_devices() {
        assert_eq!(disk_name(0), "/dev/vda");
        assert_eq!(disk_name(25), "/dev/vdz");
        assert_eq!(disk_name(26), "/dev/vdaa");
    }
}
