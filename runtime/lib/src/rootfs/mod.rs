//! The container's root filesystem, at a cost that does not grow with the image.
//!
//! The root stays on virtio-blk: each read-only layer of the bundle's root becomes an
//! erofs image from the layer cache (built once per layer, then shared by every container
//! that uses it), and the guest stacks them with overlayfs over a writable layer of the
//! container's own, a sparse ext4 scratch disk. When the bundle's root is an overlayfs
//! mount (what containerd, Docker and podman hand over) its `lowerdir=` are the layers,
//! with its upper layer on top when that holds anything. A root that is a plain directory
//! is one layer: its image is cached under the directory's key like any other, so the
//! second container of an unchanged directory costs the key walk, and a changed one gets
//! a new image.
//!
//! Configuration: `HUSK_LAYER_CACHE` (default `/var/lib/husk/layers`),
//! `HUSK_LAYER_CACHE_MIB` (default 10240: the most unused images may take),
//! `HUSK_SCRATCH_MIB` (default 8192: the writable layer's size, sparse).

pub mod overlay;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use husk_rootfs_builder::{create_scratch, CachedLayer, LayerCache};

/// Where the layer cache is unless `HUSK_LAYER_CACHE` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/husk/layers";
/// The cache's size cap unless `HUSK_LAYER_CACHE_MIB` says otherwise.
pub const DEFAULT_CACHE_MIB: u64 = 10 * 1024;
/// The writable layer's size unless `HUSK_SCRATCH_MIB` says otherwise.
pub const DEFAULT_SCRATCH_MIB: u64 = 8 * 1024;
/// The most layer disks a VM gets: what its virtio slots leave after vsock, virtio-fs,
/// the scratch disk and network devices. The bottom layers of a deeper image are
/// squashed into one image (cached like the others).
pub const MAX_LAYERS: usize = 12;
/// The scratch disk's name in the state directory.
pub const SCRATCH_IMAGE: &str = "scratch.img";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The layer cache as configured.
pub fn layer_cache() -> LayerCache {
    let dir = std::env::var_os("HUSK_LAYER_CACHE")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR), PathBuf::from);
    LayerCache::new(
        dir,
        env_u64("HUSK_LAYER_CACHE_MIB", DEFAULT_CACHE_MIB) << 20,
    )
}

/// A container's root, ready to attach: layer images (held open and locked while this
/// lives), topmost first, and the scratch disk.
#[derive(Debug)]
pub struct RootLayers {
    /// The read-only layers, topmost first.
    pub layers: Vec<CachedLayer>,
    /// The writable layer's disk.
    pub scratch: Option<PathBuf>,
    /// overlayfs options to repeat in the guest.
    pub overlay_options: Vec<String>,
}

impl RootLayers {
    /// How many layer images this create had to build.
    pub fn built(&self) -> usize {
        self.layers.iter().filter(|l| l.built).count()
    }
}

/// The directories that are `rootfs`'s layers, topmost first, and the overlay options.
pub fn layer_dirs(rootfs: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mounts = crate::mounts::mountinfo()?;
    let Some(ov) = overlay::layers_at(&mounts, rootfs) else {
        return Ok((vec![rootfs.to_owned()], Vec::new()));
    };
    // Docker and podman name layers through short symlinks (`l/ABC -> ../<id>/diff`):
    // the key and the image are of the directory itself.
    let real = |p: PathBuf| {
        std::fs::canonicalize(&p).with_context(|| format!("resolving layer {}", p.display()))
    };
    let mut dirs = Vec::new();
    if let Some(upper) = ov.upper.map(real).transpose()? {
        let empty = std::fs::read_dir(&upper)
            .with_context(|| format!("reading {}", upper.display()))?
            .next()
            .is_none();
        if !empty {
            dirs.push(upper);
        }
    }
    for lower in ov.lowers {
        dirs.push(real(lower)?);
    }
    Ok((dirs, ov.options))
}

/// Gets (or builds) the images of `rootfs`'s layers and makes the scratch disk in
/// `state_dir`. A read-only root gets one too: as with runc, the mount points config.json
/// needs are made in the root before it turns read-only, and they are written back.
pub fn prepare(rootfs: &Path, state_dir: &Path) -> Result<RootLayers> {
    let started = Instant::now();
    let (dirs, overlay_options) = layer_dirs(rootfs)?;
    let cache = layer_cache();
    let mut layers = Vec::new();
    let (separate, squashed) = dirs.split_at(dirs.len().min(MAX_LAYERS - 1));
    let squashed = if squashed.len() > 1 {
        squashed
    } else {
        // One left over fits in the last slot as it is.
        &[][..]
    };
    let separate = if squashed.is_empty() {
        &dirs[..]
    } else {
        separate
    };
    for dir in separate {
        let layer = cache
            .get(dir)
            .with_context(|| format!("preparing the root layer {}", dir.display()))?;
        tracing::debug!(
            layer = %dir.display(),
            key = %layer.key,
            built = layer.built,
            key_ms = layer.key_ms,
            build_ms = layer.build_ms,
            "root layer"
        );
        layers.push(layer);
    }
    if !squashed.is_empty() {
        let layer = cache
            .get_squashed(squashed)
            .with_context(|| format!("squashing the bottom {} root layers", squashed.len()))?;
        tracing::debug!(
            layers = squashed.len(),
            key = %layer.key,
            built = layer.built,
            "squashed root layers"
        );
        layers.push(layer);
    }
    let scratch = {
        let path = state_dir.join(SCRATCH_IMAGE);
        create_scratch(&path, env_u64("HUSK_SCRATCH_MIB", DEFAULT_SCRATCH_MIB))
            .context("creating the writable layer's disk")?;
        Some(path)
    };
    let root = RootLayers {
        layers,
        scratch,
        overlay_options,
    };
    tracing::info!(
        layers = root.layers.len(),
        built = root.built(),
        ms = started.elapsed().as_millis() as u64,
        "root filesystem ready"
    );
    Ok(root)
}
