//! One vsock stream: its state, the credit accounting both ways, and the unix stream
//! behind it.
//!
//! Credit (virtio spec 5.10.6.3): each side advertises `buf_alloc` (its receive buffer)
//! and `fwd_cnt` (bytes it has consumed) in every header; a sender may have at most
//! `buf_alloc - (bytes sent - fwd_cnt)` bytes in flight. Guest -> host, our buffer is the
//! bytes we took from the guest but could not yet write to the unix stream, so `fwd_cnt`
//! counts bytes the unix stream accepted. Host -> guest, we read from the unix stream only
//! as much as the guest has room for, straight into its rx buffer.
//!
//! The stream is watched edge-triggered: `readable` remembers that the last event said
//! "readable" until a read returns `WouldBlock`. Guest -> host bytes that the stream does
//! not take are kept in an [`OutBuf`] until it reports writable again.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use super::packet::{
    op, Header, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer we advertise per connection: the most guest -> host bytes we ever hold
/// for one connection.
pub(crate) const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Send an unsolicited CREDIT_UPDATE once the guest's view of our free space lags the
/// truth by this much. Below `CONN_BUF_ALLOC`, so a sender that used up every byte it
/// believed it had always gets an update once we have forwarded its data.
pub(crate) const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// Identifies a connection from the guest's packets: `dst_port` is our side
/// (`local_port`), `src_port` the guest's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: REQUEST queued for the guest, waiting for RESPONSE or RST.
    Connecting,
    /// Data may flow (subject to shutdowns).
    Established,
}

/// Why a packet or an I/O result ends the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConnError {
    /// The guest broke the protocol: reset the connection.
    Protocol(&'static str),
    /// The unix stream's peer is gone.
    HostGone,
}

/// The result of reading host data into a guest rx buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// `.0` bytes are in the buffer.
    Data(u32),
    /// Nothing to read right now.
    WouldBlock,
    /// The host will send no more.
    Eof,
    /// The stream failed.
    HostGone,
}

/// Bytes for the unix stream that it did not take yet. Never holds more than
/// [`CONN_BUF_ALLOC`]: the guest may not send more than that without our credit.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    buf: Vec<u8>,
    /// Bytes before `head` are already written.
    head: usize,
}

impl OutBuf {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends guest memory. The caller has checked `len() + src.len()` against the credit.
    fn append(&mut self, src: &VolatileSlice<'_, ()>) {
        let n = src.len();
        if self.buf.len() + n > self.buf.capacity() && self.head > 0 {
            // Reclaim the written prefix before growing.
            self.buf.drain(..self.head);
            self.head = 0;
        }
        let needed = self.buf.len() + n;
        if needed > self.buf.capacity() {
            // Double, but never past the credit we give: the bound on this allocation.
            let target = needed.max((self.buf.capacity() * 2).min(CONN_BUF_ALLOC as usize));
            self.buf.reserve_exact(target - self.buf.len());
        }
        let old = self.buf.len();
        self.buf.resize(needed, 0);
        src.copy_to(&mut self.buf[old..]);
    }

    /// Writes as much as `stream` takes. Returns the number of bytes written; `WouldBlock`
    /// is not an error here, it just ends the attempt.
    pub fn flush(&mut self, stream: &UnixStream) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            match (&*stream).write(&self.buf[self.head..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.head += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            // Keep the capacity: a busy connection refills it at once.
            self.buf.clear();
            self.head = 0;
        }
        Ok(total)
    }

    fn clear(&mut self) {
        self.buf = Vec::new();
        self.head = 0;
    }
}

/// Control packets owed to the guest. Kept as flags, not a queue, so a connection can never
/// have more than one of each outstanding and each is built with the credit figures current
/// when it finally goes out.
#[derive(Debug, Default)]
struct CtrlOps {
    request: bool,
    response: bool,
    credit_update: bool,
    /// Flags of a SHUTDOWN still to send (cumulative), 0 for none.
    shutdown: u32,
}

/// One connection between a guest port and a host unix stream.
#[derive(Debug)]
pub(crate) struct Connection {
    pub stream: UnixStream,
    /// Epoll token of `stream`.
    pub token: u32,
    pub key: ConnKey,
    pub state: State,
    /// The host opened it (its local port was allocated by us).
    pub host_initiated: bool,
    /// When a Connecting connection or one waiting for the guest's final RST gives up.
    pub deadline: Option<Instant>,
    /// Queued in the muxer's control / data lists (so it is queued at most once).
    pub ctrl_queued: bool,
    pub data_queued: bool,

