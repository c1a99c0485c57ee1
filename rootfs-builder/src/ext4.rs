//! A bundle's rootfs directory as an ext4 image, for the guest's virtio-blk root.
//!
//! e2fsprogs does the real work (`mkfs.ext4 -d` copies a directory into the new file
//! system without mounting anything); this module sizes the image, runs it, and makes sure
//! a failure leaves no half-built image behind.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::output::PendingOutput;

const MIB: u64 = 1 << 20;
/// File system label of every image.
pub const LABEL: &str = "husk-root";
/// Images are never smaller than this.
pub const MIN_SIZE_MIB: u64 = 32;

/// What to build.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Directory whose contents become the file system.
    pub from: PathBuf,
    /// The image to write.
    pub out: PathBuf,
    /// Image size; `None` sizes it from the directory's disk usage.
    pub size_mib: Option<u64>,
    /// Tune for a root that is only ever mounted read-only: no journal (there is nothing
    /// to replay, and it costs space) and no blocks reserved for root.
    pub readonly_friendly: bool,
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Image {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub size_mib: u64,
}

/// Errors of building an ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// The source directory does not exist or is not a directory.
    #[error("source {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Walking the source failed.
    #[error("measure {path}: {source}")]
    Measure {
        /// The entry that failed.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A size of 0 was asked for.
    #[error("image size must be at least 1 MiB")]
    ZeroSize,
    /// The image file could not be created.
    #[error("create image {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// e2fsprogs is not installed.
    #[error("mkfs.ext4 not found in PATH, /usr/sbin or /sbin (install e2fsprogs)")]
    MkfsMissing,
    /// mkfs.ext4 could not be started.
    #[error("run {path}: {source}")]
    MkfsSpawn {
        /// The mkfs.ext4 found.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// mkfs.ext4 ran and failed.
    #[error("mkfs.ext4 failed ({status}) for {image}: {stderr}")]
    MkfsFailed {
        /// The image being made.
        image: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// Builds the image described by `opts`; the output appears only if mkfs succeeded.
pub fn build_ext4(opts: &Ext4Options) -> Result<Ext4Image, Ext4Error> {
    if !opts.from.is_dir() {
        return Err(Ext4Error::NotADirectory(opts.from.clone()));
    }
    let usage = measure(&opts.from)?;
    let size_mib = match opts.size_mib {
        Some(0) => return Err(Ext4Error::ZeroSize),
        Some(n) => n,
        None => default_size_mib(usage.bytes),
    };
    let mkfs = find_tool("mkfs.ext4").ok_or(Ext4Error::MkfsMissing)?;

    let create_err = |source| Ext4Error::Create {
        path: opts.out.clone(),
        source,
    };
    let pending = PendingOutput::new(&opts.out).map_err(create_err)?;
    // Sparse: only what mkfs writes takes space on the host. Private from the start: an
    // image holds whatever the tree held (a container's root, files with secrets).
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(pending.path())
        .and_then(|f| f.set_len(size_mib * MIB))
        .map_err(create_err)?;

    let mut cmd = Command::new(&mkfs);
    cmd.args(["-q", "-F", "-L", LABEL, "-d"])
        .arg(&opts.from)
        .arg("-N")
        .arg(inode_count(size_mib * MIB, usage.entries).to_string());
    if opts.readonly_friendly {
        cmd.args(["-O", "^has_journal", "-m", "0"]);
    }
    cmd.arg(pending.path());
    let output = cmd.output().map_err(|source| Ext4Error::MkfsSpawn {
        path: mkfs.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Ext4Error::MkfsFailed {
            image: opts.out.clone(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    pending.commit().map_err(create_err)?;
    Ok(Ext4Image {
        path: opts.out.clone(),
        size_mib,
    })
}

/// Image size for a directory using `usage_bytes` on disk: 30% and 16 MiB of headroom
/// for ext4's own metadata and the container's writes, at least [`MIN_SIZE_MIB`].
pub fn default_size_mib(usage_bytes: u64) -> u64 {
    let bytes = usage_bytes.saturating_mul(13) / 10 + 16 * MIB;
    bytes.div_ceil(MIB).max(MIN_SIZE_MIB)
}

/// mke2fs's own choice of inode count (one per 4 KiB below 512 MiB, one per 16 KiB above,
/// per its default mke2fs.conf) unless the tree has so many small files that it would
/// run out; then enough for every entry with 30% to spare.
fn inode_count(size_bytes: u64, entries: u64) -> u64 {
    let ratio = if size_bytes < 512 * MIB { 4096 } else { 16384 };
    (size_bytes / ratio).max(entries.saturating_mul(13) / 10 + 1024)
}

/// Makes `out` an empty, sparse ext4 of `size_mib` for a container's writable layer:
/// no journal (the layer is written back at exit and thrown away, a crash loses it
/// either way) and inode tables left for the guest to find zeroed (the file is sparse: it
/// reads as zeroes; the guest mounts it with `noinit_itable`). It costs a few MiB on the
/// host whatever its size. Appears only complete.
pub fn create_scratch(out: &Path, size_mib: u64) -> Result<(), Ext4Error> {
    if size_mib == 0 {
        return Err(Ext4Error::ZeroSize);
    }
    let mkfs = find_tool("mkfs.ext4").ok_or(Ext4Error::MkfsMissing)?;
    let create_err = |source| Ext4Error::Create {
        path: out.to_owned(),
        source,
    };
    let pending = PendingOutput::new(out).map_err(create_err)?;
    // Private: the container's writes land here.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(pending.path())
        .and_then(|f| f.set_len(size_mib * MIB))
        .map_err(create_err)?;
    let output = Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-L",
            "husk-scratch",
            "-m",
            "0",
            "-O",
            "^has_journal",
        ])
        .args(["-E", "lazy_itable_init=1,nodiscard"])
        .arg(pending.path())
        .output()
        .map_err(|source| Ext4Error::MkfsSpawn {
            path: mkfs.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(Ext4Error::MkfsFailed {
            image: out.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    pending.commit().map_err(create_err)
}

/// Disk usage of a tree, as `du -s` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of allocated blocks, hard links counted once.
    pub bytes: u64,
    /// Files, directories and other entries, the root included.
    pub entries: u64,
}

/// Walks `dir` without following symlinks.
pub fn measure(dir: &Path) -> Result<Usage, Ext4Error> {
    let mut seen = HashSet::new();
    let mut usage = Usage {
        bytes: 0,
        entries: 0,
    };
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let err = |source| Ext4Error::Measure {
            path: path.clone(),
            source,
        };
        let meta = std::fs::symlink_metadata(&path).map_err(err)?;
        usage.entries += 1;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.bytes += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(err)? {
                pending.push(entry.map_err(err)?.path());
            }
        }
    }
    Ok(usage)
}

/// Finds an e2fsprogs tool; they live in sbin, which an unprivileged PATH often lacks.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_size_adds_thirty_percent_and_16_mib_rounded_up() {
        assert_eq!(default_size_mib(100 * MIB), 146);
        assert_eq!(default_size_mib(100 * MIB + 1), 147);
    }

    #[test]
    fn default_size_is_at_least_32_mib() {
        assert_eq!(default_size_mib(0), MIN_SIZE_MIB);
        assert_eq!(default_size_mib(10 * MIB), MIN_SIZE_MIB);
    }

    #[test]
    fn inode_count_follows_mke2fs_unless_files_would_not_fit() {
        assert_eq!(inode_count(64 * MIB, 10), 64 * MIB / 4096);
        assert_eq!(inode_count(1024 * MIB, 10), 1024 * MIB / 16384);
        assert_eq!(inode_count(64 * MIB, 100_000), 131_024);
    }

    #[test]
    fn a_scratch_disk_is_sparse_whatever_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("scratch.img");
        create_scratch(&out, 8192).unwrap();
        let m = std::fs::metadata(&out).unwrap();
        assert_eq!(m.len(), 8192 * MIB);
        assert!(
            m.blocks() * 512 < 64 * MIB,
            "{} bytes allocated",
            m.blocks() * 512
        );
    }

    #[test]
    fn measure_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let once = measure(dir.path()).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let twice = measure(dir.path()).unwrap();
        assert_eq!(twice.bytes, once.bytes);
        assert_eq!(twice.entries, once.entries + 1);
        assert!(once.bytes >= 64 * 1024);
    }
}
