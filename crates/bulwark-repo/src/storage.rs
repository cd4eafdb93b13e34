//! Where a repository's objects physically live.
//!
//! The repository sees its storage as a flat namespace of keys (`chunks/3f/3f2a…`,
//! `points/….json`) holding immutable objects, plus two coordination primitives (the chunk lock
//! and writer leases) that garbage collection needs to be safe beside running backups. The local
//! filesystem implements it now; an object store implements the same trait later.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::XattrFlags;

/// One object as a listing shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// An object being written; invisible under its key until [`StagedObject::commit`].
pub trait StagedObject: Write + Send {
    /// Makes the object visible under its key, atomically. Durability follows at the next
    /// [`Storage::sync`] (or at once with `durable`).
    fn commit(self: Box<Self>, durable: bool) -> io::Result<()>;
    /// Records the digest of the object's bytes with it (see [`Storage::stored_sum`]); a storage
    /// that keeps no such records ignores it.
    fn set_sum(&mut self, sum: &[u8; 32]) -> io::Result<()> {
        let _ = sum;
        Ok(())
    }
}

/// See [`Storage::sync_point`].
pub trait SyncPoint: Send {
    fn sync(&self) -> io::Result<()>;
}

struct LocalSyncPoint(File);

impl SyncPoint for LocalSyncPoint {
    fn sync(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.0)?;
        Ok(())
    }
}

/// Held while a guarded operation runs; released on drop.
pub trait Guard: Send {}

/// A running backup as its lease describes it.
#[derive(Debug, Clone)]
pub struct LiveWriter {
    pub id: String,
    pub started: SystemTime,
    pub parent: Option<String>,
}

/// A backup's announcement that it is writing: garbage collection spares every chunk touched
/// since the oldest live lease began.
pub trait WriterLease: Send {}

pub trait Storage: Send + Sync {
    /// A name for messages: a path or a URL.
    fn describe(&self) -> String;
    fn read(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Reads a whole object into `buf` (replacing its content, keeping its allocation).
    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        *buf = self.read(key)?;
        Ok(())
    }
    fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>>;
    /// Stages a new object; a committed object with the same key is replaced atomically.
    fn create(&self, key: &str) -> io::Result<Box<dyn StagedObject>>;
    /// Writes a whole object atomically.
    fn put(&self, key: &str, data: &[u8], durable: bool) -> io::Result<()> {
        let mut staged = self.create(key)?;
        staged.write_all(data)?;
        staged.commit(durable)
    }
    /// Marks an existing object as in use now (for the collector's grace rule); `false` if absent.
    fn touch(&self, key: &str) -> io::Result<bool>;
    fn exists(&self, key: &str) -> io::Result<bool>;
    /// The size of an object (0 when absent).
    fn size(&self, key: &str) -> io::Result<u64>;
    /// Objects directly under a prefix ending in `/`; staged objects are not listed.
    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>>;
    /// Staged objects under a prefix left behind by writers that died, with their age.
    fn list_stale_staged(&self, prefix: &str) -> io::Result<Vec<Entry>>;
    fn delete(&self, key: &str) -> io::Result<()>;
    /// The storage's own clock (the time a new object would be stamped with). Garbage collection
    /// compares object times with it, so the collector's clock never matters.
    fn now(&self) -> io::Result<SystemTime>;
    /// Makes everything committed so far durable.
    fn sync(&self) -> io::Result<()>;
    /// A handle whose `sync` reports every write-back error since the handle was taken, even
    /// one another process's sync has already seen: taken when a backup starts, synced before
    /// its manifest.
    fn sync_point(&self) -> io::Result<Box<dyn SyncPoint>>;
    /// [`Storage::touch`] under the shared side of the chunk lock, so a collector holding the
    /// exclusive side never sees the object old and then deletes it after it was touched.
    fn touch_shared(&self, key: &str) -> io::Result<bool>;
    /// Exclusive side of the chunk lock: held by the collector around "stat and delete".
    fn lock_chunks_exclusive(&self) -> io::Result<Box<dyn Guard>>;
    /// Announces a writer and the point it builds on; the lease ends when dropped or when its
    /// process dies.
    fn lease_writer(&self, id: &str, parent: Option<&str>) -> io::Result<Box<dyn WriterLease>>;
    /// The writers alive now.
    fn live_writers(&self) -> io::Result<Vec<LiveWriter>>;
    /// Leases left by writers that died (kill -9, a crash) before committing: garbage
    /// collection clears them with what they left. Until then they say that an index without a
    /// manifest is an interrupted backup's, not a point whose manifest was lost.
    fn dead_writers(&self) -> io::Result<Vec<LiveWriter>>;
    /// Records that the object at `key`, `size` bytes long, was checked whole (read, decoded,
    /// its digest matched). `Ok(false)` when this storage keeps no such marks.
    fn mark_checked(&self, key: &str, size: u64) -> io::Result<bool>;
    /// The size recorded by [`Storage::mark_checked`] for the object at `key`, if it has a mark.
    /// Rewriting an object drops its mark.
    fn checked_size(&self, key: &str) -> io::Result<Option<u64>>;
    /// The BLAKE3 digest of the object's bytes recorded when it was written
    /// ([`StagedObject::set_sum`]), if any: checking what is stored against it needs a read and
    /// a hash, no decoding.
    fn stored_sum(&self, key: &str) -> io::Result<Option<[u8; 32]>>;
    /// Moves a damaged object out of its key (kept beside it for inspection, as `KEY.damaged`):
    /// the key then reads as missing, so the next backup that has the data stores it again.
    fn quarantine(&self, key: &str) -> io::Result<()>;
    /// The point lock: shared while a writer pins its parent, exclusive while a point is
    /// deleted, so a point is never deleted from under a backup that builds on it.
    fn lock_points(&self, exclusive: bool) -> io::Result<Box<dyn Guard>>;
}

