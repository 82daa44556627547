//! End-to-end tests of what makes ferrotun a VTun-style tunnel: TCP transport, TAP
//! (layer 2) with a learning switch, compression, reconnecting, live reload and `show`.
//! Real binaries, the example configs (with the edits each test names), real traffic.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferrotun_lab::{
    Hook, Lab, LossRule, NsProcess, Signal, UdpSink, ping, send_sequence, wait_for_ping, wait_until,
};
use support::*;

#[derive(Clone, Copy, PartialEq)]
enum T {
    Udp,
    Tcp,
}

/// Edits that turn the example configs into one cell of the matrix.
fn cell_configs(
    cfg: &Configs,
    t: T,
    tap: bool,
    compress: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut server: Vec<(&str, &str)> = vec![(
        "udp = \"[::]:51820\"",
        "udp = \"[::]:51820\"\ntcp = \"[::]:51820\"",
    )];
    let mut client: Vec<(&str, &str)> = Vec::new();
    if t == T::Tcp {
        client.push(("transport = \"udp\"", "transport = \"tcp\""));
    }
    if tap {
        server.push(("mode = \"tun\"", "mode = \"tap\""));
        client.push(("mode = \"tun\"", "mode = \"tap\""));
    }
    if compress {
        client.push(("# compress = false", "compress = true"));
        cfg.variant(
            "peers/alice.toml",
            "peers/alice.toml",
            &[("# compress = false", "compress = true")],
        );
    }
    (
        cfg.variant("server.toml", "cell-server.toml", &server),
        cfg.variant("client.toml", "cell-client.toml", &client),
    )
}

/// One cell of the matrix: its configs (from [`cell_configs`]), a server on host a, and
/// once [`cell_up`] started it a client on host b. Fields drop in order, so the processes
/// go before the namespaces they run in.
struct Cell {
    server: NsProcess,
    client: Option<NsProcess>,
    scfg: std::path::PathBuf,
    ccfg: std::path::PathBuf,
    cfg: Configs,
    lab: Lab,
}

/// A cell whose server runs; no client yet.
fn cell_server(t: T, tap: bool, compress: bool) -> Cell {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (scfg, ccfg) = cell_configs(&cfg, t, tap, compress);
    let server = start_server(&lab, lab.a(), &scfg);
    Cell {
        server,
        client: None,
        scfg,
        ccfg,
        cfg,
        lab,
    }
}

/// A cell with its server and client running and the tunnel up.
fn cell_up(t: T, tap: bool, compress: bool) -> Cell {
    let mut cell = cell_server(t, tap, compress);
    let b = cell.lab.b();
    cell.client = Some(start_client(&cell.lab, b, "client", &cell.ccfg));
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    cell
}

/// Ping and a 20 MB transfer both ways must work in every combination; with compression
/// on, a compressible ping must really travel compressed (and with it off, never).
fn matrix_cell(t: T, tap: bool, compress: bool) {
    let cell = cell_up(t, tap, compress);
    let (lab, a, b) = (&cell.lab, cell.lab.a(), cell.lab.b());
    let p = ping(b.ns(), addr("fd77::1"), 3, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "IPv6: {}", p.output);
    // 50 pings of 1000 bytes of one repeated byte: they shrink a lot under LZ4. (First:
    // after the random bytes of the transfers the compressors back off for a while.)
    let out = b
        .ns()
        .exec(
            "ping",
            [
                "-n",
                "-q",
                "-c",
                "50",
                "-i",
                "0.01",
                "-s",
                "1000",
                "-p",
                "ab",
                "10.77.0.1",
            ],
        )
        .unwrap();
    assert!(out.contains(" 0% packet loss"), "{out}");
    let s = show_json(lab, "client");
    let peer = &s["peers"][0];
    assert_eq!(
        peer["transport"],
        if t == T::Tcp { "tcp" } else { "udp" },
        "{s:#}"
    );
    assert_eq!(s["mode"], if tap { "tap" } else { "tun" });
    let (tx, txp) = (
        peer["tx_bytes"].as_u64().unwrap(),
        peer["tx_payload_bytes"].as_u64().unwrap(),
    );
    let (rx, rxp) = (
        peer["rx_bytes"].as_u64().unwrap(),
        peer["rx_payload_bytes"].as_u64().unwrap(),
    );
    if compress {
        assert!(
            txp + 40_000 < tx,
            "sent compressed: {txp} of {tx} bytes on the wire"
        );
        assert!(rxp + 40_000 < rx, "received compressed: {rxp} of {rx}");
    } else {
        assert_eq!((txp, rxp), (tx, rx), "nothing compressed");
    }
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
    transfer(b.ns(), "10.77.0.2:0", a.ns(), 4 * MB);
}

#[test]
fn matrix_udp_tun_plain() {
    matrix_cell(T::Udp, false, false);
}
#[test]
fn matrix_udp_tun_compressed() {
    matrix_cell(T::Udp, false, true);
}
#[test]
fn matrix_udp_tap_plain() {
    matrix_cell(T::Udp, true, false);
}
#[test]
fn matrix_udp_tap_compressed() {
    matrix_cell(T::Udp, true, true);
}
#[test]
fn matrix_tcp_tun_plain() {
    matrix_cell(T::Tcp, false, false);
}
#[test]
fn matrix_tcp_tun_compressed() {
    matrix_cell(T::Tcp, false, true);
}
#[test]
fn matrix_tcp_tap_plain() {
    matrix_cell(T::Tcp, true, false);
}
#[test]
fn matrix_tcp_tap_compressed() {
    matrix_cell(T::Tcp, true, true);
}

