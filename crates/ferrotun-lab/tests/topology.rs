//! Tests of the lab's namespaces, topologies and processes, with real outcomes: pings that
//! answer, sockets that bind only where the address lives, namespaces and processes that
//! are really gone afterwards. They run as root (sudo ./scripts/test.sh, and CI).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrotun_lab::{
    Lab, LabError, Netns, Signal, TcpTransfer, ping, reap_stale, require_lab, wait_until,
};

const T: Duration = Duration::from_secs(10);

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn two_hosts_ping_over_ipv4_and_ipv6_and_vanish_on_drop() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    assert_eq!(a.v4(), Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(b.v4(), Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(a.v6(), "fd00:198:18::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(b.v6(), "fd00:198:18::2".parse::<Ipv6Addr>().unwrap());
    assert!(a.ifname().len() <= 15 && b.ifname().len() <= 15);

    let v4 = ping(a.ns(), b.v4().into(), 3, T).expect("ping v4");
    assert!(v4.all_answered(), "{}", v4.output);
    let v6 = ping(b.ns(), a.v6().into(), 3, T).expect("ping v6");
    assert!(v6.all_answered(), "{}", v6.output);
    assert!(v6.rtt_avg.is_some());

    // No default route: an address outside the lab is unreachable, not routed anywhere.
    let routes = a.ns().ip(["route", "show"]).expect("routes");
    assert!(!routes.contains("default"), "{routes}");

    let names = [a.ns().name().to_owned(), b.ns().name().to_owned()];
    assert!(names.iter().all(|n| netns_exists(n)));
    drop(lab);
    for name in &names {
        assert!(!netns_exists(name), "{name} still exists after drop");
    }
}

#[test]
fn namespaces_are_deleted_when_a_closure_panics() {
    let names = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::two_hosts().expect("lab");
        names
            .lock()
            .unwrap()
            .extend(lab.hosts().iter().map(|h| h.ns().name().to_owned()));
        lab.a()
            .ns()
            .run(|| panic!("boom inside the namespace"))
            .ok();
    });
    let payload = result.expect_err("the panic must reach the caller");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"boom inside the namespace")
    );
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!netns_exists(name), "{name} survived the panic");
    }
}

/// The interfaces the calling thread's namespace has (not the process's: /proc/self/net
/// follows the main thread).
fn my_interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .expect("read /proc/thread-self/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_owned()))
        .collect()
}

#[test]
fn run_executes_inside_the_namespace() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    let inside = a.ns().run(my_interfaces).expect("run");
    let mut expected = vec!["lo".to_owned(), a.ifname().to_owned()];
    expected.sort();
    let mut inside_sorted = inside.clone();
    inside_sorted.sort();
    assert_eq!(inside_sorted, expected);
    assert_eq!(a.ns().interfaces().expect("interfaces").len(), 2);
    let outside = my_interfaces();
    assert!(!outside.contains(&a.ifname().to_owned()), "{outside:?}");

    // An address that exists only in a's namespace binds there and nowhere else.
    let addr = SocketAddr::new(a.v4().into(), 0);
    a.ns()
        .run(|| UdpSocket::bind(addr))
        .expect("run")
        .expect("bind in a");
    let in_b = b.ns().run(|| UdpSocket::bind(addr)).expect("run");
    assert_eq!(
        in_b.expect_err("bind in b").kind(),
        std::io::ErrorKind::AddrNotAvailable
    );
    assert!(
        UdpSocket::bind(addr).is_err(),
        "bound in the test's own namespace"
    );

    // The closure may borrow, and its result comes back.
    let label = String::from("borrowed");
    let len = a.ns().run(|| label.len()).expect("run");
    assert_eq!(len, 8);

    // A long-running thread stays inside.
    let t = b.ns().spawn_thread(my_interfaces).expect("spawn_thread");
    let seen = t.join().expect("thread");
    assert!(seen.contains(&b.ifname().to_owned()), "{seen:?}");
    assert!(!seen.contains(&a.ifname().to_owned()), "{seen:?}");

    // A command runs inside too, and sees the namespace's /sys.
    let links = a.ns().exec("ls", ["/sys/class/net"]).expect("exec");
    assert!(links.contains(a.ifname()), "{links}");
}

