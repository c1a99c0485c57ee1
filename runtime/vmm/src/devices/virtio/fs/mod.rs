//! virtio-fs: host directories shared with the guest, served inside the VMM process.
//!
//! One device per VM exports the sandbox's shared directory (Kata's layout: each share is
//! a bind mount in it, see the runtime's share code) under one tag. The FUSE server is
//! fuse-backend-rs (the passthrough file system and the virtio-fs transport, as Dragonball
//! runs it in-process), confined by [`ShareFs`]. Requests are served on a thread of the
//! device's own (`husk-fs`), so a slow file system call never holds up the device thread
//! that serves the disks and vsock; the device thread only wakes it.
//!
//! Everything the server needs from the host is opened when the device is made, at VM
//! build time (the shared directory, `/proc/self/fd`), before the sandbox is jailed. The
//! worker thread is started when the guest's driver first activates the device, by the
//! device thread: it inherits the device thread's confinement (the jail's root, the
//! capabilities the device declared in [`Fs::confinement`], no_new_privs and the device
//! role's seccomp filter with this device's system calls), so no thread of the VMM ever
//! serves the guest unconfined. It unshares its file system context
//! (`unshare(CLONE_FS)`), because the passthrough file system clears the umask so that
//! the guest's modes arrive unchanged, and that must not leak into the rest of the process.
//!
//! Cache mode: `auto` with one-second attribute and entry timeouts and no write-back
//! cache. The guest's writes go through to the host file at once (the host sees them when
//! the write returns); the host's changes reach the guest at its next open of a file
//! (close-to-open, the page cache is dropped when size or mtime changed) and within a
//! second for metadata, directory entries and the data of files it holds open. `never`
//! would make every read a round trip and forbid shared writable mmap; `always` would let
//! the guest keep stale data. `O_DIRECT` bypasses the guest's page cache and is served
//! from the host's.
//!
//! Every request is a round trip, so the guest is asked for as few as the semantics
//! allow: requests of up to 1 MiB (FUSE_INIT, in [`ShareFs`]), no FLUSH at each close
//! (refused once as not implemented, see [`ShareFs`]), and a read-ahead of 1 MiB, which
//! the guest agent sets on the mount.

mod confined;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod request;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use tracing::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, VirtioDevice,
};
pub use confined::ShareFs;
pub use request::handle_chain;

