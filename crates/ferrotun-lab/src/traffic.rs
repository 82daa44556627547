//! Traffic for end-to-end tests: checksummed TCP transfers, numbered UDP datagrams, ping.
//!
//! Everything here talks only to addresses the caller passes, from sockets created inside
//! the caller's namespaces. Payloads come from [`SeededRng`], so a transfer is the same
//! bytes every run and a checksum mismatch is reproducible.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cmd;
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::wait_until;
use crate::rng::SeededRng;

/// A SHA-256 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Sum(pub [u8; 32]);

impl fmt::Display for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Sum({self})")
    }
}

/// What a [`TcpTransfer`] sent and what arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes the sender wrote.
    pub sent_bytes: u64,
    /// SHA-256 of the bytes the sender wrote.
    pub sent_sha256: Sha256Sum,
    /// Bytes the receiver read before end of stream.
    pub received_bytes: u64,
    /// SHA-256 of the bytes the receiver read.
    pub received_sha256: Sha256Sum,
    /// From connection established to the receiver seeing end of stream.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Whether everything sent arrived unchanged.
    pub fn intact(&self) -> bool {
        self.sent_bytes == self.received_bytes && self.sent_sha256 == self.received_sha256
    }

    /// Test assertion: panics with both counts and checksums unless [`Self::intact`].
    #[track_caller]
    pub fn assert_intact(&self) {
        assert!(
            self.intact(),
            "TCP transfer corrupted: sent {} bytes sha256 {}, received {} bytes sha256 {}",
            self.sent_bytes,
            self.sent_sha256,
            self.received_bytes,
            self.received_sha256
        );
    }

    /// Goodput in megabits per second (received bytes over elapsed time).
    pub fn mbit_per_s(&self) -> f64 {
        self.received_bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// A one-way TCP transfer of seeded pseudo-random bytes with checksums at both ends.
///
/// The listener is bound inside the receiving namespace and the connection made from
/// the sending one (each socket is created on a thread inside its namespace), so the bytes
/// cross whatever lies between: a veth, a tunnel, a rate limit.
#[derive(Debug, Clone)]
pub struct TcpTransfer {
    bytes: u64,
    seed: u64,
    timeout: Duration,
    connect: Option<SocketAddr>,
}

impl TcpTransfer {
    /// A transfer of `bytes` bytes (seed 1, timeout 60 s).
    pub fn new(bytes: u64) -> TcpTransfer {
        TcpTransfer {
            bytes,
            seed: 1,
            timeout: Duration::from_secs(60),
            connect: None,
        }
    }

    /// Seed of the payload generator.
    pub fn seed(mut self, seed: u64) -> TcpTransfer {
        self.seed = seed;
        self
    }

    /// Deadline for the whole transfer, connection included.
    pub fn timeout(mut self, timeout: Duration) -> TcpTransfer {
        self.timeout = timeout;
        self
    }

    /// Dial `addr` instead of the listener's own address (when something in between
    /// forwards). Port 0 means the listener's port.
    pub fn connect_to(mut self, addr: SocketAddr) -> TcpTransfer {
        self.connect = Some(addr);
        self
    }

    /// Listens on `listen` (port 0 picks one) inside `receiver`, connects from `sender`,
    /// sends, and reports both checksums.
    pub fn run(
        &self,
        receiver: &Netns,
        listen: SocketAddr,
        sender: &Netns,
    ) -> Result<TransferReport> {
        let deadline = Instant::now() + self.timeout;
        let listener = receiver.tcp_listen(listen)?;
        let local = listener
            .local_addr()
            .map_err(LabError::io("reading the listener's address"))?;
        let target = match self.connect {
            Some(addr) if addr.port() == 0 => SocketAddr::new(addr.ip(), local.port()),
            Some(addr) => addr,
            None => local,
        };
        let abort = AtomicBool::new(false);
        thread::scope(|scope| {
            let receiving = thread::Builder::new()
                .name("tcp_transfer rx".into())
                .spawn_scoped(scope, || receive_all(&listener, deadline, &abort))
                .map_err(LabError::io("starting the receiving thread"))?;
            let sent = self.send_all(sender, target, deadline);
            if sent.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            let received = match receiving.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let (sent_bytes, sent_sha256, started) = sent?;
            let (received_bytes, received_sha256, finished) = received?;
            Ok(TransferReport {
                sent_bytes,
                sent_sha256,
                received_bytes,
                received_sha256,
                elapsed: finished.saturating_duration_since(started),
            })
        })
    }

    fn send_all(
        &self,
        sender: &Netns,
        target: SocketAddr,
        deadline: Instant,
    ) -> Result<(u64, Sha256Sum, Instant)> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut stream = sender.tcp_connect(target, remaining.max(Duration::from_millis(1)))?;
        let started = Instant::now();
        let context = format!("sending to {target}");
        stream
            .set_write_timeout(Some(remaining.max(Duration::from_millis(1))))
            .map_err(LabError::io(context.clone()))?;
        let mut rng = SeededRng::new(self.seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = self.bytes;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            rng.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            stream
                .write_all(&buf[..n])
                .map_err(LabError::io(context.clone()))?;
            left -= n as u64;
            if Instant::now() > deadline {
                return Err(timeout(
                    "the TCP transfer to finish sending",
                    self.timeout,
                    self.bytes - left,
                ));
            }
        }
        stream
            .shutdown(Shutdown::Write)
            .map_err(LabError::io(context))?;
        Ok((self.bytes, Sha256Sum(hash.finalize().into()), started))
    }
}

