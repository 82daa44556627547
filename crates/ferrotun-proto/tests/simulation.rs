//! Deterministic simulation of two peers over a lossy, reordering, duplicating network with
//! a fake clock: tens of thousands of packets across more than ten rekeys, and a total
//! outage longer than REJECT_AFTER_TIME. Every data packet the network delivered must be
//! decrypted exactly once (none lost to a rekey, none twice), and the sessions must
//! recover after the outage.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferrotun_proto::handshake::Phase1;
use ferrotun_proto::session::REJECT_AFTER_TIME;
use ferrotun_proto::{
    Decapsulated, Encapsulated, Identity, Message, PayloadFlags, PrivateKey, SeededEntropy,
    Session, SessionConfig, SessionIndex, Transmit,
};

const MTU: usize = 1420;
const SEND_INTERVAL_MS: u64 = 50;
const LOSS_PERCENT: u64 = 10;
const DUP_PERCENT: u64 = 5;
const MAX_DELAY_MS: u64 = 60;
const QUEUE_LIMIT: usize = 1024;

struct InFlight {
    at_ms: u64,
    seq: u64,
    to_a: bool,
    /// The data packet id, for accounting (None for handshake messages and keepalives).
    id: Option<u64>,
    bytes: Vec<u8>,
}

struct Side {
    id: Arc<Identity>,
    s: Session,
    queue: VecDeque<u64>,
    next_id: u64,
}

struct Sim {
    a: Side,
    b: Side,
    net: Vec<InFlight>,
    seq: u64,
    rng: SeededEntropy,
    net_rng: SeededEntropy,
    t0: Instant,
    wall0: SystemTime,
    outage: (u64, u64),
    delivered: HashMap<u64, u32>,
    decrypted: HashMap<u64, u32>,
    sent_data: u64,
    errors: HashMap<String, u64>,
    handshakes_done: u64,
    keepalive_dups: u64,
}

