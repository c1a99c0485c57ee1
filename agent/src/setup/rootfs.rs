//! The container's filesystem view: its mounts on the root disk, a /dev of its own,
//! pivot_root, then the paths that must be hidden or read-only.
//!
//! The order is runc's: mounts as config.json lists them, devices and /dev links, pivot,
//! then (after the terminal) sysctls, readonlyPaths, maskedPaths and a read-only root.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{self, MntFlags, MsFlags};
use nix::sys::stat::{self, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::mount_options::{self, MountOptions};
use super::paths::resolve_in_root;

/// Devices every container gets: (path, major, minor), character devices, mode 0666.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// What `prepare` needs besides the spec.
pub struct RootfsPlan<'a> {
    /// The mounted root disk.
    pub rootfs: &'a Path,
    /// The container's cgroup, for a `cgroup` mount without a cgroup namespace.
    pub cgroup: &'a Path,
    /// Whether the process has a cgroup namespace of its own.
    pub cgroup_namespace: bool,
    /// Move the root and chroot instead of pivot_root (runc's `--no-pivot`).
    pub no_pivot: bool,
}

/// Mounts everything under the root disk and pivots into it. `log` takes lines for the
/// agent's log.
pub fn prepare(
    spec: &Spec,
    plan: &RootfsPlan<'_>,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let linux = spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => mount_options::root_propagation(p)
            .with_context(|| format!("unknown rootfsPropagation {p:?}"))?,
    };
    // Nothing mounted from here on may propagate back into the guest's namespace.
    mount::mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .context("make / a slave mount")?;
    let rootfs = plan.rootfs;
    mount::mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind {} onto itself", rootfs.display()))?;

    let mounts: &[Mount] = spec.mounts().as_deref().unwrap_or_default();
    let dev_mount = mounts.iter().find(|m| m.destination() == Path::new("/dev"));
    let dev_is_bind = dev_mount.is_some_and(|m| is_bind(m, &options_of(m)));
    if dev_mount.is_none() {
        let dev = rootfs.join("dev");
        mkdir_all(&dev)?;
        mount::mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )
        .context("mount a tmpfs on /dev")?;
    }
    for m in mounts {
        mount_one(rootfs, m, plan).with_context(|| {
            format!(
                "mount {} on {}",
                m.typ().as_deref().unwrap_or("bind"),
                m.destination().display()
            )
        })?;
    }
    if !dev_is_bind {
        if !mounts
            .iter()
            .any(|m| m.destination() == Path::new("/dev/pts"))
        {
            // A terminal needs a devpts of the container's own.
            let pts = rootfs.join("dev/pts");
            mkdir_all(&pts)?;
            mount::mount(
                Some("devpts"),
                &pts,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
            .context("mount devpts on /dev/pts")?;
        }
        let devices = linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default();
        create_devices(rootfs, devices)?;
        dev_links(rootfs)?;
    }
    if plan.no_pivot {
        return move_root(rootfs);
    }
    match pivot_root(rootfs) {
        // The guest's root is still the kernel's initramfs, which pivot_root cannot
        // move (PID 1 normally leaves it at boot).
        Err(e) if e.downcast_ref() == Some(&nix::errno::Errno::EINVAL) => {
            log(format!("pivot_root: {e:#}; moving the root instead"));
            move_root(rootfs)
        }
        other => other,
    }
}

fn options_of(m: &Mount) -> MountOptions {
    mount_options::parse(m.options().as_deref().unwrap_or_default())
}

fn is_bind(m: &Mount, options: &MountOptions) -> bool {
    m.typ().as_deref() == Some("bind") || options.bind
}

