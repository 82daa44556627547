//! Tests of the lab's traffic helpers and fault injection with real traffic between
//! namespaces: checksummed TCP, nftables random loss with its counters, and the seeded UDP
//! relay (forwarding, loss, duplication, reordering, delay, determinism, several clients,
//! and the `ferrotun-relay` binary). They run as root.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrotun_lab::{
    Direction, Host, Impairment, Lab, LossRule, Relay, RelayStats, TcpTransfer, UdpSink,
    send_sequence, tcp_transfer, wait_until,
};

const T: Duration = Duration::from_secs(10);

fn addr(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::new(host.v4().into(), port)
}

#[test]
fn tcp_transfer_moves_data_and_reports_matching_checksums() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    let big = tcp_transfer(b.ns(), addr(b, 0), a.ns(), 32 << 20).expect("v4 transfer");
    big.assert_intact();
    assert_eq!(big.received_bytes, 32 << 20);
    eprintln!(
        "32 MiB a->b over IPv4 veth in {:?}: {:.0} Mbit/s",
        big.elapsed,
        big.mbit_per_s()
    );

    let v6 = TcpTransfer::new(1_000_003)
        .seed(9)
        .run(a.ns(), SocketAddr::new(a.v6().into(), 0), b.ns())
        .expect("v6 transfer");
    v6.assert_intact();
    assert_eq!(v6.sent_bytes, 1_000_003);

    // Same seed, same bytes; another seed, other bytes.
    let again = TcpTransfer::new(1_000_003)
        .seed(9)
        .run(b.ns(), addr(b, 0), a.ns())
        .expect("again");
    assert_eq!(again.sent_sha256, v6.sent_sha256);
    let other = TcpTransfer::new(1_000_003)
        .seed(10)
        .run(b.ns(), addr(b, 0), a.ns())
        .expect("other seed");
    assert_ne!(other.sent_sha256, v6.sent_sha256);

    // Nobody listening at the dialled address: an error naming it, quickly.
    let start = Instant::now();
    let err = TcpTransfer::new(10)
        .connect_to(addr(b, 1))
        .timeout(Duration::from_secs(5))
        .run(b.ns(), addr(b, 0), a.ns())
        .expect_err("refused");
    assert!(err.to_string().contains("198.18.0.2:1"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn nft_loss_rule_drops_about_half_then_nothing_after_removal() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    let sink = UdpSink::bind(b.ns(), addr(b, 9000)).expect("sink");
    let spared = UdpSink::bind(b.ns(), addr(b, 9001)).expect("other port");
    let rule = LossRule::percent(50)
        .expect("valid")
        .udp_dport(9000)
        .install(b.ns())
        .expect("install");
    let sock = a.ns().udp_bind(addr(a, 0)).expect("client");

    send_sequence(&sock, sink.local_addr(), 0..2000, 64).expect("send");
    send_sequence(&sock, spared.local_addr(), 0..200, 64).expect("send other");
    wait_until("2000 datagrams to reach b's input hook", T, || {
        rule.counters().is_ok_and(|c| c.matched == 2000)
    })
    .expect("matched");
    let counters = rule.counters().expect("counters");
    let expected = 2000 - counters.dropped as usize;
    sink.wait_for_count(expected, T).expect("survivors arrive");
    spared.wait_for_count(200, T).expect("other port untouched");
    let seqs = sink.seqs();
    eprintln!(
        "nft 50% loss: dropped {} of 2000, received {}",
        counters.dropped,
        seqs.len()
    );
    assert!(
        (600..=1400).contains(&counters.dropped),
        "dropped {}",
        counters.dropped
    );
    assert_eq!(seqs.len(), expected);
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), seqs.len());
    assert_eq!(spared.count(), 200);

    let table = rule.table().to_owned();
    rule.remove().expect("remove");
    let tables = b.ns().exec("nft", ["list", "tables"]).expect("nft list");
    assert!(!tables.contains(&table), "{tables}");
    send_sequence(&sock, sink.local_addr(), 2000..2500, 64).expect("send after");
    sink.wait_for_count(expected + 500, T)
        .expect("all arrive after removal");
    let after: Vec<u64> = sink.seqs().into_iter().filter(|s| *s >= 2000).collect();
    assert_eq!(after, (2000..2500).collect::<Vec<_>>());
}

