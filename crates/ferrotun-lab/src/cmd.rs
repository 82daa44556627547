//! Running the external tools the lab drives (`ip`, `nft`, `tc`, `ping`) and turning their
//! failures into [`LabError`]s that carry the command line and stderr.
//!
//! Library code of ferrotun configures links over netlink; this crate is test support and
//! shells out on purpose, so that what a test sets up is exactly what an operator would
//! type and what `scripts/lab.sh` does.

use std::ffi::OsStr;
use std::io;
use std::process::{Command, Output};

use crate::error::{LabError, Result};

/// The Debian package that provides `tool`, for [`LabError::MissingTool`].
pub(crate) fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "tc" | "bridge" => "iproute2",
        "nft" => "nftables",
        "ping" => "iputils-ping",
        "iperf3" => "iperf3",
        "tcpdump" => "tcpdump",
        _ => "that provides it",
    }
}

/// `cmd` as a shell would show it, for messages.
pub(crate) fn render(cmd: &Command) -> String {
    let mut out = quote(cmd.get_program());
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,%@+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The error for a command that could not be started.
pub(crate) fn spawn_error(cmd: &Command, err: io::Error) -> LabError {
    if err.kind() == io::ErrorKind::NotFound {
        let tool = cmd.get_program().to_string_lossy().into_owned();
        let package = package_of(&tool);
        return LabError::MissingTool { tool, package };
    }
    LabError::Io {
        context: format!("starting `{}`", render(cmd)),
        source: err,
    }
}

/// Shortens `s` to about `max` bytes for an error message, keeping its end (where tools put
/// the reason).
pub(crate) fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Turns a finished command into its stdout, or a [`LabError`] naming the command and
/// quoting its stderr.
pub(crate) fn check(cmd: &Command, out: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = if stderr.trim().is_empty() {
        tail(&stdout, 2000)
    } else {
        tail(&stderr, 2000)
    };
    let denied = stderr.contains("Operation not permitted") || stderr.contains("Permission denied");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if denied && unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NeedsRoot {
            detail: format!("`{}` was refused: {stderr}", render(cmd)),
        });
    }
    Err(LabError::Command {
        command: render(cmd),
        status: out.status.to_string(),
        stderr,
    })
}

/// Runs `cmd` to completion with stdin closed and returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| spawn_error(cmd, e))?;
    check(cmd, out)
}

/// Runs `cmd` with `input` on its stdin and returns its stdout.
pub(crate) fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(cmd, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(LabError::io(format!("writing to `{}`", render(cmd))))?;
    }
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("waiting for `{}`", render(cmd))))?;
    check(cmd, out)
}
