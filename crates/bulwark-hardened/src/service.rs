//! The service's operations: lock files until a date, report locks, clear expired ones.
//!
//! Why this is safe against the data mover's user, who owns the repository's directories and
//! can do anything there between two of our calls:
//! - a lock reaches a file only through [`files::open_for_lock`] (beneath the repository, no
//!   symbolic link, a regular file with one link) and sets the attribute through that very
//!   descriptor, so no name trick redirects it to a file outside the repository;
//! - once set, the attribute forbids unlinking, renaming, writing, truncating and new hard
//!   links to the file for everyone, and only `CAP_LINUX_IMMUTABLE` (root here) clears it;
//! - the date lives in the ledger, outside the repository, and only ever moves later;
//! - the sweep clears only expired entries, and only through the same kind of opening: a
//!   name that no longer leads to a regular file (the directory above was renamed away, a link
//!   planted) is dropped, never followed. Dropping is safe: a file that was moved with its
//!   directory stays immutable, and only root can free it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use rustix::fs::FileType;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, HardenedError, Result};
use crate::files;
use crate::ledger::{Ledger, LockChange};

/// The longest lock accepted unless configured otherwise: ten years.
pub const DEFAULT_MAX_LOCK_DAYS: u32 = 3650;

/// What the service protects and where it keeps its records.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Directories holding the repositories served; a repository is served if its real path
    /// lies under one of them.
    pub roots: Vec<PathBuf>,
    /// Where the ledgers live: outside every root, owned by root and writable by nobody else.
    pub state_dir: PathBuf,
    /// The furthest date a lock may reach, in days from now: a compromised data mover could
    /// otherwise pin its disk full for centuries, which only root could undo.
    pub max_lock_days: u32,
}

impl ServiceConfig {
    pub fn new(roots: Vec<PathBuf>, state_dir: PathBuf) -> Self {
        ServiceConfig { roots, state_dir, max_lock_days: DEFAULT_MAX_LOCK_DAYS }
    }
}

/// The outcome of a lock for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLock {
    pub key: String,
    /// The date the file is now locked until: the one asked for, or the later one on record.
    pub until: DateTime<Utc>,
    pub change: LockChange,
}

/// The outcome of a lock: every key asked for (duplicates once), in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReport {
    /// The repository's real path (symbolic links resolved), as the ledger records it.
    pub repository: PathBuf,
    pub keys: Vec<KeyLock>,
}

/// Whether a key is locked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    pub key: String,
    /// The date on record, if the file is locked: the ledger has a date *and* the file has the
    /// immutable attribute. A past date means the next sweep clears it.
    pub locked_until: Option<DateTime<Utc>>,
}

/// A key the sweep dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweptKey {
    pub repository: PathBuf,
    pub key: String,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Expired keys whose attribute was cleared and which left the ledger.
    pub cleared: Vec<SweptKey>,
    /// Expired keys that no longer name a regular file (or whose repository is gone): they
    /// left the ledger without anything being touched.
    pub gone: Vec<SweptKey>,
    /// Keys or ledgers the sweep could not handle, with the reason; kept for the next sweep.
    pub failed: Vec<String>,
}

/// The immutability service: locks the files of repositories under its roots.
///
/// Every operation holds one mutex for its whole length, so a lock and a sweep never interleave
/// on a ledger; a second service on the same state directory is refused at [`Service::open`].
pub struct Service {
    roots: Vec<PathBuf>,
    state_dir: PathBuf,
    max_lock: TimeDelta,
    max_lock_days: u32,
    busy: Mutex<()>,
    /// Held (flock) for the service's life.
    _state_lock: File,
}

