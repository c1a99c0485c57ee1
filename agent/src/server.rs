//! Control connections: the handshake, then requests served concurrently.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use husk_protocol::{
    read_frame, write_frame, Envelope, ProtocolError, Request, Response, PROTOCOL_VERSION,
};

use crate::container::{self, Containers};
use crate::reaper::ProcessTable;
use crate::roots::Roots;
use crate::terminal::Terminals;
use crate::transport::{Conn, Listener, Transport};
use crate::{exec, shutdown};

/// How the agent was started, which decides what `Shutdown` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of a guest: shutting down reboots (ends) the VM.
    Init,
    /// A host process in tests: shutting down exits the process.
    TestMode,
}

/// Everything requests act on, shared by all connections.
#[derive(Debug)]
pub struct Agent {
    /// How to reach the host.
    pub transport: Transport,
    /// Root disks mounted for execs.
    pub roots: Roots,
    /// Processes started by `Exec` and `CreateContainer`.
    pub table: ProcessTable,
    /// Containers created by `CreateContainer`.
    pub containers: Containers,
    /// Terminals of execs and containers, for `Resize`.
    pub terminals: Terminals,
    /// PID 1 or test mode.
    pub role: Role,
}

type Writer = Arc<Mutex<Conn>>;

/// Accepts control connections forever, one thread each.
pub fn serve(agent: Arc<Agent>, listener: Listener) -> ! {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = Arc::clone(&agent);
                let spawned = thread::Builder::new()
                    .name("control".into())
                    .spawn(move || handle_connection(&agent, conn));
                if let Err(e) = spawned {
                    diag!("no thread for a control connection, dropping it: {e}");
                }
            }
            Err(e) => {
                // E.g. out of descriptors: give exiting processes a moment to free some.
                diag!("accept a control connection: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(agent: &Arc<Agent>, mut reader: Conn) {
    let writer: Writer = match reader.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            diag!("duplicate a control connection: {e}");
            return;
        }
    };
    if !handshake(&mut reader, &writer) {
        reader.shutdown();
        return;
    }
    loop {
        match read_frame::<_, Envelope<Request>>(&mut reader) {
            Ok(Envelope { id, body }) => {
                let agent = Arc::clone(agent);
                let writer_for_thread = Arc::clone(&writer);
                let spawned = thread::Builder::new()
                    .name("request".into())
                    .spawn(move || answer(&agent, id, body, &writer_for_thread));
                if let Err(e) = spawned {
                    send(
                        &writer,
                        id,
                        Response::Error {
                            message: format!("agent cannot start a thread for the request: {e}"),
                        },
                    );
                }
            }
            Err(ProtocolError::Closed) => return,
            Err(e) => {
                // A peer that breaks framing cannot be resynchronised; drop just it.
                diag!("dropping a control connection: {e}");
                // Shut down rather than close: request threads still hold the writer,
                // and the peer must see the end now.
                reader.shutdown();
                return;
            }
        }
    }
}

/// Answers the first frame, which must be a `Hello` with our version. False: close.
fn handshake(reader: &mut Conn, writer: &Writer) -> bool {
    let Envelope { id, body } = match read_frame::<_, Envelope<Request>>(reader) {
        Ok(env) => env,
        Err(ProtocolError::Closed) => return false,
        Err(e) => {
            diag!("dropping a control connection before its hello: {e}");
            return false;
        }
    };
    let refusal = match body {
        Request::Hello { version } => match husk_protocol::check_version(version) {
            Ok(()) => {
                send(writer, id, hello());
                return true;
            }
            Err(e) => e.to_string(),
        },
        other => format!(
            "the first request must be hello, not {}",
            request_name(&other)
        ),
    };
    diag!("refusing a control connection: {refusal}");
    send(writer, id, Response::Error { message: refusal });
    false
}

