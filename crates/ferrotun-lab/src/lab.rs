//! Ready-made topologies: hosts in their own namespaces joined by veth pairs or a bridge,
//! with fixed, documented addresses.
//!
//! Addressing (the same in [`Lab::two_hosts`], [`Lab::star`] and `scripts/lab.sh`): host
//! number `i` (a = 1, b = 2, ...) has `198.18.0.i/24` (RFC 2544 benchmarking range) and
//! `fd00:198:18::i/64` (a ULA prefix chosen to read like the IPv4 one), IPv6 added with
//! `nodad` so it is usable at once. No namespace gets a default route: traffic can only
//! reach the lab's own addresses.
//!
//! This module does not start processes ([`crate::process`]) or impair traffic
//! ([`crate::nft`], [`crate::relay`]); [`Host::rate_limit`] is the one exception, since a
//! `tbf` qdisc is a property of the host's link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::cmd;
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::NsProcess;

/// The lab's IPv4 underlay subnet, `198.18.0.0/24` (RFC 2544 benchmarking range).
pub const LAB_IPV4_SUBNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of [`LAB_IPV4_SUBNET`].
pub const LAB_IPV4_PREFIX: u8 = 24;
/// The lab's IPv6 underlay subnet, `fd00:198:18::/64` (ULA, fd00::/8).
pub const LAB_IPV6_SUBNET: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0);
/// Prefix length of [`LAB_IPV6_SUBNET`].
pub const LAB_IPV6_PREFIX: u8 = 64;

/// The IPv4 address of host number `i` (1 = a): `198.18.0.i`.
pub fn lab_ipv4(i: u8) -> Ipv4Addr {
    let [a, b, c, _] = LAB_IPV4_SUBNET.octets();
    Ipv4Addr::new(a, b, c, i)
}

/// The IPv6 address of host number `i` (1 = a): `fd00:198:18::i`.
pub fn lab_ipv6(i: u8) -> Ipv6Addr {
    let s = LAB_IPV6_SUBNET.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, u16::from(i))
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(0);

/// The two interface names of a veth pair made by [`veth_pair`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The end in the first namespace.
    pub a: String,
    /// The end in the second namespace.
    pub b: String,
}

/// Creates a veth pair with one end in `a` and the other in `b` and brings both up.
///
/// The ends are named `v<n><tag_a>` and `v<n><tag_b>` (`n` a process-wide counter, the
/// whole name cut to 15 bytes), so each is unique in its namespace and tells a reader of
/// `ip link` where it leads. The pair is created inside `a` with its peer placed directly
/// in `b`: nothing ever appears in the host's own namespace.
pub fn veth_pair(a: &Netns, tag_a: &str, b: &Netns, tag_b: &str) -> Result<VethPair> {
    let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let name = |tag: &str| {
        let mut name = format!("v{n}{}", crate::netns::sanitize(tag, 15));
        name.truncate(15);
        name
    };
    let pair = VethPair {
        a: name(tag_a),
        b: name(tag_b),
    };
    a.ip([
        "link",
        "add",
        &pair.a,
        "type",
        "veth",
        "peer",
        "name",
        &pair.b,
        "netns",
        b.name(),
    ])?;
    a.ip(["link", "set", &pair.a, "up"])?;
    b.ip(["link", "set", &pair.b, "up"])?;
    Ok(pair)
}

/// Adds `addr` to interface `ifname` in `ns` (IPv6 with `nodad`).
pub fn add_address(ns: &Netns, ifname: &str, addr: IpNet) -> Result<()> {
    let addr_s = addr.to_string();
    match addr {
        IpNet::V4(_) => ns.ip(["addr", "add", &addr_s, "dev", ifname])?,
        IpNet::V6(_) => ns.ip(["-6", "addr", "add", &addr_s, "dev", ifname, "nodad"])?,
    };
    Ok(())
}

