//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz), kept here so that unit tests
//! run the same code on the stored corpora and on every crash found.
//!
//! Each takes arbitrary bytes and plays a hostile guest driver: the bytes become guest
//! memory (descriptor tables, rings, buffers) and register accesses, and the device
//! models must neither panic nor hang on any of it. Queues sit at fixed guest addresses;
//! a well-behaved setup sequence brings the device to DRIVER_OK first, so the fuzzer
//! spends its time on what the device does with the queues.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::{status, MmioTransport};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{EventRegistrar, Interrupt, VirtioDevice};

/// Guest memory of every fuzz case.
pub const MEM_SIZE: usize = 0x10000;
/// Guest address of queue `q`'s descriptor table; its avail ring is 0x100 above it and
/// its used ring 0x200 above it.
pub const fn queue_base(q: u64) -> u64 {
    q * 0x400
}
/// Where the input's bytes past the queue area land (buffers).
pub const DATA_BASE: u64 = 0x1000;
/// Entries of each fuzzed queue.
pub const QUEUE_SIZE: u32 = 16;

const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;

fn scratch_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
}

/// A 64 KiB disk image shared by the cases of this process.
fn disk_image() -> PathBuf {
    let path = scratch_dir().path().join("disk.img");
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 64 << 10]).expect("a disk image");
    }
    path
}

fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("within memory");
    mem
}

fn transport(device: Box<dyn VirtioDevice>, mem: &GuestMemoryMmap) -> MmioTransport {
    let irq = Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ));
    let events = EventRegistrar::new(Arc::new(Epoll::new().expect("epoll")), 0);
    MmioTransport::new(device, mem.clone(), irq, events)
}

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// A correct driver's setup: features (VERSION_1 plus `features_lo`), `queues` queues at
/// [`queue_base`], DRIVER_OK.
fn bring_up(t: &mut MmioTransport, queues: u64, features_lo: u32) {
    w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, features_lo);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, 1);
    w(
        t,
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..queues {
        let base = queue_base(q) as u32;
        w(t, REG_QUEUE_SEL, q as u32);
        w(t, REG_QUEUE_NUM, QUEUE_SIZE);
        w(t, REG_QUEUE_DESC_LOW, base);
        w(t, REG_QUEUE_AVAIL_LOW, base + 0x100);
        w(t, REG_QUEUE_USED_LOW, base + 0x200);
        w(t, REG_QUEUE_READY, 1);
    }
    w(
        t,
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
}

/// virtio-mmio: the first 4 KiB of `data` are guest memory, the rest register accesses
/// of 8 bytes each (flags: bit 0 write, bits 1-2 width 1/2/4/8; a 12-bit offset; a
/// value), against a virtio-blk device.
pub fn mmio(data: &[u8]) {
    let (memory_part, ops) = data.split_at(data.len().min(DATA_BASE as usize));
    let mem = memory(memory_part);
    let Ok(block) = Block::new(&disk_image(), false, "fuzz") else {
        return;
    };
    let mut t = transport(Box::new(block), &mem);
    for op in ops.chunks_exact(8) {
        let width = 1usize << ((op[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0xfff);
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        if op[0] & 1 == 1 {
            t.write(offset, &bytes[..width]);
        } else {
            t.read(offset, &mut bytes[..width]);
        }
        if op[3] & 1 == 1 {
            // A kick through the ioeventfd path too.
            t.queue_notify(usize::from(op[3] >> 1));
        }
    }
}

/// virtio-blk: `data` is guest memory holding queue 0 (see [`queue_base`]) and the
/// buffers; the device is brought up and kicked twice.
pub fn blk(data: &[u8]) {
    let mem = memory(data);
    let Ok(block) = Block::new(&disk_image(), false, "fuzz") else {
        return;
    };
    let features = data.get(0x3ff).copied().map_or(0, u32::from) << 24;
    let mut t = transport(Box::new(block), &mem);
    bring_up(&mut t, 1, features & (1 << 29)); // maybe EVENT_IDX
    t.queue_notify(0);
    w(&mut t, REG_QUEUE_NOTIFY, 0);
}

/// virtio-vsock: `data` is guest memory holding the rx, tx and event queues (see
/// [`queue_base`]) and the buffers; the device is brought up, the tx queue kicked, then
/// the rx queue, twice over.
pub fn vsock(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let mem = memory(data);
    let uds = scratch_dir().path().join(format!(
        "v{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let Ok(dev) = Vsock::new(3, uds) else {
        return;
    };
    let mut t = transport(Box::new(dev), &mem);
    bring_up(&mut t, 3, 0);
    for _ in 0..2 {
        t.queue_notify(1);
        t.queue_notify(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input stored under fuzz/corpus/<target>/ (seeds and crashes found).
    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read(e.path()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    #[test]
    fn the_stored_corpora_replay_without_a_panic() {
        for (target, run) in [("mmio", mmio as fn(&[u8])), ("blk", blk), ("vsock", vsock)] {
            let inputs = corpus(target);
            assert!(!inputs.is_empty(), "fuzz/corpus/{target} is empty");
            for (name, input) in inputs {
                let r = std::panic::catch_unwind(|| run(&input));
                assert!(r.is_ok(), "{target}/{name} panicked");
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs_are_fine() {
        for input in [&b""[..], b"\x00", &[0xff; 17]] {
            mmio(input);
            blk(input);
            vsock(input);
        }
    }
}
