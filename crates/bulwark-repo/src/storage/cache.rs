//! A local cache in front of a remote storage, on the machine that reads or writes it.
//!
//! Two things are worth keeping near: objects that never change once written (the pack index
//! objects, read in full by every process that opens the repository), and the marks that say a
//! pack was checked whole (without them every backup would download every pack it reuses, to
//! check it again). Everything else goes straight through. The cache is only ever a copy: a
//! cache that is lost, stale or damaged costs requests, never correctness — cached objects are
//! authenticated like fetched ones, and a mark names the object's size and ETag, checked with a
//! HEAD before it is trusted.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Entry, StagedObject, Storage, SyncPoint};

/// Keys under these prefixes are never rewritten under the same name.
const IMMUTABLE: &[&str] = &["index/"];

pub struct CachedStorage {
    inner: Arc<dyn Storage>,
    dir: PathBuf,
}

/// Where caches live: `BULWARK_CACHE_DIR`, else `$XDG_CACHE_HOME/bulwark`, else
/// `~/.cache/bulwark`, else (no home: a system service) `/var/cache/bulwark`.
pub fn default_cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("BULWARK_CACHE_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&d).join("bulwark");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Path::new(&h).join(".cache/bulwark"),
        None => "/var/cache/bulwark".into(),
    }
}

impl CachedStorage {
    /// A cache for the repository with id `repo_id` under `root`. When the directory cannot be
    /// made, the storage is used uncached (said once on stderr).
    pub fn wrap(inner: Arc<dyn Storage>, root: &Path, repo_id: &str) -> Arc<dyn Storage> {
        let dir = root.join(repo_id);
        match fs::create_dir_all(dir.join("objects")).and_then(|()| fs::create_dir_all(dir.join("checked"))) {
            Ok(()) => Arc::new(CachedStorage { inner, dir }),
            Err(e) => {
                eprintln!(
                    "note: no local cache for {} ({}: {e}); every index is fetched",
                    inner.describe(),
                    dir.display()
                );
                inner
            }
        }
    }

    fn cached_path(&self, key: &str) -> Option<PathBuf> {
        IMMUTABLE.iter().any(|p| key.starts_with(p)).then(|| self.dir.join("objects").join(key.replace('/', "%")))
    }

    fn mark_path(&self, key: &str) -> PathBuf {
        self.dir.join("checked").join(key.replace('/', "%"))
    }

    /// Writes a cache file whole or not at all.
    fn save(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path)).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Cached copies of objects that are no longer listed (an index rewritten by a collection).
    fn prune(&self, prefix: &str, listed: &[Entry]) {
        let Ok(rd) = fs::read_dir(self.dir.join("objects")) else { return };
        let enc = prefix.replace('/', "%");
        let names: std::collections::HashSet<String> = listed.iter().map(|e| e.name.replace('/', "%")).collect();
        for de in rd.flatten() {
            let name = de.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&enc) {
                if !names.contains(rest) {
                    let _ = fs::remove_file(de.path());
                }
            }
        }
    }
}

