//! A container's root filesystem in the guest: one disk mounted whole, read-only layer
//! disks (erofs) stacked by overlayfs over a writable layer on a scratch disk, or (a pod's
//! later containers) a directory of the shared directory bound in place.
//!
//! Everything lives under the container's directory: `rootfs` (what the container gets),
//! `l0`, `l1`, ... (the layers, topmost first, as overlayfs's `lowerdir` lists them) and
//! `scratch` (holding `upper/` and `work/`). overlayfs is mounted from inside that
//! directory with relative paths, so that a container id of 1024 characters and a hundred
//! layers still fit in the one page mount options may take.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use husk_protocol::{ContainerRoot, LayeredRoot, RootDisk};
use nix::mount::{self, MntFlags, MsFlags};

/// overlayfs options of the engine's mount the guest may repeat.
const OVERLAY_OPTIONS: [&str; 1] = ["userxattr"];
/// What husk's writable layer never uses: with them, files in the upper layer could be
/// metadata-only or renamed directories pointers, which the write-back cannot follow.
const OVERLAY_FIXED: &str = "redirect_dir=off,metacopy=off,index=off";

/// A mounted root: what to unmount, in order, and where its writable layer is.
#[derive(Debug, Default)]
pub struct MountedRoot {
    /// Mounted beneath the root and unmounted after it (layers, scratch), in mount order.
    pub parts: Vec<PathBuf>,
    /// The writable layer's `upper/`, for `CommitRoot`.
    pub upper: Option<PathBuf>,
    /// The overlay's extra options (`userxattr` decides where opaque markers are).
    pub overlay_options: Vec<String>,
    /// Where `CommitRoot` writes the changes.
    pub commit_to: Option<PathBuf>,
}

fn flags(readonly: bool) -> MsFlags {
    if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    }
}

fn mount_disk(
    disk: &RootDisk,
    at: &Path,
    readonly: bool,
    data: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("create {}", at.display()))?;
    mount::mount(
        Some(disk.device.as_str()),
        at,
        Some(disk.fstype.as_str()),
        flags(readonly),
        data,
    )
    .with_context(|| {
        format!(
            "mount {} ({}) at {}",
            disk.device,
            disk.fstype,
            at.display()
        )
    })
}

/// Mounts `root` at `rootfs` (in the container directory `dir`); `readonly` applies to a
/// single-disk root (a layered root without a scratch disk is read-only anyway, one with
/// a scratch disk is made read-only by the container's setup, after its mounts). On
/// failure everything mounted so far is unmounted again.
pub fn mount_root(
    root: &ContainerRoot,
    dir: &Path,
    rootfs: &Path,
    readonly: bool,
) -> anyhow::Result<MountedRoot> {
    match root {
        ContainerRoot::Disk(disk) => {
            mount_disk(disk, rootfs, readonly || disk.readonly, None)?;
            Ok(MountedRoot::default())
        }
        ContainerRoot::Shared { path } => {
            bind_shared(Path::new(path), rootfs, readonly)?;
            Ok(MountedRoot::default())
        }
        ContainerRoot::Layers(layers) => {
            let mut mounted = MountedRoot::default();
            match mount_layers(layers, dir, rootfs, &mut mounted) {
                Ok(()) => Ok(mounted),
                Err(e) => {
                    unmount_parts(&mounted.parts);
                    Err(e)
                }
            }
        }
    }
}

/// Binds a root from the shared directory (virtio-fs) at `rootfs`; the host's view of it
/// is the engine's own mount, so writes land there as they would with runc.
fn bind_shared(path: &Path, rootfs: &Path, readonly: bool) -> anyhow::Result<()> {
    if !path.starts_with(husk_protocol::SHARED_DIR)
        || path.components().any(|c| c.as_os_str() == "..")
    {
        bail!(
            "a shared root must be under {}, not {}",
            husk_protocol::SHARED_DIR,
            path.display()
        );
    }
    std::fs::create_dir_all(rootfs).with_context(|| format!("create {}", rootfs.display()))?;
    bind_root(path, rootfs, readonly)
}

