//! A hostile guest for the virtio-fs request path, shared by the unit tests and the
//! cargo-fuzz target (`fuzz/fuzz_targets/virtio_fs.rs`, feature `fuzzing`).
//!
//! [`Harness`] serves a small tree from a private tmpfs (its own mount namespace, so that
//! nothing it mounts is seen elsewhere, and a size limit so that no request can fill a real
//! disk): `case/shared/` is the export root holding three shares, each its own bind mount as
//! in a real sandbox (`vol` read-write, `ro` read-only, `rootfs` a container root), and
//! `case/outside/secret` is what the guest must never reach. Symlinks in the shares point
//! at it (absolute and relative). [`Harness::check`] asserts the invariants: nothing
//! outside `shared/` changed, the read-only share is untouched, and `vol` holds no device
//! node, setuid or setgid file.
//!
//! [`run`] decodes arbitrary bytes into a session of FUSE requests and raw descriptor chains
//! (see [`Op`] for the encoding), serves them through [`super::handle_chain`], and checks
//! the invariants; [`seeds`] are the sessions the corpus starts from.

use std::ffi::CString;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fuse_backend_rs::abi::fuse_abi::{FsOptions, InHeader, InitIn, InitOut, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::{file_server, handle_chain, isolate_fs_context, FsConfig, ShareFs};

/// Where requests are written in the test guest's memory.
pub const REQ_ADDR: u64 = 0x2_0000;
/// Where replies go.
pub const OUT_ADDR: u64 = 0x4_0000;
const BLOB_ADDR: u64 = 0x6_0000;
const MEM_SIZE: usize = 0x10_0000;
const QUEUE_SIZE: u16 = 256;
/// Requests per fuzz input: bounds the time one input takes.
const MAX_OPS: usize = 64;
const SECRET: &[u8] = b"the host's secret\n";
const RO_CONTENT: &[u8] = b"read-only content\n";
/// The harness's shares: a volume, a read-only one, a container root, a root added later
/// to a running pod (`rootfs-<n>`), and a volume whose name only looks like one.
const SHARES: [&str; 5] = ["vol", "ro", "rootfs", "rootfs-2", "rootfs2"];

/// A FUSE request: header (length filled in) followed by `parts`.
pub fn message(opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    message_as(opcode as u32, nodeid, 0, parts)
}

/// [`message`] with a raw opcode and the caller's uid and gid.
pub fn message_as(opcode: u32, nodeid: u64, uid: u32, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let header = InHeader {
        len: (size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique: 7,
        nodeid,
        uid,
        gid: uid,
        pid: 1,
        padding: 0,
    };
    let mut m = header.as_slice().to_vec();
    m.extend_from_slice(&body);
    m
}

/// `name` with its NUL.
pub fn cstr(name: &str) -> Vec<u8> {
    CString::new(name).unwrap().into_bytes_with_nul()
}

/// The bytes of a FUSE ABI struct.
pub fn bytes<T: ByteValued>(v: &T) -> Vec<u8> {
    v.as_slice().to_vec()
}

/// A reply: the error (0 or a negative errno) and the bytes after the header.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Bytes written into the chain (the used length).
    pub used: u32,
    /// `OutHeader::error`.
    pub error: i32,
    /// What followed the header.
    pub body: Vec<u8>,
}

impl Reply {
    /// Decodes the body as `T`.
    pub fn obj<T: ByteValued>(&self) -> T {
        assert!(
            self.body.len() >= size_of::<T>(),
            "reply body of {} bytes (error {})",
            self.body.len(),
            self.error
        );
        T::from_slice(&self.body[..size_of::<T>()])
            .copied()
            .unwrap()
    }
}

/// A served tree on a private tmpfs and a test guest's memory (see the module docs).
pub struct Harness {
    /// `case/`, which holds `shared/` (the export root) and `outside/`.
    pub case: PathBuf,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The server under test.
    pub server: Server<ShareFs>,
}

fn run_checked(what: &str, rc: libc::c_int) {
    assert!(
        rc == 0,
        "{what}: {} (the virtio-fs harness needs root)",
        std::io::Error::last_os_error()
    );
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mount(src: &Path, dst: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) {
    let (src, dst) = (c_path(src), c_path(dst));
    let fstype = fstype.map(|f| CString::new(f).unwrap());
    let data = data.map(|d| CString::new(d).unwrap());
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    run_checked("mount", rc);
}

thread_local! {
    /// This thread's private tmpfs, mounted once.
    static SCRATCH: PathBuf = private_tmpfs();
}

fn private_tmpfs() -> PathBuf {
    isolate_fs_context().expect("unshare(CLONE_FS)");
    // SAFETY: unshare takes a flag word and affects only the calling thread.
    run_checked("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    });
    mount(
        Path::new("none"),
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    );
    let dir = std::env::temp_dir().join(format!(
        "husk-fs-harness-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    mount(
        Path::new("tmpfs"),
        &dir,
        Some("tmpfs"),
        0,
        Some("size=16m,nr_inodes=32768,mode=700"),
    );
    dir
}

impl Harness {
    /// Builds a fresh tree and serves it; the guest has mounted it (FUSE_INIT done).
    pub fn new() -> Self {
        let scratch = SCRATCH.with(|s| s.clone());
        let case = scratch.join("case");
        if case.exists() {
            Self::unmount_shares(&case);
            std::fs::remove_dir_all(&case).expect("removing the previous case");
        }
        let shared = case.join("shared");
        let outside = case.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), SECRET).unwrap();
        // The server clears this thread's umask: modes are set, not left to it.
        std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o644)).unwrap();
        for share in SHARES {
            let d = shared.join(share);
            std::fs::create_dir_all(d.join("dir")).unwrap();
            std::fs::write(d.join("file"), RO_CONTENT).unwrap();
            std::os::unix::fs::symlink(outside.join("secret"), d.join("abs-link")).unwrap();
            std::os::unix::fs::symlink("../../outside/secret", d.join("rel-link")).unwrap();
            std::os::unix::fs::symlink("../../../outside", d.join("dir/up")).unwrap();
            mount(&d, &d, None, libc::MS_BIND, None);
            let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
            if share == "ro" {
                flags |= libc::MS_RDONLY;
            }
            mount(Path::new("none"), &d, None, flags, None);
        }
        let server = file_server(&FsConfig {
            tag: "husk".into(),
            shared_dir: shared,
            container_roots: vec!["rootfs".into()],
        })
        .expect("serving the harness tree");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let h = Self { case, mem, server };
        // What a Linux guest offers includes the writeback cache and zero-message opens;
        // the server must not take them: with either, guest writes would stay in the
        // guest's page cache and the host would not see them while the container runs.
        // Nor atomic O_TRUNC (open flags lose O_TRUNC here). It must take large requests.
        let refused =
            FsOptions::WRITEBACK_CACHE | FsOptions::ZERO_MESSAGE_OPEN | FsOptions::ATOMIC_O_TRUNC;
        let taken = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS;
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: (refused | taken).bits() as u32,
        };
        let r = h.call(&message(Opcode::Init, 0, &[&bytes(&init)]), 4096);
        assert_eq!(r.error, 0, "FUSE_INIT failed");
        let out: InitOut = r.obj();
        assert_eq!(
            u64::from(out.flags) & refused.bits(),
            0,
            "the server took the writeback cache, zero-message opens or atomic O_TRUNC"
        );
        assert_eq!(
            u64::from(out.flags) & taken.bits(),
            taken.bits(),
            "the server refused large or parallel requests"
        );
        assert_eq!((out.max_write, out.max_pages), (1 << 20, 256));
        h
    }

    fn unmount_shares(case: &Path) {
        for share in SHARES {
            let p = c_path(&case.join("shared").join(share));
            // SAFETY: a NUL-terminated path alive for the call.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// A descriptor.
    pub fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Serves `descs` (chained in order) and returns the used length.
    pub fn serve(&self, descs: &[RawDescriptor]) -> u32 {
        let q = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        let chain = q.build_desc_chain(descs).expect("a chain");
        handle_chain(&self.server, &self.mem, chain)
    }

    /// Serves `descs` exactly as given (flags and next fields untouched), `head` first.
    pub fn serve_raw(&self, descs: &[RawDescriptor], head: u16) -> Option<u32> {
        let q = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        for (i, d) in descs.iter().enumerate() {
            q.desc_table().store(i as u16, *d).ok()?;
        }
        q.avail().ring().ref_at(0).ok()?.store(u16::to_le(head));
        q.avail().idx().store(u16::to_le(1));
        let mut queue: Queue = q.create_queue().ok()?;
        let chain = queue.pop_descriptor_chain(&self.mem)?;
        Some(handle_chain(&self.server, &self.mem, chain))
    }

    /// Sends `req` with a reply buffer of `out_len` bytes and decodes the reply.
    pub fn call(&self, req: &[u8], out_len: u32) -> Reply {
        self.mem.write_slice(req, GuestAddress(REQ_ADDR)).unwrap();
        self.mem
            .write_slice(&vec![0u8; out_len as usize], GuestAddress(OUT_ADDR))
            .unwrap();
        let used = self.serve(&[
            Self::desc(REQ_ADDR, req.len() as u32, false),
            Self::desc(OUT_ADDR, out_len, true),
        ]);
        self.reply(used)
    }

    /// Decodes the reply at [`OUT_ADDR`] given the used length.
    pub fn reply(&self, used: u32) -> Reply {
        if (used as usize) < size_of::<OutHeader>() {
            return Reply {
                used,
                error: 0,
                body: Vec::new(),
            };
        }
        let mut out = vec![0u8; used as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(OUT_ADDR))
            .unwrap();
        let header = *OutHeader::from_slice(&out[..size_of::<OutHeader>()]).unwrap();
        Reply {
            used,
            error: header.error,
            body: out[size_of::<OutHeader>()..].to_vec(),
        }
    }

    /// A path in the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.case.join(rel)
    }

    /// Panics if the guest reached anything it must not.
    pub fn check(&self) {
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&self.case), ["outside", "shared"], "case/ changed");
        assert_eq!(names(&self.path("outside")), ["secret"], "outside/ changed");
        assert_eq!(
            std::fs::read(self.path("outside/secret")).unwrap(),
            SECRET,
            "the secret changed"
        );
        let secret = std::fs::metadata(self.path("outside/secret")).unwrap();
        assert_eq!(
            secret.permissions().mode() & 0o7777,
            0o644,
            "the secret's mode changed"
        );
        assert_eq!(
            names(&self.path("shared/ro")),
            ["abs-link", "dir", "file", "rel-link"],
            "the read-only share changed"
        );
        assert_eq!(
            std::fs::read(self.path("shared/ro/file")).unwrap(),
            RO_CONTENT
        );
        let mut todo = vec![self.path("shared/vol")];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let meta = e.path().symlink_metadata().unwrap();
                let kind = meta.mode() & libc::S_IFMT;
                assert!(
                    kind != libc::S_IFCHR && kind != libc::S_IFBLK,
                    "device node {} in a volume",
                    e.path().display()
                );
                assert!(
                    meta.is_dir() || meta.mode() & (libc::S_ISUID | libc::S_ISGID) == 0,
                    "setuid or setgid file {} in a volume",
                    e.path().display()
                );
                if meta.is_dir() {
                    todo.push(e.path());
                }
            }
        }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        Self::unmount_shares(&self.case);
    }
}