fn hello() -> Response {
    Response::Hello {
        version: PROTOCOL_VERSION,
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unknown ({e})")),
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "hello",
        Request::Exec(_) => "exec",
        Request::Wait { .. } => "wait",
        Request::Signal { .. } => "signal",
        Request::Shutdown => "shutdown",
        Request::ConfigureNetwork { .. } => "configure network",
        Request::RunStartHooks { .. } => "run start hooks",
        Request::CreateContainer(_) => "create container",
        Request::StartContainer { .. } => "start container",
        Request::Resize { .. } => "resize",
        Request::Ps { .. } => "ps",
        Request::RemoveContainer { .. } => "remove container",
        Request::Stats { .. } => "stats",
        Request::WaitOom { .. } => "wait oom",
        Request::CommitRoot { .. } => "commit root",
    }
}

/// Serves one request on its own thread; a `Wait` may block here for as long as the
/// process runs without holding up anything else.
fn answer(agent: &Agent, id: u64, request: Request, writer: &Writer) {
    let is_shutdown = request == Request::Shutdown;
    let name = request_name(&request);
    let response = panic::catch_unwind(AssertUnwindSafe(|| respond(agent, request)))
        .unwrap_or_else(|_| Response::Error {
            message: format!("agent internal error while serving {name}"),
        });
    send(writer, id, response);
    if is_shutdown {
        shutdown::shut_down(agent);
    }
}

fn respond(agent: &Agent, request: Request) -> Response {
    let result = match request {
        // Repeating the handshake is harmless; answer it the same way.
        Request::Hello { version } => husk_protocol::check_version(version)
            .map(|()| hello())
            .map_err(anyhow::Error::from),
        Request::Exec(req) => match &req.container_id {
            Some(c) => container::exec::exec(agent, &req, c),
            None => exec::exec(
                &req,
                &agent.transport,
                &agent.roots,
                &agent.table,
                &agent.terminals,
            ),
        }
        .map(|pid| Response::Started { pid })
        .map_err(|e| {
            diag!("exec {:?} failed: {e:#}", req.exec_id);
            e
        }),
        Request::CreateContainer(req) => {
            container::create::create(agent, &req).map(|pid| Response::Started { pid })
        }
        Request::StartContainer { container_id } => {
            container::start::start(agent, &container_id).map(|()| Response::Ok)
        }
        Request::Wait { exec_id } => agent
            .table
            .wait(&exec_id)
            .map(|status| Response::Exited { status }),
        Request::Signal {
            exec_id,
            signal,
            all,
        } => container::signal::signal(agent, &exec_id, signal, all).map(|()| Response::Ok),
        Request::Resize {
            exec_id,
            rows,
            cols,
        } => agent
            .terminals
            .resize(&exec_id, rows, cols)
            .map(|()| Response::Ok),
        Request::Ps { container_id } => {
            container::ps::ps(agent, &container_id).map(|pids| Response::Pids { pids })
        }
        Request::CommitRoot { container_id } => container::commit::commit(agent, &container_id)
            .map(|c| Response::Committed {
                changes: c.changes,
                skipped: c.skipped,
            }),
        Request::RemoveContainer { container_id } => {
            container::remove::remove(agent, &container_id).map(|()| Response::Ok)
        }
        Request::Stats { container_id } => {
            container::stats::stats(agent, &container_id).map(Response::Stats)
        }
        Request::WaitOom { container_id, seen } => {
            container::stats::wait_oom(agent, &container_id, seen)
                .map(|oom_kills| Response::Oom { oom_kills })
        }
        Request::Shutdown => Ok(Response::Ok),
        Request::ConfigureNetwork {
            container_id,
            interfaces,
        } => crate::network::configure(agent, &container_id, &interfaces).map(|()| Response::Ok),
        Request::RunStartHooks {
            container_id,
            state,
        } => container::hooks::run_start_hooks(agent, &container_id, &state).map(|()| Response::Ok),
    };
    result.unwrap_or_else(|e| Response::Error {
        message: format!("{e:#}"),
    })
}

fn send(writer: &Writer, id: u64, body: Response) {
    let mut conn = writer.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = write_frame(&mut *conn, &Envelope { id, body }) {
        // The host went away; a new connection starts over.
        diag!("send the response to request {id}: {e}");
    }
}