impl Storage for CachedStorage {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        let Some(path) = self.cached_path(key) else { return self.inner.read_into(key, buf) };
        if let Ok(mut f) = fs::File::open(&path) {
            buf.clear();
            if f.read_to_end(buf).is_ok() {
                return Ok(());
            }
        }
        self.inner.read_into(key, buf)?;
        Self::save(&path, buf);
        Ok(())
    }

    fn read_range(&self, key: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        self.inner.read_range(key, offset, len, buf)
    }

    fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        self.inner.open_read(key)
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn StagedObject>> {
        let _ = fs::remove_file(self.mark_path(key));
        self.inner.create(key)
    }

    fn put(&self, key: &str, data: &[u8], durable: bool) -> io::Result<()> {
        let _ = fs::remove_file(self.mark_path(key));
        self.inner.put(key, data, durable)?;
        if let Some(path) = self.cached_path(key) {
            Self::save(&path, data);
        }
        Ok(())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<bool> {
        self.inner.put_new(key, data)
    }

    fn stat(&self, key: &str) -> io::Result<Option<Entry>> {
        self.inner.stat(key)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let listed = self.inner.list(prefix)?;
        if IMMUTABLE.contains(&prefix) {
            self.prune(prefix, &listed);
        }
        Ok(listed)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.inner.delete(key)?;
        if let Some(path) = self.cached_path(key) {
            let _ = fs::remove_file(path);
        }
        let _ = fs::remove_file(self.mark_path(key));
        Ok(())
    }

    fn now(&self) -> io::Result<SystemTime> {
        self.inner.now()
    }

    fn tidy_versions(&self) -> io::Result<super::VersionsTidied> {
        self.inner.tidy_versions()
    }

    fn abort_stale_uploads(&self, before: SystemTime) -> io::Result<u64> {
        self.inner.abort_stale_uploads(before)
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn sync_point(&self) -> io::Result<Box<dyn SyncPoint>> {
        self.inner.sync_point()
    }

    fn quarantine(&self, key: &str) -> io::Result<()> {
        let _ = fs::remove_file(self.mark_path(key));
        self.inner.quarantine(key)
    }

    fn mark_checked(&self, key: &str, size: u64) -> io::Result<bool> {
        // The object's time goes with the mark: an object rewritten under the same key (by
        // anyone, to the same size) has another, and its mark no longer holds.
        let Some(meta) = self.inner.stat(key)? else { return Ok(false) };
        Self::save(&self.mark_path(key), format!("{size} {}", stamp(&meta)).as_bytes());
        Ok(true)
    }

    fn checked_size(&self, key: &str) -> io::Result<Option<u64>> {
        let Ok(text) = fs::read_to_string(self.mark_path(key)) else { return Ok(None) };
        let mut words = text.split_whitespace();
        let (Some(Ok(size)), Some(at)) = (words.next().map(str::parse::<u64>), words.next()) else { return Ok(None) };
        match self.inner.stat(key)? {
            Some(meta) if meta.size == size && stamp(&meta) == at => Ok(Some(size)),
            _ => Ok(None),
        }
    }

    fn stored_sum(&self, key: &str) -> io::Result<Option<[u8; 32]>> {
        self.inner.stored_sum(key)
    }
}

/// What identifies one version of an object: its tag (ETag), else its time.
fn stamp(e: &Entry) -> String {
    match &e.tag {
        Some(t) => format!("tag:{}", t.replace(char::is_whitespace, "")),
        None => e.modified.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn index_objects_are_served_from_the_cache_and_dropped_when_the_storage_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Storage> = Arc::new(MemoryStorage::named("cache-1"));
        let cached = CachedStorage::wrap(inner.clone(), dir.path(), "repo");
        cached.put("index/a", b"one", false).unwrap();
        inner.put("index/b", b"two", false).unwrap();
        assert_eq!(cached.read("index/b").unwrap(), b"two");
        // Served locally now, even if the storage's copy changed under it (it never does).
        inner.put("index/b", b"TWO", false).unwrap();
        assert_eq!(cached.read("index/b").unwrap(), b"two");
        inner.delete("index/a").unwrap();
        assert_eq!(cached.list("index/").unwrap().len(), 1);
        assert!(!dir.path().join("repo/objects/index%a").exists());
        // Other objects are never cached; marks belong to the object's size.
        inner.put("points/p.manifest", b"m1", false).unwrap();
        assert_eq!(cached.read("points/p.manifest").unwrap(), b"m1");
        inner.put("points/p.manifest", b"m2", false).unwrap();
        assert_eq!(cached.read("points/p.manifest").unwrap(), b"m2");
        inner.put("data/ab/abc", b"0123456789", false).unwrap();
        assert!(cached.mark_checked("data/ab/abc", 10).unwrap());
        assert_eq!(cached.checked_size("data/ab/abc").unwrap(), Some(10));
        // Rewritten behind the cache's back, to the same size: the mark no longer holds.
        std::thread::sleep(std::time::Duration::from_millis(5));
        inner.put("data/ab/abc", b"0123456780", false).unwrap();
        assert_eq!(cached.checked_size("data/ab/abc").unwrap(), None);
        cached.delete("data/ab/abc").unwrap();
        assert_eq!(cached.checked_size("data/ab/abc").unwrap(), None);
    }
}
