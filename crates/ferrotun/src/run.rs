//! Running a tunnel in the foreground: load the config, bind the sockets, bring the
//! interface up, start the engine, serve `show`, reload on SIGHUP, and take everything
//! down on SIGINT/SIGTERM.
//!
//! Exit codes: 0 after SIGINT/SIGTERM, 1 for a runtime failure (device, port or control
//! socket in use, a failed `up` hook, a data path error, a lost server with
//! `persist = false`), 2 for a bad config (checked before anything is created).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use ferrotun_proto::Identity;
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Role;
use crate::config::{ClientConfig, Hooks, InterfaceConfig, PeerConfig, ServerConfig, Transport};
use crate::ctlsock::{self, ControlSocket};
use crate::engine::addr::{PeerAddr, canonical};
use crate::engine::client::ClientSettings;
use crate::engine::table::{PeerMaker, Peers};
use crate::engine::{Engine, EngineConfig};
use crate::iface::Interface;
use crate::privs;

/// Runtime threads: the send path, the receive path and the control task share them.
/// Half the CPUs (1 to 4): a tunnel process shares the machine with the kernel work it
/// drives (both TCP stacks, the veth or NIC), and on 2 cores one thread measured 5.0–5.6
/// Gbit/s against 4.5–4.7 for two (fewer cross-thread wake-ups, no task migration).
/// With several device queues, one thread per queue, up to the number of CPUs.
fn workers(queues: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).clamp(1, 4).max(queues.min(cpus))
}

/// UDP socket buffer size we ask for: room for bursts at several Gbit/s.
const SOCKET_BUFFER: usize = 4 << 20;

/// Everything the runner needs from either kind of config.
struct Plan {
    config: PathBuf,
    interface: InterfaceConfig,
    hooks: Hooks,
    peers: Vec<PeerConfig>,
    routes: Vec<IpNet>,
    listen_udp: Option<SocketAddr>,
    listen_tcp: Option<SocketAddr>,
    client: Option<ClientSettings>,
}

fn plan(role: Role, path: &Path) -> Result<Plan, crate::config::ConfigError> {
    Ok(match role {
        Role::Server => {
            let c = ServerConfig::load(path)?;
            Plan {
                config: path.to_owned(),
                routes: c
                    .peers
                    .iter()
                    .flat_map(|p| p.allowed_ips.iter().copied())
                    .collect(),
                interface: c.interface,
                hooks: c.hooks,
                peers: c.peers,
                listen_udp: c.listen_udp,
                listen_tcp: c.listen_tcp,
                client: None,
            }
        }
        Role::Client => {
            let c = ClientConfig::load(path)?;
            Plan {
                config: path.to_owned(),
                routes: c.server.allowed_ips.clone(),
                interface: c.interface,
                hooks: c.hooks,
                peers: vec![c.server],
                listen_udp: None,
                listen_tcp: None,
                client: Some(ClientSettings {
                    endpoint: c.endpoint,
                    transport: c.transport,
                    persist: c.persist,
                }),
            }
        }
    })
}