fn timeout(what: &str, waited: Duration, done: u64) -> LabError {
    LabError::Timeout {
        what: what.to_owned(),
        waited,
        last: Some(format!("{done} bytes done")),
    }
}

fn receive_all(
    listener: &TcpListener,
    deadline: Instant,
    abort: &AtomicBool,
) -> Result<(u64, Sha256Sum, Instant)> {
    let mut stream = loop {
        if abort.load(Ordering::Relaxed) {
            return Err(LabError::io("accepting the transfer")(io::Error::other(
                "the sender failed",
            )));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timeout("the TCP transfer's connection", Duration::ZERO, 0));
        }
        let slice = (deadline - now).min(Duration::from_millis(50));
        if poll_readable(listener, slice).map_err(LabError::io("waiting for a connection"))? {
            let (stream, _) = listener
                .accept()
                .map_err(LabError::io("accepting a connection"))?;
            break stream;
        }
    };
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout("the TCP transfer to arrive", Duration::ZERO, total));
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(LabError::io("setting a read timeout"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout("the TCP transfer to arrive", Duration::ZERO, total));
            }
            Err(e) => return Err(LabError::io(format!("receiving after {total} bytes"))(e)),
        }
    }
    Ok((total, Sha256Sum(hash.finalize().into()), Instant::now()))
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: pfd is a valid pollfd for the duration of the call and nfds is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Sends `bytes` seeded pseudo-random bytes over TCP from `sender` to a listener on
/// `listen` in `receiver` (seed 1, 60 s timeout); see [`TcpTransfer`] for options.
pub fn tcp_transfer(
    receiver: &Netns,
    listen: SocketAddr,
    sender: &Netns,
    bytes: u64,
) -> Result<TransferReport> {
    TcpTransfer::new(bytes).run(receiver, listen, sender)
}

/// First bytes of a numbered datagram made by [`seq_datagram`].
pub const SEQ_MAGIC: [u8; 8] = *b"ftlabseq";

/// Smallest numbered datagram: magic and sequence number.
pub const SEQ_HEADER_LEN: usize = 16;

/// Fills `buf` with a numbered datagram of `len` bytes (at least [`SEQ_HEADER_LEN`]):
/// [`SEQ_MAGIC`], `seq` big-endian, then filler derived from `seq`.
pub fn seq_datagram(seq: u64, len: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&SEQ_MAGIC);
    buf.extend_from_slice(&seq.to_be_bytes());
    let filler = seq.to_le_bytes();
    buf.extend((0..len.saturating_sub(SEQ_HEADER_LEN)).map(|i| filler[i % 8] ^ (i as u8)));
}

/// The sequence number of a datagram made by [`seq_datagram`], or `None` for anything
/// else.
pub fn read_seq(datagram: &[u8]) -> Option<u64> {
    let header = datagram.get(..SEQ_HEADER_LEN)?;
    if header[..8] != SEQ_MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(header[8..16].try_into().ok()?))
}

/// Sends one numbered datagram of `len` bytes per number in `seqs` from `socket` to `to`.
pub fn send_sequence(
    socket: &UdpSocket,
    to: SocketAddr,
    seqs: Range<u64>,
    len: usize,
) -> Result<()> {
    let mut buf = Vec::with_capacity(len.max(SEQ_HEADER_LEN));
    for seq in seqs {
        seq_datagram(seq, len, &mut buf);
        socket
            .send_to(&buf, to)
            .map_err(LabError::io(format!("sending datagram {seq} to {to}")))?;
    }
    Ok(())
}

