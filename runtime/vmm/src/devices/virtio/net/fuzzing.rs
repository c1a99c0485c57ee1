//! The guest as a fuzzer: arbitrary guest memory (descriptor tables, rings, buffers),
//! negotiated features and frames from the tap, against the virtio-net device. The device
//! must neither panic nor hang, and never touch memory outside the guest's (vm-memory
//! checks every access). Used by the cargo-fuzz target `virtio_net` (fuzz/) and by a unit
//! test that replays every stored input (fuzz/corpus/virtio_net).
//!
//! Input: 8 bytes of acked features, 2 bytes choosing the queue sizes, then up to `MEM`
//! bytes of guest memory image; frames for the tap follow a `0xff 0xfe` marker, each
//! prefixed by a 16-bit length.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tap::FrameIo;
use super::{Net, NetParams};
use crate::devices::virtio::{ActivateContext, EventRegistrar, Interrupt, VirtioDevice};

const MEM: usize = 64 * 1024;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x3000;

/// The tap stand-in: one end of a datagram socket pair.
struct Sock(OwnedFd);
impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
impl FrameIo for Sock {
    fn set_offload(&self, _tun_flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// A ready queue of `size` entries whose rings start at `ring`.
fn queue(ring: u64, size: u16) -> Queue {
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(ring as u32), Some(0));
    q.set_avail_ring_address(Some((ring + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((ring + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q
}

/// Drives the device with one fuzz input (see the module documentation); returns the
/// frames it moved (to the tap, into the guest).
pub fn run(data: &[u8]) -> (u64, u64) {
    if data.len() < 10 {
        return (0, 0);
    }
    let features = u64::from_le_bytes(data[..8].try_into().unwrap());
    let size = |b: u8| 1u16 << (b % 9);
    let (rx_size, tx_size) = (size(data[8]), size(data[9]));
    let rest = &data[10..];
    let (image, frames) = match rest.windows(2).position(|w| w == [0xff, 0xfe]) {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&image[..image.len().min(MEM)], GuestAddress(0))
        .unwrap();

    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: socketpair just created both descriptors for us.
    let (dev_end, host_end) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let (mut dev, _handle) = Net::new(NetParams {
        mac: [2, 0, 0, 0, 0, 1],
        mtu: Some(1500),
        backend: Some(Box::new(Sock(dev_end))),
    })
    .unwrap();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    dev.set_acked_features(features & dev.avail_features());
    let mut queues = vec![queue(RX_RING, rx_size), queue(TX_RING, tx_size)];
    let event_idx = features & (1 << 29) != 0;
    for q in &mut queues {
        q.set_event_idx(event_idx);
    }
    if queues.iter().any(|q| !q.is_valid(&mem)) {
        return (0, 0);
    }
    let activated = dev.activate(ActivateContext {
        mem,
        queues,
        interrupt,
        events: EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0),
    });
    if activated.is_err() {
        return (0, 0);
    }
    let mut rest = frames;
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        // SAFETY: writes `n` bytes from a live slice to our socket.
        unsafe { libc::write(host_end.as_raw_fd(), rest[2..].as_ptr().cast(), n) };
        rest = &rest[2 + n..];
    }
    for _ in 0..4 {
        dev.queue_notify(1);
        dev.queue_notify(0);
        dev.handle_event(0, EventSet::IN);
        dev.handle_event(2, EventSet::IN);
    }
    let mut buf = vec![0u8; 70_000];
    // SAFETY: reads into a live buffer of its length.
    while unsafe { libc::read(host_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    let stats = dev.stats();
    (
        super::NetStats::get(&stats.tx_frames),
        super::NetStats::get(&stats.rx_frames),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_stored_fuzz_input_runs_cleanly() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_net");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let moved = super::run(&std::fs::read(&path).unwrap());
            if path.ends_with("seed-one-frame-each-way") {
                assert_eq!(moved, (1, 1), "the well-formed seed moves a frame each way");
            }
            n += 1;
        }
        assert!(n > 0, "no stored inputs in {}", dir.display());
    }
}
