//! What a VM is made of.

use std::path::PathBuf;

/// A disk attached as virtio-blk (`/dev/vda`, `/dev/vdb`, ... in attachment order).
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Backing image file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// The hybrid vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Unix socket the host connects through; guest connections to host port P go to
    /// `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Everything needed to build and boot one microVM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Initramfs (cpio) to pass to the kernel.
    pub initrd: Option<PathBuf>,
    /// Appended to husk's own kernel command line.
    pub extra_cmdline: String,
    /// Number of vCPUs (1 to 32).
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Disks, in order.
    pub disks: Vec<DiskConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Log file for the guest's serial console; no console at all when `None`.
    pub serial_log: Option<PathBuf>,
    /// Run each VM thread under its role's seccomp filter ([`crate::seccomp`]).
    pub seccomp: bool,
}

impl VmConfig {
    /// A config with 1 vCPU, 128 MiB, no devices, seccomp filters on.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            extra_cmdline: String::new(),
            vcpus: 1,
            mem_mib: 128,
            disks: Vec::new(),
            vsock: None,
            serial_log: None,
            seccomp: true,
        }
    }
}
