//! The file system the virtio-fs device serves: fuse-backend-rs's passthrough file system
//! over the sandbox's shared directory, behind a layer that keeps a hostile guest inside it.
//!
//! The passthrough file system already resolves every name one component at a time
//! relative to a directory it holds (`O_PATH`, `O_NOFOLLOW`), never follows a symlink on the
//! host, refuses names with a `/`, and opens only regular files and directories. What it
//! still allows, and this layer refuses:
//!
//! - `.` and `..` as names. The guest's kernel never looks them up (virtio-fs has no NFS
//!   export), but a hostile driver can, and `..` from a directory that something on the
//!   host moved out of a share (another container sharing a parent directory, say) would
//!   walk out of the share. `readdirplus` looks every entry up, dots included: their inodes
//!   are dropped again before the guest sees them.
//! - In a volume, anything that would plant a privilege on the host: character and block
//!   devices (also a rename's whiteout, which is one), setuid files, setgid files,
//!   `security.capability` xattrs. The guest's root is root only in the guest. The
//!   exception are the shares named as container roots (the bundle's rootfs, which the
//!   guest writes the container's changes back to at exit): there the guest may do what
//!   runc lets a container do to its own root.
//! - `trusted.*` xattrs anywhere: they configure host file systems (overlayfs keeps its
//!   whiteouts and redirects there).
//! - Open flags beyond access mode and file status (`O_PATH`, `O_TMPFILE`, `O_CREAT`, ...),
//!   and changes of a handle's flags after it was opened. `O_DIRECT` is the guest's: it
//!   bypasses the guest's page cache, and the host serves the request from its own (a
//!   host file system that refuses `O_DIRECT`, tmpfs before Linux 6.6, then serves it too,
//!   and guest buffers need no host alignment). The passthrough file system
//!   applies the flags of each READ and WRITE with `fcntl(F_SETFL)`, and when that fails
//!   (an `O_DIRECT` the host file system refuses, say) 0.14 closes the handle's descriptor
//!   while the handle still owns it: the number is reused and later closed again, so a
//!   guest could make the server act on a descriptor that is not the one it thinks. Each
//!   handle keeps the flags it was opened with.
//! - Sizes the passthrough file system allocates by: a GETXATTR, LISTXATTR, READDIR or
//!   READDIRPLUS asks for up to 4 GiB and 0.14 reserves that much before the system call
//!   says how much there is (found by the fuzzer). Xattrs and xattr lists never exceed
//!   64 KiB, and a directory read fills at most the 1 MiB a FUSE request carries.
//!
//! Read-only shares are enforced below this layer, by the host kernel: each share is a
//! bind mount, read-only ones mounted `MS_RDONLY`, and every one `nosuid` and `nodev`.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::passthrough::PassthroughFs;

type Inode = u64;
type Handle = u64;

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// A mode a volume may not be given: setuid, or setgid on anything but a directory (where
/// it only makes new files inherit the group).
fn privileged_mode(mode: u32) -> bool {
    let dir = mode & libc::S_IFMT == libc::S_IFDIR;
    mode & libc::S_ISUID != 0 || (!dir && mode & libc::S_ISGID != 0)
}

/// An xattr name this layer never lets the guest set or remove, and whether only volumes
/// refuse it (container roots may carry file capabilities, as images do).
fn guarded_xattr(name: &[u8]) -> Option<bool> {
    if name.starts_with(b"trusted.") {
        Some(false)
    } else if name == b"security.capability" {
        Some(true)
    } else {
        None
    }
}

/// The largest xattr value and xattr name list Linux has (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: u32 = 64 * 1024;
/// The most a directory read returns (a FUSE request's 1 MiB buffer).
const DIR_READ_MAX: u32 = 1 << 20;
/// The largest host directory entry: a linux_dirent64 with a 255-byte name, 8-aligned.
const HOST_DIRENT_MAX: u32 = 280;

/// How much of a host directory to read for a reply of at most `size` bytes.
///
/// A host entry (linux_dirent64: 19 bytes, the name and its NUL, 8-aligned) is smaller
/// than the FUSE entry it becomes (fuse_dirent: 24 bytes and the name, 8-aligned: up to
/// 4/3 of it; readdirplus puts a 128-byte fuse_entry_out before each: up to 20/3). The
/// passthrough server reads the host directory into a buffer of the size it is given and
/// drops the entries that do not fit the reply, so the next read seeks back to the last
/// entry sent; where directory offsets are positions (tmpfs before Linux 6.6) that seek
/// lands past entries once some were removed, and `rm -rf` of a large directory in a
/// volume failed with ENOTEMPTY. So no more is read than fits, and at least one entry.
fn host_dir_read(size: u32, plus: bool) -> u32 {
    let size = size.min(DIR_READ_MAX);
    let fits = if plus { size / 7 } else { size / 4 * 3 };
    fits.max(HOST_DIRENT_MAX.min(size))
}

