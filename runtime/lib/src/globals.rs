//! The global options every operation runs under (runc's: `--root`, `--log`,
//! `--log-format`, `--debug`, `--systemd-cgroup`), whichever binary parsed them.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::logging::LogConfig;

/// Where container state lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/husk";

/// The global options, checked.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--root`: the directory holding one state directory per container.
    pub root: PathBuf,
    /// `--log`, `--log-format`, `--debug`.
    pub log: LogConfig,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is systemd's `slice:prefix:name` (the
    /// sandbox's host cgroup, see [`crate::sandbox::cgroup`]).
    pub systemd_cgroup: bool,
}

impl Globals {
    /// The same options as command-line arguments, for the helper processes husk starts
    /// (the sandbox, a detached exec).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        if let Some(log) = &self.log.file {
            args.push("--log".into());
            args.push(log.clone().into());
        }
        args.push("--log-format".into());
        args.push(self.log.format.as_str().into());
        if self.log.debug {
            args.push("--debug".into());
        }
        if self.systemd_cgroup {
            args.push("--systemd-cgroup".into());
        }
        args
    }
}

/// The `husk` binary, which runs the helper processes (`husk sandbox`, `husk
/// exec-child`) whichever program asked for them: this process itself when it is `husk`,
/// else the `husk` installed beside it (the containerd shim is installed next to it).
pub fn husk_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    if exe.file_name().is_some_and(|n| n == "husk") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("husk");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "the husk binary is not installed beside {} (install both from the same build)",
        exe.display()
    )
}
