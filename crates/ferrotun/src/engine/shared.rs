//! What the engine's tasks share: the instance's settings, the peers, the MAC table, the
//! device and sockets, the handshake queue and the counters.
//!
//! Nothing here is locked on the data path: the peer table and the MAC table are read
//! through `ArcSwap`, counters are relaxed atomics, the device queues and sockets are used
//! through `&self`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use ferrotun_device::Mode;
use ferrotun_device::vnet::{self, Layer};
use ferrotun_proto::wire::{DATA_HEADER_LEN, INITIATION_LEN};
use ferrotun_proto::{AeadBackend, HandshakeMessage, Identity};
use tokio::sync::{Notify, mpsc};

use crate::config::{PeerConfig, Transport};
use crate::stats::{DropReason, Drops};

use super::addr::PeerAddr;
use super::conn::Unauthenticated;
use super::device::Tun;
use super::peer::{Peer, stamp};
use super::switch::Switch;
use super::table::{PeerMaker, Peers, ReloadSummary};
use super::udp::UdpIo;

/// Room after a payload for padding (to 16) and the tag.
pub(crate) const TRAILER: usize = 16 + 16;
/// What a TAP frame may add to the MTU: an Ethernet header with up to eight VLAN tags
/// (the kernel's VLAN_MAX_DEPTH; the offload reader accepts as many).
pub(crate) const ETHERNET_OVERHEAD: usize = vnet::MAX_ETHERNET_HEADER;

/// A handshake message on its way from a receive path to the control task, with where it
/// came from (and where an answer goes).
pub(crate) struct Inbound {
    pub(crate) message: HandshakeMessage,
    pub(crate) src: PeerAddr,
}

/// See the module docs.
pub(crate) struct Shared {
    /// What this instance is.
    pub(crate) settings: Settings,
    /// The engine's start: event times are kept as nanoseconds since it ([`stamp`]).
    pub(crate) epoch: Instant,

    pub(crate) peers: Peers,
    /// The MAC table of a TAP server.
    pub(crate) switch: Switch,
    /// TCP connections waiting for a handshake.
    pub(crate) unauthenticated: Unauthenticated,

    /// The UDP sockets (one per device queue, all on one port), or none.
    pub(crate) udp: Vec<UdpIo>,
    pub(crate) tun: Tun,
    /// Handshake messages for the control task (bounded: a flood must not grow memory).
    handshakes: mpsc::Sender<Inbound>,
    /// Wakes the control task.
    pub(crate) wake: Notify,

    pub(crate) drops: Drops,
    /// Packets read from each device queue.
    pub(crate) queue_packets: Box<[AtomicU64]>,
    /// Packets received with a partial checksum
    /// ([`PayloadFlags::PARTIAL_CHECKSUM`](ferrotun_proto::PayloadFlags::PARTIAL_CHECKSUM)).
    pub(crate) partial_checksums: AtomicU64,
    /// Partial checksums this side completed itself (its device has no virtio-net header,
    /// `offload = false`, to hand them to the kernel with).
    pub(crate) checksums_completed: AtomicU64,
}

/// What an instance is: fixed for its life.
pub(crate) struct Settings {
    /// TUN or TAP.
    pub(crate) mode: Mode,
    /// A server (several peers; a TAP server switches between them) or a client.
    pub(crate) server: bool,
    pub(crate) mtu: usize,
    pub(crate) interface: String,
    pub(crate) identity: Arc<Identity>,
    /// The AEAD backend of new sessions.
    pub(crate) backend: AeadBackend,
    /// Addresses the sockets listen on, for `show`.
    pub(crate) listening: Vec<(Transport, SocketAddr)>,
}

impl Settings {
    /// How this instance makes a peer.
    pub(crate) fn peer_maker(&self) -> PeerMaker<'_> {
        PeerMaker {
            identity: &self.identity,
            mode: self.mode,
            backend: self.backend,
        }
    }
}

impl Shared {
    pub(crate) fn new(
        settings: Settings,
        peers: Peers,
        udp: Vec<UdpIo>,
        tun: Tun,
        handshakes: mpsc::Sender<Inbound>,
    ) -> Shared {
        let queues = tun.count();
        Shared {
            settings,
            epoch: Instant::now(),
            peers,
            switch: Switch::default(),
            unauthenticated: Unauthenticated::default(),
            udp,
            tun,
            handshakes,
            wake: Notify::new(),
            drops: Drops::default(),
            queue_packets: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            partial_checksums: AtomicU64::new(0),
            checksums_completed: AtomicU64::new(0),
        }
    }

