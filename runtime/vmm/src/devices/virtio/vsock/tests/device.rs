//! The device as the transport sees it: identity, config space, lifecycle, interrupts.

use std::path::PathBuf;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::super::packet::op;
use super::super::Vsock;
use super::harness::*;
use crate::devices::virtio::{device_type, VirtioDevice};

fn uds(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("v.sock")
}

#[test]
fn identifies_as_vsock_with_three_queues_and_the_cid_in_config() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Vsock::new(0x1_2345, uds(&dir)).unwrap();
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), 1 << VIRTIO_RING_F_EVENT_IDX);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0x1_2345);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(8, &mut hi);
    assert_eq!(hi, [0; 4], "nothing past the CID");
}

#[test]
fn construction_refuses_an_existing_path_and_reserved_cids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(uds(&dir), b"not ours").unwrap();
    let err = Vsock::new(3, uds(&dir))
        .err()
        .expect("bind over an existing file");
    assert!(err.to_string().contains("v.sock"), "{err}");
    assert_eq!(std::fs::read(uds(&dir)).unwrap(), b"not ours");
    std::fs::remove_file(uds(&dir)).unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(Vsock::new(cid, uds(&dir)).is_err(), "cid {cid}");
    }
    assert!(!uds(&dir).exists());
}

#[test]
fn socket_file_is_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Vsock::new(3, uds(&dir)).unwrap();
    assert!(uds(&dir).exists());
    drop(dev);
    assert!(!uds(&dir).exists());
}

#[test]
fn reset_closes_connections_and_the_next_activation_serves_again() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, _) = vm.connect_from_host(52);
    vm.dev.reset();
    assert!(reads_eof(&mut host), "reset closes host streams");
    assert_eq!(vm.dev.connection_count(), 0);
    assert!(vm.uds().exists(), "the listener outlives a reset");

    let mut vm = vm.restart();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    vm.send_data(&mut sock, b"after reset", 4096);
    let mut buf = [0u8; 11];
    std::io::Read::read_exact(&mut host, &mut buf).unwrap();
    assert_eq!(&buf, b"after reset");
}

#[test]
fn interrupts_only_when_buffers_were_used() {
    let mut vm = TestVm::new();
    assert_eq!(vm.interrupts(), 0);
    vm.dev.queue_notify(1);
    vm.offer_rx(4);
    assert_eq!(vm.interrupts(), 0, "nothing used, no interrupt");
    vm.send(guest_hdr(op::RW, 5000, 1234), b"x");
    vm.expect(op::RST);
    assert_eq!(
        vm.interrupts(),
        1,
        "one interrupt for the tx and rx buffers together"
    );
}

#[test]
fn event_idx_interrupts_when_the_guest_asks_and_requests_kicks() {
    let mut vm = TestVm::with_features(1 << VIRTIO_RING_F_EVENT_IDX);
    vm.offer_rx(8);
    // Interrupt for rx once used entry 1 (the second) is written; for tx never soon.
    vm.rx.set_used_event(1);
    vm.tx.set_used_event(100);
    vm.send(guest_hdr(op::RW, 5000, 1234), b"x");
    vm.expect(op::RST);
    assert_eq!(
        vm.interrupts(),
        0,
        "the guest asked to hear only after the second"
    );
    vm.send(guest_hdr(op::RW, 5000, 1234), b"x");
    vm.expect(op::RST);
    assert_eq!(vm.interrupts(), 1);
    // After draining tx the device asks for a kick on the next new entry.
    assert_eq!(vm.tx.avail_event(), vm.tx.avail_idx());
}

#[test]
fn host_connects_during_a_reset_are_served_after_reactivation() {
    let mut vm = TestVm::new();
    vm.dev.reset();
    let mut host = vm.host_connect(52);
    vm.pump(50);
    let mut vm = vm.restart();
    vm.fill_rx();
    let req = vm.expect(op::REQUEST);
    assert_eq!(req.hdr.dst_port, 52);
    let sock = GuestSock::from_first_packet(&req);
    vm.send(sock.hdr(op::RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.hdr.src_port));
}
