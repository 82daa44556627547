//! The operator's `up` and `down` hooks: shell commands run with `/bin/sh -c` after the
//! device is configured and before it is removed.
//!
//! A hook sees the tunnel in its environment (`FERROTUN_INTERFACE`, `FERROTUN_ADDRESS`,
//! `FERROTUN_MTU`, `FERROTUN_MODE`, `FERROTUN_HOOK`). Its output is captured: it is logged,
//! and a failing `up` hook's exit status and output become the error that stops the start.
//! A hook that runs longer than [`HOOK_TIMEOUT`] is killed, so a stuck command cannot
//! hold a tunnel half-started or keep a shutdown from finishing.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrotun_device::Mode;
use ipnet::IpNet;

/// How long a hook may run.
pub(crate) const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a hook's output is kept for logs and errors.
const MAX_OUTPUT: usize = 4096;

/// What a hook is told about the tunnel.
#[derive(Debug, Clone)]
pub(crate) struct HookEnv {
    /// The interface's real name.
    pub(crate) interface: String,
    /// Its addresses.
    pub(crate) addresses: Vec<IpNet>,
    /// Its MTU.
    pub(crate) mtu: u32,
    /// TUN or TAP.
    pub(crate) mode: Mode,
}

/// A hook that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    /// `/bin/sh` could not be started.
    #[error("{hook} hook: cannot run /bin/sh: {source}")]
    Spawn {
        /// "up" or "down".
        hook: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("{hook} hook failed ({status}){}", output_suffix(.output))]
    Failed {
        /// "up" or "down".
        hook: &'static str,
        /// Exit status, as the OS reports it.
        status: String,
        /// Its combined stdout and stderr (truncated).
        output: String,
    },
    /// The hook ran longer than [`HOOK_TIMEOUT`] and was killed.
    #[error("{hook} hook did not finish within {}s and was killed{}", HOOK_TIMEOUT.as_secs(), output_suffix(.output))]
    TimedOut {
        /// "up" or "down".
        hook: &'static str,
        /// What it printed before it was killed.
        output: String,
    },
}

fn output_suffix(output: &str) -> String {
    let o = output.trim();
    if o.is_empty() {
        String::new()
    } else {
        format!(": {}", o.replace('\n', " | "))
    }
}

/// Runs one hook to completion (or until the timeout) and returns its output.
pub(crate) fn run(hook: &'static str, command: &str, env: &HookEnv) -> Result<String, HookError> {
    let addresses: Vec<String> = env.addresses.iter().map(ToString::to_string).collect();
    // One pipe for both streams keeps the order in which the hook wrote them.
    let (mut reader, writer) =
        std::io::pipe().map_err(|source| HookError::Spawn { hook, source })?;
    let writer2 = writer
        .try_clone()
        .map_err(|source| HookError::Spawn { hook, source })?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("FERROTUN_HOOK", hook)
        .env("FERROTUN_INTERFACE", &env.interface)
        .env("FERROTUN_ADDRESS", addresses.join(" "))
        .env("FERROTUN_MTU", env.mtu.to_string())
        .env("FERROTUN_MODE", env.mode.to_string())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .map_err(|source| HookError::Spawn { hook, source })?;
    // The child holds the only write ends now. Read on a thread, into a shared buffer, so
    // that the timeout below can fire and so that a background process of the hook that
    // keeps the pipe open cannot hold us: we take what was written by the time it exited.
    let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = collected.clone();
    let collector = std::thread::spawn(move || {
        let mut chunk = [0u8; 1024];
        while let Ok(n @ 1..) = reader.read(&mut chunk) {
            let mut buf = sink.lock().unwrap_or_else(|p| p.into_inner());
            if buf.len() < MAX_OUTPUT + 1 {
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    });
    let deadline = Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => return Err(HookError::Spawn { hook, source }),
        }
    };
    let grace = Instant::now() + Duration::from_millis(200);
    while !collector.is_finished() && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()));
    let mut output = String::from_utf8_lossy(&output).into_owned();
    if output.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
        output.push_str("...");
    }
    match status {
        None => Err(HookError::TimedOut { hook, output }),
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(HookError::Failed {
            hook,
            status: s.to_string(),
            output,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            interface: "ftun9".into(),
            addresses: vec![
                "10.77.0.1/24".parse().unwrap(),
                "fd77::1/64".parse().unwrap(),
            ],
            mtu: 1420,
            mode: Mode::Tun,
        }
    }

    #[test]
    fn a_hook_sees_the_tunnel_in_its_environment() {
        let out = run(
            "up",
            "echo \"$FERROTUN_HOOK $FERROTUN_INTERFACE $FERROTUN_MTU $FERROTUN_MODE $FERROTUN_ADDRESS\"",
            &env(),
        )
        .unwrap();
        assert_eq!(out.trim(), "up ftun9 1420 tun 10.77.0.1/24 fd77::1/64");
    }

    #[test]
    fn a_failing_hook_reports_status_and_output() {
        let e = run("up", "echo starting; echo broken >&2; exit 3", &env()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "up hook failed (exit status: 3): starting | broken"
        );
    }

    #[test]
    fn a_background_child_does_not_hold_the_hook() {
        let t = Instant::now();
        let out = run("up", "sleep 20 & echo $!", &env()).unwrap();
        let waited = t.elapsed();
        // Clean up the background child by its pid before asserting.
        let pid: i32 = out
            .trim()
            .parse()
            .expect("the hook printed its child's pid");
        // SAFETY: plain kill(2) of the process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(
            waited < Duration::from_secs(10),
            "waited {waited:?} for the background child"
        );
    }
}
