//! virtio-fs driven through guest memory: ordinary use, a hostile driver, escape attempts
//! at the FUSE level, the device and its worker thread, and a smoke run of the fuzz target.

use std::fs;
use std::mem::size_of;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, FallocateIn, ForgetIn, GetxattrIn, InHeader, LinkIn, MkdirIn, MknodIn,
    Opcode, OpenIn, OpenOut, ReadIn, Rename2In, SetattrIn, SetxattrIn, WriteIn, WriteOut,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use super::fuzzing::{self, bytes, cstr, message, message_as, Harness, Reply, OUT_ADDR, REQ_ADDR};
use super::*;
use crate::devices::virtio::{EventRegistrar, Interrupt};

const FATTR_MODE: u32 = 1;
const FATTR_SIZE: u32 = 1 << 3;

/// The guest's side of a session: helpers that send one request each.
struct Guest(Harness);

/// An entry of a READDIR or READDIRPLUS reply.
struct Dirent {
    /// READDIRPLUS's fuse_entry_out.
    entry: Option<EntryOut>,
    /// Where the next read goes on from.
    off: u64,
    name: String,
}

/// The entries of a READDIR reply body (`plus` false) or a READDIRPLUS one: each a struct
/// fuse_dirent (ino u64, off u64, namelen u32, type u32, the name padded to 8), after a
/// fuse_entry_out for READDIRPLUS.
fn dirents(body: &[u8], plus: bool) -> Vec<Dirent> {
    let skip = if plus { size_of::<EntryOut>() } else { 0 };
    let mut at = 0;
    let mut all = Vec::new();
    while at + skip + 24 <= body.len() {
        let entry = plus.then(|| *EntryOut::from_slice(&body[at..at + skip]).unwrap());
        let d = at + skip;
        let len = u32::from_le_bytes(body[d + 16..d + 20].try_into().unwrap()) as usize;
        all.push(Dirent {
            entry,
            off: u64::from_le_bytes(body[d + 8..d + 16].try_into().unwrap()),
            name: String::from_utf8_lossy(&body[d + 24..d + 24 + len]).into_owned(),
        });
        at = d + ((24 + len + 7) & !7);
    }
    all
}

impl Guest {
    fn new() -> Self {
        Self(Harness::new())
    }

    fn call(&self, op: Opcode, node: u64, parts: &[&[u8]]) -> Reply {
        self.0.call(&message(op, node, parts), 1 << 16)
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let r = self.call(Opcode::Lookup, parent, &[&cstr(name)]);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.obj())
    }

    /// OPENDIR of `node`: its handle.
    fn opendir(&self, node: u64) -> u64 {
        self.call(Opcode::Opendir, node, &[&bytes(&OpenIn::default())])
            .obj::<OpenOut>()
            .fh
    }

    /// RELEASE of handle `fh` of `node`: the reply's error (0 or a negative errno).
    fn release(&self, node: u64, fh: u64) -> i32 {
        let args = fuse_backend_rs::abi::fuse_abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Release, node, &[&bytes(&args)]).error
    }

    fn node(&self, path: &str) -> u64 {
        path.split('/').fold(1, |parent, name| {
            self.lookup(parent, name)
                .unwrap_or_else(|e| panic!("lookup {name} in {path}: errno {e}"))
                .nodeid
        })
    }

    fn create(&self, parent: u64, name: &str, mode: u32) -> Result<(u64, u64), i32> {
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            fuse_flags: 0,
        };
        let r = self.call(Opcode::Create, parent, &[&bytes(&args), &cstr(name)]);
        if r.error != 0 {
            return Err(-r.error);
        }
        let entry: EntryOut = r.obj();
        let open = OpenOut::from_slice(&r.body[size_of::<EntryOut>()..][..size_of::<OpenOut>()])
            .copied()
            .unwrap();
        Ok((entry.nodeid, open.fh))
    }

    fn open(&self, node: u64, flags: i32) -> Result<u64, i32> {
        let r = self.call(
            Opcode::Open,
            node,
            &[&bytes(&OpenIn {
                flags: flags as u32,
                fuse_flags: 0,
            })],
        );
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.obj::<OpenOut>().fh)
    }

    fn write(&self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let args = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let r = self.call(Opcode::Write, node, &[&bytes(&args), data]);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.obj::<WriteOut>().size)
    }

    fn read(&self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let args = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let r = self.call(Opcode::Read, node, &[&bytes(&args)]);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.body)
    }

    fn chmod(&self, node: u64, mode: u32) -> i32 {
        let args = SetattrIn {
            valid: FATTR_MODE,
            mode,
            ..Default::default()
        };
        -self.call(Opcode::Setattr, node, &[&bytes(&args)]).error
    }

    fn setxattr(&self, node: u64, name: &str, value: &[u8]) -> i32 {
        let args = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        -self
            .call(Opcode::Setxattr, node, &[&bytes(&args), &cstr(name), value])
            .error
    }

    fn mknod(&self, parent: u64, name: &str, mode: u32, rdev: u32) -> i32 {
        let args = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        -self
            .call(Opcode::Mknod, parent, &[&bytes(&args), &cstr(name)])
            .error
    }

    fn rename(&self, olddir: u64, old: &str, newdir: u64, new: &str, flags: u32) -> i32 {
        let args = Rename2In {
            newdir,
            flags,
            padding: 0,
        };
        -self
            .call(
                Opcode::Rename2,
                olddir,
                &[&bytes(&args), &cstr(old), &cstr(new)],
            )
            .error
    }
}