/// One step of a fuzz session, as encoded in the input bytes.
///
/// - tag `0 | 1 (mod 4)`: a FUSE request in one readable buffer:
///   `tag, opcode: u8, nodeid: u8, uid: u8 (0 = root, else 1000), body_len: u16, body,
///   out_len: u16`, and if `tag & 0x40`, a `u32` that replaces the header's length.
/// - tag `2`: a raw chain: `n: u8` descriptors of `addr: u32, len: u32, flags: u16,
///   next: u16`, then `head: u8`, then `blob_len: u16, blob` written at the blob address.
/// - tag `3`: a FUSE request as for `0`, its readable part split over up to 8 buffers:
///   `splits: u8` offsets of `u16` follow the request.
#[derive(Debug, Clone)]
pub enum Op {
    /// A FUSE request.
    Fuse {
        /// Opcode.
        opcode: u8,
        /// Node id.
        nodeid: u8,
        /// Caller (0 or 1000).
        uid: u8,
        /// Body after the header.
        body: Vec<u8>,
        /// Reply buffer size.
        out_len: u16,
        /// A header length that lies.
        len_override: Option<u32>,
        /// Split points of the readable part.
        splits: Vec<u16>,
    },
    /// A raw descriptor chain.
    Raw {
        /// (addr, len, flags, next)
        descs: Vec<(u32, u32, u16, u16)>,
        /// Head index.
        head: u8,
        /// Bytes at the blob address.
        blob: Vec<u8>,
    },
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
}

