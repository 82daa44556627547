//! TCP transport: each message travels as one frame (a 2-byte big-endian length, then the
//! message) on one TCP connection per peer.
//!
//! A [`TcpConn`] is shared by whoever sends on it (the data paths and the control task
//! append frames to its output buffer under a short lock, never across an await) and its
//! two tasks: the writer flushes the buffer with as few writes as possible, the reader
//! decodes frames and hands each to the same receive code as a UDP datagram. A frame that
//! is zero-length or longer than the MTU allows, garbage from a connection that has not
//! completed a handshake, or no handshake within [`HANDSHAKE_DEADLINE`] closes the
//! connection and nothing else. Unauthenticated connections have one global limit; when
//! it is reached the oldest is closed, so a flood of idle connections cannot lock a real
//! client out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ferrotun_proto::StreamDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::receive::{ReceiveScratch, Verdict};
use super::{Shared, Source, Turn, receive_one};
use crate::stats::DropReason;

/// A connection must complete a handshake within this time (DESIGN.md, "Decisions").
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// At most this many connections may be waiting for their first handshake at once.
pub const MAX_UNAUTHENTICATED: usize = 64;
/// Handshake messages a connection may bring before a handshake authenticated it: a
/// client's initiation and its retry, or on the client's side a cookie reply and the
/// response, with room to spare. A connection that sends more is closed: without the
/// limit one connection could keep the handshake queue full of initiations, each of which
/// costs the control task a Diffie-Hellman (a TCP client is never asked for a cookie).
pub const MAX_UNAUTHENTICATED_HANDSHAKES: u32 = 4;
/// Bytes waiting to be written before a connection refuses more (the inner traffic's own
/// congestion control then backs off: dropping is better than queueing without bound).
const MAX_PENDING: usize = 2 << 20;
/// No peer slot yet.
const NO_SLOT: u32 = u32::MAX;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One TCP connection.
pub struct TcpConn {
    /// Unique within the process.
    pub id: u64,
    /// The other end.
    pub remote: SocketAddr,
    out: Mutex<Vec<u8>>,
    wake: Notify,
    closing: Notify,
    closed: AtomicBool,
    /// The peer this connection authenticated as (set by the control task).
    peer: AtomicU32,
    /// Handshake messages read from it so far.
    handshakes: AtomicU32,
}

impl std::fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp#{} {}", self.id, self.remote)
    }
}

impl TcpConn {
    fn new(remote: SocketAddr) -> Arc<TcpConn> {
        Arc::new(TcpConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            remote,
            out: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: Notify::new(),
            closing: Notify::new(),
            closed: AtomicBool::new(false),
            peer: AtomicU32::new(NO_SLOT),
            handshakes: AtomicU32::new(0),
        })
    }

    /// Counts a handshake message read from the connection; false once an unauthenticated
    /// connection has brought more than [`MAX_UNAUTHENTICATED_HANDSHAKES`].
    pub fn admit_handshake(&self) -> bool {
        let n = self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.is_authenticated() || n < MAX_UNAUTHENTICATED_HANDSHAKES
    }

    /// Queues one message as a frame. False if the connection is closed or too far
    /// behind (the message is then dropped).
    pub fn send_frame(&self, msg: &[u8]) -> bool {
        if self.closed.load(Ordering::Relaxed)
            || msg.is_empty()
            || msg.len() > usize::from(u16::MAX)
        {
            return false;
        }
        {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            if out.len() + 2 + msg.len() > MAX_PENDING {
                return false;
            }
            out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            out.extend_from_slice(msg);
        }
        self.wake.notify_one();
        true
    }

    /// Closes the connection (both tasks end).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        self.closing.notify_waiters();
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Records that a handshake on this connection authenticated it as `slot`.
    pub fn authenticate(&self, slot: u32) {
        self.peer.store(slot, Ordering::Relaxed);
    }

    /// Whether a handshake authenticated this connection.
    pub fn is_authenticated(&self) -> bool {
        self.peer.load(Ordering::Relaxed) != NO_SLOT
    }

    /// The peer slot this connection authenticated as.
    pub fn peer_slot(&self) -> Option<u32> {
        let s = self.peer.load(Ordering::Relaxed);
        (s != NO_SLOT).then_some(s)
    }
}

/// Connections that have not authenticated yet, oldest first.
#[derive(Default)]
pub struct Unauthenticated {
    conns: Mutex<VecDeque<Weak<TcpConn>>>,
}

impl Unauthenticated {
    /// Admits a new connection, closing the oldest unauthenticated one if the limit is
    /// reached; returns how many were evicted.
    fn admit(&self, conn: &Arc<TcpConn>) -> usize {
        let mut q = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        q.retain(|w| {
            w.upgrade()
                .is_some_and(|c| !c.is_closed() && !c.is_authenticated())
        });
        let mut evicted = 0;
        while q.len() >= MAX_UNAUTHENTICATED {
            if let Some(old) = q.pop_front().and_then(|w| w.upgrade()) {
                old.close();
                evicted += 1;
            }
        }
        q.push_back(Arc::downgrade(conn));
        evicted
    }
}

