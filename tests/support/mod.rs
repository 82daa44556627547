//! What every end-to-end test needs: the real binaries, a copy of the example configs
//! with freshly generated keys, and processes started in the lab's namespaces.
//!
//! The tests run `config/server.toml`, `config/client.toml` and `config/peers/*` exactly
//! as committed; a test that needs a variant (another endpoint, a hook) edits its own
//! copy and says so.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use ferrotun_lab::{Host, Lab, Netns, NsProcess, Signal, TcpTransfer};

/// A mebibyte.
pub const MB: u64 = 1 << 20;

pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Sends `bytes` through the tunnel from `from` to a listener on `to_addr` in `to`, and
/// checks that every byte arrived unchanged.
pub fn transfer(to: &Netns, to_addr: &str, from: &Netns, bytes: u64) {
    let report = TcpTransfer::new(bytes)
        .timeout(Duration::from_secs(90))
        .run(to, sock(to_addr), from)
        .expect("transfer through the tunnel");
    assert!(report.intact(), "transfer damaged: {report:?}");
    assert_eq!(report.received_bytes, bytes);
}

/// How long a tunnel may take to come up.
pub const UP: Duration = Duration::from_secs(10);

pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrotun-server")
}

pub fn client_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrotun-client")
}

/// The repository's `config/` directory.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

/// A private copy of `config/` with keys for the server, alice, bob, carol (whom the
/// example peer directory lacks) and mallory (whom no config names) in `keys/`.
pub struct Configs {
    dir: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "keys" {
            continue;
        }
        let target = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn run_with_stdin(bin: &str, arg: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(bin)
        .arg(arg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{bin} {arg} failed");
    out.stdout
}

impl Configs {
    pub fn new() -> Configs {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&example_dir(), dir.path());
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        for who in ["server", "alice", "bob", "carol", "mallory"] {
            let private = run_with_stdin(server_bin(), "genkey", b"");
            let public = run_with_stdin(client_bin(), "pubkey", &private);
            let key = keys.join(format!("{who}.key"));
            std::fs::write(&key, &private).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(keys.join(format!("{who}.pub")), public).unwrap();
        }
        Configs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn server(&self) -> PathBuf {
        self.path("server.toml")
    }

    pub fn client(&self) -> PathBuf {
        self.path("client.toml")
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// Writes `name` as a copy of `from` with `edits` (pattern, replacement) applied; each
    /// pattern must occur, so an edit cannot silently miss after the example changes.
    pub fn variant(&self, from: &str, name: &str, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = self.read(from);
        for (pat, rep) in edits {
            assert!(text.contains(pat), "{from} has no {pat:?} to replace");
            text = text.replace(pat, rep);
        }
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Starts `ferrotun-server -c cfg` on `host` and waits until it runs.
pub fn start_server(lab: &Lab, host: &Host, cfg: &Path) -> NsProcess {
    start(lab, host, "server", server_bin(), cfg)
}

/// Starts `ferrotun-client -c cfg` on `host` and waits until it runs.
pub fn start_client(lab: &Lab, host: &Host, label: &str, cfg: &Path) -> NsProcess {
    start(lab, host, label, client_bin(), cfg)
}

/// The control socket of the process started as `label` (each test's own: `/run` is
/// shared by every namespace, and tests run in parallel).
pub fn socket_path(lab: &Lab, label: &str) -> PathBuf {
    lab.log_dir().join(format!("{label}.sock"))
}

/// Asks the process started as `label` for `show --json` and parses it.
pub fn show_json(lab: &Lab, label: &str) -> serde_json::Value {
    let out = Command::new(server_bin())
        .args(["show", "--json", "--socket"])
        .arg(socket_path(lab, label))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("show --json prints JSON")
}

fn start(lab: &Lab, host: &Host, label: &str, bin: &str, cfg: &Path) -> NsProcess {
    let mut cmd = host.command(bin);
    cmd.arg("-v")
        .arg("-c")
        .arg(cfg)
        .arg("--socket")
        .arg(socket_path(lab, label))
        .env("RUST_LOG", "debug");
    let mut p = lab.spawn(label, &mut cmd).unwrap();
    if let Err(e) = p.wait_for_output("tunnel running", UP) {
        panic!("{label} did not start: {e}\n{}", p.stderr());
    }
    p
}

/// Stops a tunnel process with SIGTERM and returns its exit code.
pub fn stop(p: &mut NsProcess) -> i32 {
    let st = p.stop_with(Signal::Term, Duration::from_secs(10)).unwrap();
    st.code().unwrap_or(-1)
}

/// Whether an interface exists in the host's namespace.
pub fn has_interface(host: &Host, name: &str) -> bool {
    host.ns().interfaces().unwrap().iter().any(|i| i == name)
}
