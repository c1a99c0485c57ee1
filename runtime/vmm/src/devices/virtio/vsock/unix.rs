//! The host side of hybrid vsock: unix sockets.
//!
//! Host processes reach the guest through one listening socket at `uds_path`: they connect
//! and write `CONNECT <port>\n`; once the guest accepts, they read `OK <host port>\n` and
//! the stream carries the connection's data. Connections the guest opens to host port `P`
//! go to whoever listens on `<uds_path>_P`.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Longest `CONNECT <port>\n` line accepted, newline included. `CONNECT 4294967295\n` is
/// 19 bytes; the slack allows stray spaces but not a stream of junk.
pub(crate) const MAX_CONNECT_LINE: usize = 32;

/// The listening socket at `uds_path`, removed again when dropped.
#[derive(Debug)]
pub(crate) struct HostListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created: on drop we only unlink the path if
    /// it is still ours, never a file someone put there after us.
    identity: Option<(u64, u64)>,
}

impl HostListener {
    /// Binds `path`. Fails if anything already exists there: a stale socket is not ours to
    /// remove.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on vsock socket {}: {e}", path.display()),
            )
        })?;
        listener.set_nonblocking(true)?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Self {
            listener,
            path: path.to_owned(),
            identity,
        })
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The socket a guest-initiated connection to host port `port` goes to: `<uds_path>_<port>`.
pub(crate) fn guest_port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(uds_path.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to the unix socket at `path` without ever blocking.
///
/// `UnixStream::connect` sleeps while the listener's backlog is full, which would let a
/// guest stall the device thread by opening connections to a host listener that does not
/// accept. A non-blocking socket fails with `WouldBlock` instead; a unix stream connect
/// otherwise completes (or fails) at once, so there is no in-progress state to track.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Parses a complete `CONNECT <port>` line (newline already stripped).
pub(crate) fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"CONNECT ")?;
    let port = std::str::from_utf8(rest).ok()?.trim();
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// What reading a pending host connection's CONNECT line produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConnectLine {
    /// No complete line yet; wait for more.
    Incomplete,
    /// The host wants guest port `.0`.
    Port(u32),
    /// Garbage, an over-long line, or the host went away: close the stream.
    Invalid,
}

/// A host process that connected to `uds_path` and has not finished its CONNECT line.
#[derive(Debug)]
pub(crate) struct HostConnect {
    pub stream: UnixStream,
    line: Vec<u8>,
    pub deadline: Instant,
}

impl HostConnect {
    /// Wraps a freshly accepted (already non-blocking) stream.
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
            deadline,
        }
    }

    /// Reads what is available of the CONNECT line.
    ///
    /// Reads one byte at a time: whatever follows the newline is connection data that must
    /// stay in the socket until the guest accepts. The line is at most 32 bytes, so this
    /// costs a handful of syscalls per connection.
    pub fn read_line(&mut self) -> ConnectLine {
        let mut byte = [0u8; 1];
        loop {
            match (&self.stream).read(&mut byte) {
                Ok(0) => return ConnectLine::Invalid,
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return parse_connect_line(&self.line)
                            .map_or(ConnectLine::Invalid, ConnectLine::Port);
                    }
                    // The newline must fit in the limit too.
                    if self.line.len() + 1 >= MAX_CONNECT_LINE {
                        return ConnectLine::Invalid;
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ConnectLine::Incomplete,
                Err(_) => return ConnectLine::Invalid,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"CONNECT +5"), None);
        assert_eq!(parse_connect_line(b"CONNECT "), None);
        assert_eq!(parse_connect_line(b"connect 52"), None);
        assert_eq!(parse_connect_line(b"CONNECT 5 2"), None);
        assert_eq!(parse_connect_line(b"\xffCONNECT 52"), None);
    }

    #[test]
    fn connect_line_leaves_following_data_in_the_socket() {
        let (mut host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut pending = HostConnect::new(ours, Instant::now());
        host.write_all(b"CONN").unwrap();
        assert_eq!(pending.read_line(), ConnectLine::Incomplete);
        host.write_all(b"ECT 1234\npayload").unwrap();
        assert_eq!(pending.read_line(), ConnectLine::Port(1234));
        let mut rest = [0u8; 7];
        (&pending.stream).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"payload");
    }

    #[test]
    fn overlong_connect_line_is_invalid() {
        let (mut host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut pending = HostConnect::new(ours, Instant::now());
        host.write_all(&[b'7'; MAX_CONNECT_LINE]).unwrap();
        assert_eq!(pending.read_line(), ConnectLine::Invalid);
    }

    #[test]
    fn nonblocking_connect_reaches_a_listener_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock_5");
        assert!(connect_nonblocking(&path).is_err());
        let l = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        (&s).write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        assert_eq!(guest_port_path(&dir.path().join("sock"), 5), path);
    }

    #[test]
    fn listener_refuses_an_existing_path_and_removes_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        std::fs::write(&path, b"someone else's").unwrap();
        let err = HostListener::bind(&path).unwrap_err();
        assert!(err.to_string().contains("v.sock"), "{err}");
        assert!(path.exists(), "a failed bind must not remove the file");
        std::fs::remove_file(&path).unwrap();

        let l = HostListener::bind(&path).unwrap();
        drop(l);
        assert!(!path.exists(), "our socket is removed on drop");

        let l = HostListener::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"replacement").unwrap();
        drop(l);
        assert!(path.exists(), "a file that replaced ours is left alone");
    }
}
