//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! Every value here comes from the guest driver and is treated as hostile: register
//! accesses of the wrong width are ignored, queue settings are validated against guest
//! memory before the device sees them, and the device is only activated once. Warnings
//! the guest can trigger at will are rate-limited ([`crate::guest_warn!`]).
//!
//! Register accesses arrive on vCPU threads. What they ask of the device model itself
//! (activation at DRIVER_OK, a reset, a kick through a trapped write) is queued as
//! [`Work`] and done on the device thread, which [`MmioTransport::set_work_eventfd`]
//! wakes: a vCPU thread never runs device or backend code, so its seccomp filter stays
//! small. Without a work eventfd (unit tests, fuzzing) the work is done at once.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::guest_warn;

use super::{ActivateContext, EventRegistrar, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// Vendor id reported to the guest ("HUSK" in little endian).
const VENDOR_ID: u32 = 0x4b53_5548;

/// Device status bits (virtio spec 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of the queue-notify register, where the builder places the ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// One virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    events: EventRegistrar,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    /// The queues were handed to the device (DRIVER_OK accepted); registers are frozen.
    activated: bool,
    /// The device model accepted them and runs.
    device_active: bool,
    /// Counts resets: activation work from before a reset is stale.
    reset_generation: u64,
    config_generation: u32,
    work: VecDeque<Work>,
    work_evt: Option<EventFd>,
}

/// Device work requested by a register access, done on the device thread.
enum Work {
    Activate(Box<ActivateContext>, u64),
    Reset,
    Notify(usize),
}

