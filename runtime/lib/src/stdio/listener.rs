//! Process stdio between the host and the guest: the agent connects one vsock stream per
//! piped stream to a host port, and the host relays it to its own fds.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::{read_frame, StreamHello, StreamKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The host end of a hybrid-vsock port: guest connections to host port P arrive at the
/// unix socket `<uds>_<P>`.
pub struct StdioListener {
    listener: UnixListener,
    path: PathBuf,
}

/// Gives the socket at `path` to the owner of its directory: the VMM connects guest
/// streams to it, and in a sandbox's jail the VMM runs as the jail's owner, not as the
/// root that binds exec clients' sockets there.
fn give_to_directory_owner(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let owner = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let me = std::fs::metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    if (owner.uid(), owner.gid()) != (me.uid(), me.gid()) {
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("giving {} to the sandbox's user", path.display()))?;
    }
    Ok(())
}

impl StdioListener {
    /// Listens for guest connections to host port `port` of the VM whose vsock socket is
    /// `uds`.
    pub fn bind(uds: &Path, port: u32) -> Result<Self> {
        let path = PathBuf::from(format!("{}_{port}", uds.display()));
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        give_to_directory_owner(&path)?;
        Ok(Self { listener, path })
    }

    /// Listens on the first free host port from `first` on (another exec client may
    /// hold a port, or have left its socket file behind).
    pub fn bind_free(uds: &Path, first: u32) -> Result<(Self, u32)> {
        let mut last = None;
        for port in first..first.saturating_add(1000) {
            let path = PathBuf::from(format!("{}_{port}", uds.display()));
            match UnixListener::bind(&path) {
                Ok(listener) => {
                    give_to_directory_owner(&path)?;
                    return Ok((Self { listener, path }, port));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("listening on {}", path.display()))
                }
            }
        }
        Err(anyhow::anyhow!(
            "no free stdio port from {first} on (last error: {last:?})"
        ))
    }

    /// Accepts the streams in `want` for `exec_id` until all have arrived, `timeout`
    /// passes, or `keep_going` (asked between waits) says to stop, e.g. because the
    /// agent answered the request with an error and will connect nothing.
    pub fn accept_streams_while(
        &self,
        exec_id: &str,
        want: &[StreamKind],
        timeout: Duration,
        mut keep_going: impl FnMut() -> bool,
    ) -> Result<HashMap<StreamKind, UnixStream>> {
        let deadline = Instant::now() + timeout;
        let mut got = HashMap::new();
        while got.len() < want.len() {
            if Instant::now() >= deadline {
                bail!("the guest did not connect the process's stdio in time");
            }
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(20u8)) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for stdio streams"),
                Ok(0) => {
                    if !keep_going() {
                        break;
                    }
                    continue;
                }
                Ok(_) => {}
            }
            let (mut s, _) = self.listener.accept().context("accepting a stdio stream")?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let hello: StreamHello = read_frame(&mut s).context("reading a stdio stream header")?;
            s.set_read_timeout(None)?;
            if hello.exec_id == exec_id && want.contains(&hello.stream) {
                got.insert(hello.stream, s);
            }
        }
        Ok(got)
    }

    /// Accepts the streams in `want` for `exec_id`. While waiting it also watches
    /// `control` (the agent's control socket): if the agent answers there first (an
    /// error), it returns what it has so the caller can read that answer.
    pub fn accept_streams(
        &self,
        exec_id: &str,
        want: &[StreamKind],
        control: std::os::fd::BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<HashMap<StreamKind, UnixStream>> {
        let deadline = Instant::now() + timeout;
        let mut got = HashMap::new();
        while got.len() < want.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the guest did not connect the process's stdio in time");
            }
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(control, PollFlags::POLLIN),
            ];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for stdio streams"),
                Ok(_) => {}
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) && !ready(&fds[0]) {
                return Ok(got);
            }
            if !ready(&fds[0]) {
                continue;
            }
            let (mut s, _) = self.listener.accept().context("accepting a stdio stream")?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let hello: StreamHello = read_frame(&mut s).context("reading a stdio stream header")?;
            s.set_read_timeout(None)?;
            if hello.exec_id != exec_id || !want.contains(&hello.stream) {
                // Not ours (a stale or confused guest): drop it.
                continue;
            }
            got.insert(hello.stream, s);
        }
        Ok(got)
    }
}

impl Drop for StdioListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Relays guest output `src` to `dst` until the guest closes it.
pub fn relay_out<W: Write + Send + 'static>(mut src: UnixStream, mut dst: W) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = dst.flush();
    })
}

/// Relays `src` into the guest's stdin, then closes the guest's stdin (EOF).
pub fn relay_in<R: Read + Send + 'static>(mut src: R, mut dst: UnixStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut src, &mut dst);
        let _ = dst.shutdown(Shutdown::Write);
    })
}
