//! What `show` reports: a snapshot of the interface, every peer and the drop counters,
//! rendered as text (like `wg show`) or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::peer::unstamp;
use crate::engine::shared::Shared;

/// One peer's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PeerStatus {
    /// The peer's name.
    pub(crate) name: String,
    /// Its public key (base64).
    pub(crate) public_key: String,
    /// Where it is, if known.
    pub(crate) endpoint: Option<String>,
    /// "udp" or "tcp", if connected.
    pub(crate) transport: Option<String>,
    /// Its allowed IPs.
    pub(crate) allowed_ips: Vec<String>,
    /// Whether a keypair can send now.
    pub(crate) established: bool,
    /// Seconds since the last completed handshake.
    pub(crate) latest_handshake_seconds_ago: Option<u64>,
    /// The last completed handshake, as Unix time.
    pub(crate) latest_handshake_unix: Option<u64>,
    /// Completed handshakes since start.
    pub(crate) handshakes: u64,
    /// Inner bytes received from the peer (after decompression).
    pub(crate) rx_bytes: u64,
    /// Packets received from the peer.
    pub(crate) rx_packets: u64,
    /// Inner bytes sent to the peer (before compression).
    pub(crate) tx_bytes: u64,
    /// Packets sent to the peer.
    pub(crate) tx_packets: u64,
    /// Payload bytes received as they were on the wire (compressed or not).
    pub(crate) rx_payload_bytes: u64,
    /// Payload bytes sent as they went on the wire (compressed or not).
    pub(crate) tx_payload_bytes: u64,
    /// Whether compression is on for this peer.
    pub(crate) compress: bool,
    /// Wire payload / inner bytes sent (1.0 when nothing compressed).
    pub(crate) tx_compression_ratio: Option<f64>,
    /// Wire payload / inner bytes received.
    pub(crate) rx_compression_ratio: Option<f64>,
    /// This peer's drops by reason (non-zero only).
    pub(crate) drops: BTreeMap<String, u64>,
}

/// The whole tunnel's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Status {
    /// The interface name.
    pub(crate) interface: String,
    /// "tun" or "tap".
    pub(crate) mode: String,
    /// Our public key (base64).
    pub(crate) public_key: String,
    /// What we listen on ("udp [::]:51820", ...).
    pub(crate) listening: Vec<String>,
    /// The peers.
    pub(crate) peers: Vec<PeerStatus>,
    /// Every drop by reason (non-zero only), whoever caused it.
    pub(crate) drops: BTreeMap<String, u64>,
    /// Learned MAC addresses (TAP servers).
    pub(crate) mac_table_entries: usize,
    /// Packets read from each device queue (one entry per queue).
    #[serde(default)]
    pub(crate) queue_packets: Vec<u64>,
    /// Packets received with a partial TCP or UDP checksum (the sender left it for this
    /// side to complete).
    #[serde(default)]
    pub(crate) partial_checksums: u64,
    /// Those of them whose checksum this side completed in software, its device having
    /// no offloads (otherwise its kernel completes them).
    #[serde(default)]
    pub(crate) checksums_completed: u64,
}

fn ratio(wire: u64, inner: u64) -> Option<f64> {
    (inner > 0).then(|| (wire as f64 / inner as f64 * 1000.0).round() / 1000.0)
}

