//! Pseudo-terminals: allocating one, relaying its master to the host's terminal stream,
//! and window sizes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use anyhow::Context;
use husk_protocol::{StreamHello, StreamKind};

use crate::transport::{Conn, Transport};

/// Both ends of a new pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    /// The side the agent relays.
    pub master: OwnedFd,
    /// The process's terminal.
    pub slave: OwnedFd,
    /// Where the slave is, in the devpts instance that `/dev/ptmx` belongs to.
    pub slave_path: PathBuf,
}

/// Allocates a pseudo-terminal from `/dev/ptmx` (in a container: its own devpts).
pub fn open_pty() -> io::Result<Pty> {
    let master: OwnedFd = File::options()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut index: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int to a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // Opened through the master rather than by path, so it is this pty's slave whatever
    // is mounted where.
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pty {
        master,
        // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
        slave: unsafe { OwnedFd::from_raw_fd(slave) },
        slave_path: PathBuf::from(format!("/dev/pts/{index}")),
    })
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY)
    }
}

/// Sets the window size of the terminal behind `fd`.
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

type Masters = Arc<Mutex<HashMap<String, Arc<OwnedFd>>>>;

/// The masters of live terminals, by exec id, for `Resize`.
#[derive(Debug, Default)]
pub struct Terminals {
    masters: Masters,
}

impl Terminals {
    /// Connects `master` to a terminal stream on host port `port` and relays both ways
    /// until the process side closes (all slave descriptors gone).
    pub fn attach(
        &self,
        exec_id: &str,
        master: OwnedFd,
        transport: &Transport,
        port: u32,
    ) -> anyhow::Result<()> {
        let mut conn = transport.connect_stdio(port).context("terminal stream")?;
        husk_protocol::write_frame(
            &mut conn,
            &StreamHello {
                exec_id: exec_id.to_owned(),
                stream: StreamKind::Terminal,
            },
        )
        .context("send the hello of the terminal stream")?;
        let input_conn = conn.try_clone().context("duplicate the terminal stream")?;
        let master = Arc::new(master);
        self.lock().insert(exec_id.to_owned(), Arc::clone(&master));

        let input_master = Arc::clone(&master);
        thread::Builder::new()
            .name("tty-in".into())
            .spawn(move || relay_input(input_conn, &input_master))
            .context("start the terminal input relay")?;
        let masters = Arc::clone(&self.masters);
        let id = exec_id.to_owned();
        thread::Builder::new()
            .name("tty-out".into())
            .spawn(move || {
                relay_output(&master, conn);
                let mut masters = masters.lock().unwrap_or_else(PoisonError::into_inner);
                if masters.get(&id).is_some_and(|m| Arc::ptr_eq(m, &master)) {
                    masters.remove(&id);
                }
            })
            .context("start the terminal output relay")?;
        Ok(())
    }

    /// Sets the window size of the terminal of `exec_id`.
    pub fn resize(&self, exec_id: &str, rows: u16, cols: u16) -> anyhow::Result<()> {
        let master = self
            .lock()
            .get(exec_id)
            .cloned()
            .with_context(|| format!("exec {exec_id:?} has no terminal (or it has ended)"))?;
        set_window_size(master.as_raw_fd(), rows, cols)
            .with_context(|| format!("resize the terminal of {exec_id:?}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OwnedFd>>> {
        self.masters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Host keystrokes to the terminal. The host closing its side ends only this direction:
/// closing the master would hang up the process.
fn relay_input(mut conn: Conn, master: &OwnedFd) {
    let mut buf = [0u8; 8192];
    let Ok(dup) = master.try_clone() else {
        return;
    };
    let mut out = File::from(dup);
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if out.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Terminal output to the host until the last slave descriptor is closed (EIO).
fn relay_output(master: &OwnedFd, mut conn: Conn) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: reads into a live stack buffer of the given length.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        if conn.write_all(&buf[..n as usize]).is_err() {
            break;
        }
    }
    // The host sees the end of the output, and the input relay's read returns.
    conn.shutdown();
}
