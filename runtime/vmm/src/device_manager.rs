//! Places virtio devices on the MMIO bus and runs the device thread: one epoll loop over
//! the queue ioeventfds and the devices' own backend fds.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, error};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::VIRTIO_MMIO_START;
use crate::control::{VmControl, VmExit};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
use crate::devices::virtio::{epoll_token, split_token, DEVICE_TOKEN_BASE};

const STOP_TOKEN: u64 = u64::MAX;
/// Local token of a transport's work eventfd (below the devices' own tokens, above any
/// queue index).
const WORK_TOKEN: u32 = DEVICE_TOKEN_BASE - 1;

/// The virtio-mmio devices, one 4 KiB window each from [`VIRTIO_MMIO_START`].
#[derive(Default)]
pub struct MmioBus {
    devices: Vec<Arc<Mutex<MmioTransport>>>,
}

fn lock(t: &Mutex<MmioTransport>) -> MutexGuard<'_, MmioTransport> {
    // A poisoned transport means a device panicked; the device thread has already ended
    // the VM, so any state is good enough for the few accesses left.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl MmioBus {
    /// Adds a device in the next window and returns its index.
    pub fn add(&mut self, transport: Arc<Mutex<MmioTransport>>) -> usize {
        self.devices.push(transport);
        self.devices.len() - 1
    }

    /// Base address of device `index`'s window.
    pub fn window_base(index: usize) -> u64 {
        VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW_SIZE
    }

    /// Device `index`.
    pub fn device(&self, index: usize) -> Option<&Arc<Mutex<MmioTransport>>> {
        self.devices.get(index)
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&Mutex<MmioTransport>, u64)> {
        let rel = addr.checked_sub(VIRTIO_MMIO_START)?;
        let offset = rel % MMIO_WINDOW_SIZE;
        if offset.checked_add(len as u64)? > MMIO_WINDOW_SIZE {
            return None;
        }
        let index = usize::try_from(rel / MMIO_WINDOW_SIZE).ok()?;
        self.devices.get(index).map(|t| (t.as_ref(), offset))
    }

    /// A guest read; addresses with no device read as zero.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((t, offset)) => lock(t).read(offset, data),
            None => {
                debug!(addr, "MMIO read outside any device");
                data.fill(0);
            }
        }
    }

    /// A guest write; addresses with no device are ignored.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((t, offset)) => lock(t).write(offset, data),
            None => debug!(addr, "MMIO write outside any device"),
        }
    }
}

/// The device thread's state.
pub struct DeviceLoop {
    epoll: Arc<Epoll>,
    bus: Arc<MmioBus>,
    queue_evts: HashMap<u64, EventFd>,
    stop_evt: EventFd,
}

impl DeviceLoop {
    /// A loop for the devices of `bus` on `epoll` (which device backends also use).
    pub fn new(epoll: Arc<Epoll>, bus: Arc<MmioBus>) -> std::io::Result<Self> {
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop_evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(Self {
            epoll,
            bus,
            queue_evts: HashMap::new(),
            stop_evt,
        })
    }

    /// Watches `evt`, the ioeventfd of queue `queue` of device `device`.
    pub fn add_queue_evt(&mut self, device: u32, queue: u32, evt: EventFd) -> std::io::Result<()> {
        let token = epoll_token(device, queue);
        self.epoll.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )?;
        self.queue_evts.insert(token, evt);
        Ok(())
    }

    /// Watches `evt`, the work eventfd of device `device`'s transport.
    pub fn add_work_evt(&mut self, device: u32, evt: EventFd) -> std::io::Result<()> {
        self.add_queue_evt(device, WORK_TOKEN, evt)
    }

    /// A handle that makes [`DeviceLoop::run`] return.
    pub fn stop_handle(&self) -> std::io::Result<EventFd> {
        self.stop_evt.try_clone()
    }

    /// Runs until stopped. A device that panics ends the VM with an error instead of
    /// leaving the guest waiting on a dead device forever.
    pub fn run(self, control: Arc<VmControl>) {
        self.serve(&control);
    }

    fn serve(self, control: &VmControl) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    control.finish(VmExit::Error(format!("device thread: epoll: {e}")));
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == STOP_TOKEN {
                    return;
                }
                let result = catch_unwind(AssertUnwindSafe(|| self.dispatch(ev)));
                if let Err(panic) = result {
                    let msg = crate::control::panic_message(panic.as_ref());
                    error!("device model panicked: {msg}");
                    control.finish(VmExit::Error(format!("a device model failed: {msg}")));
                    return;
                }
            }
        }
    }

    fn dispatch(&self, ev: &EpollEvent) {
        let (device, local) = split_token(ev.data());
        let Some(transport) = self.bus.device(device as usize) else {
            return;
        };
        if local < DEVICE_TOKEN_BASE {
            if let Some(evt) = self.queue_evts.get(&ev.data()) {
                // Drain the counter; one notify covers any number of kicks.
                let _ = evt.read();
            }
            if local == WORK_TOKEN {
                lock(transport).run_pending();
            } else {
                lock(transport).queue_notify(local as usize);
            }
        } else {
            lock(transport).handle_event(local - DEVICE_TOKEN_BASE, ev.event_set());
        }
    }
}
