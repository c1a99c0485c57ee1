//! The global options every operation runs under (runc's: `--root`, `--log`,
//! `--log-format`, `--debug`, `--systemd-cgroup`), whichever binary parsed them.

use std::ffi::OsString;
use std::path::PathBuf;

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
