//! Reading a filesystem the kernel has mounted (see [`crate::mount`]) with the semantics of the
//! user-space reader: the same entries, pages and errors.
//!
//! Every path is resolved under the mount's root with `openat2(RESOLVE_IN_ROOT)`: symlinks on
//! the way are followed as the filesystem means them (an absolute target starts at the
//! filesystem's root, `..` stops there), as `ext4-view` does, and no symlink in the image can
//! lead out of the mount. `RESOLVE_NO_XDEV` keeps a lookup from crossing into anything mounted
//! on top, `RESOLVE_NO_MAGICLINKS` away from `/proc`-style links. The last component of an
//! entry looked at (`stat`, a listing's entries, an extraction's walk) is never followed.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::path::bad_name;
use crate::worker::{Backend, Batch, Loader};
use crate::{BrowseError, Entry, EntryKind, Page, Result};

/// How many files [`Backend::read`] keeps open, to go on where a read ended.
const OPEN_READS: usize = 4;

/// The reader for the filesystem mounted at `root` (a directory opened with `O_PATH`).
pub fn loader(root: OwnedFd, what: String) -> Loader {
    Box::new(move || {
        let root = root.try_clone().map_err(|e| BrowseError::Reader {
            what: what.clone(),
            context: format!(" (cannot reopen the mounted filesystem: {e})"),
        })?;
        Ok(Box::new(Mounted {
            root,
            what: what.clone(),
            next: 0,
            dirs: HashMap::new(),
            files: HashMap::new(),
            reads: VecDeque::new(),
        }) as Box<dyn crate::worker::Backend>)
    })
}

/// A directory being walked: its descriptor (entries are looked at relative to it) and its
/// stream of names.
struct OpenDir {
    fd: OwnedFd,
    dir: Dir,
}

struct Mounted {
    root: OwnedFd,
    what: String,
    next: u64,
    dirs: HashMap<u64, OpenDir>,
    files: HashMap<u64, File>,
    reads: VecDeque<(Vec<u8>, File)>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Why a lookup or read failed, in the words of the user-space reader's errors.
fn map_errno(what: &str, path: &str, e: Errno) -> BrowseError {
    let (what, path) = (what.to_string(), path.to_string());
    let bad = |reason: &str| BrowseError::BadPath { what: what.clone(), path: path.clone(), reason: reason.into() };
    match e {
        Errno::NOENT => BrowseError::NotFound { what, path },
        Errno::NOTDIR => bad("is not a directory (or passes through something that is not one)"),
        Errno::ISDIR => bad("is a directory, not a file"),
        Errno::LOOP => bad("has too many levels of symlinks (a symlink loop?)"),
        Errno::XDEV => bad("leads out of the filesystem"),
        Errno::NAMETOOLONG => bad("is too long"),
        // EFSCORRUPTED and EFSBADCRC, as XFS and btrfs report damaged metadata.
        Errno::UCLEAN | Errno::BADMSG => BrowseError::Corrupt {
            what,
            reason: format!("the kernel found damaged metadata reading {path:?} (its log says more)"),
        },
        e => BrowseError::Read { what, path, reason: format!("{} (the kernel's log may say more)", e) },
    }
}

fn kind_of(st: &Stat) -> Option<EntryKind> {
    Some(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        FileType::CharacterDevice => EntryKind::Char,
        FileType::BlockDevice => EntryKind::Block,
        FileType::Fifo => EntryKind::Fifo,
        FileType::Socket => EntryKind::Socket,
        FileType::Unknown => return None,
    })
}

