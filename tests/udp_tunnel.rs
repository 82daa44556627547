//! End-to-end tests of the UDP tunnel: the real `ferrotun-server` and `ferrotun-client`
//! binaries, started from the example configs, between network namespaces of the lab,
//! with real traffic through the tunnel (ping, sha256-checked TCP transfers) and real
//! faults on the underlay (address change, loss, reordering, duplication, garbage).

mod support;

use std::time::{Duration, Instant};

use ferrotun_lab::{Hook, Impairment, Lab, LossRule, Relay, ping, wait_for_ping};
use support::*;

#[test]
fn ping_and_transfer_over_ipv4_and_ipv6() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let _server = start_server(&lab, a, &cfg.server());
    let _client = start_client(&lab, b, "alice", &cfg.client());
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    let p = ping(b.ns(), addr("10.77.0.1"), 5, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "{}", p.output);
    let p = ping(b.ns(), addr("fd77::1"), 5, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "{}", p.output);
    let p = ping(a.ns(), addr("fd77::2"), 5, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "server to client: {}", p.output);
    // 20 MB each way, IPv4 one way and IPv6 the other.
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
    transfer(b.ns(), "[fd77::2]:0", a.ns(), 20 * MB);
}

#[test]
fn an_ipv6_underlay_carries_the_tunnel() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let client6 = cfg.variant(
        "client.toml",
        "client6.toml",
        &[(
            "endpoint = \"198.18.0.1:51820\"",
            &format!("endpoint = \"[{}]:51820\"", a.v6()),
        )],
    );
    let server = start_server(&lab, a, &cfg.server());
    let _client = start_client(&lab, b, "alice", &client6);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    transfer(a.ns(), "[fd77::1]:0", b.ns(), 4 * MB);
    let log = server.stderr();
    assert!(
        log.contains(&format!("endpoint=[{}]", b.v6())),
        "the server saw the client over IPv6:\n{log}"
    );
}

