//! Where things live in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0009_fc00  MP table (EBDA, reserved)
//! 0x0000_0520  IDT                    0x0010_0000  start of high RAM
//! 0x0000_7000  boot_params            0x0100_0000  kernel (its ELF load address)
//! 0x0000_8ff0  boot stack top           ...        initrd, at the top of low RAM
//! 0x0000_9000  PML4, PDPT, PD         0xc000_0000  32-bit MMIO gap: virtio-mmio devices,
//! 0x0002_0000  kernel command line                 IOAPIC, local APIC
//!                                     0x1_0000_0000 RAM above the gap, if any
//! ```

/// GDT address.
pub const GDT_START: u64 = 0x500;
/// IDT address.
pub const IDT_START: u64 = 0x520;
/// The zero page (Linux `boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table; the PDPT and PD follow at +0x1000 and +0x2000.
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the kernel accepts (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory.
pub const EBDA_END: u64 = 0xa0000;
/// First byte above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Base of the first virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// First IOAPIC pin given to virtio devices (0-4 are the legacy ISA lines husk uses).
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u32 = 0xfee0_0000;
/// Highest address the initrd may end at (Linux's default `initrd_addr_max`).
pub const INITRD_ADDR_MAX: u64 = 0x8000_0000;
/// Address KVM uses for the TSS (three pages just below the BIOS area).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Serial port COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// Most vCPUs a guest may have (the MP table must fit in the EBDA).
pub const MAX_VCPUS: u8 = 32;

/// The RAM ranges of a guest with `mem_size` bytes: below the MMIO gap, then above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut ranges = vec![(0, low)];
    if mem_size > low {
        ranges.push((MMIO_GAP_END, mem_size - low));
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_range_and_large_ones_skip_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
