//! Network namespaces with unique names that delete themselves.
//!
//! A [`Netns`] is a named namespace (`/run/netns/NAME`, made with `ip netns add`) so that
//! people can look into a running test with `ip netns exec` and so that the real binaries
//! can be started inside it. Names are `ft<pid>-<n>-<tag>`: the pid tells [`reap_stale`]
//! which namespaces belong to a run that died without cleaning up, the process-wide counter
//! keeps parallel tests apart.
//!
//! Code runs inside a namespace in two ways: [`Netns::command`] for programs (through
//! `ip netns exec`, which also remounts `/sys` for them) and [`Netns::run`] /
//! [`Netns::spawn_thread`] for Rust closures, on a thread that has `setns`'d into it.
//! Sockets and TUN devices created on such a thread belong to the namespace for their
//! whole life, whichever thread uses them later.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use crate::cmd;
use crate::error::{LabError, Result};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace name the lab makes; [`reap_stale`] only ever touches names
/// that start with it followed by a pid.
const PREFIX: &str = "ft";

/// Longest tag kept in a namespace name; longer tags are cut.
const MAX_TAG: usize = 12;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// `ip netns add` makes `/run/netns` a shared mount the first time; two of them racing on
/// that inside one process can stack mounts, so the lab adds namespaces one at a time.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// Checks once per process that this process may build a lab: it runs as root and `ip`
/// is installed.
///
/// Every constructor calls it, so a test without privileges fails with
/// [`LabError::NeedsRoot`] ("needs root: run sudo ./scripts/test.sh"); it never skips.
/// The first successful call also runs [`reap_stale`] once.
pub fn require_lab() -> Result<()> {
    static CHECK: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let verdict = CHECK.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(format!(
                "creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN, and this process runs as uid {euid}"
            ));
        }
        if let Err(e) = reap_stale() {
            eprintln!("ferrotun-lab: could not reap namespaces of earlier runs: {e}");
        }
        Ok(())
    });
    match verdict {
        Ok(()) => Ok(()),
        Err(detail) => Err(LabError::NeedsRoot {
            detail: detail.clone(),
        }),
    }
}

