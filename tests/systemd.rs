//! The systemd units in `config/systemd/`: `systemd-analyze verify` accepts them,
//! `systemd-analyze security --offline=true` scores each at an overall exposure of 2.0 or
//! lower, they say what the issue asks (Type=notify, reload by SIGHUP, restart on failure,
//! `/etc/ferrotun/%i.toml`, a dedicated user with only ambient CAP_NET_ADMIN, the one device),
//! and their command lines work when run the way systemd runs them.
//!
//! No systemd runs here (nor in CI), so the last test plays systemd's part: it runs the
//! units' `ExecStart=` with `setpriv` as an unprivileged user (65534) whose only
//! capability is an ambient CAP_NET_ADMIN (what `User=`, `AmbientCapabilities=`,
//! `CapabilityBoundingSet=` and `NoNewPrivileges=` give), with `$NOTIFY_SOCKET` pointing at
//! a socket of its own, inside the lab's namespaces; it runs `ExecReload=` with
//! `$MAINPID`, and stops with SIGTERM as systemd does. The sandboxing directives themselves
//! are only checked by `systemd-analyze`.
//!
//! `verify` wants every `Exec*=` program to exist; the units name
//! `/usr/local/bin/ferrotun-{server,client}`, which a test machine does not have, so the
//! test verifies a temporary copy in which that one path is replaced by the binary cargo
//! built (and checks that nothing else differs). Outside CI a machine without
//! systemd-analyze skips those two tests with a message; under CI=true that is a failure
//! (`scripts/test.sh` installs systemd).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferrotun_lab::{Host, Lab, NsProcess, Signal, wait_for_ping};
use support::{Configs, addr, client_bin, server_bin};

/// Where the units expect the binaries.
const INSTALLED: &str = "/usr/local/bin/";
/// The best exposure `systemd-analyze security` may give (the issue's bound).
const MAX_EXPOSURE: f64 = 2.0;
/// The uid and gid the emulated `User=`/`Group=` get.
const UNPRIVILEGED: &str = "65534";

fn unit_path(role: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../config/systemd/ferrotun-{role}@.service"))
}

fn unit_text(role: &str) -> String {
    std::fs::read_to_string(unit_path(role)).expect("the unit file exists")
}

/// Every `Key=value` of the unit, in order (comments and section headers left out).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values(text: &str, key: &str) -> Vec<String> {
    directives(text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn one(text: &str, key: &str) -> String {
    let v = values(text, key);
    assert_eq!(v.len(), 1, "exactly one {key}= in the unit: {v:?}");
    v[0].clone()
}

fn bin(role: &str) -> &'static str {
    if role == "server" {
        server_bin()
    } else {
        client_bin()
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether systemd-analyze runs here. Outside CI its absence skips the test (after saying
/// so); under CI=true it is a failure.
fn systemd_analyze_here() -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => format!(
                    "systemd-analyze --version failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("systemd-analyze cannot run: {e}"),
            };
            if in_ci() {
                panic!("{why} (scripts/test.sh installs systemd)");
            }
            eprintln!("skipped: {why}; install systemd (scripts/test.sh does)");
            false
        }
    }
}

#[test]
fn the_units_say_what_the_issue_asks() {
    for role in ["server", "client"] {
        let t = unit_text(role);
        assert_eq!(one(&t, "Type"), "notify", "{role}");
        assert_eq!(one(&t, "NotifyAccess"), "main", "{role}");
        assert_eq!(
            one(&t, "ExecStart"),
            format!("{INSTALLED}ferrotun-{role} -c /etc/ferrotun/%i.toml"),
            "{role}"
        );
        assert_eq!(one(&t, "ExecReload"), "/bin/kill -HUP $MAINPID", "{role}");
        assert_eq!(one(&t, "Restart"), "on-failure", "{role}");
        assert_eq!(
            one(&t, "RestartPreventExitStatus"),
            "2",
            "{role}: a bad config"
        );
        let user = one(&t, "User");
        assert!(user != "root" && user != "0", "{role}: User={user}");
        assert_eq!(one(&t, "AmbientCapabilities"), "CAP_NET_ADMIN", "{role}");
        assert_eq!(one(&t, "CapabilityBoundingSet"), "CAP_NET_ADMIN", "{role}");
        assert_eq!(one(&t, "NoNewPrivileges"), "yes", "{role}");
        assert_eq!(one(&t, "DevicePolicy"), "closed", "{role}");
        assert_eq!(values(&t, "DeviceAllow"), ["/dev/net/tun rw"], "{role}");
        assert_eq!(one(&t, "RuntimeDirectory"), "ferrotun", "{role}");
        assert_eq!(one(&t, "ProtectSystem"), "strict", "{role}");
    }
}