/// Open flags a guest may ask for: access mode and file status flags.
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_LARGEFILE
    | libc::O_NOATIME
    | libc::O_TRUNC
    | libc::O_DIRECTORY
    | libc::O_CLOEXEC;

fn open_flags(flags: u32) -> u32 {
    // O_TMPFILE includes the O_DIRECTORY bit: a request carrying it is not an opendir.
    let flags = flags as i32;
    let flags = if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        flags & !libc::O_TMPFILE
    } else {
        flags
    };
    (flags & OPEN_FLAGS) as u32
}

/// The passthrough file system, confined (see the module documentation).
pub struct ShareFs {
    inner: PassthroughFs,
    /// Top-level names under the root that are container roots (and, with a `-suffix`,
    /// the roots of containers added later).
    container_roots: HashSet<Vec<u8>>,
    /// Inodes inside a container root. An inode missing here is treated as a volume's,
    /// so whatever this layer does not know about gets the stricter rules.
    in_container_root: RwLock<HashSet<Inode>>,
    /// The flags each open handle was opened with.
    handles: Mutex<HashMap<Handle, u32>>,
}

impl ShareFs {
    /// Confines `inner`; `container_roots` are the top-level names treated as containers'
    /// own roots.
    pub fn new(inner: PassthroughFs, container_roots: &[String]) -> Self {
        Self {
            inner,
            container_roots: container_roots
                .iter()
                .map(|n| n.as_bytes().to_vec())
                .collect(),
            in_container_root: RwLock::new(HashSet::new()),
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<Handle, u32>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opened(&self, handle: Option<Handle>, flags: u32) {
        if let Some(h) = handle {
            self.handles().insert(h, flags);
        }
    }

    /// The flags `handle` was opened with.
    fn flags_of(&self, handle: Handle) -> io::Result<u32> {
        self.handles()
            .get(&handle)
            .copied()
            .ok_or_else(|| err(libc::EBADF))
    }

    /// Whether a top-level `name` is a container root: one of the names given, or one of
    /// them followed by `-` and anything (the roots of a pod's later containers,
    /// `rootfs-<n>`, shared while the VM runs).
    fn is_container_root(&self, name: &[u8]) -> bool {
        self.container_roots.contains(name)
            || self
                .container_roots
                .iter()
                .any(|r| name.len() > r.len() + 1 && name.starts_with(r) && name[r.len()] == b'-')
    }

    fn relaxed(&self, inode: Inode) -> bool {
        self.in_container_root
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&inode)
    }

    /// Records that `child`, found or made in `parent` under `name`, belongs where its
    /// parent does.
    fn adopt(&self, parent: Inode, name: &[u8], child: Inode) {
        let relaxed = if parent == ROOT_ID {
            self.is_container_root(name)
        } else {
            self.relaxed(parent)
        };
        if relaxed {
            self.in_container_root
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(child);
        }
    }

    fn check_name(name: &CStr) -> io::Result<()> {
        if is_dot(name.to_bytes()) {
            Err(err(libc::EINVAL))
        } else {
            Ok(())
        }
    }

    /// Refuses `mode` for a new or changed node under `parent` (or being `inode`) when
    /// the volume rules apply.
    fn check_mode(&self, node: Inode, mode: u32) -> io::Result<()> {
        if self.relaxed(node) {
            return Ok(());
        }
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK || privileged_mode(mode) {
            return Err(err(libc::EPERM));
        }
        Ok(())
    }

    fn check_xattr(&self, inode: Inode, name: &CStr) -> io::Result<()> {
        match guarded_xattr(name.to_bytes()) {
            Some(true) if self.relaxed(inode) => Ok(()),
            Some(_) => Err(err(libc::EPERM)),
            None => Ok(()),
        }
    }
}

impl FileSystem for ShareFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // The passthrough file system asks only for what is its own (readdirplus): the
        // transport's options are the layer above's to ask for (fuse-backend-rs's VFS
        // does). Without them the guest wrote in 4 KiB requests, one at a time: 32 MiB
        // took 14 s in the test host. Not ATOMIC_O_TRUNC: open flags are reduced to access
        // and status flags here, so the guest must truncate by SETATTR.
        let transport = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS;
        Ok(self.inner.init(capable)? | (capable & transport))
    }

    fn destroy(&self) {
        self.inner.destroy();
        self.handles().clear();
        self.in_container_root
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        Self::check_name(name)?;
        let entry = self.inner.lookup(ctx, parent, name)?;
        self.adopt(parent, name.to_bytes(), entry.inode);
        Ok(entry)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if valid.contains(SetattrValid::MODE) && !self.relaxed(inode) {
            // The guest sends permission bits only; the type comes from the file.
            let (st, _) = self.inner.getattr(ctx, inode, handle)?;
            let mode = (st.st_mode & libc::S_IFMT) | (attr.st_mode & !libc::S_IFMT);
            if privileged_mode(mode) {
                return Err(err(libc::EPERM));
            }
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        Self::check_name(name)?;
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        self.adopt(parent, name.to_bytes(), entry.inode);
        Ok(entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        Self::check_name(name)?;
        self.check_mode(parent, mode)?;
        let entry = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
        self.adopt(parent, name.to_bytes(), entry.inode);
        Ok(entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        Self::check_name(name)?;
        self.check_mode(parent, libc::S_IFDIR | (mode & !libc::S_IFMT))?;
        let entry = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.adopt(parent, name.to_bytes(), entry.inode);
        Ok(entry)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        Self::check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        Self::check_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        Self::check_name(oldname)?;
        Self::check_name(newname)?;
        // A whiteout is a character device; nothing in a guest needs one on the host.
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(err(libc::EPERM));
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        Self::check_name(newname)?;
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.adopt(newparent, newname.to_bytes(), entry.inode);
        Ok(entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let flags = open_flags(flags) & !(libc::O_DIRECTORY as u32);
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.opened(opened.0, flags);
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        Self::check_name(name)?;
        self.check_mode(parent, libc::S_IFREG | (args.mode & !libc::S_IFMT))?;
        let flags = open_flags(args.flags) & !(libc::O_DIRECTORY as u32);
        let args = CreateIn { flags, ..args };
        let created = self.inner.create(ctx, parent, name, args)?;
        self.adopt(parent, name.to_bytes(), created.0.inode);
        self.opened(created.1, flags);
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.flags_of(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.flags_of(handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    /// FLUSH is refused as not implemented, which the guest's kernel takes as success and
    /// as word never to send another (FUSE's `no_flush`): the guest's every `close` was a
    /// round trip that waited for the server to `close(dup(fd))`. That close releases the
    /// POSIX locks the server's descriptor holds (none: locks are the guest kernel's, FUSE
    /// POSIX_LOCKS is not asked for) and reports a close error of a host file system that
    /// defers errors to close (writes here go through to the host at once, and their
    /// errors, as fsync's, reach the guest's write and fsync). RELEASE closes the
    /// descriptor.
    fn flush(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _handle: Handle,
        _lock_owner: u64,
    ) -> io::Result<()> {
        Err(err(libc::ENOSYS))
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.handles().remove(&handle);
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_xattr(inode, name)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.check_xattr(inode, name)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        let flags = open_flags(flags);
        let opened = self.inner.opendir(ctx, inode, flags)?;
        // The passthrough file system records opendir handles with O_DIRECTORY added.
        self.opened(opened.0, flags | libc::O_DIRECTORY as u32);
        Ok(opened)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(
            ctx,
            inode,
            handle,
            host_dir_read(size, false),
            offset,
            add_entry,
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdirplus(
            ctx,
            inode,
            handle,
            host_dir_read(size, true),
            offset,
            &mut |dirent, mut entry| {
                if is_dot(dirent.name) {
                    // The kernel ignores the entry part of `.` and `..`; the inode the
                    // lookup made must not outlive this call.
                    self.inner.forget(ctx, entry.inode, 1);
                    entry = Entry {
                        inode: 0,
                        generation: 0,
                        // SAFETY: stat64 is plain integers; all zeroes is a valid value.
                        attr: unsafe { std::mem::zeroed() },
                        attr_flags: 0,
                        attr_timeout: Duration::ZERO,
                        entry_timeout: Duration::ZERO,
                    };
                } else {
                    self.adopt(inode, dirent.name, entry.inode);
                }
                add_entry(dirent, entry)
            },
        )
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.handles().remove(&handle);
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_and_setgid_files_are_privileged_setgid_directories_are_not() {
        assert!(privileged_mode(libc::S_IFREG | 0o4755));
        assert!(privileged_mode(libc::S_IFREG | 0o2755));
        assert!(!privileged_mode(libc::S_IFDIR | 0o2775));
        assert!(privileged_mode(libc::S_IFDIR | 0o4775));
        assert!(!privileged_mode(libc::S_IFREG | 0o1777));
    }

    #[test]
    fn open_flags_keep_access_and_status_only() {
        let f = |v: i32| open_flags(v as u32) as i32;
        assert_eq!(
            f(libc::O_RDWR | libc::O_APPEND),
            libc::O_RDWR | libc::O_APPEND
        );
        assert_eq!(f(libc::O_RDONLY | libc::O_PATH), libc::O_RDONLY);
        assert_eq!(f(libc::O_RDWR | libc::O_TMPFILE), libc::O_RDWR);
        assert_eq!(
            f(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
            libc::O_WRONLY
        );
        assert_eq!(f(libc::O_RDONLY | libc::O_DIRECTORY), libc::O_DIRECTORY);
    }

    #[test]
    fn trusted_xattrs_are_always_refused_file_capabilities_only_in_volumes() {
        assert_eq!(guarded_xattr(b"trusted.overlay.opaque"), Some(false));
        assert_eq!(guarded_xattr(b"security.capability"), Some(true));
        assert_eq!(guarded_xattr(b"user.x"), None);
        assert_eq!(guarded_xattr(b"security.selinux"), None);
    }
}
