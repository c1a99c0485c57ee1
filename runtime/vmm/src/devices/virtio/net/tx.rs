//! Transmit: guest frames written to the tap straight from guest memory (one `writev`
//! per frame, header first).
//!
//! Each chain is checked before anything is written: only device-readable descriptors,
//! each inside guest memory, at most [`TX_FRAME_MAX`] bytes and [`MAX_SEGMENTS`]
//! descriptors in all, at least a header and an Ethernet header, and no offload the guest
//! did not negotiate. A chain that fails is returned and its frame dropped; the queue goes
//! on.

use tracing::{debug, warn};
use virtio_bindings::virtio_net::*;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};

use super::tap::{write_frame, FrameIo, VNET_HDR_LEN};
use super::{bit, Active, NetStats, TX_BUDGET};

/// The largest frame the guest may send: a 64 KiB TSO packet, Ethernet and VLAN headers,
/// and the virtio-net header.
pub const TX_FRAME_MAX: usize = VNET_HDR_LEN + 65536 + 64;
/// Descriptors per frame (`IOV_MAX` less the header's own entry).
pub const MAX_SEGMENTS: usize = 1023;
const ETH_HLEN: usize = 14;

/// Scratch `iovec`s reused for every frame.
pub struct TxState {
    iov: Vec<libc::iovec>,
}

// SAFETY: `iov` only holds pointers while one frame is being written, on the thread that
// owns the device; it is cleared before and never read across calls.
unsafe impl Send for TxState {}

impl TxState {
    pub fn new() -> Self {
        Self {
            iov: Vec::with_capacity(64),
        }
    }
}

/// What a transmit pass did.
pub struct TxResult {
    /// Chains were returned to the guest.
    pub used: bool,
    /// The budget ran out with chains possibly left: come back soon.
    pub more: bool,
}

/// Writes up to [`TX_BUDGET`] guest frames to the tap (or drops them without one).
pub fn process(
    active: &mut Active,
    tap: Option<&dyn FrameIo>,
    acked: u64,
    st: &mut TxState,
    stats: &NetStats,
) -> TxResult {
    let mut result = TxResult {
        used: false,
        more: false,
    };
    let mut sent = 0;
    loop {
        if let Err(e) = active.txq.disable_notification(&*active.mem) {
            warn!("virtio-net: transmit queue unusable: {e}");
            return result;
        }
        let mut popped = false;
        while sent < TX_BUDGET {
            let Some(chain) = active.txq.pop_descriptor_chain(&*active.mem) else {
                break;
            };
            popped = true;
            sent += 1;
            let head = chain.head_index();
            let outcome = match tap {
                Some(tap) => send(&active.mem, chain, acked, st, tap),
                None => Err("no tap attached".into()),
            };
            match outcome {
                Ok(()) => NetStats::bump(&stats.tx_frames),
                Err(why) => {
                    debug!("virtio-net: dropping transmit chain {head}: {why}");
                    NetStats::bump(&stats.tx_dropped);
                }
            }
            // The device writes nothing into transmit buffers.
            if let Err(e) = active.txq.add_used(&*active.mem, head, 0) {
                warn!("virtio-net: cannot return transmit chain {head}: {e}");
                return result;
            }
            result.used = true;
        }
        if sent >= TX_BUDGET {
            result.more = true;
            return result;
        }
        match active.txq.enable_notification(&*active.mem) {
            // More arrived while we drained; unless nothing could be popped at all (a
            // nonsense avail index), which would spin.
            Ok(true) if popped => continue,
            Ok(_) => return result,
            Err(e) => {
                warn!("virtio-net: transmit queue unusable: {e}");
                return result;
            }
        }
    }
}

/// Checks one chain and writes its frame.
fn send(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    acked: u64,
    st: &mut TxState,
    tap: &dyn FrameIo,
) -> Result<(), String> {
    let mut hdr = [0u8; VNET_HDR_LEN];
    st.iov.clear();
    // Entry 0 is for the header, checked and copied out of guest memory (set below).
    st.iov.push(libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    let mut hdr_filled = 0;
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err("device-writable descriptor in a transmit chain".into());
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        total = total.saturating_add(len);
        if total > TX_FRAME_MAX {
            return Err(format!("frame longer than {TX_FRAME_MAX} bytes"));
        }
        if st.iov.len() > MAX_SEGMENTS {
            return Err(format!("more than {MAX_SEGMENTS} descriptors"));
        }
        let slice = mem
            .get_slice(desc.addr(), len)
            .map_err(|e| format!("descriptor at {:#x}+{len}: {e}", desc.addr().0))?;
        let mut skip = 0;
        if hdr_filled < VNET_HDR_LEN {
            let n = (VNET_HDR_LEN - hdr_filled).min(len);
            let got = slice
                .subslice(0, n)
                .map(|s| s.copy_to(&mut hdr[hdr_filled..hdr_filled + n]))
                .map_err(|e| e.to_string())?;
            hdr_filled += got;
            skip = n;
        }
        if skip < len {
            st.iov.push(libc::iovec {
                // SAFETY: `skip < len` and the slice is `len` bytes of mapped guest memory.
                iov_base: unsafe { slice.ptr_guard().as_ptr().add(skip) } as *mut _,
                iov_len: len - skip,
            });
        }
    }
    if total < VNET_HDR_LEN + ETH_HLEN {
        return Err(format!(
            "frame of {total} bytes is shorter than its headers"
        ));
    }
    check_header(&hdr, acked)?;
    st.iov[0] = libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    };
    // SAFETY: the first entry points at `hdr`, alive for the call; the others at guest
    // memory checked above, which `mem` keeps mapped for the call.
    let written = unsafe { write_frame(tap, &st.iov) };
    st.iov.clear();
    match written {
        Ok(n) if n == total => Ok(()),
        Ok(n) => Err(format!("the tap took {n} of {total} bytes")),
        Err(e) => Err(format!("the tap refused the frame: {e}")),
    }
}

/// Refuses offloads the guest did not negotiate.
fn check_header(hdr: &[u8; VNET_HDR_LEN], acked: u64) -> Result<(), String> {
    let has = |b: u32| acked & bit(b) != 0;
    let flags = u32::from(hdr[0]);
    let gso = u32::from(hdr[1]);
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(VIRTIO_NET_F_CSUM) {
        return Err("checksum offload without VIRTIO_NET_F_CSUM".into());
    }
    let ok = match gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => gso == VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    };
    if !ok || (gso & VIRTIO_NET_HDR_GSO_ECN != 0 && !has(VIRTIO_NET_F_HOST_ECN)) {
        return Err(format!("segmentation offload {gso:#x} not negotiated"));
    }
    Ok(())
}
