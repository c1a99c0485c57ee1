//! Stream data both ways under credit flow control.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::super::connection::{CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
use super::super::packet::{op, Header, HEADER_SIZE, MAX_PKT_DATA};
use super::harness::*;

/// Receives RW packets on `sock` until `want` bytes arrived or the device goes quiet,
/// re-posting rx buffers as they are used. Returns the bytes.
fn receive(vm: &mut TestVm, sock: &mut GuestSock, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let Some(p) = vm.next_packet() else { break };
        assert_eq!(p.hdr.op, op::RW, "{p:?}");
        assert_eq!(
            (p.hdr.src_port, p.hdr.dst_port),
            (sock.host_port, sock.guest_port)
        );
        sock.saw(&p);
        got.extend_from_slice(&p.data);
        vm.offer_rx(1);
    }
    got
}

/// The guest consumed everything it received: tell the device.
fn consume(vm: &mut TestVm, sock: &mut GuestSock, n: usize) {
    sock.fwd_cnt = sock.fwd_cnt.wrapping_add(n as u32);
    vm.send(sock.hdr(op::CREDIT_UPDATE), &[]);
}

#[test]
fn host_data_reaches_the_guest_within_its_credit() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    sock.buf_alloc = 10_000;
    vm.send(sock.hdr(op::CREDIT_UPDATE), &[]);

    let data = pattern(30_000, 7);
    host.write_all(&data).unwrap();
    let mut got = receive(&mut vm, &mut sock, 10_000);
    assert_eq!(got.len(), 10_000, "exactly the credit, no more");
    vm.expect_silence();

    for _ in 0..2 {
        consume(&mut vm, &mut sock, 10_000);
        let more = receive(&mut vm, &mut sock, 10_000);
        assert_eq!(more.len(), 10_000);
        got.extend_from_slice(&more);
        vm.expect_silence();
    }
    assert!(got == data, "host bytes arrive intact and in order");
}

#[test]
fn host_data_waits_for_rx_buffers_and_resumes_when_they_come() {
    let mut vm = TestVm::new();
    // One buffer for the REQUEST, then none.
    vm.offer_rx(1);
    let mut host = vm.host_connect(52);
    let req = vm.expect(op::REQUEST);
    let mut sock = GuestSock::from_first_packet(&req);
    vm.send(sock.hdr(op::RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", sock.host_port));

    host.write_all(b"waiting for buffers").unwrap();
    vm.expect_silence();
    vm.offer_rx(1);
    let got = receive(&mut vm, &mut sock, 19);
    assert_eq!(got, b"waiting for buffers");
}

#[test]
fn guest_data_reaches_the_host_intact_and_credit_comes_back() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let listener = vm.listen(1234);
    let (host, mut sock) = vm.connect_from_guest(&listener, 5000, 1234);
    assert_eq!(sock.peer_buf_alloc, CONN_BUF_ALLOC);

    let data = pattern(2 << 20, 3);
    let reader = std::thread::spawn(move || {
        let mut host = host;
        let mut got = vec![0u8; 2 << 20];
        host.read_exact(&mut got).unwrap();
        got
    });
    let mut sent = 0;
    let mut updates = 0;
    while sent < data.len() {
        let n = (sock.credit() as usize).min(4096).min(data.len() - sent);
        if n > 0 {
            vm.send_data(&mut sock, &data[sent..sent + n], 4096);
            sent += n;
            continue;
        }
        // Out of credit: the device must say when it has forwarded our bytes.
        let p = vm
            .next_packet()
            .expect("a credit update when out of credit");
        assert_eq!(p.hdr.op, op::CREDIT_UPDATE, "{p:?}");
        sock.saw(&p);
        updates += 1;
        vm.offer_rx(1);
    }
    // The device may still hold bytes that go out as the host makes room.
    while !reader.is_finished() {
        vm.pump(10);
    }
    assert!(reader.join().unwrap() == data, "guest bytes arrive intact");
    assert!(updates > 0);
    // Once everything is forwarded, the device tells the guest the final count.
    while sock.peer_fwd_cnt != sent as u32 {
        let p = vm.next_packet().expect("final credit update");
        sock.saw(&p);
        vm.offer_rx(1);
    }
}

#[test]
fn credit_request_is_answered_with_credit_update() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    vm.send_data(&mut sock, b"12345", 4096);
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    vm.send(sock.hdr(op::CREDIT_REQUEST), &[]);
    let p = vm.expect(op::CREDIT_UPDATE);
    assert_eq!((p.hdr.buf_alloc, p.hdr.fwd_cnt), (CONN_BUF_ALLOC, 5));
    // Five bytes are far below CREDIT_UPDATE_THRESHOLD: no unsolicited update follows.
    vm.expect_silence();
}

