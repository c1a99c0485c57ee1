//! x86_64: the guest physical layout, boot-time CPU state, the MP table and kernel loading.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
