//! The guest initramfs: the agent as `/init` and the directories it mounts on.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cpio::{self, CpioError};
use crate::output::PendingOutput;

/// Errors of building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The agent binary could not be read.
    #[error("read the agent {path}: {source}")]
    ReadAgent {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent would not run as `/init`.
    #[error("the agent {path} {problem}")]
    UnusableAgent {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Writing the archive failed.
    #[error("write {path}: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// Why.
        source: CpioError,
    },
}

/// Directories of the initramfs, in archive order, with their permissions.
pub const DIRECTORIES: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("mnt", 0o755),
    ("root", 0o700),
];

/// Writes the initramfs archive with `agent` (the binary's bytes) as `/init`.
pub fn write_initramfs<W: Write>(agent: &[u8], out: W) -> Result<W, CpioError> {
    let mut w = cpio::Writer::new(out);
    for &(dir, perm) in DIRECTORIES {
        w.directory(dir, perm)?;
    }
    // The kernel opens /dev/console for init before anything is mounted; without the
    // node init would start without stdin, stdout and stderr.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, agent)?;
    w.finish()
}

/// Builds the initramfs at `out` (atomically) from the agent binary at `agent`; returns
/// the archive's size in bytes.
pub fn build_initramfs(agent: &Path, out: &Path) -> Result<u64, InitramfsError> {
    let binary = std::fs::read(agent).map_err(|source| InitramfsError::ReadAgent {
        path: agent.to_owned(),
        source,
    })?;
    if let Err(problem) = check_static_elf(&binary) {
        return Err(InitramfsError::UnusableAgent {
            path: agent.to_owned(),
            problem,
        });
    }
    let write_err = |source: CpioError| InitramfsError::Write {
        path: out.to_owned(),
        source,
    };
    let io_err = |e: std::io::Error| write_err(CpioError::Io(e));
    let pending = PendingOutput::new(out).map_err(io_err)?;
    let file = File::create(pending.path()).map_err(io_err)?;
    let file = write_initramfs(&binary, BufWriter::new(file))
        .map_err(write_err)?
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    pending.commit().map_err(io_err)?;
    Ok(size)
}

/// Accepts a 64-bit little-endian ELF executable without a program interpreter: there is
/// no dynamic loader or libc in the initramfs, so a dynamically linked agent cannot run.
pub fn check_static_elf(binary: &[u8]) -> Result<(), &'static str> {
    const PT_INTERP: u32 = 3;
    let u16_at = |off: usize| {
        binary
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        binary
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |off: usize| {
        binary
            .get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if binary.get(..4) != Some(b"\x7fELF") {
        return Err("is not an ELF executable");
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian.
    if binary.get(4..6) != Some(&[2, 1]) {
        return Err("is not a 64-bit little-endian ELF executable");
    }
    let truncated = "is a truncated ELF file";
    let phoff = u64_at(0x20).ok_or(truncated)?;
    let phentsize = u16_at(0x36).ok_or(truncated)? as usize;
    let phnum = u16_at(0x38).ok_or(truncated)? as usize;
    for i in 0..phnum {
        let off = usize::try_from(phoff)
            .ok()
            .and_then(|p| p.checked_add(i.checked_mul(phentsize)?))
            .ok_or(truncated)?;
        if u32_at(off).ok_or(truncated)? == PT_INTERP {
            return Err("is dynamically linked; build it with -C target-feature=+crt-static");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read::parse;
    use crate::cpio::{S_IFCHR, S_IFDIR, S_IFMT, S_IFREG, TRAILER};

    /// A minimal ELF64 header with one program header of type `p_type`.
    fn elf_with_program_header(p_type: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x40 + 0x38];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
        b
    }

    #[test]
    fn initramfs_holds_init_directories_and_console() {
        let agent = b"agent bytes".to_vec();
        let bytes = write_initramfs(&agent, Vec::new()).unwrap();
        let entries = parse(&bytes);
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let init = find("init");
        assert_eq!((init.mode, &init.data), (S_IFREG | 0o755, &agent));
        for dir in ["dev", "proc", "sys", "run", "tmp", "mnt", "root"] {
            assert_eq!(find(dir).mode & S_IFMT, S_IFDIR, "{dir}");
        }
        let console = find("dev/console");
        assert_eq!((console.mode, console.rdev), (S_IFCHR | 0o600, (5, 1)));
        assert!(
            find("dev").offset < console.offset,
            "/dev must precede its contents"
        );
        assert_eq!(entries.last().unwrap().name, TRAILER);
    }

    #[test]
    fn static_elf_is_accepted() {
        assert_eq!(check_static_elf(&elf_with_program_header(1)), Ok(()));
    }

    #[test]
    fn dynamically_linked_elf_is_refused() {
        assert!(check_static_elf(&elf_with_program_header(3))
            .unwrap_err()
            .contains("dynamically linked"));
        // A real one: the shell of this machine.
        if let Ok(sh) = std::fs::read("/bin/sh") {
            assert!(check_static_elf(&sh).is_err());
        }
    }

    #[test]
    fn non_elf_and_truncated_files_are_refused() {
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        assert!(check_static_elf(&elf_with_program_header(1)[..0x30]).is_err());
        assert!(check_static_elf(&elf_with_program_header(1)[..0x42]).is_err());
    }

    #[test]
    fn build_writes_the_archive_atomically_and_refuses_a_dynamic_agent() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, elf_with_program_header(1)).unwrap();
        let out = dir.path().join("guest/initramfs.cpio");
        let size = build_initramfs(&agent, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert!(parse(&bytes).iter().any(|e| e.name == "init"));

        std::fs::write(&agent, elf_with_program_header(3)).unwrap();
        let err = build_initramfs(&agent, &out).unwrap_err();
        assert!(matches!(err, InitramfsError::UnusableAgent { .. }), "{err}");
        // The earlier archive is untouched and no temporary file is left.
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn missing_agent_is_an_error_naming_it() {
        let err =
            build_initramfs(Path::new("/no/such/agent"), Path::new("/tmp/x.cpio")).unwrap_err();
        assert!(err.to_string().contains("/no/such/agent"), "{err}");
    }
}
