//! A guest program for the VM tier's storage tests (statically linked, copied into the
//! test root): it exercises a shared directory the way applications do, and tries to get
//! out of the shares the way a hostile container would.
//!
//! - `husk-fs-probe semantics DIR HOST_REGION_OFFSET`: files, modes, owners, symlinks,
//!   hard links, renames, fsync, xattrs, a shared writable mmap, O_DIRECT, 10,000 files,
//!   and a region past 1 GiB written here and one written by the host read back. Prints
//!   `key=value` lines for the host to check against what it sees.
//! - `husk-fs-probe escape CANARY`: in a privileged container, mounts the virtio-fs share
//!   itself (the whole export, not the container's binds) and tries every way out it
//!   knows. Prints `PASS`/`FAIL` lines and exits 1 if anything got out. `CANARY` is the
//!   content of a host file outside the shares: finding it anywhere is a failure.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
    }
}

fn rc(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic bytes (xorshift), so both sides can describe them by a seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a value with its length.
    rc(unsafe {
        libc::setxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

fn getxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer with its length.
    let len = unsafe {
        libc::getxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

fn semantics(dir: &Path, host_region: u64) {
    let p = |n: &str| dir.join(n);
    let started = std::time::Instant::now();
    let lap = |what: &str| println!("t_{what}_ms={}", started.elapsed().as_millis());
    // The read-ahead the agent gives the virtio-fs mount (its backing device info is
    // named after the device number of every file in it).
    let dev = fs::metadata(dir).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    println!(
        "read_ahead_kb={}",
        fs::read_to_string(&knob)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|e| format!("{knob}: {e}"))
    );
    fs::write(p("plain"), b"abc").unwrap();
    println!("read_back={}", fs::read_to_string(p("plain")).unwrap());
    fs::set_permissions(p("plain"), fs::Permissions::from_mode(0o640)).unwrap();
    println!(
        "mode={:o}",
        fs::metadata(p("plain")).unwrap().mode() & 0o7777
    );
    println!(
        "chown={}",
        errno_of(std::os::unix::fs::chown(p("plain"), Some(1234), Some(5678)))
    );
    symlink("target-text", p("sl")).unwrap();
    println!("readlink={}", fs::read_link(p("sl")).unwrap().display());
    fs::hard_link(p("plain"), p("hard")).unwrap();
    println!("nlink={}", fs::metadata(p("plain")).unwrap().nlink());
    fs::write(p("before"), b"moved").unwrap();
    fs::rename(p("before"), p("after")).unwrap();
    println!("renamed={}", !p("before").exists() && p("after").exists());
    let mut f = File::create(p("synced")).unwrap();
    f.write_all(b"durable").unwrap();
    println!("fsync={}", errno_of(f.sync_all()));
    println!(
        "setxattr={}",
        errno_of(setxattr(&p("plain"), "user.husk", b"probe"))
    );
    println!(
        "getxattr={}",
        String::from_utf8_lossy(&getxattr(&p("plain"), "user.husk").unwrap_or_default())
    );
    // A shared writable mapping, written through and synced.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p("mapped"))
        .unwrap();
    f.set_len(8192).unwrap();
    // SAFETY: maps 8192 bytes of a file this process holds open, shared and writable.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        println!(
            "mmap={}",
            errno_of::<()>(Err(std::io::Error::last_os_error()))
        );
    } else {
        let data = pattern(8192, 7);
        // SAFETY: the mapping is 8192 bytes long and writable; msync and munmap take it.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>(), 8192);
            libc::msync(addr, 8192, libc::MS_SYNC);
            libc::munmap(addr, 8192);
        }
        println!("mmap=ok");
    }
    // O_DIRECT with an aligned buffer: honoured, or refused with an errno.
    let direct = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(p("direct"));
    let verdict = direct.and_then(|mut f| {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: a 4096-byte allocation with 4096 alignment, freed below.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        // SAFETY: `buf` is 4096 valid bytes.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf, 4096) };
        slice.fill(b'd');
        let r = f.write_all(slice);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buf, layout) };
        r
    });
    println!("o_direct={}", errno_of(verdict));
    lap("basics");
    // Files made here, and a directory of 10,000 the host made, listed and stat'ed.
    fs::create_dir(p("many")).unwrap();
    for i in 0..1000 {
        File::create(p("many").join(format!("f{i:05}"))).unwrap();
    }
    println!("many={}", fs::read_dir(p("many")).unwrap().count());
    lap("many");
    let listed: Vec<_> = fs::read_dir(p("host-many")).unwrap().collect();
    let stated = listed
        .iter()
        .filter(|e| e.as_ref().is_ok_and(|e| e.metadata().is_ok()))
        .count();
    println!("host_many={}", listed.len());
    println!("host_many_stat={stated}");
    lap("host_many");
    // `rm -rf` of 300 files made here: unlinks between directory reads (more entries than
    // one read returns).
    fs::create_dir(p("doomed")).unwrap();
    for i in 0..300 {
        File::create(p("doomed").join(format!("f{i:03}"))).unwrap();
    }
    println!("doomed_rm={}", errno_of(fs::remove_dir_all(p("doomed"))));
    // Past 1 GiB: a region written here, and the host's region read back.
    let region = pattern(4 << 20, 11);
    let at = (1u64 << 30) + 3 * 4096;
    let mut big = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p("big-from-guest"))
        .unwrap();
    big.seek(SeekFrom::Start(at)).unwrap();
    big.write_all(&region).unwrap();
    big.sync_all().unwrap();
    println!(
        "guest_big_size={}",
        fs::metadata(p("big-from-guest")).unwrap().len()
    );
    println!("guest_region_sha256={}", hex(&Sha256::digest(&region)));
    let mut host = File::open(p("big-from-host")).unwrap();
    println!("host_big_size={}", host.metadata().unwrap().len());
    host.seek(SeekFrom::Start(host_region)).unwrap();
    let mut back = vec![0u8; 4 << 20];
    host.read_exact(&mut back).unwrap();
    println!("host_region_sha256={}", hex(&Sha256::digest(&back)));
    lap("big");
}

