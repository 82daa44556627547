//! Two namespaces, each with a TUN device, joined by a userspace forwarder instead of a
//! veth: what one device hands out is written into the other, both ways. Side A owns
//! 10.99.1.1/24 and fd99:1::1/64 and routes 10.99.2.0/24 and fd99:2::/64 into its TUN;
//! side B the mirror image. A TCP connection from A to B thus crosses the forwarder, which
//! is the tunnel's data path without the crypto.
//!
//! With TAP devices ([`Pair::start_tap`]) the forwarder is a wire between two Ethernet
//! ports: A's TAP has 10.99.3.1/24 and fd99:3::1/64, B's 10.99.3.2/24 and fd99:3::2/64,
//! one subnet, so ARP and neighbour discovery cross the forwarder too.
//!
//! With a VLAN trunk ([`Pair::start_trunk`]; this kernel has no 802.1Q devices, so the
//! tags cannot come from A or B) the wire is cut in two by a third namespace M whose
//! bridge joins two TAP devices, m1 and m2. The forwarder between A and m1 pushes the
//! trunk's tags onto every frame towards M and pops them from every frame towards A; the
//! one between m2 and B does the mirror image. So the writer merges tagged frames into m1,
//! the bridge forwards them with their tags, and the kernel hands tagged super-segments
//! out of m2 (the outer tag as an offloaded tag that `tun_put_user()` writes into the
//! frame). A and B have 10.99.4.1/24, fd99:4::1/64 and .2 on their TAPs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ferrotun_device::vnet::{self, Layer, Offloads, Reader, ReaderStats, Writer, WriterStats};
use ferrotun_device::{AsyncQueue, Device, DeviceBuilder, Mode, Queue};
use ferrotun_lab::Netns;
use tokio::sync::watch;

pub const A_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
pub const B_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);
pub const A_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 1, 0, 0, 0, 0, 0, 1);
pub const B_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 2, 0, 0, 0, 0, 0, 1);
pub const TAP_A_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 3, 1);
pub const TAP_B_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 3, 2);
pub const TAP_A_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 3, 0, 0, 0, 0, 0, 1);
pub const TAP_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 3, 0, 0, 0, 0, 0, 2);
pub const TRUNK_A_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 4, 1);
pub const TRUNK_B_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 4, 2);
pub const TRUNK_A_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 4, 0, 0, 0, 0, 0, 1);
pub const TRUNK_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 4, 0, 0, 0, 0, 0, 2);
pub const MTU: u32 = 1420;
const HEADROOM: usize = 16;
const BATCH: usize = 128;

/// How the forwarder moves packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// No virtio-net header: one `read` and one `write` per packet (the data path before
    /// offloads).
    Plain,
    /// Virtio-net header, `vnet::Reader`/`vnet::Writer`, with these offloads asked for.
    Vnet(Offloads),
}

/// What one direction of the forwarder did.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectionStats {
    pub reader: ReaderStats,
    pub writer: WriterStats,
    /// Read system calls (frames) for `Path::Plain`.
    pub plain_reads: u64,
    /// Write system calls for `Path::Plain`.
    pub plain_writes: u64,
    /// Errors of kind InvalidData (malformed frames) seen and skipped.
    pub bad_frames: u64,
    /// TAP only: frames read with EtherType ARP.
    pub arp_frames: u64,
    /// TAP only: frames read with a VLAN tag (802.1Q or 802.1ad).
    pub tagged_frames: u64,
    /// TAP only: frames that did not have the tags the forwarder was to pop.
    pub untagged_on_trunk: u64,
}

impl DirectionStats {
    pub fn reads(&self) -> u64 {
        self.reader.frames + self.plain_reads
    }

    pub fn writes(&self) -> u64 {
        self.writer.frames + self.plain_writes
    }

    pub fn packets(&self) -> u64 {
        self.reader.packets + self.plain_reads
    }
}

/// What a direction of the forwarder does to each TAP frame between reading and writing.
#[derive(Debug, Clone, Copy)]
enum Retag {
    /// Nothing.
    Keep,
    /// Inserts these tags (TPID, TCI), outer first, after the MAC addresses.
    Push(&'static [(u16, u16)]),
    /// Removes this many tags after the MAC addresses.
    Pop(usize),
}

/// The namespaces, their devices' offloads, and the running forwarder.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    /// The middle namespace of a trunk.
    pub m: Option<Netns>,
    /// B's addresses, which A's traffic goes to.
    pub b_addrs: (Ipv4Addr, Ipv6Addr),
    /// What `enable_offloads` gave on each side (A and B).
    pub offloads: (Offloads, Offloads),
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<io::Result<DirectionStats>>>,
}

