//! What can go wrong, as a kind a caller can act on and a message naming the object.

use std::io;

use serde::{Deserialize, Serialize};

/// What kind of failure, so a caller decides between "fix the request", "retry" and "give up"
/// without reading the message. The kind travels over the socket with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request asks for something the service never does: a key that is not a plain
    /// relative path, a file that is not a regular file of the repository, a repository outside
    /// the roots, a date in the past or too far ahead. Retrying the same request cannot help.
    Refused,
    /// A key names no file (or the repository does not exist).
    NotFound,
    /// The filesystem holding the repository cannot keep the immutable attribute (tmpfs, NFS…).
    Unsupported,
    /// Reading or writing the repository or the ledger failed; a retry may succeed.
    Io,
    /// The service cannot be reached (not running, socket missing); a retry may succeed.
    Unavailable,
    /// The socket permits this user no connection: it is not in the service's group.
    PermissionDenied,
    /// A request or reply that does not parse; a bug or a mismatched version.
    Protocol,
}

/// An error of the immutability service or its client: a kind and a message that names the
/// repository, the key and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HardenedError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<io::Error>,
}

pub type Result<T, E = HardenedError> = std::result::Result<T, E>;

impl HardenedError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HardenedError { kind, message: message.into(), source: None }
    }

    /// An I/O error on `what`, its kind chosen from the errno.
    pub fn io(what: impl std::fmt::Display, e: io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::EACCES) => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        HardenedError { kind, message: format!("{what}: {e}"), source: Some(e) }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Io | ErrorKind::Unavailable)
    }
}
