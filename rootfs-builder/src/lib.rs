//! Builds what a husk guest boots from: the initramfs (the agent as `/init`), ext4
//! images, and read-only erofs images of container root filesystem layers, cached by
//! [`layers::LayerCache`].
#![warn(missing_docs)]

pub mod cpio;
pub mod erofs;
pub mod ext4;
pub mod initramfs;
pub mod layers;
mod output;

pub use erofs::{build_erofs, build_erofs_with, ErofsError};
pub use ext4::{build_ext4, create_scratch, Ext4Error, Ext4Image, Ext4Options};
pub use initramfs::{build_initramfs, InitramfsError};
pub use layers::{layer_key, CachedLayer, LayerCache, LayerError};