fn tun(ns: &Netns, name: &str, vnet: bool, me: (Ipv4Addr, Ipv6Addr), peer: (&str, &str)) -> Device {
    ns.run(|| {
        let dev = DeviceBuilder::new(name, Mode::Tun)
            .vnet_hdr(vnet)
            .open()
            .expect("create the TUN device");
        let link = dev.link();
        link.set_mtu(MTU).unwrap();
        link.add_address(format!("{}/24", me.0).parse().unwrap())
            .unwrap();
        link.add_address(format!("{}/64", me.1).parse().unwrap())
            .unwrap();
        link.set_up(true).unwrap();
        link.add_route(peer.0.parse().unwrap(), None).unwrap();
        link.add_route(peer.1.parse().unwrap(), None).unwrap();
        link.wait_addresses_ready(Duration::from_secs(5)).unwrap();
        dev
    })
    .expect("enter the namespace")
}

/// A TAP device with the addresses `me`, or none.
fn tap(ns: &Netns, name: &str, vnet: bool, me: Option<(Ipv4Addr, Ipv6Addr)>) -> Device {
    ns.run(|| {
        let dev = DeviceBuilder::new(name, Mode::Tap)
            .vnet_hdr(vnet)
            .open()
            .expect("create the TAP device");
        let link = dev.link();
        link.set_mtu(MTU).unwrap();
        if let Some(me) = me {
            link.add_address(format!("{}/24", me.0).parse().unwrap())
                .unwrap();
            link.add_address(format!("{}/64", me.1).parse().unwrap())
                .unwrap();
        }
        link.set_up(true).unwrap();
        link.wait_addresses_ready(Duration::from_secs(5)).unwrap();
        dev
    })
    .expect("enter the namespace")
}

fn offloads_of(q: &Queue, path: Path) -> Offloads {
    match path {
        Path::Plain => Offloads::NONE,
        Path::Vnet(want) => vnet::enable_offloads(q, want).expect("set offloads"),
    }
}

fn one_queue(dev: Device) -> Queue {
    dev.into_queues().pop().expect("one queue")
}

impl Pair {
    /// Creates both sides with TUN devices and starts forwarding with `path`.
    pub fn start(tag: &str, path: Path) -> Pair {
        let a = Netns::new(&format!("{tag}a")).expect("create a namespace (run as root)");
        let b = Netns::new(&format!("{tag}b")).expect("create a namespace (run as root)");
        let vnet = matches!(path, Path::Vnet(_));
        let da = tun(
            &a,
            "fva",
            vnet,
            (A_V4, A_V6),
            ("10.99.2.0/24", "fd99:2::/64"),
        );
        let db = tun(
            &b,
            "fvb",
            vnet,
            (B_V4, B_V6),
            ("10.99.1.0/24", "fd99:1::/64"),
        );
        let (qa, qb) = (one_queue(da), one_queue(db));
        let offloads = (offloads_of(&qa, path), offloads_of(&qb, path));
        Pair::run(a, b, None, (B_V4, B_V6), offloads, |rt, stopped| {
            let (qa, qb) = in_runtime(rt, qa, qb);
            vec![
                rt.spawn(pump(
                    qa.clone(),
                    qb.clone(),
                    path,
                    offloads.1,
                    Retag::Keep,
                    stopped.clone(),
                )),
                rt.spawn(pump(qb, qa, path, offloads.0, Retag::Keep, stopped.clone())),
            ]
        })
    }

    /// Creates both sides with TAP devices in one subnet and starts forwarding frames with
    /// `path`.
    pub fn start_tap(tag: &str, path: Path) -> Pair {
        let a = Netns::new(&format!("{tag}a")).expect("create a namespace (run as root)");
        let b = Netns::new(&format!("{tag}b")).expect("create a namespace (run as root)");
        let vnet = matches!(path, Path::Vnet(_));
        let da = tap(&a, "fta", vnet, Some((TAP_A_V4, TAP_A_V6)));
        let db = tap(&b, "ftb", vnet, Some((TAP_B_V4, TAP_B_V6)));
        let (qa, qb) = (one_queue(da), one_queue(db));
        let offloads = (offloads_of(&qa, path), offloads_of(&qb, path));
        Pair::run(a, b, None, (TAP_B_V4, TAP_B_V6), offloads, |rt, stopped| {
            let (qa, qb) = in_runtime(rt, qa, qb);
            vec![
                rt.spawn(pump(
                    qa.clone(),
                    qb.clone(),
                    path,
                    offloads.1,
                    Retag::Keep,
                    stopped.clone(),
                )),
                rt.spawn(pump(qb, qa, path, offloads.0, Retag::Keep, stopped.clone())),
            ]
        })
    }

