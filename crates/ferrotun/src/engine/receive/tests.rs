//! The pipeline's steps that decide, called alone: no device, no socket, no runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrotun_device::Mode;
use ferrotun_proto::{AeadBackend, Identity, Keypair, PayloadFlags, PrivateKey};

use super::super::peer::Peer;
use super::super::switch::{LOCAL, Switch};
use super::super::table::{PeerTable, make_peer};
use super::{IpRefused, NoKeypair, Port, check_ip, flags_fit, lookup, switch_port};
use crate::config::PeerConfig;

/// A peer in `slot` that may use `allowed`.
fn peer(slot: u32, allowed: &[&str]) -> Arc<Peer> {
    let identity = Arc::new(Identity::new(PrivateKey::from_bytes([0x11; 32])));
    let pc = PeerConfig {
        name: format!("p{slot}"),
        public_key: PrivateKey::from_bytes([0x40 + slot as u8; 32]).public_key(),
        allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
        preshared_key: None,
        compress: false,
        keepalive: None,
    };
    make_peer(&identity, Mode::Tun, slot, &pc, AeadBackend::Ring).unwrap()
}

/// An IPv4 packet of `len` bytes from `src` carrying `protocol`, then `pad` zero bytes.
fn ipv4(src: [u8; 4], protocol: u8, len: usize, pad: usize) -> Vec<u8> {
    let mut p = vec![0u8; len + pad];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = protocol;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[10, 0, 0, 1]);
    p
}

#[test]
fn flags_fit_the_mode_and_the_peers_compression() {
    let none = PayloadFlags::NONE;
    let lz = PayloadFlags::COMPRESSED;
    let eth = PayloadFlags::ETHERNET;
    let partial = PayloadFlags::PARTIAL_CHECKSUM;
    for (mode, compress, flags, fits) in [
        (Mode::Tun, false, none, true),
        (Mode::Tun, false, partial, true),
        (Mode::Tun, false, lz, false),
        (Mode::Tun, true, lz.union(partial), true),
        (Mode::Tun, false, eth, false),
        (Mode::Tap, false, eth, true),
        (Mode::Tap, false, none, false),
        (Mode::Tap, false, eth.union(partial), false),
        (Mode::Tap, false, eth.union(lz), false),
        (Mode::Tap, true, eth.union(lz), true),
    ] {
        assert_eq!(
            flags_fit(mode, compress, flags),
            fits,
            "{mode:?}, compress {compress}, flags {flags:?}"
        );
    }
}

#[test]
fn a_tun_packet_must_come_from_its_peers_allowed_ips() {
    let table = PeerTable::new(vec![peer(0, &["10.0.0.2/32"]), peer(1, &["10.0.0.3/32"])]);
    // Padding after the IP packet is trimmed by its length.
    let udp = ipv4([10, 0, 0, 2], 17, 60, 4);
    assert_eq!(check_ip(&table, 0, &udp, false), Ok(60));
    assert_eq!(
        check_ip(&table, 0, &udp, true),
        Ok(60),
        "UDP has a checksum field"
    );
    // Another peer's address, and one nobody has.
    assert_eq!(
        check_ip(&table, 1, &udp, false),
        Err(IpRefused::Outside(Some([10, 0, 0, 2].into())))
    );
    let stranger = ipv4([10, 9, 9, 9], 17, 60, 0);
    assert_eq!(
        check_ip(&table, 0, &stranger, false),
        Err(IpRefused::Outside(Some([10, 9, 9, 9].into())))
    );
    // Not an IP packet that fits its payload.
    assert_eq!(
        check_ip(&table, 0, &[0x45; 10], false),
        Err(IpRefused::NotIp)
    );
    assert_eq!(
        check_ip(&table, 0, &udp[..50], false),
        Err(IpRefused::NotIp)
    );
    // ICMP has no checksum field a receiver could complete.
    let icmp = ipv4([10, 0, 0, 2], 1, 60, 0);
    assert_eq!(check_ip(&table, 0, &icmp, false), Ok(60));
    assert_eq!(
        check_ip(&table, 0, &icmp, true),
        Err(IpRefused::NoChecksumField)
    );
}

#[test]
fn the_switch_learns_and_picks_a_port() {
    let (a, b, me) = (
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
        [2, 0, 0, 0, 0, 0xc],
    );
    let frame = |dst: [u8; 6], src: [u8; 6]| {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    };
    let s = Switch::default();
    s.learn(me, LOCAL, 1);
    // Unknown and group destinations flood; the source is learned on the way.
    assert_eq!(switch_port(&s, true, 1, &frame(b, a), 1), Some(Port::Flood));
    assert_eq!(s.lookup(&a), Some(1));
    assert_eq!(
        switch_port(&s, true, 2, &frame([0xff; 6], b), 1),
        Some(Port::Flood)
    );
    // Known destinations: our device, another peer, or back where it came from.
    assert_eq!(
        switch_port(&s, true, 1, &frame(me, a), 2),
        Some(Port::Device)
    );
    assert_eq!(
        switch_port(&s, true, 1, &frame(b, a), 2),
        Some(Port::Peer(2))
    );
    assert_eq!(
        switch_port(&s, true, 2, &frame(b, b), 2),
        Some(Port::Hairpin)
    );
    // A client has one port; a frame too short to switch goes nowhere.
    assert_eq!(
        switch_port(&s, false, 0, &frame(b, a), 2),
        Some(Port::Device)
    );
    assert_eq!(switch_port(&s, true, 1, &frame(b, a)[..11], 2), None);
}

#[test]
fn a_run_finds_its_keypair_once_and_not_an_expired_or_unknown_one() {
    let now = Instant::now();
    let p = peer(3, &["10.0.0.2/32"]);
    let index = (3 << 8) | 1;
    let kp = Arc::new(Keypair::new(
        AeadBackend::Ring,
        &[1; 32],
        &[2; 32],
        index,
        9,
        now,
        false,
    ));
    p.recv_keypairs.store(Arc::new(vec![kp.clone()]));
    let table = PeerTable::new(vec![p]);
    let mut last = None;
    match lookup(&table, &mut last, index, now) {
        Ok((peer, found)) => assert!(peer.slot == 3 && std::ptr::eq(found, &*kp)),
        Err(_) => panic!("the keypair is there"),
    }
    // Kept for the next run: found again though the peer no longer lists it.
    table
        .get(3)
        .unwrap()
        .recv_keypairs
        .store(Arc::new(Vec::new()));
    assert!(lookup(&table, &mut last, index, now).is_ok());
    // Another index of the same peer, a slot nobody has, a keypair past its lifetime.
    assert!(matches!(
        lookup(&table, &mut last, index + 1, now),
        Err(NoKeypair::Unknown)
    ));
    assert!(matches!(
        lookup(&table, &mut last, (7 << 8) | 1, now),
        Err(NoKeypair::Unknown)
    ));
    let mut last = Some((index, kp));
    let late = now + Duration::from_secs(180);
    assert!(matches!(
        lookup(&table, &mut last, index, late),
        Err(NoKeypair::Expired(p)) if p.slot == 3
    ));
}
