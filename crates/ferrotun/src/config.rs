//! Configuration files: the server's, its per-peer files, and the client's, read once and
//! validated into typed values before anything is created.
//!
//! Every file a config names (private key, preshared keys, the peer directory and the peer
//! files in it) is part of the config: an error anywhere is a [`ConfigError`] that names the
//! file, and the line and column where one exists (`server.toml:6:20: reason`); for a file
//! named by a config (a key file), the position is that of the config value naming it. The
//! running code never sees a raw string from a config. Unknown keys are errors, so a typo
//! (or a key from a later version, like `protocol`) is never silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrotun_device::Mode;
use ferrotun_proto::{AeadBackend, PresharedKey, PrivateKey, PublicKey};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// The MTU a tunnel uses when the config names none: 1420 fits an IPv6 underlay with a
/// 1500-byte MTU (1420 + 40 IPv6 + 8 UDP + 32 of header and tag = 1500).
pub(crate) const DEFAULT_MTU: u32 = 1420;
/// The smallest MTU accepted: IPv4's minimum reassembly size (RFC 791).
pub(crate) const MIN_MTU: u32 = 576;
/// The smallest MTU that can carry IPv6 (RFC 8200 §5).
pub(crate) const MIN_MTU_IPV6: u32 = 1280;
/// The largest MTU: a sealed message must still fit one UDP datagram (65535 - 20 IPv4 -
/// 8 UDP - 32 of ferrotun header and tag, rounded down).
pub(crate) const MAX_MTU: u32 = 65400;
/// The most device queues (the TUN driver allows 256; beyond one per core they only cost).
pub(crate) const MAX_QUEUES: usize = 64;

/// A configuration problem, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The file the problem is in (or, for a named file that cannot be read, the config
    /// that names it).
    pub(crate) file: PathBuf,
    /// One-based line and column, when the problem has a place in the file.
    pub(crate) position: Option<(usize, usize)>,
    /// What is wrong, for an operator.
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A config file's text, for turning byte spans into lines and columns.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            position: None,
            message: format!("cannot read: {e}"),
        })?;
        Ok(Source {
            path: path.to_owned(),
            text,
        })
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            position: span.map(|s| self.position(s.start)),
            message: message.into(),
        }
    }

    fn at<T>(&self, value: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error(Some(value.span()), message)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            // The toml message already says what and where in its own words; keep the first
            // line only (the rest is a drawing of the line, which we locate ourselves).
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned();
            self.error(e.span(), msg)
        })
    }

    /// Resolves a path from the config relative to the config's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

// ---- raw, as written -------------------------------------------------------------------

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Tun,
    Tap,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