// ------------------------------------------------------------------ ordinary use

#[test]
fn guest_writes_reach_the_host_file_at_once_and_host_writes_the_guest() {
    let g = Guest::new();
    let vol = g.node("vol");
    let (node, fh) = g.create(vol, "notes", 0o640).unwrap();
    assert_eq!(g.write(node, fh, 0, b"from the guest").unwrap(), 14);
    let host = g.0.path("shared/vol/notes");
    assert_eq!(fs::read(&host).unwrap(), b"from the guest");
    assert_eq!(
        fs::metadata(&host).unwrap().permissions().mode() & 0o7777,
        0o640,
        "the guest's mode arrives unchanged"
    );
    fs::write(&host, b"from the host, longer").unwrap();
    assert_eq!(g.read(node, fh, 0, 4096).unwrap(), b"from the host, longer");
    g.0.check();
}

#[test]
fn flush_is_not_implemented_so_a_close_costs_no_round_trip() {
    let g = Guest::new();
    let vol = g.node("vol");
    let (node, fh) = g.create(vol, "closed", 0o644).unwrap();
    assert_eq!(g.write(node, fh, 0, b"kept").unwrap(), 4);
    let flush = fuse_backend_rs::abi::fuse_abi::FlushIn {
        fh,
        ..Default::default()
    };
    assert_eq!(
        -g.call(Opcode::Flush, node, &[&bytes(&flush)]).error,
        libc::ENOSYS,
        "ENOSYS tells the guest's kernel never to send FLUSH again"
    );
    // The handle is untouched: it still reads and writes until RELEASE.
    assert_eq!(g.write(node, fh, 4, b" open").unwrap(), 5);
    assert_eq!(g.read(node, fh, 0, 64).unwrap(), b"kept open");
    assert_eq!(g.release(node, fh), 0);
    assert_eq!(
        fs::read(g.0.path("shared/vol/closed")).unwrap(),
        b"kept open"
    );
    g.0.check();
}

#[test]
fn offsets_past_4_gib_and_large_writes_work() {
    let g = Guest::new();
    let vol = g.node("vol");
    let (node, fh) = g.create(vol, "big", 0o644).unwrap();
    let chunk = vec![0x5au8; 60 * 1024];
    let at = (5u64 << 30) + 3;
    assert_eq!(g.write(node, fh, at, &chunk).unwrap(), chunk.len() as u32);
    assert_eq!(g.read(node, fh, at, 60 * 1024).unwrap(), chunk);
    let len = fs::metadata(g.0.path("shared/vol/big")).unwrap().len();
    assert_eq!(len, at + chunk.len() as u64);
    g.0.check();
}

