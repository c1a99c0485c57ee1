//! A guest that breaks the protocol or hands over broken descriptor chains.

use std::io::Read;

use crate::devices::virtio::VirtioDevice;

use super::super::muxer::MAX_QUEUED_RSTS;
use super::super::packet::{op, Header, HEADER_SIZE, MAX_PKT_DATA, TYPE_STREAM};
use super::harness::*;

const HDR: u32 = HEADER_SIZE as u32;
/// Far outside the test guest's memory.
const NOWHERE: u64 = 0xffff_ffff_0000;

/// The device must still be alive: an RW to nowhere gets its RST.
fn assert_still_serving(vm: &mut TestVm) {
    vm.send(guest_hdr(op::RW, 7777, 8888), b"?");
    let rst = vm.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (8888, 7777));
}

#[test]
fn packet_for_an_unknown_connection_gets_rst() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    for o in [
        op::RW,
        op::RESPONSE,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ] {
        vm.send(guest_hdr(o, 5000, 1234), &[]);
        let rst = vm.expect(op::RST);
        assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (1234, 5000));
    }
}

#[test]
fn rst_for_an_unknown_connection_is_not_answered() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    vm.send(guest_hdr(op::RST, 5000, 1234), &[]);
    vm.expect_silence();
}

#[test]
fn packets_with_a_foreign_source_cid_are_dropped() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    let mut hdr = sock.hdr(op::RW);
    hdr.src_cid = 99;
    vm.send(hdr, b"spoofed");
    vm.expect_silence();
    assert_eq!(vm.tx_used_lens().last(), Some(&0));
    host.set_nonblocking(true).unwrap();
    assert!(
        host.read(&mut [0u8; 8]).is_err(),
        "nothing reached the host"
    );
}

#[test]
fn other_destinations_types_and_unknown_ops_get_rst() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let mut to_cid_9 = guest_hdr(op::REQUEST, 5000, 1234);
    to_cid_9.dst_cid = 9;
    vm.send(to_cid_9, &[]);
    let rst = vm.next_packet().unwrap();
    assert_eq!(rst.hdr.op, op::RST);
    assert_eq!(
        rst.hdr.src_cid, 9,
        "the RST comes from the address the guest used"
    );

    let seqpacket = Header {
        type_: TYPE_STREAM + 1,
        ..guest_hdr(op::REQUEST, 5000, 1234)
    };
    vm.send(seqpacket, &[]);
    assert_eq!(vm.next_packet().unwrap().hdr.op, op::RST);

    // An unknown op on a live connection resets it.
    let (mut host, sock) = vm.connect_from_host(52);
    vm.send(sock.hdr(99), &[]);
    vm.expect(op::RST);
    assert!(reads_eof(&mut host));
    assert_eq!(vm.dev.connection_count(), 0);
}

#[test]
fn request_on_an_existing_connection_resets_it() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    vm.send(sock.hdr(op::REQUEST), &[]);
    vm.expect(op::RST);
    assert!(reads_eof(&mut host));
}

#[test]
fn data_beyond_the_credit_resets_the_connection() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    // The host never reads: the socket fills, then the device's buffer, then the guest
    // oversteps. It must be reset before the device holds more than its buffer.
    let chunk = vec![0x5au8; MAX_PKT_DATA as usize];
    let mut sent = 0usize;
    let rst = 'send: loop {
        assert!(sent < 16 << 20, "the device never pushed back");
        vm.send_data(&mut sock, &chunk, chunk.len());
        sent += chunk.len();
        // Credit updates for what the socket took may come first.
        while let Some(p) = vm.take_packet_now() {
            if p.hdr.op != op::CREDIT_UPDATE {
                break 'send p;
            }
        }
    };
    assert_eq!(rst.hdr.op, op::RST, "{rst:?}");
    assert_eq!(vm.dev.connection_count(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(
        rest.len() < sent,
        "what was past the credit never reached the host"
    );
}

#[test]
fn short_header_descriptor_is_returned_with_zero_length() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let hdr = guest_hdr(op::REQUEST, 5000, 1234).to_bytes();
    vm.send_chain(&[Desc::r(HDR - 1)], &hdr, &[]);
    assert_eq!(vm.tx_used_lens(), [0]);
    vm.expect_silence();
    assert_still_serving(&mut vm);
}

#[test]
fn chains_outside_guest_memory_are_returned_with_zero_length() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let hdr = Header {
        len: 16,
        ..guest_hdr(op::RW, 5000, 1234)
    }
    .to_bytes();
    // The header outside memory.
    vm.send_chain(&[Desc::r(HDR).at(NOWHERE)], &hdr, &[]);
    // The data outside memory.
    vm.send_chain(&[Desc::r(HDR), Desc::r(16).at(NOWHERE)], &hdr, &[&[0; 16]]);
    // A descriptor straddling the end of memory.
    vm.send_chain(&[Desc::r(HDR), Desc::r(16).at(vm.mem_end() - 8)], &hdr, &[]);
    assert_eq!(vm.tx_used_lens(), [0, 0, 0]);
    vm.expect_silence();
    assert_still_serving(&mut vm);
}

