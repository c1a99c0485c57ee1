//! Sockets to the host: AF_VSOCK in the guest, unix sockets in test mode.
//!
//! Both kinds end up as plain connected stream sockets, so everything above this module
//! handles one [`Conn`] type and does not care which transport it runs on.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, UnixAddr, VsockAddr,
};
use nix::{fcntl, unistd};

/// Where the control listener lives and how stdio connections reach the host.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The guest: listen on vsock, connect stdio to the host's CID.
    Vsock {
        /// Control port to listen on.
        control_port: u32,
    },
    /// Test mode: the same roles played by unix sockets on the host.
    Unix {
        /// Path of the control listener.
        listen: PathBuf,
        /// A stdio connection for host port P goes to the socket `<prefix>_<P>`, the name
        /// the VMM's hybrid vsock gives a guest connection to host port P.
        stdio_prefix: PathBuf,
    },
}

impl Transport {
    /// Binds and listens for control connections.
    pub fn listen(&self) -> anyhow::Result<Listener> {
        match self {
            Transport::Vsock { control_port } => {
                let addr = VsockAddr::new(libc::VMADDR_CID_ANY, *control_port);
                listen_on(AddressFamily::Vsock, &addr)
                    .with_context(|| format!("listen on vsock port {control_port}"))
            }
            Transport::Unix { listen, .. } => {
                // A socket file left by an earlier run would make bind fail.
                match std::fs::remove_file(listen) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("remove stale {}", listen.display()))
                    }
                    _ => {}
                }
                let addr = UnixAddr::new(listen.as_path())
                    .with_context(|| format!("socket path {}", listen.display()))?;
                listen_on(AddressFamily::Unix, &addr)
                    .with_context(|| format!("listen on {}", listen.display()))
            }
        }
    }

    /// Opens a stdio connection to the host's port `port`.
    pub fn connect_stdio(&self, port: u32) -> anyhow::Result<Conn> {
        match self {
            Transport::Vsock { .. } => {
                let addr = VsockAddr::new(husk_protocol::HOST_CID, port);
                connect_to(AddressFamily::Vsock, &addr).with_context(|| {
                    format!(
                        "connect to host vsock port {port} (cid {})",
                        husk_protocol::HOST_CID
                    )
                })
            }
            Transport::Unix { stdio_prefix, .. } => {
                let path = stdio_socket_path(stdio_prefix, port);
                let addr = UnixAddr::new(path.as_path())
                    .with_context(|| format!("socket path {}", path.display()))?;
                connect_to(AddressFamily::Unix, &addr)
                    .with_context(|| format!("connect to {}", path.display()))
            }
        }
    }
}

/// The unix socket that stands for host port `port` in test mode.
pub fn stdio_socket_path(prefix: &Path, port: u32) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

fn listen_on(family: AddressFamily, addr: &dyn SockaddrLike) -> nix::Result<Listener> {
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::bind(fd.as_raw_fd(), addr)?;
    socket::listen(&fd, Backlog::MAXCONN)?;
    Ok(Listener(fd))
}

fn connect_to(family: AddressFamily, addr: &dyn SockaddrLike) -> nix::Result<Conn> {
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    loop {
        match socket::connect(fd.as_raw_fd(), addr) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other?,
        }
        return Ok(Conn(fd));
    }
}

/// A listening stream socket.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl Listener {
    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Conn> {
        loop {
            match socket::accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                Ok(fd) => return Ok(Conn(unsafe { OwnedFd::from_raw_fd(fd) })),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A connected stream socket (vsock or unix).
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    /// Another handle on the same connection, for a writer that runs beside the reader.
    pub fn try_clone(&self) -> io::Result<Conn> {
        // Close-on-exec like every descriptor of the agent: a process started later must
        // not inherit the control connection and speak to the host as the agent.
        let fd = fcntl::fcntl(&self.0, fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))?;
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) just created this descriptor; nothing else owns it.
        Ok(Conn(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Ends the connection for the peer even while other handles on it are still open.
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.0.as_raw_fd(), socket::Shutdown::Both);
    }

    /// The descriptor, to become a process's stdio.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(unistd::read(&self.0, buf)?)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(unistd::write(&self.0, buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_socket_path_appends_underscore_and_port() {
        assert_eq!(
            stdio_socket_path(Path::new("/tmp/x/vsock.sock"), 5000),
            PathBuf::from("/tmp/x/vsock.sock_5000")
        );
    }
}
