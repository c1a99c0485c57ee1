//! A directory as a read-only erofs image (erofs-utils' `mkfs.erofs`, which builds from a
//! directory without mounting anything), for a container's read-only root layers.
//!
//! The image keeps what overlayfs needs from a layer: owners, modes (setuid included),
//! times, hard links, symlinks, device nodes (whiteouts are character devices 0/0) and
//! xattrs (`trusted.overlay.opaque` marks opaque directories). It is not compressed: the
//! guest reads it as fast as a plain disk and the host builds it in one copy.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ext4::find_tool;
use crate::output::PendingOutput;

/// Errors of building an erofs image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// The source is not a directory.
    #[error("source {0} is not a directory")]
    NotADirectory(PathBuf),
    /// erofs-utils is not installed.
    #[error("mkfs.erofs not found in PATH, /usr/sbin or /sbin (install erofs-utils)")]
    MkfsMissing,
    /// The image could not be written.
    #[error("write image {path}: {source}")]
    Write {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// mkfs.erofs ran and failed.
    #[error("mkfs.erofs failed ({status}) for {from}: {stderr}")]
    MkfsFailed {
        /// The source directory.
        from: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// Builds `out` from the directory `from`; `out` appears only complete (written under a
/// temporary name, synced, then renamed).
pub fn build_erofs(from: &Path, out: &Path) -> Result<(), ErofsError> {
    if !from.is_dir() {
        return Err(ErofsError::NotADirectory(from.to_owned()));
    }
    build_erofs_with(from, out, || Ok(()))
}

/// [`build_erofs`], with `setup` run in the mkfs process before it starts (in the forked
/// child: async-signal-safe calls only), e.g. to mount `from` in a namespace of its own.
pub fn build_erofs_with(
    from: &Path,
    out: &Path,
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Result<(), ErofsError> {
    use std::os::unix::process::CommandExt;
    let mkfs = find_tool("mkfs.erofs").ok_or(ErofsError::MkfsMissing)?;
    let write_err = |source| ErofsError::Write {
        path: out.to_owned(),
        source,
    };
    let pending = PendingOutput::new(out).map_err(write_err)?;
    let mut cmd = Command::new(&mkfs);
    cmd.args(["--quiet", "--preserve-mtime"])
        .arg(pending.path())
        .arg(from);
    let mut setup = setup;
    // SAFETY: prctl with integer arguments; `setup` is documented to make only
    // async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            // A builder killed half-way takes mkfs with it: its temporary file is all
            // that is left, and the cache's eviction removes that.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            setup()
        });
    }
    let output = cmd.output().map_err(write_err)?;
    if !output.status.success() {
        return Err(ErofsError::MkfsFailed {
            from: from.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    std::fs::File::open(pending.path())
        .and_then(|f| f.sync_all())
        .map_err(write_err)?;
    pending.commit().map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_source_is_refused_and_leaves_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.erofs");
        let e = build_erofs(&dir.path().join("nope"), &out).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_image_is_built_with_the_erofs_magic() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/os-release"), "ID=test\n").unwrap();
        let out = dir.path().join("layer.erofs");
        build_erofs(&src, &out).unwrap();
        let image = std::fs::read(&out).unwrap();
        // The superblock sits at 1024 and starts with EROFS_SUPER_MAGIC_V1.
        assert_eq!(&image[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    }
}
