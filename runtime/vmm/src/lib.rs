//! husk's virtual machine monitor.
//!
//! The layers, from the bottom: [`arch`] (x86_64 boot layout, page tables, MP table, CPUID),
//! [`vstate`] (the KVM VM and vCPUs), [`devices`] (legacy ports and virtio-mmio devices),
//! [`device_manager`] (the MMIO bus and the device thread) and [`builder`], which turns a
//! [`VmConfig`] into a [`RunningVm`].
#![warn(missing_docs)]

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod devices;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ratelimit;
pub mod seccomp;
pub mod vstate;

pub use builder::{build_vm, start_vm, BuiltVm, RunningVm};
pub use config::{DiskConfig, FsConfig, NetConfig, VmConfig, VsockConfig};
pub use control::VmExit;
pub use devices::virtio::net::NetHandle;

/// Everything that can go wrong building a VM, each naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is not usable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// KVM or guest memory.
    #[error(transparent)]
    Vm(#[from] vstate::vm::VmError),
    /// Kernel, initrd or command line.
    #[error(transparent)]
    Boot(#[from] arch::x86_64::boot::BootError),
    /// The MP table.
    #[error(transparent)]
    MpTable(#[from] arch::x86_64::mptable::MpTableError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::VcpuError),
    /// A disk.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::BlockError),
    /// The shared directory.
    #[error(transparent)]
    Fs(#[from] devices::virtio::fs::FsError),
    /// Any other setup step.
    #[error("{0}")]
    Setup(String),
}