/// Socket receive buffer the lab asks for, so bursts of test datagrams are not dropped by
/// a full socket (which would look like impairment).
const RCVBUF: libc::c_int = 8 << 20;

/// Raises `socket`'s receive buffer to 8 MiB (`SO_RCVBUFFORCE` as root, so
/// `net.core.rmem_max` does not cap it).
pub fn enlarge_receive_buffer(socket: &impl AsRawFd) -> Result<()> {
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the fd is open; the option value is a c_int and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(LabError::io("setting SO_RCVBUF")(io::Error::last_os_error()))
}

/// One datagram a [`UdpSink`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Who sent it.
    pub from: SocketAddr,
    /// Its sequence number, if it was made by [`seq_datagram`].
    pub seq: Option<u64>,
    /// Its length.
    pub len: usize,
}

/// A UDP socket read by a background thread that records every datagram (sender,
/// sequence number) in arrival order, and optionally echoes each one back to its sender.
/// Stops on drop.
#[derive(Debug)]
pub struct UdpSink {
    local: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl UdpSink {
    /// Binds `addr` inside `ns` and records what arrives.
    pub fn bind(ns: &Netns, addr: SocketAddr) -> Result<UdpSink> {
        UdpSink::spawn(ns.udp_bind(addr)?, false)
    }

    /// Binds `addr` inside `ns`, records what arrives and sends each datagram back to its
    /// sender.
    pub fn echo(ns: &Netns, addr: SocketAddr) -> Result<UdpSink> {
        UdpSink::spawn(ns.udp_bind(addr)?, true)
    }

    /// Takes over an existing socket (e.g. a clone of a client's socket, to record the
    /// replies it gets). The socket keeps its namespace.
    pub fn spawn(socket: UdpSocket, echo: bool) -> Result<UdpSink> {
        let local = socket
            .local_addr()
            .map_err(LabError::io("reading a UDP socket's address"))?;
        enlarge_receive_buffer(&socket)?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(LabError::io("setting a read timeout"))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("udp sink {local}"))
                .spawn(move || sink_loop(&socket, echo, &received, &stop))
                .map_err(LabError::io("starting a UDP sink thread"))?
        };
        Ok(UdpSink {
            local,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the sink is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sequence numbers received so far, in arrival order (datagrams without one are
    /// left out).
    pub fn seqs(&self) -> Vec<u64> {
        self.received().iter().filter_map(|r| r.seq).collect()
    }

    /// Sequence numbers received from `from`, in arrival order.
    pub fn seqs_from(&self, from: SocketAddr) -> Vec<u64> {
        self.received()
            .iter()
            .filter(|r| r.from == from)
            .filter_map(|r| r.seq)
            .collect()
    }

    /// How many datagrams arrived so far.
    pub fn count(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Waits until at least `n` datagrams have arrived.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            format_args!("{n} datagrams at {}", self.local),
            timeout,
            || self.count() >= n,
        )
        .map_err(|e| match e {
            LabError::Timeout { what, waited, .. } => LabError::Timeout {
                what,
                waited,
                last: Some(format!("{} arrived", self.count())),
            },
            e => e,
        })
    }

    /// Stops the thread and returns what it recorded, or the socket error that ended it.
    pub fn finish(mut self) -> Result<Vec<Received>> {
        self.stop_thread()?;
        Ok(self.received())
    }

    fn stop_thread(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(Err(e))) => Err(LabError::io(format!("receiving at {}", self.local))(e)),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => Ok(()),
        }
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sink_loop(
    socket: &UdpSocket,
    echo: bool,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if echo {
                    // A lost echo is what the test measures, not a sink failure.
                    let _ = socket.send_to(&buf[..n], from);
                }
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Received {
                        from,
                        seq: read_seq(&buf[..n]),
                        len: n,
                    });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // ICMP port unreachable from an earlier echo shows up here; not fatal.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The outcome of [`ping`].
#[derive(Debug, Clone, PartialEq)]
pub struct PingReport {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Average round-trip time, when any reply came.
    pub rtt_avg: Option<Duration>,
    /// Largest round-trip time, when any reply came.
    pub rtt_max: Option<Duration>,
    /// ping's full output.
    pub output: String,
}

impl PingReport {
    /// Whether at least one reply came.
    pub fn success(&self) -> bool {
        self.received > 0
    }

    /// Whether every request was answered.
    pub fn all_answered(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }
}

/// Pings `addr` from inside `ns` with the `ping` binary: `count` requests 50 ms apart,
/// giving up after `timeout` (rounded up to whole seconds, as ping wants). A run with no
/// reply is `Ok` with `received == 0`; ping failing to run at all (no route, bad address)
/// is an error with its message.
pub fn ping(ns: &Netns, addr: IpAddr, count: u32, timeout: Duration) -> Result<PingReport> {
    let deadline_s = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let mut command = ns.command("ping");
    command.args([
        "-n",
        "-q",
        "-c",
        &count.max(1).to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        "-w",
        &deadline_s.max(1).to_string(),
        &addr.to_string(),
    ]);
    command.stdin(std::process::Stdio::null());
    let out = command
        .output()
        .map_err(|e| cmd::spawn_error(&command, e))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Exit code 1 means "no reply"; anything else but 0 means ping could not run.
    if !out.status.success() && out.status.code() != Some(1) {
        return cmd::check(&command, out).map(|_| unreachable_report(text));
    }
    parse_ping(&text).ok_or_else(|| LabError::Parse {
        command: cmd::render(&command),
        detail: "a \"N packets transmitted, M received\" line".into(),
        output: cmd::tail(&text, 1000),
    })
}

fn unreachable_report(output: String) -> PingReport {
    PingReport {
        transmitted: 0,
        received: 0,
        rtt_avg: None,
        rtt_max: None,
        output,
    }
}

fn parse_ping(text: &str) -> Option<PingReport> {
    let summary = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut fields = summary.split(',').map(str::trim);
    let transmitted = fields.next()?.split_whitespace().next()?.parse().ok()?;
    let received = fields.next()?.split_whitespace().next()?.parse().ok()?;
    let (rtt_avg, rtt_max) = match text.lines().find(|l| l.starts_with("rtt ")) {
        Some(line) => {
            let values = line.split('=').nth(1)?.split_whitespace().next()?;
            let ms: Vec<f64> = values.split('/').filter_map(|v| v.parse().ok()).collect();
            let to_d = |v: f64| Duration::from_secs_f64(v / 1000.0);
            (ms.get(1).copied().map(to_d), ms.get(2).copied().map(to_d))
        }
        None => (None, None),
    };
    Some(PingReport {
        transmitted,
        received,
        rtt_avg,
        rtt_max,
        output: text.to_owned(),
    })
}

/// Pings `addr` from `ns` once at a time until a reply comes or `timeout` passes; returns
/// the round-trip time. This is how a test waits for a path (a tunnel) to come up.
pub fn wait_for_ping(ns: &Netns, addr: IpAddr, timeout: Duration) -> Result<Duration> {
    crate::process::wait_for(
        format_args!("a ping reply from {addr} in {}", ns.name()),
        timeout,
        || match ping(ns, addr, 1, Duration::from_secs(1)) {
            Ok(r) if r.success() => Ok(r.rtt_avg.unwrap_or_default()),
            Ok(r) => Err(format!("no reply: {}", cmd::tail(&r.output, 200))),
            Err(e) => Err(e.to_string()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_datagrams_round_trip() {
        let mut buf = Vec::new();
        seq_datagram(0x0102_0304_0506_0708, 100, &mut buf);
        assert_eq!(buf.len(), 100);
        assert_eq!(read_seq(&buf), Some(0x0102_0304_0506_0708));
        seq_datagram(7, 3, &mut buf);
        assert_eq!(buf.len(), SEQ_HEADER_LEN);
        assert_eq!(read_seq(&buf), Some(7));
        assert_eq!(read_seq(b"ftlabseq1234567"), None);
        assert_eq!(read_seq(b"something else entirely"), None);
    }

    #[test]
    fn ping_output_is_parsed() {
        let out = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n\n--- 198.18.0.2 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 102ms\nrtt min/avg/max/mdev = 0.030/0.045/0.060/0.008 ms\n";
        let r = parse_ping(out).expect("parses");
        assert_eq!((r.transmitted, r.received), (3, 2));
        assert_eq!(r.rtt_avg, Some(Duration::from_micros(45)));
        assert_eq!(r.rtt_max, Some(Duration::from_micros(60)));
        let none = "--- x ping statistics ---\n1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms\n";
        let r = parse_ping(none).expect("parses");
        assert_eq!((r.transmitted, r.received, r.rtt_avg), (1, 0, None));
    }
}