/// A relay in b in front of an echo server in b, and a client socket in a whose replies
/// are recorded.
struct RelayRig {
    _lab: Lab,
    relay: Relay,
    server: UdpSink,
    client: UdpSocket,
    replies: UdpSink,
}

fn relay_rig(seed: u64, impairment: Impairment) -> RelayRig {
    let lab = Lab::two_hosts().expect("lab");
    let server = UdpSink::echo(lab.b().ns(), addr(lab.b(), 0)).expect("echo server");
    let relay =
        Relay::start(lab.b().ns(), addr(lab.b(), 0), server.local_addr(), seed).expect("relay");
    relay.set(impairment).expect("set");
    let client = lab.a().ns().udp_bind(addr(lab.a(), 0)).expect("client");
    let replies = UdpSink::spawn(client.try_clone().expect("clone"), false).expect("replies");
    RelayRig {
        _lab: lab,
        relay,
        server,
        client,
        replies,
    }
}

impl RelayRig {
    fn send(&self, seqs: std::ops::Range<u64>) {
        send_sequence(&self.client, self.relay.local_addr(), seqs, 100).expect("send");
    }

    /// Waits until the relay has seen `n` datagrams from the client, holds none back, and
    /// everything it forwarded both ways has arrived.
    fn settle(&self, n: u64) -> RelayStats {
        wait_until("the relay to read and send on every datagram", T, || {
            let s = self.relay.stats();
            s.to_upstream.received == n && s.to_upstream.pending == 0
        })
        .unwrap_or_else(|e| panic!("{e}; stats {}", self.relay.stats()));
        wait_until("the relay's forwards and echoes to arrive", T, || {
            let s = self.relay.stats();
            self.server.count() as u64 == s.to_upstream.forwarded
                && s.to_client.received == s.to_upstream.forwarded
                && s.to_client.pending == 0
                && self.replies.count() as u64 == s.to_client.forwarded
        })
        .unwrap_or_else(|e| panic!("{e}; stats {}", self.relay.stats()));
        self.relay.stats()
    }
}

#[test]
fn relay_forwards_everything_without_impairment() {
    let rig = relay_rig(1, Impairment::NONE);
    rig.send(0..1000);
    let stats = rig.settle(1000);
    assert_eq!(stats.to_upstream.forwarded, 1000);
    assert_eq!(stats.to_client.forwarded, 1000);
    assert_eq!(stats.clients, 1);
    assert_eq!(rig.server.seqs(), (0..1000).collect::<Vec<_>>());
    assert_eq!(rig.replies.seqs(), (0..1000).collect::<Vec<_>>());
    // The server saw the relay, not the client.
    let from = rig.server.received()[0].from;
    assert_ne!(
        from.ip(),
        std::net::IpAddr::from(Ipv4Addr::new(198, 18, 0, 1))
    );
}

#[test]
fn relay_loss_drops_the_expected_share() {
    let rig = relay_rig(3, Impairment::NONE);
    rig.relay
        .set_direction(Direction::ToUpstream, Impairment::loss(0.2))
        .expect("set");
    rig.send(0..2000);
    let stats = rig.settle(2000);
    let dropped = stats.to_upstream.dropped;
    eprintln!("relay 20% loss: dropped {dropped} of 2000");
    assert!((300..=500).contains(&dropped), "dropped {dropped}");
    assert_eq!(rig.server.count() as u64, 2000 - dropped);
    assert_eq!(
        stats.to_client.dropped, 0,
        "the reply direction was not impaired"
    );
    assert_eq!(rig.replies.count() as u64, 2000 - dropped);
}

