//! A task's stdio as containerd hands it over: fifo paths (empty when a stream is not
//! wanted), and with a terminal a pty whose master the sandbox (or exec child) sends back
//! over a console socket.
//!
//! stdout and stderr fifos go straight to the sandbox process, which relays them to the
//! guest; the shim keeps no copy in the path. stdin goes through a pipe the shim feeds, so
//! that `CloseIO` can end it (containerd closes its end of the fifo only when it goes away,
//! and `ctr run -i`, `crictl attach`/`stdin_once` ask for EOF explicitly). With a
//! terminal, the shim relays between the fifos and the pty master, as the runc shim does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::StreamKind;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// The fifo paths containerd gave for a process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin fifo, or empty.
    pub stdin: String,
    /// stdout fifo, or empty.
    pub stdout: String,
    /// stderr fifo, or empty.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// The shim's side of a process's stdio while it runs.
pub struct ProcessStdio {
    /// Feeds the process's stdin (pipe write end, or the pty master with a terminal);
    /// dropping it is the process's stdin EOF.
    stdin_feed: Arc<Mutex<Option<JoinHandle<()>>>>,
    stdin_stop: Arc<Mutex<Option<OwnedFd>>>,
    /// The pty master, for window size changes.
    master: Option<Arc<File>>,
    /// Copy output (a terminal's, or a pod container's streams) to the fifos.
    output: Vec<JoinHandle<()>>,
    console: Option<ConsoleSocket>,
}

/// What the process itself gets: its stdin, stdout and stderr.
pub type ChildStdio = [OwnedFd; 3];

impl StdioPaths {
    /// Opens the fifos and returns the child's three descriptors. With a terminal they
    /// are /dev/null, and the child sends its pty master to [`ProcessStdio::console_socket`],
    /// made in `state_root` (husk's `--root`).
    pub fn open(&self, state_root: &Path) -> Result<(ProcessStdio, ChildStdio)> {
        if self.terminal {
            let console = ConsoleSocket::new(state_root)?;
            return Ok((
                ProcessStdio {
                    stdin_feed: Arc::default(),
                    stdin_stop: Arc::default(),
                    master: None,
                    output: Vec::new(),
                    console: Some(console),
                },
                [
                    open_devnull(false)?,
                    open_devnull(true)?,
                    open_devnull(true)?,
                ],
            ));
        }
        let stdout = open_writer(&self.stdout)?;
        let stderr = open_writer(&self.stderr)?;
        let (stdin_child, feed, stop) = if self.stdin.is_empty() {
            (open_devnull(false)?, None, None)
        } else {
            let fifo = open_stdin_fifo(&self.stdin)?;
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .context("creating the stdin pipe")?;
            let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let handle = spawn_copy(fifo, File::from(write), stop_read);
            (read, Some(handle), Some(stop_write))
        };
        Ok((
            ProcessStdio {
                stdin_feed: Arc::new(Mutex::new(feed)),
                stdin_stop: Arc::new(Mutex::new(stop)),
                master: None,
                output: Vec::new(),
                console: None,
            },
            [stdin_child, stdout, stderr],
        ))
    }
}

impl ProcessStdio {
    /// A pod container's stdio: the streams the agent opened, relayed to and from the
    /// fifos (window size changes go through the agent, not a pty here).
    pub fn from_streams(
        paths: &StdioPaths,
        mut streams: HashMap<StreamKind, UnixStream>,
    ) -> Result<Self> {
        let mut this = Self {
            stdin_feed: Arc::default(),
            stdin_stop: Arc::default(),
            master: None,
            output: Vec::new(),
            console: None,
        };
        let (out_kind, input) = if paths.terminal {
            let term = streams
                .remove(&StreamKind::Terminal)
                .context("no terminal stream")?;
            let input = term
                .try_clone()
                .context("duplicating the terminal stream")?;
            streams.insert(StreamKind::Stdout, term);
            (vec![(StreamKind::Stdout, &paths.stdout)], Some(input))
        } else {
            (
                vec![
                    (StreamKind::Stdout, &paths.stdout),
                    (StreamKind::Stderr, &paths.stderr),
                ],
                streams.remove(&StreamKind::Stdin),
            )
        };
        for (kind, path) in out_kind {
            if let Some(stream) = streams.remove(&kind) {
                let out = File::from(open_writer(path)?);
                let src = File::from(OwnedFd::from(stream));
                this.output
                    .push(std::thread::spawn(move || copy_until_error(src, out)));
            }
        }
        if let (Some(stream), false) = (input, paths.stdin.is_empty()) {
            this.feed_stdin(&paths.stdin, File::from(OwnedFd::from(stream)))?;
        }
        Ok(this)
    }

    /// The console socket's path, for a process with a terminal.
    pub fn console_socket(&self) -> Option<PathBuf> {
        self.console.as_ref().map(|c| c.path.clone())
    }

