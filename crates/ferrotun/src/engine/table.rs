//! The peer table: every peer by slot, by static key and by inner address, replaced whole
//! on reload.
//!
//! A peer's slot is its place in the table and the session index its receiver indexes
//! carry (`slot << 8 | counter`, see `ferrotun_proto::SessionIndex`), so a data message
//! finds its peer with a shift and a vector index. Slots are never reused while the
//! process runs: a stale receiver index can never name a newer peer. The data paths read
//! the table through an `ArcSwap` (one load per batch); a reload builds a new table and
//! swaps it in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use arc_swap::{ArcSwap, Guard};
use ferrotun_device::Mode;
use ferrotun_proto::{
    AeadBackend, HandshakeFlags, Identity, PublicKey, Session, SessionConfig, SessionIndex,
};
use ipnet::IpNet;

use crate::config::PeerConfig;
use crate::routing::AllowedIps;

use super::peer::Peer;

/// The engine's keepalive timeout: received data unanswered this long is answered with a
/// keepalive. WireGuard uses 10 s and declares a peer dead after 10 + 5 s of unanswered
/// data; a tunnel that must heal within seconds of a server restart uses 2 s (a 32-byte
/// keepalive every 2 s during one-way traffic), so a dead path is noticed after 7 s.
pub(crate) const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One generation of the peers.
pub(crate) struct PeerTable {
    /// Peers by slot.
    slots: Vec<Option<Arc<Peer>>>,
    /// Slot by static public key (a handshake initiation names its sender by key).
    by_key: HashMap<PublicKey, u32>,
    /// Slot by inner address, for cryptokey routing (TUN mode).
    pub(crate) routes: AllowedIps<u32>,
}

impl PeerTable {
    /// Assembles a table from peers (each in its own slot).
    pub(crate) fn new(peers: Vec<Arc<Peer>>) -> PeerTable {
        let len = peers.iter().map(|p| p.slot as usize + 1).max().unwrap_or(0);
        let mut table = PeerTable {
            slots: vec![None; len],
            by_key: HashMap::with_capacity(peers.len()),
            routes: AllowedIps::new(),
        };
        for p in peers {
            for net in p.allowed_ips().iter() {
                table.routes.insert(*net, p.slot);
            }
            table.by_key.insert(p.config.public_key, p.slot);
            let slot = p.slot as usize;
            table.slots[slot] = Some(p);
        }
        table
    }

    /// The peer in `slot`.
    pub(crate) fn get(&self, slot: u32) -> Option<&Arc<Peer>> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The peer whose session issued the local index `receiver`.
    pub(crate) fn by_receiver(&self, receiver: u32) -> Option<&Arc<Peer>> {
        self.get(SessionIndex::of_receiver(receiver).slot())
    }

    /// The peer with static key `key`.
    pub(crate) fn by_key(&self, key: &PublicKey) -> Option<&Arc<Peer>> {
        self.by_key.get(key).and_then(|slot| self.get(*slot))
    }

    /// Every peer.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.slots.iter().flatten()
    }

    /// How many slots the table spans (the next free slot when it was built from configs).
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// All prefixes of all peers (the interface's routes).
    pub(crate) fn all_routes(&self) -> Vec<IpNet> {
        self.peers()
            .flat_map(|p| p.allowed_ips().iter().copied().collect::<Vec<_>>())
            .collect()
    }
}

/// The peers as the engine holds them: the current table, and the slot the next new peer
/// gets.
pub(crate) struct Peers {
    table: ArcSwap<PeerTable>,
    next_slot: AtomicU32,
}

/// What a new peer's session is made with: this side's key, its mode (the handshake's
/// capability flags) and the AEAD backend.
#[derive(Clone, Copy)]
pub(crate) struct PeerMaker<'a> {
    pub(crate) identity: &'a Arc<Identity>,
    pub(crate) mode: Mode,
    pub(crate) backend: AeadBackend,
}

impl PeerMaker<'_> {
    /// Makes the peer for `pc` in `slot`, with a fresh session.
    pub(crate) fn make(&self, slot: u32, pc: &PeerConfig) -> anyhow::Result<Arc<Peer>> {
        make_peer(self.identity, self.mode, slot, pc, self.backend)
    }
}

impl Peers {
    /// The peers of `configs`, in slots 0, 1, 2, ...
    pub(crate) fn new(maker: PeerMaker<'_>, configs: &[PeerConfig]) -> anyhow::Result<Peers> {
        let peers = configs
            .iter()
            .enumerate()
            .map(|(i, pc)| maker.make(i as u32, pc))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let table = PeerTable::new(peers);
        Ok(Peers {
            next_slot: AtomicU32::new(table.len() as u32),
            table: ArcSwap::from_pointee(table),
        })
    }