impl MmioTransport {
    /// Wraps `device`; queues start in their reset state.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        events: EventRegistrar,
    ) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            events,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            device_active: false,
            reset_generation: 0,
            config_generation: 0,
            work: VecDeque::new(),
            work_evt: None,
        }
    }

    /// From now on, device work requested by register accesses is queued and `evt` is
    /// signalled; the device thread then calls [`MmioTransport::run_pending`].
    pub fn set_work_eventfd(&mut self, evt: EventFd) {
        self.work_evt = Some(evt);
    }

    fn defer(&mut self, work: Work) {
        self.work.push_back(work);
        match &self.work_evt {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    // Only a full counter fails, and then a wakeup is pending anyway.
                    debug!("virtio-mmio: waking the device thread: {e}");
                }
            }
            None => self.run_pending(),
        }
    }

    /// Does the device work queued by register accesses, in order.
    pub fn run_pending(&mut self) {
        while let Some(work) = self.work.pop_front() {
            match work {
                Work::Activate(ctx, generation) => {
                    if generation != self.reset_generation {
                        continue;
                    }
                    match self.device.activate(*ctx) {
                        Ok(()) => self.device_active = true,
                        Err(e) => self.fail(&e.to_string()),
                    }
                }
                Work::Reset => {
                    if self.device_active {
                        self.device.reset();
                        self.device_active = false;
                    }
                }
                Work::Notify(index) => self.queue_notify(index),
            }
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            // A max size that virtio-queue refuses is a bug in the device model, not
            // something the guest controls; fall back to a tiny valid queue.
            .map(|&max| Queue::new(max).unwrap_or_else(|_| Queue::new(1).expect("size 1")))
            .collect()
    }

    /// Number of queues the device has.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The device's status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device model is running.
    pub fn is_activated(&self) -> bool {
        self.device_active
    }

    /// The device model, e.g. for tests and metrics.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The guest kicked queue `index` (on the device thread: an ioeventfd, or a trapped
    /// write passed on as work).
    pub fn queue_notify(&mut self, index: usize) {
        if self.device_active && index < self.queues.len() {
            self.device.queue_notify(index);
        }
    }

    /// One of the device's own fds is ready.
    pub fn handle_event(&mut self, token: u32, events: vmm_sys_util::epoll::EventSet) {
        if self.device_active {
            self.device.handle_event(token, events);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        !self.activated
            && self.status & status::FEATURES_OK != 0
            && self.status & status::DRIVER_OK == 0
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            guest_warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register read of wrong width"
            );
            data.fill(0);
            return;
        }
        let v = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.device.avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(offset, "virtio-mmio: read of unknown register");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register write of wrong width"
            );
            return;
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                if self.status & (status::FEATURES_OK | status::DRIVER_OK) != 0 {
                    return;
                }
                match self.driver_features_select {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NOTIFY => {
                // Kicks of real queues go to their ioeventfds; this is anything else.
                if self.device_active && (v as usize) < self.queues.len() {
                    self.defer(Work::Notify(v as usize));
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                if !self.queue_config_allowed() {
                    guest_warn!(offset, "virtio-mmio: queue register written outside setup");
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                match offset {
                    // Queue validates sizes itself (power of two, <= max) and keeps the
                    // old value on a bad one; is_valid() catches the rest at DRIVER_OK.
                    reg::QUEUE_NUM => q.set_size(v as u16),
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    reg::QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
                    _ => unreachable!("matched above"),
                }
            }
            _ => debug!(
                offset,
                "virtio-mmio: write to unknown or read-only register"
            ),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if self.status & status::FAILED != 0 || self.activated {
            // After DRIVER_OK only FAILED is meaningful; keep what we have.
            if v & status::FAILED != 0 {
                self.status |= status::FAILED;
            }
            return;
        }
        let newly = v & !self.status;
        if newly & status::FEATURES_OK != 0 {
            let offered = self.device.avail_features() | VIRTIO_F_VERSION_1;
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                guest_warn!(
                    features = self.driver_features,
                    "virtio-mmio: driver accepted features the device does not offer"
                );
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                self.status = v & !status::FEATURES_OK & !status::DRIVER_OK;
                return;
            }
            self.device.set_acked_features(self.driver_features);
        }
        self.status = v;
        if newly & status::DRIVER_OK != 0 {
            if v & status::FEATURES_OK == 0 {
                self.status &= !status::DRIVER_OK;
                self.fail("DRIVER_OK before FEATURES_OK");
                return;
            }
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features
            & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                let reason = format!("queue {i} addresses or size are invalid");
                self.fail(&reason);
                return;
            }
            q.set_event_idx(event_idx);
        }
        // The device gets its own copies; ours stay for register reads (QUEUE_READY).
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(q) => q,
            Err(e) => {
                self.fail(&format!("queue state: {e}"));
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            events: self.events.clone(),
        };
        self.activated = true;
        self.defer(Work::Activate(Box::new(ctx), self.reset_generation));
    }

    fn fail(&mut self, reason: &str) {
        guest_warn!(
            device = self.device.device_type(),
            reason,
            "virtio-mmio: device needs reset"
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        let _ = self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        self.reset_generation += 1;
        if self.activated {
            self.defer(Work::Reset);
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.interrupt.reset();
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, INT_CONFIG};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;
    use vmm_sys_util::epoll::Epoll;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Probe {
        activations: Arc<AtomicUsize>,
        notifies: Arc<AtomicUsize>,
        acked: u64,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            1 << 5
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if !ctx.queues[0].ready() {
                return Err(ActivateError::QueueNotReady(0));
            }
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn queue_notify(&mut self, _queue: usize) {
            self.notifies.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn transport(probe: Probe) -> MmioTransport {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let events = EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0);
        MmioTransport::new(Box::new(probe), mem, irq, events)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, base: u32) {
        w(t, reg::QUEUE_SEL, sel);
        w(t, reg::QUEUE_NUM, 16);
        w(t, reg::QUEUE_DESC_LOW, base);
        w(t, reg::QUEUE_AVAIL_LOW, base + 0x1000);
        w(t, reg::QUEUE_USED_LOW, base + 0x2000);
        w(t, reg::QUEUE_READY, 1);
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, features_hi);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    #[test]
    fn identifies_as_a_version_2_virtio_device() {
        let mut t = transport(Probe::default());
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 5);
    }

    #[test]
    fn activates_after_a_full_handshake_and_forwards_kicks() {
        let probe = Probe::default();
        let (acts, kicks) = (probe.activations.clone(), probe.notifies.clone());
        let mut t = transport(probe);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(t.is_activated());
        assert_eq!(acts.load(Ordering::SeqCst), 1);
        t.queue_notify(0);
        t.queue_notify(99);
        assert_eq!(kicks.load(Ordering::SeqCst), 1, "out-of-range kick ignored");
    }

    #[test]
    fn refuses_features_it_did_not_offer() {
        let mut t = transport(Probe::default());
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 1 << 7);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::STATUS, 0xb);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn a_queue_outside_guest_memory_puts_the_device_in_needs_reset() {
        let probe = Probe::default();
        let acts = probe.activations.clone();
        let mut t = transport(probe);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 0xffff_0000);
        w(&mut t, reg::STATUS, 0xf);
        assert!(!t.is_activated());
        assert_eq!(acts.load(Ordering::SeqCst), 0);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        // A reset brings it back to a clean state.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_registers_are_frozen_outside_setup() {
        let mut t = transport(Probe::default());
        // Before FEATURES_OK.
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, reg::STATUS, 0xf);
        // After DRIVER_OK.
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn wrong_width_and_unknown_registers_are_harmless() {
        let mut t = transport(Probe::default());
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1, 2]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, 0x0f0, 123);
        assert_eq!(r(&mut t, 0x0f0), 0);
        w(&mut t, reg::QUEUE_SEL, 1000);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        let mut cfg = [0u8; 4];
        t.read(reg::CONFIG, &mut cfg);
        assert_eq!(cfg, [0xaa, 0xbb, 0, 0]);
    }

    #[test]
    fn device_work_waits_for_the_device_thread_and_stale_work_is_dropped() {
        let probe = Probe::default();
        let (acts, kicks) = (probe.activations.clone(), probe.notifies.clone());
        let mut t = transport(probe);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        t.set_work_eventfd(evt.try_clone().unwrap());
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, reg::STATUS, 0xf);
        assert_eq!(acts.load(Ordering::SeqCst), 0, "not on the vCPU thread");
        assert!(evt.read().unwrap() >= 1, "the device thread is woken");
        t.run_pending();
        assert_eq!(acts.load(Ordering::SeqCst), 1);
        assert!(t.is_activated());
        // A trapped kick of a real queue is passed on as work too.
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(kicks.load(Ordering::SeqCst), 0);
        t.run_pending();
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        // DRIVER_OK then reset before the device thread looked: the activation is stale.
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, reg::STATUS, 0xf);
        w(&mut t, reg::STATUS, 0);
        t.run_pending();
        assert_eq!(acts.load(Ordering::SeqCst), 1, "stale activation dropped");
        assert!(!t.is_activated());
    }

    /// Counts WARN events on the current thread.
    struct WarnCounter(Arc<AtomicUsize>);

    impl tracing::Subscriber for WarnCounter {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            if *e.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_guest_hammering_bad_registers_cannot_flood_the_log() {
        let warnings = Arc::new(AtomicUsize::new(0));
        let mut t = transport(Probe::default());
        tracing::subscriber::with_default(WarnCounter(warnings.clone()), || {
            for i in 0..10_000u64 {
                t.write(reg::STATUS, &[1, 2]);
                let mut b = [0u8; 1];
                t.read(reg::MAGIC, &mut b);
                w(&mut t, reg::QUEUE_NUM, i as u32);
            }
        });
        let n = warnings.load(Ordering::SeqCst);
        assert!(
            n <= 3 * crate::ratelimit::BURST as usize,
            "{n} warnings for 30000 bad accesses"
        );
    }

    #[test]
    fn activation_refused_by_the_device_needs_reset() {
        let mut t = transport(Probe::default());
        negotiate(&mut t, 1);
        w(&mut t, reg::STATUS, 0xf);
        assert!(!t.is_activated());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }
}