fn count_duplicates(seqs: &[u64]) -> usize {
    let mut seen = HashSet::new();
    seqs.iter().filter(|s| !seen.insert(**s)).count()
}

fn count_out_of_order(seqs: &[u64]) -> usize {
    seqs.windows(2).filter(|w| w[1] < w[0]).count()
}

#[test]
fn relay_duplicates_reorders_and_delays_on_command() {
    let rig = relay_rig(5, Impairment::NONE);
    let one_way = |imp: Impairment| {
        rig.relay
            .set_direction(Direction::ToUpstream, imp)
            .expect("set");
    };

    one_way(Impairment {
        duplicate: 0.1,
        ..Impairment::NONE
    });
    rig.send(0..1000);
    let stats = rig.settle(1000);
    let seqs = rig.server.seqs();
    let dups = count_duplicates(&seqs);
    assert!(dups > 50 && dups < 150, "{dups} duplicates");
    assert_eq!(dups as u64, stats.to_upstream.duplicated);
    assert_eq!(seqs.len(), 1000 + dups);
    assert_eq!(count_out_of_order(&seqs), 0);

    one_way(Impairment {
        reorder: 0.1,
        ..Impairment::NONE
    });
    rig.send(1000..2000);
    let stats = rig.settle(2000);
    let seqs: Vec<u64> = rig
        .server
        .seqs()
        .into_iter()
        .filter(|s| *s >= 1000)
        .collect();
    let ooo = count_out_of_order(&seqs);
    eprintln!(
        "relay 10% reorder: {} held back, {ooo} out-of-order arrivals",
        stats.to_upstream.reordered
    );
    assert!(ooo > 30, "{ooo} out-of-order arrivals");
    assert!(ooo as u64 <= stats.to_upstream.reordered);
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (1000..2000).collect::<Vec<_>>(),
        "each exactly once"
    );

    one_way(Impairment {
        delay: Duration::from_millis(40),
        ..Impairment::NONE
    });
    let start = Instant::now();
    rig.send(5000..5001);
    wait_until("the delayed datagram", T, || {
        rig.server.seqs().contains(&5000)
    })
    .expect("delayed arrives");
    let took = start.elapsed();
    eprintln!("relay delay 40ms: one-way took {took:?}");
    assert!(took >= Duration::from_millis(40), "{took:?}");
    assert_eq!(rig.relay.stats().to_upstream.delayed, 1);
}

/// The seqs a fresh relay with `seed` delivers for 1000 datagrams.
fn impaired_run(seed: u64) -> (Vec<u64>, RelayStats) {
    let rig = relay_rig(
        seed,
        Impairment {
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.05,
            ..Impairment::NONE
        },
    );
    rig.send(0..1000);
    let stats = rig.settle(1000);
    (rig.server.seqs(), stats)
}

#[test]
fn relay_is_deterministic_for_a_seed() {
    let (first, first_stats) = impaired_run(42);
    let (second, second_stats) = impaired_run(42);
    let (other, _) = impaired_run(43);
    assert_eq!(first, second);
    assert_eq!(first_stats, second_stats);
    assert_ne!(first, other);
    assert!(first_stats.to_upstream.dropped > 0);
    assert!(first_stats.to_upstream.duplicated > 0);
    assert!(first_stats.to_upstream.reordered > 0);
}