#[test]
fn address_change_moves_the_host() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    let new4 = Ipv4Addr::new(198, 18, 0, 11);
    let old4 = a.set_v4(new4).expect("set_v4");
    assert_eq!(old4, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(a.v4(), new4);
    let new6: Ipv6Addr = "fd00:198:18::11".parse().unwrap();
    a.set_v6(new6).expect("set_v6");
    assert_eq!(a.v6(), new6);

    assert!(
        ping(b.ns(), new4.into(), 2, T)
            .expect("ping new v4")
            .all_answered()
    );
    assert!(
        ping(b.ns(), new6.into(), 2, T)
            .expect("ping new v6")
            .all_answered()
    );
    let old = ping(b.ns(), old4.into(), 1, Duration::from_secs(1)).expect("ping old v4");
    assert_eq!(old.received, 0, "the old address still answers");
    let addrs = a
        .ns()
        .ip(["-o", "addr", "show", "dev", a.ifname()])
        .expect("ip addr");
    assert!(
        addrs.contains("198.18.0.11/24") && !addrs.contains("198.18.0.1/24"),
        "{addrs}"
    );
    assert!(addrs.contains("fd00:198:18::11/64"), "{addrs}");

    // A socket in a now leaves with the new source address.
    let sink = b.ns().udp_bind((b.v4(), 0).into()).expect("bind b");
    let to = sink.local_addr().unwrap();
    let sock = a
        .ns()
        .udp_bind((Ipv4Addr::UNSPECIFIED, 0).into())
        .expect("bind a");
    sock.send_to(b"hello", to).expect("send");
    sink.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 16];
    let (_, from) = sink.recv_from(&mut buf).expect("recv");
    assert_eq!(from.ip(), IpAddr::from(new4));
}

#[test]
fn third_host_on_the_bridge_reaches_the_other_two() {
    let lab = Lab::star(3).expect("lab");
    let c = lab.host("c").expect("host c");
    assert_eq!(c.v4(), Ipv4Addr::new(198, 18, 0, 3));
    assert!(lab.switch().is_some());
    for other in [lab.a(), lab.b()] {
        let r = ping(c.ns(), other.v4().into(), 2, T).expect("ping v4");
        assert!(r.all_answered(), "c -> {}: {}", other.tag(), r.output);
        let r = ping(c.ns(), other.v6().into(), 2, T).expect("ping v6");
        assert!(r.all_answered(), "c -> {}: {}", other.tag(), r.output);
    }
    let r = ping(lab.a().ns(), lab.b().v4().into(), 2, T).expect("ping a->b");
    assert!(r.all_answered(), "{}", r.output);
    assert!(matches!(lab.host("d"), Err(LabError::NoSuchHost { .. })));
    let names: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| h.ns().name().to_owned())
        .collect();
    let switch = lab.switch().unwrap().name().to_owned();
    drop(lab);
    assert!(!netns_exists(&switch));
    assert!(names.iter().all(|n| !netns_exists(n)));
}

fn proc_netns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

#[test]
fn a_process_runs_in_its_namespace_and_is_killed_and_reaped_on_drop() {
    let lab = Lab::two_hosts().expect("lab");
    let a = lab.a();
    let sleeper = lab
        .spawn("sleeper", a.command("sleep").arg("300"))
        .expect("spawn");
    let pid = sleeper.pid();
    let ns_inode = std::fs::metadata(a.ns().path()).expect("stat ns").ino();
    // `ip netns exec` execs in place, so the pid is the program's, inside the namespace.
    wait_until("sleep to be exec'd inside the namespace", T, || {
        proc_netns_inode(pid) == Some(ns_inode)
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
    })
    .expect("sleep in namespace");
    let started = Instant::now();
    drop(sleeper);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists (not killed or not reaped)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SIGTERM was enough for sleep"
    );
}

