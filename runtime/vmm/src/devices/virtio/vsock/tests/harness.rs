//! The test guest: a virtio driver over `MockSplitQueue` rings in test guest memory, a real
//! epoll standing in for the device thread, and helpers that speak the vsock protocol
//! from the guest's side.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::super::packet::{op, Header, HEADER_SIZE, HOST_CID, TYPE_STREAM};
use super::super::Vsock;
pub use crate::devices::virtio::test_driver::{Desc, Driver, QUEUE_SIZE};
use crate::devices::virtio::{
    split_token, ActivateContext, EventRegistrar, Interrupt, VirtioDevice, DEVICE_TOKEN_BASE,
};

pub const GUEST_CID: u64 = 3;
/// The receive buffer the test guest advertises unless a test says otherwise.
pub const GUEST_BUF_ALLOC: u32 = 256 * 1024;
/// Data part of each rx buffer, as Linux posts them.
pub const RX_DATA_LEN: u32 = 4096;
/// Every descriptor index owns a buffer this big at a fixed address.
const SLOT: u64 = 0x1_0000;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const EV_RING: u64 = 0x2_0000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = RX_BUFS + SLOT * QUEUE_SIZE as u64;
const MEM_SIZE: u64 = TX_BUFS + SLOT * QUEUE_SIZE as u64;
/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(5);

/// A packet the device put in an rx buffer.
#[derive(Clone, Debug)]
pub struct Packet {
    pub hdr: Header,
    pub data: Vec<u8>,
}

/// A connection as the test guest sees it: ports and both directions' credit.
#[derive(Clone, Copy, Debug)]
pub struct GuestSock {
    pub guest_port: u32,
    pub host_port: u32,
    /// Our receive buffer, as advertised.
    pub buf_alloc: u32,
    /// Bytes of host data we consumed.
    pub fwd_cnt: u32,
    /// Bytes we sent.
    pub tx_cnt: u32,
    /// The device's last advertised buffer and consumed count.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

impl GuestSock {
    /// The guest's side of a connection set up by `first`, the device's REQUEST (host
    /// connects) or RESPONSE (guest connects).
    pub fn from_first_packet(first: &Packet) -> Self {
        Self {
            guest_port: first.hdr.dst_port,
            host_port: first.hdr.src_port,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: first.hdr.buf_alloc,
            peer_fwd_cnt: first.hdr.fwd_cnt,
        }
    }

    /// A header from this socket to the host.
    pub fn hdr(&self, op: u16) -> Header {
        Header {
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..guest_hdr(op, self.guest_port, self.host_port)
        }
    }

    /// Bytes the device has room for, by its last report.
    pub fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Takes in what a packet from the device says about its credit.
    pub fn saw(&mut self, p: &Packet) {
        self.peer_buf_alloc = p.hdr.buf_alloc;
        self.peer_fwd_cnt = p.hdr.fwd_cnt;
    }
}

/// A guest-to-host header with the test guest's defaults.
pub fn guest_hdr(op: u16, guest_port: u32, host_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF_ALLOC,
        ..Header::default()
    }
}

/// A device activated on test guest memory, with the test guest driving it.
pub struct TestVm {
    pub dev: Vsock,
    pub mem: &'static GuestMemoryMmap,
    pub rx: Driver,
    pub tx: Driver,
    _ev: Driver,
    epoll: Arc<Epoll>,
    pub interrupt: Arc<Interrupt>,
    inbox: VecDeque<Packet>,
    /// Used lengths of returned tx chains not yet looked at.
    tx_used: Vec<u32>,
    /// Holds the sockets; removed with the test.
    pub dir: tempfile::TempDir,
}

impl TestVm {
    pub fn new() -> Self {
        Self::with_features(0)
    }

    /// A device activated after the driver acked `features`.
    pub fn with_features(features: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dev = Vsock::new(GUEST_CID, dir.path().join("vsock.sock")).unwrap();
        Self::activate(dev, dir, features)
    }

    fn activate(mut dev: Vsock, dir: tempfile::TempDir, features: u64) -> Self {
        // Leaked so the mock rings can borrow it for the test's lifetime.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        ));
        let rx = Driver::new(mem, RX_RING, RX_BUFS, SLOT);
        let tx = Driver::new(mem, TX_RING, TX_BUFS, SLOT);
        let ev = Driver::new(mem, EV_RING, TX_BUFS, SLOT);
        let epoll = Arc::new(Epoll::new().unwrap());
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let event_idx =
            features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = [&rx, &tx, &ev]
            .iter()
            .map(|d| {
                let mut q = d.queue();
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        dev.set_acked_features(features);
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            interrupt: interrupt.clone(),
            events: EventRegistrar::new(epoll.clone(), 0),
        })
        .unwrap();
        Self {
            dev,
            mem,
            rx,
            tx,
            _ev: ev,
            epoll,
            interrupt,
            inbox: VecDeque::new(),
            tx_used: Vec::new(),
            dir,
        }
    }