#[test]
fn relay_keeps_several_clients_apart() {
    let lab = Lab::star(3).expect("lab");
    let (a, b, c) = (lab.a(), lab.b(), lab.host("c").expect("c"));
    let server = UdpSink::echo(c.ns(), addr(c, 0)).expect("server");
    // Dual-stack listener: client a comes over IPv4, client b over IPv6.
    let relay =
        Relay::start(c.ns(), "[::]:0".parse().unwrap(), server.local_addr(), 11).expect("relay");
    let port = relay.local_addr().port();
    let via = [
        SocketAddr::new(c.v4().into(), port),
        SocketAddr::new(c.v6().into(), port),
    ];
    let clients: Vec<(UdpSocket, UdpSink)> = [
        SocketAddr::new(a.v4().into(), 0),
        SocketAddr::new(b.v6().into(), 0),
    ]
    .iter()
    .zip([a, b])
    .map(|(bind, h)| {
        let s = h.ns().udp_bind(*bind).expect("client");
        let r = UdpSink::spawn(s.try_clone().expect("clone"), false).expect("replies");
        (s, r)
    })
    .collect();
    send_sequence(&clients[0].0, via[0], 0..300, 64).expect("send a");
    send_sequence(&clients[1].0, via[1], 1000..1300, 64).expect("send b");
    for (_, replies) in &clients {
        replies.wait_for_count(300, T).expect("replies");
    }
    assert_eq!(clients[0].1.seqs(), (0..300).collect::<Vec<_>>());
    assert_eq!(clients[1].1.seqs(), (1000..1300).collect::<Vec<_>>());
    // Replies come from the address each client sent to.
    assert_eq!(clients[0].1.received()[0].from, via[0]);
    assert_eq!(clients[1].1.received()[0].from, via[1]);
    let stats = relay.stop().expect("stop");
    assert_eq!(stats.clients, 2);
    assert_eq!(stats.to_upstream.forwarded, 600);
    assert_eq!(stats.to_client.forwarded, 600);
    // The server saw two distinct sources (one relay socket per client).
    let sources: HashSet<SocketAddr> = server.received().iter().map(|r| r.from).collect();
    assert_eq!(sources.len(), 2);
}

#[test]
fn relay_binary_takes_settings_and_commands() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    let server = UdpSink::bind(b.ns(), addr(b, 9300)).expect("server");
    let mut child = b
        .command(env!("CARGO_BIN_EXE_ferrotun-relay"))
        .args([
            "--listen",
            "198.18.0.2:9301",
            "--upstream",
            "198.18.0.2:9300",
        ])
        .args(["--seed", "5", "--loss", "100%"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferrotun-relay");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("banner");
    assert!(
        line.starts_with("relaying 198.18.0.2:9301 -> 198.18.0.2:9300 seed 5"),
        "{line}"
    );
    assert!(line.contains("loss=1 "), "{line}");

    let client = a.ns().udp_bind(addr(a, 0)).expect("client");
    let relay_addr = addr(b, 9301);
    let stats_line = |stdin: &mut std::process::ChildStdin, stdout: &mut BufReader<_>| {
        writeln!(stdin, "stats").expect("write");
        let mut lines = String::new();
        for _ in 0..3 {
            stdout.read_line(&mut lines).expect("read stats");
        }
        lines
    };
    send_sequence(&client, relay_addr, 0..10, 64).expect("send");
    wait_until("the relay binary to drop 10 datagrams", T, || {
        stats_line(&mut stdin, &mut stdout)
            .contains("to_upstream received=10 forwarded=0 dropped=10")
    })
    .expect("dropped");
    assert_eq!(server.count(), 0);

    writeln!(stdin, "set up loss=0 duplicate=100%").expect("write");
    line.clear();
    stdout.read_line(&mut line).expect("ok");
    assert_eq!(line.trim(), "ok");
    writeln!(stdin, "set bogus=1").expect("write");
    line.clear();
    stdout.read_line(&mut line).expect("error line");
    assert!(line.starts_with("error: invalid setting"), "{line}");

    send_sequence(&client, relay_addr, 10..20, 64).expect("send");
    server.wait_for_count(20, T).expect("duplicated arrivals");
    let mut seqs = server.seqs();
    seqs.sort();
    let expected: Vec<u64> = (10..20).flat_map(|s| [s, s]).collect();
    assert_eq!(seqs, expected);

    writeln!(stdin, "quit").expect("write");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("final stats");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        rest.contains("to_upstream received=20 forwarded=20 dropped=10 duplicated=10"),
        "{rest}"
    );

    // Bad arguments exit 2 with a message.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotun-relay"))
        .args(["--listen", "nonsense"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an address"));
}
