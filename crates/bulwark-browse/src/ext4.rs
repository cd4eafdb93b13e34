//! The user-space reader of ext2, ext3 and ext4 (`ext4-view`). Its `Ext4` shares its state
//! through `Rc` and `RefCell`, so it cannot cross threads: it is loaded on the browser's reader
//! thread (see [`crate::worker`]) and every request runs there.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bulwark_repo::Image;
use ext4_view::{DirEntry, Ext4, Ext4Error, Ext4Read, FileType, Metadata, ReadDir};

use crate::path::bad_name;
use crate::worker::{Backend, Batch};
use crate::{BrowseError, Entry, EntryKind, Page, Result};

/// The image as `ext4-view` reads it.
struct ImageReader(Arc<dyn Image>);

impl Ext4Read for ImageReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.read_at(dst, start).map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("{e} (the filesystem claims more blocks than its volume has)").into()
            } else {
                Box::new(e)
            };
            e
        })
    }
}

/// What loads the filesystem on the reader thread, again after a request panicked (its caches
/// may be half-updated then).
pub fn loader(img: Arc<dyn Image>, what: String) -> impl FnMut() -> Result<Box<dyn Backend>> + Send + 'static {
    move || match catch_unwind(AssertUnwindSafe(|| Ext4::load(Box::new(ImageReader(img.clone()))))) {
        Ok(Ok(fs)) => Ok(Box::new(State::new(fs, what.clone())) as Box<dyn Backend>),
        Ok(Err(e)) => Err(map_err(&what, "/", e)),
        Err(_) => Err(BrowseError::Reader { what: what.clone(), context: " while loading it".into() }),
    }
}

/// Why a lookup failed, in the browser's words.
pub fn map_err(what: &str, path: &str, e: Ext4Error) -> BrowseError {
    let (what, path) = (what.to_string(), path.to_string());
    let bad = |reason: &str| BrowseError::BadPath { what: what.clone(), path: path.clone(), reason: reason.into() };
    match e {
        Ext4Error::NotFound => BrowseError::NotFound { what, path },
        Ext4Error::NotADirectory => bad("is not a directory (or passes through something that is not one)"),
        Ext4Error::IsADirectory => bad("is a directory, not a file"),
        Ext4Error::IsASpecialFile => bad("is not a regular file"),
        Ext4Error::Encrypted => bad("is encrypted (fscrypt): it cannot be read without its key"),
        Ext4Error::TooManySymlinks => bad("has too many levels of symlinks (a symlink loop?)"),
        Ext4Error::Io(inner) => BrowseError::Read { what, path, reason: inner.to_string() },
        Ext4Error::Incompatible(i) => BrowseError::Unsupported {
            what,
            found: format!("an ext4 filesystem with features this reader does not support ({i})"),
        },
        Ext4Error::Corrupt(c) => BrowseError::Corrupt { what, reason: format!("{c} (reading {path:?})") },
        other => bad(&other.to_string()),
    }
}

fn kind(ft: FileType) -> EntryKind {
    match ft {
        FileType::Regular => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        FileType::CharacterDevice => EntryKind::Char,
        FileType::BlockDevice => EntryKind::Block,
        FileType::Fifo => EntryKind::Fifo,
        FileType::Socket => EntryKind::Socket,
    }
}

