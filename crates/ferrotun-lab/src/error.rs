//! The lab's one error type.
//!
//! Every variant says what the lab was doing when it failed, and for an external command
//! (`ip`, `nft`, `tc`, `ping`) the command line and its stderr, so a failing end-to-end
//! test explains itself without a rerun.

use std::io;
use std::time::Duration;

/// A failure of the namespace lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The process may not create network namespaces. The lab never skips silently: a test
    /// that cannot build its lab fails with this.
    #[error("the namespace lab needs root: {detail}; run sudo ./scripts/test.sh")]
    NeedsRoot {
        /// What showed the missing privilege (the effective uid, or the refused command).
        detail: String,
    },

    /// An external tool the lab drives is not installed.
    #[error(
        "`{tool}` is not installed: install the Debian package {package} (sudo ./scripts/test.sh does)"
    )]
    MissingTool {
        /// The program that was not found.
        tool: String,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// An external command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, as a shell would show it.
        command: String,
        /// How it ended (`exit status: 2`, `signal: 9`).
        status: String,
        /// Its standard error, trimmed (or stdout when stderr was empty).
        stderr: String,
    },

    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A condition did not become true before its deadline.
    #[error("timed out after {waited:?} waiting for {what}{}", last_seen(.last))]
    Timeout {
        /// What was waited for, in words.
        what: String,
        /// How long the lab waited.
        waited: Duration,
        /// The last observation or error while waiting, when there was one.
        last: Option<String>,
    },

    /// An external command succeeded but printed something the lab could not read.
    #[error("could not read the output of `{command}` ({detail}): {output}")]
    Parse {
        /// The command line.
        command: String,
        /// What was expected.
        detail: String,
        /// The output (shortened).
        output: String,
    },

    /// A lab has no host with this tag.
    #[error("this lab has no host {tag:?} (it has {hosts})")]
    NoSuchHost {
        /// The tag asked for.
        tag: String,
        /// The tags it does have.
        hosts: String,
    },

    /// A caller passed a value the lab cannot use.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Why it is invalid.
        detail: String,
    },
}

fn last_seen(last: &Option<String>) -> String {
    match last {
        Some(l) => format!(" (last: {l})"),
        None => String::new(),
    }
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    /// An [`LabError::Io`] with `context`, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }

    /// An [`LabError::Invalid`].
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> LabError {
        LabError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}
