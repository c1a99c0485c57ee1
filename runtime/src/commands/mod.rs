//! One file per command.

pub mod create;
pub mod delete;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod resume;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod vm_run;

use std::path::Path;

use anyhow::{Context, Result};

/// Writes `pid` to `path` the way runc does: whole or not at all (a temporary file
/// renamed into place), with no newline.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("pid file {} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("writing the pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing the pid file {}", path.display()))
}