fn packet(id: u64) -> Vec<u8> {
    // A minimal IPv4 packet carrying the id; lengths vary so padding is exercised.
    let len = 28 + (id % 97) as usize;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[20..28].copy_from_slice(&id.to_le_bytes());
    p
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SeededEntropy::new(seed);
        let ida = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
        let idb = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
        let sa = Session::new(
            ida.clone(),
            idb.public_key(),
            None,
            SessionIndex::new(1).unwrap(),
            SessionConfig::default(),
        )
        .unwrap();
        let sb = Session::new(
            idb.clone(),
            ida.public_key(),
            None,
            SessionIndex::new(2).unwrap(),
            SessionConfig::default(),
        )
        .unwrap();
        Sim {
            a: Side {
                id: ida,
                s: sa,
                queue: VecDeque::new(),
                next_id: 0,
            },
            b: Side {
                id: idb,
                s: sb,
                queue: VecDeque::new(),
                next_id: 1 << 40,
            },
            net: Vec::new(),
            seq: 0,
            rng,
            net_rng: SeededEntropy::new(seed ^ 0x5eed),
            t0: Instant::now(),
            wall0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000),
            outage: (
                1_500_000,
                1_500_000 + REJECT_AFTER_TIME.as_millis() as u64 + 60_000,
            ),
            delivered: HashMap::new(),
            decrypted: HashMap::new(),
            sent_data: 0,
            errors: HashMap::new(),
            handshakes_done: 0,
            keepalive_dups: 0,
        }
    }

    fn side(&mut self, a: bool) -> &mut Side {
        if a { &mut self.a } else { &mut self.b }
    }

    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    /// Puts a datagram from `from_a` on the lossy network.
    fn transmit(&mut self, now_ms: u64, from_a: bool, id: Option<u64>, bytes: Vec<u8>) {
        if id.is_some() {
            self.sent_data += 1;
        }
        if now_ms >= self.outage.0 && now_ms < self.outage.1 {
            return;
        }
        if self.net_rng.below(100) < LOSS_PERCENT {
            return;
        }
        let copies = if self.net_rng.below(100) < DUP_PERCENT {
            2
        } else {
            1
        };
        if copies == 2 && id.is_none() && bytes.first() == Some(&4) {
            self.keepalive_dups += 1;
        }
        for _ in 0..copies {
            let at_ms = now_ms + 1 + self.net_rng.below(MAX_DELAY_MS);
            self.seq += 1;
            self.net.push(InFlight {
                at_ms,
                seq: self.seq,
                to_a: !from_a,
                id,
                bytes: bytes.clone(),
            });
        }
    }

    fn times(&self, ms: u64) -> (Instant, SystemTime) {
        let d = Duration::from_millis(ms);
        (self.t0 + d, self.wall0 + d)
    }

    /// Seals data packet `id` from a side, or queues it.
    fn send_data(&mut self, ms: u64, from_a: bool, id: u64) -> bool {
        let (now, _) = self.times(ms);
        let p = packet(id);
        let mut buf = vec![0u8; 16 + p.len() + 32];
        buf[16..16 + p.len()].copy_from_slice(&p);
        match self
            .side(from_a)
            .s
            .encapsulate(now, PayloadFlags::NONE, p.len(), &mut buf, MTU)
            .unwrap()
        {
            Encapsulated::Send(n) => {
                buf.truncate(n);
                self.transmit(ms, from_a, Some(id), buf);
                true
            }
            Encapsulated::Queue => false,
        }
    }

    fn poll(&mut self, ms: u64, a: bool) {
        let (now, wall) = self.times(ms);
        loop {
            let mut out = [0u8; 256];
            let side = if a { &mut self.a } else { &mut self.b };
            match side
                .s
                .poll_transmit(now, wall, &mut self.rng, &mut out)
                .unwrap()
            {
                None => return,
                Some(Transmit::Initiation(n)) | Some(Transmit::Keepalive(n)) => {
                    self.transmit(ms, a, None, out[..n].to_vec());
                }
                Some(Transmit::FlushQueue) => {
                    while let Some(id) = self.side(a).queue.pop_front() {
                        if !self.send_data(ms, a, id) {
                            self.side(a).queue.push_front(id);
                            break;
                        }
                    }
                }
                Some(Transmit::DropQueue) => self.side(a).queue.clear(),
            }
        }
    }

    fn receive(&mut self, ms: u64, f: InFlight) {
        let (now, _) = self.times(ms);
        let to_a = f.to_a;
        let mut bytes = f.bytes;
        if let Some(id) = f.id {
            *self.delivered.entry(id).or_default() += 1;
        }
        let kind = match Message::classify(&bytes) {
            Ok(m) => m.kind(),
            Err(e) => return self.error(format!("wire: {e}")),
        };
        match kind {
            ferrotun_proto::wire::MessageKind::Initiation => {
                let side = if to_a { &mut self.a } else { &mut self.b };
                let phase1 =
                    side.id
                        .begin_initiation(&bytes, &[1], false, now, &mut self.rng, &mut [0; 64]);
                match phase1 {
                    Ok(Phase1::Pending(p)) => {
                        assert_eq!(p.initiator(), side.s.remote_key());
                        let mut out = [0u8; 92];
                        match side.s.accept_initiation(p, now, &mut self.rng, &mut out) {
                            Ok(n) => self.transmit(ms, to_a, None, out[..n].to_vec()),
                            Err(e) => {
                                let dbg = format!("{e:?}");
                                let name = dbg.split([' ', '{', '(']).next().unwrap_or("");
                                self.error(format!("initiation: {name}"))
                            }
                        }
                    }
                    other => panic!("phase 1 failed: {other:?}"),
                }
            }
            ferrotun_proto::wire::MessageKind::Response => {
                let side = if to_a { &mut self.a } else { &mut self.b };
                let idx = Message::classify(&bytes).unwrap().receiver_index().unwrap();
                assert_eq!(SessionIndex::of_receiver(idx), side.s.index());
                match side
                    .s
                    .on_response(&bytes, &[1], false, now, &mut self.rng, &mut [0; 64])
                {
                    Ok(_) => self.handshakes_done += 1,
                    Err(e) => self.error(format!("response: {e}").chars().take(30).collect()),
                }
            }
            ferrotun_proto::wire::MessageKind::Data => {
                let side = if to_a { &mut self.a } else { &mut self.b };
                match side.s.decapsulate(now, &mut bytes) {
                    Ok(Decapsulated::Data { range, .. }) => {
                        let p = &bytes[range];
                        let id = u64::from_le_bytes(p[20..28].try_into().unwrap());
                        assert_eq!(p, &packet(id)[..]);
                        assert_eq!(Some(id), f.id);
                        *self.decrypted.entry(id).or_default() += 1;
                    }
                    Ok(Decapsulated::Keepalive) => {}
                    Err(e) => {
                        let what = format!("data: {e}");
                        let what: String = what.split(" counter").next().unwrap().into();
                        self.error(what)
                    }
                }
            }
            ferrotun_proto::wire::MessageKind::CookieReply => panic!("no cookies without load"),
        }
    }

    fn run(&mut self, end_ms: u64) {
        let mut ms = 0u64;
        let mut next_send = [0u64, 25u64];
        while ms < end_ms {
            // Deliver everything due, in arrival order (ties in send order).
            let mut due: Vec<InFlight> = Vec::new();
            let mut i = 0;
            while i < self.net.len() {
                if self.net[i].at_ms <= ms {
                    due.push(self.net.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            due.sort_by_key(|f| (f.at_ms, f.seq));
            for f in due {
                let to = f.to_a;
                self.receive(ms, f);
                self.poll(ms, to);
            }
            for (k, a) in [(0usize, true), (1, false)] {
                if ms >= next_send[k] {
                    next_send[k] += SEND_INTERVAL_MS;
                    let side = self.side(a);
                    let id = side.next_id;
                    side.next_id += 1;
                    if !self.send_data(ms, a, id) {
                        let q = &mut self.side(a).queue;
                        if q.len() < QUEUE_LIMIT {
                            q.push_back(id);
                        }
                    }
                }
                self.poll(ms, a);
            }
            // Jump to the next event.
            let (now, _) = self.times(ms);
            let mut next = next_send[0].min(next_send[1]);
            if let Some(f) = self.net.iter().map(|f| f.at_ms).min() {
                next = next.min(f);
            }
            for s in [&self.a.s, &self.b.s] {
                if let Some(t) = s.next_timeout() {
                    let t_ms = t.saturating_duration_since(self.t0).as_millis() as u64;
                    next = next.min(t_ms.max(ms + 1));
                    let _ = now;
                }
            }
            ms = next.max(ms + 1);
        }
    }
}

#[test]
fn lossy_reordering_duplicating_network_across_rekeys_and_an_outage() {
    let mut sim = Sim::new(2026);
    let end = 2_700_000; // 45 minutes
    sim.run(end);

    // Every packet the network delivered at least once was decrypted exactly once.
    let mut lost = Vec::new();
    for id in sim.delivered.keys() {
        match sim.decrypted.get(id) {
            Some(1) => {}
            Some(k) => panic!("packet {id} decrypted {k} times"),
            None => lost.push(*id),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} delivered packets never decrypted, e.g. {:?}; errors {:?}",
        lost.len(),
        &lost[..lost.len().min(10)],
        sim.errors
    );
    for id in sim.decrypted.keys() {
        assert!(sim.delivered.contains_key(id));
    }
    // The only data errors are the network's duplicates being refused as replays.
    let dups: u64 = sim.delivered.values().map(|n| u64::from(n - 1)).sum();
    let replays = sim
        .errors
        .get("data: replayed or too old")
        .copied()
        .unwrap_or(0);
    // (plus duplicated keepalives, which carry no id).
    assert!(
        replays >= dups && replays <= dups + sim.keepalive_dups,
        "replays {replays}, data duplicates {dups}, keepalive duplicates {}; errors {:?}",
        sim.keepalive_dups,
        sim.errors
    );
    for (what, n) in &sim.errors {
        assert!(
            what.starts_with("data: replayed")
                || what.starts_with("initiation: ReplayedInitiation")
                || what.starts_with("response: response to index"),
            "unexpected error {what} ×{n}"
        );
    }

    // Scale: thousands of packets, at least ten rekeys.
    assert!(
        sim.decrypted.len() > 50_000,
        "only {} packets decrypted",
        sim.decrypted.len()
    );
    assert!(
        sim.handshakes_done >= 10,
        "only {} handshakes",
        sim.handshakes_done
    );

    // Recovery after the outage: packets sent from 30 s after it ended on got through
    // (apart from the network's loss).
    let after = (sim.outage.1 + 30_000) / SEND_INTERVAL_MS;
    let late_a: Vec<u64> = (after..after + 1000)
        .filter(|id| sim.delivered.contains_key(id))
        .collect();
    assert!(
        late_a.len() > 800,
        "only {} of 1000 post-outage packets delivered",
        late_a.len()
    );
    assert!(sim.a.s.is_established(sim.t0 + Duration::from_millis(end)));
    assert!(sim.b.s.is_established(sim.t0 + Duration::from_millis(end)));
    eprintln!(
        "simulation: {} data packets sent, {} delivered ({} duplicates), {} decrypted, {} handshakes, errors {:?}",
        sim.sent_data,
        sim.delivered.len(),
        dups,
        sim.decrypted.len(),
        sim.handshakes_done,
        sim.errors
    );
}