#[test]
fn directories_symlinks_hard_links_renames_and_xattrs() {
    let g = Guest::new();
    let vol = g.node("vol");
    let args = MkdirIn {
        mode: 0o750,
        umask: 0,
    };
    let dir: EntryOut = g
        .call(Opcode::Mkdir, vol, &[&bytes(&args), &cstr("d")])
        .obj();
    let r = g.call(
        Opcode::Symlink,
        dir.nodeid,
        &[&cstr("ln"), &cstr("/etc/passwd")],
    );
    assert_eq!(r.error, 0);
    let ln: EntryOut = r.obj();
    let target = g.call(Opcode::Readlink, ln.nodeid, &[]);
    assert_eq!(
        target.body, b"/etc/passwd",
        "stored verbatim, never followed"
    );
    let (file, _) = g.create(dir.nodeid, "f", 0o644).unwrap();
    let r = g.call(
        Opcode::Link,
        dir.nodeid,
        &[&bytes(&LinkIn { oldnodeid: file }), &cstr("hard")],
    );
    assert_eq!(r.error, 0);
    assert_eq!(r.obj::<EntryOut>().attr.nlink, 2);
    assert_eq!(g.rename(dir.nodeid, "f", vol, "moved", 0), 0);
    assert!(g.0.path("shared/vol/moved").exists());
    assert_eq!(g.setxattr(file, "user.colour", b"blue"), 0);
    let r = g.call(
        Opcode::Getxattr,
        file,
        &[
            &bytes(&GetxattrIn {
                size: 64,
                padding: 0,
            }),
            &cstr("user.colour"),
        ],
    );
    assert_eq!((r.error, r.body.as_slice()), (0, &b"blue"[..]));
    assert_eq!(
        fs::metadata(g.0.path("shared/vol/d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    g.0.check();
}

#[test]
fn a_directory_of_ten_thousand_entries_lists_completely() {
    let g = Guest::new();
    let host = g.0.path("shared/vol/many");
    fs::create_dir(&host).unwrap();
    for i in 0..10_000 {
        fs::File::create(host.join(format!("f{i:05}"))).unwrap();
    }
    let dir = g.node("vol/many");
    let fh = g.opendir(dir);
    let mut names = std::collections::HashSet::new();
    let mut offset = 0u64;
    loop {
        let args = ReadIn {
            fh,
            offset,
            size: 32 * 1024,
            ..Default::default()
        };
        let r = g.call(Opcode::Readdir, dir, &[&bytes(&args)]);
        assert_eq!(r.error, 0);
        if r.body.is_empty() {
            break;
        }
        for d in dirents(&r.body, false) {
            offset = d.off;
            names.insert(d.name);
        }
    }
    names.remove(".");
    names.remove("..");
    assert_eq!(names.len(), 10_000);
    fs::remove_dir_all(&host).unwrap();
    g.0.check();
}

// ------------------------------------------------------------------ escape attempts

#[test]
fn dot_and_dot_dot_are_refused_everywhere() {
    let g = Guest::new();
    let errno = |parent, name| g.lookup(parent, name).map(|e| e.nodeid);
    assert_eq!(errno(1, ".."), Err(libc::EINVAL));
    assert_eq!(errno(1, "."), Err(libc::EINVAL));
    let dir = g.node("vol/dir");
    assert_eq!(errno(dir, ".."), Err(libc::EINVAL));
    assert_eq!(
        errno(1, "vol/dir"),
        Err(libc::EINVAL),
        "a name with a slash"
    );
    g.0.check();
}

#[test]
fn readdirplus_hands_out_no_inode_for_dot_dot() {
    let g = Guest::new();
    let vol = g.node("vol");
    let args = ReadIn {
        fh: g.opendir(vol),
        size: 64 * 1024,
        ..Default::default()
    };
    let r = g.call(Opcode::Readdirplus, vol, &[&bytes(&args)]);
    assert_eq!(r.error, 0);
    let mut names = 0;
    for d in dirents(&r.body, true) {
        let nodeid = d.entry.unwrap().nodeid;
        if d.name == ".." || d.name == "." {
            assert_eq!(nodeid, 0, "{:?} got an inode", d.name);
        } else {
            assert_ne!(nodeid, 0);
            names += 1;
        }
    }
    assert_eq!(names, 4, "file, dir and two links");
    g.0.check();
}

/// Where the open directory handle on `dir` stands (its file position, from fdinfo).
fn dir_position(dir: &std::path::Path) -> Vec<u64> {
    let mut at = Vec::new();
    for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if fs::read_link(fd.path()).ok().as_deref() != Some(dir) {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_PATH as i64 != 0 {
            continue;
        }
        if let Some(pos) = info.lines().find_map(|l| l.strip_prefix("pos:")) {
            at.push(pos.trim().parse().unwrap());
        }
    }
    at
}

#[test]
fn rm_rf_of_a_large_directory_reads_no_host_entry_it_does_not_return() {
    // `rm -rf` as the guest kernel does it: read a page of entries, unlink them, read on
    // from the last offset. Entries read from the host but not returned would make the
    // next read seek back, which skips entries where offsets are positions (tmpfs before
    // Linux 6.6: the directory was left non-empty).
    let g = Guest::new();
    let big = g.0.path("shared/vol/big");
    fs::create_dir(&big).unwrap();
    for i in 0..400 {
        fs::write(big.join(format!("f{i}")), b"").unwrap();
    }
    let node = g.node("vol/big");
    let fh = g.opendir(node);
    let mut offset = 0;
    let mut removed = 0;
    for plus in [true, false].into_iter().cycle() {
        let args = ReadIn {
            fh,
            offset,
            size: 4096,
            ..Default::default()
        };
        let op = if plus {
            Opcode::Readdirplus
        } else {
            Opcode::Readdir
        };
        let r = g.call(op, node, &[&bytes(&args)]);
        assert_eq!(r.error, 0);
        let entries = dirents(&r.body, plus);
        let Some(last) = entries.last() else { break };
        offset = last.off;
        assert_eq!(
            dir_position(&big),
            vec![offset],
            "the host directory was read past the last entry returned"
        );
        for d in entries.iter().filter(|d| d.name != "." && d.name != "..") {
            let r = g.call(Opcode::Unlink, node, &[&cstr(&d.name)]);
            assert_eq!(r.error, 0, "unlink {}", d.name);
            removed += 1;
        }
    }
    assert_eq!(removed, 400);
    assert_eq!(fs::read_dir(&big).unwrap().count(), 0);
    g.0.check();
}

#[test]
fn symlinks_pointing_out_are_never_followed_on_the_host() {
    let g = Guest::new();
    for link in ["vol/abs-link", "vol/rel-link", "vol/dir/up"] {
        let node = g.node(link);
        assert!(g.open(node, libc::O_RDWR).is_err(), "{link} opened");
        assert!(
            g.lookup(node, "secret").is_err(),
            "{link} traversed on the host"
        );
    }
    g.0.check();
}

#[test]
fn volumes_refuse_devices_setuid_files_and_file_capabilities() {
    let g = Guest::new();
    let vol = g.node("vol");
    assert_eq!(g.create(vol, "suid", 0o4755), Err(libc::EPERM));
    assert_eq!(g.create(vol, "sgid", 0o2755), Err(libc::EPERM));
    assert_eq!(
        g.mknod(vol, "null", libc::S_IFCHR | 0o666, (1 << 8) | 3),
        libc::EPERM
    );
    assert_eq!(
        g.mknod(vol, "disk", libc::S_IFBLK | 0o666, 8 << 8),
        libc::EPERM
    );
    assert_eq!(
        g.mknod(vol, "pipe", libc::S_IFIFO | 0o644, 0),
        0,
        "a fifo is fine"
    );
    let file = g.node("vol/file");
    assert_eq!(g.chmod(file, 0o4755), libc::EPERM);
    assert_eq!(g.chmod(file, 0o2755), libc::EPERM);
    assert_eq!(g.chmod(file, 0o755), 0);
    assert_eq!(
        g.setxattr(file, "security.capability", &[1, 0, 0, 2]),
        libc::EPERM
    );
    assert_eq!(
        g.setxattr(file, "trusted.overlay.opaque", b"y"),
        libc::EPERM
    );
    assert_eq!(
        g.rename(vol, "file", vol, "other", libc::RENAME_WHITEOUT),
        libc::EPERM,
        "a whiteout is a device node"
    );
    let dir = g.node("vol/dir");
    assert_eq!(g.chmod(dir, 0o2775), 0, "setgid directories are fine");
    g.0.check();
}

#[test]
fn a_container_root_may_hold_what_runc_lets_a_container_make() {
    let g = Guest::new();
    let root = g.node("rootfs");
    let (node, _) = g.create(root, "sudo", 0o4755).unwrap();
    assert_eq!(
        g.mknod(root, "null", libc::S_IFCHR | 0o666, (1 << 8) | 3),
        0
    );
    // struct vfs_cap_data, revision 2: CAP_NET_RAW permitted.
    let mut cap = [0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    assert_eq!(g.setxattr(node, "security.capability", &cap), 0);
    assert_eq!(g.setxattr(node, "trusted.x", b"1"), libc::EPERM);
    let meta = fs::metadata(g.0.path("shared/rootfs/sudo")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    assert!(fs::symlink_metadata(g.0.path("shared/rootfs/null"))
        .unwrap()
        .file_type()
        .is_char_device());
    g.0.check();
}

#[test]
fn a_pods_later_container_roots_are_container_roots_and_look_alikes_are_not() {
    let g = Guest::new();
    let dev = libc::S_IFCHR | 0o666;
    assert_eq!(g.mknod(g.node("rootfs-2"), "null", dev, (1 << 8) | 3), 0);
    assert_eq!(
        g.mknod(g.node("rootfs2"), "null", dev, (1 << 8) | 3),
        libc::EPERM
    );
    g.0.check();
}

#[test]
fn a_read_only_share_refuses_every_change() {
    let g = Guest::new();
    let ro = g.node("ro");
    let file = g.node("ro/file");
    assert_eq!(g.create(ro, "new", 0o644), Err(libc::EROFS));
    assert_eq!(g.open(file, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(g.chmod(file, 0o600), libc::EROFS);
    assert_eq!(g.setxattr(file, "user.x", b"1"), libc::EROFS);
    let truncate = SetattrIn {
        valid: FATTR_SIZE,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        -g.call(Opcode::Setattr, file, &[&bytes(&truncate)]).error,
        libc::EROFS
    );
    assert_eq!(g.rename(ro, "file", ro, "renamed", 0), libc::EROFS);
    let fh = g.open(file, libc::O_RDONLY).unwrap();
    assert!(g.read(file, fh, 0, 100).is_ok(), "reading is fine");
    g.0.check();
}

#[test]
fn nothing_crosses_from_one_share_to_another() {
    let g = Guest::new();
    let (vol, root) = (g.node("vol"), g.node("rootfs"));
    let (node, _) = g.create(root, "suid", 0o4755).unwrap();
    let r = g.call(
        Opcode::Link,
        vol,
        &[&bytes(&LinkIn { oldnodeid: node }), &cstr("stolen")],
    );
    assert_eq!(-r.error, libc::EXDEV);
    assert_eq!(g.rename(root, "suid", vol, "stolen", 0), libc::EXDEV);
    g.0.check();
}

#[test]
fn opening_a_fifo_is_refused_without_blocking_the_server() {
    let g = Guest::new();
    nix::unistd::mkfifo(&g.0.path("shared/vol/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let node = g.node("vol/fifo");
    let started = Instant::now();
    assert!(g.open(node, libc::O_RDONLY).is_err());
    let args = CreateIn {
        flags: libc::O_RDONLY as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let vol = g.node("vol");
    let r = g.call(Opcode::Create, vol, &[&bytes(&args), &cstr("fifo")]);
    assert_ne!(r.error, 0, "create over an existing fifo opened it");
    assert!(started.elapsed() < Duration::from_secs(5));
    g.0.check();
}

// ------------------------------------------------------------------ hostile driver

#[test]
fn read_and_write_flags_that_differ_from_the_open_change_nothing() {
    // fuse-backend-rs 0.14 applies each READ's and WRITE's flags with fcntl(F_SETFL); when
    // that fails it closes the handle's descriptor but keeps the handle. The number then
    // belongs to the next file opened, and closing the handle later closes that one (a
    // debug build aborts on the double close). Clearing O_APPEND on an append-only file
    // is such a failure.
    let g = Guest::new();
    let host = fs::File::open(g.0.path("shared/vol/file")).unwrap();
    let append_only: libc::c_long = 0x20; // FS_APPEND_FL
                                          // SAFETY: FS_IOC_SETFLAGS reads one long from the pointer, valid for the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&host),
            libc::FS_IOC_SETFLAGS,
            &append_only,
        )
    };
    assert_eq!(rc, 0, "chattr +a: {}", std::io::Error::last_os_error());
    let file = g.node("vol/file");
    let fh = g.open(file, libc::O_RDWR | libc::O_APPEND).unwrap();
    let read = bytes(&ReadIn {
        fh,
        size: 4,
        flags: libc::O_RDWR as u32,
        ..Default::default()
    });
    let mut write = bytes(&WriteIn {
        fh,
        size: 4,
        flags: libc::O_RDWR as u32,
        ..Default::default()
    });
    write.extend_from_slice(b"more");
    assert_eq!(g.call(Opcode::Read, file, &[&read]).error, 0);
    assert_eq!(g.call(Opcode::Write, file, &[&write]).error, 0);
    // An O_PATH open gets an ordinary descriptor that can be read.
    let fh2 = g.open(file, libc::O_RDONLY | libc::O_PATH).unwrap();
    assert_eq!(&g.read(file, fh2, 0, 4).unwrap(), b"read");
    let other = g.node("vol/dir");
    for h in [fh, fh2] {
        assert_eq!(g.release(file, h), 0);
    }
    assert_ne!(
        g.lookup(other, "up").unwrap().nodeid,
        0,
        "the server still works"
    );
    let no_flags: libc::c_long = 0;
    // SAFETY: as above.
    unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&host),
            libc::FS_IOC_SETFLAGS,
            &no_flags,
        )
    };
    g.0.check();
}

#[test]
fn a_header_length_that_disagrees_with_the_buffers_gets_einval() {
    let g = Guest::new();
    for lie in [0u32, 10, 1 << 20, u32::MAX] {
        let mut req = message(Opcode::Lookup, 1, &[&cstr("vol")]);
        req[..4].copy_from_slice(&lie.to_le_bytes());
        let r = g.0.call(&req, 4096);
        assert_eq!(-r.error, libc::EINVAL, "len {lie}");
    }
    g.0.check();
}

#[test]
fn unknown_opcodes_and_unknown_nodes_get_errors() {
    let g = Guest::new();
    let r = g.0.call(&message_as(999, 1, 0, &[]), 4096);
    assert_eq!(-r.error, libc::ENOSYS);
    let r = g.0.call(
        &message_as(Opcode::Getattr as u32, 987_654, 0, &[&[0; 16]]),
        4096,
    );
    assert_ne!(r.error, 0, "a node the guest was never given");
    for op in [
        Opcode::Ioctl,
        Opcode::Setlkw,
        Opcode::SetupMapping,
        Opcode::CopyFileRange,
    ] {
        let r = g.0.call(&message(op, 1, &[&[0u8; 64]]), 4096);
        assert_ne!(r.error, 0, "{op:?}");
    }
    g.0.check();
}

#[test]
fn huge_reads_and_writes_are_bounded_by_the_chain() {
    let g = Guest::new();
    let vol = g.node("vol");
    let (node, fh) = g.create(vol, "f", 0o644).unwrap();
    // A write that claims 4 GiB but carries 10 bytes.
    let args = WriteIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let r = g.call(Opcode::Write, node, &[&bytes(&args), b"0123456789"]);
    assert!(r.error != 0 || r.obj::<WriteOut>().size <= 10);
    assert!(fs::metadata(g.0.path("shared/vol/f")).unwrap().len() <= 10);
    // A read of 4 GiB into a 4 KiB buffer.
    let args = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let r =
        g.0.call(&message(Opcode::Read, node, &[&bytes(&args)]), 4096);
    assert!(r.used <= 4096);
    // A body over the server's 1 MiB limit.
    let big = vec![b'a'; (1 << 20) + 8192];
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let req = message(Opcode::Lookup, 1, &[&big]);
    mem.write_slice(&req, GuestAddress(0x10_0000)).unwrap();
    let q = MockSplitQueue::new(&mem, 16);
    let chain = q
        .build_desc_chain(&[
            Harness::desc(0x10_0000, req.len() as u32, false),
            Harness::desc(0x30_0000, 4096, true),
        ])
        .unwrap();
    let used = handle_chain(&g.0.server, &mem, chain);
    let header = mem
        .read_obj::<fuse_backend_rs::abi::fuse_abi::OutHeader>(GuestAddress(0x30_0000))
        .unwrap();
    assert_eq!((used, header.error), (16, -libc::ENOMEM));
    // fallocate of an absurd length: refused by the host file system, nothing allocated.
    let args = FallocateIn {
        fh,
        offset: 0,
        length: u64::MAX / 2,
        mode: 0,
        padding: 0,
    };
    assert_ne!(g.call(Opcode::Fallocate, node, &[&bytes(&args)]).error, 0);
    g.0.check();
}

/// Runs `f` in a child process whose address space is capped at `limit` bytes above what
/// this one uses: an allocation the cap cannot hold aborts the child. Returns whether the
/// child finished normally.
fn within_address_space(limit: u64, f: impl FnOnce()) -> bool {
    let vsz: u64 = fs::read_to_string("/proc/self/stat")
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(20)
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: the child only runs `f` (requests on this thread's harness) and exits.
    match unsafe { libc::fork() } {
        0 => {
            let cap = libc::rlimit {
                rlim_cur: vsz + limit,
                rlim_max: vsz + limit,
            };
            // SAFETY: setrlimit reads the one struct passed; _exit ends the child.
            unsafe {
                libc::setrlimit(libc::RLIMIT_AS, &cap);
            }
            f();
            // SAFETY: as above.
            unsafe { libc::_exit(0) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    }
}

#[test]
fn sizes_the_server_would_allocate_by_are_bounded() {
    // fuse-backend-rs 0.14 reserves what GETXATTR, LISTXATTR and READDIR ask for before
    // the system call (found by the fuzzer: a 3.4 GB GETXATTR).
    let g = Guest::new();
    let file = g.node("vol/file");
    assert_eq!(g.setxattr(file, "user.k", b"v"), 0);
    let survived = within_address_space(1 << 30, || {
        let r = g.call(
            Opcode::Getxattr,
            file,
            &[
                &bytes(&GetxattrIn {
                    size: u32::MAX,
                    padding: 0,
                }),
                &cstr("user.k"),
            ],
        );
        assert_eq!((r.error, r.body.as_slice()), (0, &b"v"[..]));
        let r = g.call(
            Opcode::Listxattr,
            file,
            &[&bytes(&GetxattrIn {
                size: 0xfff0_0000,
                padding: 0,
            })],
        );
        assert_eq!(r.error, 0);
    });
    assert!(survived, "a 4 GiB xattr request did not fit in 1 GiB");
    // A directory read asking for 150 MiB, with a chain that has that much room (the
    // same guest memory described again and again), returns at most a request's 1 MiB.
    let host = g.0.path("shared/vol/long-names");
    fs::create_dir(&host).unwrap();
    for i in 0..6000 {
        fs::File::create(host.join(format!("{i:05}-{}", "n".repeat(200)))).unwrap();
    }
    let dir = g.node("vol/long-names");
    let fh = g.opendir(dir);
    let req = message(
        Opcode::Readdir,
        dir,
        &[&bytes(&ReadIn {
            fh,
            size: 150 << 20,
            ..Default::default()
        })],
    );
    g.0.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
    let mut descs = vec![Harness::desc(REQ_ADDR, req.len() as u32, false)];
    descs.extend((0..250).map(|_| Harness::desc(OUT_ADDR, 0xb_0000, true)));
    let used = g.0.serve(&descs);
    assert!(used > 1000 && used <= (1 << 20) + 16, "used {used}");
    fs::remove_dir_all(&host).unwrap();
    g.0.check();
}

#[test]
fn malformed_chains_get_nothing_and_never_panic() {
    let h = Harness::new();
    let req = message(Opcode::Lookup, 1, &[&cstr("vol")]);
    h.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
    let len = req.len() as u32;
    // No writable buffer: nowhere to put a reply.
    assert_eq!(h.serve(&[Harness::desc(REQ_ADDR, len, false)]), 0);
    // A reply buffer too small for the reply.
    let used = h.serve(&[
        Harness::desc(REQ_ADDR, len, false),
        Harness::desc(OUT_ADDR, 4, true),
    ]);
    assert!(used <= 4);
    // Buffers outside guest memory, and wrapping the address space.
    for addr in [0xffff_0000u64, u64::MAX - 8] {
        assert_eq!(
            h.serve(&[
                Harness::desc(addr, len, false),
                Harness::desc(OUT_ADDR, 4096, true)
            ]),
            0
        );
        assert_eq!(
            h.serve(&[
                Harness::desc(REQ_ADDR, len, false),
                Harness::desc(addr, 4096, true)
            ]),
            0
        );
    }
    // A header split over many tiny buffers is read all the same.
    let descs: Vec<RawDescriptor> = (0..len as u64)
        .map(|i| Harness::desc(REQ_ADDR + i, 1, false))
        .chain(std::iter::once(Harness::desc(OUT_ADDR, 4096, true)))
        .collect();
    assert!(h.serve(&descs) > size_of::<EntryOut>() as u32);
    // A descriptor that chains to itself, and one pointing past the table.
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    let looped = RawDescriptor::from(SplitDescriptor::new(REQ_ADDR, len, next, 0));
    assert_eq!(h.serve_raw(&[looped], 0).unwrap_or(0), 0);
    let wild = RawDescriptor::from(SplitDescriptor::new(REQ_ADDR, len, next, 9000));
    assert_eq!(h.serve_raw(&[wild], 0).unwrap_or(0), 0);
    // A request shorter than its header.
    h.mem
        .write_slice(&[1, 2, 3], GuestAddress(REQ_ADDR))
        .unwrap();
    let r = h.serve(&[
        Harness::desc(REQ_ADDR, 3, false),
        Harness::desc(OUT_ADDR, 4096, true),
    ]);
    assert_eq!(h.reply(r).error, -libc::EINVAL);
    // Forgets that lie get no reply and break nothing.
    let mut forget = message(
        Opcode::Forget,
        2,
        &[&bytes(&ForgetIn { nlookup: u64::MAX })],
    );
    forget[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(h.call(&forget, 4096).used, 0);
    let ok = h.call(&message(Opcode::Lookup, 1, &[&cstr("vol")]), 4096);
    assert_eq!(ok.error, 0, "the server still answers");
    h.check();
}

#[test]
fn names_without_a_terminating_nul_are_refused() {
    let g = Guest::new();
    let r = g.call(Opcode::Lookup, 1, &[b"vol"]);
    assert_ne!(r.error, 0);
    let r = g.call(Opcode::Lookup, 1, &[b""]);
    assert_ne!(r.error, 0);
    let header_only = size_of::<InHeader>();
    assert_eq!(message(Opcode::Lookup, 1, &[]).len(), header_only);
    g.0.check();
}

// ------------------------------------------------------------------ the device

fn device_in(dir: &std::path::Path) -> Fs {
    Fs::new(&FsConfig {
        tag: "husk".into(),
        shared_dir: dir.to_owned(),
        container_roots: Vec::new(),
    })
    .unwrap()
}

#[test]
fn bad_tags_and_missing_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for tag in ["", "a\0b", &"x".repeat(TAG_LEN + 1)] {
        let e = Fs::new(&FsConfig {
            tag: tag.into(),
            shared_dir: dir.path().into(),
            container_roots: Vec::new(),
        })
        .err()
        .unwrap();
        assert!(matches!(e, FsError::Tag(_)), "{tag:?}: {e}");
    }
    let missing = dir.path().join("nope");
    let e = Fs::new(&FsConfig {
        tag: "t".into(),
        shared_dir: missing.clone(),
        container_roots: Vec::new(),
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("nope"), "{e}");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(Fs::new(&FsConfig {
        tag: "t".into(),
        shared_dir: file,
        container_roots: Vec::new(),
    })
    .is_err());
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device_in(dir.path());
    let mut cfg = [0xffu8; TAG_LEN + 4];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"husk");
    assert!(cfg[4..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[TAG_LEN..].try_into().unwrap()), 1);
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
}

/// Waits until `irq` fires.
fn wait_irq(irq: &Interrupt) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(irq.irqfd()),
        events: libc::POLLIN,
        revents: 0,
    };
    while Instant::now() < deadline {
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut fd, 1, 100) } > 0 {
            let _ = irq.irqfd().read();
            return true;
        }
    }
    false
}

#[test]
fn the_worker_serves_the_request_queue_and_interrupts_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hello"), b"hi").unwrap();
    let mut dev = device_in(dir.path());
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let requests = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    let init = fuse_backend_rs::abi::fuse_abi::InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0,
        flags: 0,
    };
    let init = message(Opcode::Init, 0, &[&bytes(&init)]);
    let lookup = message(Opcode::Lookup, 1, &[&cstr("hello")]);
    mem.write_slice(&init, GuestAddress(0x10_0000)).unwrap();
    mem.write_slice(&lookup, GuestAddress(0x11_0000)).unwrap();
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    let w = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    let d =
        |addr, len, flags, next| RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
    requests
        .add_desc_chains(
            &[
                d(0x10_0000, init.len() as u32, next, 1),
                d(0x20_0000, 4096, w, 0),
                d(0x11_0000, lookup.len() as u32, next, 3),
                d(0x21_0000, 4096, w, 0),
            ],
            0,
        )
        .unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![
            hiprio.create_queue::<Queue>().unwrap(),
            requests.create_queue::<Queue>().unwrap(),
        ],
        interrupt: irq.clone(),
        events: EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0),
    })
    .unwrap();
    dev.queue_notify(1);
    assert!(wait_irq(&irq), "no interrupt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests.used().idx().load() < 2 {
        assert!(Instant::now() < deadline, "requests not served");
        std::thread::sleep(Duration::from_millis(10));
    }
    let entry: EntryOut = mem
        .read_obj(GuestAddress(
            0x21_0000 + size_of::<fuse_backend_rs::abi::fuse_abi::OutHeader>() as u64,
        ))
        .unwrap();
    assert_eq!(entry.attr.size, 2);
    let attr_timeout = Duration::from_secs(entry.attr_valid);
    assert_eq!(attr_timeout, CACHE_TIMEOUT);
    // A reset drops the queues; the device can be activated again; drop joins the worker.
    dev.reset();
    drop(dev);
}

