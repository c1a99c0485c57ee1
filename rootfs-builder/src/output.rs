//! Outputs appear whole or not at all: they are built under a temporary name next to the
//! final one and renamed into place only when complete.

use std::io;
use std::path::{Path, PathBuf};

/// A temporary file that is removed unless [`PendingOutput::commit`] renames it.
#[derive(Debug)]
pub struct PendingOutput {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PendingOutput {
    /// Reserves a temporary name in `target`'s directory (created if missing); the same
    /// directory keeps the final rename atomic.
    pub fn new(target: &Path) -> io::Result<PendingOutput> {
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name")
        })?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        Ok(PendingOutput {
            temp: target.with_file_name(temp_name),
            target: target.to_owned(),
            committed: false,
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Moves the finished file to its final name.
    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_output_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.img");
        let pending = PendingOutput::new(&target).unwrap();
        std::fs::write(pending.path(), b"partial").unwrap();
        drop(pending);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn committed_output_replaces_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/out.img");
        let pending = PendingOutput::new(&target).unwrap();
        std::fs::write(pending.path(), b"new").unwrap();
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(
            std::fs::read_dir(target.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