    /// Creates A and B with TAP devices joined through a trunk that carries `tags` (TPID,
    /// TCI; outer first) on every frame: A <-> m1, bridge in M, m2 <-> B. Stats of
    /// [`stop_all`](Self::stop_all) come in the order A->m1, m1->A, m2->B, B->m2.
    pub fn start_trunk(tag: &str, path: Path, tags: &'static [(u16, u16)]) -> Pair {
        let a = Netns::new(&format!("{tag}a")).expect("create a namespace (run as root)");
        let m = Netns::new(&format!("{tag}m")).expect("create a namespace (run as root)");
        let b = Netns::new(&format!("{tag}b")).expect("create a namespace (run as root)");
        let vnet = matches!(path, Path::Vnet(_));
        // M only switches: without IPv6 its ports and bridge send nothing of their own
        // (router solicitations, MLD), so every frame on the trunk is A's or B's.
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            m.sysctl(key, "1").expect("switch IPv6 off in the middle");
        }
        let da = tap(&a, "fta", vnet, Some((TRUNK_A_V4, TRUNK_A_V6)));
        let db = tap(&b, "ftb", vnet, Some((TRUNK_B_V4, TRUNK_B_V6)));
        let dm1 = tap(&m, "ftm1", vnet, None);
        let dm2 = tap(&m, "ftm2", vnet, None);
        // The device crate makes no bridges; the test lab may use `ip`. No multicast
        // snooping: neighbour solicitations are flooded like broadcasts.
        for args in [
            &[
                "link",
                "add",
                "ftbr",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ][..],
            &["link", "set", "ftm1", "master", "ftbr"],
            &["link", "set", "ftm2", "master", "ftbr"],
            &["link", "set", "ftbr", "up"],
        ] {
            m.ip(args).expect("set up the bridge");
        }
        let (qa, qb) = (one_queue(da), one_queue(db));
        let (qm1, qm2) = (one_queue(dm1), one_queue(dm2));
        let offloads = (offloads_of(&qa, path), offloads_of(&qb, path));
        let om = (offloads_of(&qm1, path), offloads_of(&qm2, path));
        let n = tags.len();
        Pair::run(
            a,
            b,
            Some(m),
            (TRUNK_B_V4, TRUNK_B_V6),
            offloads,
            |rt, stopped| {
                let (qa, qm1) = in_runtime(rt, qa, qm1);
                let (qm2, qb) = in_runtime(rt, qm2, qb);
                vec![
                    rt.spawn(pump(
                        qa.clone(),
                        qm1.clone(),
                        path,
                        om.0,
                        Retag::Push(tags),
                        stopped.clone(),
                    )),
                    rt.spawn(pump(
                        qm1,
                        qa,
                        path,
                        offloads.0,
                        Retag::Pop(n),
                        stopped.clone(),
                    )),
                    rt.spawn(pump(
                        qm2.clone(),
                        qb.clone(),
                        path,
                        offloads.1,
                        Retag::Pop(n),
                        stopped.clone(),
                    )),
                    rt.spawn(pump(
                        qb,
                        qm2,
                        path,
                        om.1,
                        Retag::Push(tags),
                        stopped.clone(),
                    )),
                ]
            },
        )
    }

    fn run(
        a: Netns,
        b: Netns,
        m: Option<Netns>,
        b_addrs: (Ipv4Addr, Ipv6Addr),
        offloads: (Offloads, Offloads),
        spawn: impl FnOnce(
            &tokio::runtime::Runtime,
            &watch::Receiver<bool>,
        ) -> Vec<tokio::task::JoinHandle<io::Result<DirectionStats>>>,
    ) -> Pair {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (stop, stopped) = watch::channel(false);
        let tasks = spawn(&rt, &stopped);
        Pair {
            a,
            b,
            m,
            b_addrs,
            offloads,
            rt,
            stop,
            tasks,
        }
    }

    /// Stops the forwarder and returns what each direction did: (A to B, B to A); on a
    /// trunk (A to m1, m1 to A).
    pub fn stop(self) -> (DirectionStats, DirectionStats) {
        let out = self.stop_all();
        (out[0], out[1])
    }

    /// Stops the forwarder and returns what every direction did, in the order the
    /// constructor names.
    pub fn stop_all(self) -> Vec<DirectionStats> {
        self.stop.send_replace(true);
        let mut out = Vec::new();
        for t in self.tasks {
            let stats = self
                .rt
                .block_on(t)
                .expect("the forwarder task ran to its end")
                .expect("the forwarder saw no device error");
            out.push(stats);
        }
        self.rt.shutdown_timeout(Duration::from_secs(1));
        out
    }

    /// B's address on a TUN pair.
    pub fn b_addr(v6: bool) -> IpAddr {
        if v6 { B_V6.into() } else { B_V4.into() }
    }

    /// B's address on this pair.
    pub fn b_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.b_addrs.1.into()
        } else {
            self.b_addrs.0.into()
        }
    }
}

