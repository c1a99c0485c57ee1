//! Builds what a husk guest boots from: the initramfs (the agent as `/init`) and ext4
//! images of container root filesystems.
#![warn(missing_docs)]

pub mod cpio;
pub mod ext4;
pub mod initramfs;
mod output;

pub use ext4::{build_ext4, Ext4Error, Ext4Image, Ext4Options};
pub use initramfs::{build_initramfs, InitramfsError};
