//! End-to-end tests of the OCI image with real containers (podman): the image that
//! `scripts/container.sh build` makes, the server in one lab namespace and the client in
//! the other (`--network ns:/run/netns/NAME`), configs bind-mounted read-only, only
//! `--cap-add NET_ADMIN --device /dev/net/tun` added. Traffic is driven from the host side
//! inside the lab's namespaces, so the image needs no tools.
//!
//! The image is built once per run of this test binary, under a name of its own
//! (`localhost/ferrotun-test-PID`), and removed when the binary exits; every container is
//! removed when its test ends, however it ends. What a killed run left behind (containers
//! `ftc<pid>-...`, images `localhost/ferrotun-test-<pid>`) is removed by the next run.
//!
//! Podman runs with the project's `config/container/containers.conf` (runc, cgroupfs,
//! fixed rlimits; see that file). Outside CI a machine without podman skips these tests
//! with a message; under `CI=true` that is a failure (`scripts/test.sh` installs podman).

mod support;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrotun_lab::{Host, Lab, ping, wait_for, wait_for_ping};
use support::{Configs, MB, UP, addr, has_interface, transfer};

/// The host name the client's config names; each client container gets a hosts file.
const SERVER_NAME: &str = "ferrotun-server";
/// The static shell mounted at /bin/sh where a test needs hooks (the image has none).
const STATIC_SHELL: &str = "/bin/busybox";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn containers_conf() -> PathBuf {
    repo().join("config/container/containers.conf")
}

/// `podman` with the project's containers.conf.
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs podman with `args`; panics with its output unless it succeeds; returns stdout.
fn podman_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = podman().args(&args).output().expect("running podman");
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether podman can be used here. Outside CI a missing podman skips the test (returns
/// false after saying so); under CI=true it is a failure.
fn podman_here() -> bool {
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => format!("podman --version failed: {}", text(&o.stderr)),
                Err(e) => format!("podman cannot run: {e}"),
            };
            if in_ci() {
                panic!("{why} (scripts/test.sh installs podman and runc)");
            }
            eprintln!("skipped: {why}; install podman and runc (scripts/test.sh does)");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// The image: built once per test binary run, removed at exit.

struct Image {
    /// `localhost/ferrotun-test-PID`.
    name: String,
    /// What `scripts/container.sh build` printed on stdout (ldd lines, size).
    report: String,
}

impl Image {
    fn latest(&self) -> String {
        format!("{}:latest", self.name)
    }

    fn versioned(&self) -> String {
        format!("{}:{}", self.name, env!("CARGO_PKG_VERSION"))
    }
}

const IMAGE_PREFIX: &str = "localhost/ferrotun-test-";
const CONTAINER_PREFIX: &str = "ftc";

static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();

fn image() -> &'static Image {
    let built = IMAGE.get_or_init(|| {
        reap_stale();
        let name = format!("{IMAGE_PREFIX}{}", std::process::id());
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/container.sh"))
            .args(["--engine", "podman", "--image", &name, "build"])
            .env("CONTAINERS_CONF", containers_conf())
            .output()
            .map_err(|e| format!("running scripts/container.sh: {e}"))?;
        // Registered even after a failed build: it may have tagged something.
        register_cleanup(&name);
        if !out.status.success() {
            return Err(format!(
                "scripts/container.sh build failed ({}):\n{}\n{}",
                out.status,
                text(&out.stdout),
                cut_tail(&text(&out.stderr), 4000)
            ));
        }
        eprintln!(
            "built {name} in {:.1} s:\n{}",
            started.elapsed().as_secs_f64(),
            text(&out.stdout)
        );
        Ok(Image {
            name,
            report: text(&out.stdout),
        })
    });
    match built {
        Ok(image) => image,
        Err(e) => panic!("{e}"),
    }
}

fn cut_tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

static CLEANUP_IMAGE: OnceLock<String> = OnceLock::new();

extern "C" fn remove_image_at_exit() {
    if let Some(name) = CLEANUP_IMAGE.get() {
        let out = Command::new(repo().join("scripts/container.sh"))
            .args(["--engine", "podman", "--image", name, "clean"])
            .env("CONTAINERS_CONF", containers_conf())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("removing {name}: {}", text(&o.stderr)),
            Err(e) => eprintln!("removing {name}: {e}"),
        }
    }
}

