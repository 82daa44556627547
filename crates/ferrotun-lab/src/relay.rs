//! A seeded UDP impairment relay: loss, duplication, reordering and delay on command.
//!
//! The kernel here has no `netem`, so faults other than plain loss come from this relay
//! placed between a client and a server. It listens on one address, forwards each
//! datagram to the upstream address from a socket of its own per client address (so the
//! upstream's replies find their way back to the right client, and several clients work),
//! and applies an [`Impairment`] per [`Direction`].
//!
//! Decisions are reproducible: each direction has its own [`SeededRng`] and every datagram
//! draws exactly four numbers (loss, duplicate, reorder, jitter) whatever the outcome, so
//! for a given seed the n-th datagram of a direction always meets the same fate. What is
//! not fixed by the seed: how datagrams from several clients interleave, and when a
//! held-back datagram times out ([`REORDER_MAX_HOLD`]) because nothing followed it.
//!
//! The relay is one thread around `poll(2)`; it is a test tool, so it allocates per
//! datagram and logs nothing per packet. It runs inside a namespace for Rust tests
//! ([`Relay::start`]) and as the `ferrotun-relay` binary for people and scripts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::rng::SeededRng;
use crate::traffic::enlarge_receive_buffer;

/// Longest a held-back (reordered) datagram waits for a later one before it is sent anyway.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(100);

/// Which way a datagram travels through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client (a sender to the listen address) to the upstream.
    ToUpstream,
    /// From the upstream back to a client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// What the relay does to the datagrams of one direction. Probabilities are in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a (not dropped) datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a (not dropped) datagram is held back and sent after the next
    /// `reorder_gap` datagrams of its direction.
    pub reorder: f64,
    /// How many later datagrams overtake a held-back one (at least 1).
    pub reorder_gap: u32,
    /// Fixed delay added to every forwarded datagram.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter)` per datagram (reorders by itself
    /// when larger than the gap between datagrams).
    pub jitter: Duration,
}

impl Default for Impairment {
    fn default() -> Impairment {
        Impairment::NONE
    }
}

impl Impairment {
    /// Forward everything at once, unchanged.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_gap: 1,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// Only loss, with probability `p`.
    pub fn loss(p: f64) -> Impairment {
        Impairment {
            loss: p,
            ..Impairment::NONE
        }
    }

    /// Checks that the probabilities are in `[0, 1]` and the gap is at least 1.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(LabError::invalid(
                    "impairment",
                    format!("{name}={p} is outside 0..=1"),
                ));
            }
        }
        if self.reorder_gap == 0 {
            return Err(LabError::invalid(
                "impairment",
                "reorder_gap must be at least 1",
            ));
        }
        Ok(())
    }

    /// Applies `key=value` settings separated by spaces, as the relay binary reads them:
    /// `loss=0.1 duplicate=5% reorder=0.05 reorder_gap=2 delay=20ms jitter=5ms`.
    /// Probabilities are fractions or percentages; durations take `us`, `ms` or `s`
    /// (a bare number is milliseconds).
    pub fn apply(&mut self, settings: &str) -> Result<()> {
        let mut next = *self;
        for setting in settings.split_whitespace() {
            let (key, value) = setting.split_once('=').ok_or_else(|| {
                LabError::invalid("setting", format!("{setting:?} is not key=value"))
            })?;
            match key.replace('-', "_").as_str() {
                "loss" => next.loss = parse_probability(value)?,
                "duplicate" | "dup" => next.duplicate = parse_probability(value)?,
                "reorder" => next.reorder = parse_probability(value)?,
                "reorder_gap" | "gap" => {
                    next.reorder_gap = value
                        .parse()
                        .map_err(|_| LabError::invalid("reorder_gap", value.to_owned()))?
                }
                "delay" => next.delay = parse_duration(value)?,
                "jitter" => next.jitter = parse_duration(value)?,
                other => {
                    return Err(LabError::invalid(
                        "setting",
                        format!(
                            "unknown key {other:?} (loss, duplicate, reorder, reorder_gap, delay, jitter)"
                        ),
                    ));
                }
            }
        }
        next.validate()?;
        *self = next;
        Ok(())
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={} duplicate={} reorder={} reorder_gap={} delay={}ms jitter={}ms",
            self.loss,
            self.duplicate,
            self.reorder,
            self.reorder_gap,
            self.delay.as_secs_f64() * 1000.0,
            self.jitter.as_secs_f64() * 1000.0
        )
    }
}

