//! The tunnel's network interface: created, configured and brought up before any packet
//! moves, and taken down (down hook first) when the tunnel stops.
//!
//! Order matters (docs/architecture.md, "Linux pitfalls"): the device is fully configured (MAC, MTU,
//! addresses, up, addresses usable, routes) and the `up` hook has succeeded before the data
//! path reads from it. Any failure on the way drops the device, which removes it: no
//! half-configured interface is ever left behind.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use ferrotun_device::vnet::{self, Offloads};
use ferrotun_device::{DeviceBuilder, DeviceError, Link, Mode, Queue};
use ipnet::IpNet;

use crate::config::{Hooks, InterfaceConfig};
use crate::hooks::{self, HookEnv};

/// How long addresses may take to become usable after the link comes up.
const ADDRESS_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A configured tunnel interface.
pub(crate) struct Interface {
    link: Link,
    mode: Mode,
    mtu: u32,
    queues: Vec<Queue>,
    offloads: Option<Offloads>,
    addresses: Vec<IpNet>,
    /// A duplicate of the first queue's descriptor: it keeps the device in existence after
    /// the data path has dropped its queues, until the `down` hook has run.
    keeper: std::os::fd::OwnedFd,
    down_hook: Option<String>,
    env: HookEnv,
}

impl Interface {
    /// Creates and configures the device, adds `routes` that the interface's own address
    /// prefixes do not cover already, and runs the `up` hook.
    pub(crate) fn up(
        cfg: &InterfaceConfig,
        routes: &[IpNet],
        hooks: &Hooks,
    ) -> anyhow::Result<Interface> {
        // Offloads ride on a virtio-net header (TUN and TAP alike).
        let vnet = cfg.offload;
        let dev = DeviceBuilder::new(&cfg.name, cfg.mode)
            .queues(cfg.queues)
            .vnet_hdr(vnet)
            .open()?;
        let offloads = if vnet {
            let on = vnet::enable_offloads(&dev.queues()[0], Offloads::ALL)?;
            tracing::debug!(tso = on.tso, uso = on.uso, "device offloads");
            Some(on)
        } else {
            None
        };
        let link = dev.link().clone();
        let name = link.name().to_owned();
        if let Some(mac) = cfg.mac {
            link.set_mac(mac)?;
        }
        link.set_mtu(cfg.mtu)?;
        for a in &cfg.addresses {
            link.add_address(*a)?;
        }
        link.set_up(true)?;
        link.wait_addresses_ready(ADDRESS_READY_TIMEOUT)?;
        for r in routes {
            if covered(&cfg.addresses, r) {
                continue;
            }
            match link.add_route(*r, None) {
                Ok(()) => tracing::debug!(interface = %name, route = %r, "route added"),
                Err(DeviceError::RouteExists { dest }) => {
                    tracing::warn!(interface = %name, route = %dest, "a route to this prefix exists already; leaving it as it is")
                }
                Err(e) => return Err(e).context(format!("routing {r} through {name}")),
            }
        }
        let env = HookEnv {
            interface: name.clone(),
            addresses: cfg.addresses.clone(),
            mtu: cfg.mtu,
            mode: cfg.mode,
        };
        if let Some(up) = &hooks.up {
            match hooks::run("up", up, &env) {
                Ok(out) => log_output("up", &out),
                Err(e) => bail!(e),
            }
        }
        let keeper = std::os::fd::AsFd::as_fd(&dev.queues()[0])
            .try_clone_to_owned()
            .context("duplicating the device descriptor")?;
        tracing::info!(interface = %name, mode = %cfg.mode, mtu = cfg.mtu, "interface up");
        Ok(Interface {
            keeper,
            addresses: cfg.addresses.clone(),
            offloads,
            link,
            mode: cfg.mode,
            mtu: cfg.mtu,
            queues: dev.into_queues(),
            down_hook: hooks.down.clone(),
            env,
        })
    }

    /// The interface's real name.
    pub(crate) fn name(&self) -> &str {
        self.link.name()
    }

    /// TUN or TAP.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The MTU.
    pub(crate) fn mtu(&self) -> u32 {
        self.mtu
    }

    /// What updating the routes needs, for another thread (a reload runs off the
    /// runtime's thread).
    pub(crate) fn routes(&self) -> Routes {
        Routes {
            link: self.link.clone(),
            addresses: self.addresses.clone(),
        }
    }

    /// The offloads on, if the device has a virtio-net header.
    pub(crate) fn offloads(&self) -> Option<Offloads> {
        self.offloads
    }

    /// Takes the device's queues for the data path.
    pub(crate) fn take_queues(&mut self) -> Vec<Queue> {
        std::mem::take(&mut self.queues)
    }

    /// Runs the `down` hook (its failure is logged, not fatal: the tunnel is going away
    /// regardless). The device itself goes when the last queue is dropped.
    pub(crate) fn down(self) {
        if let Some(down) = &self.down_hook {
            match hooks::run("down", down, &self.env) {
                Ok(out) => log_output("down", &out),
                Err(e) => tracing::error!("{e}"),
            }
        }
        drop(self.keeper);
        tracing::info!(interface = %self.link.name(), "interface down");
    }
}

/// Whether an interface address's own prefix already routes `r` through the device.
fn covered(addresses: &[IpNet], r: &IpNet) -> bool {
    addresses.iter().any(|a| a.trunc().contains(r))
}

fn log_output(hook: &str, out: &str) {
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(hook, "{line}");
    }
}

/// The interface's link and addresses, for changing its routes on reload.
pub(crate) struct Routes {
    link: Link,
    addresses: Vec<IpNet>,
}

impl Routes {
    /// Adds routes that `after` has and `before` lacks, removes the opposite. Failures are
    /// logged: the tunnel keeps running with the routes it has.
    pub(crate) fn update(&self, before: &[IpNet], after: &[IpNet]) {
        type Change = fn(&Link, IpNet, Option<u32>) -> Result<(), DeviceError>;
        let name = self.link.name();
        // Each route of `routes` that `other` lacks and the addresses do not cover.
        let apply = |routes: &[IpNet], other: &[IpNet], change: Change, done: &str, doing: &str| {
            let other: HashSet<&IpNet> = other.iter().collect();
            for r in routes
                .iter()
                .filter(|r| !other.contains(r) && !covered(&self.addresses, r))
            {
                match change(&self.link, *r, None) {
                    Ok(()) => tracing::info!(interface = %name, route = %r, "{done}"),
                    Err(e) => tracing::warn!(interface = %name, route = %r, "{doing} a route: {e}"),
                }
            }
        };
        apply(after, before, Link::add_route, "route added", "adding");
        apply(before, after, Link::del_route, "route removed", "removing");
    }
}
