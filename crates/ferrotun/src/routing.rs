//! Cryptokey routing: which peer owns an inner IP address.
//!
//! [`AllowedIps`] maps IP prefixes to a peer and answers longest-prefix-match queries. The
//! send path asks it where a packet from the device goes (by destination); the receive
//! path asks it whether a decrypted packet's source belongs to the peer that sent it.
//!
//! The table keeps one hash map per prefix length that is in use, longest first, so a
//! lookup costs one masked hash probe per distinct length (typically two or three: /32,
//! /24, /128, /64), independent of the number of peers. The table is built once per
//! configuration (and on reload) and then only read, so the engine publishes it behind an
//! `ArcSwap` and the data path never locks. Keys are operator-configured prefixes, so a
//! simple multiplicative hash is safe: an attacker choosing the looked-up addresses cannot
//! change the table's collision chains.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

/// A fast hasher for fixed-width integer keys (the Fx hash idea: rotate, xor, multiply).
#[derive(Default, Clone, Copy)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<PrefixHasher>>;

/// One address family: per prefix length (longest first), masked address -> value.
#[derive(Debug, Clone)]
struct Family<K, V> {
    lengths: Vec<(u8, Map<K, V>)>,
}

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Family {
            lengths: Vec::new(),
        }
    }
}

macro_rules! family_impl {
    ($k:ty, $bits:expr) => {
        impl<V: Clone> Family<$k, V> {
            fn mask(addr: $k, len: u8) -> $k {
                if len == 0 {
                    0
                } else {
                    addr & (<$k>::MAX << ($bits - u32::from(len)))
                }
            }

            fn insert(&mut self, addr: $k, len: u8, value: V) -> Option<V> {
                let key = Self::mask(addr, len);
                let pos = match self.lengths.iter().position(|(l, _)| *l <= len) {
                    Some(p) if self.lengths[p].0 == len => p,
                    Some(p) => {
                        self.lengths.insert(p, (len, Map::default()));
                        p
                    }
                    None => {
                        self.lengths.push((len, Map::default()));
                        self.lengths.len() - 1
                    }
                };
                self.lengths[pos].1.insert(key, value)
            }

            fn lookup(&self, addr: $k) -> Option<&V> {
                self.lengths
                    .iter()
                    .find_map(|(len, map)| map.get(&Self::mask(addr, *len)))
            }
        }
    };
}

family_impl!(u32, 32);
family_impl!(u128, 128);

/// A longest-prefix-match table from IP prefixes to values (peer ids).
#[derive(Debug, Clone)]
pub struct AllowedIps<V> {
    v4: Family<u32, V>,
    v6: Family<u128, V>,
    len: usize,
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        AllowedIps {
            v4: Family::default(),
            v6: Family::default(),
            len: 0,
        }
    }
}

impl<V: Clone> AllowedIps<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `net` (host bits are ignored) to `value`; returns the value it replaces.
    pub fn insert(&mut self, net: IpNet, value: V) -> Option<V> {
        let old = match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.addr()), n.prefix_len(), value),
            IpNet::V6(n) => self.v6.insert(u128::from(n.addr()), n.prefix_len(), value),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Looks up an IPv4 address given as its four bytes.
    pub fn lookup_v4(&self, octets: [u8; 4]) -> Option<&V> {
        self.v4.lookup(u32::from_be_bytes(octets))
    }

    /// Looks up an IPv6 address given as its sixteen bytes.
    pub fn lookup_v6(&self, octets: [u8; 16]) -> Option<&V> {
        self.v6.lookup(u128::from_be_bytes(octets))
    }

    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The destination address of an IP packet, if it is one.
pub fn ip_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?)),
        6 => Some(IpAddr::from(
            <[u8; 16]>::try_from(packet.get(24..40)?).ok()?,
        )),
        _ => None,
    }
}

/// The source address of an IP packet, if it is one.
pub fn ip_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.77.0.0/16"), 2);
        t.insert(net("10.77.0.2/32"), 3);
        t.insert(net("0.0.0.0/0"), 4);
        t.insert(net("fd77::/64"), 5);
        t.insert(net("fd77::2/128"), 6);
        assert_eq!(t.len(), 6);
        assert_eq!(t.lookup(ip("10.77.0.2")), Some(&3));
        assert_eq!(t.lookup(ip("10.77.0.3")), Some(&2));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&1));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&4));
        assert_eq!(t.lookup(ip("fd77::2")), Some(&6));
        assert_eq!(t.lookup(ip("fd77::3")), Some(&5));
        assert_eq!(t.lookup(ip("fd78::3")), None);
        assert_eq!(t.lookup_v4([10, 77, 0, 2]), Some(&3));
    }

    #[test]
    fn host_bits_are_ignored_and_replacing_keeps_the_count() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.77.0.9/24"), 1), None);
        assert_eq!(t.insert(net("10.77.0.0/24"), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip("10.77.0.200")), Some(&2));
        let mut t6 = AllowedIps::new();
        t6.insert(net("::/0"), 7);
        assert_eq!(t6.lookup(ip("2001:db8::1")), Some(&7));
        assert_eq!(t6.lookup(ip("10.0.0.1")), None);
    }

    #[test]
    fn matches_a_linear_scan_on_random_tables() {
        // A deterministic pseudo-random comparison against the obvious implementation.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = AllowedIps::new();
        let mut list: Vec<(IpNet, usize)> = Vec::new();
        for i in 0..300 {
            let addr = std::net::Ipv4Addr::from((next() as u32) & 0x0aff_ffff | 0x0a00_0000);
            let len = (next() % 33) as u8;
            let n = IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap()).trunc();
            t.insert(n, i);
            list.retain(|(m, _)| *m != n);
            list.push((n, i));
        }
        for _ in 0..5000 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(
                (next() as u32) & 0x0aff_ffff | 0x0a00_0000,
            ));
            let want = list
                .iter()
                .filter(|(n, _)| n.contains(&a))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| v);
            assert_eq!(t.lookup(a), want, "{a}");
        }
    }

    #[test]
    fn packet_addresses() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(ip_source(&v4), Some(ip("10.0.0.1")));
        assert_eq!(ip_destination(&v4), Some(ip("10.0.0.2")));
        assert_eq!(ip_source(&v4[..19]), None);
        assert_eq!(ip_destination(&[0x60; 39]), None);
        assert_eq!(ip_destination(&[]), None);
        assert_eq!(ip_source(&[0x50; 60]), None);
    }
}
