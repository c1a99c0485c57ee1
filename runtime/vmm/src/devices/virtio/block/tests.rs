//! virtio-blk driven through guest memory by a mock driver.

use super::request::{execute, Disk};
use super::*;
use crate::devices::virtio::{EventRegistrar, Interrupt};
use std::io::Write as _;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x20_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

fn disk_file(sectors: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    f.write_all(&data).unwrap();
    f
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// Runs one request made of `descs` directly and returns (used len, status byte).
fn run(block: &Block, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u32, u8) {
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let q = MockSplitQueue::new(mem, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    let disk = Disk {
        file: &block.file,
        capacity_sectors: block.capacity_sectors,
        read_only: block.read_only,
        id: &block.id,
    };
    let used = execute(&disk, mem, chain);
    (used, mem.read_obj(GuestAddress(STATUS)).unwrap())
}

fn read_req(len: u32) -> Vec<RawDescriptor> {
    vec![desc(HDR, 16, 0), desc(DATA, len, W), desc(STATUS, 1, W)]
}

fn write_req(len: u32) -> Vec<RawDescriptor> {
    vec![desc(HDR, 16, 0), desc(DATA, len, 0), desc(STATUS, 1, W)]
}

#[test]
fn read_returns_the_file_contents() {
    let f = disk_file(8);
    let block = Block::new(f.path(), false, "vda").unwrap();
    let mem = memory();
    header(&mem, 0, 2);
    assert_eq!(run(&block, &mem, &read_req(1024)), (1025, 0));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    let want: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(got, want);
}

#[test]
fn write_lands_in_the_file() {
    let f = disk_file(8);
    let block = Block::new(f.path(), false, "vda").unwrap();
    let mem = memory();
    header(&mem, 1, 3);
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(run(&block, &mem, &write_req(512)), (1, 0));
    let contents = std::fs::read(f.path()).unwrap();
    assert!(contents[3 * 512..4 * 512].iter().all(|&b| b == 0x5a));
    assert_eq!(
        contents[4 * 512],
        (4 * 512 % 251) as u8,
        "next sector untouched"
    );
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_its_data() {
    let f = disk_file(4);
    let before = std::fs::read(f.path()).unwrap();
    let block = Block::new(f.path(), true, "vda").unwrap();
    assert_ne!(block.avail_features() & VIRTIO_BLK_F_RO, 0);
    let mem = memory();
    header(&mem, 1, 0);
    assert_eq!(run(&block, &mem, &write_req(512)).1, 1, "IOERR");
    assert_eq!(std::fs::read(f.path()).unwrap(), before);
    header(&mem, 4, 0);
    assert_eq!(run(&block, &mem, &read_req(0)).1, 0, "flush is fine");
}

#[test]
fn out_of_range_and_partial_sector_requests_fail() {
    let f = disk_file(4);
    let block = Block::new(f.path(), false, "vda").unwrap();
    let mem = memory();
    for (kind, sector, len) in [
        (0, 3, 1024),             // runs past the end
        (0, 4, 512),              // starts at the end
        (1, u64::MAX / 256, 512), // sector * 512 overflows
        (0, 0, 100),              // not whole sectors
        (1, 0, 700),
    ] {
        header(&mem, kind, sector);
        let req = if kind == 0 {
            read_req(len)
        } else {
            write_req(len)
        };
        assert_eq!(
            run(&block, &mem, &req).1,
            1,
            "type {kind} sector {sector} len {len}"
        );
    }
}

#[test]
fn get_id_and_unknown_types() {
    let f = disk_file(1);
    let block = Block::new(f.path(), false, "husk-disk-0").unwrap();
    let mem = memory();
    header(&mem, 8, 0);
    assert_eq!(run(&block, &mem, &read_req(20)), (21, 0));
    let mut id = [0u8; 11];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"husk-disk-0");
    header(&mem, 11, 0); // WRITE_ZEROES is not offered
    assert_eq!(run(&block, &mem, &read_req(0)).1, 2, "UNSUPP");
}

#[test]
fn malformed_chains_get_an_error_or_nothing_but_never_a_panic() {
    let f = disk_file(4);
    let block = Block::new(f.path(), false, "vda").unwrap();
    let mem = memory();
    header(&mem, 0, 0);
    // Header shorter than 16 bytes: IOERR in the status byte.
    assert_eq!(
        run(&block, &mem, &[desc(HDR, 8, 0), desc(STATUS, 1, W)]).1,
        1
    );
    // No writable descriptor at all: nowhere to put a status.
    assert_eq!(
        run(&block, &mem, &[desc(HDR, 16, 0), desc(DATA, 512, 0)]).0,
        0
    );
    // Data buffer outside guest memory.
    assert_eq!(
        run(
            &block,
            &mem,
            &[
                desc(HDR, 16, 0),
                desc(0xffff_0000, 512, W),
                desc(STATUS, 1, W)
            ]
        )
        .0,
        0
    );
    // A length that wraps the address space.
    assert_eq!(
        run(
            &block,
            &mem,
            &[
                desc(HDR, 16, 0),
                desc(u64::MAX - 10, 512, W),
                desc(STATUS, 1, W)
            ]
        )
        .0,
        0
    );
}

#[test]
fn device_serves_its_queue_and_interrupts_the_guest() {
    let f = disk_file(8);
    let mut block = Block::new(f.path(), false, "vda").unwrap();
    let mem = memory();
    let q = MockSplitQueue::new(&mem, 16);
    header(&mem, 0, 1);
    let mut descs = read_req(512);
    descs[0] = RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1));
    descs[1] = RawDescriptor::from(SplitDescriptor::new(
        DATA,
        512,
        W | VRING_DESC_F_NEXT as u16,
        2,
    ));
    q.add_desc_chains(&descs, 0).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    block
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![q.create_queue::<Queue>().unwrap()],
            interrupt: irq.clone(),
            events: EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0),
        })
        .unwrap();
    assert_eq!(q.used().idx().load(), 1);
    let elem = q.used().ring().ref_at(0).unwrap().load();
    assert_eq!((elem.id(), elem.len()), (0, 513));
    assert_eq!(irq.irqfd().read().unwrap(), 1);
    // A kick with nothing new is harmless.
    block.queue_notify(0);
    assert_eq!(q.used().idx().load(), 1);
}

#[test]
fn config_space_reports_capacity_in_sectors() {
    let f = disk_file(6);
    let block = Block::new(f.path(), false, "vda").unwrap();
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 6);
    let mut partial = [0u8; 2];
    block.read_config(0, &mut partial);
    assert_eq!(partial, [6, 0]);
}

#[test]
fn unusable_images_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let err = Block::new(&missing, false, "vda")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.img"), "{err}");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    assert!(Block::new(&empty, false, "vda").is_err());
    assert!(Block::new(dir.path(), true, "vda").is_err());
}

#[test]
fn a_bogus_avail_index_does_not_hang_the_device() {
    let f = disk_file(8);
    let mut block = Block::new(f.path(), false, "vda").unwrap();
    let mem = memory();
    let q = MockSplitQueue::new(&mem, 16);
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    block
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![q.create_queue::<Queue>().unwrap()],
            interrupt: irq,
            events: EventRegistrar::new(Arc::new(Epoll::new().unwrap()), 0),
        })
        .unwrap();
    // The driver claims 1000 new buffers in a queue of 16.
    q.avail().idx().store(1000);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        block.queue_notify(0);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("queue_notify returned");
}