/// Runs the tunnel described by the config at `path` until a signal or a failure.
/// `socket` overrides the control socket's path.
pub(crate) fn run(role: Role, path: &Path, socket: Option<PathBuf>) -> ExitCode {
    let plan = match plan(role, path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Everything that needs privileges happens before the runtime's threads exist, so that
    // dropping them afterwards covers the whole process.
    let setup = match setup(role, plan, socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(1);
        }
    };
    // One thread: the current-thread scheduler, which has no work-stealing machinery to
    // pay for (A/B on 2 cores, one stream: 3.33 and 3.27 Gbit/s against 3.06 and 3.19 for
    // a one-worker multi-thread runtime).
    let threads = workers(setup.engine.tun.len());
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.thread_name("ferrotun").enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(setup)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn set_int_option(
    fd: std::os::fd::RawFd,
    opt: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the option value points to a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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

/// `n` UDP sockets on one address: with `n > 1` they share the port through `SO_REUSEPORT`,
/// and the kernel gives each sender's datagrams (by address and port) to one of them. The
/// first is bound without it, so the port must be free (one someone else holds, even with
/// `SO_REUSEPORT`, is refused as with one socket; port 0 gets a port nobody shares); then
/// it joins and the others bind to the same port.
fn bind_udp_group(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    let first = bind_udp(addr, false)?;
    if n <= 1 {
        return Ok(vec![first]);
    }
    socket2::SockRef::from(&first)
        .set_reuse_port(true)
        .context("setting SO_REUSEPORT on the UDP socket")?;
    let shared = SocketAddr::new(addr.ip(), first.local_addr()?.port());
    let mut group = vec![first];
    for _ in 1..n {
        group.push(bind_udp(shared, true)?);
    }
    Ok(group)
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::AsRawFd;
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
        if set_int_option(sock.as_raw_fd(), force, SOCKET_BUFFER as libc::c_int).is_err() {
            let _ = set_int_option(sock.as_raw_fd(), plain, SOCKET_BUFFER as libc::c_int);
        }
    }
    if reuse_port {
        sock.set_reuse_port(true)
            .context("setting SO_REUSEPORT on the UDP socket")?;
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

fn bind_tcp(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .context("creating the TCP socket")?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)
            .context("making the socket dual-stack")?;
    }
    // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT; it
    // does not let two processes listen on one port (that would need SO_REUSEPORT).
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "tcp {addr}: in use (another ferrotun-server, or another program, listens there)"
            )
        } else {
            anyhow::anyhow!("tcp {addr}: bind: {e}")
        }
    })?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// A client's UDP socket: dual-stack so that a re-resolved endpoint of either family
/// works, or IPv4 only where IPv6 is off.
fn client_udp(n: usize) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    bind_udp_group(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0), n)
        .or_else(|_| bind_udp_group(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0), n))
}

/// What setup made, for the runtime to run.
struct Setup {
    role: Role,
    config: PathBuf,
    iface: Interface,
    control: ControlSocket,
    engine: EngineConfig,
    peers: usize,
}

/// Binds the sockets, brings the interface up (hooks included), binds the control socket
/// and drops privileges; no runtime yet.
fn setup(role: Role, plan: Plan, socket: Option<PathBuf>) -> anyhow::Result<Setup> {
    let Plan {
        config,
        interface,
        hooks,
        peers,
        routes,
        listen_udp,
        listen_tcp,
        client,
    } = plan;
    // Resolve before creating anything: an unresolvable endpoint with persist = false
    // leaves no interface; with persist = true the connector keeps trying.
    let endpoint = match &client {
        Some(c) => match (c.endpoint.host.as_str(), c.endpoint.port)
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => Some(canonical(a)),
            Ok(None) | Err(_) if c.persist => {
                tracing::warn!(endpoint = %c.endpoint, "cannot resolve the server yet; will keep trying");
                None
            }
            Ok(None) => anyhow::bail!("resolving the server {}: no address", c.endpoint),
            Err(e) => anyhow::bail!("resolving the server {}: {e}", c.endpoint),
        },
        None => None,
    };
    let identity = Arc::new(Identity::new(interface.private_key.clone()));
    let backend = interface.aead_backend;
    let maker = PeerMaker {
        identity: &identity,
        mode: interface.mode,
        backend,
    };
    let table = Peers::new(maker, &peers)?;
    let udp = match (&client, listen_udp) {
        (Some(c), _) if c.transport == Transport::Udp => client_udp(interface.queues)?,
        (None, Some(addr)) => bind_udp_group(addr, interface.queues)?,
        _ => Vec::new(),
    };
    let tcp = match listen_tcp {
        Some(addr) => Some(bind_tcp(addr)?),
        None => None,
    };
    let mut iface = Interface::up(&interface, &routes, &hooks)?;
    let socket_path = socket
        .or_else(|| interface.control_socket.clone())
        .unwrap_or_else(|| ctlsock::default_path(iface.name()));
    let control = ControlSocket::bind(&socket_path)?;
    if let (Some(ep), Some(c)) = (endpoint, &client)
        && c.transport == Transport::Udp
        && let Some(p) = table.load().get(0)
    {
        p.set_endpoint(PeerAddr::Udp(ep));
    }
    let queues = iface.take_queues();
    match interface.run_as {
        Some(to) => {
            privs::drop_to(to)
                .with_context(|| format!("switching to uid {} gid {}", to.uid, to.gid))?;
            tracing::info!(uid = to.uid, gid = to.gid, "dropped privileges");
        }
        // Started unprivileged with ambient capabilities (a systemd unit): keep none.
        None if unsafe_geteuid() != 0 && privs::has_capabilities() => {
            privs::clear_capabilities().context("dropping capabilities")?;
            tracing::info!("dropped capabilities");
        }
        None => {}
    }
    if interface.run_as.is_some() && privs::has_capabilities() {
        anyhow::bail!("capabilities remain after switching user; refusing to run with them");
    }
    Ok(Setup {
        role,
        config,
        engine: EngineConfig {
            mode: iface.mode(),
            server: role == Role::Server,
            mtu: iface.mtu(),
            interface: iface.name().to_owned(),
            identity,
            backend,
            peers: table,
            udp,
            tcp,
            tun: queues,
            tun_offloads: iface.offloads(),
            udp_offload: interface.offload,
            client,
        },
        iface,
        control,
        peers: peers.len(),
    })
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

