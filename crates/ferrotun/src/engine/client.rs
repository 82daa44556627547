//! A client's connector: keeps the server reachable.
//!
//! Over UDP the session's own timers retry handshakes (every 5 s for 90 s, as WireGuard);
//! the connector adds what WireGuard lacks: with `persist = true` it keeps trying after
//! that, with capped exponential backoff and jitter, and it resolves the endpoint's host
//! name again on every round once handshakes have failed for a while, so a server that
//! moved is found again. Over TCP it connects, runs the connection, and reconnects with the
//! same backoff when the connection breaks. With `persist = false` a lost server ends the
//! client (exit 1) instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrotun_proto::Entropy;

use crate::config::{Endpoint, Transport};

use super::addr::{PeerAddr, canonical};
use super::peer::{Peer, unstamp};
use super::shared::Shared;
use super::tcp;

/// First retry delay.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest retry delay: a server that comes back is reached within this (plus jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// After this long without a session the endpoint is resolved again on every round.
const RERESOLVE_AFTER: Duration = Duration::from_secs(10);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP client without `persist` gives up after this long without a session (WireGuard's
/// REKEY_ATTEMPT_TIME).
const GIVE_UP: Duration = Duration::from_secs(90);

/// How the client reaches its server.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// Where the server is.
    pub(crate) endpoint: Endpoint,
    /// UDP or TCP.
    pub(crate) transport: Transport,
    /// Keep reconnecting.
    pub(crate) persist: bool,
}

/// Capped exponential backoff with jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next delay: the current step ±25 %, then the step doubles up to the cap.
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let r = ferrotun_proto::OsEntropy.next_u64().unwrap_or(0) % 1000;
        base.mul_f64(0.75 + r as f64 / 2000.0)
    }
}

/// Resolves the endpoint to one address (the first the resolver gives).
async fn resolve(ep: &Endpoint) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Runs the connector for the client's one peer (slot 0).
pub(crate) async fn run(shared: Arc<Shared>, settings: ClientSettings) -> anyhow::Result<()> {
    let Some(peer) = shared.peers.load().get(0).cloned() else {
        anyhow::bail!("a client needs its server as peer 0");
    };
    match settings.transport {
        Transport::Udp => udp(&shared, &peer, &settings).await,
        Transport::Tcp => tcp_loop(&shared, &peer, &settings).await,
    }
}

/// Resolves the endpoint again; true if it now names another address (set as the peer's).
async fn reresolve(peer: &Peer, ep: &Endpoint) -> bool {
    match resolve(ep).await {
        Ok(addr) => {
            let addr = canonical(addr);
            if peer.endpoint().is_none_or(|cur| cur.addr() != addr) {
                tracing::info!(endpoint = %ep, address = %addr, "server endpoint resolved to a new address");
                peer.set_endpoint(PeerAddr::Udp(addr));
                return true;
            }
            false
        }
        Err(e) => {
            tracing::warn!(endpoint = %ep, "resolving the server: {e}");
            false
        }
    }
}

/// Data sent within this long, and nothing received for [`SILENCE`], looks like a server
/// that is gone or moved: the endpoint's name is resolved again at once.
const RECENT: Duration = Duration::from_secs(1);
/// See [`RECENT`]. A live server answers within 2 s even one-way traffic (keepalives).
const SILENCE: Duration = Duration::from_secs(3);

async fn udp(shared: &Shared, peer: &Peer, s: &ClientSettings) -> anyhow::Result<()> {
    let mut backoff = Backoff::new();
    // Since when there has been no usable session (or the server has been silent).
    let mut failing_since = Some(Instant::now());
    peer.want_handshake(&shared.wake);
    loop {
        let wait = if failing_since.is_some() {
            backoff.step()
        } else {
            Duration::from_millis(500)
        };
        tokio::time::sleep(wait).await;
        let now = Instant::now();
        let ago = |at: &std::sync::atomic::AtomicU64| {
            unstamp(shared.epoch, at.load(Ordering::Relaxed))
                .map(|t| now.saturating_duration_since(t))
        };
        let established = peer.status.established.load(Ordering::Relaxed);
        let pending = peer.status.in_progress.load(Ordering::Relaxed);
        // A keypair stays usable for 180 s after the server went away, so "established"
        // alone would keep a moved server unfound for minutes: silence while we send
        // counts as failing too.
        let silent = ago(&peer.status.sent_at).is_some_and(|d| d < RECENT)
            && ago(&peer.status.received_at).is_none_or(|d| d >= SILENCE);
        if established && !silent {
            if failing_since.take().is_some() {
                backoff.reset();
            }
            continue;
        }
        let since = *failing_since.get_or_insert(now);
        if !s.persist && !established && since.elapsed() >= GIVE_UP {
            anyhow::bail!(
                "no session with the server {} for {GIVE_UP:?} and persist = false",
                s.endpoint
            );
        }
        if (silent || since.elapsed() >= RERESOLVE_AFTER) && reresolve(peer, &s.endpoint).await {
            // The server is somewhere else now: start over there at once.
            peer.notes.restart.store(true, Ordering::Release);
            peer.want_handshake(&shared.wake);
            continue;
        }
        if !pending {
            // No session, or a silent server (restarted, say): a fresh handshake; the
            // session spaces initiations 5 s apart, so this cannot flood.
            peer.want_handshake(&shared.wake);
        }
    }
}

async fn tcp_loop(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    s: &ClientSettings,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let addr = resolve(&s.endpoint).await?;
            tcp::connect(addr, CONNECT_TIMEOUT).await
        };
        match attempt.await {
            Ok((stream, conn)) => {
                failures = 0;
                tracing::info!(server = %conn.remote, "connected over TCP");
                peer.set_endpoint(PeerAddr::Tcp(conn.clone()));
                // A new connection starts a new session: the server may have restarted, and
                // data under old keys would only get the connection closed.
                peer.notes.restart.store(true, Ordering::Release);
                peer.want_handshake(&shared.wake);
                let started = Instant::now();
                tcp::serve(shared.clone(), stream, conn).await;
                tracing::warn!(server = %s.endpoint, "TCP connection to the server lost");
                if !s.persist {
                    anyhow::bail!(
                        "the connection to the server {} closed and persist = false",
                        s.endpoint
                    );
                }
                if started.elapsed() > RERESOLVE_AFTER {
                    backoff.reset();
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(server = %s.endpoint, "connecting over TCP: {e}; retrying");
                } else {
                    tracing::debug!(server = %s.endpoint, attempt = failures, "connecting over TCP: {e}");
                }
                if !s.persist {
                    anyhow::bail!(
                        "cannot connect to the server {}: {e} (persist = false)",
                        s.endpoint
                    );
                }
            }
        }
        tokio::time::sleep(backoff.step()).await;
    }
}