    /// Resets the device (as a driver writing status 0 does) and activates it again on
    /// fresh queues.
    pub fn restart(self) -> Self {
        let TestVm { mut dev, dir, .. } = self;
        dev.reset();
        Self::activate(dev, dir, 0)
    }

    /// The socket host processes connect to.
    pub fn uds(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    /// A host listener for guest connections to host port `port`.
    pub fn listen(&self, port: u32) -> UnixListener {
        let path = self.dir.path().join(format!("vsock.sock_{port}"));
        UnixListener::bind(path).unwrap()
    }

    /// Posts `n` rx buffers the way Linux 6.1 does (header and data descriptors) and kicks.
    pub fn offer_rx(&mut self, n: usize) {
        for _ in 0..n {
            self.rx
                .publish(&[Desc::w(HEADER_SIZE as u32), Desc::w(RX_DATA_LEN)]);
        }
        self.dev.queue_notify(0);
    }

    /// Posts rx buffers until the queue is full.
    pub fn fill_rx(&mut self) {
        let n = self.rx.free_descriptors() / 2;
        self.offer_rx(n);
    }

    /// Sends one packet the way Linux 6.1 does (header and data descriptors).
    pub fn send(&mut self, hdr: Header, data: &[u8]) {
        let hdr = Header {
            len: data.len() as u32,
            ..hdr
        };
        let mut descs = vec![Desc::r(HEADER_SIZE as u32)];
        if !data.is_empty() {
            descs.push(Desc::r(data.len() as u32));
        }
        self.send_chain(&descs, &hdr.to_bytes(), &[data]);
    }

    /// Publishes `descs` on the tx queue with `header` written at the first descriptor's
    /// buffer and `data[i]` at descriptor `i + 1`'s, and kicks.
    pub fn send_chain(&mut self, descs: &[Desc], header: &[u8], data: &[&[u8]]) {
        self.reclaim_tx();
        let idx = self.tx.publish(descs);
        let bufs: Vec<u64> = descs
            .iter()
            .zip(&idx)
            .map(|(d, &i)| d.addr.unwrap_or_else(|| self.tx.slot(i)))
            .collect();
        // Addresses outside memory are the point of some tests: skip the write then.
        let _ = self.mem.write_slice(header, GuestAddress(bufs[0]));
        for (piece, &addr) in data.iter().zip(&bufs[1..]) {
            let _ = self.mem.write_slice(piece, GuestAddress(addr));
        }
        self.dev.queue_notify(1);
    }

    /// Dispatches ready events to the device, waiting up to `timeout_ms`.
    pub fn pump(&mut self, timeout_ms: i32) -> usize {
        let mut events = vec![EpollEvent::default(); 64];
        let n = self.epoll.wait(timeout_ms, &mut events).unwrap();
        for ev in &events[..n] {
            let (_, local) = split_token(ev.data());
            self.dev
                .handle_event(local - DEVICE_TOKEN_BASE, ev.event_set());
        }
        n
    }

    /// Moves whatever the device put in rx buffers into the inbox.
    fn collect(&mut self) {
        for (chain, len) in self.rx.take_used() {
            assert!(
                len as usize >= HEADER_SIZE,
                "device returned a short rx buffer"
            );
            let mut raw = [0u8; HEADER_SIZE];
            self.mem
                .read_slice(&mut raw, GuestAddress(self.rx.slot(chain[0])))
                .unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(
                hdr.len as usize,
                len as usize - HEADER_SIZE,
                "used length = header + data"
            );
            let data_addr = match chain.get(1) {
                Some(&i) => self.rx.slot(i),
                None => self.rx.slot(chain[0]) + HEADER_SIZE as u64,
            };
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(data_addr))
                .unwrap();
            self.inbox.push_back(Packet { hdr, data });
        }
    }

    /// The next packet from the device if one is there already.
    pub fn take_packet_now(&mut self) -> Option<Packet> {
        self.collect();
        self.inbox.pop_front()
    }

    /// First address past the test guest's memory.
    pub fn mem_end(&self) -> u64 {
        MEM_SIZE
    }

    /// The next packet from the device, waiting (and pumping events) up to 5 seconds.
    pub fn next_packet(&mut self) -> Option<Packet> {
        self.next_packet_within(PATIENCE)
    }

