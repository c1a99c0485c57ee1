//! virtio-vsock with the hybrid unix-socket backend (the model Firecracker made common).
//!
//! The guest sees a vsock device with its own CID; the host side is plain unix sockets:
//! - a host process connects to `uds_path` and writes `CONNECT <guest port>\n`; once the
//!   guest accepts it reads `OK <host port>\n` and the stream is the connection
//!   (`unix`);
//! - a guest connection to host port `P` is handed to whoever listens on `<uds_path>_P`.
//!
//! The files follow the layers: this one is the virtio device (queues, notifications,
//! interrupts), `packet` the wire format, `connection` one connection's state and
//! credit accounting, `muxer` the table of connections and what is owed to the guest.
//!
//! Everything the guest sends is hostile input: a malformed chain is returned with used
//! length 0, a packet breaking the protocol resets its connection, and every buffer and
//! queue the guest can make us fill is bounded (see `muxer`).

mod connection;
mod muxer;
mod packet;
mod unix;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::debug;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, VirtioDevice,
};
use muxer::{Muxer, RxFill};
use packet::{HOST_CID, MAX_PKT_DATA};

/// Queue size of each of the three queues.
const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

struct Active {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    /// Never written: the only event (transport reset) matters for snapshots, which
    /// husk does not take. Kept so the guest's buffers stay accounted for.
    _evq: Option<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device whose host side is a unix socket.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    active: Option<Active>,
}

impl Vsock {
    /// A device giving the guest CID `guest_cid`, reachable from the host through a unix
    /// socket bound at `uds_path`. Fails if something already exists at `uds_path` (it is
    /// not ours to remove) or the CID is reserved. The socket file is removed on drop.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> io::Result<Self> {
        // 0, 1 and 2 are the hypervisor, loopback and host; Linux guests keep CIDs in 32
        // bits and reserve u32::MAX for "any".
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("vsock guest CID {guest_cid} is reserved or out of range"),
            ));
        }
        Ok(Self {
            guest_cid,
            muxer: Muxer::new(guest_cid, &uds_path)?,
            active: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Where host processes connect.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Moves packets both ways until neither queue can make progress, then interrupts the
    /// guest once if it asked to be told.
    fn process(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut tx_used = false;
        let mut rx_used = false;
        loop {
            let tx = process_tx(active, &mut self.muxer);
            tx_used |= tx.used;
            rx_used |= process_rx(active, &mut self.muxer);
            // Tx stopped because replies piled up; go on if rx just took them.
            if !tx.stalled || self.muxer.tx_blocked() {
                break;
            }
        }
        // Both must be asked: needs_notification also resets the queue's event bookkeeping.
        let notify_tx = tx_used && active.txq.needs_notification(&active.mem).unwrap_or(true);
        let notify_rx = rx_used && active.rxq.needs_notification(&active.mem).unwrap_or(true);
        if notify_tx || notify_rx {
            if let Err(e) = active.interrupt.signal_used_queue() {
                crate::guest_warn!("virtio-vsock: cannot signal the guest: {e}");
            }
        }
    }
}

struct TxResult {
    used: bool,
    /// Stopped with chains left in the queue because too many RSTs wait for rx buffers.
    stalled: bool,
}

/// Drains the tx queue into the muxer.
fn process_tx(active: &mut Active, muxer: &mut Muxer) -> TxResult {
    let mut result = TxResult {
        used: false,
        stalled: false,
    };
    let Active { mem, txq, .. } = active;
    loop {
        if let Err(e) = txq.disable_notification(mem) {
            crate::guest_warn!("virtio-vsock: tx queue unusable: {e}");
            return result;
        }
        let mut popped = false;
        while !muxer.tx_blocked() {
            let Some(chain) = txq.pop_descriptor_chain(&*mem) else {
                break;
            };
            popped = true;
            let head = chain.head_index();
            match packet::parse_tx(mem, chain) {
                Ok(pkt) => muxer.handle_guest_packet(&pkt),
                Err(e) => debug!("virtio-vsock: dropping malformed tx chain: {e}"),
            }
            // The device writes nothing into tx buffers.
            if let Err(e) = txq.add_used(mem, head, 0) {
                debug!("virtio-vsock: cannot return tx descriptor {head}: {e}");
            }
            result.used = true;
        }
        if muxer.tx_blocked() {
            // Kicks are useless until rx makes room; process() comes back here then.
            result.stalled = true;
            return result;
        }
        match txq.enable_notification(mem) {
            // More chains arrived while we drained. Unless nothing could be popped at
            // all: then the avail index is nonsense and looking again would spin.
            Ok(true) if popped => continue,
            Ok(_) => return result,
            Err(e) => {
                crate::guest_warn!("virtio-vsock: tx queue unusable: {e}");
                return result;
            }
        }
    }
}

/// Fills rx buffers with what the muxer owes the guest. Returns whether any were used.
fn process_rx(active: &mut Active, muxer: &mut Muxer) -> bool {
    let mut used = false;
    // Whether the last pop found nothing; a second miss in a row ends the pass.
    let mut missed = false;
    let Active { mem, rxq, .. } = active;
    while muxer.has_rx_work() {
        let Some(mut chain) = rxq.pop_descriptor_chain(&*mem) else {
            // Out of buffers: ask for a kick when the guest adds some, and look again in
            // case it did so just now. If the queue claims buffers that cannot be
            // popped (a nonsense avail index), looking again would spin.
            match rxq.enable_notification(mem) {
                Ok(true) if !missed => {
                    missed = true;
                    continue;
                }
                Ok(_) => break,
                Err(e) => {
                    crate::guest_warn!("virtio-vsock: rx queue unusable: {e}");
                    break;
                }
            }
        };
        missed = false;
        let head = chain.head_index();
        let len = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA) {
            Ok(pkt) => match muxer.fill_rx(&pkt) {
                RxFill::Written(len) => len,
                RxFill::Unusable => 0,
                RxFill::NoWork => {
                    // Nothing was written: the buffer stays the guest's next one.
                    rxq.go_to_previous_position();
                    break;
                }
            },
            Err(e) => {
                debug!("virtio-vsock: dropping malformed rx chain: {e}");
                0
            }
        };
        if let Err(e) = rxq.add_used(mem, head, len) {
            debug!("virtio-vsock: cannot return rx descriptor {head}: {e}");
        }
        used = true;
    }
    used
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, _features: u64) {
        // EVENT_IDX, the only feature offered, is applied to the queues by the transport.
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
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
        let evq = queues.next().filter(|q| q.ready());
        if evq.is_none() {
            debug!("virtio-vsock: event queue {EVQ} not set up; it is never used anyway");
        }
        self.muxer.activate(ctx.events)?;
        self.active = Some(Active {
            mem: ctx.mem,
            rxq,
            txq,
            _evq: evq,
            interrupt: ctx.interrupt,
        });
        // The guest may have queued packets before DRIVER_OK.
        self.process();
        Ok(())
    }

    fn queue_notify(&mut self, queue: usize) {
        // Rx: new buffers for stalled sends. Tx: new packets. The event queue only ever
        // gets buffers, which we do not use.
        if queue == RXQ || queue == TXQ {
            self.process();
        }
    }

    fn handle_event(&mut self, token: u32, events: EventSet) {
        if self.active.is_none() {
            return;
        }
        self.muxer.handle_event(token, events);
        self.process();
    }

    fn reset(&mut self) {
        self.muxer.deactivate();
        self.active = None;
    }
}

#[cfg(test)]
mod tests;