/// With TUN offloads on, a sender leaves the checksums of the TCP segments it cuts from
/// super-segments partial and says so in each message. A receiver whose device has
/// offloads hands such packets to its kernel as partial; one without (`offload = false`)
/// completes them itself. Either way the transfers arrive intact (the kernel drops a
/// segment whose checksum is wrong, and the transfer would stall), and the receivers'
/// counters show which way each went.
#[test]
fn partial_checksums_arrive_whole_whether_the_receiver_has_offloads_or_not() {
    for offload in [true, false] {
        let lab = Lab::two_hosts().unwrap();
        let cfg = Configs::new();
        let (a, b) = (lab.a(), lab.b());
        let line = format!("offload = {offload}");
        let scfg = cfg.variant("server.toml", "s.toml", &[("# offload = true", &line)]);
        let _server = start_server(&lab, a, &scfg);
        let _client = start_client(&lab, b, "client", &cfg.client());
        wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
        transfer(a.ns(), "10.77.0.1:0", b.ns(), 8 * MB);
        let count = |who: &str, key: &str| show_json(&lab, who)[key].as_u64().unwrap();
        // 8 MiB are about 6,000 segments of 1,380 bytes.
        let partial = count("server", "partial_checksums");
        assert!(partial > 5_000, "offload {offload}: {partial} partial");
        wait_until("every partial checksum handled", UP, || {
            let done = count("server", "checksums_completed");
            done == if offload {
                0
            } else {
                count("server", "partial_checksums")
            }
        })
        .unwrap();
        // The other way, the server leaves checksums partial only if it has offloads.
        transfer(b.ns(), "10.77.0.2:0", a.ns(), 2 * MB);
        let partial = count("client", "partial_checksums");
        assert_eq!(
            partial > 1_000,
            offload,
            "offload {offload}: {partial} partial"
        );
        assert_eq!(count("client", "checksums_completed"), 0);
    }
}

/// Packets that wait for the first handshake (staged) are sent later as plain IP packets,
/// so one that came from the device with a partial checksum (a UDP datagram of the
/// client's kernel, with TUN offloads on) is completed before it waits: the server's
/// kernel would drop it otherwise.
#[test]
fn datagrams_sent_before_the_first_handshake_arrive_with_good_checksums() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let _client = start_client(&lab, b, "client", &cfg.client());
    wait_until("the client's address", UP, || {
        b.ns().udp_bind(sock("10.77.0.2:0")).is_ok()
    })
    .unwrap();
    // Bound to the wildcard address: the server's tunnel address does not exist yet.
    let sink = UdpSink::bind(a.ns(), sock("0.0.0.0:7000")).unwrap();
    let tx = b.ns().udp_bind(sock("10.77.0.2:0")).unwrap();
    // Of growing sizes, so that the server's writer cannot merge them into one UDP
    // super-segment (whose checksums its kernel would compute afresh).
    for seq in 0..10 {
        send_sequence(
            &tx,
            sock("10.77.0.1:7000"),
            seq..seq + 1,
            100 + 50 * seq as usize,
        )
        .unwrap();
    }
    let _server = start_server(&lab, a, &cfg.server());
    sink.wait_for_count(10, Duration::from_secs(40))
        .expect("the staged datagrams arrive");
    let mut seqs = sink.seqs();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..10).collect::<Vec<u64>>());
}

/// A TAP server that floods a frame (a broadcast) to its device and to the other peers
/// counts it once as received from its sender, as the sender counts it once as sent.
#[test]
fn a_flooded_frame_is_counted_once() {
    let cell = cell_up(T::Udp, true, false);
    let (lab, b) = (&cell.lab, cell.lab.b());
    let count = |who: &str, key: &str| show_json(lab, who)["peers"][0][key].as_u64().unwrap();
    let sent0 = count("client", "tx_packets");
    let got0 = count("server", "rx_packets");
    let args = [
        "-n",
        "-q",
        "-b",
        "-c",
        "20",
        "-i",
        "0.02",
        "-W",
        "1",
        "10.77.0.255",
    ];
    let out = b.ns().exec("ping", args).unwrap_or_default();
    let mut last = (0, 0);
    wait_until("the server to count what the client sent", UP, || {
        last = (
            count("client", "tx_packets") - sent0,
            count("server", "rx_packets") - got0,
        );
        last.0 >= 20 && last.0 == last.1
    })
    .unwrap_or_else(|e| panic!("{e}: sent {}, received {} ({out})", last.0, last.1));
}

