//! `ferrotun-server`: serves many peers from a peer directory. See `--help`.

fn main() -> std::process::ExitCode {
    ferrotun::cli::main(ferrotun::cli::Role::Server)
}
