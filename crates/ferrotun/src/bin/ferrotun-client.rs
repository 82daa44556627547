//! `ferrotun-client`: connects to one server. See `--help`.

fn main() -> std::process::ExitCode {
    ferrotun::cli::main(ferrotun::cli::Role::Client)
}