/// A peer chooses every byte it seals, the payload flags included. A packet it marks as
/// carrying a partial checksum where there is no TCP or UDP checksum field to complete
/// (here an ICMP echo request) is dropped and counted as malformed, not handed to the
/// kernel; a marked UDP datagram from the same peer, whose field holds its pseudo-header
/// sum, arrives. The peer is made by hand from alice's key (no ferrotun-client).
#[test]
fn a_partial_checksum_mark_on_a_packet_without_the_field_is_dropped() {
    use ferrotun_proto::handshake::{PeerHandshake, ResponseVerdict};
    use ferrotun_proto::{
        AeadBackend, Identity, Keypair, OsEntropy, PayloadFlags, PresharedKey, PrivateKey,
        PublicKey,
    };
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let _server = start_server(&lab, a, &cfg.server());
    let sink = UdpSink::bind(a.ns(), sock("10.77.0.1:7000")).unwrap();
    let alice = PrivateKey::from_base64(cfg.read("keys/alice.key").trim()).unwrap();
    let server = PublicKey::from_base64(cfg.read("keys/server.pub").trim()).unwrap();
    let mut hs = PeerHandshake::new(
        std::sync::Arc::new(Identity::new(alice)),
        server,
        PresharedKey::default(),
    )
    .unwrap();
    let udp = b.ns().udp_bind(sock("198.18.0.2:0")).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = sock("198.18.0.1:51820");
    udp.send_to(&initiation(&mut hs, 0x0100), to).unwrap();
    let mut resp = [0u8; 256];
    let (n, _) = udp.recv_from(&mut resp).expect("the server answers");
    let keys = match hs
        .consume_response(
            &resp[..n],
            &[],
            false,
            Instant::now(),
            &mut OsEntropy,
            &mut [0u8; 64],
        )
        .unwrap()
    {
        ResponseVerdict::Complete(k) => k,
        ResponseVerdict::CookieReply(_) => panic!("the server is not under load"),
    };
    let kp = Keypair::new(
        AeadBackend::Ring,
        &keys.send,
        &keys.receive,
        keys.local_index,
        keys.remote_index,
        Instant::now(),
        true,
    );
    // IPv4 from alice (10.77.0.2) to the server (10.77.0.1), the header checksum right;
    // `transport` is what follows the 20-byte header.
    let ipv4 = |protocol: u8, transport: &[u8]| -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        p.extend_from_slice(&[10, 77, 0, 2, 10, 77, 0, 1]);
        p.extend_from_slice(transport);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let c = !fold(sum16(&p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    };
    let send = |packet: &[u8]| {
        let mut buf = vec![0u8; 16 + packet.len() + 32];
        buf[16..16 + packet.len()].copy_from_slice(packet);
        let n = kp
            .seal(PayloadFlags::PARTIAL_CHECKSUM, packet.len(), &mut buf, 1420)
            .unwrap();
        udp.send_to(&buf[..n], to).unwrap();
    };
    let malformed = || {
        show_json(&lab, "server")["drops"]["malformed"]
            .as_u64()
            .unwrap_or(0)
    };
    // An echo request, its ICMP checksum right: the kernel would answer it if it got it.
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
    icmp.extend_from_slice(b"partial?");
    let c = !fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    send(&ipv4(1, &icmp));
    wait_until("the marked ICMP packet counted as malformed", UP, || {
        malformed() == 1
    })
    .unwrap();
    // A UDP datagram to the sink whose checksum field holds the pseudo-header sum.
    let mut datagram = vec![0xd4, 0x31, 0x1b, 0x58, 0, 0, 0, 0];
    datagram.extend_from_slice(b"completed by the receiver");
    let len = datagram.len() as u16;
    datagram[4..6].copy_from_slice(&len.to_be_bytes());
    let pseudo = fold(sum16(&[10, 77, 0, 2, 10, 77, 0, 1, 0, 17]) + u32::from(len));
    datagram[6..8].copy_from_slice(&pseudo.to_be_bytes());
    send(&ipv4(17, &datagram));
    sink.wait_for_count(1, UP)
        .expect("the marked UDP datagram arrives");
    assert_eq!(sink.received()[0].len, datagram.len() - 8);
    assert_eq!(malformed(), 1);
}

/// The one's-complement sum of `b` as big-endian 16-bit words, not folded.
fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn a_compression_mismatch_is_refused_with_the_reason() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let ccfg = cfg.variant(
        "client.toml",
        "c.toml",
        &[("# compress = false", "compress = true")],
    );
    let mut server = start_server(&lab, a, &cfg.server());
    let mut client = start_client(&lab, b, "client", &ccfg);
    client
        .wait_for_output(
            "settings differ (this side has compress = true, the server has compress = false)",
            UP,
        )
        .expect("the client says why");
    server
        .wait_for_output(
            "settings differ (this server has compress = false, the peer has compress = true)",
            UP,
        )
        .expect("the server says why");
    let p = ping(b.ns(), addr("10.77.0.1"), 3, Duration::from_secs(2)).unwrap();
    assert_eq!(p.received, 0, "{}", p.output);
}

/// A compressing peer's flow mixes compressed and uncompressed packets (LZ4 is kept only
/// where it shrinks a packet); the receiver must write them to its device in the order
/// they were sent, also when one receive batch holds both kinds.
fn compression_keeps_order(t: T, tap: bool) {
    let cell = cell_up(t, tap, true);
    let (lab, a, b) = (&cell.lab, cell.lab.a(), cell.lab.b());
    let before = show_json(lab, "client")["peers"][0].clone();
    let sink = UdpSink::bind(a.ns(), sock("10.77.0.1:7000")).unwrap();
    let tx = b.ns().udp_bind(sock("10.77.0.2:0")).unwrap();
    // Numbered 1000-byte datagrams, alternately zeros (which LZ4 shrinks to a few dozen
    // bytes) and pseudo-random bytes (which it cannot shrink), sent in bursts of 100 so
    // that the server's reads take several at a time.
    const N: u64 = 2000;
    let mut rng = ferrotun_lab::SeededRng::new(7);
    let mut dgram = Vec::with_capacity(1000);
    for burst in 0..N / 100 {
        for seq in burst * 100..(burst + 1) * 100 {
            ferrotun_lab::seq_datagram(seq, 16, &mut dgram);
            dgram.resize(1000, 0);
            if seq % 2 == 1 {
                rng.fill(&mut dgram[16..]);
            }
            tx.send_to(&dgram, sock("10.77.0.1:7000")).unwrap();
        }
        sink.wait_for_count(((burst + 1) * 100) as usize, Duration::from_secs(10))
            .unwrap();
    }
    let seqs = sink.seqs();
    let out_of_order: Vec<_> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(
        out_of_order.is_empty(),
        "{} of {N} datagrams out of order, e.g. {:?}",
        out_of_order.len(),
        &out_of_order[..out_of_order.len().min(5)]
    );
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
    // Both kinds crossed: the random bytes uncompressed (their 1 MB at least went on the
    // wire), the zeros compressed (most of their 1 MB saved, even if a ping before the
    // test made the compressor back off for its first 256 packets).
    let after = show_json(lab, "client")["peers"][0].clone();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    let (sent, wire) = (delta("tx_bytes"), delta("tx_payload_bytes"));
    assert!(sent >= N * 1028, "sent {sent}");
    assert!(
        (N / 2 * 1000..sent - N / 4 * 900).contains(&wire),
        "{wire} bytes on the wire for {sent}"
    );
}

