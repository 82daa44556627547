//! TUN and TAP devices for ferrotun.
//!
//! - [`DeviceBuilder`] creates a TUN (IP) or TAP (Ethernet) interface through
//!   `/dev/net/tun`, or attaches to an existing persistent one, by exact name or by pattern
//!   (`ftun%d`), with one or several queues (`IFF_MULTI_QUEUE`), optional owner, group,
//!   persistence and virtio-net headers. Names are checked before any system call.
//! - [`Queue`] reads and writes packets synchronously into caller-supplied buffers, one at a
//!   time or in batches (`recv_batch`/`send_batch` with an `offset` that leaves room for the
//!   caller's own headers); [`AsyncQueue`] does the same from tokio.
//! - [`Link`] configures any interface over netlink: MTU, up/down, MAC, IPv4 and IPv6
//!   addresses, routes. No `ip` command is run.
//! - Every failure is a [`DeviceError`] whose message tells an operator what to do
//!   (load the module, add the capability, pick another name).
//!
//! Everything works in the calling thread's network namespace.
//!
//! ```no_run
//! use ferrotun_device::{DeviceBuilder, Mode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = DeviceBuilder::new("ftun%d", Mode::Tun).open()?;
//! dev.link().set_mtu(1420)?;
//! dev.link().add_address("10.77.0.1/24".parse()?)?;
//! dev.link().set_up(true)?;
//! let mut buf = [0u8; 1500];
//! let n = dev.queues()[0].recv(&mut buf)?;
//! println!("{} read a {n}-byte packet", dev.name());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod asyncio;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod link;
pub mod name;
mod netlink;
mod tun;
pub mod vnet;

pub use asyncio::AsyncQueue;
pub use error::{DeviceError, Result};
pub use ipnet::IpNet;
pub use link::Link;
pub use netlink::{LinkInfo, NetlinkError, TunInfo};
pub use tun::{CLONE_DEVICE, Device, DeviceBuilder, Mode, Queue, VNET_HDR_LEN, offload};
