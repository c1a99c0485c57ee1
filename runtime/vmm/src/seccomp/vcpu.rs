//! The vCPU threads' allowlist: KVM_RUN and the two state reads of the halt check, plus
//! what serving an exit takes. Device work a register access starts (activation, reset,
//! a trapped queue kick) is handed to the device thread, so none of its system calls
//! are needed here; writing the serial console's log and the devices' eventfds is a
//! `write`, in the base list.

use super::{base, Allowlist};
use nr::{KVM_GET_MP_STATE, KVM_GET_REGS, KVM_RUN};

/// The request numbers of the vCPU ioctls (linux/kvm.h).
mod nr {
    #![allow(missing_docs)]
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

    const KVMIO: u32 = 0xAE;
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
}

/// The vCPU role's allowlist.
pub fn allowlist() -> Allowlist {
    let mut l = base();
    l.allow_arg_in(
        libc::SYS_ioctl,
        1,
        &[KVM_RUN(), KVM_GET_REGS(), KVM_GET_MP_STATE()],
    );
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_request_numbers_match_linux() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_MP_STATE(), 0x8004_ae98);
    }
}