/// The underlay transport of a client's tunnel.
pub(crate) enum Transport {
    /// One UDP datagram per message.
    Udp,
    /// One TCP connection; messages framed with a 2-byte length.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    #[serde(default)]
    mode: Option<RawMode>,
    name: Spanned<String>,
    #[serde(default)]
    mtu: Option<Spanned<i64>>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    private_key_file: Spanned<String>,
    #[serde(default)]
    mac: Option<Spanned<String>>,
    #[serde(default)]
    control_socket: Option<Spanned<String>>,
    #[serde(default)]
    offload: Option<bool>,
    #[serde(default)]
    queues: Option<Spanned<i64>>,
    #[serde(default)]
    aead_backend: Option<Spanned<String>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    group: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    #[serde(default)]
    up: Option<String>,
    #[serde(default)]
    down: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    udp: Option<Spanned<String>>,
    #[serde(default)]
    tcp: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeersSection {
    dir: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    interface: RawInterface,
    listen: Spanned<RawListen>,
    peers: RawPeersSection,
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    public_key: Option<Spanned<String>>,
    #[serde(default)]
    public_key_file: Option<Spanned<String>>,
    #[serde(default)]
    allowed_ips: Vec<Spanned<String>>,
    #[serde(default)]
    preshared_key_file: Option<Spanned<String>>,
    #[serde(default)]
    compress: bool,
    #[serde(default)]
    keepalive: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerSection {
    endpoint: Spanned<String>,
    #[serde(default)]
    transport: Option<Transport>,
    #[serde(default)]
    public_key: Option<Spanned<String>>,
    #[serde(default)]
    public_key_file: Option<Spanned<String>>,
    #[serde(default)]
    allowed_ips: Vec<Spanned<String>>,
    #[serde(default)]
    preshared_key_file: Option<Spanned<String>>,
    #[serde(default)]
    compress: bool,
    #[serde(default)]
    keepalive: Option<Spanned<i64>>,
    #[serde(default)]
    persist: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    interface: RawInterface,
    server: RawServerSection,
    #[serde(default)]
    hooks: RawHooks,
}

// ---- validated -------------------------------------------------------------------------

/// The `[interface]` section: the local device and identity.
#[derive(Debug, Clone)]
pub(crate) struct InterfaceConfig {
    /// TUN (IP) or TAP (Ethernet).
    pub(crate) mode: Mode,
    /// Interface name (exact, or a pattern such as `ftun%d`).
    pub(crate) name: String,
    /// Device MTU.
    pub(crate) mtu: u32,
    /// Addresses with prefix lengths, assigned to the device.
    pub(crate) addresses: Vec<IpNet>,
    /// This side's static private key.
    pub(crate) private_key: PrivateKey,
    /// The TAP device's MAC address, if set.
    pub(crate) mac: Option<[u8; 6]>,
    /// Where the control socket lives, if set (else derived from the interface name).
    pub(crate) control_socket: Option<PathBuf>,
    /// Use TUN segmentation offloads and UDP GSO/GRO where the kernel has them.
    pub(crate) offload: bool,
    /// Device queues, each with its own UDP socket (one port, `SO_REUSEPORT`) and its own
    /// send and receive tasks.
    pub(crate) queues: usize,
    /// Which ChaCha20-Poly1305 implementation carries data (`auto`: the fastest this CPU
    /// runs).
    pub(crate) aead_backend: AeadBackend,
    /// Who to run as once the device, the sockets and the `up` hook are set up.
    pub(crate) run_as: Option<crate::privs::RunAs>,
}

/// Shell commands run after the device is configured and before it is removed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hooks {
    /// Run (with `/bin/sh -c`) once the device is up and configured.
    pub(crate) up: Option<String>,
    /// Run before the device is removed.
    pub(crate) down: Option<String>,
}

/// One peer: a client in the server's peer directory, or the server in a client config.
#[derive(Debug, Clone)]
pub(crate) struct PeerConfig {
    /// The peer's name (for logs and `show`).
    pub(crate) name: String,
    /// The peer's static public key.
    pub(crate) public_key: PublicKey,
    /// Inner addresses the peer may use as source, and that are routed to it.
    pub(crate) allowed_ips: Vec<IpNet>,
    /// Optional preshared key mixed into the handshake.
    pub(crate) preshared_key: Option<PresharedKey>,
    /// Whether payloads to and from this peer are LZ4-compressed (adaptively).
    pub(crate) compress: bool,
    /// Persistent keepalive interval, if any.
    pub(crate) keepalive: Option<Duration>,
}

impl PeerConfig {
    /// Whether `other` can keep this peer's session: same key, preshared key, compression
    /// and keepalive (name and allowed IPs may change under a running session).
    pub(crate) fn same_session(&self, other: &PeerConfig) -> bool {
        self.public_key == other.public_key
            && self.preshared_key.as_ref().map(|k| *k.as_bytes())
                == other.preshared_key.as_ref().map(|k| *k.as_bytes())
            && self.compress == other.compress
            && self.keepalive == other.keepalive
    }
}

/// A validated server config.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// The local device and identity.
    pub(crate) interface: InterfaceConfig,
    /// Listening UDP address.
    pub(crate) listen_udp: Option<SocketAddr>,
    /// Listening TCP address.
    pub(crate) listen_tcp: Option<SocketAddr>,
    /// The peers, sorted by file name.
    pub(crate) peers: Vec<PeerConfig>,
    /// Hooks.
    pub(crate) hooks: Hooks,
}