/// The inode number of an open file. `ext4-view` 1.0 has no accessor for it; its `File`'s
/// debug form is the one place it shows (a test guards the format).
fn inode_of(f: &ext4_view::File) -> Option<u64> {
    let s = format!("{f:?}");
    let rest = s.split_once("inode: ")?.1;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory entry kept while the smallest names of a directory are picked.
struct ByName(Vec<u8>, DirEntry);

impl PartialEq for ByName {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for ByName {}
impl PartialOrd for ByName {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ByName {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}

/// How many files [`Browser::read`](crate::Browser::read) keeps open, to go on where a read ended.
const OPEN_READS: usize = 4;

pub struct State {
    fs: Ext4,
    what: String,
    next: u64,
    dirs: HashMap<u64, ReadDir>,
    files: HashMap<u64, ext4_view::File>,
    reads: VecDeque<(Vec<u8>, ext4_view::File)>,
}

impl State {
    fn new(fs: Ext4, what: String) -> State {
        State { fs, what, next: 0, dirs: HashMap::new(), files: HashMap::new(), reads: VecDeque::new() }
    }

    fn err(&self, path: &[u8], e: Ext4Error) -> BrowseError {
        map_err(&self.what, &lossy(path), e)
    }

    /// The entry for `md`, found at `path` under `name`. With `strict`, a symlink whose target
    /// cannot be read is an error; otherwise the target is left out (a listing still shows the
    /// rest).
    fn entry(&self, name: Vec<u8>, path: &[u8], md: &Metadata, strict: bool) -> Result<Entry> {
        let kind = kind(md.file_type());
        let raw_target = if kind == EntryKind::Symlink {
            match self.fs.read_link(path) {
                Ok(t) => Some(t.as_ref().to_vec()),
                Err(e) if strict => return Err(self.err(path, e)),
                Err(_) => None,
            }
        } else {
            None
        };
        let inode = if kind == EntryKind::File { self.fs.open(path).ok().as_ref().and_then(inode_of) } else { None };
        let (m, a) = (md.modified(), md.accessed());
        Ok(Entry {
            name: lossy(&name),
            raw_name: name,
            kind,
            size: md.len(),
            mode: md.mode() as u32,
            uid: md.uid(),
            gid: md.gid(),
            mtime: m.seconds(),
            mtime_nsec: m.nanoseconds(),
            atime: a.seconds(),
            atime_nsec: a.nanoseconds(),
            target: raw_target.as_deref().map(lossy),
            raw_target,
            inode,
            nlink: None,
            rdev: None,
            xattrs: Vec::new(),
        })
    }

    fn handle(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl Backend for State {
    fn stat(&mut self, path: &[u8], shown: &str) -> Result<Entry> {
        let md = self.fs.symlink_metadata(path).map_err(|e| map_err(&self.what, shown, e))?;
        let name = match path.iter().rposition(|&c| c == b'/') {
            Some(i) if i + 1 < path.len() => path[i + 1..].to_vec(),
            _ => b"/".to_vec(),
        };
        self.entry(name, path, &md, true)
    }

    fn list(&mut self, path: &[u8], shown: &str, cursor: Option<Vec<u8>>, limit: usize) -> Result<Page> {
        let err = |st: &State, e| map_err(&st.what, shown, e);
        let rd = self.fs.read_dir(path).map_err(|e| err(self, e))?;
        // The directory is read once, keeping only the `limit` smallest names after the cursor:
        // memory follows the page, not the directory.
        let mut page: BinaryHeap<ByName> = BinaryHeap::with_capacity(limit + 1);
        let mut more = false;
        for de in rd {
            let de = de.map_err(|e| err(self, e))?;
            let name = de.file_name().as_ref().to_vec();
            if name == b"." || name == b".." || cursor.as_ref().is_some_and(|c| name <= *c) {
                continue;
            }
            if let Some(why) = bad_name(&name) {
                return Err(BrowseError::Corrupt { what: self.what.clone(), reason: format!("{shown:?} holds {why}") });
            }
            page.push(ByName(name, de));
            if page.len() > limit {
                page.pop();
                more = true;
            }
        }
        let mut entries = Vec::with_capacity(page.len());
        for ByName(name, de) in page.into_sorted_vec() {
            let child = de.path();
            let md = de.metadata().map_err(|e| self.err(child.as_ref(), e))?;
            entries.push(self.entry(name, child.as_ref(), &md, false)?);
        }
        let next = if more { entries.last().map(|e| bulwark_repo::browse::encode_cursor(&e.raw_name)) } else { None };
        Ok(Page { entries, next })
    }

    fn read(&mut self, path: &[u8], shown: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let at = self.reads.iter().position(|(p, f)| p == path && f.position() == offset);
        let mut f = match at {
            Some(i) => self.reads.remove(i).expect("found").1,
            None => self.fs.open(path).map_err(|e| map_err(&self.what, shown, e))?,
        };
        let size = f.metadata().len();
        let mut buf = Vec::new();
        if offset < size {
            if f.position() != offset {
                f.seek_to(offset).map_err(|e| map_err(&self.what, shown, e))?;
            }
            buf = vec![0u8; len.min((size - offset).min(usize::MAX as u64) as usize)];
            let mut done = 0;
            while done < buf.len() {
                match f.read_bytes(&mut buf[done..]).map_err(|e| map_err(&self.what, shown, e))? {
                    0 => break,
                    n => done += n,
                }
            }
            buf.truncate(done);
        }
        self.reads.push_front((path.to_vec(), f));
        self.reads.truncate(OPEN_READS);
        Ok(buf)
    }

    fn open_dir(&mut self, path: &[u8]) -> Result<u64> {
        let rd = self.fs.read_dir(path).map_err(|e| self.err(path, e))?;
        let h = self.handle();
        self.dirs.insert(h, rd);
        Ok(h)
    }

    /// Up to `max` more entries of directory `h`, in the order the directory holds them, and
    /// whether it is done; an error once the directory itself cannot be read further.
    fn next_entries(&mut self, h: u64, max: usize) -> Result<(Batch, bool)> {
        let Some(mut rd) = self.dirs.remove(&h) else {
            return Ok((Vec::new(), true));
        };
        let mut out = Vec::new();
        let mut done = true;
        for de in rd.by_ref() {
            let de = de.map_err(|e| BrowseError::Corrupt { what: self.what.clone(), reason: e.to_string() })?;
            let name = de.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            if let Some(why) = bad_name(&name) {
                out.push(Err((name, format!("not restored: {why}; the filesystem is damaged"))));
            } else {
                let path = de.path();
                let e = de
                    .metadata()
                    .map_err(|e| self.err(path.as_ref(), e))
                    .and_then(|md| self.entry(name.clone(), path.as_ref(), &md, true));
                out.push(e.map_err(|e| (name, e.to_string())));
            }
            if out.len() >= max {
                done = false;
                break;
            }
        }
        if !done {
            self.dirs.insert(h, rd);
        }
        Ok((out, done))
    }

    fn close_dir(&mut self, h: u64) {
        self.dirs.remove(&h);
    }

    fn open_file(&mut self, path: &[u8]) -> Result<u64> {
        let f = self.fs.open(path).map_err(|e| self.err(path, e))?;
        let h = self.handle();
        self.files.insert(h, f);
        Ok(h)
    }

    /// The next up to `len` bytes of open file `h` (fewer only at its end).
    fn read_file(&mut self, h: u64, len: usize) -> Result<Vec<u8>> {
        let Some(f) = self.files.get_mut(&h) else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match f.read_bytes(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    let at = f.position();
                    return Err(match map_err(&self.what, "", e) {
                        BrowseError::Read { reason, .. } => {
                            BrowseError::Read { what: self.what.clone(), path: format!("offset {at}"), reason }
                        }
                        other => other,
                    });
                }
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn close_file(&mut self, h: u64) {
        self.files.remove(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inode number comes from `File`'s debug form: a new `ext4-view` that changes it must
    /// fail here, not lose hard links quietly.
    #[test]
    fn the_inode_number_of_a_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let img = dir.path().join("img");
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("4M")
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4 runs (package e2fsprogs)");
        let fs = Ext4::load(Box::new(std::fs::read(&img).unwrap())).unwrap();
        let f = fs.open("/f").unwrap();
        let ino = inode_of(&f).expect("an inode number");
        let out = std::process::Command::new("debugfs").args(["-R", "stat /f"]).arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(&format!("Inode: {ino} ")), "{text}");
    }
}
