//! Loading the kernel, initrd and command line, and writing the zero page.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ram_ranges, CMDLINE_START, EBDA_END, EBDA_START, HIMEM_START, INITRD_ADDR_MAX, ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE_SIZE: u64 = 4096;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Errors loading what the guest boots.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is not a loadable ELF vmlinux.
    #[error("kernel {path} is not a loadable x86_64 ELF vmlinux: {source}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit in guest memory next to the kernel.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel")]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The highest end address allowed.
        limit: u64,
    },
    /// The command line is too long or malformed.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing into guest memory failed.
    #[error("writing boot data into guest memory: {0}")]
    Memory(String),
}

/// Where the kernel was loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
}

/// Loads an ELF `vmlinux` at its physical load address.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    })?;
    let res =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::Kernel {
                path: path.to_owned(),
                source,
            }
        })?;
    Ok(LoadedKernel {
        entry: res.kernel_load.0,
        end: res.kernel_end,
    })
}

/// An initrd placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the initrd page-aligned at the top of low RAM (below 2 GiB), above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<LoadedInitrd, BootError> {
    let read_err = |source| BootError::Read {
        what: "initrd",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let limit = ram_ranges(mem_size)[0].1.min(INITRD_ADDR_MAX);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end || size == 0 {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::Memory(format!("initrd: {e}")))?;
    Ok(LoadedInitrd { addr, size })
}

/// Writes the command line and the zero page (boot_params with the e820 map).
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &Cmdline,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();

    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }

    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, EBDA_END - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_size) {
        // The first range starts at 0; its part above 1 MiB is the usable high RAM.
        let (start, len) = if start == 0 {
            (HIMEM_START, len.saturating_sub(HIMEM_START))
        } else {
            (start, len)
        };
        if len > 0 {
            e820.push((start, len, E820_RAM));
        }
    }
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
        };
    }
    params.e820_entries = e820.len() as u8;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Memory(format!("zero page: {e}")))?;
    // Sanity: the zero page must be readable back (catches a memory map without low RAM).
    mem.read_obj::<u16>(GuestAddress(ZERO_PAGE_START + 0x1fe))
        .map_err(|e| BootError::Memory(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = ram_ranges(size)
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), l as usize))
            .collect();
        GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn a_missing_kernel_names_its_path() {
        let m = mem(64 << 20);
        let err = load_kernel(&m, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn a_kernel_that_is_not_elf_is_refused() {
        let m = mem(64 << 20);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x4d, 0x5a, 0, 0].repeat(1024)).unwrap();
        let err = load_kernel(&m, f.path()).unwrap_err();
        assert!(matches!(err, BootError::Kernel { .. }), "{err}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(load_kernel(&m, empty.path()).is_err());
    }

    #[test]
    fn a_truncated_elf_is_refused() {
        let m = mem(64 << 20);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // A valid-looking ELF64 identification and nothing else.
        f.write_all(b"\x7fELF\x02\x01\x01\x00").unwrap();
        assert!(matches!(
            load_kernel(&m, f.path()),
            Err(BootError::Kernel { .. })
        ));
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_of_ram() {
        let m = mem(64 << 20);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 10000]).unwrap();
        let i = load_initrd(&m, 64 << 20, 32 << 20, f.path()).unwrap();
        assert_eq!(i.addr % PAGE_SIZE, 0);
        assert!(i.addr + i.size <= 64 << 20);
        assert_eq!(m.read_obj::<u8>(GuestAddress(i.addr + 9999)).unwrap(), 7);
    }

    #[test]
    fn an_initrd_larger_than_memory_is_refused() {
        let m = mem(32 << 20);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(40 << 20).unwrap();
        let err = load_initrd(&m, 32 << 20, 16 << 20, f.path()).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    }

    #[test]
    fn zero_page_has_the_magic_cmdline_and_e820() {
        let m = mem(128 << 20);
        let mut cmdline = Cmdline::new(2048).unwrap();
        cmdline.insert_str("console=ttyS0 reboot=k").unwrap();
        write_boot_params(&m, 128 << 20, &cmdline, None).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let flag = p.hdr.boot_flag;
        assert_eq!(flag, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        let (addr, size) = (last.addr, last.size);
        assert_eq!((addr, addr + size), (HIMEM_START, 128 << 20));
        let mut c = [0u8; 22];
        m.read_slice(&mut c, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&c, b"console=ttyS0 reboot=k");
    }
}
