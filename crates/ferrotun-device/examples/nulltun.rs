//! A null tunnel: the least a userspace tunnel can do. Packets read from a TUN device are
//! sent as they are in UDP datagrams to one peer, and datagrams from it are written to the
//! device; no encryption, no runtime, one blocking thread per direction. Its ping RTT is
//! the floor for any design with the same hops (device → process → socket → process →
//! device), which is what `scripts/bench.sh` compares ferrotun's idle RTT with.
//!
//! usage: nulltun NAME ADDRESS/PREFIX BIND-ADDRESS:PORT PEER-ADDRESS:PORT

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;

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
    let [name, address, bind, peer] = args else {
        return Err(
            "usage: nulltun NAME ADDRESS/PREFIX BIND-ADDRESS:PORT PEER-ADDRESS:PORT".into(),
        );
    };
    let peer: SocketAddr = peer.parse()?;
    let device = DeviceBuilder::new(name.as_str(), Mode::Tun).open()?;
    device.link().set_mtu(1420)?;
    device.link().add_address(address.parse()?)?;
    device.link().set_up(true)?;
    let sock = Arc::new(UdpSocket::bind(bind.as_str())?);
    let queue = Arc::new(device.into_queues().remove(0));
    queue.set_nonblocking(false)?;
    let (q, s) = (queue.clone(), sock.clone());
    let outbound = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = q.recv(&mut buf)?;
            s.send_to(&buf[..n], peer)?;
        }
    });
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = sock.recv_from(&mut buf)?;
        if let Err(e) = queue.send(&buf[..n]) {
            eprintln!("nulltun: writing to the device: {e}");
        }
        if outbound.is_finished() {
            return Err("the outbound thread stopped".into());
        }
    }
}
