//! The connection table between guest packets and host unix streams.
//!
//! The muxer owns the listening socket, the host streams still writing their CONNECT
//! line, the connections, streams still being flushed after the guest closed, and what
//! is owed to the guest:
//! - `rsts`: RSTs for packets that have no connection (or whose connection was just
//!   torn down). Only this queue grows with guest input, so the device stops reading the
//!   tx queue while it is full;
//! - `ctrl_ready`: connections owing a control packet (at most one entry each);
//! - `data_ready`: connections whose stream may have data for the guest (at most one
//!   entry each). They are served round-robin, one rx buffer at a time.
//!
//! Rx buffers go to those three in that order, so a RESPONSE always precedes data and a
//! credit update is never stuck behind bulk data.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnError, ConnKey, Connection, OutBuf, ReadOutcome, State};
use super::packet::{op, Header, TxPacket, HEADER_SIZE, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use super::unix::{connect_nonblocking, guest_port_path, ConnectLine, HostConnect, HostListener};
use crate::devices::virtio::{EventRegistrar, DEVICE_TOKEN_BASE};

/// Most streams (connections, host CONNECTs in progress, closed connections still
/// flushing) at once.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Most host streams that have not finished their CONNECT line.
pub(crate) const MAX_PENDING_CONNECTS: usize = 64;
/// Tx processing pauses while this many RSTs wait for rx buffers.
pub(crate) const MAX_QUEUED_RSTS: usize = 256;
/// Host-initiated ports count up from here, as in Firecracker's hybrid vsock; guest
/// services listen far below.
pub(crate) const FIRST_HOST_PORT: u32 = 1 << 30;

/// A host process gets this long to write its CONNECT line.
pub(crate) const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest gets this long to answer a REQUEST.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After our SHUTDOWN(RCV|SEND), the guest gets this long to send its RST.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the guest closed, buffered data gets this long to reach the host process.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// After accept() failed (say, out of fds), the listener rests this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);
/// Accepts per listener event, so a flood of host connections cannot starve the guest.
const ACCEPTS_PER_EVENT: usize = 32;

const TOKEN_LISTENER: u32 = 0;
const TOKEN_TIMER: u32 = 1;
const FIRST_STREAM_TOKEN: u32 = 2;
/// The registrar adds DEVICE_TOKEN_BASE to our tokens.
const LAST_STREAM_TOKEN: u32 = u32::MAX - DEVICE_TOKEN_BASE;

/// Connection sockets are watched edge-triggered for everything at once; per-connection
/// flags remember what was reported until a syscall says otherwise.
fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// What an epoll token refers to.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Pending,
    Conn(ConnKey),
    Draining,
}

/// A stream the guest closed while we still held data for it.
#[derive(Debug)]
struct Draining {
    stream: UnixStream,
    out: OutBuf,
    deadline: Instant,
}

/// What [`Muxer::fill_rx`] did with an rx buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RxFill {
    /// A packet of this many bytes (header included) is in the buffer.
    Written(u32),
    /// The buffer cannot carry the packet due (no data part): return it empty.
    Unusable,
    /// Nothing to send: leave the buffer in the queue.
    NoWork,
}

/// The vsock backend.
pub(crate) struct Muxer {
    guest_cid: u64,
    /// [`MAX_CONNECTIONS`], lowered by tests.
    max_connections: usize,
    listener: HostListener,
    timer: TimerFd,
    /// Set while the device is active.
    events: Option<EventRegistrar>,

    conns: HashMap<ConnKey, Connection>,
    pending: HashMap<u32, HostConnect>,
    draining: HashMap<u32, Draining>,
    endpoints: HashMap<u32, Endpoint>,
    /// Local ports handed to host-initiated connections.
    host_ports: HashSet<u32>,
    next_host_port: u32,
    next_token: u32,

    rsts: VecDeque<Header>,
    ctrl_ready: VecDeque<ConnKey>,
    data_ready: VecDeque<ConnKey>,

    /// When the timer is set to fire.
    timer_deadline: Option<Instant>,
    /// The listener is out of epoll until then (accept kept failing).
    listener_resume: Option<Instant>,
}

