//! The test guest for virtio-net: the shared test driver on both queues, a real epoll
//! standing in for the device thread, and a `SOCK_SEQPACKET` socket pair standing in for
//! the tap (one frame per read or write, as on a tap).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::super::tap::{FrameIo, VNET_HDR_LEN};
use super::super::{Net, NetHandle, NetParams};
pub use crate::devices::virtio::test_driver::{Desc, Driver, QUEUE_SIZE};
use crate::devices::virtio::{
    split_token, ActivateContext, EventRegistrar, Interrupt, VirtioDevice, DEVICE_TOKEN_BASE,
};

pub const MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x73, 0x6b, 0x01];
/// Every descriptor index owns a buffer this big.
pub const SLOT: u64 = 0x1_1000;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = RX_BUFS + SLOT * QUEUE_SIZE as u64;
pub const MEM_SIZE: u64 = TX_BUFS + SLOT * QUEUE_SIZE as u64;
/// Far outside the test guest's memory.
pub const NOWHERE: u64 = 0xffff_ffff_0000;

/// The tap stand-in the device gets: records the offloads it is told.
pub struct FakeTap {
    fd: OwnedFd,
    offload: Arc<AtomicU32>,
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FrameIo for FakeTap {
    fn set_offload(&self, tun_flags: u32) -> std::io::Result<()> {
        self.offload.store(tun_flags, Ordering::SeqCst);
        Ok(())
    }
}

/// The host's end of the fake tap, and what the device last set as offloads.
pub struct HostEnd {
    pub fd: OwnedFd,
    pub offload: Arc<AtomicU32>,
}

impl HostEnd {
    /// A fake tap pair: the device's end and ours.
    pub fn pair() -> (Box<dyn FrameIo>, HostEnd) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        // Room for a burst of 64 KiB frames.
        for fd in [&a, &b] {
            nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::SndBuf, &(8 << 20))
                .unwrap();
            nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::RcvBuf, &(8 << 20))
                .unwrap();
        }
        let offload = Arc::new(AtomicU32::new(u32::MAX));
        (
            Box::new(FakeTap {
                fd: a,
                offload: offload.clone(),
            }),
            HostEnd { fd: b, offload },
        )
    }

    /// Sends one frame towards the guest (as the tap would hand it over).
    pub fn send(&self, frame: &[u8]) {
        nix::unistd::write(&self.fd, frame).unwrap();
    }

    /// The next frame the device wrote, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 128 * 1024];
        match nix::unistd::read(&self.fd, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(nix::errno::Errno::EAGAIN) => None,
            Err(e) => panic!("reading the fake tap: {e}"),
        }
    }

    /// Every frame the device wrote so far.
    pub fn recv_all(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv()).collect()
    }
}

/// A virtio-net header with `flags` and `gso_type`.
pub fn vnet_hdr(flags: u8, gso: u8) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h
}

/// A recognisable Ethernet frame of `len` bytes.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A device activated on test guest memory, with the test guest driving it.
pub struct TestNet {
    pub dev: Net,
    pub handle: NetHandle,
    pub mem: &'static GuestMemoryMmap,
    pub rx: Driver,
    pub tx: Driver,
    epoll: Arc<Epoll>,
    pub interrupt: Arc<Interrupt>,
    /// Used lengths of transmit chains reclaimed but not looked at yet.
    tx_lens: Vec<u32>,
}

impl TestNet {
    /// A device with a fake tap, activated after the driver acked `features`.
    pub fn new(features: u64) -> (Self, HostEnd) {
        let (tap, host) = HostEnd::pair();
        (Self::with(Some(tap), None, features), host)
    }