impl Service {
    /// Checks the configuration and takes the state directory (creating it, mode 0755).
    pub fn open(config: ServiceConfig) -> Result<Service> {
        if config.roots.is_empty() {
            return Err(HardenedError::refused("no root given: the service must know which repositories it serves"));
        }
        let mut roots = Vec::new();
        for r in &config.roots {
            let real = fs::canonicalize(r).map_err(|e| HardenedError::io(format!("root {}", r.display()), e))?;
            if !real.is_dir() {
                return Err(HardenedError::refused(format!("root {} is not a directory", r.display())));
            }
            roots.push(real);
        }
        let state = &config.state_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(state)
            .map_err(|e| HardenedError::io(format!("state directory {}", state.display()), e))?;
        let state_dir = fs::canonicalize(state)
            .map_err(|e| HardenedError::io(format!("state directory {}", state.display()), e))?;
        check_state_dir(&state_dir)?;
        if let Some(r) = roots.iter().find(|r| state_dir.starts_with(r) || r.starts_with(&state_dir)) {
            return Err(HardenedError::refused(format!(
                "state directory {} and root {} overlap: the ledgers must lie outside every repository \
                 (a repository's owner could otherwise lock or replace them); choose a state directory \
                 such as /var/lib/bulwark-hardened",
                state_dir.display(),
                r.display()
            )));
        }
        let lock_path = state_dir.join("service.lock");
        let state_lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| HardenedError::io(format!("state lock {}", lock_path.display()), e))?;
        state_lock.try_lock().map_err(|_| {
            HardenedError::refused(format!(
                "another immutability service already uses state directory {}",
                state_dir.display()
            ))
        })?;
        let max_lock = TimeDelta::try_days(config.max_lock_days.into()).expect("u32 days fit a TimeDelta");
        Ok(Service {
            roots,
            state_dir,
            max_lock,
            max_lock_days: config.max_lock_days,
            busy: Mutex::new(()),
            _state_lock: state_lock,
        })
    }

    /// The roots, symbolic links resolved.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Locks the files at `keys` (relative to the repository) until `until`: records the date
    /// (a later one on record stays), then sets the immutable attribute on each.
    ///
    /// Every key is checked before anything changes: one that is not a plain relative path,
    /// that passes through a symbolic link, leaves the repository, or names anything but a
    /// regular file with a single link refuses the whole request, and neither the ledger nor
    /// any file is touched. `until` must be in the future and at most the configured maximum
    /// ahead. Locking a key again is harmless, and sets the attribute again if root cleared it.
    pub fn lock(&self, repository: &Path, keys: &[String], until: DateTime<Utc>) -> Result<LockReport> {
        let now = Utc::now();
        if until <= now {
            return Err(HardenedError::refused(format!("lock date {until} is not in the future")));
        }
        if until > now + self.max_lock {
            return Err(HardenedError::refused(format!(
                "lock date {until} is more than {} days ahead, the longest lock this service grants",
                self.max_lock_days
            )));
        }
        let keys = unique(keys)?;
        let (repo, dir) = self.repository(repository)?;
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            files::open_for_lock(&dir, &repo, key)?;
        }
        let mut ledger = self.ledger(&repo)?;
        let report = keys
            .iter()
            .map(|key| {
                let change = ledger.extend(key, until);
                KeyLock { key: key.to_string(), until: ledger.until(key).expect("just recorded"), change }
            })
            .collect();
        ledger.save().map_err(|e| HardenedError::io(format!("ledger {}", ledger.path().display()), e))?;
        for key in &keys {
            let fd = files::open_for_lock(&dir, &repo, key)?;
            files::set_immutable(&fd, true).map_err(|e| attribute_error(&repo, key, e))?;
        }
        Ok(LockReport { repository: repo, keys: report })
    }

    /// Whether each key is locked, and until when (see [`KeyStatus`]). A key that names no
    /// file is not locked.
    pub fn status(&self, repository: &Path, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let keys = unique(keys)?;
        let (repo, dir) = self.repository(repository)?;
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let ledger = self.ledger(&repo)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let locked_until = match ledger.until(key) {
                None => None,
                Some(until) => match files::open_beneath(&dir, key) {
                    Ok(fd) => {
                        let regular = rustix::fs::fstat(&fd)
                            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
                        let immutable = regular
                            && files::is_immutable(&fd).map_err(|e| {
                                HardenedError::io(format!("repository {}: key {key}", repo.display()), e.into())
                            })?;
                        immutable.then_some(until)
                    }
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => None,
                    Err(e) => {
                        return Err(HardenedError::io(format!("repository {}: key {key}", repo.display()), e.into()))
                    }
                },
            };
            out.push(KeyStatus { key: key.to_string(), locked_until });
        }
        Ok(out)
    }

    /// Clears the attribute of every key whose date is not after `now`, in every ledger, and
    /// drops it from its ledger. A key that no longer leads to a regular file is dropped
    /// without touching anything. Repositories no longer under the roots are swept too: their
    /// locks were granted, and this is the only way they end.
    pub fn sweep(&self, now: DateTime<Utc>) -> Result<SweepReport> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = SweepReport::default();
        let ledgers = Ledger::list(&self.state_dir)
            .map_err(|e| HardenedError::io(format!("state directory {}", self.state_dir.display()), e))?;
        for path in ledgers {
            let mut ledger = match Ledger::load(&path) {
                Ok(l) => l,
                Err(e) => {
                    report.failed.push(format!("ledger {}: {e}", path.display()));
                    continue;
                }
            };
            let expired = ledger.expired(now);
            if expired.is_empty() {
                continue;
            }
            let repo = ledger.repository().to_path_buf();
            let dir = match files::open_dir_no_symlinks(&repo) {
                Ok(d) => Some(d),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => None,
                Err(e) => {
                    report.failed.push(format!("repository {}: {}", repo.display(), io::Error::from(e)));
                    continue;
                }
            };
            let (mut cleared, mut gone) = (0, 0);
            for key in expired {
                let swept = SweptKey { repository: repo.clone(), key: key.clone() };
                match dir.as_ref().map(|d| clear(d, &key)).unwrap_or(Ok(false)) {
                    Ok(true) => {
                        ledger.remove(&key);
                        report.cleared.push(swept);
                        cleared += 1;
                    }
                    Ok(false) => {
                        ledger.remove(&key);
                        report.gone.push(swept);
                        gone += 1;
                    }
                    Err(e) => report.failed.push(format!("repository {}: key {key}: {e}", repo.display())),
                }
            }
            if let Err(e) = ledger.save() {
                report.failed.push(format!("ledger {}: {e}", ledger.path().display()));
                continue;
            }
            tracing::info!(
                repository = %repo.display(),
                cleared,
                gone,
                "expired locks ended ({gone} of them no longer named a file)"
            );
        }
        for f in &report.failed {
            tracing::warn!("sweep: {f}; kept for the next sweep");
        }
        Ok(report)
    }

    /// The repository at `path` if its real path lies under a root, with a descriptor of it
    /// opened by that real path without following any symbolic link (so a link swapped in
    /// after the check is refused, not followed).
    fn repository(&self, path: &Path) -> Result<(PathBuf, std::os::fd::OwnedFd)> {
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(HardenedError::refused(format!(
                "repository path {} must be absolute, without `..`",
                path.display()
            )));
        }
        let real =
            fs::canonicalize(path).map_err(|e| HardenedError::io(format!("repository {}", path.display()), e))?;
        if !self.roots.iter().any(|r| real.starts_with(r)) {
            return Err(HardenedError::refused(format!(
                "repository {} is not under any of this service's roots ({})",
                path.display(),
                self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        match files::open_dir_no_symlinks(&real) {
            Ok(fd) => Ok((real, fd)),
            Err(Errno::LOOP) => Err(HardenedError::refused(format!(
                "repository {}: its path changed to pass through a symbolic link",
                path.display()
            ))),
            Err(e) => Err(HardenedError::io(format!("repository {}", path.display()), e.into())),
        }
    }

    fn ledger(&self, repo: &Path) -> Result<Ledger> {
        Ledger::for_repository(&self.state_dir, repo)
            .map_err(|e| HardenedError::io(format!("ledger of repository {}", repo.display()), e))
    }
}

/// Clears the attribute of the regular file at `key`; `Ok(false)` when the name no longer
/// leads to one.
fn clear(dir: &std::os::fd::OwnedFd, key: &str) -> io::Result<bool> {
    let fd = match files::open_beneath(dir, key) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Ok(false);
    }
    files::set_immutable(&fd, false)?;
    Ok(true)
}

/// The keys with duplicates dropped (first occurrence kept), each checked for shape.
fn unique(keys: &[String]) -> Result<Vec<&str>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        files::check_key(key)?;
        if seen.insert(key.as_str()) {
            out.push(key.as_str());
        }
    }
    Ok(out)
}

