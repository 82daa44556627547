//! Processes started inside namespaces, and waiting for conditions.
//!
//! An [`NsProcess`] owns a child whose stdout and stderr go to files, so a test can read
//! what a server logged, signal it, wait for it with a deadline, and be sure it is killed
//! and reaped when the test ends however it ends. [`wait_until`] and [`wait_for`] are how
//! tests wait: they poll a condition until a deadline and say what they waited for when
//! it never came; tests never sleep for a fixed time.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{LabError, Result};

/// How long [`NsProcess`]'s drop waits after SIGTERM before it sends SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Polls `done` until it returns true or `timeout` passes. The poll interval starts at
/// 1 ms and grows to 50 ms. On timeout the error names `what`.
pub fn wait_until(
    what: impl fmt::Display,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let result = wait_for(what, timeout, || if done() { Ok(()) } else { Err("") });
    match result {
        // "last" would only say "not yet": leave it out of the message.
        Err(LabError::Timeout { what, waited, .. }) => Err(LabError::Timeout {
            what,
            waited,
            last: None,
        }),
        other => other,
    }
}

/// Polls `attempt` until it returns `Ok` or `timeout` passes, and returns the value. On
/// timeout the error names `what` and quotes the last `Err` seen, which usually says why
/// (e.g. "connection refused").
pub fn wait_for<T, E: fmt::Display>(
    what: impl fmt::Display,
    timeout: Duration,
    mut attempt: impl FnMut() -> std::result::Result<T, E>,
) -> Result<T> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(1);
    loop {
        let last = match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => e.to_string(),
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LabError::Timeout {
                what: what.to_string(),
                waited,
                last: Some(last),
            });
        }
        thread::sleep(interval.min(timeout - waited));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// A signal the lab sends to processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop cleanly.
    Term,
    /// SIGINT: stop cleanly (Ctrl-C).
    Int,
    /// SIGHUP: reload, by convention.
    Hup,
    /// SIGKILL.
    Kill,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Kill => libc::SIGKILL,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }
}

static NEXT_LOG: AtomicU64 = AtomicU64::new(0);

/// A process started in a namespace (usually with [`crate::Lab::spawn`]), its output
/// captured to files. Dropping it sends SIGTERM to its process group, SIGKILL after
/// [`KILL_GRACE`], and reaps it; if the thread is panicking, the end of its logs is
/// printed to stderr (the test harness shows it with the failure).
#[derive(Debug)]
pub struct NsProcess {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl NsProcess {
    /// Starts `cmd` with stdin closed and stdout/stderr written to
    /// `log_dir/<label>.<n>.stdout` and `.stderr`, in a process group of its own.
    pub fn spawn(label: &str, cmd: &mut Command, log_dir: &Path) -> Result<NsProcess> {
        let n = NEXT_LOG.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}.{n}", crate::netns::sanitize(label, 40));
        let stdout = log_dir.join(format!("{base}.stdout"));
        let stderr = log_dir.join(format!("{base}.stderr"));
        let out = File::create(&stdout)
            .map_err(LabError::io(format!("creating {}", stdout.display())))?;
        let err = File::create(&stderr)
            .map_err(LabError::io(format!("creating {}", stderr.display())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| cmd::spawn_error(cmd, e))?;
        Ok(NsProcess {
            label: label.to_owned(),
            child,
            status: None,
            stdout,
            stderr,
        })
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id (with `ip netns exec`, the program's own: `ip` execs in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process (not its group). Sending to a process that already
    /// exited is not an error.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        let pid = self.raw_pid()?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child,
        // so it cannot have been reused.
        if unsafe { libc::kill(pid, signal.raw()) } != 0 {
            return Err(LabError::io(format!(
                "sending {signal:?} to {} ({pid})",
                self.label
            ))(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(LabError::io(format!("checking on {}", self.label)))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.try_status()?.is_none())
    }

    /// Waits up to `timeout` for the process to exit and returns its status. On timeout
    /// the process keeps running and the error quotes the end of its stderr.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.label, self.pid());
        let result = wait_for(what, timeout, || match self.try_status() {
            Ok(Some(status)) => Ok(Ok(status)),
            Ok(None) => Err("still running".to_owned()),
            Err(e) => Ok(Err(e)),
        });
        match result {
            Ok(inner) => inner,
            Err(LabError::Timeout { what, waited, .. }) => Err(LabError::Timeout {
                what,
                waited,
                last: Some(format!(
                    "still running; stderr ends: {}",
                    cmd::tail(&self.stderr(), 600)
                )),
            }),
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn stop_with(&mut self, signal: Signal, timeout: Duration) -> Result<ExitStatus> {
        self.signal(signal)?;
        self.wait_timeout(timeout)
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything the process wrote to stderr so far (where `tracing` logs go).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Path of the stdout log.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Path of the stderr log.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Waits until the process's stderr or stdout contains `needle` (e.g. a "listening"
    /// log line). Fails early if the process exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("{:?} in the output of {}", needle, self.label);
        wait_for(what, timeout, || {
            if self.stderr().contains(needle) || self.stdout().contains(needle) {
                return Ok(Ok(()));
            }
            match self.try_status() {
                Ok(Some(status)) => Ok(Err(LabError::Command {
                    command: self.label.clone(),
                    status: format!("exited ({status}) before printing {needle:?}"),
                    stderr: cmd::tail(&self.stderr(), 2000),
                })),
                Ok(None) => Err("not printed yet"),
                Err(e) => Ok(Err(e)),
            }
        })?
    }

    /// Stops the process now (SIGTERM to its group, SIGKILL after `grace`), reaps it and
    /// returns its exit status. Whatever is left of its process group (hook scripts,
    /// background jobs) gets SIGKILL too, also when the process had already exited.
    pub fn kill(&mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = self.raw_pid()?;
        let status = match self.try_status()? {
            Some(status) => status,
            None => {
                // SAFETY: signalling the process group our unreaped child leads.
                unsafe { libc::kill(-pid, libc::SIGTERM) };
                match self.wait_timeout(grace) {
                    Ok(status) => status,
                    Err(_) => {
                        // SAFETY: as above.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        let status = self
                            .child
                            .wait()
                            .map_err(LabError::io(format!("reaping {}", self.label)))?;
                        self.status = Some(status);
                        status
                    }
                }
            }
        };
        // SAFETY: a process group id stays reserved while any member lives, so this
        // reaches only what is left of our child's group (ESRCH when nothing is).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        Ok(status)
    }

    fn raw_pid(&self) -> Result<libc::pid_t> {
        libc::pid_t::try_from(self.child.id())
            .map_err(|_| LabError::invalid("pid", self.child.id().to_string()))
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let was_running = matches!(self.try_status(), Ok(None));
        if let Err(e) = self.kill(KILL_GRACE) {
            eprintln!("ferrotun-lab: could not stop {}: {e}", self.label);
        }
        if thread::panicking() {
            let state = match self.status {
                Some(status) if was_running => format!("killed by the lab at test end ({status})"),
                Some(status) => format!("had exited: {status}"),
                None => "state unknown".to_owned(),
            };
            eprintln!(
                "---- {} (pid {}), {state}; stderr ends:\n{}\n---- stdout ends:\n{}\n----",
                self.label,
                self.child.id(),
                cmd::tail(&self.stderr(), 4000),
                cmd::tail(&self.stdout(), 2000),
            );
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
