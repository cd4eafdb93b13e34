//! Immutable repositories: every object a point needs is locked until at least the point's
//! time plus the repository's immutability period, so nobody holding the writer's credentials
//! (ransomware on the backup server, a stolen data mover) can delete or alter it before then.
//!
//! What locks is the storage's business: on a local ("hardened") repository the privileged
//! immutability service (`bulwark hardened-service`, crate `bulwark-hardened`) sets the
//! immutable attribute, which the unprivileged writer cannot clear. The repository logic only
//! asks, through a [`Locker`]:
//!
//! - At commit, before the manifest exists: the packs holding the point's chunks, the index
//!   objects naming those packs, the point's index, the config and key file are locked until
//!   `point time + period + generation`, each only if its lock would end before `point time +
//!   period` (so a backup reusing a pack does not lock it again each time: once per generation,
//!   after Veeam's "block generation"). Then the manifest is written and locked; if that lock
//!   fails, the manifest is deleted and the backup fails: a point is committed locked or not at
//!   all.
//! - A forget of a point younger than the period is refused with the date it becomes possible.
//! - Garbage collection leaves locked objects where they are and says until when they wait.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Extra days a lock is set for, so reused objects need extending once per generation, not at
/// every backup.
pub const GENERATION_DAYS: i64 = 10;

/// Where the immutability service listens unless `BULWARK_HARDENED_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bulwark/hardened.sock";

/// Locks objects of one repository until a date; never shortens a lock.
pub trait Locker: Send + Sync {
    /// When each key's lock ends (`None`: not locked).
    fn locked_until(&self, keys: &[String]) -> io::Result<Vec<Option<DateTime<Utc>>>>;
    /// Locks `keys` until at least `until`.
    fn lock(&self, keys: &[String], until: DateTime<Utc>) -> io::Result<()>;
}

/// The immutability service of a hardened local repository, reached over its socket.
pub struct HardenedLocker {
    socket: PathBuf,
    repository: PathBuf,
    client: Mutex<Option<bulwark_hardened::HardenedClient>>,
}

impl HardenedLocker {
    /// The service at `BULWARK_HARDENED_SOCKET` (or [`DEFAULT_SOCKET`]) for the repository at
    /// `repository`; connected at first use, so reading an immutable repository needs no service.
    pub fn new(repository: PathBuf) -> HardenedLocker {
        let socket = std::env::var_os("BULWARK_HARDENED_SOCKET")
            .filter(|s| !s.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
        HardenedLocker { socket, repository, client: Mutex::new(None) }
    }

    fn call<T>(
        &self,
        f: impl Fn(&mut bulwark_hardened::HardenedClient) -> bulwark_hardened::Result<T>,
    ) -> io::Result<T> {
        let mut client = self.client.lock().expect("no panics while held");
        // One retry on a fresh connection: the service may have restarted since the last call.
        for attempt in 0..2 {
            if client.is_none() {
                *client = Some(bulwark_hardened::HardenedClient::connect(&self.socket).map_err(to_io)?);
            }
            match f(client.as_mut().expect("connected")) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && e.is_retryable() => *client = None,
                Err(e) => return Err(to_io(e)),
            }
        }
        unreachable!("the second attempt returns")
    }
}

fn to_io(e: bulwark_hardened::HardenedError) -> io::Error {
    use bulwark_hardened::ErrorKind as K;
    let kind = match e.kind() {
        K::PermissionDenied | K::Refused => io::ErrorKind::PermissionDenied,
        K::NotFound => io::ErrorKind::NotFound,
        K::Unsupported => io::ErrorKind::Unsupported,
        K::Unavailable => io::ErrorKind::NotConnected,
        K::Io | K::Protocol => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

impl Locker for HardenedLocker {
    fn locked_until(&self, keys: &[String]) -> io::Result<Vec<Option<DateTime<Utc>>>> {
        let status = self.call(|c| c.status(&self.repository, keys))?;
        Ok(status.into_iter().map(|s| s.locked_until).collect())
    }

    fn lock(&self, keys: &[String], until: DateTime<Utc>) -> io::Result<()> {
        self.call(|c| c.lock(&self.repository, keys, until)).map(|_| ())
    }
}
