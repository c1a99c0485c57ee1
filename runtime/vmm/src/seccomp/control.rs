//! The control role's allowlist: a sandbox's main thread and the threads it starts (the
//! control socket server and its connections, the agent connection's reader, stdio
//! relays, the signal thread, exec watchers) and the VM's halt watchdog.
//!
//! They talk over unix sockets only (the agent through the VM's vsock socket, commands
//! through the control socket), start threads (never processes: `clone` is allowed only
//! with CLONE_THREAD), kick vCPU threads of this process with the kick signal, wait on
//! exec clients through pidfds, and remove the sockets they created.

use super::{base, Allowlist};

/// The control role's allowlist for the process `pid`, whose vCPUs are kicked with
/// `kick_signal`.
pub fn allowlist(pid: libc::pid_t, kick_signal: libc::c_int) -> Allowlist {
    let mut l = base();
    l.allow(&[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_shutdown,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        libc::SYS_getsockname,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fstat,
        libc::SYS_lseek,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_pidfd_open,
        libc::SYS_eventfd2,
        // std::io::copy between descriptors (stdin into a stream) uses these.
        libc::SYS_splice,
        libc::SYS_sendfile,
        libc::SYS_copy_file_range,
        // A console-socket pty becomes the controlling terminal (TIOCSCTTY below).
        libc::SYS_setsid,
        // Starting threads (clone itself is checked below).
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
    ]);
    l.allow_arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    l.allow_arg_masked(
        libc::SYS_clone,
        0,
        libc::CLONE_THREAD as u64,
        libc::CLONE_THREAD as u64,
    );
    l.allow_arg_in(
        libc::SYS_prctl,
        0,
        &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64],
    );
    // Kicking this process's vCPU threads; SIGABRT so that an abort is reported as one.
    for sig in [kick_signal, libc::SIGABRT] {
        l.allow_args_eq(libc::SYS_tgkill, &[(0, pid as u64), (2, sig as u64)]);
    }
    l.allow_arg_in(
        libc::SYS_ioctl,
        1,
        &[
            libc::FIONBIO,
            libc::TIOCGWINSZ,
            libc::TCGETS,
            libc::TCSETS,
            libc::TCSETSW,
            libc::TCSETSF,
            libc::TIOCSCTTY,
        ],
    );
    l
}
