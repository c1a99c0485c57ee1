//! Signal names and numbers as `kill` takes them, and the signals husk's long-running
//! processes (the sandbox, an exec client) pass on to the guest.

use std::str::FromStr;

use anyhow::{bail, Result};
use nix::sys::signal::{SigSet, Signal};

/// Parses `9`, `KILL`, `SIGKILL`, `kill`, `RTMIN+3`; refuses anything else.
pub fn parse(raw: &str) -> Result<i32> {
    let sigrtmin = libc::SIGRTMIN();
    let sigrtmax = libc::SIGRTMAX();
    if let Ok(n) = raw.parse::<i32>() {
        if n > 0 && n <= sigrtmax {
            return Ok(n);
        }
        bail!("invalid signal number {n}");
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(sig) = Signal::from_str(&format!("SIG{name}")) {
        return Ok(sig as i32);
    }
    let rt = |base: i32, off: &str, sign: i32| -> Option<i32> {
        let n = if off.is_empty() {
            0
        } else {
            off.parse::<i32>().ok()?
        };
        let s = base + sign * n;
        (sigrtmin..=sigrtmax).contains(&s).then_some(s)
    };
    let parsed = if let Some(off) = name.strip_prefix("RTMIN") {
        off.strip_prefix('+')
            .map_or_else(|| rt(sigrtmin, off, 1), |o| rt(sigrtmin, o, 1))
    } else if let Some(off) = name.strip_prefix("RTMAX") {
        off.strip_prefix('-')
            .map_or_else(|| rt(sigrtmax, off, -1), |o| rt(sigrtmax, o, -1))
    } else {
        None
    };
    match parsed {
        Some(n) => Ok(n),
        None => bail!("unknown signal {raw:?}"),
    }
}

/// The signals a sandbox or exec client passes on to its guest process (SIGWINCH
/// becomes a window-size update instead). Blocked in every thread and taken with
/// `sigwait` by one.
pub fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Blocks [`forwarded`] in the calling thread (and the threads it starts afterwards).
pub fn block_forwarded() -> SigSet {
    let set = forwarded();
    let _ = set.thread_block();
    set
}

/// Starts a thread that takes the signals in `set` (blocked beforehand) and hands each
/// to `handle`.
pub fn spawn_handler(set: SigSet, handle: impl Fn(Signal) + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                handle(sig);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_parse_like_runc() {
        assert_eq!(parse("9").unwrap(), 9);
        assert_eq!(parse("KILL").unwrap(), 9);
        assert_eq!(parse("SIGKILL").unwrap(), 9);
        assert_eq!(parse("term").unwrap(), 15);
        assert_eq!(parse("SIGTERM").unwrap(), 15);
        assert_eq!(parse("HUP").unwrap(), 1);
        assert_eq!(parse("RTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
        assert_eq!(parse("RTMAX").unwrap(), libc::SIGRTMAX());
    }

    #[test]
    fn unknown_names_and_bad_numbers_are_refused() {
        for raw in ["NOPE", "SIGNOPE", "0", "-1", "99", "", "RTMIN+99", "SIG"] {
            assert!(parse(raw).is_err(), "{raw:?} accepted");
        }
    }
}