/// Decodes a fuzz input into at most [`MAX_OPS`] steps (a truncated step is dropped).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut input = Input(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(op) = decode_one(&mut input) else {
            break;
        };
        ops.push(op);
    }
    ops
}

fn decode_one(input: &mut Input<'_>) -> Option<Op> {
    let tag = input.u8()?;
    match tag % 4 {
        2 => {
            let n = input.u8()? % 9;
            let mut descs = Vec::new();
            for _ in 0..n {
                descs.push((input.u32()?, input.u32()?, input.u16()?, input.u16()?));
            }
            let head = input.u8()?;
            let len = input.u16()? as usize;
            let blob = input.take(len.min(0x1_0000))?.to_vec();
            Some(Op::Raw { descs, head, blob })
        }
        kind => {
            let opcode = input.u8()?;
            let nodeid = input.u8()?;
            let uid = input.u8()?;
            let len = input.u16()? as usize;
            let body = input.take(len)?.to_vec();
            let out_len = input.u16()?;
            let len_override = if tag & 0x40 != 0 {
                Some(input.u32()?)
            } else {
                None
            };
            let mut splits = Vec::new();
            if kind == 3 {
                for _ in 0..input.u8()? % 8 {
                    splits.push(input.u16()?);
                }
            }
            Some(Op::Fuse {
                opcode,
                nodeid,
                uid,
                body,
                out_len,
                len_override,
                splits,
            })
        }
    }
}