    readable: bool,
    /// The host end is gone for good (HUP, EPIPE, ECONNRESET).
    hup: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,
    /// SHUTDOWN flags we sent or queued.
    local_shut: u32,
    /// Guest asked for SHUTDOWN(SEND): shut the stream's write side once `out` is empty.
    shut_write_when_flushed: bool,

    // Guest -> host.
    out: OutBuf,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,

    // Host -> guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,

    ctrl: CtrlOps,
}

impl Connection {
    fn new(stream: UnixStream, token: u32, key: ConnKey, state: State) -> Self {
        Self {
            stream,
            token,
            key,
            state,
            host_initiated: false,
            deadline: None,
            ctrl_queued: false,
            data_queued: false,
            // Edge-triggered: an event may have fired before we were watching.
            readable: true,
            hup: false,
            peer_shut: 0,
            local_shut: 0,
            shut_write_when_flushed: false,
            out: OutBuf::default(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            ctrl: CtrlOps::default(),
        }
    }

    /// A host process asked for guest port `key.peer_port`; a REQUEST is owed.
    pub fn host_initiated(stream: UnixStream, token: u32, key: ConnKey, deadline: Instant) -> Self {
        let mut c = Self::new(stream, token, key, State::Connecting);
        c.host_initiated = true;
        c.deadline = Some(deadline);
        c.ctrl.request = true;
        c
    }

    /// The guest connected and a host listener accepted; a RESPONSE is owed.
    pub fn guest_initiated(stream: UnixStream, token: u32, key: ConnKey, hdr: &Header) -> Self {
        let mut c = Self::new(stream, token, key, State::Established);
        c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        c.ctrl.response = true;
        c
    }

    /// Every guest packet carries its current buffer size and consumed count.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the guest has room for.
    pub fn peer_credit(&self) -> u32 {
        // A guest reporting more consumed than we sent gets a huge in-flight figure and
        // therefore no credit: lying only stalls itself.
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes of our receive buffer not in use.
    pub fn free_space(&self) -> u32 {
        // `out` never exceeds CONN_BUF_ALLOC, so this cannot underflow.
        CONN_BUF_ALLOC - self.out.len() as u32
    }

    /// Bytes taken from the guest and not yet written to the unix stream.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// SHUTDOWN flags sent (or queued) to the guest.
    pub fn local_shut(&self) -> u32 {
        self.local_shut
    }

    /// SHUTDOWN flags the guest sent.
    pub fn peer_shut(&self) -> u32 {
        self.peer_shut
    }

    /// Whether host data should be read for the guest now.
    pub fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            // The guest must see RESPONSE before any data.
            && !self.ctrl.response
            && self.local_shut & SHUTDOWN_SEND == 0
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether a control packet is owed.
    pub fn has_ctrl(&self) -> bool {
        self.ctrl.request
            || self.ctrl.response
            || self.ctrl.credit_update
            || self.ctrl.shutdown != 0
    }

    /// The next control packet owed, as (op, flags); marks it sent.
    pub fn next_ctrl(&mut self) -> Option<(u16, u32)> {
        if std::mem::take(&mut self.ctrl.request) {
            return Some((op::REQUEST, 0));
        }
        if std::mem::take(&mut self.ctrl.response) {
            return Some((op::RESPONSE, 0));
        }
        if std::mem::take(&mut self.ctrl.credit_update) {
            return Some((op::CREDIT_UPDATE, 0));
        }
        match std::mem::take(&mut self.ctrl.shutdown) {
            0 => None,
            flags => Some((op::SHUTDOWN, flags)),
        }
    }

    /// A header from us to the guest on this connection, carrying our current credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        // Whatever we send tells the guest our fwd_cnt: no separate update needed.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.ctrl.credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The guest asked for our credit.
    pub fn request_credit_update(&mut self) {
        self.ctrl.credit_update = true;
    }

    /// The guest answered our REQUEST: tell the host process which port it got.
    pub fn establish(&mut self) -> Result<(), ConnError> {
        let line = format!("OK {}\n", self.key.local_port);
        // Nothing was written to this fresh stream before, so a short line fits whole.
        match (&self.stream).write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            _ => return Err(ConnError::HostGone),
        }
        self.state = State::Established;
        self.deadline = None;
        self.readable = true;
        Ok(())
    }

    /// Readiness reported by epoll. Returns whether a pending write should be retried.
    pub fn on_host_events(&mut self, events: EventSet) -> bool {
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            self.readable = true;
        }
        events.contains(EventSet::OUT)
    }