/// A repository in a directory of a local filesystem.
pub struct LocalStorage {
    root: PathBuf,
    /// Mode of new objects: owner-only, plus group read when the repository is shared with a
    /// group (its config is group-readable), so points written later stay readable to it.
    file_mode: u32,
}

const STAGED_PREFIX: &str = ".tmp-";

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let shared = fs::metadata(root.join("config")).is_ok_and(|m| m.mode() & 0o040 != 0);
        LocalStorage { root, file_mode: if shared { 0o640 } else { 0o600 } }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Creates the directory skeleton of a new repository.
    pub fn create_layout(&self, dirs: &[String]) -> io::Result<()> {
        for d in dirs {
            fs::create_dir_all(self.path(d))?;
        }
        fsync_dir(&self.root)
    }

    fn lock_file(&self) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path("locks/chunks"))
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unique_suffix() -> String {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).expect("the kernel's random source is available");
    format!("{}-{}", std::process::id(), hex::encode(r))
}

/// Objects at least this large start their writeback when committed.
const EARLY_WRITEBACK: u64 = 256 << 10;

struct LocalStaged {
    written: u64,
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Write for LocalStaged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.as_mut().expect("not committed").write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.as_mut().expect("not committed").write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StagedObject for LocalStaged {
    fn set_sum(&mut self, sum: &[u8; 32]) -> io::Result<()> {
        let file = self.file.as_ref().expect("not committed");
        match rustix::fs::fsetxattr(file, SUM_XATTR, sum, XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOTSUP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn commit(mut self: Box<Self>, durable: bool) -> io::Result<()> {
        let file = self.file.take().expect("committed once");
        if durable {
            file.sync_all()?;
        } else if self.written >= EARLY_WRITEBACK {
            // Start writeback now, so the sync before the manifest finds little left to do and
            // disk writes overlap the backup's work; the pages also leave the cache once clean.
            // Small objects are left to the kernel, which batches them better than one IO each.
            let _ = rustix::fs::fadvise(&file, 0, 0, rustix::fs::Advice::DontNeed);
        }
        drop(file);
        fs::rename(&self.tmp, &self.dest)?;
        if durable {
            if let Some(dir) = self.dest.parent() {
                fsync_dir(dir)?;
            }
        }
        Ok(())
    }
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        // Abandoned (error or panic before commit): leave nothing behind.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

struct FileGuard(#[allow(dead_code)] File);
impl Guard for FileGuard {}
impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

struct LocalLease {
    path: PathBuf,
    _file: File,
}
impl WriterLease for LocalLease {}
impl Drop for LocalLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(key))
    }

    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        File::open(self.path(key))?.read_to_end(buf).map(|_| ())
    }

    fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(self.path(key))?))
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn StagedObject>> {
        let dest = self.path(key);
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let tmp = dest.with_file_name(format!("{STAGED_PREFIX}{name}-{}", unique_suffix()));
        let file = OpenOptions::new().write(true).create_new(true).mode(self.file_mode).open(&tmp)?;
        Ok(Box::new(LocalStaged { written: 0, file: Some(file), tmp, dest }))
    }

    fn touch(&self, key: &str) -> io::Result<bool> {
        match rustix::fs::utimensat(
            rustix::fs::CWD,
            self.path(key),
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                last_modification: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
            },
            rustix::fs::AtFlags::empty(),
        ) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn exists(&self, key: &str) -> io::Result<bool> {
        self.path(key).try_exists()
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        match fs::symlink_metadata(self.path(key)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        list_dir(&self.path(prefix), |n| !n.starts_with(STAGED_PREFIX))
    }

    fn list_stale_staged(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        list_dir(&self.path(prefix), |n| n.starts_with(STAGED_PREFIX))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn now(&self) -> io::Result<SystemTime> {
        let probe = self.path(&format!("locks/{STAGED_PREFIX}clock-{}", unique_suffix()));
        let t = File::create(&probe).and_then(|f| f.metadata()).and_then(|m| m.modified());
        let _ = fs::remove_file(&probe);
        t
    }

    fn sync(&self) -> io::Result<()> {
        // One syncfs flushes every chunk written by this backup, far cheaper than an fsync each.
        rustix::fs::syncfs(File::open(&self.root)?)?;
        Ok(())
    }

    fn touch_shared(&self, key: &str) -> io::Result<bool> {
        // Each thread keeps its own open description of the lock file (flock belongs to the
        // description, so threads must not share one): three syscalls per chunk, not five.
        thread_local! {
            static LOCKS: std::cell::RefCell<Vec<(PathBuf, File)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let path = self.path("locks/chunks");
        LOCKS.with(|locks| {
            let mut locks = locks.borrow_mut();
            let at = match locks.iter().position(|(p, _)| *p == path) {
                Some(i) => i,
                None => {
                    locks.push((path, self.lock_file()?));
                    locks.len() - 1
                }
            };
            let f = &locks[at].1;
            f.lock_shared()?;
            let touched = self.touch(key);
            f.unlock()?;
            touched
        })
    }

    fn sync_point(&self) -> io::Result<Box<dyn SyncPoint>> {
        // syncfs reports errors recorded since this descriptor was opened.
        Ok(Box::new(LocalSyncPoint(File::open(&self.root)?)))
    }

    fn lock_chunks_exclusive(&self) -> io::Result<Box<dyn Guard>> {
        let f = self.lock_file()?;
        f.lock()?;
        Ok(Box::new(FileGuard(f)))
    }

    fn lock_points(&self, exclusive: bool) -> io::Result<Box<dyn Guard>> {
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path("locks/points"))?;
        if exclusive {
            f.lock()?;
        } else {
            f.lock_shared()?;
        }
        Ok(Box::new(FileGuard(f)))
    }

    fn lease_writer(&self, id: &str, parent: Option<&str>) -> io::Result<Box<dyn WriterLease>> {
        let path = self.path(&format!("locks/writers/{id}"));
        let staged = self.path(&format!("locks/{STAGED_PREFIX}{id}-{}", unique_suffix()));
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staged)?;
        // The flock lives as long as the process: a lease whose lock can be taken is a dead
        // writer's. It is taken before the lease becomes visible, so the collector never sees a
        // live lease unlocked.
        file.lock()?;
        writeln!(file, "pid {}", std::process::id())?;
        if let Some(p) = parent {
            writeln!(file, "parent {p}")?;
        }
        fs::rename(&staged, &path)?;
        Ok(Box::new(LocalLease { path, _file: file }))
    }

    fn live_writers(&self) -> io::Result<Vec<LiveWriter>> {
        Ok(self.writers()?.into_iter().filter_map(|(w, alive)| alive.then_some(w)).collect())
    }

    fn dead_writers(&self) -> io::Result<Vec<LiveWriter>> {
        Ok(self.writers()?.into_iter().filter_map(|(w, alive)| (!alive).then_some(w)).collect())
    }

    fn mark_checked(&self, key: &str, size: u64) -> io::Result<bool> {
        match rustix::fs::setxattr(self.path(key), CHECKED_XATTR, size.to_string().as_bytes(), XattrFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOTSUP) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn checked_size(&self, key: &str) -> io::Result<Option<u64>> {
        let mut buf = [0u8; 24];
        match rustix::fs::getxattr(self.path(key), CHECKED_XATTR, &mut buf) {
            Ok(n) => Ok(std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.parse().ok())),
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP | rustix::io::Errno::RANGE) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn stored_sum(&self, key: &str) -> io::Result<Option<[u8; 32]>> {
        let mut buf = [0u8; 32];
        match rustix::fs::getxattr(self.path(key), SUM_XATTR, &mut buf) {
            Ok(32) => Ok(Some(buf)),
            Ok(_) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP | rustix::io::Errno::RANGE) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn quarantine(&self, key: &str) -> io::Result<()> {
        let from = self.path(key);
        let mut to = from.clone().into_os_string();
        to.push(".damaged");
        fs::rename(&from, &to)?;
        if let Some(dir) = from.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    }
}

/// The extended attribute that marks a chunk as checked whole; its value is the size checked.
const CHECKED_XATTR: &str = "user.bulwark.checked";
/// The extended attribute holding the BLAKE3 digest of a chunk's stored bytes, set before the
/// chunk becomes visible.
const SUM_XATTR: &str = "user.bulwark.sum";

impl LocalStorage {
    /// Every lease, and whether its writer is alive (holds the lease's lock).
    fn writers(&self) -> io::Result<Vec<(LiveWriter, bool)>> {
        let mut out = Vec::new();
        for e in list_dir(&self.path("locks/writers/"), |_| true)? {
            let path = self.path(&format!("locks/writers/{}", e.name));
            let Ok(mut f) = File::open(&path) else { continue };
            let alive = match f.try_lock() {
                Ok(()) => {
                    let _ = f.unlock();
                    false
                }
                Err(_) => true,
            };
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            let parent = text.lines().find_map(|l| l.strip_prefix("parent ")).map(String::from);
            out.push((LiveWriter { id: e.name, started: e.modified, parent }, alive));
        }
        Ok(out)
    }
}

fn list_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> io::Result<Vec<Entry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de?;
        let Ok(name) = de.file_name().into_string() else { continue };
        if !keep(&name) {
            continue;
        }
        let md = match de.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if md.is_file() {
            out.push(Entry { name, size: md.len(), modified: md.modified()? });
        }
    }
    Ok(out)
}
