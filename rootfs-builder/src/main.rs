//! `husk-rootfs-builder`: builds the guest initramfs, container root images and layer
//! images in a layer cache.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use husk_rootfs_builder::{build_ext4, build_initramfs, Ext4Options, LayerCache};

/// Builds husk's guest initramfs and turns a bundle rootfs into a block image.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a newc cpio initramfs with the agent as /init.
    Initramfs {
        /// The static husk-agent binary.
        #[arg(long)]
        agent: PathBuf,
        /// The archive to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make an ext4 image from a directory (needs e2fsprogs' mkfs.ext4).
    Ext4 {
        /// Directory to copy into the image.
        #[arg(long)]
        from: PathBuf,
        /// The image to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// Image size; default: the directory's disk usage * 1.3 + 16 MiB, at least 32.
        #[arg(long, value_name = "N")]
        size_mib: Option<u64>,
        /// Tune for read-only mounting: no journal, no reserved blocks.
        #[arg(long)]
        readonly_friendly: bool,
    },
    /// Put a root filesystem layer's erofs image in a layer cache (what `husk create`
    /// does for each layer; this pre-warms the cache). Prints the image's path.
    Layer {
        /// The layer directory.
        #[arg(long)]
        from: PathBuf,
        /// The cache directory (husk's default: /var/lib/husk/layers).
        #[arg(long)]
        cache: PathBuf,
        /// The cache's size cap.
        #[arg(long, default_value_t = 10240)]
        cache_mib: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Initramfs { agent, out } => {
            let size = build_initramfs(&agent, &out).context("build the initramfs")?;
            eprintln!("initramfs: {} bytes", size);
            println!("{}", out.display());
        }
        Cmd::Ext4 {
            from,
            out,
            size_mib,
            readonly_friendly,
        } => {
            let opts = Ext4Options {
                from,
                out,
                size_mib,
                readonly_friendly,
            };
            let image = build_ext4(&opts).context("build the ext4 image")?;
            eprintln!("ext4 image: {} MiB", image.size_mib);
            println!("{}", image.path.display());
        }
        Cmd::Layer {
            from,
            cache,
            cache_mib,
        } => {
            let layer = LayerCache::new(cache, cache_mib << 20)
                .get(&from)
                .context("build the layer image")?;
            eprintln!(
                "layer {}: {} (key {} ms, build {} ms)",
                layer.key,
                if layer.built { "built" } else { "cached" },
                layer.key_ms,
                layer.build_ms
            );
            println!("{}", layer.path.display());
        }
    }
    Ok(())
}