/// The second client's config: bob's key and addresses.
fn bob_config(cfg: &Configs) -> std::path::PathBuf {
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

#[test]
fn two_clients_reach_the_server_and_each_other_but_cannot_spoof() {
    let lab = Lab::star(3).unwrap();
    let cfg = Configs::new();
    let (a, b, c) = (lab.a(), lab.b(), lab.host("c").unwrap());
    a.ns().sysctl("net.ipv4.ip_forward", "1").unwrap();
    a.ns().sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let server = start_server(&lab, a, &cfg.server());
    let _alice = start_client(&lab, b, "alice", &cfg.client());
    let _bob = start_client(&lab, c, "bob", &bob_config(&cfg));
    for (host, server_addr) in [
        (b, "10.77.0.1"),
        (c, "10.77.0.1"),
        (b, "fd77::1"),
        (c, "fd77::1"),
    ] {
        wait_for_ping(host.ns(), addr(server_addr), UP).unwrap();
    }
    // Client to client, through the server.
    let p = ping(b.ns(), addr("10.77.0.3"), 5, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "alice to bob: {}", p.output);
    let p = ping(c.ns(), addr("fd77::2"), 5, Duration::from_secs(5)).unwrap();
    assert!(p.all_answered(), "bob to alice: {}", p.output);
    transfer(c.ns(), "10.77.0.3:0", b.ns(), 4 * MB);

    // Alice claims bob's address: her client sends it (it routes by destination only),
    // the server must drop it.
    b.ns()
        .ip(["addr", "add", "10.77.0.3/32", "dev", "ftun1"])
        .unwrap();
    let out = b
        .ns()
        .exec(
            "ping",
            [
                "-n",
                "-c",
                "3",
                "-i",
                "0.1",
                "-W",
                "1",
                "-I",
                "10.77.0.3",
                "10.77.0.1",
            ],
        )
        .unwrap_or_default();
    assert!(
        !out.contains("bytes from"),
        "a spoofed source got an answer: {out}"
    );
    let mut server = server;
    server
        .wait_for_output("outside its allowed_ips", Duration::from_secs(5))
        .expect("the server reports the spoofed packet");
    assert!(
        server
            .stderr()
            .contains("peer alice sent a packet from 10.77.0.3"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_client_with_an_unknown_key_gets_nothing_through() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let mallory = cfg.variant(
        "client.toml",
        "mallory.toml",
        &[("keys/alice.key", "keys/mallory.key")],
    );
    let mut server = start_server(&lab, a, &cfg.server());
    let client = start_client(&lab, b, "mallory", &mallory);
    let p = ping(b.ns(), addr("10.77.0.1"), 5, Duration::from_secs(3)).unwrap();
    assert_eq!(p.received, 0, "mallory got through: {}", p.output);
    server
        .wait_for_output("reason=\"handshake_unknown_peer\"", Duration::from_secs(5))
        .expect("the server counts the unknown initiator");
    let mallory_pub = cfg.read("keys/mallory.pub");
    assert!(
        server.stderr().contains(mallory_pub.trim()),
        "the log names the key"
    );
    assert!(
        !client.stderr().contains("tunnel up"),
        "{}",
        client.stderr()
    );
}

#[test]
fn a_transfer_survives_the_client_changing_its_underlay_address() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let mut server = start_server(&lab, a, &cfg.server());
    let _client = start_client(&lab, b, "alice", &cfg.client());
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    // Slow the client's uplink so that the transfer is still running when it moves.
    let _limit = b.rate_limit(40_000_000).unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(|| transfer(a.ns(), "10.77.0.1:0", b.ns(), 16 * MB));
        std::thread::sleep(Duration::from_millis(800));
        assert!(
            !t.is_finished(),
            "the transfer ended before the move; slow it down more"
        );
        b.set_v4("198.18.0.12".parse().unwrap()).unwrap();
        t.join().unwrap();
    });
    server
        .wait_for_output("peer roamed", Duration::from_secs(5))
        .expect("the server follows the client");
    assert!(
        server.stderr().contains("endpoint=198.18.0.12:"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_transfer_survives_loss_reordering_and_duplication() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    // The client talks to a relay in the server's namespace that reorders and duplicates;
    // an nftables rule drops 10% of what reaches the server's port.
    let relay = Relay::start(
        a.ns(),
        sock("198.18.0.1:61820"),
        sock("198.18.0.1:51820"),
        7,
    )
    .unwrap();
    relay
        .set(Impairment {
            reorder: 0.05,
            duplicate: 0.05,
            ..Impairment::NONE
        })
        .unwrap();
    let via_relay = cfg.variant(
        "client.toml",
        "relayed.toml",
        &[(
            "endpoint = \"198.18.0.1:51820\"",
            "endpoint = \"198.18.0.1:61820\"",
        )],
    );
    let _server = start_server(&lab, a, &cfg.server());
    let _client = start_client(&lab, b, "alice", &via_relay);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    let loss = LossRule::percent(10)
        .unwrap()
        .hook(Hook::Input)
        .udp_dport(51820)
        .install(a.ns())
        .unwrap();
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
    transfer(b.ns(), "10.77.0.2:0", a.ns(), 4 * MB);
    let dropped = loss.counters().unwrap().dropped;
    let stats = relay.stats();
    assert!(dropped > 100, "the loss rule dropped only {dropped}");
    assert!(
        stats.to_upstream.duplicated > 100 && stats.to_upstream.reordered > 100,
        "{stats}"
    );
    assert!(
        stats.to_client.duplicated > 10 && stats.to_client.reordered > 10,
        "{stats}"
    );
}

#[test]
fn garbage_datagrams_are_dropped_while_a_transfer_runs() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let mut server = start_server(&lab, a, &cfg.server());
    let _client = start_client(&lab, b, "alice", &cfg.client());
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = std::thread::scope(|s| {
        let noise = s.spawn(|| {
            let udp = b.ns().udp_bind(sock("198.18.0.2:0")).unwrap();
            let mut x: u64 = 0x1234_5678_9abc_def1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut sent = 0u64;
            let mut buf = [0u8; 300];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let len = (next() % 300) as usize;
                for byte in buf.iter_mut().take(len) {
                    *byte = next() as u8;
                }
                // Mostly plausible message types and lengths, to get past the first checks.
                match next() % 4 {
                    0 if len >= 32 => {
                        buf[0] = 4;
                        buf[1..4].fill(0);
                        // Half of them name the first peer's slot, so they get as far as
                        // the keypair lookup.
                        if next() % 2 == 0 {
                            buf[5..8].fill(0);
                        }
                    }
                    1 => {
                        buf[0] = 1;
                        buf[1..4].fill(0);
                    }
                    _ => {}
                }
                let n = match buf[0] {
                    1 => 148,
                    _ => len,
                };
                let _ = udp.send_to(&buf[..n.min(buf.len())], sock("198.18.0.1:51820"));
                sent += 1;
                if sent.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        });
        transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.join().unwrap()
    });
    assert!(sent > 1000, "only {sent} garbage datagrams were sent");
    for reason in ["malformed", "unknown_index", "handshake_invalid"] {
        server
            .wait_for_output(&format!("reason=\"{reason}\""), Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("no {reason} drop logged:\n{}", server.stderr()));
    }
    // The tunnel still works afterwards.
    let p = ping(b.ns(), addr("10.77.0.1"), 3, Duration::from_secs(3)).unwrap();
    assert!(p.all_answered(), "{}", p.output);
}

#[test]
fn a_bad_config_exits_2_with_its_line_and_leaves_no_interface() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let a = lab.a();
    let bad = cfg.variant("server.toml", "bad.toml", &[("mtu = 1420", "mtu = 70000")]);
    let line = cfg
        .read("bad.toml")
        .lines()
        .position(|l| l.starts_with("mtu = 70000"))
        .unwrap()
        + 1;
    let out = a
        .command(server_bin())
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("bad.toml:{line}:7: mtu 70000 is outside")),
        "{stderr}"
    );
    assert!(!has_interface(a, "ftun0"));
    // `check` says the same, and says nothing is wrong with the good one.
    let out = a
        .command(server_bin())
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("bad.toml:{line}:7:")));
    let out = a
        .command(server_bin())
        .args(["check", "-c"])
        .arg(cfg.server())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a
        .command(client_bin())
        .args(["check", "-c"])
        .arg(cfg.client())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_runs_the_down_hook_and_removes_the_interface() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let a = lab.a();
    let marks = cfg.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let hooked = cfg.variant(
        "server.toml",
        "hooked.toml",
        &[(
            "[hooks]",
            &format!(
                "[hooks]\nup = \"echo up $FERROTUN_INTERFACE $FERROTUN_MTU > {m}/up\"\ndown = \"ip link show $FERROTUN_INTERFACE > /dev/null && echo down $FERROTUN_INTERFACE > {m}/down\"",
                m = marks.display()
            ),
        )],
    );
    let mut server = start_server(&lab, a, &hooked);
    assert!(has_interface(a, "ftun0"));
    assert_eq!(
        std::fs::read_to_string(marks.join("up")).unwrap(),
        "up ftun0 1420\n"
    );
    let t = Instant::now();
    assert_eq!(stop(&mut server), 0, "{}", server.stderr());
    assert!(t.elapsed() < Duration::from_secs(5));
    // The down hook ran while the interface still existed.
    assert_eq!(
        std::fs::read_to_string(marks.join("down")).unwrap(),
        "down ftun0\n"
    );
    assert!(!has_interface(a, "ftun0"), "the interface is gone");
}