    /// The next packet from the device, waiting (and pumping events) up to `patience`.
    pub fn next_packet_within(&mut self, patience: Duration) -> Option<Packet> {
        let deadline = Instant::now() + patience;
        loop {
            self.collect();
            if let Some(p) = self.inbox.pop_front() {
                return Some(p);
            }
            if Instant::now() > deadline {
                return None;
            }
            self.pump(10);
        }
    }

    /// The next packet, which must have operation `op`. Credit updates before it are
    /// skipped unless `op` is one: the device may send them between any two packets.
    pub fn expect(&mut self, op: u16) -> Packet {
        let p = loop {
            let p = self
                .next_packet()
                .unwrap_or_else(|| panic!("expected op {op}, got nothing"));
            if p.hdr.op != op::CREDIT_UPDATE || op == op::CREDIT_UPDATE {
                break p;
            }
        };
        assert_eq!(p.hdr.op, op, "unexpected packet {p:?}");
        assert_eq!((p.hdr.src_cid, p.hdr.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(p.hdr.type_, TYPE_STREAM);
        p
    }

    /// Pumps for a while and checks the device sent nothing.
    pub fn expect_silence(&mut self) {
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            self.pump(10);
        }
        self.collect();
        assert!(self.inbox.is_empty(), "unexpected packets {:?}", self.inbox);
    }

    /// Interrupts raised since the last call.
    pub fn interrupts(&self) -> u64 {
        self.interrupt.irqfd().read().unwrap_or(0)
    }

    fn reclaim_tx(&mut self) {
        let used = self.tx.take_used();
        self.tx_used.extend(used.into_iter().map(|(_, len)| len));
    }

    /// Used length of every tx chain returned since the last call.
    pub fn tx_used_lens(&mut self) -> Vec<u32> {
        self.reclaim_tx();
        std::mem::take(&mut self.tx_used)
    }

    /// Lets every deadline (connect, close, drain) pass by `by`, as the timer would.
    pub fn expire(&mut self, by: Duration) {
        self.dev.muxer.expire_deadlines(by);
        self.dev.process();
    }

    /// A host process connects to guest port `guest_port`; the test guest accepts.
    /// Returns the host stream (past its `OK` line) and the guest's view.
    pub fn connect_from_host(&mut self, guest_port: u32) -> (UnixStream, GuestSock) {
        let mut host = self.host_connect(guest_port);
        let req = self.expect(op::REQUEST);
        assert_eq!(req.hdr.dst_port, guest_port);
        let sock = GuestSock::from_first_packet(&req);
        self.send(sock.hdr(op::RESPONSE), &[]);
        assert_eq!(read_line(&mut host), format!("OK {}\n", sock.host_port));
        (host, sock)
    }

    /// A host process connects to the vsock socket and asks for `guest_port`.
    pub fn host_connect(&mut self, guest_port: u32) -> UnixStream {
        let mut host = UnixStream::connect(self.uds()).unwrap();
        host.set_read_timeout(Some(PATIENCE)).unwrap();
        writeln!(host, "CONNECT {guest_port}").unwrap();
        host
    }

    /// The test guest connects from `guest_port` to host port `host_port`, where `listener`
    /// listens. Returns the accepted host stream and the guest's view.
    pub fn connect_from_guest(
        &mut self,
        listener: &UnixListener,
        guest_port: u32,
        host_port: u32,
    ) -> (UnixStream, GuestSock) {
        self.send(guest_hdr(op::REQUEST, guest_port, host_port), &[]);
        let resp = self.expect(op::RESPONSE);
        assert_eq!(
            (resp.hdr.src_port, resp.hdr.dst_port),
            (host_port, guest_port)
        );
        let (host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(PATIENCE)).unwrap();
        let sock = GuestSock::from_first_packet(&resp);
        (host, sock)
    }

    /// Sends `data` as RW packets of at most `chunk` bytes on `sock`, within the device's
    /// credit (the caller makes sure there is enough).
    pub fn send_data(&mut self, sock: &mut GuestSock, data: &[u8], chunk: usize) {
        for piece in data.chunks(chunk) {
            self.send(sock.hdr(op::RW), piece);
            sock.tx_cnt = sock.tx_cnt.wrapping_add(piece.len() as u32);
        }
    }
}

/// Reads one line from a host stream (byte by byte, so nothing after it is consumed).
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading a line from the host stream: {e}"),
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the device closed (or half-closed) the host stream: a read returns EOF.
pub fn reads_eof(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
}

/// Whether the device closed the host stream: EOF, or a reset when it closed with bytes
/// from us still unread (what unix sockets do).
pub fn reads_closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A recognisable byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}