/// A copy of the unit in `dir` whose ExecStart runs the binary cargo built.
fn verifiable_copy(role: &str, dir: &Path) -> PathBuf {
    let text = unit_text(role);
    let installed = format!("{INSTALLED}ferrotun-{role}");
    assert!(text.contains(&format!("ExecStart={installed} ")), "{role}");
    let copy = text.replace(
        &format!("ExecStart={installed}"),
        &format!("ExecStart={}", bin(role)),
    );
    // Nothing else changed: the same directives but ExecStart.
    let (a, b) = (directives(&text), directives(&copy));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y || x.0 == "ExecStart", "{x:?} vs {y:?}");
    }
    let path = dir.join(format!("ferrotun-{role}@.service"));
    std::fs::write(&path, copy).unwrap();
    path
}

/// `systemd-analyze verify` on an instance of the unit in `dir`: its output lines about
/// ferrotun's units (others on the machine may have complaints of their own).
fn verify(role: &str, dir: &Path) -> (bool, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join(format!("ferrotun-{role}@test.service")))
        .output()
        .expect("running systemd-analyze verify");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = all
        .lines()
        .filter(|l| l.contains("ferrotun"))
        .map(str::to_owned)
        .collect();
    (out.status.success(), ours)
}

#[test]
fn systemd_analyze_verify_accepts_both_units() {
    if !systemd_analyze_here() {
        return;
    }
    for role in ["server", "client"] {
        let dir = tempfile::tempdir().unwrap();
        verifiable_copy(role, dir.path());
        let (ok, complaints) = verify(role, dir.path());
        assert!(ok && complaints.is_empty(), "{role}: {complaints:#?}");
        // The check can fail: a misspelt directive is reported.
        let path = dir.path().join(format!("ferrotun-{role}@.service"));
        let broken = std::fs::read_to_string(&path).unwrap().replace(
            "ProtectSystem=strict",
            "ProtectSystem=strict\nProtectSystme=strict",
        );
        std::fs::write(&path, broken).unwrap();
        let (_, complaints) = verify(role, dir.path());
        assert!(
            complaints.iter().any(|l| l.contains("ProtectSystme")),
            "{role}: a bad directive is reported: {complaints:#?}"
        );
    }
}

