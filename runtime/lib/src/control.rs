//! The sandbox's control socket, `<root>/<id>/control.sock`: how `start`, `kill`,
//! `state`, `pause`, `resume` and `ps` reach a running sandbox. One request and one
//! response per connection, framed like the agent protocol (u32 length + JSON).

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_protocol::{read_frame, write_frame};
use serde::{Deserialize, Serialize};

use crate::sockdir::SocketDir;
use crate::state::{ContainerDir, Status};

/// What a command asks the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The live status.
    State,
    /// Run the user's program (created -> running), after the startContainer hooks.
    Start {
        /// The OCI state for startContainer hooks, when config.json has some.
        #[serde(default)]
        hook_state: Option<serde_json::Value>,
    },
    /// Attach the taps sent with this request (in order) to the VM's spare network
    /// devices and configure the interfaces in the guest.
    AttachNetwork {
        /// The interfaces, as the agent gets them.
        interfaces: Vec<husk_protocol::GuestInterface>,
    },
    /// Signal the container's process (or all of its processes).
    Kill {
        /// Signal number.
        signal: i32,
        /// Every process of the container.
        all: bool,
    },
    /// Freeze the VM.
    Pause,
    /// Thaw the VM.
    Resume,
    /// The container's processes (guest pids).
    Ps,
    /// Exec `exec_id` belongs to the host process `pid` (its exec client): if that
    /// process ends while the exec'd process still runs (SIGKILL cannot be passed on), kill
    /// the exec'd process too.
    WatchExec {
        /// The exec.
        exec_id: String,
        /// The exec client's pid.
        pid: i32,
    },
    /// Make a system call the control role's seccomp filter forbids. Honoured only by a
    /// sandbox started with `HUSK_TEST_SECCOMP_VIOLATION=1` (tests of the confinement).
    TestSeccompViolation,
}

/// The sandbox's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlResponse {
    /// Answer to `State`.
    State {
        /// The container's status.
        status: Status,
    },
    /// Done.
    Ok,
    /// Answer to `Ps`.
    Pids {
        /// Guest pids.
        pids: Vec<i32>,
    },
    /// Refused or failed.
    Error {
        /// One line for the user.
        message: String,
    },
}

impl ControlResponse {
    /// `Ok` as `Ok(())`, an `Error` as an error.
    pub fn into_result(self) -> Result<()> {
        match self {
            ControlResponse::Ok => Ok(()),
            ControlResponse::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from the sandbox: {other:?}"),
        }
    }
}

/// Sends `req` to the sandbox whose jail (see [`ContainerDir::jail`]) is `dir`.
pub fn request(dir: &Path, req: ControlRequest, timeout: Duration) -> Result<ControlResponse> {
    request_with_fds(dir, req, &[], timeout)
}

/// Sends `req` with descriptors attached.
pub fn request_with_fds(
    dir: &Path,
    req: ControlRequest,
    fds: &[RawFd],
    timeout: Duration,
) -> Result<ControlResponse> {
    let sockets = SocketDir::open(dir)?;
    let mut s = UnixStream::connect(sockets.socket(ContainerDir::CONTROL_SOCKET))
        .context("connecting to the container's sandbox process")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    crate::fdpass::send_frame(&s, &req, fds).context("sending to the sandbox process")?;
    read_frame(&mut s).context("reading the sandbox process's answer")
}

/// Most control connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection has this long to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A control handler: the request and the descriptors that came with it.
pub type Handler = Arc<dyn Fn(ControlRequest, Vec<OwnedFd>) -> ControlResponse + Send + Sync>;

/// Requests being handled, so that the sandbox answers them before it exits.
#[derive(Debug, Default)]
pub struct Busy {
    n: std::sync::Mutex<usize>,
    cv: std::sync::Condvar,
}

impl Busy {
    fn enter(&self) {
        *self.n.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn leave(&self) {
        *self.n.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` until no request is being handled.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let g = self.n.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *g == 0
    }
}

/// Serves control requests with `handler` forever, a thread per connection and at most
/// [`MAX_CONNECTIONS`] at once, each given [`REQUEST_TIMEOUT`] to send its request;
/// `busy` counts the requests being handled.
pub fn serve(listener: UnixListener, handler: Handler, busy: Arc<Busy>) {
    serve_with(listener, handler, MAX_CONNECTIONS, REQUEST_TIMEOUT, busy)
}

/// [`serve`] with its limits as parameters (tests use small ones).
pub fn serve_with(
    listener: UnixListener,
    handler: Handler,
    max: usize,
    timeout: Duration,
    busy: Arc<Busy>,
) {
    let slots = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    loop {
        {
            // Wait for a free slot before accepting: idle connections cannot make the
            // sandbox start threads without bound.
            let (count, cv) = &*slots;
            let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
            while *n >= max {
                n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
            }
            *n += 1;
        }
        let release = {
            let slots = slots.clone();
            move || {
                let (count, cv) = &*slots;
                *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
                cv.notify_one();
            }
        };
        let mut conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                release();
                // Out of descriptors, most likely: let some connections finish.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (handler, busy) = (handler.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let _ = conn.set_read_timeout(Some(timeout));
                let _ = conn.set_write_timeout(Some(timeout));
                let resp = match crate::fdpass::recv_frame::<ControlRequest>(&conn) {
                    Ok((req, fds)) => {
                        busy.enter();
                        let resp = handler(req, fds);
                        let _ = write_frame(&mut conn, &resp);
                        busy.leave();
                        None
                    }
                    Err(e) => Some(ControlResponse::Error {
                        message: format!("bad control request: {e}"),
                    }),
                };
                if let Some(resp) = resp {
                    let _ = write_frame(&mut conn, &resp);
                }
                drop(conn);
                release();
            });
        if spawned.is_err() {
            // The closure (and with it the slot's release) was dropped unrun.
            let (count, cv) = &*slots;
            *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            cv.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }

    #[test]
    fn idle_connections_cannot_make_the_server_start_threads_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handler: Handler = Arc::new(|_, _| ControlResponse::State {
            status: Status::Running,
        });
        std::thread::spawn(move || {
            serve_with(
                listener,
                handler,
                4,
                Duration::from_millis(500),
                Arc::default(),
            )
        });
        let before = threads();
        let idle: Vec<UnixStream> = (0..50)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let during = threads();
        assert!(
            during <= before + 4,
            "{} threads for 50 idle connections",
            during - before
        );
        // A real request is answered once the idle ones have timed out.
        let started = Instant::now();
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write_frame(&mut s, &ControlRequest::State).unwrap();
        let resp: ControlResponse = read_frame(&mut s).unwrap();
        assert_eq!(
            resp,
            ControlResponse::State {
                status: Status::Running
            }
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        drop(idle);
    }
}