fn mount_one(rootfs: &Path, m: &Mount, plan: &RootfsPlan<'_>) -> anyhow::Result<()> {
    let options = options_of(m);
    let destination = m.destination();
    if !destination.is_absolute() {
        bail!("the destination is not an absolute path");
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let target = resolve_in_root(rootfs, destination).context("resolve the destination")?;
    if is_bind(m, &options) {
        let source = m
            .source()
            .as_deref()
            .context("a bind mount needs a source")?;
        // Host paths arrive as paths in the shared directory (the host rewrote them).
        let meta = match fs::metadata(source) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!(
                    "bind source {} does not exist in the guest",
                    source.display()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("stat {}", source.display())),
        };
        if meta.is_dir() {
            mkdir_all(&target)?;
        } else {
            create_file(&target)?;
        }
        let rec = if options.recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        bind(source, &target, rec, options.flags)?;
    } else if typ == "cgroup" || typ == "cgroup2" {
        mkdir_all(&target)?;
        if plan.cgroup_namespace {
            mount::mount(
                Some("cgroup2"),
                &target,
                Some("cgroup2"),
                options.flags,
                None::<&str>,
            )?;
        } else {
            // Without a namespace a fresh mount would show the whole guest hierarchy.
            bind(plan.cgroup, &target, MsFlags::empty(), options.flags)?;
        }
    } else {
        mkdir_all(&target)?;
        let source = m
            .source()
            .as_deref()
            .map_or_else(|| PathBuf::from(typ), Path::to_path_buf);
        let data = options.data();
        let fstype = (!typ.is_empty()).then_some(typ);
        match mount::mount(
            Some(&source),
            &target,
            fstype,
            options.flags,
            data.as_deref(),
        ) {
            // sysfs can't be mounted without a network namespace in a user namespace.
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" => {
                bind(Path::new("/sys"), &target, MsFlags::MS_REC, options.flags)?
            }
            other => other?,
        }
    }
    for &p in &options.propagation {
        mount::mount(None::<&str>, &target, None::<&str>, p, None::<&str>)
            .with_context(|| format!("change the propagation of {}", target.display()))?;
    }
    Ok(())
}

/// A bind mount, then the remount that applies `flags` (a bind ignores them).
fn bind(source: &Path, target: &Path, rec: MsFlags, flags: MsFlags) -> anyhow::Result<()> {
    mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .with_context(|| format!("bind {} on {}", source.display(), target.display()))?;
    let flags = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !flags.is_empty() {
        mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked_flags(target),
            None::<&str>,
        )
        .with_context(|| format!("remount {} with {flags:?}", target.display()))?;
    }
    Ok(())
}

/// The flags a remount of the mount at `path` has to keep (the kernel refuses to clear
/// nosuid, nodev or noexec of a mount inherited into a user namespace).
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    out.set(MsFlags::MS_NOSUID, f.contains(FsFlags::ST_NOSUID));
    out.set(MsFlags::MS_NODEV, f.contains(FsFlags::ST_NODEV));
    out.set(MsFlags::MS_NOEXEC, f.contains(FsFlags::ST_NOEXEC));
    out
}

fn mkdir_all(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("create directory {}", path.display()))
}

fn create_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        mkdir_all(parent)?;
    }
    File::create(path)
        .map(drop)
        .with_context(|| format!("create {}", path.display()))
}

