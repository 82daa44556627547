//! `ferrotun-relay`: the lab's seeded UDP impairment relay as a program.
//!
//! Listens on one address, forwards to an upstream address (one upstream socket per
//! client), and drops, duplicates, reorders and delays datagrams as told, on the command
//! line at start and through commands on stdin while it runs. See `--help`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;

use ferrotun_lab::{Direction, Impairment, Relay};

const HELP: &str = "\
ferrotun-relay: a seeded UDP impairment relay (loss, duplication, reordering, delay)

usage: ferrotun-relay --listen ADDR --upstream ADDR [--seed N] [SETTING...]

  --listen ADDR       address to listen on, e.g. 198.18.0.2:51821 or [fd00:198:18::2]:51821
  --upstream ADDR     where to forward; replies go back to the client that sent
  --seed N            seed of the decisions (default 1): same seed, same fate per datagram
  --loss P            drop probability, 0.1 or 10%
  --duplicate P       probability a datagram is sent twice
  --reorder P         probability a datagram is held back behind later ones
  --reorder-gap N     how many later datagrams overtake a held one (default 1)
  --delay D           added delay: 20ms, 1s, 500us (bare number: ms)
  --jitter D          extra random delay in [0, D)
  Settings on the command line apply to both directions.

commands on stdin, one per line:
  set [up|down] KEY=VALUE...   e.g. `set loss=0.1 reorder=5%`, `set down delay=30ms`
                               (up: client to upstream, down: upstream to client)
  show                         print the settings
  stats                        print the counters
  quit                         stop (end of input keeps the relay running until a signal)

Run it inside a lab namespace: ip netns exec NAME ferrotun-relay ...
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrotun-relay: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut listen: Option<SocketAddr> = None;
    let mut upstream: Option<SocketAddr> = None;
    let mut seed = 1u64;
    let mut impairment = Impairment::NONE;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            print!("{HELP}");
            return Ok(());
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(parse_addr(&value()?)?),
            "--upstream" => upstream = Some(parse_addr(&value()?)?),
            "--seed" => {
                let v = value()?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?} is not a number"))?;
            }
            "--loss" | "--duplicate" | "--reorder" | "--reorder-gap" | "--delay" | "--jitter" => {
                let key = flag.trim_start_matches("--");
                impairment
                    .apply(&format!("{key}={}", value()?))
                    .map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    let listen = listen.ok_or("--listen ADDR is required (see --help)")?;
    let upstream = upstream.ok_or("--upstream ADDR is required (see --help)")?;
    let relay = Relay::start_here(listen, upstream, seed).map_err(|e| e.to_string())?;
    relay.set(impairment).map_err(|e| e.to_string())?;
    println!(
        "relaying {} -> {} seed {seed}; {impairment}",
        relay.local_addr(),
        relay.upstream()
    );

    let mut quit = false;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        match command(&relay, line.trim()) {
            Ok(true) => {
                quit = true;
                break;
            }
            Ok(false) => {}
            Err(e) => println!("error: {e}"),
        }
        if let Some(failure) = relay.failure() {
            return Err(failure);
        }
    }
    // End of input without `quit` (started from a script with stdin closed): keep
    // relaying until a signal ends the process.
    if !quit {
        loop {
            std::thread::park_timeout(std::time::Duration::from_secs(1));
            if let Some(failure) = relay.failure() {
                return Err(failure);
            }
        }
    }
    let stats = relay.stop().map_err(|e| e.to_string())?;
    println!("{stats}");
    Ok(())
}

/// Runs one stdin command; returns true for `quit`.
fn command(relay: &Relay, line: &str) -> Result<bool, String> {
    let mut words = line.splitn(2, char::is_whitespace);
    match words.next().unwrap_or("") {
        "" => {}
        "quit" | "exit" => return Ok(true),
        "stats" => println!("{}", relay.stats()),
        "show" => {
            println!("up {}", relay.impairment(Direction::ToUpstream));
            println!("down {}", relay.impairment(Direction::ToClient));
        }
        "set" => {
            let rest = words.next().unwrap_or("").trim();
            let (directions, settings) = match rest.split_once(char::is_whitespace) {
                Some(("up", s)) => (vec![Direction::ToUpstream], s),
                Some(("down", s)) => (vec![Direction::ToClient], s),
                _ => (vec![Direction::ToUpstream, Direction::ToClient], rest),
            };
            for direction in directions {
                let mut imp = relay.impairment(direction);
                imp.apply(settings).map_err(|e| e.to_string())?;
                relay
                    .set_direction(direction, imp)
                    .map_err(|e| e.to_string())?;
            }
            println!("ok");
        }
        other => {
            return Err(format!(
                "unknown command {other:?} (set, show, stats, quit)"
            ));
        }
    }
    Ok(false)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an address with a port (198.18.0.2:51821, [fd00:198:18::2]:51821)")
    })
}