/// Parses `0.1` or `10%` into a probability.
pub fn parse_probability(s: &str) -> Result<f64> {
    let bad = || LabError::invalid("probability", format!("{s:?} (use 0.1 or 10%)"));
    let p = match s.strip_suffix('%') {
        Some(pct) => pct.parse::<f64>().map_err(|_| bad())? / 100.0,
        None => s.parse::<f64>().map_err(|_| bad())?,
    };
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(bad())
    }
}

/// Parses `20ms`, `1.5s`, `500us` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || LabError::invalid("duration", format!("{s:?} (use 20ms, 1s, 500us)"));
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1e-3)
    };
    let v: f64 = number.parse().map_err(|_| bad())?;
    if !(0.0..=3600.0).contains(&(v * scale)) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// What the relay did in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams that arrived.
    pub received: u64,
    /// Datagrams sent on (duplicate copies counted separately).
    pub forwarded: u64,
    /// Datagrams dropped on purpose.
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams held back behind later ones.
    pub reordered: u64,
    /// Datagrams sent late (delay or jitter above zero).
    pub delayed: u64,
    /// Sends that failed (e.g. the upstream port was closed).
    pub send_errors: u64,
    /// Datagrams held back or delayed and not sent yet (a snapshot, not a total).
    pub pending: u64,
}

impl fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} forwarded={} dropped={} duplicated={} reordered={} delayed={} send_errors={} pending={}",
            self.received,
            self.forwarded,
            self.dropped,
            self.duplicated,
            self.reordered,
            self.delayed,
            self.send_errors,
            self.pending
        )
    }
}

/// Counters of a [`Relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Client to upstream.
    pub to_upstream: DirectionStats,
    /// Upstream to clients.
    pub to_client: DirectionStats,
    /// Distinct client addresses seen.
    pub clients: usize,
}

impl RelayStats {
    /// The counters of one direction.
    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }

    fn direction_mut(&mut self, direction: Direction) -> &mut DirectionStats {
        match direction {
            Direction::ToUpstream => &mut self.to_upstream,
            Direction::ToClient => &mut self.to_client,
        }
    }
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "to_upstream {}\nto_client {}\nclients {}",
            self.to_upstream, self.to_client, self.clients
        )
    }
}

#[derive(Debug)]
struct Shared {
    impairment: Mutex<[Impairment; 2]>,
    stats: Mutex<RelayStats>,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running relay; stops (discarding datagrams it still holds) when dropped.
///
/// ```no_run
/// use ferrotun_lab::{Impairment, Lab, Relay};
/// # fn main() -> ferrotun_lab::Result<()> {
/// let lab = Lab::two_hosts()?;
/// let server = "198.18.0.2:51820".parse().unwrap();
/// let relay = Relay::start(lab.b().ns(), "198.18.0.2:51821".parse().unwrap(), server, 7)?;
/// relay.set(Impairment { loss: 0.05, reorder: 0.02, ..Impairment::NONE })?;
/// // point the client at relay.local_addr() ...
/// println!("{}", relay.stats());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    local: SocketAddr,
    upstream: SocketAddr,
    wake: UnixDatagram,
    thread: Option<RelayThread>,
}

impl Relay {
    /// Starts a relay inside `ns` that listens on `listen` (port 0 picks one) and forwards
    /// to `upstream`, with no impairment yet and decisions seeded by `seed`.
    pub fn start(ns: &Netns, listen: SocketAddr, upstream: SocketAddr, seed: u64) -> Result<Relay> {
        let (mut relay, engine) = prepare(ns.udp_bind(listen)?, upstream, seed)?;
        relay.thread = Some(RelayThread::Ns(
            ns.spawn_thread(move || engine.run_to_end())?,
        ));
        Ok(relay)
    }

