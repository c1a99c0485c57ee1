//! The CRI's streaming calls (`Exec`, `Attach`) as `kubectl exec` and `kubectl attach`
//! reach them: the runtime answers with a URL on containerd's stream server, and the
//! client opens a websocket there speaking `v4.channel.k8s.io`, where every message's
//! first byte names its channel (0 stdin, 1 stdout, 2 stderr, 3 the exit status as a
//! Kubernetes `Status`, 4 terminal resizes).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// What a stream has brought so far.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Channel 1.
    pub stdout: Vec<u8>,
    /// Channel 2.
    pub stderr: Vec<u8>,
    /// Channel 3: the `Status` sent when the process ended.
    pub status: Option<serde_json::Value>,
    /// The server closed the stream.
    pub closed: bool,
}

impl Streamed {
    /// The process's exit code from its `Status`: 0 for `Success`, the `ExitCode` cause's
    /// for a non-zero exit; None before the status came or for another failure.
    pub fn exit_code(&self) -> Option<i32> {
        let status = self.status.as_ref()?;
        if status["status"] == "Success" {
            return Some(0);
        }
        status["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok()
    }

    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An open stream.
pub struct Stream {
    ws: WebSocket<TcpStream>,
    /// What it has brought so far.
    pub got: Streamed,
}

impl Stream {
    /// Opens the stream at `url` (what `Exec` or `Attach` returned).
    pub fn open(url: &str) -> Result<Self> {
        let ws_url = url
            .strip_prefix("http://")
            .with_context(|| format!("not a plain http stream URL: {url}"))?;
        let authority = ws_url.split('/').next().unwrap_or_default();
        let tcp = TcpStream::connect(authority)
            .with_context(|| format!("connecting to the stream server at {authority}"))?;
        tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut req = format!("ws://{ws_url}").into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", PROTOCOL.parse()?);
        let (ws, _) = tungstenite::client(req, tcp)
            .map_err(|e| anyhow::anyhow!("websocket handshake with {url}: {e}"))?;
        Ok(Self {
            ws,
            got: Streamed::default(),
        })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut msg = vec![channel];
        msg.extend_from_slice(data);
        self.ws
            .send(Message::binary(msg))
            .context("writing to the stream")
    }

    /// Writes `data` to the process's stdin.
    pub fn stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data)
    }

    /// Tells the process's terminal its new size.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let size = serde_json::json!({"Width": width, "Height": height});
        self.send(RESIZE, size.to_string().as_bytes())
    }

    /// Reads until `done` holds for what came, the server closes the stream, or `timeout`
    /// passes (an error naming what came).
    pub fn read_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Streamed) -> bool,
    ) -> Result<&Streamed> {
        let deadline = Instant::now() + timeout;
        while !done(&self.got) && !self.got.closed {
            if Instant::now() > deadline {
                bail!("the stream brought only {:?} in {timeout:?}", self.got);
            }
            match self.ws.read() {
                Ok(Message::Binary(data)) => match data.split_first() {
                    Some((&STDOUT, rest)) => self.got.stdout.extend_from_slice(rest),
                    Some((&STDERR, rest)) => self.got.stderr.extend_from_slice(rest),
                    Some((&STATUS, rest)) if !rest.is_empty() => {
                        self.got.status = Some(
                            serde_json::from_slice(rest)
                                .with_context(|| format!("a status: {rest:?}"))?,
                        )
                    }
                    // The empty message each channel starts with.
                    _ => {}
                },
                Ok(Message::Close(_)) => self.got.closed = true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.got.closed = true
                }
                Err(e) => bail!("reading the stream: {e} (so far {:?})", self.got),
            }
        }
        Ok(&self.got)
    }

    /// Reads until the server closes the stream (the process ended).
    pub fn read_to_end(&mut self, timeout: Duration) -> Result<&Streamed> {
        self.read_until(timeout, |_| false)
    }

    /// Closes the stream (a client detaching).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status() {
        let mut s = Streamed::default();
        assert_eq!(s.exit_code(), None);
        s.status = Some(serde_json::json!({"metadata": {}, "status": "Success"}));
        assert_eq!(s.exit_code(), Some(0));
        s.status = Some(serde_json::json!({
            "status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "5"}]}
        }));
        assert_eq!(s.exit_code(), Some(5));
        s.status = Some(serde_json::json!({"status": "Failure", "message": "boom"}));
        assert_eq!(s.exit_code(), None);
    }
}
