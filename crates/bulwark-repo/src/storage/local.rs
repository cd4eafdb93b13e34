//! A repository in a directory of a local filesystem: one file per object, written to a staged
//! name and renamed into place, made durable by one `syncfs` before each manifest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::XattrFlags;

use super::{Entry, Guard, StagedObject, Storage, SyncPoint};

struct LocalSyncPoint(File);

impl SyncPoint for LocalSyncPoint {
    fn sync(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.0)?;
        Ok(())
    }
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

    fn touch_now(&self, key: &str) -> io::Result<bool> {
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

    fn staged_name(&self, dest: &Path) -> PathBuf {
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        dest.with_file_name(format!("{STAGED_PREFIX}{name}-{}", unique_suffix()))
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
        if let Some(dir) = dest.parent() {
            // Keys name their directories (`data/3f/…`); a layout made by an older build, or
            // a prefix never written before, may lack one.
            if !dir.exists() {
                fs::create_dir_all(dir)?;
            }
        }
        let tmp = self.staged_name(&dest);
        let file = OpenOptions::new().write(true).create_new(true).mode(self.file_mode).open(&tmp)?;
        Ok(Box::new(LocalStaged { written: 0, file: Some(file), tmp, dest }))
    }

    fn read_range(&self, key: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let file = File::open(self.path(key))?;
        buf.clear();
        buf.resize(len as usize, 0);
        file.read_exact_at(buf, offset)
    }

    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<bool> {
        // Written whole under a staged name, then linked to the key: link(2) fails if the key
        // exists, so of two writers exactly one wins, and nobody sees a partial object.
        let dest = self.path(key);
        let tmp = self.staged_name(&dest);
        let mut file = OpenOptions::new().write(true).create_new(true).mode(self.file_mode).open(&tmp)?;
        let linked = file.write_all(data).and_then(|()| file.sync_all()).and_then(|()| fs::hard_link(&tmp, &dest));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = dest.parent() {
                    fsync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn stat(&self, key: &str) -> io::Result<Option<Entry>> {
        match fs::symlink_metadata(self.path(key)) {
            Ok(m) if m.is_file() => {
                Ok(Some(Entry { name: key.into(), size: m.len(), modified: m.modified()?, tag: None }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        list_dir(&self.path(prefix), "", &|n| !n.starts_with(STAGED_PREFIX), &mut out)?;
        Ok(out)
    }

    fn list_stale_staged(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        list_dir(&self.path(prefix), "", &|n| n.starts_with(STAGED_PREFIX), &mut out)?;
        Ok(out)
    }

    fn create_layout(&self, dirs: &[String]) -> io::Result<()> {
        for d in dirs {
            fs::create_dir_all(self.path(d))?;
        }
        fsync_dir(&self.root)
    }

    fn is_local(&self) -> bool {
        true
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
            let touched = self.touch_now(key);
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

/// Appends the files under `dir` (recursively) whose own names pass `keep`, named by their path
/// below the listed directory (`rel` is `dir`'s).
fn list_dir(dir: &Path, rel: &str, keep: &dyn Fn(&str) -> bool, out: &mut Vec<Entry>) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for de in rd {
        let de = de?;
        let Ok(name) = de.file_name().into_string() else { continue };
        let md = match de.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if md.is_dir() {
            list_dir(&de.path(), &format!("{rel}{name}/"), keep, out)?;
        } else if md.is_file() && keep(&name) {
            out.push(Entry { name: format!("{rel}{name}"), size: md.len(), modified: md.modified()?, tag: None });
        }
    }
    Ok(())
}
