//! The client side, for the transport node or the data mover: one connection, requests in turn.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::error::{ErrorKind, HardenedError, Result};
use crate::protocol::{read_line, write_line, Reply, Request};
use crate::service::{KeyStatus, LockReport};

/// A connection to the immutability service.
pub struct HardenedClient {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl HardenedClient {
    /// Connects to the service's socket. A socket this user may not use is a
    /// [`ErrorKind::PermissionDenied`] error; a missing or dead one is [`ErrorKind::Unavailable`].
    pub fn connect(socket: impl AsRef<Path>) -> Result<HardenedClient> {
        let socket = socket.as_ref().to_path_buf();
        let what = || format!("immutability service at {}", socket.display());
        let writer = UnixStream::connect(&socket).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => HardenedError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{}: permission denied; this user must be in the group the service was given (--group)",
                    what()
                ),
            ),
            Some(libc::ENOENT | libc::ECONNREFUSED) => {
                HardenedError::new(ErrorKind::Unavailable, format!("{}: not running ({e})", what()))
            }
            _ => HardenedError::io(what(), e),
        })?;
        let reader = BufReader::new(writer.try_clone().map_err(|e| HardenedError::io(what(), e))?);
        Ok(HardenedClient { socket, reader, writer })
    }

    /// See [`crate::Service::lock`].
    pub fn lock(&mut self, repository: &Path, keys: &[String], until: DateTime<Utc>) -> Result<LockReport> {
        let request = Request::Lock { repository: repository.to_path_buf(), keys: keys.to_vec(), until };
        match self.call(&request)? {
            Reply::Locked { repository, keys } => Ok(LockReport { repository, keys }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// See [`crate::Service::status`].
    pub fn status(&mut self, repository: &Path, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let request = Request::Status { repository: repository.to_path_buf(), keys: keys.to_vec() };
        match self.call(&request)? {
            Reply::Status { keys } => Ok(keys),
            other => Err(self.unexpected(&other)),
        }
    }

    fn call(&mut self, request: &Request) -> Result<Reply> {
        let lost = |e: std::io::Error| {
            HardenedError::new(
                ErrorKind::Unavailable,
                format!("immutability service at {}: connection lost ({e})", self.socket.display()),
            )
        };
        write_line(&mut self.writer, request).map_err(lost)?;
        let line =
            read_line(&mut self.reader).map_err(lost)?.ok_or_else(|| lost(std::io::ErrorKind::UnexpectedEof.into()))?;
        let reply: Reply = serde_json::from_str(&line).map_err(|e| {
            HardenedError::new(
                ErrorKind::Protocol,
                format!("immutability service at {}: reply does not parse: {e}", self.socket.display()),
            )
        })?;
        match reply {
            Reply::Error { kind, message } => Err(HardenedError::new(kind, message)),
            reply => Ok(reply),
        }
    }

    fn unexpected(&self, reply: &Reply) -> HardenedError {
        HardenedError::new(
            ErrorKind::Protocol,
            format!("immutability service at {}: unexpected reply {reply:?}", self.socket.display()),
        )
    }
}
