//! The device crate's error type.
//!
//! Every failure an operator can cause or fix (a missing `/dev/net/tun`, a missing
//! capability, a name that is taken or malformed) has its own variant whose message says
//! what to do about it, on one line, so a daemon can print it and exit. Failures that only
//! a kernel bug or an exotic setup can cause end up in [`DeviceError::Io`] or
//! [`DeviceError::Netlink`] with the operation and the OS error.

use std::io;

/// What went wrong while creating, attaching or configuring a TUN/TAP device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The interface name is unusable; found before any system call.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// `/dev/net/tun` does not exist.
    #[error(
        "{path} does not exist: load the tun module (`modprobe tun`), or in a container pass the device in (`--device /dev/net/tun`)"
    )]
    NoTunDevice {
        /// The clone device path that was opened.
        path: String,
    },

    /// `/dev/net/tun` exists but may not be opened by this process.
    #[error(
        "{path}: permission denied: run as root, or in a container allow the device (`--device /dev/net/tun`)"
    )]
    TunDeviceDenied {
        /// The clone device path that was opened.
        path: String,
    },

    /// The kernel refused for lack of `CAP_NET_ADMIN` (or, for an existing persistent
    /// device, because it belongs to another user or group).
    #[error(
        "{op} {name}: operation not permitted: CAP_NET_ADMIN is required (run as root, or in a container add `--cap-add NET_ADMIN`), or the existing device belongs to another user"
    )]
    NotPermitted {
        /// What was attempted.
        op: &'static str,
        /// The interface concerned.
        name: String,
    },

    /// Another process holds the device, or the name belongs to an interface of another
    /// kind.
    #[error("interface {name} is in use: {detail}")]
    InUse {
        /// The interface concerned.
        name: String,
        /// Who holds it, as far as we can tell.
        detail: String,
    },

    /// No interface of that name exists.
    #[error("no interface named {name}")]
    NoSuchInterface {
        /// The interface looked for.
        name: String,
    },

    /// A queue of a multiqueue device could not be attached, detached or enabled.
    #[error("queue {queue} of {name}: {op}: {source}")]
    Queue {
        /// The interface concerned.
        name: String,
        /// The queue's position among this device's queues.
        queue: usize,
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The route to install exists already (possibly through another device).
    #[error("route {dest} exists already in the main table")]
    RouteExists {
        /// The destination prefix.
        dest: ipnet::IpNet,
    },

    /// A system call failed in a way the variants above do not cover.
    #[error("{op} {name}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The interface concerned (or the device path).
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The kernel answered a netlink request with an error.
    #[error("netlink {op} {name}: {source}")]
    Netlink {
        /// What was attempted.
        op: &'static str,
        /// The interface concerned.
        name: String,
        /// The OS error the kernel reported.
        #[source]
        source: io::Error,
    },
}

impl DeviceError {
    pub(crate) fn io(op: &'static str, name: &str, source: io::Error) -> Self {
        DeviceError::Io {
            op,
            name: name.to_owned(),
            source,
        }
    }
}

/// The device crate's result type.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;