#[test]
fn signals_deadlines_logs_and_sigkill_for_the_stubborn() {
    let lab = Lab::two_hosts().expect("lab");
    let a = lab.a();
    let mut p = lab
        .spawn(
            "trapper",
            a.command("sh").arg("-c").arg(
                "trap 'echo got-hup; exit 3' HUP; echo ready; echo to-stderr >&2; sleep 300 & wait",
            ),
        )
        .expect("spawn");
    p.wait_for_output("ready", T).expect("ready");
    let err = p
        .wait_timeout(Duration::from_millis(100))
        .expect_err("still running");
    assert!(matches!(err, LabError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("trapper"), "{err}");
    let status = p.stop_with(Signal::Hup, T).expect("exit after SIGHUP");
    assert_eq!(status.code(), Some(3));
    assert!(p.stdout().contains("got-hup"), "{}", p.stdout());
    assert!(p.stderr().contains("to-stderr"), "{}", p.stderr());
    assert!(p.stdout_path().starts_with(lab.log_dir()));

    // Ignores SIGTERM: the grace period ends in SIGKILL.
    let mut stubborn = lab
        .spawn(
            "stubborn",
            a.command("sh")
                .arg("-c")
                .arg("trap '' TERM; echo ready; while :; do sleep 1; done"),
        )
        .expect("spawn");
    stubborn.wait_for_output("ready", T).expect("ready");
    let status = stubborn.kill(Duration::from_millis(200)).expect("kill");
    assert_eq!(status.signal(), Some(9), "SIGKILL");

    // A process that exits before printing what a test waits for fails the wait at once.
    let mut quitter = lab
        .spawn(
            "quitter",
            a.command("sh").arg("-c").arg("echo bye >&2; exit 7"),
        )
        .expect("spawn");
    let err = quitter
        .wait_for_output("never printed", T)
        .expect_err("exited first");
    assert!(err.to_string().contains("bye"), "{err}");
}

#[test]
fn wait_until_names_what_it_waited_for() {
    let start = Instant::now();
    let err = wait_until("the moon to turn blue", Duration::from_millis(60), || false)
        .expect_err("never true");
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert!(start.elapsed() < Duration::from_secs(1));
    let msg = err.to_string();
    assert!(msg.contains("the moon to turn blue"), "{msg}");
    let mut n = 0;
    wait_until("three polls", T, || {
        n += 1;
        n == 3
    })
    .expect("becomes true");
}

/// Set in the environment of the copy of this test binary that builds a lab and waits to
/// be SIGKILLed.
const KILLED_RUN: &str = "FERROTUN_LAB_KILLED_RUN_PROBE";

fn process_gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for whoever inherited it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn reap_stale_cleans_up_after_a_sigkilled_run() {
    if std::env::var_os(KILLED_RUN).is_some() {
        // The run that gets killed: a lab with a process inside, then wait for SIGKILL.
        let lab = Lab::two_hosts().expect("lab");
        let sleeper = lab
            .spawn("sleeper", lab.b().command("sleep").arg("300"))
            .expect("spawn");
        println!(
            "LAB {} {} {} {}",
            lab.a().ns().name(),
            lab.b().ns().name(),
            sleeper.pid(),
            lab.log_dir().display()
        );
        std::io::Write::flush(&mut std::io::stdout()).expect("flush");
        loop {
            std::thread::park();
        }
    }
    require_lab().expect("lab");
    let exe = std::env::current_exe().expect("current exe");
    let mut run = Command::new(exe)
        .args([
            "--exact",
            "reap_stale_cleans_up_after_a_sigkilled_run",
            "--nocapture",
        ])
        .env(KILLED_RUN, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the run to kill");
    let mut out = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert!(n > 0, "the probe run ended without printing its lab");
        if line.starts_with("LAB ") {
            break;
        }
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (ns_a, ns_b) = (fields[1].to_owned(), fields[2].to_owned());
    let sleeper: u32 = fields[3].parse().expect("pid");
    let log_dir = Path::new(fields[4]).to_owned();
    run.kill().expect("SIGKILL the run");
    run.wait().expect("reap the run");
    // Killed without unwinding: everything is still there.
    assert!(netns_exists(&ns_a) && netns_exists(&ns_b));
    assert!(!process_gone(sleeper));
    assert!(log_dir.exists());
    let mine = Netns::new("mine").expect("netns");

    let reaped = reap_stale().expect("reap");
    assert!(
        reaped.contains(&ns_a) && reaped.contains(&ns_b),
        "{reaped:?}"
    );
    assert!(!netns_exists(&ns_a) && !netns_exists(&ns_b));
    assert!(
        netns_exists(mine.name()),
        "a live run's namespace was reaped"
    );
    wait_until("the orphaned sleeper to die", T, || process_gone(sleeper)).expect("sleeper killed");
}

#[test]
fn rate_limit_slows_the_link_and_goes_away() {
    let lab = Lab::two_hosts().expect("lab");
    let (a, b) = (lab.a(), lab.b());
    let bytes = 1 << 20;
    let free = TcpTransfer::new(bytes)
        .run(b.ns(), (b.v4(), 0).into(), a.ns())
        .expect("free transfer");
    free.assert_intact();
    let limit = a.rate_limit(16_000_000).expect("tbf");
    let qdisc = a
        .ns()
        .exec("tc", ["qdisc", "show", "dev", a.ifname()])
        .expect("tc");
    assert!(qdisc.contains("tbf"), "{qdisc}");
    let slow = TcpTransfer::new(bytes)
        .run(b.ns(), (b.v4(), 0).into(), a.ns())
        .expect("limited transfer");
    slow.assert_intact();
    eprintln!(
        "1 MiB over veth: {:.0} Mbit/s free, {:.1} Mbit/s under a 16 Mbit/s tbf",
        free.mbit_per_s(),
        slow.mbit_per_s()
    );
    assert!(slow.mbit_per_s() < 20.0, "{:.1} Mbit/s", slow.mbit_per_s());
    assert!(free.mbit_per_s() > 4.0 * slow.mbit_per_s());
    limit.remove().expect("remove tbf");
    let qdisc = a
        .ns()
        .exec("tc", ["qdisc", "show", "dev", a.ifname()])
        .expect("tc");
    assert!(!qdisc.contains("tbf"), "{qdisc}");
}

/// Set in the environment of the unprivileged copy of this test binary.
const PROBE: &str = "FERROTUN_LAB_UNPRIVILEGED_PROBE";

#[test]
fn require_lab_fails_plainly_without_root() {
    if std::env::var_os(PROBE).is_some() {
        // The unprivileged child: building a lab must fail, saying why and what to do.
        let err = Netns::new("probe").expect_err("must fail without root");
        println!("PROBE-ERROR: {err}");
        assert!(matches!(err, LabError::NeedsRoot { .. }));
        return;
    }
    require_lab().expect("this test itself runs as root");
    // The build directory may sit where uid 65534 cannot reach (a home of mode 700):
    // run a copy from a directory everyone can read.
    let dir = tempfile::Builder::new()
        .prefix("ferrotun-lab-probe-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.path().join("probe");
    std::fs::copy(std::env::current_exe().expect("current exe"), &exe).expect("copy");
    let probe = |setpriv_args: &[&str]| {
        let out = Command::new("setpriv")
            .args(setpriv_args)
            .arg(&exe)
            .args([
                "--exact",
                "require_lab_fails_plainly_without_root",
                "--nocapture",
            ])
            .env(PROBE, "1")
            .output()
            .expect("run setpriv");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("PROBE-ERROR: "))
            .unwrap_or_else(|| panic!("no probe output: {stdout}"))
            .to_owned();
        assert!(line.contains("needs root"), "{line}");
        assert!(line.contains("sudo ./scripts/test.sh"), "{line}");
        line
    };
    // An ordinary user.
    let line = probe(&[
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    assert!(line.contains("uid 65534"), "{line}");
    // Root without CAP_SYS_ADMIN, as in a restricted container.
    let line = probe(&["--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]);
    assert!(line.contains("CAP_SYS_ADMIN"), "{line}");
}
