//! Real TUN/TAP devices inside network namespaces that each test creates: packets in both
//! directions for TUN (IPv4, IPv6) and TAP (ARP, then IPv4), multiqueue spreading and
//! detaching, the interface's lifetime, and every operator-facing error produced for real.
//! Needs root; under CI it runs as root, and a failure to create a namespace fails the test.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use ferrotun_device::{DeviceBuilder, DeviceError, Link, Mode, Queue};
use ferrotun_lab::Netns;

const WAIT: Duration = Duration::from_secs(5);

/// Runs `f` on a thread inside a fresh network namespace, deleted afterwards.
fn in_ns<R: Send>(tag: &str, f: impl FnOnce() -> R + Send) -> R {
    let ns = Netns::new(tag).expect("create a network namespace (run the tests as root)");
    ns.run(f).expect("run in the namespace")
}

/// Runs `f`'s future on a current-thread tokio runtime in a new network namespace.
fn on_runtime_in_ns<F: std::future::Future<Output = ()>>(tag: &str, f: impl FnOnce() -> F + Send) {
    in_ns(tag, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
}

/// Waits until `fd` is readable or the deadline passes.
fn readable(q: &Queue, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: q.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
    rc > 0
}

/// Reads packets from `q` (non-blocking) until `pick` accepts one or `WAIT` passes.
fn next_matching<T>(q: &Queue, mut pick: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
    q.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 2048];
    while readable(q, deadline) {
        match q.recv(&mut buf) {
            Ok(n) => {
                if let Some(t) = pick(&buf[..n]) {
                    return Some(t);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read from {}: {e}", q.name()),
        }
    }
    None
}

/// Waits until `check` holds for the link called `name` (or its absence). Closing a
/// queue releases the device only once no other copy of the descriptor exists, and a
/// process forked by another test thread holds copies until it execs: so a test waits for
/// the kernel's state rather than asserting it the instant after `drop`.
fn eventually(name: &str, what: &str, check: impl Fn(Option<&ferrotun_device::LinkInfo>) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = Link::find(name).unwrap().map(|l| l.info().unwrap());
        if check(info.as_ref()) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: {what}; it is {info:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn gone(name: &str, what: &str) {
    eventually(name, what, |i| i.is_none());
}

fn tun_up(name: &str, v4: &str, v6: &str) -> ferrotun_device::Device {
    let dev = DeviceBuilder::new(name, Mode::Tun)
        .open()
        .expect("create TUN");
    let link = dev.link();
    link.set_mtu(1400).unwrap();
    link.add_address(v4.parse().unwrap()).unwrap();
    link.add_address(v6.parse().unwrap()).unwrap();
    link.set_up(true).unwrap();
    link.wait_addresses_ready(WAIT).unwrap();
    dev
}

#[test]
fn tun_carries_ipv4_both_ways() {
    in_ns("tun4", || {
        let dev = tun_up("ft%d", "10.7.0.1/24", "fd07::1/64");
        assert_eq!(
            dev.name(),
            "ft0",
            "the pattern resolves to the first free number"
        );
        let info = dev.link().info().unwrap();
        assert_eq!((info.mtu, info.up), (1400, true));
        assert!(
            dev.link()
                .addresses()
                .unwrap()
                .contains(&"10.7.0.1/24".parse().unwrap())
        );
        let q = &dev.queues()[0];

        // Out of the stack, into the device.
        let sock = UdpSocket::bind("10.7.0.1:0").unwrap();
        let payload = b"out through ft0, ipv4".to_vec();
        sock.send_to(&payload, "10.7.0.2:9000").unwrap();
        let udp = next_matching(q, |p| parse_udp(p).filter(|u| u.dport == 9000))
            .expect("the datagram appears on the device");
        assert_eq!(udp.payload, payload);
        assert_eq!(udp.src, Ipv4Addr::new(10, 7, 0, 1));
        assert_eq!(udp.dst, Ipv4Addr::new(10, 7, 0, 2));
        assert_eq!(udp.sport, sock.local_addr().unwrap().port());

        // Into the device, up the stack.
        let rx = UdpSocket::bind("10.7.0.1:9001").unwrap();
        rx.set_read_timeout(Some(WAIT)).unwrap();
        let back = b"in through ft0, ipv4";
        let pkt = ipv4_udp(
            Ipv4Addr::new(10, 7, 0, 2),
            Ipv4Addr::new(10, 7, 0, 1),
            4000,
            9001,
            back,
        );
        assert_eq!(q.send(&pkt).unwrap(), pkt.len());
        let mut buf = [0u8; 256];
        let (n, from) = rx
            .recv_from(&mut buf)
            .expect("the socket receives the packet");
        assert_eq!(&buf[..n], back);
        assert_eq!(from, "10.7.0.2:4000".parse::<SocketAddr>().unwrap());
    });
}

#[test]
fn tun_carries_ipv6_both_ways() {
    in_ns("tun6", || {
        let dev = tun_up("ftun6", "10.7.1.1/24", "fd07:1::1/64");
        let q = &dev.queues()[0];
        let me: Ipv6Addr = "fd07:1::1".parse().unwrap();
        let peer: Ipv6Addr = "fd07:1::2".parse().unwrap();

        let sock = UdpSocket::bind((me, 0)).unwrap();
        let payload = b"out through ftun6, ipv6".to_vec();
        sock.send_to(&payload, (peer, 9000)).unwrap();
        let udp = next_matching(q, |p| parse_udp(p).filter(|u| u.dport == 9000))
            .expect("the datagram appears on the device");
        assert_eq!(udp.payload, payload);
        assert_eq!((udp.src, udp.dst), (me.into(), peer.into()));

        let rx = UdpSocket::bind((me, 9001)).unwrap();
        rx.set_read_timeout(Some(WAIT)).unwrap();
        let back = b"in through ftun6, ipv6";
        q.send(&ipv6_udp(peer, me, 4000, 9001, back)).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = rx
            .recv_from(&mut buf)
            .expect("the socket receives the packet");
        assert_eq!(&buf[..n], back);
        assert_eq!(from, SocketAddr::from((peer, 4000)));
    });
}

#[test]
fn async_batches_leave_headroom_and_carry_every_packet() {
    on_runtime_in_ns("async", || async {
        let dev = tun_up("ftas", "10.7.2.1/24", "fd07:2::1/64");
        let q = dev.into_queues().pop().unwrap().into_async().unwrap();
        let sock = UdpSocket::bind("10.7.2.1:0").unwrap();
        const N: usize = 20;
        const OFFSET: usize = 16;
        for i in 0..N {
            sock.send_to(format!("datagram {i}").as_bytes(), "10.7.2.2:9100")
                .unwrap();
        }
        // Read in batches until every datagram has been seen; the bytes before the
        // offset must stay the caller's.
        let mut bufs = vec![vec![0xa5u8; 2048]; 8];
        let mut lens = [0usize; 8];
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < N {
            let n = tokio::time::timeout_at(deadline, q.recv_batch(&mut bufs, OFFSET, &mut lens))
                .await
                .expect("all datagrams arrive in time")
                .unwrap();
            assert!(n >= 1 && n <= bufs.len());
            for (b, &len) in bufs.iter().zip(&lens).take(n) {
                assert!(
                    b[..OFFSET].iter().all(|&x| x == 0xa5),
                    "headroom was written"
                );
                if let Some(u) = parse_udp(&b[OFFSET..OFFSET + len]).filter(|u| u.dport == 9100) {
                    seen.push(String::from_utf8(u.payload).unwrap());
                }
            }
        }
        let want: Vec<String> = (0..N).map(|i| format!("datagram {i}")).collect();
        assert_eq!(seen, want, "every datagram, in order, once");

        // A batch written into the device reaches the socket whole.
        let rx = UdpSocket::bind("10.7.2.1:9101").unwrap();
        rx.set_read_timeout(Some(WAIT)).unwrap();
        let out: Vec<Vec<u8>> = (0..N)
            .map(|i| {
                let mut b = vec![0u8; OFFSET];
                b.extend(ipv4_udp(
                    Ipv4Addr::new(10, 7, 2, 2),
                    Ipv4Addr::new(10, 7, 2, 1),
                    4000,
                    9101,
                    format!("back {i}").as_bytes(),
                ));
                b
            })
            .collect();
        q.send_batch(&out, OFFSET).await.unwrap();
        let mut buf = [0u8; 64];
        for i in 0..N {
            let n = rx.recv(&mut buf).expect("every written packet arrives");
            assert_eq!(&buf[..n], format!("back {i}").as_bytes());
        }
    });
}

#[test]
fn an_empty_try_recv_still_lets_the_next_packet_wake_the_reader() {
    on_runtime_in_ns("tryrecv", || async {
        let dev = tun_up("ftar", "10.7.3.1/24", "fd07:3::1/64");
        let q = dev.into_queues().pop().unwrap().into_async().unwrap();
        let sock = UdpSocket::bind("10.7.3.1:0").unwrap();
        let mut buf = vec![0u8; 2048];
        // Each round starts after `try_recv` found the queue empty and told the
        // reactor so: the next packet must still wake the waiting `recv`.
        for round in 0..5 {
            let msg = format!("round {round}");
            let again = format!("round {round} again");
            sock.send_to(msg.as_bytes(), "10.7.3.2:9200").unwrap();
            sock.send_to(again.as_bytes(), "10.7.3.2:9200").unwrap();
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let n = tokio::time::timeout_at(deadline, q.recv(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: the packet woke no one"))
                    .unwrap();
                // The host's own packets (router solicitations) may come first.
                if parse_udp(&buf[..n]).is_some_and(|u| u.payload == msg.as_bytes()) {
                    break;
                }
            }
            // Both were queued when `send_to` returned: the second is read without
            // waiting, and then the queue is empty.
            let mut second = false;
            loop {
                match q.try_recv(&mut buf) {
                    Ok(n) => {
                        second |=
                            parse_udp(&buf[..n]).is_some_and(|u| u.payload == again.as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("try_recv: {e}"),
                }
            }
            assert!(second, "round {round}: try_recv missed a queued packet");
        }
    });
}

#[test]
fn tap_resolves_arp_then_carries_ethernet_frames() {
    in_ns("tap", || {
        let dev = DeviceBuilder::new("ftap0", Mode::Tap)
            .open()
            .expect("create TAP");
        let my_mac = [0x02, 0xf7, 0, 0, 0, 1];
        let peer_mac = [0x02, 0xf7, 0, 0, 0, 2];
        let link = dev.link();
        link.set_mac(my_mac).unwrap();
        link.add_address("10.7.3.1/24".parse().unwrap()).unwrap();
        link.set_up(true).unwrap();
        assert_eq!(link.info().unwrap().mac, Some(my_mac));
        let q = &dev.queues()[0];
        let me = Ipv4Addr::new(10, 7, 3, 1);
        let peer = Ipv4Addr::new(10, 7, 3, 2);

        // A datagram to an unknown neighbour first makes the kernel ask who has it.
        let sock = UdpSocket::bind((me, 0)).unwrap();
        let payload = b"frame for the neighbour".to_vec();
        sock.send_to(&payload, (peer, 9200)).unwrap();
        let (sha, spa) = next_matching(q, |f| {
            parse_arp(f)
                .filter(|&(op, _, _, tpa)| op == 1 && tpa == peer)
                .map(|(_, sha, spa, _)| (sha, spa))
        })
        .expect("an ARP request for the neighbour appears");
        assert_eq!((sha, spa), (my_mac, me));

        // Answering it releases the queued datagram as an Ethernet frame to that MAC.
        let reply = ethernet(
            my_mac,
            peer_mac,
            ETH_ARP,
            &arp(2, peer_mac, peer, my_mac, me),
        );
        q.send(&reply).unwrap();
        let udp = next_matching(q, |f| {
            if f.len() < 14 || f[0..6] != peer_mac || f[6..12] != my_mac {
                return None;
            }
            if u16::from_be_bytes([f[12], f[13]]) != ETH_IPV4 {
                return None;
            }
            parse_udp(&f[14..]).filter(|u| u.dport == 9200)
        })
        .expect("the datagram leaves as a frame to the neighbour's MAC");
        assert_eq!(udp.payload, payload);

        // A frame written into the device reaches a socket.
        let rx = UdpSocket::bind((me, 9201)).unwrap();
        rx.set_read_timeout(Some(WAIT)).unwrap();
        let back = b"frame from the neighbour";
        let frame = ethernet(
            my_mac,
            peer_mac,
            ETH_IPV4,
            &ipv4_udp(peer, me, 4000, 9201, back),
        );
        q.send(&frame).unwrap();
        let mut buf = [0u8; 128];
        let (n, from) = rx
            .recv_from(&mut buf)
            .expect("the socket receives the frame's datagram");
        assert_eq!(&buf[..n], back);
        assert_eq!(from, SocketAddr::from((peer, 4000)));
    });
}

/// Sends one datagram from each of `flows` sockets (distinct ephemeral ports) and returns,
/// per queue, the source ports whose datagram that queue read.
fn spread(queues: &[Queue], flows: u16, dport: u16) -> Vec<Vec<u16>> {
    let mut socks = Vec::new();
    for _ in 0..flows {
        let s = UdpSocket::bind(("10.7.4.1", 0)).unwrap();
        s.send_to(b"mq", ("10.7.4.2", dport)).unwrap();
        socks.push(s);
    }
    let mut got: Vec<Vec<u16>> = vec![Vec::new(); queues.len()];
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while got.iter().map(Vec::len).sum::<usize>() < flows as usize && Instant::now() < deadline {
        for (i, q) in queues.iter().enumerate() {
            match q.recv(&mut buf) {
                Ok(n) => {
                    if let Some(u) = parse_udp(&buf[..n]).filter(|u| u.dport == dport) {
                        got[i].push(u.sport);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read queue {i}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

#[test]
fn multiqueue_spreads_flows_and_a_detached_queue_gets_nothing() {
    in_ns("mq", || {
        let dev = DeviceBuilder::new("ftmq", Mode::Tun)
            .queues(2)
            .open()
            .expect("two queues");
        assert_eq!(dev.queues().len(), 2);
        let link = dev.link();
        link.add_address("10.7.4.1/24".parse().unwrap()).unwrap();
        link.set_up(true).unwrap();
        let tun = link.info().unwrap().tun.unwrap();
        assert!(tun.multi_queue);
        assert_eq!((tun.queues, tun.disabled_queues), (2, 0));
        for q in dev.queues() {
            q.set_nonblocking(true).unwrap();
        }

        // 64 flows: the kernel hashes each flow to a queue; both queues carry some.
        let got = spread(dev.queues(), 64, 9300);
        assert_eq!(
            got[0].len() + got[1].len(),
            64,
            "every flow arrives once: {got:?}"
        );
        assert!(
            !got[0].is_empty() && !got[1].is_empty(),
            "both queues carry traffic: {got:?}"
        );

        // Detach queue 1: everything goes to queue 0 and queue 1 stays empty.
        dev.queues()[1].set_enabled(false).unwrap();
        let tun = link.info().unwrap().tun.unwrap();
        assert_eq!((tun.queues, tun.disabled_queues), (1, 1));
        let got = spread(dev.queues(), 64, 9301);
        assert_eq!(got[0].len(), 64, "queue 0 carries every flow: {got:?}");
        assert!(
            got[1].is_empty(),
            "the detached queue received {:?}",
            got[1]
        );
        let mut buf = [0u8; 2048];
        let e = dev.queues()[1].recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

        // Attached again, it takes its share once more.
        dev.queues()[1].set_enabled(true).unwrap();
        let got = spread(dev.queues(), 64, 9302);
        assert!(
            !got[1].is_empty(),
            "re-enabled queue carries traffic: {got:?}"
        );
    });
}

#[test]
fn interface_disappears_with_its_last_queue_unless_persistent() {
    in_ns("life", || {
        let dev = DeviceBuilder::new("ftgone", Mode::Tun).open().unwrap();
        assert!(Link::find("ftgone").unwrap().is_some());
        drop(dev);
        gone("ftgone", "a dropped device is removed");

        let mut queues = DeviceBuilder::new("ftmq2", Mode::Tap)
            .queues(2)
            .open()
            .unwrap()
            .into_queues();
        queues.pop();
        assert!(
            Link::find("ftmq2").unwrap().is_some(),
            "one queue still holds it"
        );
        drop(queues);
        gone("ftmq2", "gone with the last queue");

        let dev = DeviceBuilder::new("ftkeep", Mode::Tun)
            .persist(true)
            .open()
            .unwrap();
        drop(dev);
        eventually("ftkeep", "a persistent device stays, idle", |i| {
            i.and_then(|i| i.tun.clone())
                .is_some_and(|t| t.persist && t.queues == 0)
        });
        // An idle persistent device can be attached again (the exclusive check allows it).
        let again = DeviceBuilder::new("ftkeep", Mode::Tun)
            .open()
            .expect("re-attach");
        again.set_persist(false).unwrap();
        drop(again);
        gone("ftkeep", "not persistent any more, it goes with its queue");
    });
}

#[test]
fn invalid_names_are_refused_before_any_system_call() {
    // A clone device that does not exist: had the builder made a system call first, the
    // error would be NoTunDevice.
    for bad in [
        "",
        "0123456789abcdef",
        "a b",
        "a/b",
        "a:b",
        "..",
        "t%d%d",
        "t%s",
        "tün",
    ] {
        let e = DeviceBuilder::new(bad, Mode::Tun)
            .clone_device("/nonexistent/tun")
            .open()
            .unwrap_err();
        assert!(matches!(e, DeviceError::InvalidName { .. }), "{bad:?}: {e}");
        assert!(e.to_string().starts_with("invalid interface name"), "{e}");
    }
}

#[test]
fn name_in_use_is_reported_with_who_holds_it() {
    in_ns("busy", || {
        let held = DeviceBuilder::new("ftbusy", Mode::Tun).open().unwrap();
        let e = DeviceBuilder::new("ftbusy", Mode::Tun).open().unwrap_err();
        assert!(matches!(e, DeviceError::InUse { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "interface ftbusy is in use: another process has 1 queue(s) of it open (stop that process, or pick another name)"
        );
        let e = DeviceBuilder::new("ftbusy", Mode::Tap).open().unwrap_err();
        assert!(
            e.to_string().contains("exists as a tun device, not tap"),
            "{e}"
        );
        // Without our own check the kernel refuses too (EBUSY), and says so the same way.
        let e = DeviceBuilder::new("ftbusy", Mode::Tun)
            .exclusive(false)
            .open()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface ftbusy is in use: another process has it open"
        );

        // A multiqueue device in use is refused although the kernel would let us join it.
        let mq = DeviceBuilder::new("ftmqbusy", Mode::Tun)
            .queues(2)
            .open()
            .unwrap();
        let e = DeviceBuilder::new("ftmqbusy", Mode::Tun)
            .queues(2)
            .open()
            .unwrap_err();
        assert!(e.to_string().contains("2 queue(s) of it open"), "{e}");

        // A name taken by an interface of another kind.
        let st = std::process::Command::new("ip")
            .args([
                "link", "add", "ftveth0", "type", "veth", "peer", "name", "ftveth1",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let e = DeviceBuilder::new("ftveth0", Mode::Tun).open().unwrap_err();
        assert!(e.to_string().contains("belongs to a veth interface"), "{e}");
        drop((held, mq));
    });
}

/// The `capset(2)` structures, version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set only (capabilities are
/// per thread in Linux, and the raw system call does not sync them across threads).
fn drop_net_admin_in_this_thread() {
    const VERSION_3: u32 = 0x2008_0522; // _LINUX_CAPABILITY_VERSION_3
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data words as capget(2) requires for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget");
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    assert_eq!(rc, 0, "capset");
}

#[test]
fn missing_capability_is_reported_with_the_flag_to_add() {
    in_ns("nocap", || {
        std::thread::scope(|s| {
            s.spawn(|| {
                drop_net_admin_in_this_thread();
                let e = DeviceBuilder::new("ftnocap", Mode::Tun).open().unwrap_err();
                assert!(matches!(e, DeviceError::NotPermitted { .. }), "{e}");
                let msg = e.to_string();
                assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
                assert!(msg.contains("--cap-add NET_ADMIN"), "{msg}");
                assert!(!msg.contains('\n'), "one line: {msg}");
            })
            .join()
            .unwrap();
        });
        gone("ftnocap", "nothing is left behind");
    });
}

/// Switches the calling thread (only) to another user; root loses its capabilities.
fn become_user_in_this_thread(uid: u32) {
    // SAFETY: the raw system call changes only this thread's credentials (glibc's wrapper
    // would change every thread's).
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    assert_eq!(rc, 0, "setresuid");
}

/// A private copy of the clone device node (char 10:200), readable by everyone: this
/// machine's `/dev/net/tun` is mode 0600, where most distributions use 0666, and the owner
/// check under test happens in `TUNSETIFF`, not in `open`. Each one has its own path: the
/// tests that use them run at once in one process.
struct CloneNode(std::path::PathBuf);

impl CloneNode {
    fn new() -> CloneNode {
        use std::os::unix::ffi::OsStrExt;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ferrotun-tun-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mknod(2) reads it only.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 200)) };
        assert_eq!(
            rc,
            0,
            "mknod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        CloneNode(path)
    }
}

impl Drop for CloneNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn an_owned_persistent_device_is_usable_by_its_owner_only() {
    in_ns("owner", || {
        let node = CloneNode::new();
        let dev = DeviceBuilder::new("ftown", Mode::Tun)
            .owner(65534)
            .persist(true)
            .open()
            .unwrap();
        assert_eq!(dev.link().info().unwrap().tun.unwrap().owner, Some(65534));
        drop(dev);
        eventually("ftown", "idle", |i| {
            i.and_then(|i| i.tun.clone()).is_some_and(|t| t.queues == 0)
        });
        std::thread::scope(|s| {
            s.spawn(|| {
                become_user_in_this_thread(65534);
                let dev = DeviceBuilder::new("ftown", Mode::Tun)
                    .clone_device(&node.0)
                    .open()
                    .expect("the owner attaches without CAP_NET_ADMIN");
                assert_eq!(dev.name(), "ftown");
                // ... and may not create a device of its own.
                let e = DeviceBuilder::new("ftother", Mode::Tun)
                    .clone_device(&node.0)
                    .open()
                    .unwrap_err();
                assert!(matches!(e, DeviceError::NotPermitted { .. }), "{e}");
            })
            .join()
            .unwrap();
            s.spawn(|| {
                become_user_in_this_thread(65533);
                let e = DeviceBuilder::new("ftown", Mode::Tun)
                    .clone_device(&node.0)
                    .open()
                    .unwrap_err();
                assert!(matches!(e, DeviceError::NotPermitted { .. }), "{e}");
            })
            .join()
            .unwrap();
        });
        eventually("ftown", "idle", |i| {
            i.and_then(|i| i.tun.clone()).is_some_and(|t| t.queues == 0)
        });
        Link::by_name("ftown").unwrap().delete().unwrap();
        gone("ftown", "deleted");
    });
}

#[test]
fn queue_operations_on_a_single_queue_device_fail_clearly() {
    in_ns("qerr", || {
        let dev = DeviceBuilder::new("ftq", Mode::Tun).open().unwrap();
        let e = dev.queues()[0].set_enabled(false).unwrap_err();
        assert!(
            matches!(
                e,
                DeviceError::Queue {
                    queue: 0,
                    op: "disable",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("queue 0 of ftq: disable:"), "{e}");
        let e = DeviceBuilder::new("ftq0", Mode::Tun)
            .queues(0)
            .open()
            .unwrap_err();
        assert!(e.to_string().contains("at least one queue"), "{e}");
    });
}

const CHILD_ENV: &str = "FERROTUN_DEVICE_TEST_NO_CLONE_DEVICE";

#[test]
fn missing_clone_device_is_reported_with_the_hint() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // In the child: /dev/net is an empty tmpfs in a private mount namespace.
        let e = DeviceBuilder::new("ftnodev", Mode::Tun).open().unwrap_err();
        println!("ERROR: {e}");
        assert!(matches!(e, DeviceError::NoTunDevice { .. }), "{e}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs /dev/net && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "missing_clone_device_is_reported_with_the_hint",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "ERROR: /dev/net/tun does not exist: load the tun module (`modprobe tun`), or in a container pass the device in (`--device /dev/net/tun`)"
        ),
        "{stdout}"
    );
}

#[test]
fn routes_are_added_listed_refused_twice_and_removed() {
    in_ns("routes", || {
        let dev = tun_up("ftrt", "10.7.5.1/24", "fd07:5::1/64");
        let link = dev.link();
        let v4: ferrotun_device::IpNet = "10.99.0.0/16".parse().unwrap();
        let v6: ferrotun_device::IpNet = "fd99::/48".parse().unwrap();
        link.add_route(v4, None).unwrap();
        link.add_route(v6, Some(7)).unwrap();
        let routes = link.routes().unwrap();
        assert!(routes.contains(&v4) && routes.contains(&v6), "{routes:?}");
        // A packet to the routed prefix now leaves through the device.
        let sock = UdpSocket::bind("10.7.5.1:0").unwrap();
        sock.send_to(b"routed", "10.99.3.4:9400").unwrap();
        let udp = next_matching(&dev.queues()[0], |p| {
            parse_udp(p).filter(|u| u.dport == 9400)
        })
        .expect("the routed datagram appears on the device");
        assert_eq!(udp.dst, Ipv4Addr::new(10, 99, 3, 4));
        let e = link.add_route(v4, None).unwrap_err();
        assert!(matches!(e, DeviceError::RouteExists { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "route 10.99.0.0/16 exists already in the main table"
        );
        link.del_route(v4, None).unwrap();
        link.del_route(v6, Some(7)).unwrap();
        let routes = link.routes().unwrap();
        assert!(!routes.contains(&v4) && !routes.contains(&v6), "{routes:?}");
    });
}

#[test]
fn a_device_owned_by_a_group_is_usable_by_its_members() {
    in_ns("group", || {
        let node = CloneNode::new();
        let dev = DeviceBuilder::new("ftgrp", Mode::Tun)
            .group(65533)
            .persist(true)
            .open()
            .unwrap();
        assert_eq!(dev.link().info().unwrap().tun.unwrap().group, Some(65533));
        drop(dev);
        eventually("ftgrp", "idle", |i| {
            i.and_then(|i| i.tun.clone()).is_some_and(|t| t.queues == 0)
        });
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: raw system call, this thread only: gid 65533, uid 65532.
                let rc = unsafe { libc::syscall(libc::SYS_setresgid, 65533, 65533, 65533) };
                assert_eq!(rc, 0, "setresgid");
                become_user_in_this_thread(65532);
                DeviceBuilder::new("ftgrp", Mode::Tun)
                    .clone_device(&node.0)
                    .open()
                    .expect("a member of the device's group attaches");
            })
            .join()
            .unwrap();
        });
        eventually("ftgrp", "idle", |i| {
            i.and_then(|i| i.tun.clone()).is_some_and(|t| t.queues == 0)
        });
        Link::by_name("ftgrp").unwrap().delete().unwrap();
        gone("ftgrp", "deleted");
    });
}
