//! What a VM is made of.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use crate::devices::virtio::fs::FsConfig;

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

/// A virtio-net device; the guest probes them in order after the disks and vsock.
#[derive(Debug)]
pub struct NetConfig {
    /// The MAC the guest's interface starts with (unique among the VM's devices: the
    /// agent finds each interface by it).
    pub mac: [u8; 6],
    /// The MTU offered to the guest, when the host interface is known at boot.
    pub mtu: Option<u16>,
    /// The tap (opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`). Without one the link
    /// is down until a tap is attached through [`crate::RunningVm::net`].
    pub tap: Option<OwnedFd>,
}

/// Everything needed to build and boot one microVM.
#[derive(Debug)]
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
    /// The virtio-fs device exporting the sandbox's shared directory, if any.
    pub fs: Option<FsConfig>,
    /// Network devices, in order.
    pub nets: Vec<NetConfig>,
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
            fs: None,
            nets: Vec::new(),
            serial_log: None,
            seccomp: true,
        }
    }
}