    /// With a terminal: takes the pty master the process sent, and starts relaying it to
    /// and from the fifos.
    pub fn attach_terminal(&mut self, paths: &StdioPaths) -> Result<()> {
        let Some(console) = self.console.take() else {
            return Ok(());
        };
        let master = Arc::new(File::from(console.receive(Duration::from_secs(30))?));
        if !paths.stdout.is_empty() {
            let out = File::from(open_writer(&paths.stdout)?);
            let src = master.try_clone().context("duplicating the pty master")?;
            self.output
                .push(std::thread::spawn(move || copy_until_error(src, out)));
        }
        if !paths.stdin.is_empty() {
            let dst = master.try_clone().context("duplicating the pty master")?;
            self.feed_stdin(&paths.stdin, dst)?;
        }
        self.master = Some(master);
        Ok(())
    }

    /// Starts copying the stdin fifo at `path` into `dst`, until `CloseIO` stops it.
    fn feed_stdin(&self, path: &str, dst: File) -> Result<()> {
        let fifo = open_stdin_fifo(path)?;
        let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        *self
            .stdin_feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(spawn_copy(fifo, dst, stop_read));
        *self
            .stdin_stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(stop_write);
        Ok(())
    }

    /// `CloseIO`: the process's stdin ends (for a terminal, the relay into it stops).
    pub fn close_stdin(&self) {
        // Closing the stop pipe wakes the copier, which drops its end of the stdin pipe.
        drop(
            self.stdin_stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(h) = self
            .stdin_feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = h.join();
        }
    }

    /// `ResizePty`: the terminal's new size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(master) = &self.master else {
            bail!("the process has no terminal");
        };
        let ws = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setting the terminal size");
        }
        Ok(())
    }

    /// After the process exited: lets the terminal's output drain (bounded), then stops
    /// every relay.
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for h in std::mem::take(&mut self.output) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.close_stdin();
        self.master = None;
    }
}

/// A listening unix socket the process sends its pty master to (runc's
/// `--console-socket` protocol: one message with the fd as SCM_RIGHTS).
struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsoleSocket {
    /// A socket in a directory of its own, removed with it, right in `state_root`: no
    /// shared parent is left behind (`husk list` passes over what is not a container).
    fn new(state_root: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_root)
            .with_context(|| format!("creating {}", state_root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(".pty")
            .tempdir_in(state_root)
            .context("creating the console socket's directory")?;
        let path = dir.path().join("c.sock");
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding the console socket {}", path.display()))?;
        Ok(Self {
            listener,
            path,
            _dir: dir,
        })
    }

    fn receive(&self, timeout: Duration) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("no terminal arrived on the console socket within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).context("accepting on the console socket"),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(timeout))?;
        let mut name = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the pty master")?;
        for c in msg.cmsgs().context("reading the console message")? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                let mut owned: Vec<OwnedFd> = fds
                    .into_iter()
                    // SAFETY: the kernel just installed these descriptors for us.
                    .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
                    .collect();
                if let Some(fd) = owned.pop() {
                    return Ok(fd);
                }
            }
        }
        bail!("the console socket message carried no descriptor")
    }
}

/// A stdout/stderr fifo opened for writing, or /dev/null when the stream is not wanted.
///
/// Opened read-write: a fifo's write end cannot be opened without blocking until a
/// reader shows up, and containerd may open its reader only after `Create` returns.
fn open_writer(path: &str) -> Result<OwnedFd> {
    if path.is_empty() {
        return open_devnull(true);
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    Ok(f.into())
}

/// A stdin fifo: read-write so that reads block until data comes instead of seeing EOF
/// while containerd has not opened its end yet.
fn open_stdin_fifo(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {path}"))
}

fn open_devnull(write: bool) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .context("opening /dev/null")?;
    Ok(f.into())
}

/// Copies `src` to `dst` until EOF, an error, or `stop` becoming readable (closed).
fn spawn_copy(src: File, mut dst: File, stop: OwnedFd) -> JoinHandle<()> {
    std::thread::spawn(move || {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut buf = vec![0u8; 32 * 1024];
        let mut src = src;
        loop {
            let mut fds = [
                PollFd::new(src.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
                Ok(_) => {}
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            match src.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if dst.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

fn copy_until_error(mut src: File, mut dst: File) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf) {
            // EIO: every slave descriptor is closed (the process and its relay are gone).
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_socket_leaves_nothing_in_the_state_root() {
        let root = tempfile::tempdir().unwrap();
        let state_root = root.path().join("k8s.io");
        let socket = ConsoleSocket::new(&state_root).unwrap();
        assert!(socket.path.starts_with(&state_root));
        assert!(socket.path.exists());
        drop(socket);
        let left: Vec<_> = std::fs::read_dir(&state_root).unwrap().collect();
        assert!(left.is_empty(), "left in the state root: {left:?}");
    }
}
