//! A TCP connection as the rest of the engine sees it: somewhere to queue frames for a
//! peer, and a flag that says it closed.
//!
//! A [`TcpConn`] is shared by everyone who sends on it (the data paths and the control
//! task append frames to its output buffer under a short lock, never held across an await)
//! and by the two tasks of [`super::tcp`] that move its bytes. A peer's endpoint may be one
//! ([`super::addr::PeerAddr::Tcp`]); the peer knows only this handle, not the tasks.
//! [`Unauthenticated`] keeps the connections that have not completed a handshake, so that
//! a flood of idle connections cannot lock a real client out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// At most this many connections may be waiting for their first handshake at once
/// (docs/architecture.md, "TCP transport").
pub(crate) const MAX_UNAUTHENTICATED: usize = 64;
/// Handshake messages a connection may bring before a handshake authenticated it: a
/// client's initiation and its retry, or on the client's side a cookie reply and the
/// response, with room to spare. A connection that sends more is closed: without the
/// limit one connection could keep the handshake queue full of initiations, each of which
/// costs the control task a Diffie-Hellman (a TCP client is never asked for a cookie).
pub(crate) const MAX_UNAUTHENTICATED_HANDSHAKES: u32 = 4;
/// Bytes waiting to be written before a connection refuses more (the inner traffic's own
/// congestion control then backs off: dropping is better than queueing without bound).
const MAX_PENDING: usize = 2 << 20;
/// No peer slot yet.
const NO_SLOT: u32 = u32::MAX;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One TCP connection.
pub(crate) struct TcpConn {
    /// Unique within the process.
    pub(crate) id: u64,
    /// The other end.
    pub(crate) remote: SocketAddr,
    /// Frames waiting for the writer task, each behind its 2-byte length.
    out: Mutex<Vec<u8>>,
    /// Wakes the writer task.
    pub(crate) wake: Notify,
    /// Wakes the reader task when the connection closes.
    pub(crate) closing: Notify,
    closed: AtomicBool,
    /// The peer a handshake on this connection authenticated.
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
    pub(crate) fn new(remote: SocketAddr) -> Arc<TcpConn> {
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
    pub(crate) fn admit_handshake(&self) -> bool {
        let n = self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.is_authenticated() || n < MAX_UNAUTHENTICATED_HANDSHAKES
    }

    /// Queues one message as a frame. False if the connection is closed or too far
    /// behind (the message is then dropped).
    pub(crate) fn send_frame(&self, msg: &[u8]) -> bool {
        if self.is_closed() || msg.is_empty() || msg.len() > usize::from(u16::MAX) {
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

    /// Swaps the queued frames into `spare` (empty), for the writer task.
    pub(crate) fn take_output(&self, spare: &mut Vec<u8>) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *out, spare);
    }

    /// Closes the connection (both tasks end).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        self.closing.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Records that a handshake on this connection authenticated it as `slot`.
    pub(crate) fn authenticate(&self, slot: u32) {
        self.peer.store(slot, Ordering::Relaxed);
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        self.peer_slot().is_some()
    }

    /// The peer slot this connection authenticated as.
    pub(crate) fn peer_slot(&self) -> Option<u32> {
        let s = self.peer.load(Ordering::Relaxed);
        (s != NO_SLOT).then_some(s)
    }
}

/// Connections that have not authenticated yet, oldest first.
#[derive(Default)]
pub(crate) struct Unauthenticated {
    conns: Mutex<VecDeque<Weak<TcpConn>>>,
}

impl Unauthenticated {
    /// Admits a new connection, closing the oldest unauthenticated one if the limit is
    /// reached; returns how many were evicted.
    pub(crate) fn admit(&self, conn: &Arc<TcpConn>) -> usize {
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
