//! Transmit: well-formed frames reach the tap intact; broken or hostile chains are
//! dropped without stopping the queue; a flooding guest gets a bounded share per wakeup.

use virtio_bindings::virtio_net::*;

use super::super::tap::VNET_HDR_LEN;
use super::super::{NetStats, TX_BUDGET};
use super::harness::*;
use crate::devices::virtio::VirtioDevice;

const CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const TSO4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;

fn f(b: u32) -> u64 {
    1 << b
}

fn with_hdr(hdr: [u8; VNET_HDR_LEN], frame: &[u8]) -> Vec<u8> {
    let mut v = hdr.to_vec();
    v.extend_from_slice(frame);
    v
}

#[test]
fn a_frame_reaches_the_tap_with_its_header() {
    let (mut net, host) = TestNet::new(0);
    let data = frame(1514, 1);
    net.send(vnet_hdr(0, 0), &data);
    assert_eq!(host.recv_all(), vec![with_hdr(vnet_hdr(0, 0), &data)]);
    assert_eq!(net.tx_used(), vec![0], "nothing is written into tx buffers");
    assert!(net.interrupts() > 0);
    assert_eq!(NetStats::get(&net.dev.stats().tx_frames), 1);
}

#[test]
fn a_frame_split_across_many_descriptors_arrives_whole() {
    let (mut net, host) = TestNet::new(0);
    let bytes = with_hdr(vnet_hdr(0, 0), &frame(3000, 2));
    // The header itself split in two, then uneven pieces, one of them empty.
    let descs = [
        Desc::r(5),
        Desc::r(7),
        Desc::r(0),
        Desc::r(1000),
        Desc::r(1),
        Desc::r(2000 - 1),
    ];
    net.send_chain(&descs, &bytes);
    assert_eq!(host.recv_all(), vec![bytes]);
}

#[test]
fn offloads_pass_only_when_negotiated() {
    let data = frame(200, 3);
    // Not negotiated: dropped.
    let (mut net, host) = TestNet::new(0);
    net.send(vnet_hdr(CSUM, 0), &data);
    net.send(vnet_hdr(0, TSO4), &data);
    assert!(host.recv_all().is_empty());
    assert_eq!(net.tx_used(), vec![0, 0], "dropped chains still come back");
    assert_eq!(NetStats::get(&net.dev.stats().tx_dropped), 2);
    // Negotiated: passed on untouched.
    let (mut net, host) =
        TestNet::new(f(VIRTIO_NET_F_CSUM) | f(VIRTIO_NET_F_HOST_TSO4) | f(VIRTIO_NET_F_HOST_TSO6));
    net.send(vnet_hdr(CSUM, TSO4), &data);
    assert_eq!(host.recv_all(), vec![with_hdr(vnet_hdr(CSUM, TSO4), &data)]);
    // UDP fragmentation offload is never offered; ECN needs HOST_ECN.
    net.send(vnet_hdr(0, VIRTIO_NET_HDR_GSO_UDP as u8), &data);
    net.send(vnet_hdr(0, TSO4 | VIRTIO_NET_HDR_GSO_ECN as u8), &data);
    net.send(vnet_hdr(0, 77), &data);
    assert!(host.recv_all().is_empty());
}

#[test]
fn hostile_chains_are_dropped_and_the_queue_goes_on() {
    let (mut net, host) = TestNet::new(0);
    let good = with_hdr(vnet_hdr(0, 0), &frame(100, 4));
    // A descriptor outside guest memory.
    net.send_chain(&[Desc::r(12), Desc::r(100).at(NOWHERE)], &good);
    // One straddling the end of guest memory.
    net.send_chain(&[Desc::r(12), Desc::r(0x2000).at(MEM_SIZE - 0x1000)], &good);
    // A device-writable descriptor in a transmit chain.
    net.send_chain(&[Desc::r(12), Desc::w(100)], &good);
    // Shorter than the headers.
    net.send_chain(&[Desc::r(12), Desc::r(5)], &good);
    // Longer than any frame may be (two 40 KiB pieces).
    net.send_chain(&[Desc::r(40 << 10), Desc::r(40 << 10)], &good);
    // An absurd length.
    net.send_chain(&[Desc::r(12), Desc::r(u32::MAX)], &good);
    assert!(host.recv_all().is_empty());
    assert_eq!(net.tx_used().len(), 6, "every chain came back");
    // The queue still works.
    net.send_chain(&[Desc::r(12), Desc::r(100)], &good);
    assert_eq!(host.recv_all(), vec![good]);
}

#[test]
fn a_nonsense_avail_index_does_not_spin_the_device() {
    let (mut net, host) = TestNet::new(1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
    net.tx.set_avail_idx(net.tx.avail_idx().wrapping_add(5000));
    net.dev.queue_notify(1);
    net.settle(10);
    assert!(host.recv_all().is_empty());
}

#[test]
fn a_flooding_guest_gets_a_bounded_batch_per_wakeup() {
    let (mut net, host) = TestNet::new(0);
    assert!(TX_BUDGET < QUEUE_SIZE as usize);
    // A full ring and one kick: one budget's worth moves on that wakeup.
    let data = with_hdr(vnet_hdr(0, 0), &frame(60, 5));
    for _ in 0..QUEUE_SIZE {
        net.publish_tx(&[Desc::r(data.len() as u32)], &data);
    }
    net.dev.queue_notify(1);
    assert_eq!(host.recv_all().len(), TX_BUDGET);
    // The rest follows once the device thread comes back to it.
    net.settle(20);
    assert_eq!(host.recv_all().len(), QUEUE_SIZE as usize - TX_BUDGET);
}

#[test]
fn without_a_tap_frames_are_dropped_but_returned() {
    let mut net = TestNet::with(None, None, 0);
    net.send(vnet_hdr(0, 0), &frame(60, 6));
    assert_eq!(net.tx_used(), vec![0]);
    assert_eq!(NetStats::get(&net.dev.stats().tx_dropped), 1);
}

#[test]
fn a_frame_in_an_indirect_table_arrives_and_a_bad_table_is_dropped() {
    use crate::devices::virtio::test_driver::write_indirect_table;
    use vm_memory::{Bytes, GuestAddress};
    let (mut net, host) = TestNet::new(0);
    // The table and the buffers live in the test guest's memory past the rings' slots.
    let table = MEM_SIZE - 0x1_0000;
    let (hdr_at, data_at) = (table + 0x1000, table + 0x2000);
    let data = frame(1000, 8);
    net.mem
        .write_slice(&vnet_hdr(0, 0), GuestAddress(hdr_at))
        .unwrap();
    net.mem.write_slice(&data, GuestAddress(data_at)).unwrap();
    write_indirect_table(
        net.mem,
        table,
        &[(hdr_at, 12, false), (data_at, 1000, false)],
    );
    net.send_chain(&[Desc::indirect(table, 2)], &[]);
    assert_eq!(host.recv_all(), vec![with_hdr(vnet_hdr(0, 0), &data)]);
    // A table whose second entry points outside memory: dropped, the chain returned.
    write_indirect_table(
        net.mem,
        table,
        &[(hdr_at, 12, false), (NOWHERE, 1000, false)],
    );
    net.send_chain(&[Desc::indirect(table, 2)], &[]);
    // A table outside memory altogether.
    net.send_chain(&[Desc::indirect(NOWHERE, 4)], &[]);
    assert!(host.recv_all().is_empty());
    assert_eq!(net.tx_used().len(), 3);
}