/// The number in "→ Overall exposure level for NAME: 1.8 OK 🙂".
fn overall_exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn systemd_analyze_security_scores_both_units_at_most_2_0() {
    if !systemd_analyze_here() {
        return;
    }
    for role in ["server", "client"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit_path(role))
            .output()
            .expect("running systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure = overall_exposure(&text).unwrap_or_else(|| {
            panic!(
                "{role}: no overall exposure in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        eprintln!("ferrotun-{role}@.service: overall exposure {exposure}");
        assert!(
            exposure <= MAX_EXPOSURE,
            "{role}: exposure {exposure}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Running the units' commands as systemd would.

/// A `$NOTIFY_SOCKET` of our own, writable by the unprivileged service.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// The next message, within `timeout`.
    fn next(&self, timeout: Duration) -> String {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {timeout:?}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// A TUN clone device node with mode 0666, as udev makes `/dev/net/tun` by default
/// (`KERNEL=="tun", MODE="0666"`). Machines without udev, this one and CI among them, have
/// it 0600 root, which no unprivileged service can open; the test mounts this node over
/// `/dev/net/tun` in the service's own mount namespace instead of changing the host's.
fn tun_node(dir: &Path) -> PathBuf {
    let node = dir.join("tun");
    let st = Command::new("mknod")
        .args(["-m", "0666"])
        .arg(&node)
        .args(["c", "10", "200"])
        .status()
        .expect("running mknod");
    assert!(st.success(), "mknod {}", node.display());
    node
}

/// The unit's ExecStart with %i and the paths of this test, run in `host` by setpriv as
/// systemd would: uid/gid 65534, no supplementary groups, CAP_NET_ADMIN ambient and alone
/// in the bounding set, no_new_privs; in a mount namespace of its own where `/dev/net/tun`
/// is `tun` (see [`tun_node`]).
fn start_unit(
    lab: &Lab,
    host: &Host,
    role: &str,
    instance: &str,
    etc: &Path,
    tun: &Path,
    notify: &NotifySocket,
) -> NsProcess {
    let exec_start = one(&unit_text(role), "ExecStart")
        .replace("%i", instance)
        .replace(&format!("{INSTALLED}ferrotun-{role}"), bin(role))
        .replace("/etc/ferrotun/", &format!("{}/", etc.display()));
    let mut cmd = host.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /dev/net/tun && exec "$@""#)
        .arg(tun)
        .arg("setpriv");
    cmd.args([
        &format!("--reuid={UNPRIVILEGED}"),
        &format!("--regid={UNPRIVILEGED}"),
        "--clear-groups",
        "--inh-caps=-all,+net_admin",
        "--ambient-caps=+net_admin",
        "--bounding-set=-all,+net_admin",
        "--no-new-privs",
        "--",
    ])
    .args(exec_start.split_whitespace())
    .env("NOTIFY_SOCKET", &notify.path)
    .env("RUST_LOG", "info");
    lab.spawn(role, &mut cmd)
        .expect("starting the unit's command")
}

fn assert_no_capabilities(p: &NsProcess, who: &str) {
    for t in std::fs::read_dir(format!("/proc/{}/task", p.pid())).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        for key in ["CapEff:", "CapPrm:", "CapAmb:"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .trim();
            assert_eq!(u64::from_str_radix(v, 16).unwrap(), 0, "{who}: {key} {v}");
        }
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().all(|u| u == UNPRIVILEGED),
            "{who}: Uid {uid}"
        );
    }
}

#[test]
fn the_units_commands_run_unprivileged_with_notify_reload_and_stop() {
    let setpriv = Command::new("setpriv").arg("--version").output();
    assert!(
        setpriv.is_ok_and(|o| o.status.success()),
        "setpriv (util-linux) plays systemd's part here"
    );
    let lab = Lab::two_hosts().unwrap();
    let (a, b) = (lab.a(), lab.b());
    let cfg = Configs::new();
    // RuntimeDirectory=ferrotun: a directory the service's user owns, for its socket.
    let run = tempfile::tempdir().unwrap();
    let tun = tun_node(run.path());
    for (from, name, sock) in [
        ("server.toml", "office.toml", "ftun0"),
        ("client.toml", "home.toml", "ftun1"),
    ] {
        cfg.variant(
            from,
            name,
            &[(
                "[interface]\n",
                &format!(
                    "[interface]\ncontrol_socket = \"{}/{sock}.sock\"\n",
                    run.path().display()
                ),
            )],
        );
    }
    let etc = cfg.server().parent().unwrap().to_owned();
    let id: u32 = UNPRIVILEGED.parse().unwrap();
    chown_tree(&etc, id, id);
    chown_tree(run.path(), id, id);

    let server_notify = NotifySocket::new();
    let started = Instant::now();
    let mut server = start_unit(&lab, a, "server", "office", &etc, &tun, &server_notify);
    assert_eq!(
        server_notify.next(Duration::from_secs(10)),
        "READY=1",
        "{}",
        server.stderr()
    );
    // Ready means the device is up and configured.
    let addrs = a
        .ns()
        .ip(["addr", "show", "dev", "ftun0"])
        .expect("ftun0 exists at READY=1");
    assert!(
        addrs.contains("10.77.0.1/24") && addrs.contains("UP"),
        "{addrs}"
    );
    eprintln!("server READY=1 after {:?}", started.elapsed());
    assert_no_capabilities(&server, "server");

    let client_notify = NotifySocket::new();
    let mut client = start_unit(&lab, b, "client", "home", &etc, &tun, &client_notify);
    assert_eq!(
        client_notify.next(Duration::from_secs(10)),
        "READY=1",
        "{}",
        client.stderr()
    );
    assert_no_capabilities(&client, "client");
    wait_for_ping(b.ns(), addr("10.77.0.1"), Duration::from_secs(10))
        .expect("traffic through the tunnel");

    // ExecReload, with $MAINPID as systemd sets it.
    let reload =
        one(&unit_text("server"), "ExecReload").replace("$MAINPID", &server.pid().to_string());
    let mut words = reload.split_whitespace();
    let st = Command::new(words.next().unwrap())
        .args(words)
        .status()
        .unwrap();
    assert!(st.success(), "{reload}");
    assert_eq!(server_notify.next(Duration::from_secs(5)), "RELOADING=1");
    assert_eq!(server_notify.next(Duration::from_secs(5)), "READY=1");
    server
        .wait_for_output("SIGHUP: peers reloaded", Duration::from_secs(5))
        .expect("the server reread its files as the unprivileged user");
    wait_for_ping(b.ns(), addr("10.77.0.1"), Duration::from_secs(10))
        .expect("traffic after the reload");

    // systemctl stop: SIGTERM (KillSignal= is left at its default).
    for (p, notify, host, ifname) in [
        (&mut client, &client_notify, b, "ftun1"),
        (&mut server, &server_notify, a, "ftun0"),
    ] {
        p.signal(Signal::Term).unwrap();
        assert_eq!(notify.next(Duration::from_secs(5)), "STOPPING=1");
        let st = p.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(st.code(), Some(0), "{}", p.stderr());
        assert!(
            !host.ns().interfaces().unwrap().iter().any(|i| i == ifname),
            "{ifname} left behind"
        );
    }
}
