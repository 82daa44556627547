//! The command line shared by `ferrotun-server` and `ferrotun-client`: running the tunnel
//! in the foreground, `genkey`, `pubkey` and `check`.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage or config.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrotun_proto::{OsEntropy, PrivateKey};
use tracing_subscriber::EnvFilter;

use crate::config::{ClientConfig, ServerConfig};

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ferrotun-server`: listens, serves many peers from a peer directory.
    Server,
    /// `ferrotun-client`: connects to one server.
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "ferrotun-server",
            Role::Client => "ferrotun-client",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    /// The config file; runs the tunnel in the foreground until SIGINT or SIGTERM.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The control socket `show` talks to (default: control_socket from the config, else
    /// /run/ferrotun/INTERFACE.sock).
    #[arg(short, long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// More log output (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new private key (base64), as `wg genkey` does.
    Genkey,
    /// Read a private key on stdin and print its public key, as `wg pubkey` does.
    Pubkey,
    /// Validate a config and the files it names; exit 0, or 2 with file:line:column: reason.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running tunnel's peers, transfer counters and drops (like `wg show`).
    Show {
        /// The interface whose instance to ask (its socket is /run/ferrotun/NAME.sock).
        interface: Option<String>,
        /// Find the instance from its config file instead.
        #[arg(short, long, value_name = "FILE", conflicts_with = "interface")]
        config: Option<PathBuf>,
        /// The instance's control socket.
        #[arg(short, long, value_name = "PATH", conflicts_with_all = ["interface", "config"])]
        socket: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Runs the binary for `role`; returns the process's exit code.
pub fn main(role: Role) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    match cli.command {
        Some(Command::Genkey) => genkey(),
        Some(Command::Pubkey) => pubkey(),
        Some(Command::Check { config }) => check(role, &config),
        Some(Command::Show {
            interface,
            config,
            socket,
            json,
        }) => show(role, interface, config, socket, json),
        None => {
            let Some(config) = cli.config else {
                eprintln!(
                    "{}: nothing to do: give a config with -c FILE (or see --help)",
                    role.name()
                );
                return ExitCode::from(2);
            };
            init_logging(cli.verbose, cli.quiet);
            crate::run::run(role, &config, cli.socket)
        }
    }
}

fn show(
    role: Role,
    interface: Option<String>,
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let path = match (socket, config, interface) {
        (Some(s), _, _) => s,
        (None, Some(c), _) => {
            let iface = match role {
                Role::Server => ServerConfig::load(&c).map(|c| c.interface),
                Role::Client => ClientConfig::load(&c).map(|c| c.interface),
            };
            match iface {
                Ok(i) => i
                    .control_socket
                    .unwrap_or_else(|| crate::ctlsock::default_path(&i.name)),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
        (None, None, Some(i)) => crate::ctlsock::default_path(&i),
        (None, None, None) => {
            // The one socket in the default directory, if there is exactly one.
            let found: Vec<PathBuf> = std::fs::read_dir(crate::ctlsock::DEFAULT_DIR)
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                        .collect()
                })
                .unwrap_or_default();
            match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    eprintln!(
                        "{}: no running instance found in {}; name an interface, -c FILE or --socket PATH",
                        role.name(),
                        crate::ctlsock::DEFAULT_DIR
                    );
                    return ExitCode::from(1);
                }
                _ => {
                    eprintln!(
                        "{}: several instances run; name one (interface, -c FILE or --socket PATH)",
                        role.name()
                    );
                    return ExitCode::from(2);
                }
            }
        }
    };
    match crate::ctlsock::query(&path, json) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e:#}", role.name());
            ExitCode::from(1)
        }
    }
}

fn genkey() -> ExitCode {
    match PrivateKey::generate(&mut OsEntropy) {
        Ok(k) => {
            println!("{}", k.to_base64().as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("genkey: {e}");
            ExitCode::from(1)
        }
    }
}

fn pubkey() -> ExitCode {
    let mut text = zeroize::Zeroizing::new(String::new());
    if let Err(e) = std::io::stdin().take(1024).read_to_string(&mut text) {
        eprintln!("pubkey: reading stdin: {e}");
        return ExitCode::from(1);
    }
    match PrivateKey::from_base64(text.trim()) {
        Ok(k) => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{}", k.public_key());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pubkey: stdin does not hold a private key: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(role: Role, path: &Path) -> ExitCode {
    let result = match role {
        Role::Server => ServerConfig::load(path).map(|c| {
            format!(
                "{}: ok: interface {} ({}), {} peer(s)",
                path.display(),
                c.interface.name,
                c.interface.mode,
                c.peers.len()
            )
        }),
        Role::Client => ClientConfig::load(path).map(|c| {
            format!(
                "{}: ok: interface {} ({}), server {} over {}",
                path.display(),
                c.interface.name,
                c.interface.mode,
                c.endpoint,
                c.transport
            )
        }),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
