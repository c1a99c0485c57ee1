//! The host side of a guest process's stdio, for a container (the sandbox) and for an
//! exec (the exec client).
//!
//! Three ways, as with runc:
//! - pipes: the host process's own fds 0/1/2 are relayed to the guest's stdin, stdout
//!   and stderr streams (stdout and stderr stay apart; stdin EOF closes the guest's
//!   stdin);
//! - `--console-socket`: a pty is made on the host, its master is sent over the socket
//!   (SCM_RIGHTS, the pty's name as the message, as runc does) for the caller to own, and
//!   the slave side is relayed to the guest's terminal stream;
//! - the caller's own terminal (`husk run` / `husk exec -t` in the foreground): fd 0 is
//!   put in raw mode and relayed with fd 1 to the guest's terminal stream.
//!
//! Window size follows: the terminal's size is read on SIGWINCH (the host pty is made
//! the process's controlling terminal so that a resize of the master signals it) and sent
//! to the agent as `Resize`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use husk_protocol::{StdioSpec, StreamKind};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use nix::sys::termios::{self, SetArg, Termios};

use super::listener::{relay_in, relay_out};
use crate::sockdir::SocketDir;

/// How the process's stdio reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoMode {
    /// Relay fds 0/1/2.
    Pipes,
    /// Make a pty and send its master to this socket.
    ConsoleSocket(PathBuf),
    /// Use fds 0/1 as the terminal.
    OwnTerminal,
}

/// stdio prepared before the process starts.
pub struct ProcessIo {
    mode: IoMode,
    /// The host end that stands for the guest's terminal (the pty slave, or fd 0).
    tty: Option<OwnedFd>,
    raw: Option<RawMode>,
}

impl ProcessIo {
    /// Prepares `mode`: for a console socket, makes the pty and sends the master now.
    pub fn prepare(mode: IoMode) -> Result<Self> {
        let (tty, raw) = match &mode {
            IoMode::Pipes => (None, None),
            IoMode::ConsoleSocket(socket) => {
                let pty = nix::pty::openpty(None, None).context("creating a pseudo-terminal")?;
                set_raw(pty.slave.as_fd()).context("setting the host pty to raw mode")?;
                send_console(socket, &pty.master, &pty.slave)?;
                drop(pty.master);
                (Some(pty.slave), None)
            }
            IoMode::OwnTerminal => {
                let fd = std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("duplicating stdin")?;
                let raw = RawMode::enter(fd.as_fd());
                (Some(fd), raw)
            }
        };
        Ok(Self { mode, tty, raw })
    }

    /// With a console socket the pty is the process's stdio: lets go of the caller's
    /// fds 0-2 (pointing them at /dev/null), as a caller that reads them to the end would
    /// otherwise wait for as long as this process lives.
    pub fn release_caller_stdio(&self) -> Result<()> {
        if let IoMode::ConsoleSocket(_) = self.mode {
            detach_stdio().context("redirecting stdio to /dev/null")?;
        }
        Ok(())
    }

    /// Whether the guest process gets a terminal.
    pub fn terminal(&self) -> bool {
        self.mode != IoMode::Pipes
    }

    /// Makes the host pty the controlling terminal of this process (a new session), so a
    /// window-size change by whoever holds the master arrives here as SIGWINCH.
    pub fn take_controlling_terminal(&self) {
        if let (IoMode::ConsoleSocket(_), Some(tty)) = (&self.mode, &self.tty) {
            let _ = nix::unistd::setsid();
            // SAFETY: TIOCSCTTY takes an int argument and only changes this process's
            // session; the fd is a valid open pty slave.
            let _ = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
        }
    }

    /// The stdio wiring to ask the agent for.
    pub fn spec(&self, port: u32) -> StdioSpec {
        StdioSpec {
            port,
            stdin: !self.terminal(),
            stdout: !self.terminal(),
            stderr: !self.terminal(),
            terminal: self.terminal(),
        }
    }

    /// The streams the agent will connect.
    pub fn wanted(&self) -> Vec<StreamKind> {
        if self.terminal() {
            vec![StreamKind::Terminal]
        } else {
            vec![StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr]
        }
    }

    /// A descriptor of the host terminal whose size the guest's terminal follows.
    pub fn size_fd(&self) -> Option<OwnedFd> {
        match self.mode {
            IoMode::Pipes => None,
            IoMode::OwnTerminal => {
                let out = std::io::stdout().as_fd().try_clone_to_owned().ok();
                match out {
                    Some(fd) if window_size(fd.as_fd()).is_some() => Some(fd),
                    _ => self.tty.as_ref()?.try_clone().ok(),
                }
            }
            IoMode::ConsoleSocket(_) => self.tty.as_ref()?.try_clone().ok(),
        }
    }

    /// The terminal's size as (rows, cols), if there is a terminal with a size.
    pub fn window_size(&self) -> Option<(u16, u16)> {
        window_size(self.size_fd()?.as_fd())
    }