#[test]
fn compressed_and_plain_packets_keep_their_order_over_udp() {
    compression_keeps_order(T::Udp, false);
}

#[test]
fn compressed_and_plain_packets_keep_their_order_over_tcp() {
    compression_keeps_order(T::Tcp, false);
}

#[test]
fn compressed_and_plain_frames_keep_their_order_in_tap_mode() {
    compression_keeps_order(T::Udp, true);
}

/// The peer file and client config of a third client, carol.
fn carol(cfg: &Configs) -> std::path::PathBuf {
    cfg.variant(
        "peers/alice.toml",
        "carol.peer",
        &[
            ("alice.pub", "carol.pub"),
            ("10.77.0.2/32", "10.77.0.4/32"),
            ("fd77::2/128", "fd77::4/128"),
        ],
    );
    cfg.variant(
        "client.toml",
        "carol.toml",
        &[
            ("keys/alice.key", "keys/carol.key"),
            ("\"10.77.0.2/24\"", "\"10.77.0.4/24\""),
            ("\"fd77::2/64\"", "\"fd77::4/64\""),
        ],
    )
}

fn bob(cfg: &Configs) -> std::path::PathBuf {
    cfg.variant(
        "client.toml",
        "bob.toml",
        &[
            ("keys/alice.key", "keys/bob.key"),
            ("\"10.77.0.2/24\"", "\"10.77.0.3/24\""),
            ("\"fd77::2/64\"", "\"fd77::3/64\""),
        ],
    )
}

