//! virtio-net over a tap descriptor (no vhost: frames are moved by the device thread).
//!
//! Files: this one is the device (features, configuration space, events, attaching a
//! backend), `tx` moves guest frames to the tap, `rx` tap frames into guest buffers, `tap`
//! the descriptor itself.
//!
//! # Features offered, and why
//! - `CSUM`, `HOST_TSO4/6`, `HOST_ECN`: the guest may hand over frames with a partial
//!   checksum and TCP segments up to 64 KiB; the tap takes them as they are (its header is
//!   the same `virtio_net_hdr`), so a bulk sender crosses the VM boundary once per 64 KiB
//!   instead of once per MTU, and nobody computes a checksum that a later hop redoes.
//! - `GUEST_CSUM`, `GUEST_TSO4/6`, `GUEST_ECN`: the same towards the guest; the tap is told
//!   with `TUNSETOFFLOAD` exactly what the guest acked, so the kernel segments and
//!   checksums whatever the guest cannot take.
//! - `MRG_RXBUF`: with TSO the guest would otherwise post 64 KiB per receive buffer; with
//!   mergeable buffers it posts page-sized ones and a large frame spans several.
//! - `MAC`: the guest's interface starts with the MAC of the host interface it stands for
//!   (when it is known at boot).
//! - `MTU`: the host interface's MTU, when known at boot (a slot whose interface comes
//!   later does not offer it; the agent sets the MTU then).
//! - `STATUS`: the link is down until a tap is attached, and comes up with a
//!   configuration-change interrupt when one is attached to a running guest.
//! - `RING_EVENT_IDX`, `RING_INDIRECT_DESC`: fewer kicks and interrupts; one ring slot
//!   per transmitted frame whatever its number of fragments.
//!
//! Not offered: a control queue (no runtime MAC filters or VLAN tables: the tap sees
//! every frame anyway), multiqueue, UFO/USO (the kernel segments UDP instead).
//!
//! # The guest is hostile
//! Every chain is walked with bounds checks (vm-memory slices), frames over 64 KiB plus
//! headers or with offloads the guest did not negotiate are dropped, and each wakeup moves
//! at most [`TX_BUDGET`] frames to the tap and [`RX_BUDGET`] into the guest before the
//! device thread turns to the other devices: a guest flooding its transmit queue gets a
//! bounded share of the thread, and the only memory it can make the host use is the
//! kernel's own (bounded) socket and backlog queues.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod rx;
pub mod tap;
mod tx;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, warn};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, EventRegistrar, Interrupt,
    VirtioDevice,
};
use tap::FrameIo;

/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// Frames moved to the tap per wakeup before the device thread serves other devices.
pub const TX_BUDGET: usize = 128;
/// Frames moved into the guest per wakeup.
pub const RX_BUDGET: usize = 128;

const TAP_TOKEN: u32 = 0;
const ATTACH_TOKEN: u32 = 1;
const WORK_TOKEN: u32 = 2;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Features every husk virtio-net device offers (see the module documentation).
pub const BASE_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC);

/// Offloads the tap may pass to a guest that acked `features` (`TUN_F_*`).
pub fn tun_offload_flags(features: u64) -> u32 {
    let has = |b: u32| features & bit(b) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 && has(VIRTIO_NET_F_GUEST_ECN) {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// Counters of one device, readable while it runs.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames written to the tap.
    pub tx_frames: AtomicU64,
    /// Guest frames dropped (malformed chains, offloads not negotiated, no tap, tap errors).
    pub tx_dropped: AtomicU64,
    /// Frames put into guest buffers.
    pub rx_frames: AtomicU64,
    /// Tap frames dropped (too big for the guest's buffers, offloads it cannot take).
    pub rx_dropped: AtomicU64,
    /// Receive buffers returned empty because they were unusable.
    pub rx_bad_buffers: AtomicU64,
}

impl NetStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What the device needs to be built.
pub struct NetParams {
    /// The MAC the guest's interface starts with.
    pub mac: [u8; 6],
    /// The MTU offered to the guest (`VIRTIO_NET_F_MTU`), if known at boot.
    pub mtu: Option<u16>,
    /// The backend, if known at boot; otherwise attached later through [`NetHandle`].
    pub backend: Option<Box<dyn FrameIo>>,
}

/// Attaches a backend to a device from another thread (the device thread picks it up).
#[derive(Clone)]
pub struct NetHandle {
    slot: Arc<Mutex<Option<Box<dyn FrameIo>>>>,
    attached: Arc<std::sync::atomic::AtomicBool>,
    evt: Arc<EventFd>,
    stats: Arc<NetStats>,
}

impl NetHandle {
    /// Hands `backend` to the device; its link comes up. Fails if the device has one.
    pub fn attach(&self, backend: Box<dyn FrameIo>) -> io::Result<()> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() || self.attached.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this network device already has a backend",
            ));
        }
        *slot = Some(backend);
        drop(slot);
        self.evt.write(1)
    }

    /// Whether a backend is attached (or on its way).
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
            || self
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    /// The device's counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    rxq: Queue,
    txq: Queue,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
}