    /// The current table (a cheap load; hold it for a batch, not longer).
    pub(crate) fn load(&self) -> Guard<Arc<PeerTable>> {
        self.table.load()
    }

    /// The current table, owned.
    pub(crate) fn load_full(&self) -> Arc<PeerTable> {
        self.table.load_full()
    }

    /// Replaces the peers: peers whose key and settings are unchanged keep their slot,
    /// session and traffic (their allowed IPs may change); changed peers start a new
    /// session in a new slot; removed peers are cut off. Safe while the data paths run
    /// (the table is swapped whole). It takes a while for many new peers (a key agreement
    /// each), so the runner calls it off the runtime's threads.
    pub(crate) fn reload(
        &self,
        maker: PeerMaker<'_>,
        configs: &[PeerConfig],
    ) -> anyhow::Result<ReloadSummary> {
        let old = self.table.load_full();
        let mut summary = ReloadSummary::default();
        let mut next: Vec<Arc<Peer>> = Vec::with_capacity(configs.len());
        for pc in configs {
            match old.by_key(&pc.public_key) {
                Some(p) if p.config.same_session(pc) => {
                    if p.allowed_ips().as_slice() != pc.allowed_ips.as_slice()
                        || p.name() != pc.name
                    {
                        summary.changed.push(pc.name.clone());
                    }
                    p.set_allowed_ips(pc.allowed_ips.clone());
                    next.push(p.clone());
                }
                Some(p) => {
                    summary.changed.push(pc.name.clone());
                    p.disconnect();
                    next.push(maker.make(self.next_slot.fetch_add(1, Ordering::Relaxed), pc)?);
                }
                None => {
                    summary.added.push(pc.name.clone());
                    next.push(maker.make(self.next_slot.fetch_add(1, Ordering::Relaxed), pc)?);
                }
            }
        }
        let kept: HashSet<u32> = next.iter().map(|p| p.slot).collect();
        for p in old.peers().filter(|p| !kept.contains(&p.slot)) {
            if !summary.changed.contains(&p.config.name) {
                summary.removed.push(p.config.name.clone());
            }
            p.disconnect();
        }
        self.table.store(Arc::new(PeerTable::new(next)));
        Ok(summary)
    }
}

/// What a reload changed, by peer name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReloadSummary {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
}

/// The capability flags a peer config asks for in the handshake.
fn local_flags(mode: Mode, peer: &PeerConfig) -> HandshakeFlags {
    let mut f = HandshakeFlags::NONE;
    if peer.compress {
        f = f.union(HandshakeFlags::COMPRESSION);
    }
    if mode == Mode::Tap {
        f = f.union(HandshakeFlags::ETHERNET);
    }
    f
}

/// Why the peer's capability flags do not match ours, for an operator (`we` and `they`
/// name the two sides in the message).
pub(crate) fn flags_mismatch(
    ours: HandshakeFlags,
    theirs: HandshakeFlags,
    we: &str,
    they: &str,
) -> Option<String> {
    let mut why = Vec::new();
    let c = HandshakeFlags::COMPRESSION;
    if ours.contains(c) != theirs.contains(c) {
        why.push(format!(
            "{we} has compress = {}, {they} has compress = {}",
            ours.contains(c),
            theirs.contains(c)
        ));
    }
    let e = HandshakeFlags::ETHERNET;
    if ours.contains(e) != theirs.contains(e) {
        let m = |f: HandshakeFlags| if f.contains(e) { "tap" } else { "tun" };
        why.push(format!(
            "{we} has mode = \"{}\", {they} has mode = \"{}\"",
            m(ours),
            m(theirs)
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Makes the peer for `pc` in `slot`, with a fresh session.
pub(crate) fn make_peer(
    identity: &Arc<Identity>,
    mode: Mode,
    slot: u32,
    pc: &PeerConfig,
    backend: AeadBackend,
) -> anyhow::Result<Arc<Peer>> {
    let index = SessionIndex::new(slot).context("too many peers")?;
    let flags = local_flags(mode, pc);
    let config = SessionConfig {
        persistent_keepalive: pc.keepalive,
        keepalive_timeout: KEEPALIVE_TIMEOUT,
        local_flags: flags,
        backend,
        ..SessionConfig::default()
    };
    let session = Session::new(
        identity.clone(),
        pc.public_key,
        pc.preshared_key.clone(),
        index,
        config,
    )
    .with_context(|| format!("peer {}", pc.name))?;
    Ok(Arc::new(Peer::new(slot, pc.clone(), flags, session)))
}