/// `file` made a TAP configuration with this MTU and MAC address, written as `name`.
fn tap_config(
    cfg: &Configs,
    file: &std::path::Path,
    name: &str,
    mtu: u32,
    mac: &str,
) -> std::path::PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.replace("mode = \"tun\"", "mode = \"tap\"");
    let text = text.replacen("mtu = 1420", &format!("mtu = {mtu}\nmac = \"{mac}\""), 1);
    let p = cfg.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_tap_server_drops_frames_over_its_mtu_from_a_peer_with_a_larger_one() {
    let lab = Lab::star(3).unwrap();
    let cfg = Configs::new();
    let (a, b, c) = (lab.a(), lab.b(), lab.host("c").unwrap());
    let tap = |file: &std::path::Path, name: &str, mtu: u32, mac: &str| {
        tap_config(&cfg, file, name, mtu, mac)
    };
    let server_cfg = tap(&cfg.server(), "tap-server.toml", 1420, "02:77:00:00:00:01");
    // Alice's device takes 1500-byte packets; the server's and bob's only 1420. Compressed,
    // her big frames fit the 1500-byte underlay (uncompressed the socket refuses them).
    cfg.variant(
        "peers/alice.toml",
        "peers/alice.toml",
        &[("# compress = false", "compress = true")],
    );
    let alice_cfg = tap(&cfg.client(), "tap-alice.toml", 1500, "02:77:00:00:00:02");
    let text = std::fs::read_to_string(&alice_cfg).unwrap();
    std::fs::write(
        &alice_cfg,
        text.replace("# compress = false", "compress = true"),
    )
    .unwrap();
    let bob_cfg = tap(&bob(&cfg), "tap-bob.toml", 1420, "02:77:00:00:00:03");
    let _server = start_server(&lab, a, &server_cfg);
    let _alice = start_client(&lab, b, "alice", &alice_cfg);
    let _bob = start_client(&lab, c, "bob", &bob_cfg);
    for h in [b, c] {
        wait_for_ping(h.ns(), addr("10.77.0.1"), UP).unwrap();
    }
    // Broadcast frames of 1,514 bytes of zeros: the server would flood them to bob through
    // buffers sized for its own MTU. They must be counted and dropped, and the server live.
    let out = b
        .command("ping")
        .args([
            "-b",
            "-c",
            "3",
            "-i",
            "0.2",
            "-s",
            "1472",
            "-p",
            "00",
            "-W",
            "1",
            "10.77.0.255",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 packets transmitted"),
        "{out:?}"
    );
    wait_until(
        "the server counted the big frames",
        Duration::from_secs(5),
        || {
            show_json(&lab, "server")["drops"]["too_big"]
                .as_u64()
                .unwrap_or(0)
                >= 3
        },
    )
    .unwrap();
    // The switch still works for frames that fit.
    for (from, to) in [(b, "10.77.0.3"), (c, "10.77.0.1"), (c, "10.77.0.2")] {
        let p = ping(from.ns(), addr(to), 3, Duration::from_secs(5)).unwrap();
        assert!(p.all_answered(), "{} to {to}: {}", from.tag(), p.output);
    }
}

#[test]
fn a_tap_server_switches_frames_between_three_clients_by_mac() {
    let lab = Lab::star(4).unwrap();
    let cfg = Configs::new();
    let (a, b, c, d) = (
        lab.a(),
        lab.b(),
        lab.host("c").unwrap(),
        lab.host("d").unwrap(),
    );
    let carol_cfg = carol(&cfg);
    std::fs::copy(cfg.path("carol.peer"), cfg.path("peers/carol.toml")).unwrap();
    let tap =
        |file: &std::path::Path, name: &str, mac: &str| tap_config(&cfg, file, name, 1420, mac);
    let server_cfg = tap(&cfg.server(), "tap-server.toml", "02:77:00:00:00:01");
    let alice_cfg = tap(&cfg.client(), "tap-alice.toml", "02:77:00:00:00:02");
    let bob_cfg = tap(&bob(&cfg), "tap-bob.toml", "02:77:00:00:00:03");
    let carol_cfg = tap(&carol_cfg, "tap-carol.toml", "02:77:00:00:00:04");
    let _server = start_server(&lab, a, &server_cfg);
    let _alice = start_client(&lab, b, "alice", &alice_cfg);
    let _bob = start_client(&lab, c, "bob", &bob_cfg);
    let _carol = start_client(&lab, d, "carol", &carol_cfg);
    for h in [b, c, d] {
        wait_for_ping(h.ns(), addr("10.77.0.1"), UP).unwrap();
    }
    // Everyone reaches everyone, through the server's switch.
    for (from, to) in [
        (b, "10.77.0.3"),
        (b, "10.77.0.4"),
        (c, "10.77.0.4"),
        (d, "10.77.0.2"),
        (c, "fd77::2"),
    ] {
        let p = ping(from.ns(), addr(to), 3, Duration::from_secs(5)).unwrap();
        assert!(p.all_answered(), "{} to {to}: {}", from.tag(), p.output);
    }
    // Capture ICMP on carol's and bob's devices while alice pings bob: bob sees it, carol
    // must not see a single frame addressed to bob.
    let capture = |h: &ferrotun_lab::Host, label: &str| {
        let mut cmd = h.command("tcpdump");
        cmd.args(["-i", "ftun1", "-n", "-l", "-e", "-U", "icmp"]);
        lab.spawn(label, &mut cmd).unwrap()
    };
    let mut on_carol = capture(d, "tcpdump-carol");
    let mut on_bob = capture(c, "tcpdump-bob");
    // tcpdump needs a moment: wait until each capture has seen a ping of its own host.
    for (h, cap, me) in [
        (d, &mut on_carol, "10.77.0.4"),
        (c, &mut on_bob, "10.77.0.3"),
    ] {
        wait_until(
            format!("tcpdump on {} capturing", h.tag()),
            Duration::from_secs(10),
            || {
                let _ = ping(a.ns(), addr(me), 1, Duration::from_secs(1));
                cap.stdout().contains(&format!("> {me}:"))
            },
        )
        .unwrap();
    }
    let p = ping(b.ns(), addr("10.77.0.3"), 20, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "{}", p.output);
    wait_until(
        "bob's capture saw alice's pings",
        Duration::from_secs(5),
        || {
            on_bob
                .stdout()
                .matches("10.77.0.2 > 10.77.0.3: ICMP echo request")
                .count()
                >= 20
        },
    )
    .unwrap();
    on_bob.signal(Signal::Int).unwrap();
    on_carol.signal(Signal::Int).unwrap();
    let _ = on_carol.wait_timeout(Duration::from_secs(5));
    let seen = on_carol.stdout();
    assert!(
        !seen.contains("02:77:00:00:00:03") && !seen.contains("> 10.77.0.3:"),
        "carol saw frames for bob:\n{seen}"
    );
    let s = show_json(&lab, "server");
    assert!(s["mac_table_entries"].as_u64().unwrap() >= 4, "{s:#}");
}

/// Kills the server and starts it again; the client must carry traffic again without
/// being touched.
fn reconnect(t: T) {
    let mut cell = cell_up(t, false, false);
    let (lab, a, b) = (&cell.lab, cell.lab.a(), cell.lab.b());
    cell.server.kill(Duration::from_millis(10)).unwrap();
    drop(cell.server);
    wait_until(
        "the server's interface to go",
        Duration::from_secs(10),
        || !has_interface(a, "ftun0"),
    )
    .unwrap();
    let p = ping(b.ns(), addr("10.77.0.1"), 3, Duration::from_secs(2)).unwrap();
    assert_eq!(p.received, 0, "nothing answers while the server is down");
    let t0 = Instant::now();
    let _server = start_server(lab, a, &cell.scfg);
    wait_for_ping(b.ns(), addr("10.77.0.1"), Duration::from_secs(40)).expect("traffic resumes");
    eprintln!(
        "traffic resumed {:?} after the server restarted",
        t0.elapsed()
    );
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 4 * MB);
    let client = cell.client.as_mut().expect("cell_up started it");
    assert!(client.is_running().unwrap(), "the client kept running");
    assert!(has_interface(b, "ftun1"));
}

