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

/// Sends `req` to the sandbox whose state directory is `dir`.
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

/// A control handler: the request and the descriptors that came with it.
pub type Handler = Arc<dyn Fn(ControlRequest, Vec<OwnedFd>) -> ControlResponse + Send + Sync>;

/// Serves control requests with `handler`, one thread per connection, forever.
pub fn serve(listener: UnixListener, handler: Handler) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let handler = handler.clone();
        let _ = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let resp = match crate::fdpass::recv_frame::<ControlRequest>(&conn) {
                    Ok((req, fds)) => handler(req, fds),
                    Err(e) => ControlResponse::Error {
                        message: format!("bad control request: {e}"),
                    },
                };
                let _ = write_frame(&mut conn, &resp);
            });
    }
}
