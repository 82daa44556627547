use super::*;
use ferrotun_proto::SeededEntropy;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
    fn key(&self, name: &str, seed: u64) -> PublicKey {
        let k = PrivateKey::generate(&mut SeededEntropy::new(seed)).unwrap();
        self.write(name, &format!("{}\n", k.to_base64().as_str()));
        k.public_key()
    }
}

const SERVER: &str = r#"
[interface]
mode = "tun"
name = "ftun0"
mtu = 1420
address = ["10.77.0.1/24", "fd77::1/64"]
private_key_file = "server.key"

[listen]
udp = "0.0.0.0:51820"

[peers]
dir = "peers"
"#;

fn server_dir() -> (Dir, PublicKey) {
    let d = Dir::new();
    d.key("server.key", 1);
    let alice = d.key("alice.key", 2);
    let bob = d.key("bob.key", 3);
    d.write("server.toml", SERVER);
    d.write(
        "peers/alice.toml",
        &format!("public_key = \"{alice}\"\nallowed_ips = [\"10.77.0.2/32\", \"fd77::2/128\"]\n"),
    );
    d.write(
        "peers/bob.toml",
        &format!("public_key = \"{bob}\"\nallowed_ips = [\"10.77.0.3/32\"]\ncompress = true\nkeepalive = 25\n"),
    );
    d.write("peers/README", "not a peer file, ignored");
    (d, alice)
}

