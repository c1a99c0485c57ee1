//! What /proc says about a process: whether it is alive, and which process it is.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `/proc/PID/stat`'s state letter and start time (field 22), or `None` if there is no
/// such process.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip to its last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22, 19 further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The start time of `pid`, to record beside it.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether `pid` runs and is the process that started at `start` (when known). A zombie
/// counts as gone: it has exited and waits only to be reaped.
pub fn is_alive(pid: i32, start: Option<u64>) -> bool {
    match stat(pid) {
        None => false,
        Some(('Z' | 'X' | 'x', _)) => false,
        Some((_, s)) => match start {
            Some(want) => want == s,
            None => true,
        },
    }
}

/// Sends `signal` to `pid` if it is still the process that started at `start`.
pub fn signal_if_same(pid: i32, start: Option<u64>, signal: Signal) -> bool {
    is_alive(pid, start) && kill(Pid::from_raw(pid), signal).is_ok()
}

/// Waits until `pid` is gone (or a zombie); false if it still runs after `timeout`.
pub fn wait_gone(pid: i32, start: Option<u64>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid, start) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every descendant of `pid`, children before grandchildren.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = ppid(child) {
                parent_of.push((child, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

fn ppid(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Closes every descriptor above 2 but those in `keep`. Call it before any thread
/// starts and before anything opens a descriptor it means to keep.
pub fn close_inherited_fds(keep: &[i32]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collect first: the directory listing itself holds a descriptor.
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: nothing in this process owns these descriptors yet (no thread has
        // started and nothing was opened before); closing one that was the directory
        // listing's, already closed, only returns EBADF.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not_it() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_alive(me, Some(start)));
        assert!(is_alive(me, None));
        assert!(!is_alive(me, Some(start + 1)));
    }

    #[test]
    fn reaped_and_zombie_children_are_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(
            wait_gone(pid, None, Duration::from_secs(10)),
            "zombie counts as gone"
        );
        child.wait().unwrap();
        assert!(!is_alive(pid, None));
    }

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while descendants(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let d = descendants(pid);
        assert_eq!(d.len(), 1, "{d:?}");
        let _ = kill(Pid::from_raw(d[0]), Signal::SIGKILL);
        child.wait().unwrap();
    }
}