/// Where a client finds its server: a host (name or address) and a port, resolved when
/// the client connects (and again on every reconnect round).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name or IP address literal.
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A validated client config.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    /// The local device and identity.
    pub(crate) interface: InterfaceConfig,
    /// The server as a peer (its key, allowed IPs, compression, keepalive).
    pub(crate) server: PeerConfig,
    /// Where the server is.
    pub(crate) endpoint: Endpoint,
    /// UDP or TCP.
    pub(crate) transport: Transport,
    /// Keep reconnecting with backoff when the server goes away.
    pub(crate) persist: bool,
    /// Hooks.
    pub(crate) hooks: Hooks,
}

// ---- validation helpers ----------------------------------------------------------------

fn parse_net(
    src: &Source,
    v: &Spanned<String>,
    what: &str,
    host_bits_ok: bool,
) -> Result<IpNet, ConfigError> {
    let s = v.get_ref().trim();
    if !s.contains('/') {
        return Err(src.at(
            v,
            format!("{what} {s:?} needs a prefix length, like 10.77.0.1/24 or fd77::1/64"),
        ));
    }
    let net: IpNet = s.parse().map_err(|_| {
        src.at(
            v,
            format!("{what} {s:?} is not an IPv4 or IPv6 address with a prefix length"),
        )
    })?;
    if !host_bits_ok && net.trunc() != net {
        return Err(src.at(
            v,
            format!(
                "{what} {s:?} has host bits set; did you mean {}?",
                net.trunc()
            ),
        ));
    }
    Ok(net)
}

fn parse_socket(src: &Source, v: &Spanned<String>, what: &str) -> Result<SocketAddr, ConfigError> {
    v.get_ref().trim().parse().map_err(|_| {
        src.at(
            v,
            format!(
                "{what} {:?} is not an address and port, like 0.0.0.0:51820 or [::]:51820",
                v.get_ref()
            ),
        )
    })
}

fn read_secret(
    src: &Source,
    v: &Spanned<String>,
    what: &str,
) -> Result<(PathBuf, String), ConfigError> {
    let path = src.resolve(v.get_ref());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| src.at(v, format!("{what} {}: {e}", path.display())))?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(&path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "key file is readable by group or others; chmod 600 it");
        }
    }
    Ok((path, text))
}

