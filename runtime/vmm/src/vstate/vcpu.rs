//! vCPUs: their boot state and the thread that runs each one.

use std::sync::{Arc, Once};

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use tracing::{debug, warn};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::x86_64::{cpuid, msr, regs};
use crate::control::{VmControl, VmExit};
use crate::device_manager::MmioBus;
use crate::devices::legacy::{PortAction, PortIoBus};

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {index}: {what}: {source}")]
pub struct VcpuError {
    index: u8,
    what: &'static str,
    source: kvm_ioctls::Error,
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's handler (once per process). Without a handler the signal
/// would kill the process; with one, KVM_RUN returns EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// One vCPU, configured and ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` with CPUID, MSRs, LAPIC and FPU set; the boot vCPU
    /// (`entry` is `Some`) also gets long-mode registers pointing at the kernel.
    pub fn new(
        vm: &VmFd,
        kvm_cpuid: &CpuId,
        index: u8,
        count: u8,
        entry: Option<u64>,
    ) -> Result<Self, VcpuError> {
        let err = |what| {
            move |source| VcpuError {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(err("KVM_CREATE_VCPU"))?;
        let mut cpuid = kvm_cpuid.clone();
        cpuid::adjust_for_vcpu(&mut cpuid, index, count);
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        let msrs = msr::boot_msrs();
        let written = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if written != msrs.as_slice().len() {
            debug!(index, written, "some boot MSRs are not supported by KVM");
        }
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
        fd.set_fpu(&regs::boot_fpu()).map_err(err("KVM_SET_FPU"))?;
        if let Some(entry) = entry {
            let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            fd.set_sregs(&regs::boot_sregs(sregs))
                .map_err(err("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(err("KVM_SET_REGS"))?;
        }
        Ok(Self { fd, index })
    }

    /// Runs the vCPU until the VM stops; the reason goes to `control`.
    pub fn run(mut self, control: Arc<VmControl>, pio: Arc<PortIoBus>, mmio: Arc<MmioBus>) {
        while !control.should_stop() {
            control.park_if_paused();
            if control.should_stop() {
                break;
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    // Kicked: by a pause, a stop, or the halt watchdog. Look at our state
                    // so a guest that halted for good can be told apart from an idle one.
                    control.report_dead_halt(usize::from(self.index), self.is_dead_halted());
                    continue;
                }
                Err(e) => {
                    control.finish(VmExit::Error(format!("vCPU {}: KVM_RUN: {e}", self.index)));
                    break;
                }
            };
            control.report_dead_halt(usize::from(self.index), false);
            let outcome = match exit {
                VcpuExit::IoIn(port, data) => {
                    pio.read(port, data);
                    None
                }
                VcpuExit::IoOut(port, data) => match pio.write(port, data) {
                    PortAction::Reset => Some(VmExit::GuestReset),
                    PortAction::None => None,
                },
                VcpuExit::MmioRead(addr, data) => {
                    mmio.read(addr, data);
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    mmio.write(addr, data);
                    None
                }
                VcpuExit::Shutdown => Some(VmExit::Error(format!(
                    "vCPU {}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)",
                    self.index
                ))),
                VcpuExit::InternalError => Some(VmExit::Error(format!(
                    "vCPU {}: KVM internal error (the guest ran something KVM cannot emulate)",
                    self.index
                ))),
                VcpuExit::FailEntry(reason, cpu) => Some(VmExit::Error(format!(
                    "vCPU {}: KVM failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})",
                    self.index
                ))),
                VcpuExit::SystemEvent(kind, _) => {
                    debug!(index = self.index, kind, "system event");
                    Some(VmExit::GuestReset)
                }
                VcpuExit::Hlt => Some(VmExit::Error(format!(
                    "vCPU {}: the guest halted with interrupts off",
                    self.index
                ))),
                other => {
                    warn!(index = self.index, "unexpected vCPU exit: {other:?}");
                    None
                }
            };
            if let Some(reason) = outcome {
                control.finish(reason);
            }
        }
    }
}

impl Vcpu {
    /// Halted with interrupts disabled, or never started by the boot CPU: nothing but an
    /// NMI or INIT (which nobody sends) could make it run again.
    fn is_dead_halted(&self) -> bool {
        const IF: u64 = 1 << 9;
        match self.fd.get_mp_state().map(|s| s.mp_state) {
            Ok(kvm_bindings::KVM_MP_STATE_HALTED) => self
                .fd
                .get_regs()
                .map(|r| r.rflags & IF == 0)
                .unwrap_or(false),
            Ok(
                kvm_bindings::KVM_MP_STATE_UNINITIALIZED | kvm_bindings::KVM_MP_STATE_INIT_RECEIVED,
            ) => self.index != 0,
            _ => false,
        }
    }
}

/// Creates every vCPU of a VM with `count` vCPUs; vCPU 0 boots at `entry`.
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: u64,
) -> Result<Vec<Vcpu>, crate::VmmError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| crate::VmmError::Setup(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    (0..count)
        .map(|i| Vcpu::new(vm, &supported, i, count, (i == 0).then_some(entry)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(crate::VmmError::from)
}
