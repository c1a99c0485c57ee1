//! Receive: frames read from the tap into the guest's receive buffers.
//!
//! A frame is read into a host buffer first (the tap says how long it is only once it is
//! read), checked, and copied into as many receive chains as it needs: one without
//! `MRG_RXBUF`, several with it, their count in the header's `num_buffers`. Chains are
//! popped into a stash before any is used, so a frame that does not fit yet leaves the
//! guest's buffers untouched and waits (the tap is not polled meanwhile) until the guest
//! posts more. A chain that cannot hold even a header, or points outside guest memory,
//! goes back empty; the driver drops it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_net::*;
use virtio_queue::{DescriptorChain, QueueT, Writer};
use vm_memory::GuestMemoryMmap;

use super::tap::{read_frame, FrameIo, VNET_HDR_LEN};
use super::{bit, Active, NetStats, RX_BUDGET};

/// The largest frame a tap hands over: a 64 KiB GSO packet, an Ethernet and a VLAN
/// header, and the virtio-net header, with room to spare.
pub const RX_FRAME_MAX: usize = VNET_HDR_LEN + 65536 + 64;

type Chain = DescriptorChain<Arc<GuestMemoryMmap>>;

/// Receive-side state that outlives one wakeup.
pub struct RxState {
    buf: Vec<u8>,
    /// Length of the frame in `buf` still waiting for guest buffers.
    pending: Option<usize>,
    /// Popped chains not used yet, with their capacity.
    stash: VecDeque<(Chain, usize)>,
    stash_bytes: usize,
    /// Whether the tap is being polled.
    pub armed: bool,
}

impl RxState {
    /// The waiting frame's length, if one waits.
    pub fn pending_len(&self) -> Option<usize> {
        self.pending
    }

    /// Chains and bytes popped but not used.
    pub fn stash_len(&self) -> String {
        format!("{} chains, {} bytes", self.stash.len(), self.stash_bytes)
    }

    pub fn new() -> Self {
        Self {
            buf: vec![0; RX_FRAME_MAX],
            pending: None,
            stash: VecDeque::new(),
            stash_bytes: 0,
            armed: false,
        }
    }
}

/// What a receive pass did.
pub struct RxResult {
    /// Chains were returned to the guest.
    pub used: bool,
    /// A frame waits for buffers the guest has not posted.
    pub stalled: bool,
}

/// Moves up to [`RX_BUDGET`] frames from the tap into the guest.
pub fn process(
    active: &mut Active,
    tap: &dyn FrameIo,
    acked: u64,
    st: &mut RxState,
    stats: &NetStats,
) -> RxResult {
    let mut result = RxResult {
        used: false,
        stalled: false,
    };
    let mergeable = acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
    for _ in 0..RX_BUDGET {
        let len = match st.pending.take() {
            Some(len) => len,
            None => match read_frame(tap, &mut st.buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    debug!("virtio-net: reading the tap: {e}");
                    break;
                }
            },
        };
        if !sanitize_header(&mut st.buf[..len], acked) {
            debug!(
                len,
                header = ?&st.buf[..VNET_HDR_LEN.min(len)],
                "virtio-net: dropping a tap frame the guest did not negotiate"
            );
            NetStats::bump(&stats.rx_dropped);
            continue;
        }
        let need = if mergeable { len } else { usize::MAX };
        if !fill_stash(active, st, need, len, &mut result.used, stats) {
            if !mergeable && !st.stash.is_empty() {
                // The guest's next buffer is too small for this frame: it cannot take it.
                debug!(
                    len,
                    "virtio-net: dropping a tap frame too big for the buffer"
                );
                NetStats::bump(&stats.rx_dropped);
                continue;
            }
            st.pending = Some(len);
            result.stalled = true;
            break;
        }
        if mergeable {
            deliver_merged(active, st, len, stats);
        } else {
            deliver_whole(active, st, len, stats);
        }
        result.used = true;
    }
    result
}

/// Drops what the guest did not negotiate: returns false to drop the frame, clears the
/// `DATA_VALID` hint for a guest without `GUEST_CSUM`.
fn sanitize_header(frame: &mut [u8], acked: u64) -> bool {
    if frame.len() < VNET_HDR_LEN + 14 {
        return false;
    }
    let has = |b: u32| acked & bit(b) != 0;
    let flags = u32::from(frame[0]);
    let gso = u32::from(frame[1]);
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(VIRTIO_NET_F_GUEST_CSUM) {
        return false;
    }
    if flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 && !has(VIRTIO_NET_F_GUEST_CSUM) {
        frame[0] &= !(VIRTIO_NET_HDR_F_DATA_VALID as u8);
    }
    let ok = match gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => gso == VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    };
    ok && (gso & VIRTIO_NET_HDR_GSO_ECN == 0 || has(VIRTIO_NET_F_GUEST_ECN))
}

