//! Where a peer is and where a message came from.
//!
//! A peer is reached at a UDP address or through a TCP connection ([`PeerAddr`]); a
//! message from the network arrived by one of the two ([`Source`]). Addresses are kept in
//! their canonical form ([`canonical`]): a dual-stack socket reports IPv4 peers as
//! IPv4-mapped IPv6 addresses, which are shown and compared as IPv4.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::Transport;

use super::conn::TcpConn;

/// Where a peer is: a UDP address or a TCP connection.
#[derive(Clone)]
pub(crate) enum PeerAddr {
    Udp(SocketAddr),
    Tcp(Arc<TcpConn>),
}

impl PeerAddr {
    /// The remote address.
    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            PeerAddr::Udp(a) => *a,
            PeerAddr::Tcp(c) => c.remote,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            PeerAddr::Udp(_) => Transport::Udp,
            PeerAddr::Tcp(_) => Transport::Tcp,
        }
    }

    /// The path: two addresses are the same path if they are the same UDP address or the
    /// same TCP connection (not merely the same remote address).
    pub(crate) fn path(&self) -> Path {
        match self {
            PeerAddr::Udp(a) => Path::Udp(*a),
            PeerAddr::Tcp(c) => Path::Tcp(c.id),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Udp(a) => write!(f, "{a}"),
            PeerAddr::Tcp(c) => write!(f, "{} (tcp)", c.remote),
        }
    }
}

/// Where a message came from: a UDP datagram's sender, or the TCP connection that carried
/// the frame.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Udp(SocketAddr),
    Tcp(&'a Arc<TcpConn>),
}

impl<'a> Source<'a> {
    /// As a peer address (to answer, or to roam to).
    pub(crate) fn to_peer_addr(self) -> PeerAddr {
        match self {
            Source::Udp(a) => PeerAddr::Udp(a),
            Source::Tcp(c) => PeerAddr::Tcp(Arc::clone(c)),
        }
    }

    /// The path ([`PeerAddr::path`]), without cloning anything.
    pub(crate) fn path(self) -> Path {
        match self {
            Source::Udp(a) => Path::Udp(a),
            Source::Tcp(c) => Path::Tcp(c.id),
        }
    }

    /// The TCP connection, if a frame on one brought the message.
    pub(crate) fn tcp(self) -> Option<&'a Arc<TcpConn>> {
        match self {
            Source::Udp(_) => None,
            Source::Tcp(c) => Some(c),
        }
    }
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Udp(a) => write!(f, "{a}"),
            Source::Tcp(c) => write!(f, "{} (tcp)", c.remote),
        }
    }
}

/// A path a message came by or goes by: a UDP address, or a TCP connection's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Udp(SocketAddr),
    Tcp(u64),
}

/// The address as a peer is shown and compared: IPv4-mapped IPv6 becomes IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        a => a,
    }
}