#[test]
fn a_failing_up_hook_stops_the_start_and_leaves_no_interface() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let a = lab.a();
    let hooked = cfg.variant(
        "server.toml",
        "failing.toml",
        &[("[hooks]", "[hooks]\nup = \"echo cannot do it >&2; exit 7\"")],
    );
    let out = a
        .command(server_bin())
        .arg("-c")
        .arg(&hooked)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("up hook failed (exit status: 7): cannot do it"),
        "{stderr}"
    );
    assert!(!has_interface(a, "ftun0"));
}

/// Runs a server with `cfg` on `host` that must refuse to start (exit 1); its stderr.
fn start_refused(host: &ferrotun_lab::Host, cfg: &std::path::Path) -> String {
    let out = host
        .command(server_bin())
        .arg("-c")
        .arg(cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn a_second_server_on_the_same_port_or_device_exits_1() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let a = lab.a();
    let _first = start_server(&lab, a, &cfg.server());
    let other_dev = cfg.variant(
        "server.toml",
        "other-dev.toml",
        &[("name = \"ftun0\"", "name = \"ftun9\"")],
    );
    let stderr = start_refused(a, &other_dev);
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!has_interface(a, "ftun9"), "nothing left behind");
    let other_port = cfg.variant(
        "server.toml",
        "other-port.toml",
        &[("[::]:51820", "[::]:51821")],
    );
    let stderr = start_refused(a, &other_port);
    assert!(stderr.contains("interface ftun0 is in use"), "{stderr}");
    assert!(
        has_interface(a, "ftun0"),
        "the first server's interface is untouched"
    );
}

#[test]
fn two_queues_carry_the_tunnel_and_their_shared_port_stays_ours() {
    let lab = Lab::two_hosts().unwrap();
    let cfg = Configs::new();
    let (a, b) = (lab.a(), lab.b());
    let two = [("mtu = 1420", "queues = 2\nmtu = 1420")];
    let server_cfg = cfg.variant("server.toml", "server-q2.toml", &two);
    let client_cfg = cfg.variant("client.toml", "client-q2.toml", &two);
    let _server = start_server(&lab, a, &server_cfg);
    let _client = start_client(&lab, b, "alice", &client_cfg);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).unwrap();
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
    transfer(b.ns(), "[fd77::2]:0", a.ns(), 20 * MB);
    // Each side counts packets for two device queues (one send task each), and together
    // they read at least the 20 MB that side sent (1420-byte packets at most). Which queue
    // a flow lands on is the kernel's choice, so neither count alone is asserted.
    for label in ["server", "alice"] {
        let show = show_json(&lab, label);
        let counts: Vec<u64> = show["queue_packets"]
            .as_array()
            .expect("queue_packets")
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(counts.len(), 2, "{label}: {show}");
        let total: u64 = counts.iter().sum();
        assert!(total >= 20 * MB / 1420, "{label} read {counts:?}");
    }
    // The server's two UDP sockets share port 51820 (SO_REUSEPORT) ...
    let ss = a
        .command("ss")
        .args(["-Huan", "sport", "=", ":51820"])
        .output()
        .unwrap();
    let sockets = String::from_utf8_lossy(&ss.stdout).lines().count();
    assert_eq!(sockets, 2, "{}", String::from_utf8_lossy(&ss.stdout));
    // ... and no second server joins them, even one that asks for the same sharing.
    let intruder = cfg.variant(
        "server-q2.toml",
        "intruder.toml",
        &[("name = \"ftun0\"", "name = \"ftun9\"")],
    );
    let stderr = start_refused(a, &intruder);
    assert!(stderr.contains("udp [::]:51820: in use"), "{stderr}");
    assert!(!has_interface(a, "ftun9"), "nothing left behind");
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 4 * MB);
}