/// Deletes namespaces left behind by earlier lab runs that were killed before they could
/// clean up (`ft<pid>-...` whose pid no longer runs), after killing any process still
/// inside them, and those runs' log directories. Returns the namespaces it deleted.
///
/// A pid that was reused by an unrelated process keeps its namespace until that process
/// ends; nothing else is touched.
pub fn reap_stale() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("listing {NETNS_DIR}"))(e)),
    };
    let me = std::process::id();
    reap_log_dirs(me);
    let mut reaped = Vec::new();
    for entry in entries {
        let entry = entry.map_err(LabError::io(format!("listing {NETNS_DIR}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == me || pid_alive(pid) {
            continue;
        }
        kill_inside(&name);
        match cmd::run(Command::new("ip").args(["netns", "delete", &name])) {
            Ok(_) => reaped.push(name),
            // Another test binary reaping at the same moment got there first.
            Err(_) if !Path::new(NETNS_DIR).join(&name).exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(reaped)
}

/// Removes the log directories of dead runs (`ferrotun-lab-<pid>-*` in the temp dir);
/// best effort, since they are only files.
fn reap_log_dirs(me: u32) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(crate::lab::LOG_DIR_PREFIX) else {
            continue;
        };
        let pid = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != me
            && !pid_alive(pid)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in a lab namespace name `ft<pid>-...`, or `None` for any other name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// SIGKILLs every process whose main thread is in namespace `name` (never this process).
fn kill_inside(name: &str) {
    let Ok(out) = cmd::run(Command::new("ip").args(["netns", "pids", name])) else {
        return;
    };
    let me = std::process::id();
    for pid in out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        if pid == me {
            continue;
        }
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: sending a signal to a pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Keeps `[A-Za-z0-9_]` of `tag` (others become `_`), at most `max` bytes.
pub(crate) fn sanitize(tag: &str, max: usize) -> String {
    tag.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// A network namespace made for one test, deleted (with every process still inside) when
/// dropped, also while a panic unwinds.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace named `ft<pid>-<n>-<tag>` and brings its `lo` up.
    ///
    /// `tag` is for people reading `ip netns list`; it is cut to 12 characters and
    /// characters other than letters, digits and `_` become `_`.
    pub fn new(tag: &str) -> Result<Netns> {
        require_lab()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{PREFIX}{}-{n}-{}",
            std::process::id(),
            sanitize(tag, MAX_TAG)
        );
        {
            let _serial = ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            cmd::run(Command::new("ip").args(["netns", "add", &name])).map_err(|e| match e {
                // Root without CAP_SYS_ADMIN (a restricted container) ends up here.
                LabError::Command { command, stderr, .. }
                    if stderr.contains("Operation not permitted")
                        || stderr.contains("Permission denied") =>
                {
                    LabError::NeedsRoot {
                        detail: format!(
                            "`{command}` was refused ({stderr}); the lab needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
                        ),
                    }
                }
                e => e,
            })?;
        }
        let ns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: open it and `setns` to enter, or pass it to a container
    /// (`--network ns:PATH`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    /// Add arguments, environment and redirections as usual. `ip` execs the program in
    /// place, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program);
        cmd
    }

    /// Runs `program args...` inside the namespace to completion and returns its stdout,
    /// or an error with its stderr.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::run(self.command(program).args(args))
    }

    /// Runs `f` on a new thread that has entered this namespace, waits for it and returns
    /// its result. A panic in `f` is resumed in the caller. `f` may borrow from the caller.
    ///
    /// Fails only when the thread cannot be started or cannot enter the namespace.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let handle = self.open()?;
        let name = self.name.clone();
        thread::scope(|scope| {
            let thread = thread::Builder::new()
                .name(format!("ns {name}"))
                .spawn_scoped(scope, move || {
                    enter(&handle, &name)?;
                    drop(handle);
                    Ok(f())
                })
                .map_err(LabError::io("starting a thread for a namespace"))?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a thread that has entered this namespace, for long-running work
    /// (servers, relays). Returns once the thread is inside the namespace.
    pub fn spawn_thread<F, T>(&self, f: F) -> Result<NsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.open()?;
        let name = self.name.clone();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(format!("ns {name}"))
            .spawn(move || {
                let entered = enter(&handle, &name);
                drop(handle);
                let ok = entered.is_ok();
                // The receiver waits for exactly this message; if it is gone, so is the
                // caller, and running f would be pointless.
                if entered_tx.send(entered).is_err() || !ok {
                    return None;
                }
                Some(f())
            })
            .map_err(LabError::io("starting a thread for a namespace"))?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(NsThread { thread }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LabError::io(format!("entering namespace {}", self.name))(
                io::Error::other("the namespace thread ended before reporting"),
            )),
        }
    }

    /// Writes a sysctl of this namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        if key.contains("..") || key.contains('/') {
            return Err(LabError::invalid("sysctl key", key));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // /proc/sys/net resolves against the namespace of the thread that opens it.
        self.run(|| std::fs::write(&path, value))?
            .map_err(LabError::io(format!(
                "writing {value} to {path} in {}",
                self.name
            )))
    }

    /// The names of the interfaces in this namespace, as seen from inside it.
    pub fn interfaces(&self) -> Result<Vec<String>> {
        self.run(|| {
            std::fs::read_to_string("/proc/thread-self/net/dev").map(|dev| {
                dev.lines()
                    .skip(2)
                    .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
                    .collect()
            })
        })?
        .map_err(LabError::io(format!(
            "reading the interfaces of {}",
            self.name
        )))
    }

    /// A UDP socket bound to `addr` inside this namespace. It stays in the namespace and
    /// can be used from any thread.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.run(|| UdpSocket::bind(addr))?
            .map_err(LabError::io(format!("binding UDP {addr} in {}", self.name)))
    }

    /// A TCP listener bound to `addr` inside this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.run(|| TcpListener::bind(addr))?
            .map_err(LabError::io(format!(
                "listening on TCP {addr} in {}",
                self.name
            )))
    }

    /// A TCP connection to `addr` made from inside this namespace.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.run(|| TcpStream::connect_timeout(&addr, timeout))?
            .map_err(LabError::io(format!(
                "connecting to TCP {addr} from {}",
                self.name
            )))
    }

    fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(LabError::io(format!("opening {}", self.path.display())))
    }

    fn destroy(&self) -> Result<()> {
        kill_inside(&self.name);
        cmd::run(Command::new("ip").args(["netns", "delete", &self.name]))?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.destroy() {
            eprintln!(
                "ferrotun-lab: could not delete namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Moves the calling thread into the namespace `handle` refers to.
fn enter(handle: &File, name: &str) -> Result<()> {
    // SAFETY: the fd is open for the duration of the call (borrowed from `handle`);
    // setns only changes this thread's network namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(LabError::io(format!("setns into namespace {name}"))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A thread running inside a namespace, from [`Netns::spawn_thread`].
#[derive(Debug)]
pub struct NsThread<T> {
    thread: thread::JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    /// Waits for the thread and returns its result, or the panic payload if it panicked.
    pub fn join(self) -> thread::Result<T> {
        self.thread.join().map(|result| {
            result.expect("an NsThread exists only after its thread entered the namespace and so ran its closure")
        })
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_lab_names() {
        assert_eq!(owner_pid("ft1234-0-a"), Some(1234));
        assert_eq!(owner_pid("ft1-22-relay_x"), Some(1));
        assert_eq!(owner_pid("ftlab-a"), None);
        assert_eq!(owner_pid("ft-1-a"), None);
        assert_eq!(owner_pid("ft12x-1-a"), None);
        assert_eq!(owner_pid("other"), None);
    }

    #[test]
    fn sanitize_cuts_and_replaces() {
        assert_eq!(sanitize("server", 12), "server");
        assert_eq!(sanitize("a b/c.d", 12), "a_b_c_d");
        assert_eq!(sanitize("abcdefghijklmnop", 12), "abcdefghijkl");
    }
}