/// Pops chains until the stash holds `need` bytes (mergeable) or one chain of at least
/// `len` bytes is at its front (not mergeable). Unusable chains go back empty.
fn fill_stash(
    active: &mut Active,
    st: &mut RxState,
    need: usize,
    len: usize,
    used: &mut bool,
    stats: &NetStats,
) -> bool {
    loop {
        let enough = if need == usize::MAX {
            st.stash.front().is_some_and(|(_, cap)| *cap >= len)
        } else {
            st.stash_bytes >= need
        };
        if enough {
            return true;
        }
        if need == usize::MAX && !st.stash.is_empty() {
            return false;
        }
        let Some(chain) = pop(active) else {
            return false;
        };
        let head = chain.head_index();
        let cap = Writer::new(&*active.mem, chain.clone())
            .map(|w| w.available_bytes())
            .unwrap_or(0);
        if cap < VNET_HDR_LEN {
            debug!("virtio-net: returning unusable receive chain {head}");
            NetStats::bump(&stats.rx_bad_buffers);
            if let Err(e) = active.rxq.add_used(&*active.mem, head, 0) {
                warn!("virtio-net: cannot return receive chain {head}: {e}");
            }
            *used = true;
            continue;
        }
        st.stash_bytes += cap;
        st.stash.push_back((chain, cap));
    }
}

/// The next receive chain, asking for a kick if there is none.
fn pop(active: &mut Active) -> Option<Chain> {
    for _ in 0..2 {
        if let Some(c) = active.rxq.pop_descriptor_chain(active.mem.clone()) {
            return Some(c);
        }
        // With event-idx this also tells the driver to kick once it posts more; if it
        // posted some in between, look once more (a nonsense avail index must not spin).
        match active.rxq.enable_notification(&*active.mem) {
            Ok(true) => continue,
            Ok(false) => return None,
            Err(e) => {
                warn!("virtio-net: receive queue unusable: {e}");
                return None;
            }
        }
    }
    None
}

fn take_front(st: &mut RxState) -> (Chain, usize) {
    let (chain, cap) = st.stash.pop_front().expect("stash checked by fill_stash");
    st.stash_bytes -= cap;
    (chain, cap)
}

fn deliver_whole(active: &mut Active, st: &mut RxState, len: usize, stats: &NetStats) {
    let (chain, _) = take_front(st);
    st.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
    write_chain(active, chain, &st.buf[..len], stats);
    NetStats::bump(&stats.rx_frames);
}

fn deliver_merged(active: &mut Active, st: &mut RxState, len: usize, stats: &NetStats) {
    let mut count = 0u16;
    let mut covered = 0;
    for (_, cap) in &st.stash {
        count += 1;
        covered += cap;
        if covered >= len {
            break;
        }
    }
    st.buf[10..12].copy_from_slice(&count.to_le_bytes());
    let mut offset = 0;
    for _ in 0..count {
        let (chain, cap) = take_front(st);
        let end = (offset + cap).min(len);
        write_chain(active, chain, &st.buf[offset..end], stats);
        offset = end;
    }
    NetStats::bump(&stats.rx_frames);
}

fn write_chain(active: &mut Active, chain: Chain, data: &[u8], stats: &NetStats) {
    let head = chain.head_index();
    let written = match Writer::new(&*active.mem, chain) {
        Ok(mut w) => match w.write_all(data) {
            Ok(()) => data.len(),
            Err(e) => {
                // The guest changed the chain after it was measured.
                debug!("virtio-net: receive chain {head} shrank: {e}");
                NetStats::bump(&stats.rx_bad_buffers);
                w.bytes_written()
            }
        },
        Err(e) => {
            debug!("virtio-net: receive chain {head} became unusable: {e}");
            NetStats::bump(&stats.rx_bad_buffers);
            0
        }
    };
    if let Err(e) = active.rxq.add_used(&*active.mem, head, written as u32) {
        warn!("virtio-net: cannot return receive chain {head}: {e}");
    }
}