/// Removes `addr` from interface `ifname` in `ns`.
pub fn del_address(ns: &Netns, ifname: &str, addr: IpNet) -> Result<()> {
    ns.ip(["addr", "del", &addr.to_string(), "dev", ifname])?;
    Ok(())
}

/// One host of a [`Lab`]: a namespace with one underlay interface and its addresses.
#[derive(Debug)]
pub struct Host {
    tag: String,
    ns: Netns,
    ifname: String,
    v4: Mutex<Ipv4Net>,
    v6: Mutex<Ipv6Net>,
}

impl Host {
    fn new(tag: &str, number: u8, ns: Netns, ifname: String) -> Result<Host> {
        let v4 = Ipv4Net::new(lab_ipv4(number), LAB_IPV4_PREFIX)
            .map_err(|e| LabError::invalid("host number", e.to_string()))?;
        let v6 = Ipv6Net::new(lab_ipv6(number), LAB_IPV6_PREFIX)
            .map_err(|e| LabError::invalid("host number", e.to_string()))?;
        add_address(&ns, &ifname, IpNet::V4(v4))?;
        add_address(&ns, &ifname, IpNet::V6(v6))?;
        Ok(Host {
            tag: tag.to_owned(),
            ns,
            ifname,
            v4: Mutex::new(v4),
            v6: Mutex::new(v6),
        })
    }

    /// The host's tag: `"a"`, `"b"`, ...
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The host's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The host's underlay interface (its end of the veth pair).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The host's current primary IPv4 address (changed by [`Host::set_v4`]).
    pub fn v4(&self) -> Ipv4Addr {
        self.v4_net().addr()
    }