/// The established TCP connections in `host`'s namespace that match the `ss` filter, as
/// `local peer` address pairs.
fn tunnel_connections(host: &ferrotun_lab::Host, filter: &str) -> Vec<String> {
    let out = host
        .command("ss")
        .args(["-Htn", "state", "established", filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn a_tcp_connection_the_peer_left_half_open_is_closed_when_it_comes_back() {
    let mut cell = cell_up(T::Tcp, false, false);
    let (lab, a, b) = (&cell.lab, cell.lab.a(), cell.lab.b());
    // The client's side of its connection: its port, to cut just that connection off.
    let old = tunnel_connections(b, "( dport = :51820 )");
    assert_eq!(old.len(), 1, "{old:?}");
    let port: u16 = old[0]
        .split_whitespace()
        .next()
        .and_then(|local| local.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a port in {old:?}"));
    // From now on nothing of that connection passes in either direction, so the server
    // never hears that the client went away: the connection is half-open.
    let cut = |hook, m: String| {
        LossRule::percent(100)
            .unwrap()
            .hook(hook)
            .matching(m)
            .install(b.ns())
            .unwrap()
    };
    let _cut_out = cut(Hook::Output, format!("tcp sport {port}"));
    let _cut_in = cut(Hook::Input, format!("tcp dport {port}"));
    let mut client = cell.client.take().expect("cell_up started it");
    client.kill(Duration::from_millis(10)).unwrap();
    drop(client);
    wait_until(
        "the client's interface to go",
        Duration::from_secs(10),
        || !has_interface(b, "ftun1"),
    )
    .unwrap();
    assert_eq!(
        tunnel_connections(a, "( sport = :51820 )").len(),
        1,
        "the server still holds the old connection"
    );
    // The client comes back on a new connection. The server must close the old one.
    let _client = start_client(lab, b, "client2", &cell.ccfg);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    wait_until(
        "the server to keep one connection",
        Duration::from_secs(10),
        || {
            let open = tunnel_connections(a, "( sport = :51820 )");
            open.len() == 1 && !open[0].ends_with(&format!(":{port}"))
        },
    )
    .unwrap();
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 4 * MB);
}

/// An initiation to the server whose public key is `server_pub` that passes mac1, from a
/// key no peer has: the server does a Diffie-Hellman for it unless it is under load.
fn stranger_initiation(server_pub: &str) -> [u8; 148] {
    use ferrotun_proto::handshake::PeerHandshake;
    use ferrotun_proto::{Identity, OsEntropy, PresharedKey, PrivateKey};
    let server = ferrotun_proto::PublicKey::from_base64(server_pub.trim()).unwrap();
    let stranger = Identity::new(PrivateKey::generate(&mut OsEntropy).unwrap());
    let mut hs = PeerHandshake::new(
        std::sync::Arc::new(stranger),
        server,
        PresharedKey::default(),
    )
    .unwrap();
    initiation(&mut hs, 7)
}

/// A handshake initiation from `hs` with our index `index`, no flags, stamped now.
fn initiation(hs: &mut ferrotun_proto::handshake::PeerHandshake, index: u32) -> [u8; 148] {
    use ferrotun_proto::{HandshakeFlags, OsEntropy, Tai64N};
    let mut msg = [0u8; 148];
    hs.create_initiation(
        index,
        HandshakeFlags::NONE,
        Tai64N::from_system_time(std::time::SystemTime::now()),
        Instant::now(),
        &mut OsEntropy,
        &mut msg,
    )
    .unwrap();
    msg
}

/// Floods the server at `to` with copies of one [`stranger_initiation`] until `stop` is
/// set.
fn handshake_flood(
    ns: &ferrotun_lab::Netns,
    from: &str,
    to: &str,
    server_pub: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let msg = stranger_initiation(server_pub);
    let socket = ns.udp_bind(sock(from)).unwrap();
    socket.connect(sock(to)).unwrap();
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..256 {
                // A full socket buffer (ENOBUFS) only means the flood is fast enough.
                let _ = socket.send(&msg);
            }
        }
    })
}

/// A TCP connection that streams initiations without completing a handshake is closed
/// after a few: it cannot keep the handshake queue full on its own.
#[test]
fn a_tcp_connection_that_streams_handshakes_is_closed_after_a_few() {
    let cell = cell_server(T::Tcp, false, false);
    let (lab, b) = (&cell.lab, cell.lab.b());
    let msg = stranger_initiation(&cell.cfg.read("keys/server.pub"));
    let n = |k: &str| show_json(lab, "server")["drops"][k].as_u64().unwrap_or(0);
    let before = n("handshake_unknown_peer");
    let mut conn = b
        .ns()
        .tcp_connect(sock("198.18.0.1:51820"), Duration::from_secs(5))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // 100 framed initiations (2-byte length prefix) in one write.
    let mut stream = Vec::new();
    for _ in 0..100 {
        stream.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        stream.extend_from_slice(&msg);
    }
    let t0 = Instant::now();
    conn.write_all(&stream).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)), "closed");
    // Before the 5 s deadline for a first handshake: closed for the flood, not the time.
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The control task saw 4 of them (each a Diffie-Hellman to find the key unknown).
    wait_until("the 4 admitted initiations handled", UP, || {
        n("handshake_unknown_peer") >= before + 4
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(n("handshake_unknown_peer"), before + 4);
    assert!(n("handshake_flood") >= 1);
}

/// A flood of initiations puts the server under load: it answers handshakes with cookies
/// instead of doing the Diffie-Hellman work. A client over TCP must still get in: its
/// address is proven by the TCP handshake, and it cannot be made to wait for a cookie
/// past the server's deadline for a connection's first handshake.
#[test]
fn a_tcp_client_gets_in_while_a_handshake_flood_keeps_the_server_under_load() {
    let cell = cell_server(T::Tcp, false, false);
    let (lab, b) = (&cell.lab, cell.lab.b());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_pub = cell.cfg.read("keys/server.pub");
    let floods: Vec<_> = ["198.18.0.2:0", "198.18.0.2:0"]
        .iter()
        .map(|from| handshake_flood(b.ns(), from, "198.18.0.1:51820", &server_pub, stop.clone()))
        .collect();
    // Under load before the client starts: the flood's initiations get cookie replies.
    let n = |k: &str| show_json(lab, "server")["drops"][k].as_u64().unwrap_or(0);
    wait_until("the server under load", UP, || n("cookie") >= 1000).unwrap();
    let before = n("cookie");
    let _client = start_client(lab, b, "client", &cell.ccfg);
    // Within the server's deadline for a connection's first handshake (5 s): a client
    // that had to wait for a cookie would miss it, connect again, and again.
    let up = wait_for_ping(b.ns(), addr("10.77.0.1"), Duration::from_secs(5));
    // The flood still gets cookie replies once the client is in: the server was under
    // load before the client started and after it got in. (Read with a deadline: once, in
    // CI with other tests running, no cookie reply fell between the two reads.)
    let lasted = wait_until("more cookie replies", UP, || n("cookie") > before);
    let after = n("cookie");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in floods {
        t.join().unwrap();
    }
    up.expect("the TCP client is in despite the flood");
    lasted.unwrap_or_else(|e| panic!("the load lasted: {before} -> {after} cookie replies: {e}"));
    let c = show_json(lab, "client");
    assert_eq!(c["peers"][0]["transport"], "tcp", "{c:#}");
}

#[test]
fn the_client_reconnects_over_udp_after_the_server_restarts() {
    reconnect(T::Udp);
}

#[test]
fn the_client_reconnects_over_tcp_after_the_server_restarts() {
    reconnect(T::Tcp);
}

#[test]
fn tcp_garbage_closes_only_that_connection() {
    let lab = Lab::star(3).unwrap();
    let cfg = Configs::new();
    let (a, b, c) = (lab.a(), lab.b(), lab.host("c").unwrap());
    let (scfg, ccfg) = cell_configs(&cfg, T::Tcp, false, false);
    let _server = start_server(&lab, a, &scfg);
    let _client = start_client(&lab, b, "client", &ccfg);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    let closed = std::thread::scope(|s| {
        let garbage = s.spawn(|| {
            let mut closed = 0;
            let mut x: u32 = 0x9e37_79b9;
            for _ in 0..20 {
                let mut conn = c
                    .ns()
                    .tcp_connect(sock("198.18.0.1:51820"), Duration::from_secs(5))
                    .unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut junk = [0u8; 512];
                for byte in junk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *byte = x as u8;
                }
                let _ = conn.write_all(&junk);
                let mut buf = [0u8; 64];
                // The server closes the connection: read sees the end (or a reset).
                if matches!(conn.read(&mut buf), Ok(0) | Err(_)) {
                    closed += 1;
                }
            }
            closed
        });
        transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
        garbage.join().unwrap()
    });
    assert_eq!(closed, 20, "every garbage connection was closed");
    let s = show_json(&lab, "server");
    assert!(
        s["drops"]["tcp_closed"].as_u64().unwrap_or(0) >= 20,
        "{s:#}"
    );
    // An idle connection that never sends a handshake is closed after its deadline.
    let mut idle = c
        .ns()
        .tcp_connect(sock("198.18.0.1:51820"), Duration::from_secs(5))
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 8];
    assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
}