impl Muxer {
    /// A muxer listening on `uds_path` for host connections to guest `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        Ok(Self {
            guest_cid,
            max_connections: MAX_CONNECTIONS,
            listener: HostListener::bind(uds_path)?,
            timer: TimerFd::new()?,
            events: None,
            conns: HashMap::new(),
            pending: HashMap::new(),
            draining: HashMap::new(),
            endpoints: HashMap::new(),
            host_ports: HashSet::new(),
            next_host_port: FIRST_HOST_PORT,
            next_token: FIRST_STREAM_TOKEN,
            rsts: VecDeque::new(),
            ctrl_ready: VecDeque::new(),
            data_ready: VecDeque::new(),
            timer_deadline: None,
            listener_resume: None,
        })
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        self.listener.path()
    }

    /// Number of live connections (not counting host CONNECTs in progress).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Starts watching the listener and the timer on the device thread.
    pub fn activate(&mut self, events: EventRegistrar) -> io::Result<()> {
        events.add(
            self.listener.listener().as_raw_fd(),
            TOKEN_LISTENER,
            EventSet::IN,
        )?;
        if let Err(e) = events.add(self.timer.as_raw_fd(), TOKEN_TIMER, EventSet::IN) {
            let _ = events.remove(self.listener.listener().as_raw_fd());
            return Err(e);
        }
        self.events = Some(events);
        Ok(())
    }

    /// Device reset: every stream is closed; the listener stays bound but unwatched, so
    /// host processes queue in its backlog until the next activation.
    pub fn deactivate(&mut self) {
        if let Some(events) = self.events.take() {
            if self.listener_resume.is_none() {
                let _ = events.remove(self.listener.listener().as_raw_fd());
            }
            let _ = events.remove(self.timer.as_raw_fd());
            let fds = self
                .conns
                .values()
                .map(|c| c.stream.as_raw_fd())
                .chain(self.pending.values().map(|p| p.stream.as_raw_fd()))
                .chain(self.draining.values().map(|d| d.stream.as_raw_fd()));
            for fd in fds {
                let _ = events.remove(fd);
            }
        }
        self.conns.clear();
        self.pending.clear();
        self.draining.clear();
        self.endpoints.clear();
        self.host_ports.clear();
        self.rsts.clear();
        self.ctrl_ready.clear();
        self.data_ready.clear();
        let _ = self.timer.clear();
        self.timer_deadline = None;
        self.listener_resume = None;
    }

    /// The tx queue should not be read further until rx buffers take the queued RSTs.
    pub fn tx_blocked(&self) -> bool {
        self.rsts.len() >= MAX_QUEUED_RSTS
    }

    /// Something may be waiting for an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.ctrl_ready.is_empty() || !self.data_ready.is_empty()
    }

    // ---- guest -> host ----------------------------------------------------------------

    /// One packet from the tx queue.
    pub fn handle_guest_packet(&mut self, pkt: &TxPacket<'_>) {
        let hdr = pkt.hdr;
        if hdr.src_cid != self.guest_cid {
            // A spoofed source cannot be answered meaningfully.
            debug!(
                src_cid = hdr.src_cid,
                "virtio-vsock: dropping packet with foreign source"
            );
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            // Other CIDs do not exist here and only streams are offered: refuse, so the
            // guest's connect fails at once instead of timing out.
            self.queue_rst_reply(&hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(&hdr, key),
                op::RST => {}
                _ => self.queue_rst_reply(&hdr),
            }
            return;
        };
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        let result = match (hdr.op, conn.state) {
            (op::RST, _) => {
                self.close_conn(key);
                return;
            }
            (op::RESPONSE, State::Connecting) => conn.establish(),
            (op::RW, State::Established) => conn.recv_from_guest(pkt.data()),
            (op::CREDIT_UPDATE, State::Established) => Ok(()),
            (op::CREDIT_REQUEST, State::Established) => {
                conn.request_credit_update();
                Ok(())
            }
            (op::SHUTDOWN, State::Established) => {
                if (conn.peer_shut() | hdr.flags) & SHUTDOWN_BOTH == SHUTDOWN_BOTH {
                    self.guest_closed(key);
                    return;
                }
                conn.on_guest_shutdown(hdr.flags)
            }
            _ => Err(ConnError::Protocol("unexpected operation")),
        };
        match result {
            Ok(()) => self.reschedule(key),
            Err(ConnError::Protocol(why)) => {
                debug!(
                    local_port = key.local_port,
                    peer_port = key.peer_port,
                    op = hdr.op,
                    why,
                    "virtio-vsock: resetting connection"
                );
                self.reset_conn(key);
            }
            Err(ConnError::HostGone) => {
                if conn_state(&self.conns, key) == Some(State::Connecting) {
                    self.reset_conn(key);
                } else {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.on_host_gone();
                    }
                    self.reschedule(key);
                }
            }
        }
    }

    /// The guest opens a connection to host port `hdr.dst_port`.
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) {
        if self.stream_count() >= self.max_connections {
            debug!("virtio-vsock: connection limit reached, refusing guest connection");
            self.queue_rst_reply(hdr);
            return;
        }
        let path = guest_port_path(self.listener.path(), hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                debug!(
                    port = hdr.dst_port,
                    "virtio-vsock: guest connect refused: {e}"
                );
                self.queue_rst_reply(hdr);
                return;
            }
        };
        let Some(token) = self.register_stream(&stream) else {
            self.queue_rst_reply(hdr);
            return;
        };
        self.endpoints.insert(token, Endpoint::Conn(key));
        self.conns
            .insert(key, Connection::guest_initiated(stream, token, key, hdr));
        self.reschedule(key);
    }

    /// The guest sent SHUTDOWN(RCV|SEND): answer RST at once (its close() waits for it),
    /// then give the host process whatever is still buffered before closing.
    fn guest_closed(&mut self, key: ConnKey) {
        let Some(mut conn) = self.take_conn(key) else {
            return;
        };
        self.rsts
            .push_back(conn.header(self.guest_cid, op::RST, 0, 0));
        let _ = conn.flush();
        let (stream, token, out) = conn.into_leftovers();
        match out {
            Some(out) => {
                let deadline = Instant::now() + DRAIN_TIMEOUT;
                self.endpoints.insert(token, Endpoint::Draining);
                self.draining.insert(
                    token,
                    Draining {
                        stream,
                        out,
                        deadline,
                    },
                );
                self.arm_timer(deadline);
            }
            None => self.forget_stream(&stream, token),
        }
    }

    fn queue_rst_reply(&mut self, hdr: &Header) {
        // Never answer an RST: two confused ends would bounce RSTs forever.
        if hdr.op != op::RST {
            self.rsts.push_back(hdr.rst_reply());
        }
    }

    // ---- host -> guest ----------------------------------------------------------------

    /// Fills one rx buffer with the next packet owed to the guest.
    pub fn fill_rx(&mut self, pkt: &VsockPacket<'_, ()>) -> RxFill {
        loop {
            if let Some(hdr) = self.rsts.pop_front() {
                return write_header(pkt, hdr, 0);
            }
            if let Some(key) = self.ctrl_ready.pop_front() {
                let Some(conn) = self.conns.get_mut(&key) else {
                    continue;
                };
                conn.ctrl_queued = false;
                let Some((op, flags)) = conn.next_ctrl() else {
                    continue;
                };
                let hdr = conn.header(self.guest_cid, op, flags, 0);
                self.reschedule(key);
                return write_header(pkt, hdr, 0);
            }
            let Some(key) = self.data_ready.pop_front() else {
                return RxFill::NoWork;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.data_queued = false;
            if !conn.wants_to_read() {
                continue;
            }
            let Some(buf) = pkt.data_slice() else {
                // A header-only buffer; the guest's other buffers will do.
                self.reschedule(key);
                return RxFill::Unusable;
            };
            match conn.read_to_guest(buf) {
                ReadOutcome::Data(n) => {
                    let hdr = conn.header(self.guest_cid, op::RW, 0, n);
                    // Back of the line: connections share the rx queue round-robin.
                    self.reschedule(key);
                    return write_header(pkt, hdr, n);
                }
                ReadOutcome::WouldBlock => {}
                ReadOutcome::Eof => conn.on_host_eof(),
                ReadOutcome::HostGone => conn.on_host_read_error(),
            }
            self.reschedule(key);
        }
    }

    /// Puts `key` on the lists matching what it owes, and starts its closing clock once
    /// both directions are shut.
    fn reschedule(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.has_ctrl() && !conn.ctrl_queued {
            conn.ctrl_queued = true;
            self.ctrl_ready.push_back(key);
        }
        if conn.wants_to_read() && !conn.data_queued {
            conn.data_queued = true;
            self.data_ready.push_back(key);
        }
        if conn.local_shut() == SHUTDOWN_BOTH && conn.deadline.is_none() {
            let deadline = Instant::now() + CLOSE_TIMEOUT;
            conn.deadline = Some(deadline);
            self.arm_timer(deadline);
        }
    }

    // ---- host events -----------------------------------------------------------------

    /// One of our fds is ready.
    pub fn handle_event(&mut self, token: u32, events: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept_host_connections(),
            TOKEN_TIMER => self.on_timer(),
            _ => match self.endpoints.get(&token).copied() {
                Some(Endpoint::Pending) => self.read_connect_line(token),
                Some(Endpoint::Conn(key)) => self.on_conn_event(key, events),
                Some(Endpoint::Draining) => self.flush_draining(token),
                // An event queued before the stream was closed.
                None => {}
            },
        }
    }

    fn accept_host_connections(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.listener().accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Likely out of fds. The listener is level-triggered and would wake us
                    // in a loop: take it out of epoll for a moment.
                    crate::guest_warn!(
                        "virtio-vsock: accept on {}: {e}",
                        self.uds_path().display()
                    );
                    self.pause_listener();
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_CONNECTS
                || self.stream_count() >= self.max_connections
            {
                debug!("virtio-vsock: too many host connections, closing a new one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let Some(token) = self.register_stream(&stream) else {
                continue;
            };
            let deadline = Instant::now() + CONNECT_LINE_TIMEOUT;
            self.endpoints.insert(token, Endpoint::Pending);
            self.pending
                .insert(token, HostConnect::new(stream, deadline));
            self.arm_timer(deadline);
            // Edge-triggered: the line may already be there and no event would tell us.
            self.read_connect_line(token);
        }
    }

    fn pause_listener(&mut self) {
        if let Some(events) = &self.events {
            let _ = events.remove(self.listener.listener().as_raw_fd());
        }
        let resume = Instant::now() + ACCEPT_BACKOFF;
        self.listener_resume = Some(resume);
        self.arm_timer(resume);
    }

    fn read_connect_line(&mut self, token: u32) {
        let Some(pending) = self.pending.get_mut(&token) else {
            return;
        };
        let port = match pending.read_line() {
            ConnectLine::Incomplete => return,
            ConnectLine::Invalid => {
                debug!("virtio-vsock: bad CONNECT line, closing host stream");
                self.close_pending(token);
                return;
            }
            ConnectLine::Port(port) => port,
        };
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let local_port = self.alloc_host_port(port);
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        self.endpoints.insert(token, Endpoint::Conn(key));
        self.host_ports.insert(local_port);
        self.conns.insert(
            key,
            Connection::host_initiated(pending.stream, token, key, deadline),
        );
        self.arm_timer(deadline);
        self.reschedule(key);
    }

    fn on_conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let retry_write = conn.on_host_events(events);
        let gone = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if conn.state == State::Connecting {
            if gone {
                // The host process gave up before the guest answered.
                self.reset_conn(key);
            }
            return;
        }
        if gone || (retry_write && conn.flush().is_err()) {
            conn.on_host_gone();
        }
        self.reschedule(key);
    }

    fn flush_draining(&mut self, token: u32) {
        let Some(d) = self.draining.get_mut(&token) else {
            return;
        };
        let done = match d.out.flush(&d.stream) {
            Ok(_) => d.out.is_empty(),
            Err(_) => true,
        };
        if done {
            self.close_draining(token);
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.timer_deadline = None;

        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            debug!("virtio-vsock: host stream sent no CONNECT line in time");
            self.close_pending(token);
        }

        let expired: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.key)
            .collect();
        for key in expired {
            // Either the guest never answered our REQUEST or never sent its final RST.
            debug!(
                local_port = key.local_port,
                peer_port = key.peer_port,
                "virtio-vsock: connection timed out"
            );
            self.reset_conn(key);
        }

        let expired: Vec<u32> = self
            .draining
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            debug!("virtio-vsock: host process did not read the rest of a closed connection");
            self.close_draining(token);
        }

        if self.listener_resume.is_some_and(|t| t <= now) {
            self.listener_resume = None;
            if let Some(events) = &self.events {
                if let Err(e) = events.add(
                    self.listener.listener().as_raw_fd(),
                    TOKEN_LISTENER,
                    EventSet::IN,
                ) {
                    warn!("virtio-vsock: cannot watch the listener again: {e}");
                }
            }
        }

        // Reading the timerfd is never needed: re-arming or clearing it resets its count,
        // which is what keeps the level-triggered event from firing again.
        let next = self
            .pending
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|c| c.deadline))
            .chain(self.draining.values().map(|d| d.deadline))
            .chain(self.listener_resume)
            .min();
        match next {
            Some(deadline) => self.set_timer(deadline),
            None => {
                let _ = self.timer.clear();
            }
        }
    }

    fn arm_timer(&mut self, deadline: Instant) {
        if self.timer_deadline.is_some_and(|d| d <= deadline) {
            return;
        }
        self.set_timer(deadline);
    }

    fn set_timer(&mut self, deadline: Instant) {
        // A zero duration would disarm the timer.
        let delay = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(delay, None) {
            Ok(()) => self.timer_deadline = Some(deadline),
            Err(e) => warn!("virtio-vsock: cannot arm the timer: {e}"),
        }
    }

    // ---- bookkeeping -----------------------------------------------------------------

    fn stream_count(&self) -> usize {
        self.conns.len() + self.pending.len() + self.draining.len()
    }

    /// A unique local port for a host-initiated connection to guest port `peer_port`.
    fn alloc_host_port(&mut self, peer_port: u32) -> u32 {
        // At most MAX_CONNECTIONS ports are taken, so this ends within that many steps.
        let mut port = self.next_host_port;
        loop {
            if port < FIRST_HOST_PORT {
                port = FIRST_HOST_PORT;
            }
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.host_ports.contains(&port) && !self.conns.contains_key(&key) {
                self.next_host_port = port.wrapping_add(1);
                return port;
            }
            port = port.wrapping_add(1);
        }
    }

    /// Picks a token and adds `stream` to epoll. `None` if that fails (the caller drops
    /// the stream, which closes it).
    fn register_stream(&mut self, stream: &UnixStream) -> Option<u32> {
        let events = self.events.as_ref()?;
        let mut token = self.next_token;
        // Tokens count up (so a stale event rarely meets a reused token) and wrap within
        // the range; at most MAX_CONNECTIONS are taken, so the search ends quickly.
        loop {
            if !(FIRST_STREAM_TOKEN..=LAST_STREAM_TOKEN).contains(&token) {
                token = FIRST_STREAM_TOKEN;
            }
            if !self.endpoints.contains_key(&token) {
                break;
            }
            token += 1;
        }
        self.next_token = token.wrapping_add(1);
        match events.add(stream.as_raw_fd(), token, stream_events()) {
            Ok(()) => Some(token),
            Err(e) => {
                crate::guest_warn!("virtio-vsock: cannot watch a stream: {e}");
                None
            }
        }
    }

    /// Stops watching a stream that is about to be dropped.
    fn forget_stream(&mut self, stream: &UnixStream, token: u32) {
        if let Some(events) = &self.events {
            let _ = events.remove(stream.as_raw_fd());
        }
        self.endpoints.remove(&token);
    }

    /// Removes a connection from every table and returns it (its stream still open).
    fn take_conn(&mut self, key: ConnKey) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        if conn.host_initiated {
            self.host_ports.remove(&key.local_port);
        }
        // Keep the lists free of stale keys: a new connection could reuse the key.
        if conn.ctrl_queued {
            self.ctrl_ready.retain(|k| *k != key);
        }
        if conn.data_queued {
            self.data_ready.retain(|k| *k != key);
        }
        Some(conn)
    }

    /// Drops a connection and closes its stream (the guest already knows it is over).
    fn close_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.take_conn(key) {
            self.forget_stream(&conn.stream, conn.token);
        }
    }

    /// Drops a connection and tells the guest with an RST.
    fn reset_conn(&mut self, key: ConnKey) {
        if let Some(mut conn) = self.take_conn(key) {
            self.rsts
                .push_back(conn.header(self.guest_cid, op::RST, 0, 0));
            self.forget_stream(&conn.stream, conn.token);
        }
    }

    fn close_pending(&mut self, token: u32) {
        if let Some(p) = self.pending.remove(&token) {
            self.forget_stream(&p.stream, token);
        }
    }

    fn close_draining(&mut self, token: u32) {
        if let Some(d) = self.draining.remove(&token) {
            self.forget_stream(&d.stream, token);
        }
    }
}

