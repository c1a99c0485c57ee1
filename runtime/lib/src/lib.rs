//! husk's runtime library: everything between an OCI client and a container's microVM,
//! shared by the runc-compatible `husk` CLI and the containerd shim (the shape of youki's
//! libcontainer under its CLI).
//!
//! - [`bundle`]: the OCI bundle (config.json, rootfs, mounts) as husk reads it.
//! - [`state`]: a container's state directory, lock and state file (a leaf).
//! - [`container`]: the operations (create, start, kill, pause, exec, delete, ...), one
//!   file each.
//! - [`sandbox`]: the sandbox process that holds a container's VM (or, in tests, a host
//!   agent process), and [`control`], the socket the operations reach it through.
//! - [`agent`]: reaching the guest agent; [`stdio`]: a guest process's stdio on the host.
//! - [`rootfs`]: the container's root filesystem (cached read-only layers, a scratch disk);
//!   [`shares`]: host directories and files shared with the guest; [`mounts`]: the host's
//!   mount table and removing a directory without reaching through a mount.
//! - [`network`]: the container's network namespace, taps and tc redirects; [`hooks`]: OCI
//!   hooks on the host; [`fdpass`]: frames that carry descriptors (taps to the sandbox).

pub mod agent;
pub mod bundle;
pub mod container;
pub mod control;
pub mod fdpass;
pub mod globals;
pub mod hooks;
pub mod logging;
pub mod mounts;
pub mod network;
pub mod pod;
pub mod procfs;
pub mod rootfs;
pub mod sandbox;
pub mod shares;
pub mod signal;
pub mod sockdir;
pub mod state;
pub mod stdio;
pub mod timefmt;

pub use globals::Globals;