async fn serve(setup: Setup) -> anyhow::Result<()> {
    let Setup {
        role,
        config,
        iface,
        mut control,
        engine,
        peers,
    } = setup;
    let mut engine = Engine::start(engine)?;
    let _server = control.serve(engine.shared.clone())?;
    tracing::info!(
        interface = iface.name(),
        listening = ?engine.shared.settings.listening.iter().map(|(t, a)| format!("{t} {a}")).collect::<Vec<_>>(),
        control = %control.path().display(),
        peers,
        aead = engine.shared.settings.backend.name(),
        "tunnel running"
    );
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    privs::sd_notify("READY=1");
    let result = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break Ok(()) }
            _ = hup.recv() => {
                privs::sd_notify("RELOADING=1");
                reload(role, &config, &engine, &iface).await;
                privs::sd_notify("READY=1");
            }
            e = engine.failed() => break Err(e),
        }
    };
    privs::sd_notify("STOPPING=1");
    engine.stop().await;
    drop(control);
    iface.down();
    result
}

/// SIGHUP: a server rereads its config and peer files; a bad file keeps the old ones.
/// The work (reading, parsing, a key agreement per new peer: about 0.1 s for 1000 new
/// peers; route changes) runs on a blocking thread, so the data path, which may share the
/// runtime's only thread, keeps moving packets.
async fn reload(role: Role, path: &Path, engine: &Engine, iface: &Interface) {
    if role != Role::Server {
        tracing::info!("SIGHUP: a client has nothing to reload");
        return;
    }
    let (path, shared, routes) = (path.to_owned(), engine.shared.clone(), iface.routes());
    let work = tokio::task::spawn_blocking(move || {
        let cfg = ServerConfig::load(&path).map_err(|e| e.to_string())?;
        let before = shared.peers.load().all_routes();
        let summary = shared
            .reload_peers(&cfg.peers)
            .map_err(|e| format!("{e:#}"))?;
        routes.update(&before, &shared.peers.load().all_routes());
        Ok::<_, String>(summary)
    });
    match work.await {
        Ok(Ok(s)) => {
            tracing::info!(added = ?s.added, removed = ?s.removed, changed = ?s.changed, "SIGHUP: peers reloaded");
        }
        Ok(Err(e)) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
        Err(e) => tracing::error!("SIGHUP: the reload failed: {e}"),
    }
}
