//! Serving one FUSE request from a descriptor chain.
//!
//! fuse-backend-rs's server parses and bounds the request itself (a body larger than its
//! 1 MiB buffer is refused before anything is allocated, strings must be NUL-terminated,
//! reads and writes are limited by the chain's buffers). This layer adds what a device
//! must: a chain whose buffers lie outside guest memory gets nothing, a header whose
//! length disagrees with the chain gets an error reply, and a request the server could
//! not even answer gets `EIO` rather than a reply the driver would read garbage from.

use std::io::Write;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use tracing::debug;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::confined::ShareFs;

/// Opcodes the guest sends without expecting an answer.
fn is_one_way(opcode: u32) -> bool {
    opcode == Opcode::Forget as u32
        || opcode == Opcode::BatchForget as u32
        || opcode == Opcode::Interrupt as u32
        || opcode == Opcode::Destroy as u32
}

/// Writes a bare error reply for request `unique`; returns the bytes written.
fn reply_error(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    unique: u64,
    errno: i32,
) -> u32 {
    let Ok(mut writer) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    let out = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    match writer.write_all(out.as_slice()) {
        Ok(()) => size_of::<OutHeader>() as u32,
        Err(_) => 0,
    }
}

/// Serves the FUSE request in `chain` and returns how many bytes were written into guest
/// memory (the value for the used ring).
pub fn handle_chain(
    server: &Server<ShareFs>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            debug!("virtio-fs: unreadable descriptor chain: {e}");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            debug!("virtio-fs: unwritable descriptor chain: {e}");
            return 0;
        }
    };
    let header: InHeader = match reader.clone().read_obj() {
        Ok(h) => h,
        Err(_) => {
            debug!("virtio-fs: request shorter than its header");
            return reply_error(mem, chain, 0, libc::EINVAL);
        }
    };
    let len = header.len as usize;
    if len < size_of::<InHeader>() || len > reader.available_bytes() {
        debug!(
            opcode = header.opcode,
            len,
            available = reader.available_bytes(),
            "virtio-fs: request length disagrees with its buffers"
        );
        if is_one_way(header.opcode) {
            return 0;
        }
        return reply_error(mem, chain, header.unique, libc::EINVAL);
    }
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(e) => {
            debug!(opcode = header.opcode, "virtio-fs: request failed: {e}");
            if is_one_way(header.opcode) {
                0
            } else {
                reply_error(mem, chain, header.unique, libc::EIO)
            }
        }
    }
}