fn in_runtime(
    rt: &tokio::runtime::Runtime,
    x: Queue,
    y: Queue,
) -> (Arc<AsyncQueue>, Arc<AsyncQueue>) {
    let _in_rt = rt.enter();
    (
        Arc::new(x.into_async().unwrap()),
        Arc::new(y.into_async().unwrap()),
    )
}

fn is_tag(tpid: &[u8]) -> bool {
    matches!(tpid, [0x81, 0x00] | [0x88, 0xa8])
}

/// Applies `retag` to the frame `buf[HEADROOM..HEADROOM + len]` and returns its new
/// length. The buffer has room for the tags.
fn retag(buf: &mut [u8], len: usize, retag: Retag, stats: &mut DirectionStats) -> usize {
    let f = &mut buf[HEADROOM..];
    match retag {
        Retag::Keep => len,
        Retag::Push(tags) => {
            let add = 4 * tags.len();
            f.copy_within(12..len, 12 + add);
            for (i, &(tpid, tci)) in tags.iter().enumerate() {
                f[12 + 4 * i..14 + 4 * i].copy_from_slice(&tpid.to_be_bytes());
                f[14 + 4 * i..16 + 4 * i].copy_from_slice(&tci.to_be_bytes());
            }
            len + add
        }
        Retag::Pop(n) => {
            let cut = 4 * n;
            if len < 14 + cut || !(0..n).all(|i| is_tag(&f[12 + 4 * i..14 + 4 * i])) {
                stats.untagged_on_trunk += 1;
                return len;
            }
            f.copy_within(12 + cut..len, 12);
            len - cut
        }
    }
}

/// Forwards from `from` into `to` until told to stop.
async fn pump(
    from: Arc<AsyncQueue>,
    to: Arc<AsyncQueue>,
    path: Path,
    out_offloads: Offloads,
    tags: Retag,
    mut stop: watch::Receiver<bool>,
) -> io::Result<DirectionStats> {
    let mut stats = DirectionStats::default();
    let layer = Layer::from(from.get_ref().mode());
    let mut reader = Reader::with_layer(layer);
    // The writer may only produce what the device it writes into accepts.
    let mut writer = Writer::with_layer(out_offloads, layer);
    let room = MTU as usize + layer.max_header_len();
    let mut bufs = vec![vec![0u8; HEADROOM + room]; BATCH];
    let mut lens = vec![0usize; BATCH];
    loop {
        let n = tokio::select! {
            _ = stop.changed() => break,
            r = async {
                match path {
                    Path::Plain => from.recv_batch(&mut bufs, HEADROOM, &mut lens).await,
                    Path::Vnet(_) => reader.recv_batch(&from, &mut bufs, HEADROOM, &mut lens).await,
                }
            } => r,
        };
        let n = match n {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                stats.bad_frames += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if layer == Layer::Ethernet {
            for (b, len) in bufs.iter_mut().zip(lens.iter_mut()).take(n) {
                match b.get(HEADROOM + 12..HEADROOM + 14) {
                    Some([0x08, 0x06]) => stats.arp_frames += 1,
                    Some(t) if is_tag(t) => stats.tagged_frames += 1,
                    _ => {}
                }
                *len = retag(b, *len, tags, &mut stats);
            }
        }
        match path {
            Path::Plain => {
                stats.plain_reads += n as u64;
                for (b, &len) in bufs.iter().zip(&lens).take(n) {
                    to.send(&b[HEADROOM..HEADROOM + len]).await?;
                    stats.plain_writes += 1;
                }
            }
            Path::Vnet(_) => {
                writer
                    .send_batch(&to, &mut bufs[..n], HEADROOM, &lens[..n])
                    .await?;
            }
        }
    }
    stats.reader = reader.stats();
    stats.writer = writer.stats();
    Ok(stats)
}