#[test]
fn sighup_adds_and_removes_peers_while_a_third_keeps_its_transfer() {
    let lab = Lab::star(4).unwrap();
    let cfg = Configs::new();
    let (a, b, c, d) = (
        lab.a(),
        lab.b(),
        lab.host("c").unwrap(),
        lab.host("d").unwrap(),
    );
    let carol_cfg = carol(&cfg);
    // Bob and carol each bring a prefix outside the interface's own, so the reload must
    // remove bob's route and add carol's.
    let extra = |file: &str, ip: &str, prefix: &str| {
        let text = cfg.read(file).replace(
            &format!("\"{ip}/32\""),
            &format!("\"{ip}/32\", \"{prefix}\""),
        );
        assert!(text.contains(prefix), "{file}: {text}");
        std::fs::write(cfg.path(file), text).unwrap();
    };
    extra("peers/bob.toml", "10.77.0.3", "10.99.3.0/24");
    extra("carol.peer", "10.77.0.4", "10.99.4.0/24");
    let route = |prefix: &str| {
        let out = a
            .command("ip")
            .args(["route", "show", prefix])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut server = start_server(&lab, a, &cfg.server());
    let _alice = start_client(&lab, b, "alice", &cfg.client());
    let _bob = start_client(&lab, c, "bob", &bob(&cfg));
    let _carol = start_client(&lab, d, "carol", &carol_cfg);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    wait_for_ping(c.ns(), addr("10.77.0.1"), UP).unwrap();
    let p = ping(d.ns(), addr("10.77.0.1"), 2, Duration::from_secs(2)).unwrap();
    assert_eq!(p.received, 0, "carol is not a peer yet");
    let handshakes = |name: &str| {
        let s = show_json(&lab, "server");
        let p = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned();
        p.map(|p| p["handshakes"].as_u64().unwrap())
    };
    let alice_before = handshakes("alice").unwrap();
    let _limit = b.rate_limit(30_000_000).unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(|| transfer(a.ns(), "10.77.0.1:0", b.ns(), 12 * MB));
        std::thread::sleep(Duration::from_millis(500));
        std::fs::remove_file(cfg.path("peers/bob.toml")).unwrap();
        std::fs::copy(cfg.path("carol.peer"), cfg.path("peers/carol.toml")).unwrap();
        assert!(route("10.99.3.0/24").contains("dev ftun0"), "bob's route");
        assert_eq!(route("10.99.4.0/24"), "", "no route for carol yet");
        server.signal(Signal::Hup).unwrap();
        server
            .wait_for_output("SIGHUP: peers reloaded", Duration::from_secs(5))
            .unwrap();
        assert_eq!(route("10.99.3.0/24"), "", "bob's route went with him");
        assert!(route("10.99.4.0/24").contains("dev ftun0"), "carol's route");
        assert!(
            !t.is_finished(),
            "the transfer should outlast the reload; slow it down more"
        );
        wait_for_ping(d.ns(), addr("10.77.0.1"), Duration::from_secs(20)).expect("carol gets in");
        let p = ping(c.ns(), addr("10.77.0.1"), 3, Duration::from_secs(3)).unwrap();
        assert_eq!(p.received, 0, "bob is cut off: {}", p.output);
        t.join().unwrap();
    });
    assert_eq!(
        handshakes("alice"),
        Some(alice_before),
        "alice kept her session"
    );
    assert_eq!(handshakes("bob"), None);
    // A reload with a broken file keeps the running peers.
    std::fs::write(cfg.path("peers/broken.toml"), "public_key = 12\n").unwrap();
    server.signal(Signal::Hup).unwrap();
    server
        .wait_for_output(
            "SIGHUP: keeping the running configuration",
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        server.stderr().contains("broken.toml:1:14"),
        "{}",
        server.stderr()
    );
    let p = ping(d.ns(), addr("10.77.0.1"), 3, Duration::from_secs(3)).unwrap();
    assert!(p.all_answered(), "carol still in: {}", p.output);
}

