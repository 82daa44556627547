//! Running a tunnel in the foreground: load the config, bring the interface up, bind the
//! socket, start the engine, wait for a signal or a failure, and take everything down.
//!
//! Exit codes: 0 after SIGINT/SIGTERM, 1 for a runtime failure (device or port in use, a
//! failed `up` hook, a data path error), 2 for a bad config (checked before anything is
//! created).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use ferrotun_proto::{AeadBackend, Identity};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Role;
use crate::config::{ClientConfig, Endpoint, Hooks, InterfaceConfig, PeerConfig, ServerConfig};
use crate::engine::{Engine, EngineConfig, build_table, check_transport};
use crate::iface::Interface;

/// UDP socket buffer size we ask for: room for bursts at several Gbit/s.
const SOCKET_BUFFER: usize = 4 << 20;

/// Everything the runner needs from either kind of config.
struct Plan {
    interface: InterfaceConfig,
    hooks: Hooks,
    peers: Vec<PeerConfig>,
    routes: Vec<IpNet>,
    listen: Option<SocketAddr>,
    connect: Option<Endpoint>,
}

fn plan(role: Role, path: &Path) -> Result<Plan, crate::config::ConfigError> {
    Ok(match role {
        Role::Server => {
            let c = ServerConfig::load(path)?;
            Plan {
                routes: c
                    .peers
                    .iter()
                    .flat_map(|p| p.allowed_ips.iter().copied())
                    .collect(),
                interface: c.interface,
                hooks: c.hooks,
                peers: c.peers,
                listen: c.listen_udp,
                connect: None,
            }
        }
        Role::Client => {
            let c = ClientConfig::load(path)?;
            if let Err(e) = check_transport(c.transport) {
                return Err(crate::config::ConfigError {
                    file: path.to_owned(),
                    position: None,
                    message: e.to_string(),
                });
            }
            Plan {
                routes: c.server.allowed_ips.clone(),
                interface: c.interface,
                hooks: c.hooks,
                peers: vec![c.server],
                listen: None,
                connect: Some(c.endpoint),
            }
        }
    })
}

/// Runs the tunnel described by the config at `path` until a signal or a failure.
pub fn run(role: Role, path: &Path) -> ExitCode {
    let plan = match plan(role, path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if role == Role::Server && plan.listen.is_none() {
        eprintln!(
            "{}: [listen] tcp is not implemented yet; configure udp",
            path.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferrotun")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(plan)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

async fn resolve(ep: &Endpoint) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .with_context(|| format!("resolving endpoint {ep}"))?;
    addrs
        .next()
        .with_context(|| format!("endpoint {ep} resolves to no address"))
}

fn bind_udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )
    .context("creating the UDP socket")?;
    if addr.is_ipv6() {
        // "[::]:port" serves IPv4 too (as v4-mapped addresses, shown as IPv4).
        sock.set_only_v6(false)
            .context("making the socket dual-stack")?;
    }
    // Larger buffers absorb bursts. The plain options are capped by net.core.*mem_max;
    // with CAP_NET_ADMIN the FORCE variants are not, so try those first.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(&sock, force, SOCKET_BUFFER as libc::c_int).is_err() {
            let _ = set_int_option(&sock, plain, SOCKET_BUFFER as libc::c_int);
        }
    }
    sock.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "udp {addr}: in use (another ferrotun-server, or another program, listens there)"
            )
        } else {
            anyhow::anyhow!("udp {addr}: bind: {e}")
        }
    })?;
    Ok(sock.into())
}

fn set_int_option(
    sock: &socket2::Socket,
    opt: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option value points to a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn serve(plan: Plan) -> anyhow::Result<()> {
    let Plan {
        interface,
        hooks,
        peers,
        routes,
        listen,
        connect,
    } = plan;
    for p in &peers {
        tracing::debug!(peer = %p.name, key = %p.public_key, "peer configured");
    }
    // Resolve before creating anything: an unresolvable endpoint leaves no interface.
    let endpoint = match &connect {
        Some(ep) => Some(resolve(ep).await?),
        None => None,
    };
    let bind_addr = match (listen, endpoint) {
        (Some(l), _) => l,
        (None, Some(SocketAddr::V6(_))) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        (None, _) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };
    let identity = Arc::new(Identity::new(interface.private_key.clone()));
    let table = build_table(&identity, interface.mode, &peers, AeadBackend::default())?;
    let socket = bind_udp(bind_addr)?;
    let mut iface = Interface::up(&interface, &routes, &hooks)?;
    if let Some(ep) = endpoint
        && let Some(p) = table.get(0)
    {
        p.set_endpoint(ep);
    }
    let queue = iface
        .take_queues()
        .pop()
        .context("the device has no queue")?;
    tracing::info!(
        interface = iface.name(),
        listen = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        peers = peers.len(),
        "tunnel running"
    );
    let mut engine = Engine::start(EngineConfig {
        mode: iface.mode(),
        mtu: iface.mtu(),
        identity,
        table,
        socket,
        tun: queue,
        connect: if endpoint.is_some() {
            vec![0]
        } else {
            Vec::new()
        },
    })?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let result = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); Ok(()) }
        e = engine.failed() => Err(e),
    };
    engine.stop().await;
    iface.down();
    result
}
