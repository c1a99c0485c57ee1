//! Block devices mounted as process roots, one mount per device, reused by later execs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context};
use husk_protocol::RootDisk;
use nix::mount::{self, MntFlags, MsFlags};

/// Where roots are mounted in the guest.
pub const DEFAULT_ROOTS_DIR: &str = "/run/husk/roots";

/// What a process in a root expects besides the disk's own files: the guest's /proc,
/// /sys and /dev (with /dev/pts and /dev/shm), and a tmpfs on /tmp, so that a read-only
/// root still has scratch space and large temporary files use guest memory rather than
/// filling the image.
const SYSTEM_MOUNTS: [(&str, SystemSource); 4] = [
    ("proc", SystemSource::Bind("/proc")),
    ("sys", SystemSource::Bind("/sys")),
    ("dev", SystemSource::Bind("/dev")),
    ("tmp", SystemSource::Tmpfs),
];

#[derive(Debug, Clone, Copy)]
enum SystemSource {
    /// A recursive bind of this guest directory.
    Bind(&'static str),
    Tmpfs,
}

#[derive(Debug)]
struct Mounted {
    path: PathBuf,
    fstype: String,
    readonly: bool,
    /// Mounted on top of the root, in mount order.
    submounts: Vec<PathBuf>,
}

/// The roots this agent mounted.
#[derive(Debug)]
pub struct Roots {
    dir: PathBuf,
    /// By device path; the lock is held while mounting so a device is mounted only once.
    mounted: Mutex<HashMap<String, Mounted>>,
}

impl Roots {
    /// Roots will be mounted under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Roots {
            dir,
            mounted: Mutex::new(HashMap::new()),
        }
    }

    /// Returns where `disk` is mounted, mounting it (and the system mounts on it) first if
    /// this is its first use.
    pub fn mount(&self, disk: &RootDisk) -> anyhow::Result<PathBuf> {
        let mut mounted = self.mounted.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = mounted.get(&disk.device) {
            if m.fstype != disk.fstype || m.readonly != disk.readonly {
                bail!(
                    "{} is already mounted as {} ({}), not as {} ({})",
                    disk.device,
                    m.fstype,
                    access(m.readonly),
                    disk.fstype,
                    access(disk.readonly)
                );
            }
            return Ok(m.path.clone());
        }
        let path = self.dir.join(mount_point_name(&disk.device)?);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("create mount point {}", path.display()))?;
        let flags = if disk.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mount::mount(
            Some(disk.device.as_str()),
            &path,
            Some(disk.fstype.as_str()),
            flags,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mount {} ({}, {}) at {}",
                disk.device,
                disk.fstype,
                access(disk.readonly),
                path.display()
            )
        })?;
        let mut root = Mounted {
            path: path.clone(),
            fstype: disk.fstype.clone(),
            readonly: disk.readonly,
            submounts: Vec::new(),
        };
        if let Err(e) = mount_system(&mut root) {
            unmount(&disk.device, root);
            return Err(e);
        }
        diag!("mounted {} at {}", disk.device, path.display());
        mounted.insert(disk.device.clone(), root);
        Ok(path)
    }

    /// Unmounts every root (at shutdown, after the processes using them are gone).
    pub fn unmount_all(&self) {
        let mut mounted = self.mounted.lock().unwrap_or_else(PoisonError::into_inner);
        for (device, root) in mounted.drain() {
            unmount(&device, root);
        }
    }
}

fn mount_system(root: &mut Mounted) -> anyhow::Result<()> {
    for (dir, source) in SYSTEM_MOUNTS {
        let target = root.path.join(dir);
        if !target.is_dir() {
            // Nothing to mount on, and a read-only root cannot get the directory.
            diag!(
                "root {} has no /{dir}; not mounting it",
                root.path.display()
            );
            continue;
        }
        let result = match source {
            SystemSource::Bind(from) => mount::mount(
                Some(from),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|()| {
                root.submounts.push(target.clone());
                // Were the guest's mounts shared, unmounting these copies later would
                // propagate to (and unmount) the originals.
                mount::mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None::<&str>,
                )
            })
            .with_context(|| format!("bind {from} at {}", target.display())),
            SystemSource::Tmpfs => mount::mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            )
            .map(|()| root.submounts.push(target.clone()))
            .with_context(|| format!("mount a tmpfs at {}", target.display())),
        };
        result?;
    }
    Ok(())
}

fn unmount(device: &str, root: Mounted) {
    for sub in root.submounts.iter().rev() {
        // Detach: the /dev bind carries /dev/pts and /dev/shm beneath it.
        if let Err(e) = mount::umount2(sub, MntFlags::MNT_DETACH) {
            diag!("unmount {}: {e}", sub.display());
        }
    }
    if let Err(e) = mount::umount2(&root.path, MntFlags::empty()) {
        diag!("unmount {device} at {}: {e}", root.path.display());
        // Still busy: at least make sure nothing more is written to the disk.
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount::mount(
            None::<&str>,
            &root.path,
            None::<&str>,
            remount,
            None::<&str>,
        ) {
            diag!("remount {device} read-only: {e}");
        }
    }
}

fn access(readonly: bool) -> &'static str {
    if readonly {
        "read-only"
    } else {
        "read-write"
    }
}

/// `/dev/vda` -> `vda`, `/dev/disk/by-id/x` -> `disk_by-id_x`.
fn mount_point_name(device: &str) -> anyhow::Result<String> {
    let path = Path::new(device);
    let rel = path
        .strip_prefix("/dev")
        .ok()
        .filter(|rel| {
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                && rel.components().next().is_some()
        })
        .with_context(|| format!("root device {device:?} is not a path under /dev"))?;
    Ok(rel.to_string_lossy().replace('/', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_names_flatten_device_paths() {
        assert_eq!(mount_point_name("/dev/vda").unwrap(), "vda");
        assert_eq!(
            mount_point_name("/dev/disk/by-id/x").unwrap(),
            "disk_by-id_x"
        );
    }

    #[test]
    fn devices_outside_dev_are_refused() {
        for bad in ["vda", "/dev", "/dev/", "/dev/../etc", "/tmp/vda", ""] {
            assert!(mount_point_name(bad).is_err(), "{bad:?}");
        }
    }
}
