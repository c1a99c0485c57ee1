//! The host side of a virtio-net device: a tap file descriptor.
//!
//! Taps are made by the privileged husk processes (`create`, `start`) inside the
//! container's network namespace ([`create_tap`]) and handed to the VMM, which only checks
//! the descriptor ([`Tap::from_fd`]), reads and writes frames and tells the kernel which
//! offloads the guest negotiated (`TUNSETOFFLOAD`). Every frame on the descriptor carries
//! a 12-byte `virtio_net_hdr_v1`, the same header the guest's driver uses, so frames pass
//! between the tap and guest memory without translation.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Bytes of `virtio_net_hdr_v1` in front of every frame (with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// `struct ifreq` as far as the tun ioctls use it: a name and a flags word.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> io::Result<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name"),
            ));
        }
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Flags every husk tap has: Ethernet frames, no packet-information prefix, a virtio-net
/// header on each frame.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Creates tap `name` in the calling thread's network namespace and returns its
/// descriptor. The tap is not persistent: it disappears when the last descriptor closes,
/// so a VMM that dies cannot leave it behind. Needs CAP_NET_ADMIN.
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(file);
    let mut req = IfReq::new(name, TAP_FLAGS)?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a properly sized,
    // initialised ifreq that outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_vnet_hdr_len(&fd)?;
    Ok(fd)
}

fn set_vnet_hdr_len(fd: &OwnedFd) -> io::Result<()> {
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `size`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A tap descriptor the VMM reads and writes frames on.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Takes over `fd`, which must be a tap opened with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR` (see [`create_tap`]); sets the header size to [`VNET_HDR_LEN`], turns
    /// every offload off until the guest negotiates them, and makes it non-blocking.
    /// None of this needs privileges.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let mut req = IfReq::new("x", 0)?;
        // SAFETY: TUNGETIFF fills one `struct ifreq`, which `req` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("the descriptor is not an attached tap: {e}"),
            ));
        }
        let flags = libc::c_int::from(req.flags);
        if flags & TAP_FLAGS != TAP_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tap {} lacks IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (flags {flags:#x})",
                    req.name()
                ),
            ));
        }
        set_vnet_hdr_len(&fd)?;
        let tap = Self {
            fd,
            name: req.name(),
        };
        tap.set_offload(0)?;
        set_nonblocking(tap.fd.as_raw_fd())?;
        Ok(tap)
    }

    /// The tap's interface name (in the namespace it was made in).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads the reader takes (`TUN_F_*`): with none, it
    /// completes checksums and segments large packets before they reach the tap.
    pub fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_flags),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the device reads and writes frames on: a [`Tap`], or in unit tests a datagram
/// socket standing in for one (same one-frame-per-call semantics).
pub trait FrameIo: AsRawFd + Send {
    /// Applies the offloads the guest negotiated (`TUN_F_*` flags).
    fn set_offload(&self, tun_flags: u32) -> io::Result<()>;
}

impl FrameIo for Tap {
    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        Tap::set_offload(self, tun_flags)
    }
}

/// Reads one frame (header included) into `buf`; `Ok(None)` when none is waiting.
pub fn read_frame(io: &dyn FrameIo, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::read(io.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Writes one frame gathered from `iov`.
///
/// # Safety
/// Every entry of `iov` must point at memory readable for its length for the whole call
/// (here: guest memory, which stays mapped while the device runs, and a local header).
pub unsafe fn write_frame(io: &dyn FrameIo, iov: &[libc::iovec]) -> io::Result<usize> {
    loop {
        // SAFETY: the caller guarantees the iovecs are readable; the count is the slice's.
        let n = unsafe { libc::writev(io.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_tun() -> bool {
        nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/net/tun").exists()
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(IfReq::new("", 0).is_err());
        assert!(IfReq::new("a-very-long-name-0", 0).is_err());
        assert!(IfReq::new("a\0b", 0).is_err());
        assert_eq!(IfReq::new("husk0", 0).unwrap().name(), "husk0");
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = Tap::from_fd(OwnedFd::from(f)).unwrap_err();
        assert!(e.to_string().contains("not an attached tap"), "{e}");
    }

    #[test]
    fn a_created_tap_takes_offloads_and_passes_frames() {
        assert!(have_tun(), "this test needs root and /dev/net/tun");
        // A namespace of our own so the tap cannot meet anything else.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let tap = Tap::from_fd(create_tap("husktest0").unwrap()).unwrap();
            assert_eq!(tap.name(), "husktest0");
            tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
                .unwrap();
            // Nothing to read on a tap that is down.
            let mut buf = [0u8; 2048];
            assert_eq!(read_frame(&tap, &mut buf).unwrap(), None);
            // A tap that is down refuses frames rather than queueing them.
            let hdr = [0u8; VNET_HDR_LEN];
            let frame = [0xffu8; 60];
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_ptr() as *mut _,
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: frame.as_ptr() as *mut _,
                    iov_len: frame.len(),
                },
            ];
            // SAFETY: both iovecs point at live local arrays.
            assert!(unsafe { write_frame(&tap, &iov) }.is_err());
        })
        .join()
        .unwrap();
    }
}