/// The entry for `st`, named `name`. The field types of `struct stat` differ between
/// architectures, hence the casts.
#[allow(clippy::unnecessary_cast)]
fn entry_of(name: Vec<u8>, st: &Stat, raw_target: Option<Vec<u8>>, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Option<Entry> {
    let kind = kind_of(st)?;
    let device = matches!(kind, EntryKind::Char | EntryKind::Block);
    Some(Entry {
        name: lossy(&name),
        raw_name: name,
        kind,
        size: st.st_size as u64,
        mode: st.st_mode as u32 & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        mtime: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as u32,
        atime: st.st_atime as i64,
        atime_nsec: st.st_atime_nsec as u32,
        target: raw_target.as_deref().map(lossy),
        raw_target,
        inode: Some(st.st_ino as u64),
        nlink: Some(st.st_nlink as u32),
        rdev: device.then_some(st.st_rdev as u64),
        xattrs,
    })
}

/// The extended attributes of `name` in the directory `dir`, the entry itself (not what a
/// symlink points to). There is no `*xattrat` call before Linux 6.13, and a symlink cannot be
/// opened to use `flistxattr`: the entry is named through the directory's descriptor in `/proc`,
/// which resolves to that very directory, so no path is looked up again from the top.
fn xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    let path = OsStr::from_bytes(&p);
    let mut names = vec![0u8; 4096];
    let n = loop {
        let r = if name.is_empty() {
            rustix::fs::listxattr(path, &mut names)
        } else {
            rustix::fs::llistxattr(path, &mut names)
        };
        match r {
            Ok(n) => break n,
            Err(Errno::RANGE) if names.len() < 1 << 20 => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    names.truncate(n);
    let mut out = Vec::new();
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let mut value = vec![0u8; 4096];
        loop {
            let r = if name.is_empty() {
                rustix::fs::getxattr(path, OsStr::from_bytes(key), &mut value)
            } else {
                rustix::fs::lgetxattr(path, OsStr::from_bytes(key), &mut value)
            };
            match r {
                Ok(n) => {
                    value.truncate(n);
                    out.push((key.to_vec(), value));
                    break;
                }
                Err(Errno::RANGE) if value.len() < 1 << 24 => value.resize(value.len() * 4, 0),
                // Removed between the listing and the read: cannot happen on a read-only mount,
                // and is no reason to fail the entry.
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `path` (absolute and plain) relative to the root, `.` for the root itself.
fn relative(path: &[u8]) -> &OsStr {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    OsStr::from_bytes(if rel.is_empty() { b"." } else { rel })
}

/// `path` split into its parent and its last name (`None` for the root).
fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = path.iter().rposition(|&c| c == b'/')?;
    if i + 1 == path.len() {
        return None;
    }
    Some((if i == 0 { b"/" } else { &path[..i] }, &path[i + 1..]))
}

impl Mounted {
    fn handle(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Opens `path` under the root, following symlinks on the way (and at the end) inside the
    /// filesystem only.
    fn open(&self, path: &[u8], flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_XDEV | ResolveFlags::NO_MAGICLINKS;
        rustix::fs::openat2(&self.root, relative(path), flags | OFlags::CLOEXEC, Mode::empty(), resolve)
    }

    /// The entry `name` in the directory `dir` (the entry itself, never followed). With
    /// `full`, its extended attributes too, and a symlink whose target cannot be read is an
    /// error (an extraction must not restore it wrong); otherwise the target is left out.
    fn entry_at(&self, dir: BorrowedFd<'_>, name: &[u8], shown: &str, full: bool) -> Result<Option<Entry>> {
        let err = |e: Errno| map_errno(&self.what, shown, e);
        let st = rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
        let raw_target = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            match rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new()) {
                Ok(t) => Some(t.into_bytes()),
                Err(e) if full => return Err(err(e)),
                Err(_) => None,
            }
        } else {
            None
        };
        let xattrs = if full {
            xattrs_at(dir, name).map_err(|e| BrowseError::Read {
                what: self.what.clone(),
                path: shown.to_string(),
                reason: format!("cannot read its extended attributes: {e}"),
            })?
        } else {
            Vec::new()
        };
        Ok(entry_of(name.to_vec(), &st, raw_target, xattrs))
    }

    /// The regular file at `path`, open for reading. A fifo or device is refused before it is
    /// opened for reading (a fifo would block, and devices cannot be opened on a `nodev` mount).
    fn open_regular(&self, path: &[u8], shown: &str) -> Result<File> {
        let err = |e: Errno| map_errno(&self.what, shown, e);
        let probe = self.open(path, OFlags::PATH).map_err(err)?;
        let refuse = |st: &Stat| match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(()),
            FileType::Directory => Err(err(Errno::ISDIR)),
            _ => Err(BrowseError::BadPath {
                what: self.what.clone(),
                path: shown.to_string(),
                reason: "is not a regular file".into(),
            }),
        };
        refuse(&rustix::fs::fstat(&probe).map_err(err)?)?;
        let fd = self.open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY).map_err(err)?;
        refuse(&rustix::fs::fstat(&fd).map_err(err)?)?;
        Ok(File::from(fd))
    }

    fn read_at_most(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// A directory entry kept while the smallest names of a directory are picked.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name(Vec<u8>);

fn names(dir: &mut Dir) -> impl Iterator<Item = std::result::Result<Vec<u8>, Errno>> + '_ {
    std::iter::from_fn(move || dir.read()).filter_map(|r| match r {
        Ok(de) => {
            let n = de.file_name().to_bytes();
            (n != b"." && n != b"..").then(|| Ok(n.to_vec()))
        }
        Err(e) => Some(Err(e)),
    })
}

impl Backend for Mounted {
    fn stat(&mut self, path: &[u8], shown: &str) -> Result<Entry> {
        let err = |e: Errno| map_errno(&self.what, shown, e);
        let e = match split(path) {
            None => {
                let st = rustix::fs::fstat(&self.root).map_err(err)?;
                let xattrs = xattrs_at(self.root.as_fd(), b"").map_err(|e| BrowseError::Read {
                    what: self.what.clone(),
                    path: shown.to_string(),
                    reason: format!("cannot read its extended attributes: {e}"),
                })?;
                entry_of(b"/".to_vec(), &st, None, xattrs)
            }
            Some((parent, name)) => {
                let dir = self.open(parent, OFlags::PATH | OFlags::DIRECTORY).map_err(err)?;
                self.entry_at(dir.as_fd(), name, shown, true)?
            }
        };
        e.ok_or_else(|| BrowseError::Corrupt {
            what: self.what.clone(),
            reason: format!("{shown:?} is of no type Linux knows"),
        })
    }

    fn list(&mut self, path: &[u8], shown: &str, cursor: Option<Vec<u8>>, limit: usize) -> Result<Page> {
        let err = |e: Errno| map_errno(&self.what, shown, e);
        let fd = self.open(path, OFlags::RDONLY | OFlags::DIRECTORY).map_err(err)?;
        let mut dir = Dir::read_from(&fd).map_err(err)?;
        // The directory is read once, keeping only the `limit` smallest names after the cursor:
        // memory follows the page, not the directory.
        let mut page: BinaryHeap<Name> = BinaryHeap::with_capacity(limit + 1);
        let mut more = false;
        for name in names(&mut dir) {
            let name = name.map_err(err)?;
            if cursor.as_ref().is_some_and(|c| name <= *c) {
                continue;
            }
            if let Some(why) = bad_name(&name) {
                return Err(BrowseError::Corrupt { what: self.what.clone(), reason: format!("{shown:?} holds {why}") });
            }
            page.push(Name(name));
            if page.len() > limit {
                page.pop();
                more = true;
            }
        }
        let mut entries = Vec::with_capacity(page.len());
        for Name(name) in page.into_sorted_vec() {
            let child = format!("{}/{}", shown.trim_end_matches('/'), lossy(&name));
            // Gone between the listing and the look (cannot happen on a read-only mount) or of no
            // known type: left out rather than failing the page.
            match self.entry_at(fd.as_fd(), &name, &child, false) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) | Err(BrowseError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let next = if more { entries.last().map(|e| bulwark_repo::browse::encode_cursor(&e.raw_name)) } else { None };
        Ok(Page { entries, next })
    }

    fn read(&mut self, path: &[u8], shown: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = match self.reads.iter().position(|(p, _)| p == path) {
            Some(i) => self.reads.remove(i).expect("found").1,
            None => self.open_regular(path, shown)?,
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = Vec::new();
        if offset < size {
            buf = vec![0u8; len.min((size - offset).min(usize::MAX as u64) as usize)];
            let n = Self::read_at_most(&f, &mut buf, offset).map_err(|e| BrowseError::Read {
                what: self.what.clone(),
                path: shown.to_string(),
                reason: format!("{e} (the kernel's log may say more)"),
            })?;
            buf.truncate(n);
        }
        self.reads.push_front((path.to_vec(), f));
        self.reads.truncate(OPEN_READS);
        Ok(buf)
    }

    fn open_dir(&mut self, path: &[u8]) -> Result<u64> {
        let shown = lossy(path);
        let err = |e: Errno| map_errno(&self.what, &shown, e);
        let fd = self.open(path, OFlags::RDONLY | OFlags::DIRECTORY).map_err(err)?;
        let dir = Dir::read_from(&fd).map_err(err)?;
        let h = self.handle();
        self.dirs.insert(h, OpenDir { fd, dir });
        Ok(h)
    }

    fn next_entries(&mut self, h: u64, max: usize) -> Result<(Batch, bool)> {
        let Some(mut d) = self.dirs.remove(&h) else {
            return Ok((Vec::new(), true));
        };
        let mut out = Vec::new();
        let mut done = true;
        let mut pending = Vec::new();
        for name in names(&mut d.dir) {
            pending.push(name.map_err(|e| BrowseError::Corrupt {
                what: self.what.clone(),
                reason: format!("a directory's entries cannot be read: {e}"),
            })?);
            if pending.len() >= max {
                done = false;
                break;
            }
        }
        for name in pending {
            if let Some(why) = bad_name(&name) {
                out.push(Err((name, format!("not restored: {why}; the filesystem is damaged"))));
                continue;
            }
            let shown = lossy(&name);
            match self.entry_at(d.fd.as_fd(), &name, &shown, true) {
                Ok(Some(e)) => out.push(Ok(e)),
                Ok(None) => out.push(Err((name, "not restored: an entry of no type Linux knows".into()))),
                Err(e) => out.push(Err((name, e.to_string()))),
            }
        }
        if !done {
            self.dirs.insert(h, d);
        }
        Ok((out, done))
    }

    fn close_dir(&mut self, h: u64) {
        self.dirs.remove(&h);
    }

    fn open_file(&mut self, path: &[u8]) -> Result<u64> {
        let f = self.open_regular(path, &lossy(path))?;
        let h = self.handle();
        self.files.insert(h, f);
        Ok(h)
    }

    fn read_file(&mut self, h: u64, len: usize) -> Result<Vec<u8>> {
        let Some(f) = self.files.get_mut(&h) else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::with_capacity(len);
        if let Err(e) = f.by_ref().take(len as u64).read_to_end(&mut buf) {
            let at = f.stream_position().unwrap_or(0);
            return Err(BrowseError::Read {
                what: self.what.clone(),
                path: format!("offset {at}"),
                reason: format!("{e} (the kernel's log may say more)"),
            });
        }
        Ok(buf)
    }

    fn close_file(&mut self, h: u64) {
        self.files.remove(&h);
    }
}
