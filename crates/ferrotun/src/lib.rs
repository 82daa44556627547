//! ferrotun: a VTun-style encrypted tunnel VPN for Linux.
//!
//! This crate is the engine behind the `ferrotun-server` and `ferrotun-client` binaries:
//! configuration files, cryptokey routing ([`routing`]), the tokio driver that joins the
//! TUN/TAP device ([`ferrotun_device`]), the protocol sessions ([`ferrotun_proto`]) and the
//! sockets, hooks and counters. The binaries are thin front ends over [`cli::main`]; only
//! `cli` and `routing` (for its benchmark) are public. docs/architecture.md is the map.

#![warn(missing_docs)]

pub mod cli;
mod config;
mod ctlsock;
mod engine;
mod hooks;
mod iface;
mod privs;
pub mod routing;
mod run;
mod stats;
mod status;
