//! The Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI finds its
//! CPUs, the IOAPIC and the ISA interrupt routing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_END, EBDA_START, IOAPIC_START, IRQ_MAX, MAX_VCPUS};

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Family 6, and the FPU + APIC feature bits: what firmware reports for a generic CPU.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Errors building the table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than fit in the EBDA.
    #[error("{0} vCPUs requested; husk supports 1 to {MAX_VCPUS}")]
    TooManyCpus(u8),
    /// Guest memory does not cover the EBDA.
    #[error("writing the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table bytes for `num_cpus` CPUs, to be placed at [`EBDA_START`].
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let mut e = [0u8; CPU_ENTRY_LEN];
        e[0] = ENTRY_PROCESSOR;
        e[1] = cpu;
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let mut ioapic = [ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&IOAPIC_START.to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // Every ISA IRQ wired one to one, "conforms to bus" polarity and trigger (edge,
        // active high), matching irqfd pulses. IRQ 0 must be a plain INT too: Linux sets up
        // the timer's IOAPIC route from it; the PIC's ExtINT reaches the CPU through LINT0.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"HUSK    ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&APIC_START.to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = [0u8; FLOATING_LEN];
    floating[0..4].copy_from_slice(b"_MP_");
    let table_addr = (EBDA_START as usize + FLOATING_LEN) as u32;
    floating[4..8].copy_from_slice(&table_addr.to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = 4;
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&table);
    debug_assert!(out.len() as u64 <= EBDA_END - EBDA_START);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_valid_and_the_table_fits_the_ebda() {
        for n in [1, 2, MAX_VCPUS] {
            let t = build(n).unwrap();
            assert_eq!(sum(&t[..16]), 0);
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(sum(&t[16..16 + len]), 0);
            assert!(t.len() as u64 <= EBDA_END - EBDA_START, "{n} cpus");
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_and_only_cpu0_boots() {
        let t = build(3).unwrap();
        let entries = &t[16 + HEADER_LEN..];
        for cpu in 0..3 {
            let e = &entries[cpu * CPU_ENTRY_LEN..];
            assert_eq!((e[0], e[1]), (ENTRY_PROCESSOR, cpu as u8));
            assert_eq!(e[3] & CPU_BOOTSTRAP != 0, cpu == 0);
        }
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count as usize, 3 + 1 + 1 + 24 + 2);
        // Every IOAPIC pin, 0 included, is a plain INT: Linux routes the timer from IRQ 0.
        let io = &entries[3 * CPU_ENTRY_LEN + 16..];
        for pin in 0..24u8 {
            let e = &io[pin as usize * 8..pin as usize * 8 + 8];
            assert_eq!(
                (e[0], e[1], e[5], e[7]),
                (ENTRY_IO_INTERRUPT, INT_TYPE_INT, pin, pin)
            );
        }
    }

    #[test]
    fn cpu_counts_out_of_range_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}