    /// Starts relaying `streams`; returns the output relays to wait for.
    pub fn relay(&mut self, mut streams: HashMap<StreamKind, UnixStream>) -> Result<Relays> {
        let mut outputs = Vec::new();
        if let Some(term) = streams.remove(&StreamKind::Terminal) {
            let tty = self.tty.as_ref().context("no host terminal")?;
            let (out, input): (File, File) = match self.mode {
                IoMode::OwnTerminal => {
                    (dup_file(std::io::stdout().as_fd())?, dup_file(tty.as_fd())?)
                }
                _ => (dup_file(tty.as_fd())?, dup_file(tty.as_fd())?),
            };
            let to_guest = term
                .try_clone()
                .context("duplicating the terminal stream")?;
            outputs.push(relay_out(term, out));
            // Not joined: it may block reading the terminal after the process is gone.
            drop(relay_terminal_input(input, to_guest));
        }
        if let Some(s) = streams.remove(&StreamKind::Stdout) {
            outputs.push(relay_out(s, dup_file(std::io::stdout().as_fd())?));
        }
        if let Some(s) = streams.remove(&StreamKind::Stderr) {
            outputs.push(relay_out(s, dup_file(std::io::stderr().as_fd())?));
        }
        if let Some(s) = streams.remove(&StreamKind::Stdin) {
            drop(relay_in(dup_file(std::io::stdin().as_fd())?, s));
        }
        Ok(Relays { outputs })
    }

    /// Puts the caller's terminal back the way it was.
    pub fn restore(&mut self) {
        self.raw.take();
    }
}

/// Output relays still running.
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
}

impl Relays {
    /// Waits until every output has reached its end, or `timeout`: a process the guest
    /// process left behind may hold its stdout open forever.
    pub fn finish(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.outputs.iter().any(|h| !h.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for h in self.outputs {
            let _ = h.join();
        }
        true
    }
}

fn dup_file(fd: BorrowedFd<'_>) -> Result<File> {
    Ok(File::from(
        fd.try_clone_to_owned()
            .context("duplicating a descriptor")?,
    ))
}

/// Keystrokes into the guest's terminal. Unlike stdin, the end of the host side (the
/// master closed: EIO) does not close the guest's terminal, which belongs to the
/// process until it exits.
fn relay_terminal_input(mut src: File, mut dst: UnixStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })
}

/// Sends `master` over the unix socket at `socket`, the way runc does.
fn send_console(socket: &Path, master: &OwnedFd, slave: &OwnedFd) -> Result<()> {
    let parent = socket.parent().unwrap_or(Path::new("/"));
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .context("console socket path has no file name")?;
    let dir = SocketDir::open(parent)?;
    let stream = UnixStream::connect(dir.socket(name))
        .with_context(|| format!("connecting to the console socket {}", socket.display()))?;
    let pty_name = nix::unistd::ttyname(slave)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/ptmx".into());
    let fds = [master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(pty_name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("sending the pty master over {}", socket.display()))?;
    Ok(())
}

/// Points fds 0, 1 and 2 at /dev/null.
fn detach_stdio() -> nix::Result<()> {
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    for fd in 0..3 {
        // SAFETY: dup2 onto a standard descriptor replaces it atomically; nothing in
        // this process holds an owned handle to fds 0-2 that it would close later.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}

fn set_raw(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let mut t = termios::tcgetattr(fd)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(fd, SetArg::TCSANOW, &t)
}

/// A terminal in raw mode until dropped.
struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal.
    fn enter(fd: BorrowedFd<'_>) -> Option<Self> {
        let saved = termios::tcgetattr(fd).ok()?;
        set_raw(fd).ok()?;
        Some(Self {
            fd: fd.try_clone_to_owned().ok()?,
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The size of the terminal `fd` as (rows, cols); `None` if it is not a terminal or has
/// no size yet.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid struct we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::IoSliceMut;
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;

    #[test]
    fn console_socket_receives_a_pty_master_whose_slave_is_raw() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let io = ProcessIo::prepare(IoMode::ConsoleSocket(path)).unwrap();
        assert!(io.terminal());
        assert_eq!(io.wanted(), vec![StreamKind::Terminal]);
        assert!(io.spec(7).terminal && !io.spec(7).stdin);

        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 128];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut master = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed this descriptor for us.
                master = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        let len = msg.bytes;
        let name = String::from_utf8_lossy(&buf[..len]).to_string();
        assert!(name.starts_with("/dev/pts/"), "{name}");
        let master = master.expect("a pty master fd");

        // The shim sets the size on the master; the slave side reads it back.
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one valid winsize.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0);
        assert_eq!(io.window_size(), Some((33, 101)));

        // Raw: what the master writes arrives unchanged (no echo, no CR/NL mapping).
        let mut m = File::from(master);
        m.write_all(b"a\rb\n").unwrap();
        let mut slave = File::from(io.tty.as_ref().unwrap().try_clone().unwrap());
        let mut got = [0u8; 4];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\rb\n");
    }

    #[test]
    fn pipes_want_three_streams() {
        let io = ProcessIo::prepare(IoMode::Pipes).unwrap();
        assert!(!io.terminal());
        let spec = io.spec(5);
        assert!(spec.stdin && spec.stdout && spec.stderr && !spec.terminal);
        assert_eq!(io.wanted().len(), 3);
    }
}