    /// `now` as a stamp: nanoseconds since the epoch, plus one (0 = never).
    pub(crate) fn stamp(&self, now: Instant) -> u64 {
        stamp(self.epoch, now)
    }

    /// Counts a drop and logs it at a limited rate.
    pub(crate) fn drop_packet(&self, reason: DropReason, detail: impl FnOnce() -> String) {
        if let Some(suppressed) = self.drops.count_and_should_log(reason) {
            tracing::warn!(reason = reason.name(), suppressed, "dropped: {}", detail());
        }
    }

    /// Counts a drop that concerns `peer` (globally and for the peer) and logs it at a
    /// limited rate.
    pub(crate) fn drop_for(
        &self,
        peer: &Peer,
        reason: DropReason,
        detail: impl FnOnce() -> String,
    ) {
        peer.drops.count(reason);
        self.drop_packet(reason, detail);
    }

    /// Counts a drop that concerns `peer` without logging it.
    pub(crate) fn count_for(&self, peer: &Peer, reason: DropReason) {
        peer.drops.count(reason);
        self.drops.count(reason);
    }

    /// The longest message on the wire: a full frame sealed, or a handshake initiation.
    pub(crate) fn max_message(&self) -> usize {
        (DATA_HEADER_LEN + self.frame_len() + TRAILER).max(INITIATION_LEN)
    }

    /// The longest packet the device hands us: the MTU, plus the Ethernet header in TAP
    /// mode.
    pub(crate) fn frame_len(&self) -> usize {
        self.settings.mtu
            + match self.settings.mode {
                Mode::Tap => ETHERNET_OVERHEAD,
                Mode::Tun => 0,
            }
    }

    /// Room for a decompressed payload.
    pub(crate) fn plain_len(&self) -> usize {
        self.frame_len() + 64
    }

    /// The offload reader of a send path, if the device has a virtio-net header.
    pub(crate) fn device_reader(&self) -> Option<vnet::Reader> {
        let layer = Layer::from(self.settings.mode);
        // In TUN mode the packets cut from super-segments keep partial checksums, which
        // the receiving side completes (or has its kernel complete): the sum over every
        // byte was about 5 % of the sending process's perf samples. TAP frames may be
        // switched on to other peers, so they travel with full checksums.
        self.tun.offloads().map(|_| {
            vnet::Reader::with_layer(layer).leave_checksums_partial(self.settings.mode == Mode::Tun)
        })
    }

    /// The offload writer of a receive path, if the device has a virtio-net header. What
    /// it writes was decrypted, so it merges without verifying checksums (the AEAD tag
    /// already proved the packets intact).
    pub(crate) fn device_writer(&self) -> Option<vnet::Writer> {
        let layer = Layer::from(self.settings.mode);
        self.tun
            .offloads()
            .map(|o| vnet::Writer::with_layer(o, layer).trust_checksums(true))
    }

    /// The UDP socket task `i` uses, if there are any.
    pub(crate) fn udp(&self, i: usize) -> Option<&UdpIo> {
        match self.udp.len() {
            0 => None,
            n => Some(&self.udp[i % n]),
        }
    }

    /// Sends one message (a handshake message or a keepalive) to a peer address.
    pub(crate) async fn transmit(&self, bytes: &[u8], to: &PeerAddr) {
        match to {
            PeerAddr::Udp(addr) => {
                let Some(sock) = self.udp(0) else {
                    self.drops.count(DropReason::SendFailed);
                    return;
                };
                if let Err(e) = sock.send(*addr, bytes).await {
                    self.drop_packet(DropReason::SendFailed, || format!("sending to {addr}: {e}"));
                }
            }
            PeerAddr::Tcp(conn) => self.send_frame(conn, bytes),
        }
    }

    /// Queues one message on a TCP connection; counts it if the connection refuses it.
    pub(crate) fn send_frame(&self, conn: &super::conn::TcpConn, bytes: &[u8]) {
        if !conn.send_frame(bytes) {
            self.drop_packet(DropReason::QueueFull, || {
                format!("TCP connection to {} is closed or backed up", conn.remote)
            });
        }
    }

    /// Hands a handshake message to the control task; false if its queue is full.
    pub(crate) fn to_control(&self, msg: Inbound) -> bool {
        if self.handshakes.try_send(msg).is_err() {
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// Replaces the peers (see [`Peers::reload`]) and lets the control task look at the
    /// new ones.
    pub(crate) fn reload_peers(&self, configs: &[PeerConfig]) -> anyhow::Result<ReloadSummary> {
        let summary = self.peers.reload(self.settings.peer_maker(), configs)?;
        self.wake.notify_one();
        Ok(summary)
    }
}
