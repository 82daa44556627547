//! TCP transport: each message travels as one frame (a 2-byte big-endian length, then the
//! message) on one TCP connection per peer.
//!
//! Every connection has two tasks: the writer flushes the connection's output buffer
//! ([`TcpConn`]) with as few writes as possible; the reader decodes frames and passes
//! each read's frames through the same receive pipeline as UDP datagrams
//! ([`Batch`]). A frame that is zero-length or longer than the MTU allows, garbage or
//! too many handshake messages from a connection that has not completed a handshake, or
//! no handshake within [`HANDSHAKE_DEADLINE`] closes the connection and nothing else.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ferrotun_proto::StreamDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::DropReason;

use super::addr::{Source, canonical};
use super::conn::TcpConn;
use super::receive::{Batch, Outcome};
use super::shared::Shared;
use super::turn::Turn;

/// A connection must complete a handshake within this time.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// One read takes up to this much: many frames per system call in a bulk transfer.
const READ_BUFFER: usize = 256 * 1024;
/// Frames a TAP server switches on from one connection before it flushes them: every
/// connection has its own receive batch, so its forwarding outbox stays small.
const FORWARDS: usize = 8;

/// Runs one connection until it closes: its writer and reader, then clears it from the
/// peer it served.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, conn: Arc<TcpConn>) {
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
        && let Some(peer) = shared.peers.load().get(slot)
    {
        peer.clear_tcp(conn.id);
    }
}

async fn write_loop(conn: Arc<TcpConn>, mut w: OwnedWriteHalf) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        conn.take_output(&mut spare);
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
    let mut decoder = StreamDecoder::with_capacity(shared.max_message(), READ_BUFFER);
    let mut batch = Batch::new(shared, 0, FORWARDS);
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
        let garbage = loop {
            match decoder.next_frame_range() {
                Ok(Some(r)) => frames.push(r),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        // A well-formed message that is merely not accepted (a client's data under keys
        // from before our restart) does not close the connection: the handshake deadline
        // still applies to a connection that never authenticates.
        batch.begin(shared);
        let src = Source::Tcp(conn);
        let bufs = &mut [decoder.buffer_mut()];
        let outcome = batch
            .receive(shared, bufs, 0, frames.iter().cloned(), src)
            .await;
        // The messages before a bad frame or message were checked one by one as always:
        // what they deliver still goes out.
        batch.finish(shared, bufs).await;
        if let Some(e) = garbage {
            shared.drop_packet(DropReason::TcpClosed, || format!("{}: {e}", conn.remote));
            return Err(e.to_string());
        }
        if outcome == Outcome::Close {
            shared.drop_packet(DropReason::TcpClosed, || {
                format!("{} sent a message it may not send", conn.remote)
            });
            return Err("a message it may not send".into());
        }
        if conn.is_closed() {
            return Ok(());
        }
        turn.next_batch().await;
    }
}

/// Accepts connections on a server's TCP listener.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) -> anyhow::Result<()> {
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
        let conn = TcpConn::new(canonical(remote));
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
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(TcpStream, Arc<TcpConn>)> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    Ok((stream, TcpConn::new(canonical(addr))))
}