struct Verdicts {
    failed: bool,
}

impl Verdicts {
    /// `refused` attempts must fail; the detail says how.
    fn refused<T>(&mut self, name: &str, r: std::io::Result<T>) {
        match r {
            Ok(_) => {
                self.failed = true;
                println!("FAIL {name}: it worked");
            }
            Err(e) => println!("PASS {name}: refused ({e})"),
        }
    }

    fn check(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            println!("PASS {name}: {detail}");
        } else {
            self.failed = true;
            println!("FAIL {name}: {detail}");
        }
    }
}

/// Reads every regular file reachable under `root` without following symlinks; returns
/// the paths whose contents hold `needle`.
fn find_canary(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_owned()];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        let Ok(list) = fs::read_dir(&d) else { continue };
        for e in list.flatten() {
            seen += 1;
            if seen > 50_000 {
                return found;
            }
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let mut data = Vec::new();
                if File::open(e.path())
                    .and_then(|f| f.take(1 << 20).read_to_end(&mut data))
                    .is_ok()
                    && data.windows(needle.len()).any(|w| w == needle)
                {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

fn escape(canary: &str) -> bool {
    let mut v = Verdicts { failed: false };
    let raw = Path::new("/mnt/raw");
    fs::create_dir_all(raw).unwrap();
    let (tag, fstype) = (
        CString::new("husk").unwrap(),
        CString::new("virtiofs").unwrap(),
    );
    // SAFETY: NUL-terminated strings alive for the call; no data.
    let mounted = rc(unsafe {
        libc::mount(
            tag.as_ptr(),
            c(raw).as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    });
    v.check("mount the whole share", mounted.is_ok(), &errno_of(mounted));
    let (rw, ro) = (raw.join("s0"), raw.join("s1"));
    let needle = canary.as_bytes();
    // Reading everything the share shows, the host's links included.
    let found = find_canary(raw, needle);
    v.check(
        "canary anywhere in the share",
        found.is_empty(),
        &format!("{found:?}"),
    );
    for link in ["abs-link", "rel-link"] {
        let read = fs::read(rw.join(link));
        let leaked = read
            .as_ref()
            .is_ok_and(|d| d.windows(needle.len()).any(|w| w == needle));
        v.check(
            &format!("host-made {link} pointing out"),
            !leaked,
            &format!("resolves in the guest: {}", errno_of(read)),
        );
    }
    // `..` at the top of a share and of the export is the guest's own directory.
    let up = fs::metadata(rw.join("../..")).map(|m| (m.dev(), m.ino()));
    let guest_mnt = fs::metadata("/mnt").map(|m| (m.dev(), m.ino()));
    v.check(
        ".. at a share's root",
        up.is_ok() && up.ok() == guest_mnt.ok(),
        "stays in the guest's tree",
    );
    // Symlinks made in the guest, pointing out: the host never follows them.
    symlink("/husk-outside", rw.join("guest-abs")).unwrap();
    symlink("../../../../../../husk-outside", rw.join("guest-rel")).unwrap();
    for l in ["guest-abs", "guest-rel"] {
        v.refused(
            &format!("create through guest-made {l}"),
            File::create(rw.join(l).join("planted")),
        );
    }
    // Hard links to outside files, and across shares.
    v.refused(
        "hard link to a guest file outside",
        fs::hard_link("/bin/busybox", rw.join("hl")),
    );
    v.refused(
        "hard link across shares",
        fs::hard_link(ro.join("file"), rw.join("hl2")),
    );
    fs::write(rw.join("mine"), b"x").unwrap();
    v.refused(
        "rename across shares",
        fs::rename(rw.join("mine"), ro.join("mine")),
    );
    v.refused(
        "rename out to the export's root",
        fs::rename(rw.join("mine"), raw.join("mine")),
    );
    v.refused("create at the export's root", File::create(raw.join("new")));
    // open_by_handle_at: virtio-fs gives no handles; a forged one opens nothing.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    // SAFETY: name_to_handle_at fills the struct we pass (its `bytes` says how much room).
    let named = rc(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c(&rw.join("mine")).as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        ) as i32
    });
    // The guest kernel makes FUSE handles itself (node id and generation); what matters
    // is what opening one reaches.
    println!("INFO name_to_handle_at on the share: {}", errno_of(named));
    let dirfd = File::open(&rw).unwrap();
    let mut handles = vec![("its own handle", h.bytes, h.kind, h.data)];
    for node in [1u64, 2, 3, 7, 1 << 20] {
        // FUSE's own handle layout: node id high and low words, generation (type 0x81).
        let mut data = [0u8; 128];
        data[..4].copy_from_slice(&((node >> 32) as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&(node as u32).to_ne_bytes());
        handles.push(("a forged handle", 12, 0x81, data));
    }
    for (what, bytes, kind, data) in handles {
        let forged = Handle { bytes, kind, data };
        // SAFETY: open_by_handle_at reads the handle struct we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                std::os::fd::AsRawFd::as_raw_fd(&dirfd),
                &forged as *const Handle,
                libc::O_RDONLY,
            )
        };
        if fd < 0 {
            println!(
                "PASS open_by_handle_at with {what}: refused ({})",
                std::io::Error::last_os_error()
            );
            continue;
        }
        // SAFETY: the kernel just returned this descriptor.
        let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let mut data = Vec::new();
        let _ = f.read_to_end(&mut data);
        let leaked = data.windows(needle.len()).any(|w| w == needle);
        v.check(
            &format!("open_by_handle_at with {what}"),
            !leaked,
            "opened something inside the share",
        );
    }
    // /proc/self/fd: a share's descriptor, then up.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dirfd);
    let via_proc = PathBuf::from(format!("/proc/self/fd/{fd}/../.."));
    let found = find_canary(&via_proc, needle);
    v.check(
        "/proc/self/fd/N/..",
        found.is_empty(),
        &format!("{found:?}"),
    );
    // Device nodes and setuid files in a volume.
    for (name, kind, dev) in [
        ("null", libc::S_IFCHR, libc::makedev(1, 3)),
        ("disk", libc::S_IFBLK, libc::makedev(8, 0)),
    ] {
        // SAFETY: a NUL-terminated path and integers.
        let made = rc(unsafe { libc::mknod(c(&rw.join(name)).as_ptr(), kind | 0o666, dev) });
        v.refused(&format!("device node {name} in a volume"), made);
    }
    v.refused(
        "setuid file created in a volume",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o4755)
            .open(rw.join("suid")),
    );
    let f = rw.join("mine");
    v.refused(
        "chmod u+s in a volume",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)),
    );
    v.refused(
        "chmod g+s on a file in a volume",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o2755)),
    );
    let mut cap = [0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    cap[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    v.refused(
        "file capabilities in a volume",
        setxattr(&f, "security.capability", &cap),
    );
    v.refused(
        "trusted xattr",
        setxattr(&f, "trusted.overlay.opaque", b"y"),
    );
    // The read-only share.
    let rf = ro.join("file");
    v.refused(
        "write to a read-only share",
        OpenOptions::new().write(true).open(&rf),
    );
    v.refused(
        "chmod on a read-only share",
        fs::set_permissions(&rf, fs::Permissions::from_mode(0o777)),
    );
    v.refused(
        "setxattr on a read-only share",
        setxattr(&rf, "user.x", b"1"),
    );
    // SAFETY: a NUL-terminated path and a length.
    let truncated = rc(unsafe { libc::truncate(c(&rf).as_ptr(), 0) });
    v.refused("truncate on a read-only share", truncated);
    v.refused("create in a read-only share", File::create(ro.join("new")));
    v.refused("unlink in a read-only share", fs::remove_file(&rf));
    !v.failed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("semantics") if args.len() == 4 => {
            semantics(Path::new(&args[2]), args[3].parse().expect("an offset"))
        }
        Some("escape") if args.len() == 3 => {
            if !escape(&args[2]) {
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: husk-fs-probe semantics DIR HOST_REGION_OFFSET | escape CANARY");
            std::process::exit(2);
        }
    }
}