#[test]
fn a_bogus_avail_index_does_not_wedge_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = device_in(dir.path());
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let requests = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![
            hiprio.create_queue::<Queue>().unwrap(),
            requests.create_queue::<Queue>().unwrap(),
        ],
        interrupt: irq,
        events: EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0),
    })
    .unwrap();
    requests.avail().idx().store(1000);
    dev.queue_notify(1);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        dev.reset();
        drop(dev);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("reset and drop returned");
}

#[test]
fn activation_needs_both_queues_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = device_in(dir.path());
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let e = dev
        .activate(ActivateContext {
            mem,
            queues: vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            events: EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0),
        })
        .unwrap_err();
    assert!(matches!(e, ActivateError::QueueNotReady(0)));
}

// ------------------------------------------------------------------ fuzz smoke

/// The corpus under fuzz/corpus/virtio_fs, the built-in seeds, and deterministic mutations
/// of them, for a few seconds (`scripts/fuzz.sh` runs the real fuzzer for as long as it is
/// told). `HUSK_FUZZ_WRITE_SEEDS=1` writes the seeds into the corpus.
#[test]
fn fuzz_target_smoke() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_fs");
    let mut inputs = fuzzing::seeds();
    if std::env::var_os("HUSK_FUZZ_WRITE_SEEDS").is_some() {
        fs::create_dir_all(&corpus).unwrap();
        for (i, seed) in inputs.iter().enumerate() {
            fs::write(corpus.join(format!("seed-{i}")), seed).unwrap();
        }
    }
    if let Ok(dir) = fs::read_dir(&corpus) {
        for e in dir.flatten() {
            inputs.push(fs::read(e.path()).unwrap());
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let started = Instant::now();
    let mut runs = 0;
    for input in inputs.clone() {
        fuzzing::run(&input);
        runs += 1;
    }
    while started.elapsed() < Duration::from_secs(5) {
        let mut input = inputs[rand() as usize % inputs.len()].clone();
        for _ in 0..1 + rand() % 8 {
            if input.is_empty() {
                break;
            }
            let i = rand() as usize % input.len();
            input[i] = rand() as u8;
        }
        fuzzing::run(&input);
        runs += 1;
    }
    assert!(runs > 10, "only {runs} runs");
}