/// Bind-mounts `source` at `rootfs`, read-only if asked.
fn bind_root(source: &Path, rootfs: &Path, readonly: bool) -> anyhow::Result<()> {
    mount::mount(
        Some(source),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind {} at {}", source.display(), rootfs.display()))?;
    if readonly {
        mount::mount(
            None::<&str>,
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("make {} read-only", rootfs.display()))?;
    }
    Ok(())
}

fn mount_layers(
    layers: &LayeredRoot,
    dir: &Path,
    rootfs: &Path,
    mounted: &mut MountedRoot,
) -> anyhow::Result<()> {
    if layers.lowers.is_empty() {
        bail!("a layered root needs at least one layer");
    }
    for option in &layers.overlay_options {
        if !OVERLAY_OPTIONS.contains(&option.as_str()) {
            bail!("overlayfs option {option:?} is not one husk passes on");
        }
    }
    let mut lowerdirs = Vec::new();
    for (i, lower) in layers.lowers.iter().enumerate() {
        let name = format!("l{i}");
        mount_disk(lower, &dir.join(&name), true, None)?;
        mounted.parts.push(dir.join(&name));
        lowerdirs.push(name);
    }
    let scratch = match &layers.scratch {
        // With a read-only root the upper layer takes only the mount points the spec
        // needs; the container's setup makes the root read-only after its mounts.
        Some(disk) => {
            let at = dir.join("scratch");
            // The scratch disk is sparse: its inode tables read as zeroes already, and
            // zeroing them for real would write (and allocate) them on the host.
            let data = (disk.fstype == "ext4").then_some("noinit_itable");
            mount_disk(disk, &at, false, data)?;
            mounted.parts.push(at.clone());
            for sub in ["upper", "work"] {
                std::fs::create_dir_all(at.join(sub))
                    .with_context(|| format!("create {}", at.join(sub).display()))?;
            }
            Some(at)
        }
        None => None,
    };
    std::fs::create_dir_all(rootfs).with_context(|| format!("create {}", rootfs.display()))?;
    if scratch.is_none() && lowerdirs.len() == 1 {
        // overlayfs wants two layers without an upper one; one layer is a bind.
        return bind_root(&dir.join(&lowerdirs[0]), rootfs, true);
    }
    let mut data = format!("lowerdir={},{OVERLAY_FIXED}", lowerdirs.join(":"));
    if scratch.is_some() {
        data.push_str(",upperdir=scratch/upper,workdir=scratch/work");
    }
    for option in &layers.overlay_options {
        data.push(',');
        data.push_str(option);
    }
    let rootfs_name = rootfs
        .strip_prefix(dir)
        .with_context(|| format!("{} is not in {}", rootfs.display(), dir.display()))?
        .to_owned();
    mount_overlay(dir, &rootfs_name, &data, flags(scratch.is_none()))
        .with_context(|| format!("mount overlayfs ({data}) at {}", rootfs.display()))?;
    mounted.upper = scratch.map(|s| s.join("upper"));
    mounted.overlay_options = layers.overlay_options.clone();
    mounted.commit_to = layers.commit_to.as_ref().map(PathBuf::from);
    Ok(())
}

/// Mounts overlayfs at `dir/target` with `data`'s relative paths resolved in `dir`: on a
/// thread of its own whose working directory is `dir` (the agent's others keep theirs).
fn mount_overlay(dir: &Path, target: &Path, data: &str, flags: MsFlags) -> anyhow::Result<()> {
    let (dir, target, data) = (dir.to_owned(), target.to_owned(), data.to_owned());
    std::thread::scope(|s| {
        s.spawn(move || -> anyhow::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .context("unshare the working directory")?;
            nix::unistd::chdir(&dir).with_context(|| format!("enter {}", dir.display()))?;
            mount::mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                flags,
                Some(data.as_str()),
            )?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| bail!("the overlay mount thread panicked"))
    })
}

/// Unmounts `parts` (last mounted first), detaching what is busy.
pub fn unmount_parts(parts: &[PathBuf]) {
    for p in parts.iter().rev() {
        if let Err(e) = mount::umount2(p, MntFlags::empty()) {
            if e != nix::errno::Errno::EINVAL {
                diag!("unmount {}: {e}; detaching it", p.display());
                let _ = mount::umount2(p, MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_overlay_options_beyond_the_known_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layers = LayeredRoot {
            lowers: vec![RootDisk {
                device: "/dev/nonexistent".into(),
                fstype: "erofs".into(),
                readonly: true,
            }],
            scratch: None,
            overlay_options: vec!["upperdir=/etc".into()],
            commit_to: None,
        };
        let e = mount_root(
            &ContainerRoot::Layers(layers),
            dir.path(),
            &dir.path().join("rootfs"),
            false,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("upperdir=/etc"), "{e:#}");
    }

    #[test]
    fn a_layered_root_needs_a_layer() {
        let dir = tempfile::tempdir().unwrap();
        let layers = LayeredRoot {
            lowers: Vec::new(),
            scratch: None,
            overlay_options: Vec::new(),
            commit_to: None,
        };
        assert!(mount_root(
            &ContainerRoot::Layers(layers),
            dir.path(),
            &dir.path().join("rootfs"),
            true
        )
        .is_err());
    }
}