    /// The host's current primary IPv4 address with its prefix.
    pub fn v4_net(&self) -> Ipv4Net {
        *self.v4.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host's current primary IPv6 address (changed by [`Host::set_v6`]).
    pub fn v6(&self) -> Ipv6Addr {
        self.v6_net().addr()
    }

    /// The host's current primary IPv6 address with its prefix.
    pub fn v6_net(&self) -> Ipv6Net {
        *self.v6.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A command that runs `program` in the host's namespace; see [`Netns::command`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }

    /// Moves the host to a new IPv4 address (same prefix length), for roaming tests:
    /// deletes the old address, then adds the new one. Returns the old address.
    ///
    /// Old-then-new matters: deleting the primary IPv4 address of a subnet also deletes
    /// the secondaries in it, so adding first would lose the new address.
    pub fn set_v4(&self, new: Ipv4Addr) -> Result<Ipv4Addr> {
        let mut current = self.v4.lock().unwrap_or_else(|e| e.into_inner());
        let old = *current;
        let new = Ipv4Net::new(new, old.prefix_len())
            .map_err(|e| LabError::invalid("IPv4 address", e.to_string()))?;
        del_address(&self.ns, &self.ifname, IpNet::V4(old))?;
        add_address(&self.ns, &self.ifname, IpNet::V4(new))?;
        *current = new;
        Ok(old.addr())
    }

    /// Moves the host to a new IPv6 address (same prefix length, `nodad`). Returns the old
    /// address.
    pub fn set_v6(&self, new: Ipv6Addr) -> Result<Ipv6Addr> {
        let mut current = self.v6.lock().unwrap_or_else(|e| e.into_inner());
        let old = *current;
        let new = Ipv6Net::new(new, old.prefix_len())
            .map_err(|e| LabError::invalid("IPv6 address", e.to_string()))?;
        del_address(&self.ns, &self.ifname, IpNet::V6(old))?;
        add_address(&self.ns, &self.ifname, IpNet::V6(new))?;
        *current = new;
        Ok(old.addr())
    }

    /// Adds another address to the host's interface (IPv6 with `nodad`).
    pub fn add_address(&self, addr: IpNet) -> Result<()> {
        add_address(&self.ns, &self.ifname, addr)
    }

    /// Removes an address added with [`Host::add_address`].
    pub fn del_address(&self, addr: IpNet) -> Result<()> {
        del_address(&self.ns, &self.ifname, addr)
    }

    /// Takes the host's interface down or up (a cable pull, for reconnect tests).
    pub fn set_link_up(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.ns.ip(["link", "set", &self.ifname, state])?;
        Ok(())
    }

    /// Limits what this host sends on its interface to `bits_per_second` with a `tbf`
    /// qdisc (burst: 10 ms of traffic, at least 16 full frames; queue: 50 ms). Only the
    /// host's egress is shaped; limit both hosts of a link to shape both directions.
    /// Removed when the returned guard is dropped.
    pub fn rate_limit(&self, bits_per_second: u64) -> Result<RateLimit> {
        RateLimit::install(&self.ns, &self.ifname, bits_per_second)
    }

    /// The address of the same family as `peer` that this host uses on the underlay.
    pub fn addr_like(&self, peer: IpAddr) -> IpAddr {
        match peer {
            IpAddr::V4(_) => IpAddr::V4(self.v4()),
            IpAddr::V6(_) => IpAddr::V6(self.v6()),
        }
    }
}

/// A `tbf` rate limit on one interface; removed on drop.
#[derive(Debug)]
pub struct RateLimit {
    ns_name: String,
    ifname: String,
    removed: bool,
}

impl RateLimit {
    fn install(ns: &Netns, ifname: &str, bits_per_second: u64) -> Result<RateLimit> {
        if bits_per_second < 8_000 {
            return Err(LabError::invalid(
                "rate",
                format!("{bits_per_second} bit/s is below the 8 kbit/s the lab supports"),
            ));
        }
        let burst = (bits_per_second / 8 / 100).max(16 * 1514);
        cmd::run(Command::new("tc").args([
            "-n",
            ns.name(),
            "qdisc",
            "replace",
            "dev",
            ifname,
            "root",
            "tbf",
            "rate",
            &format!("{bits_per_second}bit"),
            "burst",
            &format!("{burst}b"),
            "latency",
            "50ms",
        ]))?;
        Ok(RateLimit {
            ns_name: ns.name().to_owned(),
            ifname: ifname.to_owned(),
            removed: false,
        })
    }

    /// Removes the limit now, reporting failure (dropping does the same silently).
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.delete()
    }

    fn delete(&self) -> Result<()> {
        cmd::run(Command::new("tc").args([
            "-n",
            &self.ns_name,
            "qdisc",
            "del",
            "dev",
            &self.ifname,
            "root",
        ]))?;
        Ok(())
    }
}

impl Drop for RateLimit {
    fn drop(&mut self) {
        // The namespace may already be gone, taking the qdisc with it.
        if !self.removed
            && Path::new(crate::netns::NETNS_DIR)
                .join(&self.ns_name)
                .exists()
            && let Err(e) = self.delete()
        {
            eprintln!("ferrotun-lab: could not remove rate limit: {e}");
        }
    }
}

/// Hosts in namespaces joined into one underlay subnet, with a directory for the logs of
/// the processes started in it. Everything is torn down on drop.
///
/// ```no_run
/// use ferrotun_lab::{Lab, ping};
/// use std::time::Duration;
/// # fn main() -> ferrotun_lab::Result<()> {
/// let lab = Lab::two_hosts()?;
/// let reply = ping(lab.a().ns(), lab.b().v6().into(), 3, Duration::from_secs(5))?;
/// assert!(reply.success());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: hosts (and the processes inside them) first, then the
    // switch, then the log directory.
    hosts: Vec<Host>,
    switch: Option<Netns>,
    logs: tempfile::TempDir,
}