/// Encodes steps the way [`decode`] reads them.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Fuse {
                opcode,
                nodeid,
                uid,
                body,
                out_len,
                len_override,
                splits,
            } => {
                let mut tag = if splits.is_empty() { 0 } else { 3 };
                if len_override.is_some() {
                    tag |= 0x40;
                }
                out.extend_from_slice(&[tag, *opcode, *nodeid, *uid]);
                out.extend_from_slice(&(body.len() as u16).to_le_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(&out_len.to_le_bytes());
                if let Some(l) = len_override {
                    out.extend_from_slice(&l.to_le_bytes());
                }
                if !splits.is_empty() {
                    out.push(splits.len() as u8);
                    for s in splits {
                        out.extend_from_slice(&s.to_le_bytes());
                    }
                }
            }
            Op::Raw { descs, head, blob } => {
                out.extend_from_slice(&[2, descs.len() as u8]);
                for (a, l, f, n) in descs {
                    out.extend_from_slice(&a.to_le_bytes());
                    out.extend_from_slice(&l.to_le_bytes());
                    out.extend_from_slice(&f.to_le_bytes());
                    out.extend_from_slice(&n.to_le_bytes());
                }
                out.push(*head);
                out.extend_from_slice(&(blob.len() as u16).to_le_bytes());
                out.extend_from_slice(blob);
            }
        }
    }
    out
}