#[test]
fn show_reports_the_bytes_that_crossed() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let _server = start_server(&lab, a, &cfg.server());
    let _client = start_client(&lab, b, "client", &cfg.client());
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    let before_c = show_json(&lab, "client")["peers"][0].clone();
    let before_s = show_json(&lab, "server")["peers"][0].clone();
    // 1000 datagrams of 1000 bytes: each is 1028 bytes of IPv4 packet in the tunnel.
    let sink = UdpSink::bind(a.ns(), sock("10.77.0.1:7000")).unwrap();
    let tx = b.ns().udp_bind(sock("10.77.0.2:0")).unwrap();
    // In steps of 50, each waited for: a burst beyond the device's queue (500 packets)
    // would be dropped by the kernel before ferrotun sees it.
    for step in 0..20u64 {
        send_sequence(
            &tx,
            sock("10.77.0.1:7000"),
            step * 50..(step + 1) * 50,
            1000,
        )
        .unwrap();
        sink.wait_for_count((step as usize + 1) * 50, Duration::from_secs(10))
            .unwrap();
    }
    let after_c = show_json(&lab, "client")["peers"][0].clone();
    let after_s = show_json(&lab, "server")["peers"][0].clone();
    let delta = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        a[k].as_u64().unwrap() - b[k].as_u64().unwrap()
    };
    let sent = delta(&after_c, &before_c, "tx_bytes");
    let got = delta(&after_s, &before_s, "rx_bytes");
    let want = 1000 * 1028;
    // Keepalives carry no bytes; anything else the hosts send meanwhile is small.
    assert!(
        (want..want + 8_000).contains(&sent),
        "client sent {sent}, want about {want}"
    );
    assert!(
        (want..want + 8_000).contains(&got),
        "server received {got}, want about {want}"
    );
    assert!(delta(&after_c, &before_c, "tx_packets") >= 1000);
    assert_eq!(after_s["name"], "alice");
    assert!(after_s["latest_handshake_seconds_ago"].as_u64().unwrap() < 60);
    // The text form names the peer and its transfer.
    let out = std::process::Command::new(server_bin())
        .args(["show", "--socket"])
        .arg(socket_path(&lab, "server"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("interface: ftun0 (tun)"), "{text}");
    assert!(
        text.contains("peer: alice") && text.contains("transfer: "),
        "{text}"
    );
    // The socket answers nothing but show.
    let mut raw = std::os::unix::net::UnixStream::connect(socket_path(&lab, "server")).unwrap();
    raw.write_all(b"reload\n").unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("error: unknown request"), "{reply}");
}

/// The uid and every thread's effective capabilities of a process.
fn creds(pid: u32) -> (u32, Vec<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let caps = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let v = s.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap();
            u64::from_str_radix(v.trim(), 16).unwrap()
        })
        .collect();
    (uid, caps)
}

#[test]
fn after_setup_both_sides_run_as_nobody_without_capabilities() {
    let lab = Lab::star(3).unwrap();
    let cfg = Configs::new();
    let (a, b, d) = (lab.a(), lab.b(), lab.host("c").unwrap());
    let nobody = "mtu = 1420\nuser = \"65534\"\ngroup = \"65534\"";
    let scfg = cfg.variant(
        "server.toml",
        "nobody-server.toml",
        &[("mtu = 1420", nobody)],
    );
    let ccfg = cfg.variant(
        "client.toml",
        "nobody-client.toml",
        &[("mtu = 1420", nobody)],
    );
    let carol_cfg = carol(&cfg);
    // The server rereads its files on SIGHUP as nobody: they must be readable by it.
    let st = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(cfg.path(""))
        .status()
        .unwrap();
    assert!(st.success());
    let mut server = start_server(&lab, a, &scfg);
    let client = start_client(&lab, b, "client", &ccfg);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    for (who, pid) in [("server", server.pid()), ("client", client.pid())] {
        let (uid, caps) = creds(pid);
        assert_eq!(uid, 65534, "{who} runs as nobody");
        assert!(
            caps.iter().all(|c| *c == 0),
            "{who}'s threads keep capabilities: {caps:x?}"
        );
    }
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
    // Reload still works unprivileged: a new peer gets in.
    std::fs::copy(cfg.path("carol.peer"), cfg.path("peers/carol.toml")).unwrap();
    server.signal(Signal::Hup).unwrap();
    server
        .wait_for_output("SIGHUP: peers reloaded", Duration::from_secs(5))
        .unwrap();
    let _carol = start_client(&lab, d, "carol", &carol_cfg);
    wait_for_ping(d.ns(), addr("10.77.0.1"), UP).expect("carol gets in after a reload as nobody");
    assert_eq!(
        show_json(&lab, "server")["peers"].as_array().unwrap().len(),
        3
    );
    assert_eq!(stop(&mut server), 0, "{}", server.stderr());
    assert!(!has_interface(a, "ftun0"));
}
