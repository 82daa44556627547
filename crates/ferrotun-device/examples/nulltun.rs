//! A null tunnel: the least a userspace tunnel can do. Packets read from a TUN device are
//! sent as they are in UDP datagrams to one peer, and datagrams from it are written to the
//! device; no encryption, no runtime, no batching: one thread waits in `poll(2)` on both
//! descriptors and moves one packet at a time. Its ping RTT is the floor for any design
//! with the same hops (device → process → socket → process → device) on the machine it
//! runs on; `scripts/bench.sh` measures it beside ferrotun.
//!
//! With SPIN-MICROSECONDS it busy-polls (`poll` with a zero timeout) for that long after
//! the last packet before it sleeps, which measures what waking up costs: how far below the
//! sleeping floor any design could get by spinning (it burns a core while it spins).
//!
//! usage: nulltun NAME ADDRESS/PREFIX BIND-ADDRESS:PORT PEER-ADDRESS:PORT [SPIN-MICROSECONDS]

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferrotun_device::{DeviceBuilder, Mode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nulltun: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (name, address, bind, peer, spin) = match args {
        [name, address, bind, peer] => (name, address, bind, peer, Duration::ZERO),
        [name, address, bind, peer, spin] => (
            name,
            address,
            bind,
            peer,
            Duration::from_micros(spin.parse().map_err(|e| format!("SPIN-MICROSECONDS: {e}"))?),
        ),
        _ => return Err(
            "usage: nulltun NAME ADDRESS/PREFIX BIND-ADDRESS:PORT PEER-ADDRESS:PORT [SPIN-MICROSECONDS]"
                .into(),
        ),
    };
    let peer: SocketAddr = peer.parse()?;
    let device = DeviceBuilder::new(name.as_str(), Mode::Tun).open()?;
    device.link().set_mtu(1420)?;
    device.link().add_address(address.parse()?)?;
    device.link().set_up(true)?;
    let sock = UdpSocket::bind(bind.as_str())?;
    sock.set_nonblocking(true)?;
    let queue = device.into_queues().remove(0);
    queue.set_nonblocking(true)?;
    let mut fds = [
        libc::pollfd {
            fd: queue.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut buf = vec![0u8; 65536];
    let mut last = Instant::now();
    loop {
        let timeout = if last.elapsed() < spin { 0 } else { -1 };
        // SAFETY: `fds` is a valid array of two pollfd structures that outlives the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if r == 0 {
            continue;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        loop {
            let mut moved = false;
            match queue.recv(&mut buf) {
                Ok(n) => {
                    moved = true;
                    if let Err(e) = sock.send_to(&buf[..n], peer) {
                        eprintln!("nulltun: sending: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    moved = true;
                    if let Err(e) = queue.send(&buf[..n]) {
                        eprintln!("nulltun: writing to the device: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            if !moved {
                break;
            }
            last = Instant::now();
        }
    }
}