fn apply(h: &Harness, op: &Op) {
    match op {
        Op::Fuse {
            opcode,
            nodeid,
            uid,
            body,
            out_len,
            len_override,
            splits,
        } => {
            let uid = if *uid == 0 { 0 } else { 1000 };
            let mut req = message_as(u32::from(*opcode), u64::from(*nodeid), uid, &[body]);
            if let Some(l) = len_override {
                req[..4].copy_from_slice(&l.to_le_bytes());
            }
            h.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
            let mut cuts: Vec<usize> = splits
                .iter()
                .map(|&s| usize::from(s) % (req.len() + 1))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut descs = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain(std::iter::once(req.len())) {
                if cut > start {
                    descs.push(Harness::desc(
                        REQ_ADDR + start as u64,
                        (cut - start) as u32,
                        false,
                    ));
                    start = cut;
                }
            }
            if *out_len > 0 {
                descs.push(Harness::desc(OUT_ADDR, u32::from(*out_len), true));
            }
            if !descs.is_empty() {
                h.serve(&descs);
            }
        }
        Op::Raw { descs, head, blob } => {
            h.mem.write_slice(blob, GuestAddress(BLOB_ADDR)).unwrap();
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .map(|&(a, l, f, n)| {
                    // Keep most addresses inside the test guest so that chains get past the
                    // memory checks and into the server.
                    let addr = if a & 0x8000_0000 != 0 {
                        u64::from(a)
                    } else {
                        u64::from(a) % MEM_SIZE as u64
                    };
                    RawDescriptor::from(SplitDescriptor::new(addr, l, f, n))
                })
                .collect();
            let _ = h.serve_raw(&raw, u16::from(*head));
        }
    }
}

/// The fuzz target: serves the session `data` encodes and checks that the guest stayed
/// inside its shares. Panics on a violation (or on any panic of the server).
pub fn run(data: &[u8]) {
    let h = Harness::new();
    for op in decode(data) {
        apply(&h, &op);
    }
    h.check();
}

fn fuse(opcode: Opcode, nodeid: u8, body: Vec<u8>) -> Op {
    Op::Fuse {
        opcode: opcode as u8,
        nodeid,
        uid: 0,
        body,
        out_len: 4096,
        len_override: None,
        splits: Vec::new(),
    }
}