    /// Guest data (an RW payload, in one or more pieces) for the unix stream.
    pub fn recv_from_guest(&mut self, data: &[VolatileSlice<'_, ()>]) -> Result<(), ConnError> {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            return Err(ConnError::Protocol("data after SHUTDOWN(SEND)"));
        }
        let len: usize = data.iter().map(|piece| piece.len()).sum();
        if len > self.free_space() as usize {
            return Err(ConnError::Protocol("data beyond the credit we gave"));
        }
        if self.hup {
            // Nobody will read it; count it as consumed so the guest does not stall
            // before it learns (from our SHUTDOWN) that the peer is gone.
            self.forwarded(len);
            return Ok(());
        }
        let mut written = 0;
        for (i, piece) in data.iter().enumerate() {
            // The common case: straight from guest memory to the socket, no copy. Once
            // bytes are buffered, new ones queue behind them to keep the order.
            let n = if self.out.is_empty() {
                self.write_direct(piece)?
            } else {
                0
            };
            written += n;
            if n < piece.len() {
                let rest = piece
                    .subslice(n, piece.len() - n)
                    .map_err(|_| ConnError::Protocol("bad data slice"))?;
                self.out.append(&rest);
                for later in &data[i + 1..] {
                    self.out.append(later);
                }
                break;
            }
        }
        self.forwarded(written);
        Ok(())
    }

    /// One write of guest memory to the stream; 0 if it is full.
    fn write_direct(&self, piece: &VolatileSlice<'_, ()>) -> Result<usize, ConnError> {
        let mut stream = &self.stream;
        loop {
            return match stream.write_volatile(piece) {
                Ok(n) => Ok(n),
                Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => {
                    continue
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(0)
                }
                Err(_) => Err(ConnError::HostGone),
            };
        }
    }