impl Lab {
    /// Hosts `a` (198.18.0.1/24, fd00:198:18::1/64) and `b` (198.18.0.2/24,
    /// fd00:198:18::2/64) joined by one veth pair.
    pub fn two_hosts() -> Result<Lab> {
        let logs = log_dir()?;
        let ns_a = Netns::new("a")?;
        let ns_b = Netns::new("b")?;
        let pair = veth_pair(&ns_a, "a", &ns_b, "b")?;
        let a = Host::new("a", 1, ns_a, pair.a)?;
        let b = Host::new("b", 2, ns_b, pair.b)?;
        Ok(Lab {
            hosts: vec![a, b],
            switch: None,
            logs,
        })
    }

    /// `n` hosts (`a`, `b`, `c`, ..., 2 ≤ n ≤ 26) each joined by a veth pair to a bridge
    /// `br0` in a namespace of its own (the switch), for tests with several clients and a
    /// server. Host number `i` has `198.18.0.i/24` and `fd00:198:18::i/64`.
    pub fn star(n: usize) -> Result<Lab> {
        if !(2..=26).contains(&n) {
            return Err(LabError::invalid("host count", format!("{n} (2 to 26)")));
        }
        let logs = log_dir()?;
        let switch = Netns::new("sw")?;
        switch.ip([
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        switch.ip(["link", "set", "br0", "up"])?;
        let mut hosts = Vec::with_capacity(n);
        for (i, tag) in ('a'..='z').take(n).enumerate() {
            let tag = tag.to_string();
            let ns = Netns::new(&tag)?;
            let pair = veth_pair(&ns, &tag, &switch, &format!("{tag}sw"))?;
            switch.ip(["link", "set", &pair.b, "master", "br0"])?;
            let number = u8::try_from(i + 1).expect("n <= 26 was checked above");
            hosts.push(Host::new(&tag, number, ns, pair.a)?);
        }
        Ok(Lab {
            hosts,
            switch: Some(switch),
            logs,
        })
    }

    /// Host `a`.
    pub fn a(&self) -> &Host {
        &self.hosts[0]
    }

    /// Host `b`.
    pub fn b(&self) -> &Host {
        &self.hosts[1]
    }

    /// The host tagged `tag`.
    pub fn host(&self, tag: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.tag == tag)
            .ok_or_else(|| LabError::NoSuchHost {
                tag: tag.to_owned(),
                hosts: self
                    .hosts
                    .iter()
                    .map(|h| h.tag.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// All hosts, `a` first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The namespace holding the bridge of a [`Lab::star`].
    pub fn switch(&self) -> Option<&Netns> {
        self.switch.as_ref()
    }

    /// The directory where [`Lab::spawn`] puts process logs; removed with the lab unless
    /// `FERROTUN_LAB_KEEP_LOGS` is set in the environment.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Starts `cmd` (typically from [`Host::command`]) with its output captured in the
    /// lab's log directory under `label`. See [`NsProcess`].
    pub fn spawn(&self, label: &str, cmd: &mut Command) -> Result<NsProcess> {
        NsProcess::spawn(label, cmd, self.logs.path())
    }
}

/// Prefix of a lab's log directory in the temp dir; [`crate::reap_stale`] removes those
/// of dead runs.
pub(crate) const LOG_DIR_PREFIX: &str = "ferrotun-lab-";

fn log_dir() -> Result<tempfile::TempDir> {
    let keep = std::env::var_os("FERROTUN_LAB_KEEP_LOGS").is_some();
    // Kept directories get a name reap_stale does not match.
    let kept = if keep { "kept-" } else { "" };
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("{LOG_DIR_PREFIX}{kept}{}-", std::process::id()))
        .tempdir()
        .map_err(LabError::io("creating the lab's log directory"))?;
    if keep {
        dir.disable_cleanup(true);
        eprintln!("ferrotun-lab: keeping logs in {}", dir.path().display());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_documented_plan() {
        assert_eq!(lab_ipv4(1).to_string(), "198.18.0.1");
        assert_eq!(lab_ipv4(26).to_string(), "198.18.0.26");
        assert_eq!(lab_ipv6(2).to_string(), "fd00:198:18::2");
    }
}
