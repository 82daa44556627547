//! The engine: the tokio driver that joins the device, the protocol sessions and the
//! transports (UDP, TCP). This file only wires the parts together; docs/architecture.md
//! walks through them.
//!
//! Tasks:
//! - the **send path** ([`send`]) reads batches of packets from the device, routes them
//!   and hands them to its [`outbox`], which seals and sends;
//! - the **receive path** ([`receive`]) passes each buffer of datagrams (UDP) or frames
//!   (TCP, one task per connection: [`tcp`]) through one pipeline that opens, checks and
//!   delivers them to the device, or switches them on to other peers;
//! - the **control task** ([`control`]) owns every peer's session: handshakes, timers,
//!   keypairs published to the data paths, packets that waited for a handshake;
//! - a client's **connector** ([`client`]) keeps the server reachable.
//!
//! The data paths share the runtime's threads (one on two cores) and no lock; a path whose
//! input stays ready gives its thread up after a turn ([`turn`]).

pub(crate) mod addr;
pub(crate) mod client;
pub(crate) mod conn;
mod control;
pub(crate) mod device;
mod outbox;
pub(crate) mod peer;
mod receive;
mod send;
pub(crate) mod shared;
pub(crate) mod switch;
pub(crate) mod table;
mod tcp;
mod turn;
pub(crate) mod udp;

use std::sync::Arc;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_device::vnet::Offloads;
use ferrotun_proto::{AeadBackend, Identity};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::Transport;

use shared::{Settings, Shared};
use table::Peers;
use udp::UdpIo;

/// Handshake messages waiting for the control task; beyond this they are dropped (a flood
/// must not grow memory) and the responder asks for cookies.
const HANDSHAKE_QUEUE: usize = 256;

/// How the engine is set up.
pub(crate) struct EngineConfig {
    pub(crate) mode: Mode,
    /// A server (several peers) or a client (one, in slot 0).
    pub(crate) server: bool,
    pub(crate) mtu: u32,
    pub(crate) interface: String,
    pub(crate) identity: Arc<Identity>,
    pub(crate) backend: AeadBackend,
    pub(crate) peers: Peers,
    /// The bound UDP sockets (one per device queue, sharing a port), or none.
    pub(crate) udp: Vec<std::net::UdpSocket>,
    /// The bound TCP listener of a server, if any.
    pub(crate) tcp: Option<std::net::TcpListener>,
    /// The device queues (at least one).
    pub(crate) tun: Vec<ferrotun_device::Queue>,
    /// The offloads enabled on the device, if it has a virtio-net header.
    pub(crate) tun_offloads: Option<Offloads>,
    /// Whether UDP GSO/GRO may be used.
    pub(crate) udp_offload: bool,
    pub(crate) client: Option<client::ClientSettings>,
}

/// A running engine.
pub(crate) struct Engine {
    /// What the tasks share (for `show` and reload).
    pub(crate) shared: Arc<Shared>,
    tasks: JoinSet<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
}

impl Engine {
    /// Starts the tasks. Must run inside a tokio runtime.
    pub(crate) fn start(cfg: EngineConfig) -> anyhow::Result<Engine> {
        let mut listening = Vec::new();
        let mut udp = Vec::with_capacity(cfg.udp.len());
        for s in cfg.udp {
            let io = UdpIo::new(s, cfg.udp_offload)?;
            if udp.is_empty() {
                listening.push((Transport::Udp, io.local_addr()?));
                tracing::debug!(
                    gso = io.max_segments(),
                    gro = io.gro_segments(),
                    "UDP socket"
                );
            }
            udp.push(io);
        }
        let tcp = match cfg.tcp {
            Some(l) => {
                l.set_nonblocking(true)?;
                listening.push((Transport::Tcp, l.local_addr()?));
                Some(tokio::net::TcpListener::from_std(l)?)
            }
            None => None,
        };
        anyhow::ensure!(!cfg.tun.is_empty(), "the device has no queue");
        let queues = cfg
            .tun
            .into_iter()
            .map(|q| q.into_async())
            .collect::<Result<Vec<_>, _>>()
            .context("registering the device with the runtime")?;
        let (tx, rx) = mpsc::channel(HANDSHAKE_QUEUE);
        let settings = Settings {
            mode: cfg.mode,
            server: cfg.server,
            mtu: cfg.mtu as usize,
            interface: cfg.interface,
            identity: cfg.identity,
            backend: cfg.backend,
            listening,
        };
        let tun = device::Tun::new(queues, cfg.tun_offloads);
        let shared = Arc::new(Shared::new(settings, cfg.peers, udp, tun, tx));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for i in 0..shared.tun.count() {
            tasks.spawn(send::send_path(shared.clone(), i));
        }
        for i in 0..shared.udp.len() {
            tasks.spawn(receive::udp_path(shared.clone(), i));
        }
        if let Some(l) = tcp {
            tasks.spawn(tcp::accept_loop(shared.clone(), l));
        }
        tasks.spawn(control::run(shared.clone(), rx, stopped));
        if let Some(c) = cfg.client {
            tasks.spawn(client::run(shared.clone(), c));
        }
        Ok(Engine {
            shared,
            tasks,
            stop,
        })
    }

    /// Waits until a task fails (the engine cannot go on) and returns its error.
    pub(crate) async fn failed(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(()))) => anyhow::anyhow!("a task ended"),
            Some(Err(e)) => anyhow::anyhow!("a task panicked: {e}"),
            None => anyhow::anyhow!("no tasks"),
        }
    }

    /// Stops every task and waits for them, releasing the device queues and the sockets.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        for p in self.shared.peers.load().peers() {
            p.disconnect();
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}