/// Takes a snapshot.
pub(crate) fn snapshot(shared: &Shared) -> Status {
    let now = Instant::now();
    let wall = SystemTime::now();
    let table = shared.peers.load();
    let peers = table
        .peers()
        .map(|p| {
            let t = &p.traffic;
            let ep = p.endpoint();
            let hs = unstamp(shared.epoch, p.status.handshake_at.load(Ordering::Relaxed));
            let ago = hs.map(|h| now.saturating_duration_since(h));
            let (rx, tx) = (
                t.rx_bytes.load(Ordering::Relaxed),
                t.tx_bytes.load(Ordering::Relaxed),
            );
            let (rxp, txp) = (
                t.rx_payload_bytes.load(Ordering::Relaxed),
                t.tx_payload_bytes.load(Ordering::Relaxed),
            );
            PeerStatus {
                name: p.config.name.clone(),
                public_key: p.config.public_key.to_base64(),
                endpoint: ep.as_ref().map(|e| e.addr().to_string()),
                transport: ep.as_ref().map(|e| e.transport().to_string()),
                allowed_ips: p.allowed_ips().iter().map(ToString::to_string).collect(),
                established: p.status.established.load(Ordering::Relaxed),
                latest_handshake_seconds_ago: ago.map(|d| d.as_secs()),
                latest_handshake_unix: ago
                    .and_then(|d| wall.checked_sub(d))
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                handshakes: t.handshakes.load(Ordering::Relaxed),
                rx_bytes: rx,
                rx_packets: t.rx_packets.load(Ordering::Relaxed),
                tx_bytes: tx,
                tx_packets: t.tx_packets.load(Ordering::Relaxed),
                rx_payload_bytes: rxp,
                tx_payload_bytes: txp,
                compress: p.config.compress,
                tx_compression_ratio: ratio(txp, tx),
                rx_compression_ratio: ratio(rxp, rx),
                drops: p
                    .drops
                    .nonzero()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            }
        })
        .collect();
    Status {
        interface: shared.settings.interface.clone(),
        mode: shared.settings.mode.to_string(),
        public_key: shared.settings.identity.public_key().to_base64(),
        listening: shared
            .settings
            .listening
            .iter()
            .map(|(t, a)| format!("{t} {a}"))
            .collect(),
        peers,
        drops: shared
            .drops
            .nonzero()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        mac_table_entries: shared.switch.len(),
        queue_packets: shared
            .queue_packets
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect(),
        partial_checksums: shared.partial_checksums.load(Ordering::Relaxed),
        checksums_completed: shared.checksums_completed.load(Ordering::Relaxed),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0 => "just now".into(),
        1 => "1 second ago".into(),
        s if s < 120 => format!("{s} seconds ago"),
        s if s < 7200 => format!("{} minutes, {} seconds ago", s / 60, s % 60),
        s => format!("{} hours, {} minutes ago", s / 3600, (s % 3600) / 60),
    }
}

fn drops_line(d: &BTreeMap<String, u64>) -> String {
    d.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a status as text, in the manner of `wg show`.
pub(crate) fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "interface: {} ({})", s.interface, s.mode);
    let _ = writeln!(o, "  public key: {}", s.public_key);
    if !s.listening.is_empty() {
        let _ = writeln!(o, "  listening: {}", s.listening.join(", "));
    }
    if s.queue_packets.len() > 1 {
        let counts: Vec<String> = s.queue_packets.iter().map(u64::to_string).collect();
        let _ = writeln!(
            o,
            "  queues: {} (packets read from each: {})",
            s.queue_packets.len(),
            counts.join(", ")
        );
    }
    if s.mode == "tap" && s.mac_table_entries > 0 {
        let _ = writeln!(o, "  learned MAC addresses: {}", s.mac_table_entries);
    }
    if !s.drops.is_empty() {
        let _ = writeln!(o, "  drops: {}", drops_line(&s.drops));
    }
    for p in &s.peers {
        let _ = writeln!(o);
        let _ = writeln!(o, "peer: {}", p.name);
        let _ = writeln!(o, "  public key: {}", p.public_key);
        match (&p.endpoint, &p.transport) {
            (Some(e), Some(t)) => {
                let _ = writeln!(o, "  endpoint: {e} ({t})");
            }
            _ => {
                let _ = writeln!(o, "  endpoint: (none yet)");
            }
        }
        if !p.allowed_ips.is_empty() {
            let _ = writeln!(o, "  allowed ips: {}", p.allowed_ips.join(", "));
        }
        match p.latest_handshake_seconds_ago {
            Some(s) => {
                let _ = writeln!(o, "  latest handshake: {}", ago(s));
            }
            None => {
                let _ = writeln!(o, "  latest handshake: (none)");
            }
        }
        let _ = writeln!(
            o,
            "  transfer: {} received ({} packets), {} sent ({} packets)",
            bytes(p.rx_bytes),
            p.rx_packets,
            bytes(p.tx_bytes),
            p.tx_packets
        );
        if p.compress {
            let r = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                o,
                "  compression: sent {} of the bytes ({} on the wire), received {} ({})",
                r(p.tx_compression_ratio),
                bytes(p.tx_payload_bytes),
                r(p.rx_compression_ratio),
                bytes(p.rx_payload_bytes)
            );
        }
        if !p.drops.is_empty() {
            let _ = writeln!(o, "  drops: {}", drops_line(&p.drops));
        }
    }
    o
}
