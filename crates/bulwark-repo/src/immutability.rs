//! Immutable repositories: every object a point needs is locked until at least the point's
//! time plus the repository's immutability period, so nobody holding the writer's credentials
//! (ransomware on the backup server, a stolen data mover) can delete or alter it before then.
//!
//! What locks is the storage's business, and the repository logic only asks, through a
//! [`Locker`]:
//! - on a local ("hardened") repository the privileged immutability service (`bulwark
//!   hardened-service`, crate `bulwark-hardened`) sets the immutable attribute, which the
//!   unprivileged writer cannot clear ([`HardenedLocker`]);
//! - in an S3 bucket with Object Lock, each object's version gets a retention in COMPLIANCE mode,
//!   which nobody (the bucket's owner included) can shorten or delete before its date
//!   ([`S3Locker`]). The repository deletes every version of an object, so a delete is refused
//!   as a local one is, rather than hidden behind a delete marker.
//!
//! The rules:
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

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::storage::s3::{ObjectLocked, RetentionMode};
use crate::storage::{Location, S3Storage};

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

/// The locker of a repository at `location` locked for `days` (`None` when it is not immutable).
pub fn locker(location: &Location, days: Option<u32>) -> io::Result<Option<(u32, Arc<dyn Locker>)>> {
    let Some(days) = days else { return Ok(None) };
    let locker: Arc<dyn Locker> = match location {
        Location::Local(path) => Arc::new(HardenedLocker::new(path.clone())),
        Location::S3(loc) => Arc::new(S3Locker::new(S3Storage::open(loc)?)),
        Location::Memory(_) => {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a repository in memory cannot be locked"))
        }
    };
    Ok(Some((days, locker)))
}

/// Object Lock in an S3 bucket: the current version of each object gets a COMPLIANCE retention.
pub struct S3Locker {
    s3: S3Storage,
    /// Dates seen or set by this process. A COMPLIANCE retention is never shortened and the
    /// repository never rewrites an object it locks, so a date known is a floor that spares
    /// asking the server again.
    known: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// Requests in flight at once for the locks of many objects.
const LOCK_THREADS: usize = 8;

impl S3Locker {
    pub fn new(s3: S3Storage) -> S3Locker {
        S3Locker { s3, known: Mutex::new(HashMap::new()) }
    }

    fn remember(&self, key: &str, until: DateTime<Utc>) {
        let mut known = self.known.lock().expect("no panics while held");
        let e = known.entry(key.to_string()).or_insert(until);
        *e = (*e).max(until);
    }

    /// Checks that the bucket can hold an immutable repository: Object Lock enabled, and no
    /// default retention (which would lock the repository's leases and lists too, so they
    /// could not be removed when done).
    pub fn check_bucket(s3: &S3Storage) -> Result<(), String> {
        let bucket = &s3.location().bucket;
        let config = s3
            .object_lock_configuration()
            .map_err(|e| format!("reading the Object Lock configuration of bucket {bucket}: {e}"))?;
        if !config.enabled {
            return Err(format!(
                "bucket {bucket} has no Object Lock, so its objects cannot be made immutable: create the bucket with \
                 Object Lock enabled (versioning comes with it), or drop --immutable-days"
            ));
        }
        if let Some((mode, period)) = config.default_retention {
            return Err(format!(
                "bucket {bucket} gives every new object a default retention ({} for {period:?}), which would lock \
                 the repository's leases and work lists too: remove the default retention (Bulwark locks what each \
                 point needs itself)",
                mode.as_str()
            ));
        }
        Ok(())
    }
}

impl Locker for S3Locker {
    fn locked_until(&self, keys: &[String]) -> io::Result<Vec<Option<DateTime<Utc>>>> {
        let out: Vec<Mutex<Option<DateTime<Utc>>>> = {
            let known = self.known.lock().expect("no panics while held");
            keys.iter().map(|k| Mutex::new(known.get(k).copied())).collect()
        };
        crate::spread(LOCK_THREADS, keys.len(), |i| -> io::Result<()> {
            if out[i].lock().expect("no panics while held").is_some() {
                return Ok(());
            }
            // A GOVERNANCE retention can be lifted by whoever may bypass it: not a lock here.
            let until = match self.s3.retention(&keys[i], None)? {
                Some(r) if r.mode == RetentionMode::Compliance => DateTime::<Utc>::from(r.until),
                _ => return Ok(()),
            };
            self.remember(&keys[i], until);
            *out[i].lock().expect("no panics while held") = Some(until);
            Ok(())
        })?;
        Ok(out.into_iter().map(|m| m.into_inner().expect("no panics while held")).collect())
    }

    fn lock(&self, keys: &[String], until: DateTime<Utc>) -> io::Result<()> {
        crate::spread(LOCK_THREADS, keys.len(), |i| -> io::Result<()> {
            let key = &keys[i];
            match self.s3.put_retention(key, None, RetentionMode::Compliance, until.into()) {
                Ok(()) => {}
                // Already locked longer (a lock is never shortened): that is "at least".
                Err(e)
                    if ObjectLocked::find(&e).and_then(|l| l.retention.as_ref()).is_some_and(|r| {
                        r.mode == RetentionMode::Compliance && DateTime::<Utc>::from(r.until) >= until
                    }) => {}
                Err(e) => return Err(e),
            }
            self.remember(key, until);
            Ok(())
        })
    }
}