fn attribute_error(repo: &Path, key: &str, e: Errno) -> HardenedError {
    let what = format!("repository {}: key {key}", repo.display());
    match e {
        Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL => HardenedError::new(
            ErrorKind::Unsupported,
            format!(
                "{what}: the filesystem cannot keep the immutable attribute; a hardened repository \
                 needs a local filesystem such as ext4, XFS or btrfs"
            ),
        ),
        Errno::PERM => HardenedError::new(
            ErrorKind::Io,
            format!("{what}: not permitted to set the immutable attribute; the service must run as root with CAP_LINUX_IMMUTABLE"),
        ),
        e => HardenedError::io(what, e.into()),
    }
}

/// The state directory must be root's alone: whoever can write it can rewrite the dates.
fn check_state_dir(dir: &Path) -> Result<()> {
    let md = fs::metadata(dir).map_err(|e| HardenedError::io(format!("state directory {}", dir.display()), e))?;
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != me || md.mode() & 0o022 != 0 {
        return Err(HardenedError::refused(format!(
            "state directory {} must belong to the service's user (uid {me}) and be writable by nobody else \
             (it is uid {}, mode {:o}): whoever can write it can change the lock dates",
            dir.display(),
            md.uid(),
            md.mode() & 0o7777
        )));
    }
    Ok(())
}
