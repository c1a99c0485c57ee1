//! The guest connecting to host ports `<uds>_<port>`.

use std::io::Read;

use super::super::packet::op;
use super::harness::*;

#[test]
fn guest_connect_to_a_listening_host_port_gets_response() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let listener = vm.listen(1234);
    let (mut host, mut sock) = vm.connect_from_guest(&listener, 5000, 1234);
    assert_eq!(vm.dev.connection_count(), 1);
    vm.send_data(&mut sock, b"ping", 4096);
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn guest_connect_without_a_listener_gets_rst() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    vm.send(guest_hdr(op::REQUEST, 5000, 4321), &[]);
    let rst = vm.expect(op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (4321, 5000));
    assert_eq!(vm.dev.connection_count(), 0);
}

#[test]
fn connection_limit_refuses_connections_beyond_it() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    vm.dev.muxer.set_max_connections(3);
    let listener = vm.listen(1234);
    let _c1 = vm.connect_from_guest(&listener, 5001, 1234);
    let _c2 = vm.connect_from_guest(&listener, 5002, 1234);
    let _c3 = vm.connect_from_host(52);

    vm.send(guest_hdr(op::REQUEST, 5003, 1234), &[]);
    vm.expect(op::RST);
    let mut host = std::os::unix::net::UnixStream::connect(vm.uds()).unwrap();
    vm.pump(100);
    assert!(
        reads_eof(&mut host),
        "host connections beyond the limit are closed"
    );
    assert_eq!(vm.dev.connection_count(), 3);

    // A slot freed is a slot usable again.
    vm.send(guest_hdr(op::RST, 5001, 1234), &[]);
    let _c4 = vm.connect_from_guest(&listener, 5004, 1234);
}