    /// Starts a relay in the calling thread's namespace (what the `ferrotun-relay` binary
    /// does).
    pub fn start_here(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> Result<Relay> {
        let socket =
            UdpSocket::bind(listen).map_err(LabError::io(format!("binding UDP {listen}")))?;
        let (mut relay, engine) = prepare(socket, upstream, seed)?;
        let thread = thread::Builder::new()
            .name("relay".into())
            .spawn(move || engine.run_to_end())
            .map_err(LabError::io("starting the relay thread"))?;
        relay.thread = Some(RelayThread::Plain(thread));
        Ok(relay)
    }

    /// The address the relay listens on; point clients here.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address the relay forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Sets the impairment of both directions, effective from the next datagram.
    pub fn set(&self, impairment: Impairment) -> Result<()> {
        impairment.validate()?;
        *lock(&self.shared.impairment) = [impairment; 2];
        Ok(())
    }

    /// Sets the impairment of one direction.
    pub fn set_direction(&self, direction: Direction, impairment: Impairment) -> Result<()> {
        impairment.validate()?;
        lock(&self.shared.impairment)[direction.index()] = impairment;
        Ok(())
    }

    /// The impairment in force for `direction`.
    pub fn impairment(&self, direction: Direction) -> Impairment {
        lock(&self.shared.impairment)[direction.index()]
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        *lock(&self.shared.stats)
    }

    /// The error that stopped the relay's thread, if it stopped on its own.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    /// Stops the relay and returns its final counters, or the error that stopped it early.
    pub fn stop(mut self) -> Result<RelayStats> {
        self.halt();
        match self.failure() {
            Some(failure) => Err(LabError::io("running the relay")(io::Error::other(failure))),
            None => Ok(self.stats()),
        }
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // A full wake-up socket already holds a wake-up; the flag does the rest.
        let _ = self.wake.send(&[1]);
        let panicked = match self.thread.take() {
            Some(RelayThread::Ns(t)) => t.join().is_err(),
            Some(RelayThread::Plain(t)) => t.join().is_err(),
            None => false,
        };
        if panicked {
            *lock(&self.shared.failure) = Some("the relay thread panicked".into());
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(Debug)]
enum RelayThread {
    Ns(crate::netns::NsThread<()>),
    Plain(thread::JoinHandle<()>),
}

/// Sets up the sockets on the caller's thread, so that errors reach the caller, and
/// returns the handle and the engine its thread will run.
fn prepare(listen: UdpSocket, upstream: SocketAddr, seed: u64) -> Result<(Relay, Engine)> {
    let local = listen
        .local_addr()
        .map_err(LabError::io("reading the relay's address"))?;
    listen
        .set_nonblocking(true)
        .map_err(LabError::io("making the relay socket non-blocking"))?;
    enlarge_receive_buffer(&listen)?;
    let (wake_tx, wake_rx) =
        UnixDatagram::pair().map_err(LabError::io("creating the relay's wake-up pair"))?;
    for socket in [&wake_tx, &wake_rx] {
        socket
            .set_nonblocking(true)
            .map_err(LabError::io("making the wake-up socket non-blocking"))?;
    }
    let shared = Arc::new(Shared {
        impairment: Mutex::new([Impairment::NONE; 2]),
        stats: Mutex::new(RelayStats::default()),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
    });
    let engine = Engine::new(listen, wake_rx, upstream, seed, Arc::clone(&shared));
    let relay = Relay {
        shared,
        local,
        upstream,
        wake: wake_tx,
        thread: None,
    };
    Ok((relay, engine))
}

struct Client {
    addr: SocketAddr,
    socket: UdpSocket,
}

/// A datagram on its way out.
struct Outgoing {
    direction: Direction,
    client: usize,
    data: Vec<u8>,
    copies: u8,
}

struct Held {
    remaining: u32,
    deadline: Instant,
    delay: Duration,
    out: Outgoing,
}

struct Scheduled {
    at: Instant,
    order: u64,
    out: Outgoing,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct Engine {
    listen: UdpSocket,
    wake: UnixDatagram,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    rngs: [SeededRng; 2],
    held: [VecDeque<Held>; 2],
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    /// Counts not yet published to `shared.stats`; see [`Engine::publish`].
    tally: [DirectionStats; 2],
}

/// Datagrams read from one socket before the others get a turn.
const READ_BURST: usize = 64;

impl Engine {
    fn new(
        listen: UdpSocket,
        wake: UnixDatagram,
        upstream: SocketAddr,
        seed: u64,
        shared: Arc<Shared>,
    ) -> Engine {
        Engine {
            listen,
            wake,
            upstream,
            shared,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            // Distinct streams per direction: seeds 2s and 2s+1.
            rngs: [
                SeededRng::new(seed.wrapping_mul(2)),
                SeededRng::new(seed.wrapping_mul(2).wrapping_add(1)),
            ],
            held: [VecDeque::new(), VecDeque::new()],
            scheduled: BinaryHeap::new(),
            order: 0,
            tally: [DirectionStats::default(); 2],
        }
    }

    /// Runs until stopped; an error that ends it early is kept for [`Relay::stop`].
    fn run_to_end(mut self) {
        if let Err(e) = self.run() {
            *lock(&self.shared.failure) = Some(e.to_string());
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 65536];
        while !self.shared.stop.load(Ordering::Relaxed) {
            let timeout = self.next_timer().map_or(Duration::from_millis(200), |at| {
                at.saturating_duration_since(Instant::now())
            });
            let ready = self.poll(timeout)?;
            if ready.first() == Some(&true) {
                let mut sink = [0u8; 16];
                while self.wake.recv(&mut sink).is_ok() {}
            }
            if ready.get(1) == Some(&true) {
                for _ in 0..READ_BURST {
                    match self.listen.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let client = self.client_for(from)?;
                            self.process(Direction::ToUpstream, client, &buf[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if transient(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            for client in 0..self.clients.len() {
                if ready.get(2 + client) != Some(&true) {
                    continue;
                }
                for _ in 0..READ_BURST {
                    match self.clients[client].socket.recv(&mut buf) {
                        Ok(n) => self.process(Direction::ToClient, client, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if transient(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            self.release_due();
        }
        Ok(())
    }

    /// Polls the wake socket, the listen socket and every client socket; returns which are
    /// readable, in that order.
    fn poll(&self, timeout: Duration) -> io::Result<Vec<bool>> {
        let mut fds: Vec<libc::pollfd> = [self.wake.as_raw_fd(), self.listen.as_raw_fd()]
            .into_iter()
            .chain(self.clients.iter().map(|c| c.socket.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Round up so a timer due in 0.4 ms does not become a busy loop of 0 ms polls.
        let ms = timeout.as_micros().div_ceil(1000);
        let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        let nfds = libc::nfds_t::try_from(fds.len())
            .map_err(|_| io::Error::other("too many relay sockets"))?;
        // SAFETY: fds points to fds.len() valid pollfd structs for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(vec![false; fds.len()]);
            }
            return Err(e);
        }
        Ok(fds
            .iter()
            .map(|p| p.revents & (libc::POLLIN | libc::POLLERR) != 0)
            .collect())
    }

    fn client_for(&mut self, addr: SocketAddr) -> io::Result<usize> {
        if let Some(&i) = self.by_addr.get(&addr) {
            return Ok(i);
        }
        let any: IpAddr = match self.upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.connect(self.upstream)?;
        socket.set_nonblocking(true)?;
        // Best effort: without it bursts may overflow, which the counters would show as
        // a gap between forwarded and what the client received.
        let _ = enlarge_receive_buffer(&socket);
        self.clients.push(Client { addr, socket });
        let i = self.clients.len() - 1;
        self.by_addr.insert(addr, i);
        lock(&self.shared.stats).clients = self.clients.len();
        Ok(i)
    }

    fn process(&mut self, direction: Direction, client: usize, data: &[u8]) {
        let d = direction.index();
        let imp = lock(&self.shared.impairment)[d];
        let rng = &mut self.rngs[d];
        // Always four draws per datagram, so the n-th datagram's fate depends only on
        // the seed and n, not on earlier outcomes or settings.
        let (r_loss, r_dup, r_reorder, r_jitter) = (
            rng.next_f64(),
            rng.next_f64(),
            rng.next_f64(),
            rng.next_f64(),
        );
        let now = Instant::now();
        let t = &mut self.tally[d];
        t.received += 1;
        if r_loss < imp.loss {
            t.dropped += 1;
            self.publish();
            return;
        }
        let copies = if r_dup < imp.duplicate {
            t.duplicated += 1;
            2
        } else {
            1
        };
        let delay = imp.delay + imp.jitter.mul_f64(r_jitter);
        if !delay.is_zero() {
            t.delayed += 1;
        }
        let out = Outgoing {
            direction,
            client,
            data: data.to_vec(),
            copies,
        };
        if r_reorder < imp.reorder {
            t.reordered += 1;
            t.pending += 1;
            self.held[d].push_back(Held {
                remaining: imp.reorder_gap.max(1),
                deadline: now + REORDER_MAX_HOLD,
                delay,
                out,
            });
            self.publish();
            return;
        }
        self.emit(out, delay, now);
        // This datagram overtook everything held in its direction; release those whose
        // gap is now used up, oldest first.
        let mut i = 0;
        while i < self.held[d].len() {
            self.held[d][i].remaining -= 1;
            if self.held[d][i].remaining == 0 {
                if let Some(h) = self.held[d].remove(i) {
                    self.tally[d].pending = self.tally[d].pending.wrapping_sub(1);
                    self.emit(h.out, h.delay, now);
                }
            } else {
                i += 1;
            }
        }
        self.publish();
    }

    /// Sends `out` now, or schedules it after `delay`.
    fn emit(&mut self, out: Outgoing, delay: Duration, now: Instant) {
        if delay.is_zero() {
            self.send(&out);
        } else {
            self.tally[out.direction.index()].pending += 1;
            self.order += 1;
            self.scheduled.push(Reverse(Scheduled {
                at: now + delay,
                order: self.order,
                out,
            }));
        }
    }

    fn send(&mut self, out: &Outgoing) {
        for _ in 0..out.copies {
            let result = match out.direction {
                Direction::ToUpstream => self.clients[out.client].socket.send(&out.data),
                Direction::ToClient => self
                    .listen
                    .send_to(&out.data, self.clients[out.client].addr),
            };
            let t = &mut self.tally[out.direction.index()];
            match result {
                Ok(_) => t.forwarded += 1,
                Err(_) => t.send_errors += 1,
            }
        }
    }

    /// Adds what happened since the last call to the shared counters, in one step: an
    /// observer never sees a datagram counted as received but not yet as forwarded,
    /// dropped or pending.
    fn publish(&mut self) {
        let mut stats = lock(&self.shared.stats);
        for direction in [Direction::ToUpstream, Direction::ToClient] {
            let t = std::mem::take(&mut self.tally[direction.index()]);
            let s = stats.direction_mut(direction);
            s.received += t.received;
            s.forwarded += t.forwarded;
            s.dropped += t.dropped;
            s.duplicated += t.duplicated;
            s.reordered += t.reordered;
            s.delayed += t.delayed;
            s.send_errors += t.send_errors;
            // Pending moves both ways; the tally holds it as a wrapping difference.
            s.pending = s.pending.wrapping_add(t.pending);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let scheduled = self.scheduled.peek().map(|Reverse(s)| s.at);
        let held = self.held.iter().flatten().map(|h| h.deadline).min();
        match (scheduled, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        for d in 0..2 {
            while self.held[d].front().is_some_and(|h| h.deadline <= now) {
                if let Some(h) = self.held[d].pop_front() {
                    self.tally[d].pending = self.tally[d].pending.wrapping_sub(1);
                    self.emit(h.out, h.delay, now);
                }
            }
        }
        while self.scheduled.peek().is_some_and(|Reverse(s)| s.at <= now) {
            if let Some(Reverse(s)) = self.scheduled.pop() {
                let d = s.out.direction.index();
                self.tally[d].pending = self.tally[d].pending.wrapping_sub(1);
                self.send(&s.out);
            }
        }
        self.publish();
    }
}

/// Errors a UDP socket reports for earlier datagrams (ICMP port unreachable and the
/// like): not a reason to stop relaying.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        let mut imp = Impairment::NONE;
        imp.apply("loss=0.1 duplicate=5% reorder=0.05 reorder_gap=2 delay=20ms jitter=500us")
            .expect("valid settings");
        assert_eq!(imp.loss, 0.1);
        assert!((imp.duplicate - 0.05).abs() < 1e-12);
        assert_eq!(imp.reorder, 0.05);
        assert_eq!(imp.reorder_gap, 2);
        assert_eq!(imp.delay, Duration::from_millis(20));
        assert_eq!(imp.jitter, Duration::from_micros(500));
        imp.apply("delay=1.5s").expect("valid");
        assert_eq!(imp.delay, Duration::from_millis(1500));
        imp.apply("delay=7").expect("bare number is ms");
        assert_eq!(imp.delay, Duration::from_millis(7));
    }

    #[test]
    fn bad_settings_change_nothing() {
        let mut imp = Impairment::loss(0.2);
        assert!(imp.apply("loss=0.5 reorder=2").is_err());
        assert!(imp.apply("bogus=1").is_err());
        assert!(imp.apply("loss").is_err());
        assert!(imp.apply("reorder_gap=0").is_err());
        assert_eq!(imp, Impairment::loss(0.2));
    }
}