    /// Writes buffered guest data the stream can now take.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        if self.hup {
            return Ok(());
        }
        match self.out.flush(&self.stream) {
            Ok(n) => self.forwarded(n),
            Err(_) => return Err(ConnError::HostGone),
        }
        if self.out.is_empty() && std::mem::take(&mut self.shut_write_when_flushed) {
            // The host process reads EOF: how a guest-side stdin close reaches it.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        // fwd_cnt is a wrapping 32-bit counter on the wire.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.ctrl.credit_update = true;
        }
    }

    /// Reads host data into a guest rx buffer, at most as much as the guest has credit for.
    pub fn read_to_guest(&mut self, buf: &VolatileSlice<'_, ()>) -> ReadOutcome {
        let max = buf.len().min(self.peer_credit() as usize);
        let Ok(mut dst) = buf.subslice(0, max) else {
            return ReadOutcome::WouldBlock;
        };
        if max == 0 {
            return ReadOutcome::WouldBlock;
        }
        let mut stream = &self.stream;
        loop {
            return match stream.read_volatile(&mut dst) {
                Ok(0) => {
                    self.readable = false;
                    ReadOutcome::Eof
                }
                Ok(n) => {
                    // n <= max <= peer credit, which fits u32.
                    self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                    ReadOutcome::Data(n as u32)
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => {
                    continue
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    ReadOutcome::WouldBlock
                }
                Err(_) => {
                    self.readable = false;
                    ReadOutcome::HostGone
                }
            };
        }
    }

    /// Queues SHUTDOWN `flags` for the guest (adding to what was already said).
    fn queue_shutdown(&mut self, flags: u32) {
        if flags & !self.local_shut == 0 {
            return;
        }
        self.local_shut |= flags;
        self.ctrl.shutdown = self.local_shut;
    }

    /// The host closed its write side: the guest reads EOF after the data before it.
    pub fn on_host_eof(&mut self) {
        // If the host is gone entirely it will not read either.
        self.queue_shutdown(if self.hup {
            SHUTDOWN_BOTH
        } else {
            SHUTDOWN_SEND
        });
    }

    /// The host end is gone (HUP, or a write/read error): whatever we buffered for it is
    /// lost. Data the host wrote before leaving is still delivered first, then the guest
    /// gets SHUTDOWN(RCV|SEND).
    pub fn on_host_gone(&mut self) {
        self.hup = true;
        self.out.clear();
        self.shut_write_when_flushed = false;
        if self.local_shut & SHUTDOWN_SEND != 0 || self.peer_shut & SHUTDOWN_RCV != 0 {
            // Nothing more will be read: say so now.
            self.queue_shutdown(SHUTDOWN_BOTH);
        } else {
            self.readable = true;
        }
    }

    /// A read from the stream failed: no draining to EOF possible.
    pub fn on_host_read_error(&mut self) {
        self.hup = true;
        self.out.clear();
        self.queue_shutdown(SHUTDOWN_BOTH);
    }

    /// The guest sent SHUTDOWN with `flags` (not both: the muxer resets then).
    pub fn on_guest_shutdown(&mut self, flags: u32) -> Result<(), ConnError> {
        let flags = flags & SHUTDOWN_BOTH;
        self.peer_shut |= flags;
        if flags & SHUTDOWN_RCV != 0 {
            // The guest reads no more: make the host's further writes fail rather than
            // fill a buffer nobody drains.
            let _ = self.stream.shutdown(Shutdown::Read);
            if self.hup {
                self.queue_shutdown(SHUTDOWN_BOTH);
            }
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.shut_write_when_flushed = true;
            self.flush()?;
        }
        Ok(())
    }

    /// What remains when the guest closes: the stream and any bytes still owed to it.
    pub fn into_leftovers(self) -> (UnixStream, u32, Option<OutBuf>) {
        let out = (!self.hup && !self.out.is_empty()).then_some(self.out);
        (self.stream, self.token, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

    fn guest_bytes<'a>(mem: &'a GuestMemoryMmap, data: &[u8]) -> VolatileSlice<'a, ()> {
        let s = mem.get_slice(GuestAddress(0), data.len()).unwrap();
        s.copy_from(data);
        s
    }

    fn pair() -> (Connection, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let hdr = Header {
            buf_alloc: 1000,
            ..Header::default()
        };
        let key = ConnKey {
            local_port: 52,
            peer_port: 1024,
        };
        let mut c = Connection::guest_initiated(ours, 7, key, &hdr);
        c.next_ctrl();
        (c, host)
    }

    #[test]
    fn peer_credit_follows_the_guests_reports() {
        let (mut c, _host) = pair();
        assert_eq!(c.peer_credit(), 1000);
        c.tx_cnt = 600;
        assert_eq!(c.peer_credit(), 400);
        c.update_peer_credit(1000, 500);
        assert_eq!(c.peer_credit(), 900);
        // A fwd_cnt ahead of what we sent is nonsense: no credit rather than a wrap.
        c.update_peer_credit(1000, 700);
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap on the wire.
        c.tx_cnt = 5;
        c.update_peer_credit(1000, u32::MAX - 4);
        assert_eq!(c.peer_credit(), 990);
    }

    #[test]
    fn guest_data_the_socket_cannot_take_is_buffered_up_to_the_credit() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (mut c, mut host) = pair();
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let mut sent = 0usize;
        // Fill the socket buffer and then ours, without the host reading.
        while c.free_space() as usize >= chunk.len() {
            c.recv_from_guest(&[guest_bytes(&mem, &chunk)]).unwrap();
            sent += chunk.len();
        }
        assert!(c.buffered() > 0);
        assert_eq!(
            c.recv_from_guest(&[guest_bytes(&mem, &chunk)]),
            Err(ConnError::Protocol("data beyond the credit we gave"))
        );
        assert!(c.out.buf.capacity() <= CONN_BUF_ALLOC as usize);
        assert_eq!(c.fwd_cnt as usize + c.buffered(), sent);

        // The host drains; flushes move the rest and advance fwd_cnt.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < sent {
            let n = host.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            c.flush().unwrap();
        }
        assert_eq!(c.buffered(), 0);
        assert_eq!(c.fwd_cnt as usize, sent);
        let want: Vec<u8> = chunk.iter().cycle().take(sent).copied().collect();
        assert!(got == want, "bytes arrive intact and in order");
        assert!(
            c.has_ctrl(),
            "a credit update is owed after forwarding that much"
        );
    }

    #[test]
    fn shutdown_send_shuts_the_write_side_after_the_buffer_drains() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (mut c, mut host) = pair();
        c.recv_from_guest(&[guest_bytes(&mem, b"last words")])
            .unwrap();
        c.on_guest_shutdown(SHUTDOWN_SEND).unwrap();
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        assert_eq!(
            c.recv_from_guest(&[guest_bytes(&mem, b"more")]),
            Err(ConnError::Protocol("data after SHUTDOWN(SEND)"))
        );
    }

    #[test]
    fn host_eof_is_announced_with_the_right_flags() {
        let (mut c, host) = pair();
        c.on_host_eof();
        assert_eq!(c.next_ctrl(), Some((op::SHUTDOWN, SHUTDOWN_SEND)));
        drop(host);
        c.on_host_gone();
        assert_eq!(c.next_ctrl(), Some((op::SHUTDOWN, SHUTDOWN_BOTH)));
        assert_eq!(c.next_ctrl(), None);
    }
}