    /// A device with `backend` (or none) and `mtu`, activated with `features`.
    pub fn with(backend: Option<Box<dyn FrameIo>>, mtu: Option<u16>, features: u64) -> Self {
        let (mut dev, handle) = Net::new(NetParams {
            mac: MAC,
            mtu,
            backend,
        })
        .unwrap();
        // Leaked so the rings can borrow it for the test's lifetime.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        ));
        let rx = Driver::new(mem, RX_RING, RX_BUFS, SLOT);
        let tx = Driver::new(mem, TX_RING, TX_BUFS, SLOT);
        let epoll = Arc::new(Epoll::new().unwrap());
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let event_idx =
            features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = [&rx, &tx]
            .iter()
            .map(|d| {
                let mut q = d.queue();
                virtio_queue::QueueT::set_event_idx(&mut q, event_idx);
                q
            })
            .collect();
        dev.set_acked_features(features);
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            interrupt: interrupt.clone(),
            events: EventRegistrar::new(epoll.clone(), 0),
        })
        .unwrap();
        Self {
            dev,
            handle,
            mem,
            rx,
            tx,
            epoll,
            interrupt,
            tx_lens: Vec::new(),
        }
    }

    /// Activates the device again (after a reset) on `queues`.
    pub fn reactivate(&mut self, queues: Vec<virtio_queue::Queue>) {
        self.dev
            .activate(ActivateContext {
                mem: self.mem.clone(),
                queues,
                interrupt: self.interrupt.clone(),
                events: EventRegistrar::new(self.epoll.clone(), 0),
            })
            .unwrap();
    }

    /// Dispatches ready events to the device, waiting up to `timeout_ms`. Returns how
    /// many there were.
    pub fn pump(&mut self, timeout_ms: i32) -> usize {
        let mut events = vec![EpollEvent::default(); 16];
        let n = self.epoll.wait(timeout_ms, &mut events).unwrap();
        for ev in &events[..n] {
            let (_, local) = split_token(ev.data());
            self.dev
                .handle_event(local - DEVICE_TOKEN_BASE, ev.event_set());
        }
        n
    }

    /// Pumps until nothing is ready for 50 ms (at most `rounds` rounds).
    pub fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            if self.pump(50) == 0 {
                return;
            }
        }
        panic!("the device kept finding work after {rounds} rounds");
    }

    /// Publishes one transmit chain whose descriptors hold `bytes` in order (split as
    /// `descs` say; descriptors with an explicit address get nothing written) and kicks.
    pub fn send_chain(&mut self, descs: &[Desc], bytes: &[u8]) {
        self.publish_tx(descs, bytes);
        self.dev.queue_notify(1);
    }

    /// Publishes a transmit chain without kicking.
    pub fn publish_tx(&mut self, descs: &[Desc], bytes: &[u8]) {
        let used = self.tx.take_used();
        self.tx_lens.extend(used.into_iter().map(|(_, l)| l));
        let idx = self.tx.publish(descs);
        let mut off = 0;
        for (d, &i) in descs.iter().zip(&idx) {
            if d.addr.is_some() {
                continue;
            }
            let n = (d.len as usize).min(bytes.len().saturating_sub(off));
            self.mem
                .write_slice(&bytes[off..off + n], GuestAddress(self.tx.slot(i)))
                .unwrap();
            off += n;
        }
    }

    /// Sends header + frame as Linux does (one descriptor each) and kicks.
    pub fn send(&mut self, hdr: [u8; VNET_HDR_LEN], frame: &[u8]) {
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        self.send_chain(
            &[Desc::r(VNET_HDR_LEN as u32), Desc::r(frame.len() as u32)],
            &bytes,
        );
    }

    /// Posts `n` receive buffers of `len` bytes each and kicks.
    pub fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            self.rx.publish(&[Desc::w(len)]);
        }
        self.dev.queue_notify(0);
    }

    /// Receive chains the device returned: (buffer contents up to the used length).
    pub fn take_rx(&mut self) -> Vec<Vec<u8>> {
        self.rx
            .take_used()
            .into_iter()
            .map(|(chain, len)| {
                let mut out = vec![0u8; len as usize];
                let mut off = 0usize;
                for &i in &chain {
                    let n = (len as usize - off).min(SLOT as usize);
                    if n == 0 {
                        break;
                    }
                    self.mem
                        .read_slice(&mut out[off..off + n], GuestAddress(self.rx.slot(i)))
                        .unwrap();
                    off += n;
                }
                out
            })
            .collect()
    }

    /// Used lengths of the transmit chains returned since the last call.
    pub fn tx_used(&mut self) -> Vec<u32> {
        let used = self.tx.take_used();
        self.tx_lens.extend(used.into_iter().map(|(_, l)| l));
        std::mem::take(&mut self.tx_lens)
    }

    /// Interrupts raised since the last call.
    pub fn interrupts(&self) -> u64 {
        self.interrupt.irqfd().read().unwrap_or(0)
    }

    /// Reads the device's configuration space.
    pub fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        self.dev.read_config(0, &mut c);
        c
    }
}