#[test]
fn wrongly_directed_or_too_small_data_descriptors_are_returned_with_zero_length() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let hdr = Header {
        len: 100,
        ..guest_hdr(op::RW, 5000, 1234)
    }
    .to_bytes();
    vm.send_chain(&[Desc::w(HDR)], &hdr, &[]);
    vm.send_chain(&[Desc::r(HDR), Desc::w(100)], &hdr, &[&[0; 100]]);
    vm.send_chain(&[Desc::r(HDR), Desc::r(50)], &hdr, &[&[0; 50]]);
    vm.send_chain(&[Desc::r(HDR)], &hdr, &[]);
    let huge = Header {
        len: MAX_PKT_DATA + 1,
        ..guest_hdr(op::RW, 5000, 1234)
    }
    .to_bytes();
    vm.send_chain(&[Desc::r(HDR), Desc::r(MAX_PKT_DATA + 1)], &huge, &[]);
    assert_eq!(vm.tx_used_lens(), [0; 5]);
    vm.expect_silence();
    assert_still_serving(&mut vm);
}

#[test]
fn payload_split_short_of_its_length_is_returned_with_zero_length() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    vm.tx_used_lens();
    let hdr = Header {
        len: 30,
        ..sock.hdr(op::RW)
    }
    .to_bytes();
    vm.send_chain(
        &[Desc::r(HDR), Desc::r(10), Desc::r(10)],
        &hdr,
        &[b"0123456789", b"abcdefghij"],
    );
    vm.send_chain(
        &[Desc::r(HDR), Desc::r(10), Desc::w(20)],
        &hdr,
        &[b"0123456789", &[0; 20]],
    );
    assert_eq!(vm.tx_used_lens(), [0, 0]);
    host.set_nonblocking(true).unwrap();
    assert!(
        host.read(&mut [0u8; 64]).is_err(),
        "nothing reached the host"
    );
}

#[test]
fn malformed_rx_buffers_are_returned_empty_and_good_ones_used() {
    let mut vm = TestVm::new();
    vm.rx.publish(&[Desc::w(HDR - 4), Desc::w(4096)]);
    vm.rx.publish(&[Desc::r(HDR), Desc::w(4096)]);
    vm.rx.publish(&[Desc::w(HDR), Desc::r(4096)]);
    vm.rx.publish(&[Desc::w(HDR).at(NOWHERE), Desc::w(4096)]);
    vm.rx.publish(&[Desc::w(HDR), Desc::w(MAX_PKT_DATA + 1)]);
    vm.rx.publish(&[Desc::w(HDR), Desc::w(4096)]);
    vm.send(guest_hdr(op::RW, 5000, 1234), b"x");
    let used = vm.rx.take_used();
    let lens: Vec<u32> = used.iter().map(|(_, len)| *len).collect();
    assert_eq!(
        lens,
        [0, 0, 0, 0, 0, HDR],
        "bad buffers skipped, the RST in the good one"
    );
}

#[test]
fn rst_flood_pauses_tx_until_rx_buffers_arrive() {
    let mut vm = TestVm::new();
    // No rx buffers: every RST owed must wait.
    let total = MAX_QUEUED_RSTS + 40;
    let mut returned = 0;
    for i in 0..total {
        vm.send(guest_hdr(op::CREDIT_REQUEST, 10_000 + i as u32, 1), &[]);
        returned += vm.tx_used_lens().len();
    }
    assert_eq!(
        returned, MAX_QUEUED_RSTS,
        "tx stops once the RST queue is full"
    );

    let mut rsts = 0;
    while rsts < total {
        vm.offer_rx(16);
        while let Some(p) = vm.take_packet_now() {
            assert_eq!(p.hdr.op, op::RST);
            rsts += 1;
        }
        returned += vm.tx_used_lens().len();
        assert!(rsts <= total);
        if vm.rx.free_descriptors() < 32 {
            panic!("rx buffers not coming back");
        }
    }
    assert_eq!(returned, total, "tx resumed as rx drained the RSTs");
}

#[test]
fn corrupt_avail_index_does_not_wedge_the_device() {
    let mut vm = TestVm::new();
    // The driver claims far more chains than the queue holds: nothing can be popped, and
    // the device must not spin waiting for the index to make sense.
    vm.tx.set_avail_idx(1000);
    vm.dev.queue_notify(1);
    vm.rx.set_avail_idx(1000);
    let _host = vm.host_connect(52);
    vm.pump(100);
    vm.dev.queue_notify(0);
    assert_eq!(vm.tx_used_lens(), Vec::<u32>::new());
}
