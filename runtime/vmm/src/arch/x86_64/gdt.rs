//! Global descriptor table entries for the 64-bit boot state.

use kvm_bindings::kvm_segment;

/// Builds a GDT entry from its access/flags bits, base and limit (Intel SDM vol. 3, 3.4.5).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The KVM segment register value for GDT entry `index` holding `entry`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT. Linux's 64-bit boot protocol wants `__BOOT_CS` = 0x10 and
/// `__BOOT_DS` = 0x18, so entries 0 and 1 stay null.
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code, present, readable
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, present, writable
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: busy 64-bit TSS
];
/// Index of the code segment in [`BOOT_GDT`].
pub const CODE_INDEX: u8 = 2;
/// Index of the data segment.
pub const DATA_INDEX: u8 = 3;
/// Index of the TSS.
pub const TSS_INDEX: u8 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_decodes_to_a_long_mode_flat_segment() {
        let s = kvm_segment_from_gdt(BOOT_GDT[CODE_INDEX as usize], CODE_INDEX);
        assert_eq!((s.selector, s.base, s.limit), (0x10, 0, 0xffff_ffff));
        assert_eq!(
            (s.type_, s.present, s.l, s.db, s.s, s.g),
            (0xb, 1, 1, 0, 1, 1)
        );
        let d = kvm_segment_from_gdt(BOOT_GDT[DATA_INDEX as usize], DATA_INDEX);
        assert_eq!((d.selector, d.type_, d.l, d.db), (0x18, 3, 0, 1));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from_gdt(e, 1);
        assert_eq!((s.base, s.limit, s.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