/// Bytes of the tag in the configuration space (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
/// Size of the high-priority queue (FORGET and INTERRUPT requests).
const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Size of the request queue. Linux sizes its largest request from it (a 1 MiB read needs
/// 256 pages + headers without indirect descriptors).
const REQUEST_QUEUE_SIZE: u16 = 1024;
/// How long attributes and directory entries stay valid in the guest (see the module
/// documentation).
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the device exports.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`), 1 to 36 bytes.
    pub tag: String,
    /// The directory exported as the file system's root.
    pub shared_dir: PathBuf,
    /// Top-level entries of `shared_dir` that are containers' own root file systems, where
    /// the guest may create what a container may create in its root (see [`ShareFs`]).
    pub container_roots: Vec<String>,
}

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag cannot be used.
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes without NUL")]
    Tag(String),
    /// The shared directory cannot be served.
    #[error("shared directory {path}: {source}")]
    SharedDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The worker thread could not start.
    #[error("starting the virtio-fs thread: {0}")]
    Thread(std::io::Error),
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

enum Command {
    Activate(Box<Active>),
    /// Drop the queues; the sender hears back once they are gone.
    Reset(Sender<()>),
    Stop,
}

/// A virtio-fs device.
pub struct Fs {
    config: [u8; TAG_LEN + 4],
    acked_features: u64,
    commands: Sender<Command>,
    wake: EventFd,
    /// What the worker takes when it starts (at the first activation).
    pending: Option<(Server<ShareFs>, Receiver<Command>)>,
    worker: Option<JoinHandle<()>>,
}

fn shared_dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::SharedDir {
        path: path.to_owned(),
        source,
    }
}

/// The confined passthrough file system over `config.shared_dir`, behind a FUSE server.
pub fn file_server(config: &FsConfig) -> Result<Server<ShareFs>, FsError> {
    let dir = &config.shared_dir;
    let meta = std::fs::metadata(dir).map_err(shared_dir_error(dir))?;
    if !meta.is_dir() {
        return Err(shared_dir_error(dir)(std::io::Error::from_raw_os_error(
            libc::ENOTDIR,
        )));
    }
    let root = dir.to_str().filter(|s| !s.contains('\0')).ok_or_else(|| {
        shared_dir_error(dir)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path is not UTF-8",
        ))
    })?;
    let cfg = PassthroughConfig {
        root_dir: root.to_owned(),
        cache_policy: CachePolicy::Auto,
        attr_timeout: CACHE_TIMEOUT,
        entry_timeout: CACHE_TIMEOUT,
        writeback: false,
        xattr: true,
        // The root is opened by the worker when the guest mounts (FUSE_INIT), and again
        // after a FUSE_DESTROY: a sandbox that pivots into its jail names the directory
        // relative to the working directory, which is the jail before and after. (Without
        // do_import, fuse-backend-rs assumes a VFS above it and turns on the guest's
        // writeback cache and zero-message opens: the host would not see guest writes
        // while the container runs.)
        do_import: true,
        // Two shares of the same host file are two inodes, each confined to its share.
        enable_mntid: true,
        // O_DIRECT bypasses the guest's page cache and is served from the host's: the
        // host file system may refuse it (tmpfs) and guest buffers need not be aligned.
        allow_direct_io: false,
        ..PassthroughConfig::default()
    };
    let fs = PassthroughFs::new(cfg).map_err(shared_dir_error(dir))?;
    Ok(Server::new(ShareFs::new(fs, &config.container_roots)))
}

/// Gives the calling thread a file system context (cwd, root, umask) of its own, so that
/// the passthrough file system's `umask(0)` stays on this thread.
pub fn isolate_fs_context() -> std::io::Result<()> {
    // SAFETY: unshare takes a flag word; CLONE_FS affects only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The passthrough file system keeps a descriptor for every inode the guest knows (a
/// directory of 10,000 files the guest lists is 10,000 descriptors): take the whole hard
/// limit, as virtiofsd does.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                warn!(
                    "virtio-fs: cannot raise the open file limit to {}",
                    lim.rlim_max
                );
            }
        }
    }
}

impl Fs {
    /// A device exporting `config.shared_dir` as `config.tag`, its root opened now; its
    /// worker thread starts when the guest's driver activates it.
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        let tag = config.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains(&0) {
            return Err(FsError::Tag(config.tag.clone()));
        }
        let server = file_server(config)?;
        raise_open_file_limit();
        let mut space = [0u8; TAG_LEN + 4];
        space[..tag.len()].copy_from_slice(tag);
        // num_request_queues
        space[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let wake = EventFd::new(0).map_err(FsError::Thread)?;
        let (commands, receiver) = mpsc::channel();
        Ok(Self {
            config: space,
            acked_features: 0,
            commands,
            wake,
            pending: Some((server, receiver)),
            worker: None,
        })
    }

    /// Starts the worker thread unless it runs already.
    fn start_worker(&mut self) -> std::io::Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let Some((server, receiver)) = self.pending.take() else {
            return Err(std::io::Error::other("the virtio-fs worker ended"));
        };
        let wake = self.wake.try_clone()?;
        self.worker = Some(
            std::thread::Builder::new()
                .name("husk-fs".into())
                .spawn(move || worker(server, receiver, wake))?,
        );
        Ok(())
    }

    /// What the device needs beyond the device role's confinement (see
    /// [`super::DeviceNeeds`]): the file system calls of the passthrough server, starting
    /// its thread, and the capabilities of a file server that creates files as the guest's
    /// users and keeps their modes (those virtiofsd keeps). The sandbox keeps uid 0 for
    /// it: the server switches its thread's effective ids to the caller's for each
    /// request and back to 0, which a non-root uid could not do without losing them.
    pub fn needs() -> super::DeviceNeeds {
        let mut syscalls = crate::seccomp::Allowlist::new();
        syscalls.allow(&FS_SYSCALLS);
        // Starting the worker thread (clone itself only with CLONE_THREAD).
        syscalls.allow_arg_masked(
            libc::SYS_clone,
            0,
            libc::CLONE_THREAD as u64,
            libc::CLONE_THREAD as u64,
        );
        syscalls.allow_arg_in(
            libc::SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64],
        );
        // The worker's own file system context.
        syscalls.allow_arg_in(libc::SYS_unshare, 0, &[libc::CLONE_FS as u64]);
        // FS_IOC_GETFLAGS / FS_IOC_SETFLAGS / FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR, which
        // the server forwards for the guest's `ioctl`s on its files.
        syscalls.allow_arg_in(
            libc::SYS_ioctl,
            1,
            &[0x8008_6601, 0x4008_6602, 0x801c_581f, 0x401c_5820],
        );
        super::DeviceNeeds {
            syscalls,
            capabilities: vec![
                CAP_CHOWN,
                CAP_DAC_OVERRIDE,
                // fuse-backend-rs makes hard links with linkat(fd, "", AT_EMPTY_PATH),
                // which Linux before 6.10 allows only with it. Its other use, opening files
                // by handle (open_by_handle_at), is not in the allowlist above.
                CAP_DAC_READ_SEARCH,
                CAP_FOWNER,
                CAP_FSETID,
                CAP_SETGID,
                CAP_SETUID,
            ],
            keeps_root_uid: true,
        }
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

const CAP_CHOWN: u8 = 0;
const CAP_DAC_OVERRIDE: u8 = 1;
const CAP_DAC_READ_SEARCH: u8 = 2;
const CAP_FOWNER: u8 = 3;
const CAP_FSETID: u8 = 4;
const CAP_SETGID: u8 = 6;
const CAP_SETUID: u8 = 7;

/// The system calls the passthrough server makes on the worker thread, with any
/// arguments: the file operations FUSE maps to (an strace of the host-tier tests lists
/// most), the per-request switch to the caller's ids, and starting the thread.
const FS_SYSCALLS: [libc::c_long; 68] = [
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_fcntl,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_copy_file_range,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_umask,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_flistxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
];

impl Drop for Fs {
    fn drop(&mut self) {
        self.send(Command::Stop);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker(server: Server<ShareFs>, commands: Receiver<Command>, wake: EventFd) {
    if let Err(e) = isolate_fs_context() {
        // Serving without it would clear the whole process's umask.
        error!("virtio-fs: cannot unshare the file system context, not serving: {e}");
        return;
    }
    let mut active: Option<Box<Active>> = None;
    loop {
        let _ = wake.read();
        loop {
            match commands.try_recv() {
                Ok(Command::Activate(a)) => active = Some(a),
                Ok(Command::Reset(done)) => {
                    active = None;
                    let _ = done.send(());
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if let Some(a) = active.as_mut() {
            for index in 0..a.queues.len() {
                serve_queue(&server, a, index);
            }
        }
    }
}

/// Serves every request waiting on queue `index`.
fn serve_queue(server: &Server<ShareFs>, active: &mut Active, index: usize) {
    let Active {
        mem,
        queues,
        interrupt,
    } = active;
    let queue = &mut queues[index];
    let mut used_any = false;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            warn!("virtio-fs: queue {index} unusable: {e}");
            return;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle_chain(server, mem, chain)
            }))
            .unwrap_or_else(|_| {
                error!("virtio-fs: the file server panicked on a request");
                0
            });
            if let Err(e) = queue.add_used(&*mem, head, written) {
                warn!("virtio-fs: cannot return descriptor {head}: {e}");
                return;
            }
            popped = true;
            used_any = true;
        }
        // As in virtio-blk: look again only after progress, so that a bogus avail index
        // cannot spin this thread.
        match queue.enable_notification(&*mem) {
            Ok(true) if popped => continue,
            Ok(_) => break,
            Err(e) => {
                warn!("virtio-fs: queue {index} unusable: {e}");
                return;
            }
        }
    }
    if used_any && queue.needs_notification(&*mem).unwrap_or(true) {
        if let Err(e) = interrupt.signal_used_queue() {
            warn!("virtio-fs: cannot signal the guest: {e}");
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if let Some(i) = ctx.queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        if let Err(e) = self.start_worker() {
            error!("virtio-fs: cannot start the worker thread: {e}");
            return Err(ActivateError::Backend(e));
        }
        self.send(Command::Activate(Box::new(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            interrupt: ctx.interrupt,
        })));
        Ok(())
    }

    fn queue_notify(&mut self, _queue: usize) {
        let _ = self.wake.write(1);
    }

    fn confinement(&self) -> super::DeviceNeeds {
        Self::needs()
    }

    fn reset(&mut self) {
        if self.worker.is_none() {
            self.acked_features = 0;
            return;
        }
        let (done, wait) = mpsc::channel();
        self.send(Command::Reset(done));
        // The worker finishes the request it is on first.
        let _ = wait.recv();
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;
