//! Host processes connecting to the guest through `CONNECT <port>\n`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::super::connection::CONN_BUF_ALLOC;
use super::super::muxer::{
    CONNECT_LINE_TIMEOUT, CONNECT_TIMEOUT, FIRST_HOST_PORT, MAX_PENDING_CONNECTS,
};
use super::super::packet::op;
use super::harness::*;

#[test]
fn connect_line_sends_request_and_guest_response_yields_ok_line() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let _host = vm.host_connect(52);
    let req = vm.expect(op::REQUEST);
    assert_eq!(req.hdr.dst_port, 52);
    assert!(req.hdr.src_port >= FIRST_HOST_PORT);
    assert_eq!(req.hdr.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(req.hdr.fwd_cnt, 0);
    // The full handshake, including the OK line, as a helper for other tests.
    let (_host, sock) = vm.connect_from_host(52);
    assert_eq!(vm.dev.connection_count(), 2);
    assert!(sock.host_port >= FIRST_HOST_PORT);
}

#[test]
fn each_host_connection_gets_its_own_port() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (_a, a) = vm.connect_from_host(52);
    let (_b, b) = vm.connect_from_host(52);
    let (_c, c) = vm.connect_from_host(53);
    assert_ne!(a.host_port, b.host_port);
    assert_ne!(b.host_port, c.host_port);
    assert_ne!(a.host_port, c.host_port);
}

#[test]
fn guest_rst_refuses_a_host_connect_and_closes_the_stream() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let mut host = vm.host_connect(99);
    let req = vm.expect(op::REQUEST);
    vm.send(guest_hdr(op::RST, 99, req.hdr.src_port), &[]);
    assert!(reads_eof(&mut host), "no OK line, just EOF");
    assert_eq!(vm.dev.connection_count(), 0);
    vm.expect_silence();
}

#[test]
fn garbage_connect_line_closes_the_stream() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    for line in [
        &b"HELLO 52\n"[..],
        b"CONNECT\n",
        b"CONNECT 99999999999\n",
        b"\n",
    ] {
        let mut host = UnixStream::connect(vm.uds()).unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        host.write_all(line).unwrap();
        vm.pump(100);
        vm.pump(10);
        assert!(reads_closed(&mut host), "{line:?}");
    }
    vm.expect_silence();
}

#[test]
fn overlong_connect_line_closes_the_stream() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let mut host = UnixStream::connect(vm.uds()).unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    host.write_all(b"CONNECT 52                                        \n")
        .unwrap();
    vm.pump(100);
    vm.pump(10);
    assert!(reads_closed(&mut host));
    vm.expect_silence();
}

#[test]
fn data_written_right_after_the_connect_line_reaches_the_guest() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let mut host = UnixStream::connect(vm.uds()).unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    host.write_all(b"CONNECT 52\nearly bytes").unwrap();
    let req = vm.expect(op::REQUEST);
    let sock = GuestSock::from_first_packet(&req);
    vm.send(sock.hdr(op::RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", sock.host_port));
    let rw = vm.expect(op::RW);
    assert_eq!(rw.data, b"early bytes");
}

#[test]
fn host_connect_is_abandoned_when_the_guest_never_answers() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let mut host = vm.host_connect(52);
    let req = vm.expect(op::REQUEST);
    vm.expire(CONNECT_TIMEOUT);
    let rst = vm.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (req.hdr.src_port, 52));
    assert!(reads_eof(&mut host));
    assert_eq!(vm.dev.connection_count(), 0);
}

#[test]
fn host_connect_without_a_line_is_closed_after_its_timeout() {
    let mut vm = TestVm::new();
    let mut host = UnixStream::connect(vm.uds()).unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    host.write_all(b"CONNECT 5").unwrap();
    vm.pump(100);
    assert_eq!(vm.dev.muxer.pending_count(), 1);
    vm.expire(CONNECT_LINE_TIMEOUT);
    assert_eq!(vm.dev.muxer.pending_count(), 0);
    assert!(reads_eof(&mut host));
}

#[test]
fn host_connects_in_progress_are_limited() {
    let mut vm = TestVm::new();
    let mut hosts: Vec<UnixStream> = (0..MAX_PENDING_CONNECTS + 3)
        .map(|_| UnixStream::connect(vm.uds()).unwrap())
        .collect();
    while vm.pump(50) > 0 {}
    assert_eq!(vm.dev.muxer.pending_count(), MAX_PENDING_CONNECTS);
    let refused = hosts
        .iter_mut()
        .filter_map(|h| {
            h.set_nonblocking(true).unwrap();
            matches!(h.read(&mut [0u8; 1]), Ok(0)).then_some(())
        })
        .count();
    assert_eq!(
        refused, 3,
        "connections beyond the limit are closed at once"
    );
}
