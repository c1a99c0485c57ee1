//! The virtio-vsock wire format as this device uses it.
//!
//! Descriptor chains are validated by `virtio_vsock::packet::VsockPacket` (header size,
//! direction of each descriptor, data inside guest memory). Once a packet has been parsed
//! its header is copied into a plain [`Header`], so every later decision works on values
//! the guest can no longer change underneath us.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{Error as PacketError, VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, VolatileSlice};

/// The host's CID: every packet the device sends comes from it, every packet the guest
/// sends must go to it.
pub(crate) const HOST_CID: u64 = 2;

/// Largest payload of one packet either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
/// Rx buffers larger than this are refused by the parser, tx packets claiming more too.
pub(crate) const MAX_PKT_DATA: u32 = 64 * 1024;

/// `type` of a stream socket; the only type offered (no SEQPACKET feature).
pub(crate) const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio spec 5.10.6).
pub(crate) mod op {
    /// Open a connection.
    pub const REQUEST: u16 = 1;
    /// Accept a connection.
    pub const RESPONSE: u16 = 2;
    /// Refuse or abort a connection.
    pub const RST: u16 = 3;
    /// The sender will not send and/or receive any more.
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Unsolicited buffer space report.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags: the connection is over.
pub(crate) const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Size of the packet header on the wire.
pub(crate) const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// A packet header by value (host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The header of a packet parsed from the tx queue.
    pub fn of(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// The RST that answers this packet: addressed back to its sender, with no credit.
    pub fn rst_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Self::default()
        }
    }

    /// The little-endian wire layout.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire layout.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Writes this header into an rx packet's header descriptor.
    pub fn write_to(self, pkt: &VsockPacket<'_, ()>) -> Result<(), vm_memory::VolatileMemoryError> {
        // One 44-byte copy rather than the packet's per-field setters (ten guest writes).
        pkt.header_slice().write_slice(&self.to_bytes(), 0)
    }
}

/// A packet from the tx queue: its header, copied, and its payload in guest memory.
pub(crate) struct TxPacket<'a> {
    pub hdr: Header,
    payload: Payload<'a>,
}

enum Payload<'a> {
    /// What Linux sends up to 6.x with linear skbs, and what the crate parses.
    One(Option<VolatileSlice<'a, ()>>),
    /// The payload split over several descriptors.
    Split(Vec<VolatileSlice<'a, ()>>),
}

impl TxPacket<'_> {
    /// The payload's pieces, in order; empty for a packet without data.
    pub fn data(&self) -> &[VolatileSlice<'_, ()>] {
        match &self.payload {
            Payload::One(one) => one.as_slice(),
            Payload::Split(pieces) => pieces,
        }
    }
}

/// Parses a tx chain.
///
/// `VsockPacket` does the work, but it expects the payload in one descriptor. Drivers may
/// split it over several (Linux does for non-linear skbs), which the crate reports as a
/// too-small data descriptor; those chains are gathered here instead of being dropped,
/// which would silently cut bytes out of the stream.
pub(crate) fn parse_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
) -> Result<TxPacket<'a>, PacketError> {
    let mut attempt = chain.clone();
    match VsockPacket::from_tx_virtq_chain(mem, &mut attempt, MAX_PKT_DATA) {
        Ok(pkt) => Ok(TxPacket {
            hdr: Header::of(&pkt),
            payload: Payload::One(pkt.data_slice().copied()),
        }),
        Err(PacketError::DescriptorLengthTooSmall) => gather_tx(mem, chain),
        Err(e) => Err(e),
    }
}

/// The header in the first descriptor, the payload spread over the following readable
/// descriptors.
fn gather_tx<'a>(
    mem: &'a GuestMemoryMmap,
    mut chain: DescriptorChain<&'a GuestMemoryMmap>,
) -> Result<TxPacket<'a>, PacketError> {
    let head = chain.next().ok_or(PacketError::DescriptorChainTooShort)?;
    if head.is_write_only() {
        return Err(PacketError::UnexpectedWriteOnlyDescriptor);
    }
    if (head.len() as usize) < HEADER_SIZE || !head.has_next() {
        return Err(PacketError::DescriptorLengthTooSmall);
    }
    let mut raw = [0u8; HEADER_SIZE];
    mem.read_slice(&mut raw, head.addr())
        .map_err(PacketError::InvalidMemoryAccess)?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len > MAX_PKT_DATA {
        return Err(PacketError::InvalidHeaderLen(hdr.len));
    }
    let mut remaining = hdr.len as usize;
    // The chain iterator stops after queue-size descriptors, which bounds this Vec.
    let mut pieces = Vec::new();
    for desc in chain {
        if remaining == 0 {
            break;
        }
        if desc.is_write_only() {
            return Err(PacketError::UnexpectedWriteOnlyDescriptor);
        }
        let n = remaining.min(desc.len() as usize);
        if n == 0 {
            continue;
        }
        // One mapping per piece: a descriptor straddling two memory regions is refused,
        // as the crate does.
        let piece = mem
            .get_slice(desc.addr(), n)
            .map_err(PacketError::InvalidMemoryAccess)?;
        pieces.push(piece);
        remaining -= n;
    }
    if remaining > 0 {
        return Err(PacketError::DescriptorChainTooShort);
    }
    Ok(TxPacket {
        hdr,
        payload: Payload::Split(pieces),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_its_wire_layout() {
        let h = Header {
            src_cid: 0x1122_3344_5566_7788,
            dst_cid: 2,
            src_port: 1 << 30,
            dst_port: 52,
            len: 4096,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0xdead_beef,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn rst_reply_goes_back_to_the_sender_without_credit() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            op: op::REQUEST,
            type_: TYPE_STREAM,
            buf_alloc: 99,
            ..Header::default()
        };
        let r = h.rst_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 52, 1000)
        );
        assert_eq!((r.op, r.buf_alloc, r.len), (op::RST, 0, 0));
    }
}