#[test]
fn guest_data_is_buffered_while_the_host_does_not_read() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, mut sock) = vm.connect_from_host(52);
    // Fill the socket and then the device's buffer, within the credit the device gives.
    let data = pattern(4 << 20, 9);
    let mut sent = 0;
    loop {
        let credit = sock.credit() as usize;
        if credit == 0 {
            match vm.next_packet_within(Duration::from_millis(300)) {
                Some(p) if p.hdr.op == op::CREDIT_UPDATE => {
                    sock.saw(&p);
                    vm.offer_rx(1);
                    continue;
                }
                Some(p) => panic!("unexpected {p:?}"),
                None => break,
            }
        }
        let n = credit.min(MAX_PKT_DATA as usize);
        vm.send_data(&mut sock, &data[sent..sent + n], n);
        sent += n;
    }
    assert!(
        sent > CONN_BUF_ALLOC as usize,
        "the socket took some, the device buffered the rest"
    );
    assert_eq!(vm.dev.connection_count(), 1, "no reset within the credit");

    // Now the host reads; the device flushes on writability and returns the credit.
    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < sent && Instant::now() < deadline {
        match host.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                vm.pump(10);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        got == data[..sent],
        "buffered bytes arrive intact and in order"
    );
    // The guest learns about the space: enough that it is not stalled, even if the last
    // few bytes forwarded were too few for an update of their own.
    while let Some(p) = vm.take_packet_now() {
        assert_eq!(p.hdr.op, op::CREDIT_UPDATE);
        sock.saw(&p);
    }
    assert!(
        sock.credit() > CONN_BUF_ALLOC - CREDIT_UPDATE_THRESHOLD,
        "{sock:?}"
    );
}

/// Moves `len` bytes host -> guest and then guest -> host through one connection, with
/// the host side on a thread as a real process would be, and checks every byte.
fn bulk(len: usize) -> (f64, f64) {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (host, mut sock) = vm.connect_from_host(52);
    let down = pattern(len, 1);
    let up = pattern(len, 2);

    let writer = {
        let mut host = host.try_clone().unwrap();
        let down = down.clone();
        std::thread::spawn(move || host.write_all(&down).unwrap())
    };
    let start = Instant::now();
    let mut got = Vec::with_capacity(len);
    let mut unacked = 0;
    while got.len() < len {
        let p = vm.next_packet().expect("host data keeps coming");
        assert_eq!(p.hdr.op, op::RW, "{p:?}");
        got.extend_from_slice(&p.data);
        unacked += p.data.len();
        vm.offer_rx(1);
        // Like Linux: report consumption once a good part of the buffer is used.
        if unacked >= GUEST_BUF_ALLOC as usize / 4 {
            consume(&mut vm, &mut sock, unacked);
            unacked = 0;
        }
    }
    let down_secs = start.elapsed().as_secs_f64();
    writer.join().unwrap();
    assert!(got == down, "host -> guest intact");

    let reader = std::thread::spawn(move || {
        let mut host: UnixStream = host;
        let mut got = vec![0u8; len];
        host.read_exact(&mut got).unwrap();
        got
    });
    let start = Instant::now();
    let mut sent = 0;
    while sent < len {
        let n = (sock.credit() as usize).min(4096).min(len - sent);
        if n == 0 {
            let p = vm.next_packet().expect("credit keeps coming");
            sock.saw(&p);
            vm.offer_rx(1);
            continue;
        }
        vm.send_data(&mut sock, &up[sent..sent + n], 4096);
        sent += n;
        // Collect credit updates as they come, without waiting.
        vm.pump(0);
    }
    while !reader.is_finished() {
        vm.pump(10);
    }
    let got = reader.join().unwrap();
    let up_secs = start.elapsed().as_secs_f64();
    assert!(got == up, "guest -> host intact");
    (down_secs, up_secs)
}

#[test]
fn bulk_transfer_both_ways_is_intact() {
    let len = 16 << 20;
    let (down, up) = bulk(len);
    let mib = (len >> 20) as f64;
    eprintln!(
        "vsock bulk: host->guest {:.0} MiB/s, guest->host {:.0} MiB/s (test driver included)",
        mib / down,
        mib / up
    );
}

#[test]
fn payload_split_over_several_descriptors_arrives_whole() {
    let mut vm = TestVm::new();
    vm.fill_rx();
    let (mut host, sock) = vm.connect_from_host(52);
    vm.tx_used_lens();
    // Newer Linux sends large payloads as page fragments, one descriptor each.
    let pieces: [&[u8]; 3] = [b"split ", b"over three ", b"descriptors"];
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let hdr = Header {
        len: len as u32,
        ..sock.hdr(op::RW)
    };
    let descs: Vec<Desc> = std::iter::once(Desc::r(HEADER_SIZE as u32))
        .chain(pieces.iter().map(|p| Desc::r(p.len() as u32)))
        .collect();
    vm.send_chain(&descs, &hdr.to_bytes(), &pieces);
    let mut got = vec![0u8; len];
    host.read_exact(&mut got).unwrap();
    assert_eq!(got, b"split over three descriptors");
    assert_eq!(vm.tx_used_lens(), [0]);
}
