//! Diagnostics for whoever debugs a guest: the kernel log in the guest (it reaches the
//! serial console and survives until the VM is gone), stderr in test mode.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;

/// The kernel truncates longer records; cutting them here keeps the newline.
const MAX_RECORD: usize = 960;

static KMSG: OnceLock<File> = OnceLock::new();

/// Sends later diagnostics to `/dev/kmsg`; before this (or if it fails) they go to stderr.
pub fn use_kmsg() {
    match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(f) => {
            let _ = KMSG.set(f);
        }
        Err(e) => write(format_args!(
            "cannot open /dev/kmsg, logging to stderr: {e}"
        )),
    }
}

/// Writes one diagnostic record.
pub fn write(args: fmt::Arguments<'_>) {
    let mut line = format!("husk-agent: {args}");
    if line.len() > MAX_RECORD {
        let mut cut = MAX_RECORD;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line.push('\n');
    // One write per record: /dev/kmsg treats every write as one log record.
    let _ = match KMSG.get() {
        Some(mut kmsg) => kmsg.write_all(line.as_bytes()),
        None => std::io::stderr().lock().write_all(line.as_bytes()),
    };
}

/// Logs a formatted diagnostic line (see [`write`]).
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::diag::write(format_args!($($arg)*))
    };
}
