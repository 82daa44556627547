//! Configuring a network interface: MTU, up/down, MAC, IPv4/IPv6 addresses and routes,
//! over netlink in the calling thread's network namespace.
//!
//! [`Link`] names an interface by index and name; it works on any link, not only on the
//! devices this crate creates (tests use it on veths). It never shells out to `ip`.

use ipnet::IpNet;

use crate::error::{DeviceError, Result};
use crate::netlink::{LinkInfo, Netlink, NetlinkError};

/// A network interface, addressed by its index.
#[derive(Debug, Clone)]
pub struct Link {
    index: u32,
    name: String,
}

fn nl_err(op: &'static str, name: &str, e: NetlinkError) -> DeviceError {
    match e.errno {
        libc::EPERM | libc::EACCES => DeviceError::NotPermitted {
            op,
            name: name.to_owned(),
        },
        libc::ENODEV => DeviceError::NoSuchInterface {
            name: name.to_owned(),
        },
        _ => DeviceError::Netlink {
            op,
            name: name.to_owned(),
            source: e.into(),
        },
    }
}

fn socket(op: &'static str, name: &str) -> Result<Netlink> {
    Netlink::open().map_err(|e| DeviceError::io(op, name, e))
}

impl Link {
    /// Finds the interface called `name`.
    pub fn by_name(name: &str) -> Result<Link> {
        Self::find(name)?.ok_or_else(|| DeviceError::NoSuchInterface {
            name: name.to_owned(),
        })
    }

    /// Finds the interface called `name`, or `None` if there is none.
    pub fn find(name: &str) -> Result<Option<Link>> {
        crate::name::validate(name)?;
        let info = socket("query", name)?
            .link_by_name(name)
            .map_err(|e| nl_err("query", name, e))?;
        Ok(info.map(|i| Link {
            index: i.index,
            name: i.name,
        }))
    }

    /// Reads the kernel's current view of this link.
    pub fn info(&self) -> Result<LinkInfo> {
        socket("query", &self.name)?
            .link_by_index(self.index)
            .map_err(|e| nl_err("query", &self.name, e))?
            .ok_or_else(|| DeviceError::NoSuchInterface {
                name: self.name.clone(),
            })
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The interface name (as it was when this handle was made).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        socket("set mtu", &self.name)?
            .set_mtu(self.index, mtu)
            .map_err(|e| nl_err("set mtu", &self.name, e))
    }

    /// Brings the link up or down.
    pub fn set_up(&self, up: bool) -> Result<()> {
        let op = if up { "set up" } else { "set down" };
        socket(op, &self.name)?
            .set_up(self.index, up)
            .map_err(|e| nl_err(op, &self.name, e))
    }

    /// Sets the hardware (MAC) address; for TAP devices.
    pub fn set_mac(&self, mac: [u8; 6]) -> Result<()> {
        socket("set mac", &self.name)?
            .set_mac(self.index, mac)
            .map_err(|e| nl_err("set mac", &self.name, e))
    }

    /// Adds an address with its prefix (`10.77.0.1/24`, `fd77::1/64`); the kernel adds the
    /// prefix route. Adding an address the link has already is not an error.
    pub fn add_address(&self, net: IpNet) -> Result<()> {
        socket("add address", &self.name)?
            .add_address(self.index, net)
            .map_err(|e| nl_err("add address", &self.name, e))
    }

    /// Waits until every address on the link receives packets, at most `timeout`. Call it
    /// after bringing the link up: IPv6 addresses become local a moment after that (the
    /// kernel installs their local routes from a work queue), and a packet arriving before
    /// then is dropped.
    pub fn wait_addresses_ready(&self, timeout: std::time::Duration) -> Result<()> {
        let mut nl = socket("wait for addresses", &self.name)?;
        let addrs = nl
            .addresses(self.index)
            .map_err(|e| nl_err("list addresses", &self.name, e))?;
        let deadline = std::time::Instant::now() + timeout;
        for net in addrs {
            loop {
                let local = nl
                    .is_local(net.addr())
                    .map_err(|e| nl_err("query route", &self.name, e))?;
                if local {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(DeviceError::Io {
                        op: "wait for address",
                        name: self.name.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "{net} did not become usable within {timeout:?} (is the link up?)"
                            ),
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        Ok(())
    }

    /// Removes an address.
    pub fn del_address(&self, net: IpNet) -> Result<()> {
        socket("delete address", &self.name)?
            .del_address(self.index, net)
            .map_err(|e| nl_err("delete address", &self.name, e))
    }

    /// Lists the link's addresses.
    pub fn addresses(&self) -> Result<Vec<IpNet>> {
        socket("list addresses", &self.name)?
            .addresses(self.index)
            .map_err(|e| nl_err("list addresses", &self.name, e))
    }

    /// Routes `dest` through this link (main table, scope link, protocol static). A route
    /// to the same prefix and metric that exists already is [`DeviceError::RouteExists`].
    pub fn add_route(&self, dest: IpNet, metric: Option<u32>) -> Result<()> {
        socket("add route", &self.name)?
            .add_route(self.index, dest, metric)
            .map_err(|e| {
                if e.errno == libc::EEXIST {
                    DeviceError::RouteExists { dest: dest.trunc() }
                } else {
                    nl_err("add route", &self.name, e)
                }
            })
    }

    /// Removes a route to `dest` through this link.
    pub fn del_route(&self, dest: IpNet, metric: Option<u32>) -> Result<()> {
        socket("delete route", &self.name)?
            .del_route(self.index, dest, metric)
            .map_err(|e| nl_err("delete route", &self.name, e))
    }

    /// Lists the main-table routes through this link.
    pub fn routes(&self) -> Result<Vec<IpNet>> {
        socket("list routes", &self.name)?
            .routes(self.index)
            .map_err(|e| nl_err("list routes", &self.name, e))
    }

    /// Deletes the interface (for a persistent TUN/TAP device, or any virtual link).
    pub fn delete(self) -> Result<()> {
        socket("delete", &self.name)?
            .delete_link(self.index)
            .map_err(|e| nl_err("delete", &self.name, e))
    }
}