/// A virtio-net device.
pub struct Net {
    mac: [u8; 6],
    mtu: Option<u16>,
    acked: u64,
    backend: Option<Box<dyn FrameIo>>,
    handle: NetHandle,
    work_evt: EventFd,
    active: Option<Active>,
    rx: rx::RxState,
    tx: tx::TxState,
}

impl Net {
    /// A device as `params` say, and the handle to attach its backend later.
    pub fn new(params: NetParams) -> io::Result<(Self, NetHandle)> {
        let handle = NetHandle {
            slot: Arc::new(Mutex::new(None)),
            attached: Arc::new(std::sync::atomic::AtomicBool::new(params.backend.is_some())),
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            stats: Arc::new(NetStats::default()),
        };
        let dev = Self {
            mac: params.mac,
            mtu: params.mtu,
            acked: 0,
            backend: params.backend,
            handle: handle.clone(),
            work_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            active: None,
            rx: rx::RxState::new(),
            tx: tx::TxState::new(),
        };
        Ok((dev, handle))
    }

    fn link_up(&self) -> bool {
        self.handle.attached.load(Ordering::SeqCst)
    }

    fn config_space(&self) -> [u8; 12] {
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        let status = if self.link_up() {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        cfg[6..8].copy_from_slice(&status.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        cfg[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        cfg
    }

    /// Starts watching the backend and tells it the guest's offloads.
    fn arm_backend(&mut self) {
        let (Some(active), Some(backend)) = (self.active.as_ref(), self.backend.as_ref()) else {
            return;
        };
        if let Err(e) = backend.set_offload(tun_offload_flags(self.acked)) {
            warn!("virtio-net: cannot set the tap's offloads: {e}");
        }
        match active
            .events
            .add(backend.as_raw_fd(), TAP_TOKEN, EventSet::IN)
        {
            Ok(()) => self.rx.armed = true,
            Err(e) => warn!("virtio-net: cannot watch the tap: {e}"),
        }
    }

    /// Picks up a backend handed over through the [`NetHandle`].
    fn take_attached(&mut self) {
        let _ = self.handle.evt.read();
        let new = self
            .handle
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(new) = new else { return };
        if self.backend.is_some() {
            warn!("virtio-net: a second backend was attached; keeping the first");
            return;
        }
        self.backend = Some(new);
        self.handle.attached.store(true, Ordering::SeqCst);
        self.arm_backend();
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.signal_config_change() {
                warn!("virtio-net: cannot signal the link change: {e}");
            }
        }
        self.process();
    }

    /// Moves frames both ways within the budgets and interrupts the guest once.
    fn process(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let stats = &self.handle.stats;
        let tx = tx::process(
            active,
            self.backend.as_deref(),
            self.acked,
            &mut self.tx,
            stats,
        );
        if tx.more {
            // Come back after the other devices had their turn.
            let _ = self.work_evt.write(1);
        }
        let mut rx_used = false;
        if let Some(backend) = self.backend.as_deref() {
            let rx = rx::process(active, backend, self.acked, &mut self.rx, stats);
            rx_used = rx.used;
            if rx.stalled == self.rx.armed {
                // Out of guest buffers with a frame waiting: stop polling the tap until
                // the guest posts more; or buffers are back: poll again.
                let events = if rx.stalled {
                    EventSet::empty()
                } else {
                    EventSet::IN
                };
                debug!(
                    stalled = rx.stalled,
                    rx_frames = NetStats::get(&stats.rx_frames),
                    rx_dropped = NetStats::get(&stats.rx_dropped),
                    tx_frames = NetStats::get(&stats.tx_frames),
                    tx_dropped = NetStats::get(&stats.tx_dropped),
                    pending = ?self.rx.pending_len(),
                    stash = self.rx.stash_len(),
                    "virtio-net: tap polling changes"
                );
                match active.events.modify(backend.as_raw_fd(), TAP_TOKEN, events) {
                    Ok(()) => self.rx.armed = !rx.stalled,
                    Err(e) => warn!("virtio-net: cannot change the tap's polling: {e}"),
                }
            }
        }
        let notify_tx = tx.used && active.txq.needs_notification(&*active.mem).unwrap_or(true);
        let notify_rx = rx_used && active.rxq.needs_notification(&*active.mem).unwrap_or(true);
        if notify_tx || notify_rx {
            if let Err(e) = active.interrupt.signal_used_queue() {
                warn!("virtio-net: cannot signal the guest: {e}");
            }
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> &NetStats {
        &self.handle.stats
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn confinement(&self) -> super::DeviceNeeds {
        // Frames move with read and writev (the device role has them); the offloads the
        // guest negotiates reach the tap with TUNSETOFFLOAD. No capability: the tap was
        // opened and attached before the sandbox was confined.
        let mut syscalls = crate::seccomp::Allowlist::new();
        syscalls.allow_arg_in(libc::SYS_ioctl, 1, &[libc::TUNSETOFFLOAD]);
        super::DeviceNeeds {
            syscalls,
            ..Default::default()
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        let mut f = BASE_FEATURES;
        if self.mtu.is_some() {
            f |= bit(VIRTIO_NET_F_MTU);
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues.into_iter();
        let rxq = queues
            .next()
            .filter(|q| q.ready())
            .ok_or(ActivateError::QueueNotReady(RXQ))?;
        let txq = queues
            .next()
            .filter(|q| q.ready())
            .ok_or(ActivateError::QueueNotReady(TXQ))?;
        ctx.events
            .add(self.handle.evt.as_raw_fd(), ATTACH_TOKEN, EventSet::IN)?;
        ctx.events
            .add(self.work_evt.as_raw_fd(), WORK_TOKEN, EventSet::IN)?;
        self.active = Some(Active {
            mem: Arc::new(ctx.mem),
            rxq,
            txq,
            interrupt: ctx.interrupt,
            events: ctx.events,
        });
        self.rx = rx::RxState::new();
        self.arm_backend();
        debug!(
            features = format_args!("{:#x}", self.acked),
            offloads = format_args!("{:#x}", tun_offload_flags(self.acked)),
            tap = self.backend.is_some(),
            "virtio-net: activated"
        );
        // A backend may have been attached before the driver was ready.
        self.take_attached();
        // Frames may already be queued (a kick before DRIVER_OK is dropped).
        self.process();
        Ok(())
    }

    fn queue_notify(&mut self, queue: usize) {
        if queue == RXQ || queue == TXQ {
            self.process();
        }
    }

    fn handle_event(&mut self, token: u32, _events: EventSet) {
        match token {
            ATTACH_TOKEN => self.take_attached(),
            WORK_TOKEN => {
                let _ = self.work_evt.read();
                self.process();
            }
            TAP_TOKEN => self.process(),
            other => debug!("virtio-net: event for unknown token {other}"),
        }
    }

    fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            for fd in [self.handle.evt.as_raw_fd(), self.work_evt.as_raw_fd()] {
                let _ = active.events.remove(fd);
            }
            if let Some(b) = &self.backend {
                let _ = active.events.remove(b.as_raw_fd());
                // Nothing may reach a driver that has not negotiated offloads yet.
                let _ = b.set_offload(0);
            }
        }
        self.rx = rx::RxState::new();
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests;
