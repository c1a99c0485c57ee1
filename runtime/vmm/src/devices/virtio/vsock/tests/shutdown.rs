//! Half-closes, closes and resets from either side.

use std::io::{Read, Write};
use std::net::Shutdown;

use super::super::muxer::{CLOSE_TIMEOUT, DRAIN_TIMEOUT};
use super::super::packet::{op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::harness::*;

#[test]
fn guest_shutdown_send_half_closes_the_host_stream() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    vm.send_data(&mut sock, b"stdin", 4096);
    let mut hdr = sock.hdr(op::SHUTDOWN);
    hdr.flags = SHUTDOWN_SEND;
    vm.send(hdr, &[]);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"stdin", "data, then EOF");
    // The other direction still works.
    host.write_all(b"stdout").unwrap();
    let p = vm.expect(op::RW);
    assert_eq!(p.data, b"stdout");
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    vm.send(sock.hdr(op::RST), &[]);
    assert!(reads_eof(&mut host));
    assert_eq!(vm.dev.connection_count(), 0);
    vm.expect_silence();
}

#[test]
fn host_eof_sends_shutdown_send_to_the_guest() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    host.write_all(b"last").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    assert_eq!(vm.expect(op::RW).data, b"last");
    let p = vm.expect(op::SHUTDOWN);
    assert_eq!(p.hdr.flags, SHUTDOWN_SEND);
    // Half-closed: the host still reads.
    vm.send_data(&mut sock, b"answer", 4096);
    let mut buf = [0u8; 6];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"answer");
}

#[test]
fn host_close_sends_full_shutdown_and_guest_rst_ends_the_connection() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    host.write_all(b"bye").unwrap();
    drop(host);
    assert_eq!(
        vm.expect(op::RW).data,
        b"bye",
        "data written before close still arrives"
    );
    let p = vm.expect(op::SHUTDOWN);
    assert_eq!(p.hdr.flags, SHUTDOWN_BOTH);
    vm.send(sock.hdr(op::RST), &[]);
    assert_eq!(vm.dev.connection_count(), 0);
    vm.expect_silence();
}

#[test]
fn guest_lingering_after_full_shutdown_is_reset() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (host, sock) = vm.connect_from_host(52);
    drop(host);
    assert_eq!(vm.expect(op::SHUTDOWN).hdr.flags, SHUTDOWN_BOTH);
    vm.expire(CLOSE_TIMEOUT);
    let rst = vm.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (sock.host_port, 52));
    assert_eq!(vm.dev.connection_count(), 0);
}

#[test]
fn guest_full_shutdown_is_answered_with_rst_and_buffered_data_still_reaches_the_host() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let listener = vm.listen(1234);
    let (mut host, mut sock) = vm.connect_from_guest(&listener, 5000, 1234);
    // More than the socket takes, so some stays buffered in the device.
    let data = pattern(sock.credit() as usize, 5);
    vm.send_data(&mut sock, &data, 64 * 1024);
    let mut hdr = sock.hdr(op::SHUTDOWN);
    hdr.flags = SHUTDOWN_BOTH;
    vm.send(hdr, &[]);
    vm.expect(op::RST);
    assert_eq!(vm.dev.connection_count(), 0);
    assert_eq!(vm.dev.muxer.draining_count(), 1);

    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        got
    });
    while !reader.is_finished() {
        vm.pump(10);
    }
    assert!(reader.join().unwrap() == data, "everything, then EOF");
    assert_eq!(vm.dev.muxer.draining_count(), 0);
}

#[test]
fn guest_shutdown_rcv_stops_host_data() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    let mut hdr = sock.hdr(op::SHUTDOWN);
    hdr.flags = SHUTDOWN_RCV;
    vm.send(hdr, &[]);
    vm.pump(10);
    assert!(
        host.write_all(b"nobody listens").is_err(),
        "the host learns at once"
    );
    vm.expect_silence();
}

#[test]
fn buffered_data_a_host_never_reads_is_dropped_after_the_drain_timeout() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    let data = pattern(sock.credit() as usize, 6);
    vm.send_data(&mut sock, &data, 64 * 1024);
    let mut hdr = sock.hdr(op::SHUTDOWN);
    hdr.flags = SHUTDOWN_BOTH;
    vm.send(hdr, &[]);
    vm.expect(op::RST);
    assert_eq!(vm.dev.muxer.draining_count(), 1);
    vm.expire(DRAIN_TIMEOUT);
    assert_eq!(vm.dev.muxer.draining_count(), 0);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert!(
        got.len() < data.len(),
        "the stream ends early rather than never"
    );
}