fn conn_state(conns: &HashMap<ConnKey, Connection>, key: ConnKey) -> Option<State> {
    conns.get(&key).map(|c| c.state)
}

fn write_header(pkt: &VsockPacket<'_, ()>, hdr: Header, data_len: u32) -> RxFill {
    match hdr.write_to(pkt) {
        Ok(()) => RxFill::Written(HEADER_SIZE as u32 + data_len),
        Err(e) => {
            // The parser checked the header descriptor, so this is not expected.
            crate::guest_warn!("virtio-vsock: cannot write an rx header: {e}");
            RxFill::Unusable
        }
    }
}

/// Test access to the connection table.
#[cfg(test)]
impl Muxer {
    pub fn set_max_connections(&mut self, n: usize) {
        self.max_connections = n;
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn draining_count(&self) -> usize {
        self.draining.len()
    }

    /// Runs the timer handler as if every deadline had passed by `by`.
    pub fn expire_deadlines(&mut self, by: Duration) {
        for p in self.pending.values_mut() {
            p.deadline -= by;
        }
        for c in self.conns.values_mut() {
            if let Some(d) = c.deadline.as_mut() {
                *d -= by;
            }
        }
        for d in self.draining.values_mut() {
            d.deadline -= by;
        }
        self.on_timer();
    }
}
