//! `containerd-shim-husk-v2`: husk's containerd shim (task API v2, on the
//! `containerd-shim` crate). containerd runs it for `runtime_type =
//! "io.containerd.husk.v2"` (a RuntimeClass handler under Kubernetes) or `ctr run
//! --runtime io.containerd.husk.v2`.
//!
//! A thin binary over the runtime library (`husk_runtime`), as the `husk` CLI is: each
//! container boots its own microVM through the same operations the CLI runs (the sandbox
//! process is `husk sandbox`, from the `husk` binary installed beside this one). The
//! shim mounts the rootfs containerd hands it, connects the container's stdio to
//! containerd's fifos, reaps the sandbox and exec processes and publishes the task
//! events containerd expects.

mod error;
mod io;
mod process;
mod rootfs;
mod service;
mod stats;
mod task;

fn main() {
    // The detached clean-up `delete` starts (containerd's clean-up after a dead shim).
    if let Some(status) = service::finish_delete() {
        std::process::exit(status);
    }
    containerd_shim::run::<service::HuskShim>("io.containerd.husk.v2", None);
}
