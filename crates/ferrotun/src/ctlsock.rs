//! The control socket: a unix socket through which `show` asks a running tunnel for its
//! status. It answers two read-only requests, `show` and `show json`, and nothing else.
//!
//! One socket per instance (docs/architecture.md, "The control socket"):
//! `/run/ferrotun/<interface>.sock` unless the config (`control_socket`) or the command
//! line (`--socket`) names another.
//! `/run` is shared by every network namespace of a host, so before binding we look:
//! a socket file that answers belongs to a live instance and we refuse to start ("in
//! use"); one that refuses connections is stale and is replaced. The socket is created
//! mode 0600 (owner only) and removed on shutdown.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::engine::shared::Shared;
use crate::status;

/// Where sockets go by default.
pub(crate) const DEFAULT_DIR: &str = "/run/ferrotun";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The default socket path of an interface.
pub(crate) fn default_path(interface: &str) -> PathBuf {
    Path::new(DEFAULT_DIR).join(format!("{interface}.sock"))
}

/// A bound control socket; removes its file when dropped.
pub(crate) struct ControlSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl ControlSocket {
    /// Binds the socket at `path`, refusing if a live instance answers there.
    pub(crate) fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
        if path.exists() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "control socket {} is in use by a running instance (another ferrotun on this interface name, maybe in another network namespace); stop it, or set control_socket / --socket",
                    path.display()
                ),
                Err(_) => {
                    tracing::debug!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale {}", path.display()))?;
                }
            }
        }
        // SAFETY: umask(2) only swaps the process's file creation mask; it cannot fail.
        let old = unsafe { libc::umask(0o177) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.with_context(|| format!("control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("control socket {}", path.display()))?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until the task is dropped. Must run inside a tokio runtime.
    pub(crate) fn serve(
        &mut self,
        shared: Arc<Shared>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let std_listener = self
            .listener
            .take()
            .context("control socket already serving")?;
        std_listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(std_listener)?;
        Ok(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(REQUEST_TIMEOUT * 2, answer(stream, &shared)).await;
                });
            }
        }))
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(stream: tokio::net::UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let reply = match line.trim() {
        "show" => status::render(&status::snapshot(shared)),
        "show json" => {
            let mut s = serde_json::to_string_pretty(&status::snapshot(shared)).unwrap_or_default();
            s.push('\n');
            s
        }
        other => format!(
            "error: unknown request {other:?} (this socket answers \"show\" and \"show json\" only)\n"
        ),
    };
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await
}

/// Asks the instance at `path` for its status (`json` for JSON); returns the answer.
pub(crate) fn query(path: &Path, json: bool) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot reach a running ferrotun at {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(if json { b"show json\n" } else { b"show\n" })?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
