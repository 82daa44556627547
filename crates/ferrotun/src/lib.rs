//! ferrotun: a VTun-style encrypted tunnel VPN for Linux.
//!
//! This crate is the engine behind the `ferrotun-server` and `ferrotun-client` binaries:
//! configuration files ([`config`]), the peer table and cryptokey routing ([`routing`]),
//! the tokio driver that joins the TUN/TAP device ([`ferrotun_device`]), the protocol
//! sessions ([`ferrotun_proto`]) and the UDP socket ([`engine`]), hooks ([`hooks`]) and
//! counters ([`stats`]). The binaries are thin front ends over [`cli::main`].

#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod ctlsock;
pub mod engine;
pub mod hooks;
pub mod iface;
pub mod peer;
pub mod privs;
pub mod routing;
pub mod run;
pub mod stats;
pub mod status;
