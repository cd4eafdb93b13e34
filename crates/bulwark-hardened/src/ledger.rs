//! The ledger: which files of one repository are locked, and until when.
//!
//! One JSON file per repository in the service's state directory, never inside the
//! repository, whose owner the service does not trust. It is the only record of when a lock
//! may end: the immutable attribute itself carries no date. So it is replaced whole and
//! atomically (staged, synced, renamed, directory synced), and it is written *before* any
//! attribute is set: a crash in between leaves an entry without an attribute (harmless: the
//! sweep clears an attribute that is not there) rather than an attribute nobody would ever
//! clear. Mode 0644: the dates are no secret, and anyone on the host may read them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

const SUFFIX: &str = ".ledger";
const FORMAT: u32 = 1;

/// What recording a lock did to the date on record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockChange {
    /// The key had no date; it has the one asked for.
    New,
    /// The key had an earlier date; it has the one asked for.
    Extended,
    /// The key already had this date or a later one, which stays: a lock is never shortened.
    Kept,
}

#[derive(Serialize, Deserialize)]
struct LedgerFile {
    format: u32,
    repository: PathBuf,
    locks: BTreeMap<String, DateTime<Utc>>,
}

/// The locks of one repository: key → locked until.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
    repository: PathBuf,
    locks: BTreeMap<String, DateTime<Utc>>,
}

impl Ledger {
    /// The ledger of `repository` (an absolute path without symbolic links) in `state_dir`,
    /// empty when the repository has none yet.
    pub fn for_repository(state_dir: &Path, repository: &Path) -> io::Result<Ledger> {
        let path = state_dir.join(file_name(repository)?);
        match Self::load(&path) {
            Ok(ledger) if ledger.repository == repository => Ok(ledger),
            Ok(ledger) => Err(io::Error::other(format!(
                "ledger {} records repository {}, not {}; move it aside",
                path.display(),
                ledger.repository.display(),
                repository.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Ledger { path, repository: repository.to_path_buf(), locks: BTreeMap::new() })
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a ledger file. A ledger that does not parse is an error, never an empty ledger:
    /// its dates would be lost.
    pub fn load(path: &Path) -> io::Result<Ledger> {
        let bytes = fs::read(path)?;
        let file: LedgerFile = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ledger {} is damaged ({e}); its locks are not cleared until it is repaired", path.display()),
            )
        })?;
        if file.format != FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ledger {} has format {}, this build reads format {FORMAT}", path.display(), file.format),
            ));
        }
        Ok(Ledger { path: path.to_path_buf(), repository: file.repository, locks: file.locks })
    }

    /// The paths of every ledger in `state_dir`.
    pub fn list(state_dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(state_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.as_bytes();
            if name.ends_with(SUFFIX.as_bytes()) && !name.starts_with(b".") {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn repository(&self) -> &Path {
        &self.repository
    }

    pub fn until(&self, key: &str) -> Option<DateTime<Utc>> {
        self.locks.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// Records that `key` stays locked until `until` at least; a later date on record stays.
    pub fn extend(&mut self, key: &str, until: DateTime<Utc>) -> LockChange {
        match self.locks.get_mut(key) {
            None => {
                self.locks.insert(key.to_string(), until);
                LockChange::New
            }
            Some(old) if *old < until => {
                *old = until;
                LockChange::Extended
            }
            Some(_) => LockChange::Kept,
        }
    }

    /// The keys whose date is not after `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> Vec<String> {
        self.locks.iter().filter(|(_, until)| **until <= now).map(|(k, _)| k.clone()).collect()
    }

    pub fn remove(&mut self, key: &str) {
        self.locks.remove(key);
    }

    /// Replaces the file atomically and durably; an empty ledger's file is removed.
    pub fn save(&self) -> io::Result<()> {
        let dir = self.path.parent().expect("a ledger lives in a directory");
        if self.locks.is_empty() {
            match fs::remove_file(&self.path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                r => r?,
            }
            return File::open(dir)?.sync_all();
        }
        let file = LedgerFile { format: FORMAT, repository: self.repository.clone(), locks: self.locks.clone() };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let name = self.path.file_name().expect("a ledger has a name").to_string_lossy();
        let staged = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&staged)?;
            // The umask may have taken bits from the mode; readers need exactly 0644.
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&staged, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&staged);
        }
        written?;
        File::open(dir)?.sync_all()
    }
}

/// The ledger's file name for a repository: its path with every byte but letters, digits, `.`,
/// `_` and `-` escaped as `%XX`, so an operator sees whose ledger it is and two repositories
/// never share one.
fn file_name(repository: &Path) -> io::Result<String> {
    let mut name = String::new();
    for &b in repository.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(SUFFIX);
    if name.len() > 255 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("repository path {} is too long to name its ledger", repository.display()),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_date_is_only_ever_extended() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::for_repository(dir.path(), Path::new("/srv/r")).unwrap();
        assert_eq!(l.extend("data/ab/x", at(2000)), LockChange::New);
        assert_eq!(l.extend("data/ab/x", at(1000)), LockChange::Kept);
        assert_eq!(l.extend("data/ab/x", at(2000)), LockChange::Kept);
        assert_eq!(l.until("data/ab/x"), Some(at(2000)));
        assert_eq!(l.extend("data/ab/x", at(3000)), LockChange::Extended);
        assert_eq!(l.until("data/ab/x"), Some(at(3000)));
    }

    #[test]
    fn saved_ledger_reads_back_world_readable_and_leaves_no_staged_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::for_repository(dir.path(), Path::new("/srv/repos/r-1")).unwrap();
        l.extend("points/a.manifest", at(5000));
        l.extend("config", at(4000));
        l.save().unwrap();
        assert_eq!(l.path().file_name().unwrap(), "%2Fsrv%2Frepos%2Fr-1.ledger");
        assert_eq!(fs::metadata(l.path()).unwrap().mode() & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");

        let back = Ledger::for_repository(dir.path(), Path::new("/srv/repos/r-1")).unwrap();
        assert_eq!(back.until("points/a.manifest"), Some(at(5000)));
        assert_eq!(back.expired(at(4500)), vec!["config".to_string()]);
        assert_eq!(Ledger::list(dir.path()).unwrap(), vec![l.path().to_path_buf()]);
    }

    #[test]
    fn an_emptied_ledger_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::for_repository(dir.path(), Path::new("/r")).unwrap();
        l.extend("config", at(1));
        l.save().unwrap();
        l.remove("config");
        l.save().unwrap();
        assert!(Ledger::list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_ledger_is_an_error_not_an_empty_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::for_repository(dir.path(), Path::new("/r")).unwrap();
        fs::write(l.path(), b"{\"format\":1,\"repos").unwrap();
        let e = Ledger::for_repository(dir.path(), Path::new("/r")).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[test]
    fn distinct_repositories_get_distinct_ledgers() {
        let a = file_name(Path::new("/srv/a-b")).unwrap();
        let b = file_name(Path::new("/srv/a/b")).unwrap();
        let c = file_name(Path::new("/srv/a%2Fb")).unwrap();
        assert!(a != b && b != c && a != c, "{a} {b} {c}");
    }
}