/// Removes the image when this test binary exits (libtest ends with `exit`, which runs
/// atexit handlers; a killed run is cleaned up by the next one, see [`reap_stale`]).
fn register_cleanup(name: &str) {
    if CLEANUP_IMAGE.set(name.to_owned()).is_ok() {
        // SAFETY: registers a plain `extern "C" fn()` that lives as long as the program.
        let rc = unsafe { libc::atexit(remove_image_at_exit) };
        assert_eq!(rc, 0, "atexit failed: {name} would be left behind");
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only asks whether the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The pid in `PREFIX<pid>-...` or `PREFIX<pid>:tag`, when that is the shape of `name`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes containers and images of earlier runs of this binary that were killed.
fn reap_stale() {
    let me = std::process::id();
    if let Ok(o) = podman()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
    {
        for name in text(&o.stdout).lines() {
            if let Some(pid) = owner_pid(name, CONTAINER_PREFIX)
                && pid != me
                && !pid_alive(pid)
            {
                let _ = podman().args(["rm", "-f", "-t", "0", name]).output();
            }
        }
    }
    if let Ok(o) = podman()
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
    {
        for name in text(&o.stdout).lines() {
            if let Some(pid) = owner_pid(name, IMAGE_PREFIX)
                && pid != me
                && !pid_alive(pid)
            {
                let _ = podman().args(["rmi", "-f", name]).output();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Containers.

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A container this test made; removed (killed if need be) on drop.
struct Container {
    name: String,
}

/// What a container is started with.
struct Spec<'a> {
    label: &'a str,
    host: &'a Host,
    /// `(host path, container path, read-only)`.
    mounts: Vec<(PathBuf, &'a str, bool)>,
    /// Flags before the image: capabilities, devices, DNS, ...
    flags: Vec<String>,
    /// The command after the image.
    command: Vec<String>,
}

/// The flags the issue allows: nothing more than these two.
fn tunnel_flags() -> Vec<String> {
    ["--cap-add", "NET_ADMIN", "--device", "/dev/net/tun"]
        .map(String::from)
        .to_vec()
}

impl<'a> Spec<'a> {
    fn new(label: &'a str, host: &'a Host, configs: &Path, command: &[&str]) -> Spec<'a> {
        Spec {
            label,
            host,
            mounts: vec![(configs.to_owned(), "/etc/ferrotun", true)],
            flags: Vec::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn flags(mut self, flags: Vec<String>) -> Self {
        self.flags.extend(flags);
        self
    }

    fn mount(mut self, from: &Path, to: &'a str, read_only: bool) -> Self {
        self.mounts.push((from.to_owned(), to, read_only));
        self
    }

    /// `podman run -d ...` or `podman create ...` (the same flags).
    fn args(&self, verb: &str, name: &str) -> Vec<String> {
        let mut a: Vec<String> = verb.split(' ').map(String::from).collect();
        a.extend(
            [
                "--name",
                name,
                "--pull",
                "never",
                "--network",
                &format!("ns:{}", self.host.ns().path().display()),
            ]
            .map(String::from),
        );
        for (from, to, ro) in &self.mounts {
            let ro = if *ro { ":ro" } else { "" };
            a.extend(["-v".into(), format!("{}:{to}{ro}", from.display())]);
        }
        a.extend(self.flags.iter().cloned());
        a.push(image().latest());
        a.extend(self.command.iter().cloned());
        a
    }

    fn name(&self) -> String {
        format!(
            "{CONTAINER_PREFIX}{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            self.label
        )
    }

    /// `podman run -d`: returns once the container's process started.
    fn start(&self) -> Container {
        let name = self.name();
        let c = Container { name };
        podman_ok(self.args("run -d", &c.name));
        c
    }

    /// `podman create`, then `podman start --attach`, which returns when the process
    /// exits: returns the container (exited), podman's output and how long the start took
    /// (an upper bound of the process's run time; podman's own StartedAt is stamped after
    /// the runtime returns, so a process that exits at once can seem to end before it
    /// started).
    fn run_to_end(&self) -> (Container, Output, Duration) {
        let name = self.name();
        let c = Container { name };
        podman_ok(self.args("create", &c.name));
        let started = Instant::now();
        let out = podman()
            .args(["start", "--attach", &c.name])
            .output()
            .expect("running podman start");
        (c, out, started.elapsed())
    }
}

impl Container {
    fn logs(&self) -> String {
        let out = podman()
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(["inspect", "--format", format, &self.name])
            .trim()
            .to_owned()
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// The container's process as the host sees it.
    fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}")
            .parse()
            .expect("a running container has a pid")
    }

    fn exit_code(&self) -> i32 {
        self.inspect("{{.State.ExitCode}}")
            .parse()
            .expect("podman prints the exit code")
    }

    /// Waits until the log has `needle`; fails early, with the log, if the container ends.
    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let r = wait_for(
            format_args!("{needle:?} in the log of {}", self.name),
            timeout,
            || {
                let logs = self.logs();
                if logs.contains(needle) {
                    Ok(())
                } else if !self.running() {
                    Err(format!("the container exited: {logs}"))
                } else {
                    Err("not yet".to_owned())
                }
            },
        );
        if let Err(e) = r {
            panic!("{e}\nlog:\n{}", self.logs());
        }
    }

    /// `podman stop`: returns podman's own exit status and how long it took.
    fn stop(&self) -> (bool, Duration) {
        let started = Instant::now();
        let out = podman()
            .args(["stop", "-t", "10", &self.name])
            .output()
            .expect("podman stop");
        if !out.status.success() {
            eprintln!("podman stop {}: {}", self.name, text(&out.stderr));
        }
        (out.status.success(), started.elapsed())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Ok(o) = podman().args(["rm", "-f", "-t", "0", &self.name]).output()
            && !o.status.success()
            && !text(&o.stderr).contains("no such container")
        {
            eprintln!("removing container {}: {}", self.name, text(&o.stderr));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configs and checks.

/// Copies of the example configs for containers: both sides drop to uid/gid 65534 after
/// setup (numeric: the image has no /etc/passwd of its own); the client names the server
/// by host name; `transport` is "udp" or "tcp".
struct Setup {
    cfg: Configs,
    /// Holds `hosts` and `nsswitch.conf` for the client container.
    etc: tempfile::TempDir,
}

impl Setup {
    fn new(transport: &str, server_hooks: &str, client_hooks: &str) -> Setup {
        let cfg = Configs::new();
        let nobody = "[interface]\nuser = \"65534\"\ngroup = \"65534\"\n";
        let listen = format!("[listen]\n{transport} = \"[::]:51820\"\n");
        cfg.variant(
            "server.toml",
            "ctr-server.toml",
            &[
                ("[interface]\n", nobody),
                ("[listen]\nudp = \"[::]:51820\"", listen.trim_end()),
                ("[hooks]", &format!("[hooks]\n{server_hooks}")),
            ],
        );
        cfg.variant(
            "client.toml",
            "ctr-client.toml",
            &[
                ("[interface]\n", nobody),
                (
                    "endpoint = \"198.18.0.1:51820\"",
                    &format!("endpoint = \"{SERVER_NAME}:51820\""),
                ),
                (
                    "transport = \"udp\"",
                    &format!("transport = \"{transport}\""),
                ),
                ("[hooks]", &format!("[hooks]\n{client_hooks}")),
            ],
        );
        let etc = tempfile::tempdir().expect("a temp dir");
        // The resolver reads only files: no DNS query ever leaves a test's namespace.
        std::fs::write(etc.path().join("nsswitch.conf"), "hosts: files\n").unwrap();
        let s = Setup { cfg, etc };
        s.point_server_name_at(Ipv4Addr::new(198, 18, 0, 1));
        s
    }

    fn dir(&self) -> PathBuf {
        self.cfg
            .server()
            .parent()
            .expect("the configs are in a directory")
            .to_owned()
    }

    fn hosts(&self) -> PathBuf {
        self.etc.path().join("hosts")
    }

    /// Rewrites the client's hosts file in place (same inode: it is bind-mounted).
    fn point_server_name_at(&self, to: Ipv4Addr) {
        std::fs::write(
            self.hosts(),
            format!("127.0.0.1 localhost\n{to} {SERVER_NAME}\n"),
        )
        .unwrap();
    }

    fn server<'a>(&self, host: &'a Host) -> Spec<'a> {
        Spec::new(
            "server",
            host,
            &self.dir(),
            &["ferrotun-server", "-c", "/etc/ferrotun/ctr-server.toml"],
        )
    }

    fn client<'a>(&self, host: &'a Host) -> Spec<'a> {
        Spec::new(
            "client",
            host,
            &self.dir(),
            &["ferrotun-client", "-c", "/etc/ferrotun/ctr-client.toml"],
        )
        .mount(&self.hosts(), "/etc/hosts", true)
        .mount(
            &self.etc.path().join("nsswitch.conf"),
            "/etc/nsswitch.conf",
            true,
        )
        .flags(vec!["--dns".into(), "none".into()])
    }
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_owned()
}

/// Every thread of the container's process runs as uid and gid 65534 with no capability
/// in its effective, permitted or ambient set.
fn assert_unprivileged(c: &Container, who: &str) {
    let pid = c.pid();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    for t in tasks {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        for key in ["Uid:", "Gid:"] {
            let ids = status_field(&status, key);
            assert!(
                ids.split_whitespace().all(|id| id == "65534"),
                "{who}: {key} {ids}"
            );
        }
        for key in ["CapEff:", "CapPrm:", "CapAmb:"] {
            let mask = status_field(&status, key);
            assert_eq!(
                u64::from_str_radix(&mask, 16).unwrap(),
                0,
                "{who}: {key} {mask}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn the_image_is_two_static_binaries_from_scratch() {
    if !podman_here() {
        return;
    }
    let image = image();
    // scripts/container.sh checked both with ldd before building.
    assert_eq!(
        image.report.matches(": not a dynamic executable").count(),
        2,
        "{}",
        image.report
    );
    let size: u64 = podman_ok([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &image.versioned(),
    ])
    .trim()
    .parse()
    .unwrap();
    assert!(size < 15_000_000, "{size} bytes");
    let config = podman_ok([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{.Config.User}} {{json .Config.Cmd}}",
        &image.latest(),
    ]);
    assert_eq!(
        config.trim(),
        r#"null 0:0 ["ferrotun-server","-c","/etc/ferrotun/server.toml"]"#,
        "no entrypoint, uid 0, a server by default"
    );
    // Nothing but the two binaries.
    let root = podman_ok(["image", "mount", &image.latest()]);
    let root = PathBuf::from(root.trim());
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path().strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    podman_ok(["image", "unmount", &image.latest()]);
    files.sort();
    assert_eq!(
        files,
        ["usr/bin/ferrotun-client", "usr/bin/ferrotun-server"]
    );
    // Any command runs as given: no entrypoint in the way.
    for bin in ["ferrotun-server", "ferrotun-client"] {
        let out = podman_ok([
            "run",
            "--rm",
            "--pull",
            "never",
            &image.versioned(),
            bin,
            "--version",
        ]);
        assert_eq!(
            out.trim(),
            format!("ferrotun {}", env!("CARGO_PKG_VERSION")),
            "{bin}"
        );
    }
}

/// Ping and 20 MB each way between a server container and a client container, both
/// running as uid 65534 with no capabilities after setup; the client finds the server by
/// a name from the hosts file mounted into it.
///
/// `hardened_server`: the server also gets the tightest flags the README suggests, every
/// other capability dropped but the two that switching user needs, and no_new_privs.
fn tunnel_between_containers(transport: &str, hardened_server: bool) {
    if !podman_here() {
        return;
    }
    let lab = Lab::two_hosts().unwrap();
    let (a, b) = (lab.a(), lab.b());
    let s = Setup::new(transport, "", "");
    let mut server_flags = tunnel_flags();
    if hardened_server {
        server_flags.extend(
            [
                "--cap-drop",
                "ALL",
                "--cap-add",
                "NET_ADMIN,SETUID,SETGID",
                "--security-opt",
                "no-new-privileges",
            ]
            .map(String::from),
        );
    }
    let server = s.server(a).flags(server_flags).start();
    server.wait_for_log("tunnel running", UP);
    let client = s.client(b).flags(tunnel_flags()).start();
    client.wait_for_log("tunnel running", UP);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).expect("the tunnel comes up");
    for to in ["10.77.0.1", "fd77::1"] {
        let p = ping(b.ns(), addr(to), 3, Duration::from_secs(5)).unwrap();
        assert!(p.all_answered(), "{to}: {}", p.output);
    }
    assert_unprivileged(&server, "server");
    assert_unprivileged(&client, "client");
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 20 * MB);
    transfer(b.ns(), "10.77.0.2:0", a.ns(), 20 * MB);
    let logs = client.logs();
    if transport == "tcp" {
        assert!(logs.contains("connected over TCP"), "{logs}");
    }
    assert!(
        logs.contains("dropped privileges uid=65534 gid=65534"),
        "{logs}"
    );
    assert!(
        server.logs().contains("dropped privileges"),
        "{}",
        server.logs()
    );
}

#[test]
fn udp_tunnel_between_containers_runs_without_privileges() {
    tunnel_between_containers("udp", false);
}

#[test]
fn tcp_tunnel_between_containers_runs_without_privileges() {
    tunnel_between_containers("tcp", true);
}

/// The client is never touched: the server moves to a new underlay address, the name in
/// the client's hosts file follows, and traffic resumes within 10 s of the server's start.
fn client_follows_the_server_name(transport: &str) {
    if !podman_here() {
        return;
    }
    let lab = Lab::two_hosts().unwrap();
    let (a, b) = (lab.a(), lab.b());
    let s = Setup::new(transport, "", "");
    let server = s.server(a).flags(tunnel_flags()).start();
    server.wait_for_log("tunnel running", UP);
    let client = s.client(b).flags(tunnel_flags()).start();
    client.wait_for_log("tunnel running", UP);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).expect("the tunnel comes up");
    let client_pid = client.pid();

    let (stopped, _) = server.stop();
    assert!(stopped);
    drop(server);
    let moved = Ipv4Addr::new(198, 18, 0, 11);
    a.set_v4(moved).unwrap();
    s.point_server_name_at(moved);
    let server = s.server(a).flags(tunnel_flags()).start();
    server.wait_for_log("tunnel running", UP);
    let restarted = Instant::now();
    let waited = wait_for_ping(b.ns(), addr("10.77.0.1"), Duration::from_secs(10));
    if let Err(e) = waited {
        panic!(
            "no traffic within 10 s of the server's restart at {moved}: {e}\nclient log:\n{}",
            client.logs()
        );
    }
    eprintln!(
        "{transport}: traffic resumed {:.1} s after the server restarted",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(client.pid(), client_pid, "the client was not restarted");
    let logs = client.logs();
    assert!(logs.contains(&moved.to_string()), "{logs}");
    transfer(a.ns(), "10.77.0.1:0", b.ns(), 4 * MB);
}

#[test]
fn a_udp_client_follows_its_server_to_a_new_address() {
    client_follows_the_server_name("udp");
}

#[test]
fn a_tcp_client_follows_its_server_to_a_new_address() {
    client_follows_the_server_name("tcp");
}

/// Without the device or without the capability a container exits 1 within a second,
/// with one line that names the flag to add, and leaves no interface.
#[test]
fn a_container_without_the_device_or_the_capability_says_which_flag_is_missing() {
    if !podman_here() {
        return;
    }
    let lab = Lab::two_hosts().unwrap();
    let s = Setup::new("udp", "", "");
    let cases = [
        (
            "--device /dev/net/tun",
            vec!["--cap-add".to_owned(), "NET_ADMIN".to_owned()],
        ),
        (
            "--cap-add NET_ADMIN",
            vec!["--device".to_owned(), "/dev/net/tun".to_owned()],
        ),
    ];
    for (missing, flags) in cases {
        for (role, spec, ifname) in [
            ("server", s.server(lab.a()), "ftun0"),
            ("client", s.client(lab.b()), "ftun1"),
        ] {
            let host = spec.host;
            let (c, out, took) = spec.flags(flags.clone()).run_to_end();
            let output = format!("{}{}", text(&out.stdout), text(&out.stderr));
            let what = format!("{role} without {missing}");
            assert_eq!(out.status.code(), Some(1), "{what}: {output}");
            assert_eq!(c.exit_code(), 1, "{what}");
            let lines: Vec<&str> = output.lines().collect();
            assert_eq!(lines.len(), 1, "{what}: one line: {output}");
            assert!(
                lines[0].contains("ERROR") && lines[0].contains(&format!("`{missing}`")),
                "{what}: {output}"
            );
            assert!(took < Duration::from_secs(1), "{what}: ran {took:?}");
            eprintln!("{what}: exit 1 within {took:?}: {}", lines[0]);
            assert!(!has_interface(host, ifname), "{what}: {ifname} left behind");
        }
    }
}

/// `podman stop` (SIGTERM) on either side: podman and the container exit 0, the down
/// hook ran while the interface still existed, and no interface is left. The image has no
/// shell, so the test mounts a static busybox at /bin/sh for the hooks (README).
#[test]
fn podman_stop_runs_the_down_hook_and_leaves_no_interface() {
    if !podman_here() {
        return;
    }
    let shell = std::fs::read(STATIC_SHELL).map(|b| b.len()).unwrap_or(0);
    let ldd = Command::new("ldd").arg(STATIC_SHELL).output();
    let is_static = ldd.is_ok_and(|o| {
        let t = format!("{}{}", text(&o.stdout), text(&o.stderr));
        t.contains("not a dynamic executable") || t.contains("statically linked")
    });
    assert!(
        shell > 0 && is_static,
        "{STATIC_SHELL} must be a static busybox (Debian: busybox-static; scripts/test.sh installs it)"
    );
    let lab = Lab::two_hosts().unwrap();
    let (a, b) = (lab.a(), lab.b());
    let state = tempfile::tempdir().unwrap();
    // The hooks run as uid 65534 after the drop (down) and as root (up).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let hook = |side: &str| {
        format!(
            "up = \"echo up $FERROTUN_INTERFACE uid=$(id -u) > /state/{side}-up\"\n\
             down = \"[ -d /sys/class/net/$FERROTUN_INTERFACE ] && echo down $FERROTUN_INTERFACE uid=$(id -u) > /state/{side}-down\""
        )
    };
    let s = Setup::new("udp", &hook("server"), &hook("client"));
    fn with_shell<'a>(spec: Spec<'a>, state: &Path) -> Spec<'a> {
        spec.flags(tunnel_flags())
            .mount(Path::new(STATIC_SHELL), "/bin/sh", true)
            .mount(state, "/state", false)
    }
    let server = with_shell(s.server(a), state.path()).start();
    server.wait_for_log("tunnel running", UP);
    let client = with_shell(s.client(b), state.path()).start();
    client.wait_for_log("tunnel running", UP);
    wait_for_ping(b.ns(), addr("10.77.0.1"), UP).expect("the tunnel comes up");
    let read = |f: &str| std::fs::read_to_string(state.path().join(f)).unwrap_or_default();
    assert_eq!(read("server-up"), "up ftun0 uid=0\n");
    assert_eq!(read("client-up"), "up ftun1 uid=0\n");

    for (side, c, host, ifname) in [
        ("client", &client, b, "ftun1"),
        ("server", &server, a, "ftun0"),
    ] {
        assert!(has_interface(host, ifname));
        let (ok, took) = c.stop();
        assert!(ok, "podman stop {side}");
        assert!(
            took < Duration::from_secs(5),
            "{side} took {took:?} to stop"
        );
        assert_eq!(c.exit_code(), 0, "{side}: {}", c.logs());
        assert_eq!(
            read(&format!("{side}-down")),
            format!("down {ifname} uid=65534\n"),
            "{side}'s down hook ran as the dropped user while {ifname} existed: {}",
            c.logs()
        );
        assert!(!has_interface(host, ifname), "{side}: {ifname} left behind");
        assert!(
            !c.logs().contains("ERROR"),
            "{side} stopped cleanly: {}",
            c.logs()
        );
    }
}
