//! The device thread's allowlist: the epoll loop, the block device's file, and the vsock
//! device's unix sockets (accepting host connections, connecting guest ones to
//! `<uds>_<port>`). A device whose backend needs more adds it through
//! [`crate::devices::virtio::DeviceNeeds::syscalls`].

use super::{base, Allowlist};

/// The device role's allowlist, before what the devices of a VM add.
pub fn allowlist() -> Allowlist {
    let mut l = base();
    l.allow(&[
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_timerfd_settime,
        libc::SYS_fcntl,
    ]);
    l.allow_arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    l.allow_arg_in(libc::SYS_ioctl, 1, &[libc::FIONBIO]);
    l
}
