//! The one place that waits for children.
//!
//! As PID 1 the agent inherits every orphan in the guest and has to reap them all, so one
//! reaper thread waits for any child, and this table keeps the exit statuses of the
//! processes the host started. Nothing else in the agent may wait: a `waitpid(-1)` here
//! would steal the status of, say, `std::process::Child::wait`, and the reverse.

use std::collections::HashMap;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use husk_protocol::ExitStatus;

/// Processes started by `Exec`, by exec id.
#[derive(Debug, Default)]
pub struct ProcessTable {
    state: Mutex<State>,
    /// Signalled whenever an exec starts, ends or disappears, and on every fork.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    execs: HashMap<String, ExecState>,
    exec_of_pid: HashMap<libc::pid_t, String>,
    /// Counts forks, so that a reaper without children can sleep until there is one.
    forks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ExecState {
    /// The id is taken; its streams are being connected or its process forked.
    Starting,
    Running(libc::pid_t),
    Exited(ExitStatus),
}

/// An exec id that is taken while its process is being set up; dropping it without
/// [`ProcessTable::spawn`] succeeding frees the id again.
#[derive(Debug)]
pub struct Reservation<'a> {
    table: &'a ProcessTable,
    exec_id: String,
    spawned: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.spawned {
            let mut state = self.table.lock();
            if state.execs.get(&self.exec_id) == Some(&ExecState::Starting) {
                state.execs.remove(&self.exec_id);
            }
            drop(state);
            self.table.changed.notify_all();
        }
    }
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panicked holder left
        // nothing half-done that would make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_changed<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `exec_id` for a new process; fails if any exec, running or ended, has it.
    pub fn reserve(&self, exec_id: &str) -> anyhow::Result<Reservation<'_>> {
        let mut state = self.lock();
        if state.execs.contains_key(exec_id) {
            bail!("exec id {exec_id:?} is already in use");
        }
        state.execs.insert(exec_id.to_owned(), ExecState::Starting);
        Ok(Reservation {
            table: self,
            exec_id: exec_id.to_owned(),
            spawned: false,
        })
    }

    /// Runs `fork` and records the child under the reserved id.
    ///
    /// The table stays locked from before the fork until the pid is recorded, so the
    /// reaper cannot take the child's exit status for an orphan's in between.
    pub fn spawn(
        &self,
        mut reservation: Reservation<'_>,
        fork: impl FnOnce() -> io::Result<libc::pid_t>,
    ) -> io::Result<libc::pid_t> {
        let mut state = self.lock();
        let pid = fork()?;
        state.forks += 1;
        state
            .execs
            .insert(reservation.exec_id.clone(), ExecState::Running(pid));
        state.exec_of_pid.insert(pid, reservation.exec_id.clone());
        reservation.spawned = true;
        drop(state);
        self.changed.notify_all();
        Ok(pid)
    }

    /// Forgets an exec whose process was forked but failed before running the program;
    /// the reaper still reaps the child, it just records nothing.
    pub fn abandon(&self, exec_id: &str) {
        let mut state = self.lock();
        if let Some(ExecState::Running(pid)) = state.execs.remove(exec_id) {
            state.exec_of_pid.remove(&pid);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Blocks until the process of `exec_id` has ended and returns how it ended.
    pub fn wait(&self, exec_id: &str) -> anyhow::Result<ExitStatus> {
        let mut state = self.lock();
        loop {
            match state.execs.get(exec_id) {
                None => bail!("no exec with id {exec_id:?}"),
                Some(ExecState::Exited(status)) => return Ok(*status),
                Some(ExecState::Starting | ExecState::Running(_)) => {
                    state = self.wait_changed(state);
                }
            }
        }
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout` (or at once for an unknown
    /// id) and answers `None`.
    pub fn wait_timeout(&self, exec_id: &str, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            match state.execs.get(exec_id) {
                Some(ExecState::Exited(status)) => return Some(*status),
                Some(ExecState::Starting | ExecState::Running(_)) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => return None,
            }
        }
    }

    /// The pid of `exec_id` while its process runs.
    pub fn pid(&self, exec_id: &str) -> Option<libc::pid_t> {
        match self.lock().execs.get(exec_id) {
            Some(ExecState::Running(pid)) => Some(*pid),
            _ => None,
        }
    }

    /// Frees the id of an exec whose process has ended (a removed container's). A process
    /// still running is forgotten too; the reaper then reaps it without a record.
    pub fn forget(&self, exec_id: &str) {
        let mut state = self.lock();
        if let Some(ExecState::Running(pid)) = state.execs.remove(exec_id) {
            state.exec_of_pid.remove(&pid);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Sends `signal` to the process group that the process of `exec_id` leads.
    pub fn signal_group(&self, exec_id: &str, signal: i32) -> anyhow::Result<()> {
        self.signal_target(exec_id, signal, true)
    }

    /// Sends signal number `signal` to the process of `exec_id`.
    pub fn signal(&self, exec_id: &str, signal: i32) -> anyhow::Result<()> {
        self.signal_target(exec_id, signal, false)
    }

    fn signal_target(&self, exec_id: &str, signal: i32, group: bool) -> anyhow::Result<()> {
        // Held during kill: the reaper records an exit under this lock before it releases
        // the pid, so the pid cannot belong to another process by the time kill runs.
        let state = self.lock();
        match state.execs.get(exec_id) {
            None => bail!("no exec with id {exec_id:?}"),
            Some(ExecState::Starting) => bail!("exec {exec_id:?} has not started yet"),
            Some(ExecState::Exited(_)) => bail!("exec {exec_id:?} has already exited"),
            Some(ExecState::Running(pid)) => {
                let target = if group { -*pid } else { *pid };
                // SAFETY: kill takes plain integers and has no memory effects.
                if unsafe { libc::kill(target, signal) } < 0 {
                    let err = io::Error::last_os_error();
                    bail!("signal {signal} to exec {exec_id:?} (pid {pid}): {err}");
                }
                Ok(())
            }
        }
    }

    /// Reaps every child of the agent forever, recording the statuses of execs.
    pub fn run_reaper(&self) -> ! {
        loop {
            let forks_before = self.lock().forks;
            match peek_ended_child() {
                Ok((pid, status)) => self.record_and_reap(pid, status),
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    // No children at all. New ones only come from our own forks; one that
                    // happened since `forks_before` was read means "look again".
                    let mut state = self.lock();
                    while state.forks == forks_before {
                        state = self.wait_changed(state);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    diag!("waitid failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn record_and_reap(&self, pid: libc::pid_t, status: ExitStatus) {
        let mut state = self.lock();
        if let Some(exec_id) = state.exec_of_pid.remove(&pid) {
            diag!("exec {exec_id:?} (pid {pid}) ended: {status:?}");
            state.execs.insert(exec_id, ExecState::Exited(status));
        }
        // Only now is the pid free for reuse: a kill by `signal` under this lock can no
        // longer reach another process that got the same pid.
        reap(pid);
        drop(state);
        self.changed.notify_all();
    }
}

/// Waits until some child has ended, without reaping it.
fn peek_ended_child() -> io::Result<(libc::pid_t, ExitStatus)> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value for waitid to overwrite.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful WEXITED waitid filled the SIGCHLD fields of `info`.
    let (pid, raw_status) = unsafe { (info.si_pid(), info.si_status()) };
    // With only WEXITED asked for, anything but a normal exit is a death by signal.
    let status = if info.si_code == libc::CLD_EXITED {
        ExitStatus::Code(raw_status)
    } else {
        ExitStatus::Signal(raw_status)
    };
    Ok((pid, status))
}

fn reap(pid: libc::pid_t) {
    loop {
        let mut raw = 0;
        // SAFETY: `raw` is a valid, writable int for the duration of the call.
        let rc = unsafe { libc::waitpid(pid, &mut raw, 0) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Waits up to `timeout` for the agent to have no children left, e.g. after killing
/// everything at shutdown (the reaper does the reaping meanwhile).
pub fn wait_for_no_children(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: as in `peek_ended_child`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid and writable; WNOHANG makes the call return at once.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_a_taken_exec_id_fails() {
        let table = ProcessTable::default();
        let _first = table.reserve("a").unwrap();
        assert!(table.reserve("a").is_err());
    }

    #[test]
    fn dropping_an_unspawned_reservation_frees_the_id() {
        let table = ProcessTable::default();
        drop(table.reserve("a").unwrap());
        assert!(table.reserve("a").is_ok());
    }

    #[test]
    fn failed_fork_frees_the_id() {
        let table = ProcessTable::default();
        let r = table.reserve("a").unwrap();
        assert!(table.spawn(r, || Err(io::Error::other("no"))).is_err());
        assert!(table.wait("a").is_err());
        assert!(table.reserve("a").is_ok());
    }

    #[test]
    fn recorded_exit_is_returned_by_wait_and_blocks_signal() {
        let table = ProcessTable::default();
        let r = table.reserve("a").unwrap();
        // A pid that is certainly not our child, so reaping it is a no-op.
        let pid = table.spawn(r, || Ok(i32::MAX)).unwrap();
        table.record_and_reap(pid, ExitStatus::Code(3));
        assert_eq!(table.wait("a").unwrap(), ExitStatus::Code(3));
        assert_eq!(table.wait("a").unwrap(), ExitStatus::Code(3));
        assert!(table.signal("a", 9).is_err());
    }

    #[test]
    fn unknown_exec_ids_are_errors() {
        let table = ProcessTable::default();
        assert!(table.wait("nope").is_err());
        assert!(table.signal("nope", 15).is_err());
    }
}
