//! An [`AgentAddress`] made usable: connecting to the agent and naming the sockets its
//! stdio streams arrive at.
//!
//! In a VM the agent is behind the VMM's hybrid vsock socket (`CONNECT <port>`); with the
//! process backend used by tests it is a host process listening on a plain unix socket.
//! Either way, stdio streams arrive at `<prefix>_<port>` sockets that the host binds, so
//! everything above [`AgentEndpoint`] is the same for both.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{AgentAddress, AgentClient};
use crate::sockdir::SocketDir;

/// An [`AgentAddress`] made usable in this process.
#[derive(Debug)]
pub struct AgentEndpoint {
    addr: AgentAddress,
    dir: SocketDir,
}

impl AgentEndpoint {
    /// Opens the address's directory.
    pub fn open(addr: &AgentAddress) -> Result<Self> {
        let dir = match addr {
            AgentAddress::Vsock { dir, .. } | AgentAddress::Unix { dir, .. } => dir,
        };
        Ok(Self {
            addr: addr.clone(),
            dir: SocketDir::open(dir)?,
        })
    }

    /// What `StdioListener::bind` takes: stdio for host port P arrives at `<this>_P`.
    pub fn stdio_prefix(&self) -> PathBuf {
        match &self.addr {
            AgentAddress::Vsock { socket, .. } => self.dir.socket(socket),
            AgentAddress::Unix { stdio_prefix, .. } => self.dir.socket(stdio_prefix),
        }
    }

    /// Connects and performs the handshake, retrying until `deadline` while the agent
    /// starts; `alive` is asked between attempts so a dead guest is reported at once.
    pub fn connect(
        &self,
        deadline: Instant,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<AgentClient> {
        match &self.addr {
            AgentAddress::Vsock { socket, .. } => {
                AgentClient::connect(&self.dir.socket(socket), deadline, alive)
            }
            AgentAddress::Unix { control, .. } => {
                let path = self.dir.socket(control);
                loop {
                    alive()?;
                    match UnixStream::connect(&path) {
                        Ok(s) => return AgentClient::handshake(s),
                        Err(e) if Instant::now() >= deadline => {
                            bail!("the agent did not answer in time (last error: {e})")
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        }
    }

    /// One connection attempt, for a container whose agent is known to be up.
    pub fn connect_now(&self) -> Result<AgentClient> {
        self.connect(Instant::now() + Duration::from_secs(10), || Ok(()))
            .context("connecting to the container's guest agent")
    }
}
