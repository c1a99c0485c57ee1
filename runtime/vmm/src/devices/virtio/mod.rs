//! virtio devices and the virtio-mmio transport they sit behind.
//!
//! A device implements [`VirtioDevice`]; the [`mmio::MmioTransport`] speaks the register
//! protocol with the guest driver and hands the device its queues once the driver sets
//! DRIVER_OK. From then on the device runs on the device thread: the event loop calls
//! [`VirtioDevice::queue_notify`] when the guest kicks a queue (an ioeventfd) and
//! [`VirtioDevice::handle_event`] when one of the device's own fds (a backend socket) is
//! ready. virtio-fs serves its requests on a thread of its own (see [`fs`]).

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub mod test_driver;
pub mod vsock;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// The device follows virtio 1.x (the only version husk offers).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Bit in the interrupt status register: a queue has used buffers.
pub const INT_VRING: u32 = 1;
/// Bit in the interrupt status register: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Device type ids from the virtio specification.
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// A device's interrupt line: the status bits the driver reads from the transport, and the
/// irqfd that injects the interrupt into the guest.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// An interrupt that fires `irqfd` (registered with KVM by the builder).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(INT_VRING)
    }

    /// Tells the driver that the device configuration (or status) changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.signal(INT_CONFIG)
    }

    fn signal(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears all status bits (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd behind this interrupt (tests wait on it).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Epoll tokens below this value are queue notifications handled by the event loop itself;
/// device-registered tokens are offset by it.
pub const DEVICE_TOKEN_BASE: u32 = 0x1_0000;

/// Builds the epoll token for `local` of device `device`.
pub fn epoll_token(device: u32, local: u32) -> u64 {
    (u64::from(device) << 32) | u64::from(local)
}

/// Splits an epoll token into (device index, local token).
pub fn split_token(token: u64) -> (u32, u32) {
    ((token >> 32) as u32, token as u32)
}

/// Lets a device add its own file descriptors to the device thread's epoll. Events for
/// them come back through [`VirtioDevice::handle_event`] with the token given here.
#[derive(Clone)]
pub struct EventRegistrar {
    epoll: Arc<Epoll>,
    device: u32,
}

impl EventRegistrar {
    /// A registrar for device number `device` on `epoll`.
    pub fn new(epoll: Arc<Epoll>, device: u32) -> Self {
        Self { epoll, device }
    }

    fn event(&self, token: u32, events: EventSet) -> io::Result<EpollEvent> {
        let local = token
            .checked_add(DEVICE_TOKEN_BASE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "token too large"))?;
        Ok(EpollEvent::new(events, epoll_token(self.device, local)))
    }

    /// Starts watching `fd`.
    pub fn add(&self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, self.event(token, events)?)
    }

    /// Changes what is watched on `fd`.
    pub fn modify(&self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, self.event(token, events)?)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// What a device gets when the driver finishes initialisation.
pub struct ActivateContext {
    /// Guest memory, for the queues and the buffers they point at.
    pub mem: GuestMemoryMmap,
    /// The queues, in index order, as the driver configured them.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// For the device's own backend file descriptors.
    pub events: EventRegistrar,
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// Setting up the backend failed.
    #[error("backend: {0}")]
    Backend(#[from] io::Error),
}

/// What a device's backend needs from the confined process beyond the device thread's
/// own allowlist ([`crate::seccomp::device`]) and beyond "every capability dropped": the
/// builder adds the system calls to the device role's filter, and the sandbox keeps the
/// capabilities (numbers from linux/capability.h) in its permitted and effective sets.
/// Everything here widens what a compromised device model could do; ask for the least.
#[derive(Debug, Default, Clone)]
pub struct DeviceNeeds {
    /// System calls the device thread makes for this device.
    pub syscalls: crate::seccomp::Allowlist,
    /// Capabilities its backend needs (for example CAP_CHOWN for a file server that
    /// creates files with guest-chosen owners).
    pub capabilities: Vec<u8>,
    /// The backend switches its thread's effective ids to the guest's for each request
    /// and back to 0 (a file server creating files as their owners): the sandbox keeps
    /// uid 0, with only the capabilities above, since a non-root uid would lose them at
    /// the first switch back.
    pub keeps_root_uid: bool,
}

impl DeviceNeeds {
    /// Adds what `other` needs.
    pub fn merge(&mut self, other: &DeviceNeeds) {
        self.syscalls.merge(&other.syscalls);
        for &c in &other.capabilities {
            if !self.capabilities.contains(&c) {
                self.capabilities.push(c);
            }
        }
        self.keeps_root_uid |= other.keeps_root_uid;
    }
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device type id ([`device_type`]).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`. Out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space. Most devices ignore this.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start working on the given queues. Runs on the device
    /// thread, possibly after kicks that arrived before it and were dropped: process
    /// whatever the queues already hold.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The guest kicked queue `queue`.
    fn queue_notify(&mut self, queue: usize);
    /// One of the fds the device registered is ready.
    fn handle_event(&mut self, _token: u32, _events: EventSet) {}
    /// The driver reset the device: drop queues and backend state.
    fn reset(&mut self) {}
    /// What the device needs from the confinement (see [`DeviceNeeds`]); nothing by
    /// default.
    fn confinement(&self) -> DeviceNeeds {
        DeviceNeeds::default()
    }
}

/// Copies `src[offset..]` into `data`, zero-filling whatever lies outside `src`. The usual
/// way for a device to serve configuration-space reads of any width at any offset.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - offset);
    data[..n].copy_from_slice(&src[offset..offset + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_outside_the_space_are_zero() {
        let cfg = [1u8, 2, 3, 4];
        let mut buf = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut buf);
        assert_eq!(buf, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut buf);
        assert_eq!(buf, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn tokens_round_trip() {
        assert_eq!(split_token(epoll_token(7, 0x1_0005)), (7, 0x1_0005));
    }

    #[test]
    fn interrupt_status_is_set_and_acked() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
    }
}
