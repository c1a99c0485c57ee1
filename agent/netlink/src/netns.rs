//! Network namespaces: opening one by path (checked to be one), and running work on a
//! thread inside one. Only the thread that calls `setns` changes namespace, so the
//! calling process stays where it is.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// `NS_GET_NSTYPE` (linux/nsfs.h): `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether `fd` refers to a network namespace.
pub fn is_network_namespace(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the descriptor.
    let t = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    t == libc::CLONE_NEWNET
}

/// Opens the network namespace at `path` (a bind mount such as `/run/netns/x`, or
/// `/proc/PID/ns/net`), with a clear error when there is none or it is something else.
pub fn open_netns(path: &Path) -> io::Result<OwnedFd> {
    let file = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    let fd = OwnedFd::from(file);
    if !is_network_namespace(fd.as_fd()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a network namespace", path.display()),
        ));
    }
    Ok(fd)
}

/// Runs `f` on a new thread that has joined the network namespace `ns`, and returns
/// its result. Needs CAP_SYS_ADMIN.
pub fn in_netns<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let raw = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns takes a descriptor and a flag; `ns` outlives the scope.
            if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the thread working in the network namespace panicked"))?
    })
}
