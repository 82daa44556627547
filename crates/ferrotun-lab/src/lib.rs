//! The ferrotun namespace lab: test support for tests that need real network namespaces.
//!
//! Device tests use it to create TUN/TAP devices in a namespace of their own; end-to-end
//! tests use it to run the real `ferrotun-server` and `ferrotun-client` in separate hosts
//! and push traffic (ping, iperf3, checksummed TCP) through the tunnel, with faults.
//!
//! - [`Netns`]: a uniquely named namespace (`ft<pid>-<n>-<tag>`) deleted on drop, also
//!   during a panic; run commands ([`Netns::command`]) or closures ([`Netns::run`]) inside.
//!   [`reap_stale`] removes namespaces of killed runs; [`require_lab`] fails plainly
//!   ("needs root: run sudo ./scripts/test.sh") when the process may not build a lab.
//! - [`Lab`]: ready topologies, [`Lab::two_hosts`] (a veth pair) and [`Lab::star`] (hosts on
//!   a bridge), with the fixed addresses of [`lab`]'s plan: host `i` is `198.18.0.i/24` and
//!   `fd00:198:18::i/64`. [`Host`] changes its address (roaming) and rate-limits its link.
//! - [`NsProcess`]: a program started in a namespace with its output in log files, signals,
//!   deadlines, and kill-and-reap on drop; [`wait_until`]/[`wait_for`] to wait for
//!   conditions instead of sleeping.
//! - Traffic: [`tcp_transfer`] (SHA-256 at both ends), [`UdpSink`] and [`send_sequence`]
//!   (numbered datagrams), [`ping`] and [`wait_for_ping`].
//! - Faults: [`LossRule`] (nftables `numgen random` drops with counters) and [`Relay`] (a
//!   seeded UDP relay that drops, duplicates, reorders and delays; also the
//!   `ferrotun-relay` binary). This kernel has no `netem`; [`Host::rate_limit`] uses `tbf`.
//!
//! Everything needs root and the tools of `iproute2`, `nftables` and `iputils-ping`
//! (`scripts/test.sh` installs them). Traffic only ever goes to addresses the lab assigned
//! inside namespaces it created; no namespace gets a default route.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferrotun_lab::{Lab, tcp_transfer};
//! # fn main() -> ferrotun_lab::Result<()> {
//! let lab = Lab::two_hosts()?;
//! let (a, b) = (lab.a(), lab.b());
//! let report = tcp_transfer(b.ns(), (b.v4(), 0).into(), a.ns(), 8 << 20)?;
//! report.assert_intact();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod cmd;
mod error;
pub mod lab;
pub mod netns;
pub mod nft;
pub mod process;
pub mod relay;
pub mod rng;
pub mod traffic;

pub use error::{LabError, Result};
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use lab::{Host, Lab, RateLimit, VethPair, lab_ipv4, lab_ipv6, veth_pair};
pub use netns::{Netns, NsThread, reap_stale, require_lab};
pub use nft::{Hook, LossCounters, LossRule, LossSpec};
pub use process::{NsProcess, Signal, wait_for, wait_until};
pub use relay::{Direction, DirectionStats, Impairment, Relay, RelayStats};
pub use rng::SeededRng;
pub use traffic::{
    PingReport, Received, Sha256Sum, TcpTransfer, TransferReport, UdpSink, ping, read_seq,
    send_sequence, seq_datagram, tcp_transfer, wait_for_ping,
};