/// One device node in the container's /dev.
struct Device {
    path: PathBuf,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn create_devices(rootfs: &Path, extra: &[LinuxDevice]) -> anyhow::Result<()> {
    let mut devices: Vec<Device> = Vec::new();
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => bail!("device {}: type \"a\" is not a node", d.path().display()),
        };
        let number = |n: i64, what: &str| {
            u64::try_from(n).with_context(|| format!("device {}: {what} {n}", d.path().display()))
        };
        devices.push(Device {
            path: d.path().clone(),
            kind,
            major: number(d.major(), "major")?,
            minor: number(d.minor(), "minor")?,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    for (path, major, minor) in DEFAULT_DEVICES {
        if !devices.iter().any(|d| d.path == Path::new(path)) {
            devices.push(Device {
                path: path.into(),
                kind: SFlag::S_IFCHR,
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            });
        }
    }
    for d in &devices {
        create_device(rootfs, d).with_context(|| format!("create device {}", d.path.display()))?;
    }
    Ok(())
}

fn create_device(rootfs: &Path, d: &Device) -> anyhow::Result<()> {
    let target = resolve_in_root(rootfs, &d.path)?;
    if let Some(parent) = target.parent() {
        mkdir_all(parent)?;
    }
    let _ = fs::remove_file(&target);
    let dev = stat::makedev(d.major, d.minor);
    match stat::mknod(&target, d.kind, Mode::from_bits_truncate(d.mode), dev) {
        Ok(()) => {
            fs::set_permissions(&target, fs::Permissions::from_mode(d.mode))?;
            nix::unistd::chown(
                &target,
                Some(nix::unistd::Uid::from_raw(d.uid)),
                Some(nix::unistd::Gid::from_raw(d.gid)),
            )?;
            Ok(())
        }
        // In a user namespace nodes can't be made: bind the guest's own.
        Err(nix::errno::Errno::EPERM) => {
            create_file(&target)?;
            bind(&d.path, &target, MsFlags::empty(), MsFlags::empty())
        }
        Err(e) => Err(e.into()),
    }
}

/// /dev/ptmx from the container's devpts, and the /proc-backed links programs expect.
fn dev_links(rootfs: &Path) -> anyhow::Result<()> {
    let dev = rootfs.join("dev");
    let mut links = vec![
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let path = dev.join(name);
        if name == "ptmx" {
            let _ = fs::remove_file(&path);
        }
        match symlink(target, &path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("link /dev/{name} to {target}"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Makes `rootfs` the root and detaches the old one (runc's pivot_root(".", ".") way, which
/// needs no directory for the old root inside the new one).
fn pivot_root(rootfs: &Path) -> anyhow::Result<()> {
    let old = File::open("/").context("open /")?;
    let new = File::open(rootfs).with_context(|| format!("open {}", rootfs.display()))?;
    nix::unistd::fchdir(&new).context("enter the new root")?;
    // The bare errno stays the error, so that the caller can tell EINVAL.
    nix::unistd::pivot_root(".", ".")?;
    nix::unistd::fchdir(&old).context("enter the old root")?;
    // The old root must not take the detach back to the guest's mounts.
    mount::mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("make the old root a slave")?;
    mount::umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

/// Without pivot_root: the guest's mounts outside the new root are detached, then the new
/// root is moved over `/` and chrooted into (runc's way with `--no-pivot`). What stays
/// beneath is only the guest's own root directory, which a chroot escape could reach.
fn move_root(rootfs: &Path) -> anyhow::Result<()> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount_path)
        .collect();
    // Deepest first, so that submounts go before what they are mounted on.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let keep =
            point == Path::new("/") || rootfs.starts_with(&point) || point.starts_with(rootfs);
        if !keep {
            let _ = mount::umount2(&point, MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::chdir(rootfs).with_context(|| format!("enter {}", rootfs.display()))?;
    mount::mount(
        Some(rootfs),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .context("move the new root over /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// After the pivot (and the terminal, whose slave gets bound on /dev/console): sysctls,
/// the working directory, readonly and masked paths, and a read-only root.
pub fn finish(spec: &Spec, cwd: &Path) -> anyhow::Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(hostname).context("set the hostname")?;
    }
    if let Some(domain) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        set_domainname(domain)?;
    }
    for (key, value) in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).with_context(|| format!("set sysctl {key}={value}"))?;
    }
    // runc makes a missing working directory (writable roots only, naturally).
    if !cwd.as_os_str().is_empty() && !cwd.exists() {
        let _ = fs::create_dir_all(cwd);
    }
    for path in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        readonly_path(Path::new(path)).with_context(|| format!("make {path} read-only"))?;
    }
    for path in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        mask_path(Path::new(path)).with_context(|| format!("mask {path}"))?;
    }
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            flags | locked_flags(Path::new("/")),
            None::<&str>,
        )
        .context("remount the root read-only")?;
    }
    Ok(())
}

fn set_domainname(domain: &str) -> anyhow::Result<()> {
    // SAFETY: the pointer and length describe a live string for the call.
    let rc = unsafe { libc::setdomainname(domain.as_ptr().cast(), domain.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("set the domain name");
    }
    Ok(())
}

fn readonly_path(path: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount::mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
    mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        flags | locked_flags(path),
        None::<&str>,
    )?;
    Ok(())
}

fn mask_path(path: &Path) -> anyhow::Result<()> {
    match fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => Ok(mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )?),
        Ok(_) => Ok(mount::mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mount_path(r"/run/a\040b\134c"),
            PathBuf::from("/run/a b\\c")
        );
        assert_eq!(unescape_mount_path(r"/x\9"), PathBuf::from(r"/x\9"));
    }
}
