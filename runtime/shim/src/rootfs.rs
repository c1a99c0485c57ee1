//! The container's root filesystem as containerd hands it to a shim: a list of mounts
//! (the snapshotter's overlay, usually) that the shim mounts at `<bundle>/rootfs` before
//! creating the container, as the runc shim does, and unmounts when the task is deleted.

use std::path::Path;

use anyhow::{Context, Result};
use containerd_shim::protos::types::mount::Mount;

/// Mounts `mounts` on `<bundle>/rootfs`; false if there were none (the bundle brought
/// its own rootfs).
pub fn mount(bundle: &Path, mounts: &[Mount]) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, &target) {
            if i > 0 {
                unmount(bundle);
            }
            return Err(anyhow::anyhow!("mounting the container's rootfs: {e}"));
        }
    }
    Ok(true)
}

/// Unmounts everything at `<bundle>/rootfs`; errors are logged (the task is going away).
pub fn unmount(bundle: &Path) {
    let target = bundle.join("rootfs");
    let flags = libc::MNT_DETACH;
    if let Err(e) = containerd_shim::mount::umount_recursive(target.to_str(), flags) {
        log::warn!("unmounting {}: {e}", target.display());
    }
}
