//! A process the shim answers for: a container's own process (its pid is the sandbox
//! process holding the VM, whose exit status is the container's) or an exec (its pid is
//! the `husk exec-child` relaying it, whose exit status is the exec'd process's).

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::io::{ProcessStdio, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Exit status as the runc shim reports it (128+N for signal N).
    pub status: u32,
    /// When the shim saw it.
    pub at: Timestamp,
}

/// A process's exit, which `Wait` calls block on.
#[derive(Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    cond: Condvar,
}

impl ExitCell {
    /// Records the exit and wakes every waiter; later calls are ignored.
    pub fn set(&self, exit: Exit) {
        let mut e = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if e.is_none() {
            *e = Some(exit);
            self.cond.notify_all();
        }
    }

    /// The exit, if it happened.
    pub fn get(&self) -> Option<Exit> {
        self.exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `timeout` for the exit; if none comes, an exit with `status` now.
    pub fn wait_timeout_or(&self, timeout: Duration, status: u32) -> Exit {
        let mut e = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = std::time::Instant::now() + timeout;
        while e.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Exit {
                    status,
                    at: containerd_shim::util::timestamp().unwrap_or_default(),
                };
            }
            e = self
                .cond
                .wait_timeout(e, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        e.clone().expect("checked above")
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut e = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(x) = e.as_ref() {
                return x.clone();
            }
            e = self
                .cond
                .wait_timeout(e, Duration::from_secs(3600))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One process of a task.
pub struct Process {
    /// Host pid (0 until started).
    pub pid: i32,
    /// Its state as containerd sees it.
    pub status: Status,
    /// The fifos it was given.
    pub paths: StdioPaths,
    /// The shim's side of its stdio (none before start, for an exec).
    pub stdio: Option<ProcessStdio>,
    /// Its exit.
    pub exit: Arc<ExitCell>,
    /// An exec's OCI process (JSON), kept from `Exec` until `Start`.
    pub spec: Option<serde_json::Value>,
}

impl Process {
    /// A process not started yet.
    pub fn new(paths: StdioPaths) -> Self {
        Self {
            pid: 0,
            status: Status::CREATED,
            paths,
            stdio: None,
            exit: Arc::default(),
            spec: None,
        }
    }

    /// Its status, `STOPPED` once its exit is known.
    pub fn status(&self) -> Status {
        if self.exit.get().is_some() {
            Status::STOPPED
        } else {
            self.status
        }
    }
}
