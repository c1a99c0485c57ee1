//! A control connection to the agent shared by several threads: each request waits for
//! its own response, so a pending `Wait` does not hold up a `Signal`.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::{read_frame, write_frame, Envelope, Request, Response};

use super::AgentClient;
use crate::stdio::StdioListener;

/// A control connection that several threads use at once: each request waits for its
/// own response, so a pending `Wait` does not hold up a `Signal`.
pub struct AgentMux {
    writer: Mutex<UnixStream>,
    shared: Arc<Mutex<MuxState>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct MuxState {
    waiters: HashMap<u64, Sender<Response>>,
    lost: Option<String>,
}

/// A request sent through an [`AgentMux`] whose response has not been taken yet.
pub struct Pending {
    rx: Receiver<Response>,
    shared: Arc<Mutex<MuxState>>,
}

/// How long one request may take to write: a guest that stops reading (zero credit)
/// must not block the writer, and everyone waiting for the writer, forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl AgentMux {
    /// Takes over `client`'s connection; a thread reads and dispatches the responses.
    pub fn new(client: AgentClient) -> Result<Arc<Self>> {
        let (stream, _) = client.into_parts();
        Self::over(stream, WRITE_TIMEOUT)
    }

    /// A mux over a connection after its handshake; a write that takes longer than
    /// `write_timeout` fails, and with it the connection.
    pub fn over(stream: UnixStream, write_timeout: Duration) -> Result<Arc<Self>> {
        stream
            .set_write_timeout(Some(write_timeout))
            .context("setting the agent connection's write timeout")?;
        let mut reader = stream
            .try_clone()
            .context("duplicating the agent connection")?;
        let shared = Arc::new(Mutex::new(MuxState::default()));
        let for_reader = shared.clone();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || loop {
                match read_frame::<_, Envelope<Response>>(&mut reader) {
                    Ok(env) => {
                        let mut st = for_reader.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(tx) = st.waiters.remove(&env.id) {
                            let _ = tx.send(env.body);
                        }
                    }
                    Err(e) => {
                        let mut st = for_reader.lock().unwrap_or_else(PoisonError::into_inner);
                        st.lost = Some(e.to_string());
                        st.waiters.clear();
                        return;
                    }
                }
            })
            .context("starting the agent reader thread")?;
        Ok(Arc::new(Self {
            writer: Mutex::new(stream),
            shared,
            // The handshake used the first ids; any later number will do.
            next_id: AtomicU64::new(1000),
        }))
    }

    /// Sends `req`; the response is collected from the returned [`Pending`].
    pub fn submit(&self, req: Request) -> Result<Pending> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            let mut st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(why) = &st.lost {
                bail!("the connection to the guest agent is lost ({why})");
            }
            st.waiters.insert(id, tx);
        }
        self.write(id, req)?;
        Ok(Pending {
            rx,
            shared: self.shared.clone(),
        })
    }

    /// Sends `req` and drops its response whenever it comes.
    pub fn post(&self, req: Request) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write(id, req)
    }

    /// Sends `req` and waits for its response.
    pub fn call(&self, req: Request) -> Result<Response> {
        self.submit(req)?.wait()
    }

    /// Sends `req` and waits at most `timeout` for its response.
    pub fn call_timeout(&self, req: Request, timeout: Duration) -> Result<Response> {
        self.submit(req)?
            .wait_timeout(timeout)?
            .ok_or_else(|| anyhow!("the guest agent did not answer within {timeout:?}"))
    }

    /// Ends the connection: every pending request fails.
    pub fn close(&self) {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = w.shutdown(Shutdown::Both);
    }

    fn write(&self, id: u64, req: Request) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &self
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lost
        {
            bail!("the connection to the guest agent is lost ({why})");
        }
        let written = write_frame(&mut *w, &Envelope { id, body: req });
        if let Err(e) = &written {
            // Half a frame may have gone out: the stream is of no further use.
            let mut st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            st.lost = Some(format!("sending failed: {e}"));
            st.waiters.clear();
            let _ = w.shutdown(Shutdown::Both);
        }
        written.context("sending to the guest agent")
    }
}

impl Pending {
    /// Waits for the response.
    pub fn wait(self) -> Result<Response> {
        self.rx.recv().map_err(|_| self.lost())
    }

    /// Waits up to `timeout`; `None` if no response came in that time.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<Response>> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Ok(Some(r)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.lost()),
        }
    }

    fn lost(&self) -> anyhow::Error {
        let st = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        anyhow!(
            "the connection to the guest agent was lost ({})",
            st.lost.as_deref().unwrap_or("closed")
        )
    }
}

/// Turns an agent `Error` response into an error and anything unexpected into one too.
pub fn expect_ok(resp: Response, what: &str) -> Result<()> {
    match resp {
        Response::Ok => Ok(()),
        Response::Error { message } => bail!("{what}: {message}"),
        other => bail!("{what}: unexpected answer from the guest agent: {other:?}"),
    }
}

/// Sends `req` (an exec or container create whose stdio goes to `listener`), collects
/// its stdio streams, and waits for the agent's answer; returns the guest pid and the
/// streams. An error answer is returned as an error, whatever arrived before it.
pub fn start_process(
    agent: &AgentMux,
    listener: &StdioListener,
    exec_id: &str,
    wanted: &[husk_protocol::StreamKind],
    req: Request,
    what: &str,
) -> Result<(i32, HashMap<husk_protocol::StreamKind, UnixStream>)> {
    let pending = agent.submit(req)?;
    let mut answer: Option<Result<Response>> = None;
    let streams = listener.accept_streams_while(exec_id, wanted, Duration::from_secs(60), || {
        if answer.is_none() {
            answer = pending.wait_timeout(Duration::ZERO).transpose();
        }
        matches!(answer, None | Some(Ok(Response::Started { .. })))
    });
    let answer = match answer {
        Some(a) => a?,
        None => pending
            .wait_timeout(Duration::from_secs(60))?
            .ok_or_else(|| anyhow!("the guest agent did not answer the {what} request"))?,
    };
    match answer {
        Response::Started { pid } => Ok((pid, streams?)),
        Response::Error { message } => bail!("{what}: {message}"),
        other => bail!("{what}: unexpected answer from the guest agent: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_guest_that_stops_reading_cannot_block_requests_forever() {
        let (ours, _guest_never_reads) = UnixStream::pair().unwrap();
        let mux = AgentMux::over(ours, Duration::from_millis(200)).unwrap();
        let big = Request::Signal {
            exec_id: "x".repeat(512 << 10),
            signal: 15,
            all: false,
        };
        let started = Instant::now();
        let mut failed = false;
        // The socket buffer takes a few frames; then a write must time out, not hang.
        for _ in 0..64 {
            if mux.post(big.clone()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writes into a full connection kept succeeding");
        assert!(started.elapsed() < Duration::from_secs(10));
        // From then on the connection is known lost: requests fail at once.
        let t = Instant::now();
        let err = mux.call(Request::Shutdown).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(format!("{err:#}").contains("lost"), "{err:#}");
    }
}
