//! The host end of the agent's control connection, over hybrid vsock.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::{
    check_version, read_frame, write_frame, Envelope, Request, Response, AGENT_CONTROL_PORT,
    PROTOCOL_VERSION,
};

/// Longest `OK <port>\n` answer the VMM's vsock device sends.
const MAX_HANDSHAKE_LINE: usize = 32;
/// How long the agent has to answer the version handshake once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a stream to guest vsock `port` through the VMM's hybrid vsock socket `uds`.
/// Fails (rather than waits) if nothing listens on that port in the guest yet.
pub fn vsock_connect(uds: &Path, port: u32, timeout: Duration) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::with_capacity(MAX_HANDSHAKE_LINE);
    let mut byte = [0u8; 1];
    // Byte by byte: whatever follows the line belongs to the caller's protocol.
    loop {
        match s.read(&mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("nothing listens on guest vsock port {port}"),
                ))
            }
            _ if byte[0] == b'\n' => break,
            _ if line.len() >= MAX_HANDSHAKE_LINE => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "vsock handshake line too long",
                ))
            }
            _ => line.push(byte[0]),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "unexpected vsock handshake: {:?}",
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// A control connection after a successful version handshake.
pub struct AgentClient {
    stream: UnixStream,
    next_id: u64,
    kernel_release: String,
}

impl AgentClient {
    /// Connects to the agent, retrying while the guest boots, until `deadline`.
    /// `vm_alive` is asked between attempts so a guest that died is reported at once.
    pub fn connect(
        uds: &Path,
        deadline: Instant,
        mut vm_alive: impl FnMut() -> Result<()>,
    ) -> Result<Self> {
        loop {
            vm_alive()?;
            let err = match vsock_connect(uds, AGENT_CONTROL_PORT, Duration::from_secs(5)) {
                Ok(stream) => return Self::handshake(stream),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!("the guest agent did not answer in time (last error: {err})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Performs the version handshake on a stream already connected to the agent.
    pub fn handshake(stream: UnixStream) -> Result<Self> {
        Self::handshake_within(stream, HANDSHAKE_TIMEOUT)
    }

    /// [`AgentClient::handshake`], failing if the agent has not answered within
    /// `timeout`: a guest that accepts the connection and then says nothing must not
    /// hold up the caller.
    pub fn handshake_within(stream: UnixStream, timeout: Duration) -> Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Self {
            stream,
            next_id: 1,
            kernel_release: String::new(),
        };
        let answer = c
            .call(Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .with_context(|| {
                format!("the agent did not complete the handshake within {timeout:?}")
            })?;
        c.stream.set_read_timeout(None)?;
        c.stream.set_write_timeout(None)?;
        match answer {
            Response::Hello {
                version,
                kernel_release,
            } => {
                check_version(version).context("agent handshake")?;
                c.kernel_release = kernel_release;
                Ok(c)
            }
            other => bail!("agent answered the handshake with {other:?}"),
        }
    }

    /// The connection and the guest kernel's release, to hand the connection to another
    /// reader (see [`super::AgentMux`]).
    pub fn into_parts(self) -> (UnixStream, String) {
        (self.stream, self.kernel_release)
    }

    /// The guest kernel's release, from the handshake.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// Sends `req` and waits for its response.
    pub fn call(&mut self, req: Request) -> Result<Response> {
        let id = self.send(req)?;
        self.recv(id)
    }

    /// [`AgentClient::call`], failing if the exchange takes longer than `timeout` (a
    /// guest that never answers must not hold the caller).
    pub fn call_within(&mut self, req: Request, timeout: Duration) -> Result<Response> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        let answer = self.call(req);
        self.stream.set_read_timeout(None)?;
        self.stream.set_write_timeout(None)?;
        answer
    }

    /// Sends `req` without waiting; returns its id for [`AgentClient::recv`].
    pub fn send(&mut self, req: Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &Envelope { id, body: req })
            .context("sending to the agent")?;
        Ok(id)
    }

    /// A second handle on the control connection: shutting it down makes a blocked
    /// [`AgentClient::recv`] return, e.g. when the VM died under it.
    pub fn interrupter(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// The control socket, to poll for a pending response.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.stream.as_fd()
    }

    /// Waits for the response to request `id`.
    pub fn recv(&mut self, id: u64) -> Result<Response> {
        loop {
            let resp: Envelope<Response> =
                read_frame(&mut self.stream).context("reading from the agent")?;
            if resp.id == id {
                return Ok(resp.body);
            }
            // Responses to earlier, abandoned requests: skip them.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_within_a_time_fails_when_the_guest_never_answers() {
        let (ours, _silent_guest) = UnixStream::pair().unwrap();
        let mut c = AgentClient {
            stream: ours,
            next_id: 1,
            kernel_release: String::new(),
        };
        let started = Instant::now();
        assert!(c
            .call_within(Request::Shutdown, Duration::from_millis(200))
            .is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_agent_that_never_answers_the_handshake_fails_it_in_time() {
        let (ours, _silent_guest) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let err = AgentClient::handshake_within(ours, Duration::from_millis(200))
            .err()
            .expect("no answer is an error");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(format!("{err:#}").contains("handshake"), "{err:#}");
    }
}
