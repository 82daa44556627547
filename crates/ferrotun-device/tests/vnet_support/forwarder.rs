//! Two namespaces, each with a TUN device, joined by a userspace forwarder instead of a
//! veth: what one device hands out is written into the other, both ways. Side A owns
//! 10.99.1.1/24 and fd99:1::1/64 and routes 10.99.2.0/24 and fd99:2::/64 into its TUN;
//! side B the mirror image. A TCP connection from A to B thus crosses the forwarder, which
//! is the tunnel's data path without the crypto.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ferrotun_device::vnet::{self, Offloads, Reader, ReaderStats, Writer, WriterStats};
use ferrotun_device::{AsyncQueue, Device, DeviceBuilder, Mode};
use ferrotun_lab::Netns;
use tokio::sync::watch;

pub const A_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
pub const B_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);
pub const A_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 1, 0, 0, 0, 0, 0, 1);
pub const B_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 2, 0, 0, 0, 0, 0, 1);
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

/// The two namespaces, their devices' offloads, and the running forwarder.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    /// What `enable_offloads` gave on each side.
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

impl Pair {
    /// Creates both sides and starts forwarding with `path`.
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
        let qa = da.into_queues().pop().expect("one queue");
        let qb = db.into_queues().pop().expect("one queue");
        let offloads = match path {
            Path::Plain => (Offloads::NONE, Offloads::NONE),
            Path::Vnet(want) => (
                vnet::enable_offloads(&qa, want).expect("set offloads"),
                vnet::enable_offloads(&qb, want).expect("set offloads"),
            ),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (stop, stopped) = watch::channel(false);
        let (qa, qb) = {
            let _in_rt = rt.enter();
            (
                Arc::new(qa.into_async().unwrap()),
                Arc::new(qb.into_async().unwrap()),
            )
        };
        let tasks = vec![
            rt.spawn(pump(
                qa.clone(),
                qb.clone(),
                path,
                offloads.1,
                stopped.clone(),
            )),
            rt.spawn(pump(qb, qa, path, offloads.0, stopped)),
        ];
        Pair {
            a,
            b,
            offloads,
            rt,
            stop,
            tasks,
        }
    }

    /// Stops the forwarder and returns what each direction did: (A to B, B to A).
    pub fn stop(self) -> (DirectionStats, DirectionStats) {
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
        (out[0], out[1])
    }

    pub fn b_addr(v6: bool) -> IpAddr {
        if v6 { B_V6.into() } else { B_V4.into() }
    }
}

/// Forwards from `from` into `to` until told to stop.
async fn pump(
    from: Arc<AsyncQueue>,
    to: Arc<AsyncQueue>,
    path: Path,
    out_offloads: Offloads,
    mut stop: watch::Receiver<bool>,
) -> io::Result<DirectionStats> {
    let mut stats = DirectionStats::default();
    let mut reader = Reader::new();
    // The writer may only produce what the device it writes into accepts.
    let mut writer = Writer::new(out_offloads);
    let mut bufs = vec![vec![0u8; HEADROOM + MTU as usize]; BATCH];
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