fn server_err(d: &Dir) -> String {
    ServerConfig::load(&d.path("server.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn a_valid_server_config_loads_with_its_peers() {
    let (d, alice) = server_dir();
    let c = ServerConfig::load(&d.path("server.toml")).unwrap();
    assert_eq!(c.interface.name, "ftun0");
    assert_eq!(c.interface.mtu, 1420);
    assert_eq!(c.interface.mode, Mode::Tun);
    assert_eq!(c.interface.addresses.len(), 2);
    assert_eq!(c.listen_udp, Some("0.0.0.0:51820".parse().unwrap()));
    assert_eq!(c.listen_tcp, None);
    let names: Vec<_> = c.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(c.peers[0].public_key, alice);
    assert_eq!(
        c.peers[0].allowed_ips[1],
        "fd77::2/128".parse::<IpNet>().unwrap()
    );
    assert!(!c.peers[0].compress && c.peers[1].compress);
    assert_eq!(c.peers[1].keepalive, Some(Duration::from_secs(25)));
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let (d, _) = server_dir();
    d.write(
        "server.toml",
        &SERVER.replace("mtu = 1420", "mtu = 1420\nprotocol = \"wireguard\""),
    );
    let e = server_err(&d);
    assert!(
        e.starts_with(&format!("{}:6:1: ", d.path("server.toml").display())),
        "{e}"
    );
    assert!(e.contains("protocol"), "{e}");
}

#[test]
fn bad_values_point_at_the_value() {
    let (d, _) = server_dir();
    let cases = [
        ("mode = \"tun\"", "mode = \"tup\"", "3:8", "unknown variant"),
        (
            "mtu = 1420",
            "mtu = 70000",
            "5:7",
            "mtu 70000 is outside 576..=65400",
        ),
        (
            "mtu = 1420",
            "mtu = 1000",
            "6:28",
            "needs an mtu of at least 1280",
        ),
        (
            "mtu = 1420",
            "queues = 0\nmtu = 1420",
            "5:10",
            "queues 0 is outside 1..=64",
        ),
        (
            "mtu = 1420",
            "queues = 65\nmtu = 1420",
            "5:10",
            "queues 65 is outside 1..=64",
        ),
        (
            "mtu = 1420",
            "aead_backend = \"openssl\"\nmtu = 1420",
            "5:16",
            "aead_backend \"openssl\" is not one of \"auto\", \"avx512\", \"ring\", \"rustcrypto\"",
        ),
        (
            "\"10.77.0.1/24\"",
            "\"10.77.0.1\"",
            "6:12",
            "needs a prefix length",
        ),
        (
            "\"10.77.0.1/24\"",
            "\"10.77.0.300/24\"",
            "6:12",
            "is not an IPv4 or IPv6 address",
        ),
        (
            "name = \"ftun0\"",
            "name = \"this-name-is-too-long\"",
            "4:8",
            "longer than 15 bytes",
        ),
        (
            "udp = \"0.0.0.0:51820\"",
            "udp = \"0.0.0.0\"",
            "10:7",
            "is not an address and port",
        ),
        (
            "udp = \"0.0.0.0:51820\"",
            "",
            "9:1",
            "[listen] needs udp, tcp or both",
        ),
        (
            "dir = \"peers\"",
            "dir = \"nowhere\"",
            "13:7",
            "does not exist",
        ),
        (
            "\"server.key\"",
            "\"missing.key\"",
            "7:20",
            "missing.key: No such file",
        ),
    ];
    for (from, to, pos, what) in cases {
        d.write("server.toml", &SERVER.replace(from, to));
        let e = server_err(&d);
        let want = format!("{}:{pos}: ", d.path("server.toml").display());
        assert!(e.starts_with(&want), "{to}: want {want}, got {e}");
        assert!(e.contains(what), "{to}: want {what:?} in {e}");
    }
}

#[test]
fn a_bad_key_file_is_named_with_the_line_that_names_it() {
    let (d, _) = server_dir();
    d.write("server.key", "not-a-key\n");
    let e = server_err(&d);
    assert!(
        e.starts_with(&format!(
            "{}:7:20: private_key_file ",
            d.path("server.toml").display()
        )),
        "{e}"
    );
    assert!(e.contains("does not hold a private key"), "{e}");
}

#[test]
fn peer_file_errors_name_the_peer_file() {
    let (d, alice) = server_dir();
    d.write("peers/carol.toml", "public_key = \"abc\"\n");
    let e = server_err(&d);
    assert!(
        e.starts_with(&format!(
            "{}:1:14: public_key is not a valid key",
            d.path("peers/carol.toml").display()
        )),
        "{e}"
    );

    d.write("peers/carol.toml", &format!("public_key = \"{alice}\"\n"));
    let e = server_err(&d);
    assert!(e.contains("carol.toml: public_key is also used by"), "{e}");

    let carol = d.key("carol.key", 4);
    d.write(
        "peers/carol.toml",
        &format!("public_key = \"{carol}\"\nallowed_ips = [\"10.77.0.2/32\"]\n"),
    );
    let e = server_err(&d);
    assert!(
        e.contains("allowed_ips entry 10.77.0.2/32 is also used by"),
        "{e}"
    );

    d.write(
        "peers/carol.toml",
        &format!("public_key = \"{carol}\"\nallowed_ips = [\"10.77.0.5/24\"]\n"),
    );
    let e = server_err(&d);
    assert!(
        e.contains(
            "2:16: allowed_ips entry \"10.77.0.5/24\" has host bits set; did you mean 10.77.0.0/24?"
        ),
        "{e}"
    );

    d.write(
        "peers/carol.toml",
        &format!("public_key = \"{carol}\"\nkeepalive = -1\n"),
    );
    assert!(server_err(&d).contains("2:13: keepalive -1 is outside"));

    d.write(
        "peers/carol.toml",
        &format!("public_key = \"{carol}\"\nallowed = []\n"),
    );
    assert!(server_err(&d).contains("2:1: unknown field `allowed`"));
}

const CLIENT: &str = r#"
[interface]
name = "ftun1"
address = ["10.77.0.2/24"]
private_key_file = "client.key"

[server]
endpoint = "198.18.0.1:51820"
public_key = "PUB"
allowed_ips = ["10.77.0.0/24"]
"#;

#[test]
fn a_client_config_loads_with_defaults() {
    let d = Dir::new();
    d.key("client.key", 7);
    let server = d.key("server.key", 8);
    let p = d.write("client.toml", &CLIENT.replace("PUB", &server.to_base64()));
    let c = ClientConfig::load(&p).unwrap();
    assert_eq!(c.interface.mtu, DEFAULT_MTU);
    assert_eq!(c.interface.queues, 1);
    assert_eq!(
        c.interface.aead_backend,
        ferrotun_proto::AeadBackend::default()
    );
    assert_eq!(c.transport, Transport::Udp);
    assert!(c.persist);
    assert_eq!(
        c.endpoint,
        Endpoint {
            host: "198.18.0.1".into(),
            port: 51820
        }
    );
    assert_eq!(c.server.public_key, server);
    assert_eq!(c.server.keepalive, None);
}

#[test]
fn endpoints_take_names_and_bracketed_ipv6() {
    let d = Dir::new();
    d.key("client.key", 7);
    let server = d.key("server.key", 8);
    let text = CLIENT.replace("PUB", &server.to_base64());
    for (ep, want) in [
        ("[fd18::1]:51820", Some(("fd18::1", 51820))),
        ("vpn.example.net:443", Some(("vpn.example.net", 443))),
        ("fd18::1:51820", None),
        ("198.18.0.1", None),
        ("198.18.0.1:0", None),
        ("198.18.0.1:99999", None),
        ("bad host:1", None),
    ] {
        let p = d.write("client.toml", &text.replace("198.18.0.1:51820", ep));
        match (ClientConfig::load(&p), want) {
            (Ok(c), Some((h, port))) => assert_eq!(
                c.endpoint,
                Endpoint {
                    host: h.into(),
                    port
                }
            ),
            (Err(e), None) => {
                let e = e.to_string();
                assert!(e.contains(":8:12: endpoint"), "{ep}: {e}");
            }
            (r, w) => panic!("{ep}: got {r:?}, want {w:?}"),
        }
    }
}

#[test]
fn mac_addresses_parse_and_refuse_multicast() {
    assert_eq!(parse_mac("02:00:00:00:00:01"), Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(parse_mac("01:00:5e:00:00:01"), None);
    assert_eq!(parse_mac("02:00:00:00:00"), None);
    assert_eq!(parse_mac("02:00:00:00:00:01:02"), None);
    assert_eq!(parse_mac("2:00:00:00:00:01"), None);
    assert_eq!(parse_mac("00:00:00:00:00:00"), None);
}

#[test]
fn aead_backend_names_each_implementation() {
    use ferrotun_proto::AeadBackend;
    let d = Dir::new();
    d.key("client.key", 7);
    let server = d.key("server.key", 8);
    let base = CLIENT.replace("PUB", &server.to_base64());
    for (name, want) in [
        ("auto", AeadBackend::default()),
        ("ring", AeadBackend::Ring),
        ("rustcrypto", AeadBackend::RustCrypto),
        ("avx512", AeadBackend::Avx512),
    ] {
        let text = base.replace(
            "name = \"ftun1\"",
            &format!("name = \"ftun1\"\naead_backend = \"{name}\""),
        );
        assert_ne!(text, base);
        let p = d.write("client.toml", &text);
        match ClientConfig::load(&p) {
            Ok(c) => assert_eq!(c.interface.aead_backend, want, "{name}"),
            // Only avx512, and only on a CPU without it, may be refused.
            Err(e) => {
                assert!(
                    name == "avx512" && !AeadBackend::Avx512.is_available(),
                    "{name}: {e}"
                );
                assert!(e.to_string().contains("needs a CPU with AVX-512F"), "{e}");
            }
        }
    }
}