fn parse_interface(src: &Source, raw: RawInterface) -> Result<InterfaceConfig, ConfigError> {
    let mode = match raw.mode.unwrap_or(RawMode::Tun) {
        RawMode::Tun => Mode::Tun,
        RawMode::Tap => Mode::Tap,
    };
    ferrotun_device::name::validate(raw.name.get_ref())
        .map_err(|e| src.at(&raw.name, e.to_string()))?;
    let mut addresses = Vec::new();
    for a in &raw.address {
        let net = parse_net(src, a, "address", true)?;
        if addresses.contains(&net) {
            return Err(src.at(a, format!("address {net} is listed twice")));
        }
        addresses.push(net);
    }
    let queues = match &raw.queues {
        None => 1,
        Some(q) => {
            let v = *q.get_ref();
            if !(1..=MAX_QUEUES as i64).contains(&v) {
                return Err(src.at(q, format!("queues {v} is outside 1..={MAX_QUEUES}")));
            }
            v as usize
        }
    };
    let aead_backend = match &raw.aead_backend {
        None => AeadBackend::default(),
        Some(b) if b.get_ref() == "auto" => AeadBackend::default(),
        Some(b) => match AeadBackend::from_name(b.get_ref()) {
            Some(backend) if backend.is_available() => backend,
            Some(backend) => {
                return Err(src.at(
                    b,
                    format!(
                        "aead_backend \"{}\" needs a CPU with AVX-512F, AVX-512VL and AVX-512 IFMA, and this one lacks them (\"auto\" picks ring here)",
                        backend.name()
                    ),
                ));
            }
            None => {
                let names: Vec<String> = std::iter::once("auto")
                    .chain(AeadBackend::ALL.map(AeadBackend::name))
                    .map(|n| format!("{n:?}"))
                    .collect();
                return Err(src.at(
                    b,
                    format!(
                        "aead_backend {:?} is not one of {}",
                        b.get_ref(),
                        names.join(", ")
                    ),
                ));
            }
        },
    };
    let mtu = match &raw.mtu {
        None => DEFAULT_MTU,
        Some(m) => {
            let v = *m.get_ref();
            if !(i64::from(MIN_MTU)..=i64::from(MAX_MTU)).contains(&v) {
                return Err(src.at(m, format!("mtu {v} is outside {MIN_MTU}..={MAX_MTU}")));
            }
            v as u32
        }
    };
    if mtu < MIN_MTU_IPV6
        && let Some(a) = raw.address.iter().find(|a| a.get_ref().contains(':'))
    {
        return Err(src.at(
            a,
            format!(
                "IPv6 address {} needs an mtu of at least {MIN_MTU_IPV6} (mtu is {mtu})",
                a.get_ref()
            ),
        ));
    }
    let (key_path, text) = read_secret(src, &raw.private_key_file, "private_key_file")?;
    let private_key = PrivateKey::from_base64(text.trim()).map_err(|e| {
        src.at(
            &raw.private_key_file,
            format!(
                "private_key_file {} does not hold a private key: {e}",
                key_path.display()
            ),
        )
    })?;
    let run_as = match (&raw.user, &raw.group) {
        (None, None) => None,
        (None, Some(g)) => return Err(src.at(g, "group needs user as well")),
        (Some(u), g) => {
            let (uid, primary) =
                crate::privs::lookup_user(u.get_ref()).map_err(|e| src.at(u, e))?;
            let gid = match g {
                Some(g) => crate::privs::lookup_group(g.get_ref()).map_err(|e| src.at(g, e))?,
                None => primary,
            };
            Some(crate::privs::RunAs { uid, gid })
        }
    };
    let mac = match &raw.mac {
        None => None,
        Some(m) => {
            if mode != Mode::Tap {
                return Err(src.at(m, "mac is only for mode = \"tap\""));
            }
            Some(parse_mac(m.get_ref()).ok_or_else(|| {
                src.at(
                    m,
                    format!(
                        "mac {:?} is not a unicast MAC address like 02:00:00:00:00:01",
                        m.get_ref()
                    ),
                )
            })?)
        }
    };
    Ok(InterfaceConfig {
        mode,
        name: raw.name.into_inner(),
        mtu,
        addresses,
        private_key,
        mac,
        control_socket: raw.control_socket.map(|s| src.resolve(s.get_ref())),
        offload: raw.offload.unwrap_or(true),
        queues,
        aead_backend,
        run_as,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast addresses (low bit of the first byte),
/// which the kernel refuses as a device address.
pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() || out[0] & 1 != 0 || out == [0; 6] {
        return None;
    }
    Some(out)
}

fn parse_keepalive(
    src: &Source,
    v: &Option<Spanned<i64>>,
) -> Result<Option<Duration>, ConfigError> {
    match v {
        None => Ok(None),
        Some(k) => match *k.get_ref() {
            0 => Ok(None),
            s @ 1..=65535 => Ok(Some(Duration::from_secs(s as u64))),
            s => Err(src.at(
                k,
                format!("keepalive {s} is outside 0..=65535 seconds (0 turns it off)"),
            )),
        },
    }
}

/// The peer's public key, given inline (`public_key`) or in a file (`public_key_file`,
/// as `wg pubkey` writes it): exactly one of the two.
fn parse_public_key(
    src: &Source,
    inline: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
    section: Option<Range<usize>>,
) -> Result<PublicKey, ConfigError> {
    match (inline, file) {
        (Some(v), None) => PublicKey::from_base64(v.get_ref().trim())
            .map_err(|e| src.at(v, format!("public_key is not a valid key: {e}"))),
        (None, Some(f)) => {
            let path = src.resolve(f.get_ref());
            let text = std::fs::read_to_string(&path)
                .map_err(|e| src.at(f, format!("public_key_file {}: {e}", path.display())))?;
            PublicKey::from_base64(text.trim()).map_err(|e| {
                src.at(
                    f,
                    format!(
                        "public_key_file {} does not hold a public key: {e}",
                        path.display()
                    ),
                )
            })
        }
        (Some(v), Some(_)) => Err(src.at(v, "give public_key or public_key_file, not both")),
        (None, None) => Err(src.error(section, "missing public_key (or public_key_file)")),
    }
}

fn parse_psk(
    src: &Source,
    v: &Option<Spanned<String>>,
) -> Result<Option<PresharedKey>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let (path, text) = read_secret(src, v, "preshared_key_file")?;
    PresharedKey::from_base64(text.trim())
        .map(Some)
        .map_err(|e| {
            src.at(
                v,
                format!(
                    "preshared_key_file {} does not hold a key: {e}",
                    path.display()
                ),
            )
        })
}

fn parse_allowed(src: &Source, list: &[Spanned<String>]) -> Result<Vec<IpNet>, ConfigError> {
    let mut out: Vec<IpNet> = Vec::new();
    for a in list {
        let net = parse_net(src, a, "allowed_ips entry", false)?;
        if out.contains(&net) {
            return Err(src.at(a, format!("allowed_ips lists {net} twice")));
        }
        out.push(net);
    }
    Ok(out)
}

fn valid_peer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Reads one peer file.
pub(crate) fn load_peer(path: &Path) -> Result<PeerConfig, ConfigError> {
    let src = Source::read(path)?;
    let raw: RawPeer = src.parse()?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match &raw.name {
        Some(n) => {
            if !valid_peer_name(n.get_ref()) {
                return Err(src.at(
                    n,
                    format!("name {:?}: use 1 to 64 of A-Z a-z 0-9 - _ . @", n.get_ref()),
                ));
            }
            n.get_ref().clone()
        }
        None => {
            if !valid_peer_name(&stem) {
                return Err(src.error(
                    None,
                    "the file name is not a valid peer name (1 to 64 of A-Z a-z 0-9 - _ . @); rename it or set name = \"...\"",
                ));
            }
            stem
        }
    };
    Ok(PeerConfig {
        name,
        public_key: parse_public_key(&src, &raw.public_key, &raw.public_key_file, None)?,
        allowed_ips: parse_allowed(&src, &raw.allowed_ips)?,
        preshared_key: parse_psk(&src, &raw.preshared_key_file)?,
        compress: raw.compress,
        keepalive: parse_keepalive(&src, &raw.keepalive)?,
    })
}

/// Reads every `*.toml` file in a peer directory, sorted by name, and checks that no two
/// peers share a name, a key or an allowed-IPs entry.
pub(crate) fn load_peer_dir(
    dir: &Path,
    own_key: &PublicKey,
) -> Result<Vec<PeerConfig>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError {
        file: dir.to_owned(),
        position: None,
        message: format!("cannot read the peer directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut peers: Vec<PeerConfig> = Vec::with_capacity(files.len());
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    let mut by_key: HashMap<PublicKey, PathBuf> = HashMap::new();
    let mut by_net: BTreeMap<IpNet, PathBuf> = BTreeMap::new();
    for f in files {
        let peer = load_peer(&f)?;
        let dup = |what: String, other: &Path| ConfigError {
            file: f.clone(),
            position: None,
            message: format!("{what} is also used by {}", other.display()),
        };
        if &peer.public_key == own_key {
            return Err(ConfigError {
                file: f.clone(),
                position: None,
                message: "public_key is this server's own key".into(),
            });
        }
        if let Some(o) = by_name.insert(peer.name.clone(), f.clone()) {
            return Err(dup(format!("peer name {:?}", peer.name), &o));
        }
        if let Some(o) = by_key.insert(peer.public_key, f.clone()) {
            return Err(dup("public_key".into(), &o));
        }
        for net in &peer.allowed_ips {
            if let Some(o) = by_net.insert(*net, f.clone()) {
                return Err(dup(format!("allowed_ips entry {net}"), &o));
            }
        }
        peers.push(peer);
    }
    Ok(peers)
}

impl ServerConfig {
    /// Reads and validates a server config and everything it names.
    pub(crate) fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let src = Source::read(path)?;
        let raw: RawServer = src.parse()?;
        let interface = parse_interface(&src, raw.interface)?;
        let listen_udp = raw
            .listen
            .get_ref()
            .udp
            .as_ref()
            .map(|v| parse_socket(&src, v, "udp"))
            .transpose()?;
        let listen_tcp = raw
            .listen
            .get_ref()
            .tcp
            .as_ref()
            .map(|v| parse_socket(&src, v, "tcp"))
            .transpose()?;
        if listen_udp.is_none() && listen_tcp.is_none() {
            return Err(src.at(&raw.listen, "[listen] needs udp, tcp or both"));
        }
        let peers_dir = src.resolve(raw.peers.dir.get_ref());
        if !peers_dir.is_dir() {
            return Err(src.at(
                &raw.peers.dir,
                format!("peer directory {} does not exist", peers_dir.display()),
            ));
        }
        let peers = load_peer_dir(&peers_dir, &interface.private_key.public_key())?;
        Ok(ServerConfig {
            interface,
            listen_udp,
            listen_tcp,
            peers,
            hooks: Hooks {
                up: raw.hooks.up,
                down: raw.hooks.down,
            },
        })
    }
}

fn parse_endpoint(src: &Source, v: &Spanned<String>) -> Result<Endpoint, ConfigError> {
    let s = v.get_ref().trim();
    let bad = || {
        src.at(
            v,
            format!("endpoint {s:?} is not host:port (like 198.18.0.1:51820, [fd18::1]:51820 or vpn.example.net:51820)"),
        )
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(bad()); // a bare IPv6 address needs brackets
        }
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'));
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok(Endpoint {
        host: host.to_owned(),
        port,
    })
}

impl ClientConfig {
    /// Reads and validates a client config and everything it names.
    pub(crate) fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let src = Source::read(path)?;
        let raw: RawClient = src.parse()?;
        let interface = parse_interface(&src, raw.interface)?;
        let s = raw.server;
        let endpoint = parse_endpoint(&src, &s.endpoint)?;
        let server = PeerConfig {
            name: "server".into(),
            public_key: parse_public_key(
                &src,
                &s.public_key,
                &s.public_key_file,
                Some(s.endpoint.span()),
            )?,
            allowed_ips: parse_allowed(&src, &s.allowed_ips)?,
            preshared_key: parse_psk(&src, &s.preshared_key_file)?,
            compress: s.compress,
            keepalive: parse_keepalive(&src, &s.keepalive)?,
        };
        if server.public_key == interface.private_key.public_key() {
            return Err(src.error(
                Some(s.endpoint.span()),
                "the server's public key is this client's own key",
            ));
        }
        Ok(ClientConfig {
            interface,
            server,
            endpoint,
            transport: s.transport.unwrap_or(Transport::Udp),
            persist: s.persist.unwrap_or(true),
            hooks: Hooks {
                up: raw.hooks.up,
                down: raw.hooks.down,
            },
        })
    }
}

#[cfg(test)]
mod tests;
