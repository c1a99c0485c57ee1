//! A test guest's virtio driver: split queues over `MockSplitQueue` rings in test guest
//! memory, each descriptor index owning a buffer slot, for the hostile-driver tests of
//! every device (vsock, net).

use std::collections::HashMap;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Entries of every test queue.
pub const QUEUE_SIZE: u16 = 256;
/// Where each queue's used ring sits relative to its descriptor table (see [`Driver`]).
const USED_RING_OFFSET: u64 = 0x2000;

/// One descriptor of a chain the test guest publishes.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Address; `None` means the buffer slot owned by the descriptor's index.
    pub addr: Option<u64>,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
    /// Points at an indirect descriptor table (`len` bytes at `addr`).
    pub indirect: bool,
}

impl Desc {
    /// A device-readable descriptor of `len` bytes in its own slot.
    pub fn r(len: u32) -> Self {
        Self {
            addr: None,
            len,
            write: false,
            indirect: false,
        }
    }

    /// A device-writable descriptor of `len` bytes in its own slot.
    pub fn w(len: u32) -> Self {
        Self {
            addr: None,
            len,
            write: true,
            indirect: false,
        }
    }

    /// A descriptor naming an indirect table of `count` descriptors at `addr` (written
    /// with [`write_indirect_table`]).
    pub fn indirect(addr: u64, count: u32) -> Self {
        Self {
            addr: Some(addr),
            len: count * 16,
            write: false,
            indirect: true,
        }
    }

    /// The same descriptor at an explicit guest address.
    pub fn at(self, addr: u64) -> Self {
        Self {
            addr: Some(addr),
            ..self
        }
    }
}

/// The driver side of one split queue.
///
/// The descriptor table and avail ring are the mock's. The used ring is not: the mock
/// places it at `avail.end()`, which counts ring entries rather than bytes, so it overlaps
/// the second half of the avail ring and breaks as soon as positions wrap past half the
/// queue. It lives at `ring + USED_RING_OFFSET` instead.
pub struct Driver {
    q: MockSplitQueue<'static, GuestMemoryMmap>,
    used_addr: u64,
    mem: &'static GuestMemoryMmap,
    buf_base: u64,
    slot: u64,
    free: Vec<u16>,
    /// Descriptor indices of each published chain, by head.
    chains: HashMap<u16, Vec<u16>>,
    next_avail: u16,
    used_seen: u16,
}

impl Driver {
    /// A queue whose rings start at `ring`, descriptor `i` owning the `slot` bytes at
    /// `buf_base + i * slot`.
    pub fn new(mem: &'static GuestMemoryMmap, ring: u64, buf_base: u64, slot: u64) -> Self {
        Self {
            q: MockSplitQueue::create(mem, GuestAddress(ring), QUEUE_SIZE),
            used_addr: ring + USED_RING_OFFSET,
            mem,
            buf_base,
            slot,
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: HashMap::new(),
            next_avail: 0,
            used_seen: 0,
        }
    }

    /// The device side of this queue, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q: Queue = self.q.create_queue().unwrap();
        q.set_used_ring_address(
            Some(self.used_addr as u32),
            Some((self.used_addr >> 32) as u32),
        );
        q
    }

    /// The buffer slot of descriptor `index`.
    pub fn slot(&self, index: u16) -> u64 {
        self.buf_base + u64::from(index) * self.slot
    }

    /// Descriptors not handed to the device.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Writes the chain into the descriptor table and makes it available. Returns the
    /// descriptor indices, head first.
    pub fn publish(&mut self, descs: &[Desc]) -> Vec<u16> {
        assert!(
            self.free.len() >= descs.len(),
            "test guest ran out of descriptors"
        );
        let idx: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if d.indirect {
                flags |= virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
            }
            let next = if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                idx[i + 1]
            } else {
                0
            };
            let addr = d.addr.unwrap_or_else(|| self.slot(idx[i]));
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, d.len, flags, next));
            self.q.desc_table().store(idx[i], raw).unwrap();
        }
        let pos = usize::from(self.next_avail % QUEUE_SIZE);
        self.q.avail().ring().ref_at(pos).unwrap().store(idx[0]);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.q.avail().idx().store(self.next_avail);
        self.chains.insert(idx[0], idx.clone());
        idx
    }

    /// Chains the device returned since the last call: (descriptor indices, used length).
    pub fn take_used(&mut self) -> Vec<(Vec<u16>, u32)> {
        let used_idx: u16 = self.mem.read_obj(GuestAddress(self.used_addr + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != used_idx {
            let pos = u64::from(self.used_seen % QUEUE_SIZE);
            let elem: VirtqUsedElem = self
                .mem
                .read_obj(GuestAddress(self.used_addr + 4 + 8 * pos))
                .unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            let head = u16::try_from(elem.id()).unwrap();
            let chain = self
                .chains
                .remove(&head)
                .expect("device returned an unknown head");
            self.free.extend(chain.iter().rev());
            out.push((chain, elem.len()));
        }
        out
    }

    /// Sets `used_event` (EVENT_IDX): interrupt once the device used entry `idx`.
    pub fn set_used_event(&self, idx: u16) {
        let addr = self
            .q
            .avail_addr()
            .0
            .checked_add(4 + 2 * u64::from(QUEUE_SIZE))
            .unwrap();
        self.mem.write_obj(idx, GuestAddress(addr)).unwrap();
    }

    /// The device's `avail_event` (EVENT_IDX): kick when the avail index passes it.
    pub fn avail_event(&self) -> u16 {
        let addr = self.used_addr + 4 + 8 * u64::from(QUEUE_SIZE);
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Overwrites the avail index, as a broken or hostile driver might.
    pub fn set_avail_idx(&self, idx: u16) {
        self.q.avail().idx().store(idx);
    }

    /// Number of chains published so far (the avail index).
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }
}

/// Writes an indirect descriptor table at `table`: each entry `(addr, len, write)`,
/// chained in order.
pub fn write_indirect_table(mem: &GuestMemoryMmap, table: u64, entries: &[(u64, u32, bool)]) {
    for (i, &(addr, len, write)) in entries.iter().enumerate() {
        let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        let next = if i + 1 < entries.len() {
            flags |= VRING_DESC_F_NEXT as u16;
            (i + 1) as u16
        } else {
            0
        };
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        mem.write_obj(raw, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
}