/// Sessions a fuzzer starts from: ordinary requests (lookups of the shares, the files and
/// the links; creates, writes, reads, renames, xattrs) that get deep into the server.
/// Node ids follow the server's allocation order: 2 is the first inode looked up.
pub fn seeds() -> Vec<Vec<u8>> {
    use fuse_backend_rs::abi::fuse_abi::{
        CreateIn, GetxattrIn, LinkIn, MkdirIn, MknodIn, OpenIn, ReadIn, Rename2In, SetattrIn,
        SetxattrIn, WriteIn,
    };
    let lookup = |n, name: &str| fuse(Opcode::Lookup, n, cstr(name));
    let mut sessions = Vec::new();
    // Look around, read a file, follow nothing.
    sessions.push(vec![
        lookup(1, "vol"),
        lookup(2, "file"),
        fuse(
            Opcode::Open,
            3,
            bytes(&OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }),
        ),
        fuse(
            Opcode::Read,
            3,
            bytes(&ReadIn {
                fh: 1,
                offset: 0,
                size: 4096,
                ..Default::default()
            }),
        ),
        lookup(2, "abs-link"),
        fuse(Opcode::Readlink, 4, Vec::new()),
        lookup(2, ".."),
        lookup(1, ".."),
        fuse(Opcode::Opendir, 2, bytes(&OpenIn::default())),
        fuse(
            Opcode::Readdirplus,
            2,
            bytes(&ReadIn {
                fh: 2,
                size: 4096,
                ..Default::default()
            }),
        ),
    ]);
    // Create, write, rename, link, xattrs, a setuid chmod and a device node.
    let mut write = bytes(&WriteIn {
        fh: 1,
        offset: 0,
        size: 5,
        ..Default::default()
    });
    write.extend_from_slice(b"hello");
    let mut create = bytes(&CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o6755,
        umask: 0,
        fuse_flags: 0,
    });
    create.extend(cstr("new"));
    let mut create_plain = create.clone();
    create_plain[4..8].copy_from_slice(&(libc::S_IFREG | 0o644).to_le_bytes());
    let mut rename = bytes(&Rename2In {
        newdir: 1,
        flags: 0,
        padding: 0,
    });
    rename.extend(cstr("new"));
    rename.extend(cstr("escaped"));
    let mut link = bytes(&LinkIn { oldnodeid: 3 });
    link.extend(cstr("hard"));
    let mut setx = bytes(&SetxattrIn { size: 1, flags: 0 });
    setx.extend(cstr("trusted.overlay.opaque"));
    setx.extend_from_slice(b"y");
    let mut getx = bytes(&GetxattrIn {
        size: 64,
        padding: 0,
    });
    getx.extend(cstr("user.x"));
    let mut mknod = bytes(&MknodIn {
        mode: libc::S_IFCHR | 0o666,
        rdev: (1 << 8) | 3,
        umask: 0,
        padding: 0,
    });
    mknod.extend(cstr("null"));
    let mut mkdir = bytes(&MkdirIn {
        mode: 0o755,
        umask: 0,
    });
    mkdir.extend(cstr("sub"));
    let chmod = bytes(&SetattrIn {
        valid: 1, // FATTR_MODE
        mode: 0o4755,
        ..Default::default()
    });
    sessions.push(vec![
        lookup(1, "vol"),
        fuse(Opcode::Create, 2, create),
        fuse(Opcode::Create, 2, create_plain),
        fuse(Opcode::Write, 3, write),
        fuse(Opcode::Setattr, 3, chmod),
        fuse(Opcode::Rename2, 2, rename),
        fuse(Opcode::Link, 2, link),
        fuse(Opcode::Setxattr, 3, setx),
        fuse(Opcode::Getxattr, 3, getx),
        fuse(Opcode::Mknod, 2, mknod),
        fuse(Opcode::Mkdir, 2, mkdir),
        lookup(1, "ro"),
        lookup(1, "rootfs"),
    ]);
    // Lies about lengths, split headers, raw chains with loops and wild addresses.
    sessions.push(vec![
        Op::Fuse {
            opcode: Opcode::Lookup as u8,
            nodeid: 1,
            uid: 0,
            body: cstr("vol"),
            out_len: 4096,
            len_override: Some(u32::MAX),
            splits: Vec::new(),
        },
        Op::Fuse {
            opcode: Opcode::Lookup as u8,
            nodeid: 1,
            uid: 1,
            body: cstr("vol"),
            out_len: 4096,
            len_override: None,
            splits: vec![3, 17, 41],
        },
        Op::Raw {
            descs: vec![
                (REQ_ADDR as u32, 40, VRING_DESC_F_NEXT as u16, 1),
                (
                    OUT_ADDR as u32,
                    4096,
                    (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                    0,
                ),
            ],
            head: 0,
            blob: Vec::new(),
        },
        Op::Raw {
            descs: vec![(0xffff_f000, 0xffff_ffff, 0, 0)],
            head: 0,
            blob: vec![0xff; 64],
        },
    ]);
    sessions.iter().map(|s| encode(s)).collect()
}