/// Runs one connection until it closes: its writer and reader, then clears it from the
/// peer it served.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, conn: Arc<TcpConn>) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let writer = tokio::spawn(write_loop(conn.clone(), w));
    let why = read_loop(&shared, &conn, r).await;
    conn.close();
    let _ = writer.await;
    match &why {
        Ok(()) => tracing::debug!(conn = ?conn, "TCP connection closed"),
        Err(e) => tracing::debug!(conn = ?conn, "TCP connection closed: {e}"),
    }
    if let Some(slot) = conn.peer_slot()
        && let Some(peer) = shared.table.load().get(slot)
    {
        peer.clear_tcp(conn.id);
    }
}

async fn write_loop(conn: Arc<TcpConn>, mut w: OwnedWriteHalf) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut out = conn.out.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *out, &mut spare);
        }
        if spare.is_empty() {
            if conn.is_closed() {
                let _ = w.shutdown().await;
                return;
            }
            conn.wake.notified().await;
            continue;
        }
        if w.write_all(&spare).await.is_err() {
            conn.close();
            return;
        }
        spare.clear();
    }
}

async fn read_loop(
    shared: &Arc<Shared>,
    conn: &Arc<TcpConn>,
    mut r: OwnedReadHalf,
) -> Result<(), String> {
    // One read takes up to this much: many frames per system call in a bulk transfer.
    const READ_BUFFER: usize = 256 * 1024;
    let mut decoder = StreamDecoder::with_capacity(shared.max_message(), READ_BUFFER);
    let mut scratch = ReceiveScratch::new(shared, 0);
    let mut writer = shared.device_writer();
    let mut frames: Vec<Range<usize>> = Vec::with_capacity(256);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_DEADLINE;
    let mut turn = Turn::new(std::time::Instant::now());
    loop {
        let spare = decoder.spare();
        let n = tokio::select! {
            r = turn.wait(r.read(spare)) => r.map_err(|e| e.to_string())?,
            () = tokio::time::sleep_until(deadline), if !conn.is_authenticated() => {
                shared.drop_packet(DropReason::TcpClosed, || format!("{} sent no handshake within {HANDSHAKE_DEADLINE:?}", conn.remote));
                return Err("no handshake in time".into());
            }
            () = conn.closing.notified() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        decoder.commit(n);
        frames.clear();
        loop {
            match decoder.next_frame_range() {
                Ok(Some(r)) => frames.push(r),
                Ok(None) => break,
                Err(e) => {
                    shared.drop_packet(DropReason::TcpClosed, || format!("{}: {e}", conn.remote));
                    return Err(e.to_string());
                }
            }
        }
        scratch.begin_batch();
        let buf = decoder.buffer_mut();
        scratch.open_ahead(shared, buf, frames.iter().cloned());
        for r in &frames {
            if scratch.must_flush() {
                scratch
                    .flush(shared, writer.as_mut(), &mut [&mut *buf])
                    .await;
            }
            scratch.take_ahead(r.start);
            // Garbage ends a connection; a well-formed message that is merely not
            // accepted (a client's data under keys from before our restart) does not: the
            // handshake deadline still applies to a connection that never authenticates.
            match receive_one(shared, &mut buf[r.clone()], Source::Tcp(conn), &mut scratch).await {
                Verdict::Close => {
                    shared.drop_packet(DropReason::TcpClosed, || {
                        format!("{} sent a message it may not send", conn.remote)
                    });
                    // What came before that message was authentic: it still goes out.
                    scratch
                        .flush(shared, writer.as_mut(), &mut [&mut *buf])
                        .await;
                    return Err("a message it may not send".into());
                }
                Verdict::Deliver {
                    start,
                    len,
                    partial,
                } => scratch.deliver(0, r.start + start, len, partial),
                Verdict::Accepted | Verdict::Dropped => {}
            }
        }
        scratch
            .flush(shared, writer.as_mut(), &mut [&mut *buf])
            .await;
        if conn.is_closed() {
            return Ok(());
        }
        turn.next_batch().await;
    }
}

/// Accepts connections on a server's TCP listener.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or the like: back off briefly rather than spin.
                shared.drop_packet(DropReason::TcpClosed, || format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = TcpConn::new(super::canonical(remote));
        for _ in 0..shared.unauthenticated.admit(&conn) {
            shared.drop_packet(DropReason::TcpClosed, || {
                format!(
                    "too many connections without a handshake; closed the oldest to admit {remote}"
                )
            });
        }
        tokio::spawn(serve(shared.clone(), stream, conn));
    }
}

/// Connects to `addr` within `timeout`, as a client.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(TcpStream, Arc<TcpConn>)> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    Ok((stream, TcpConn::new(super::canonical(addr))))
}
