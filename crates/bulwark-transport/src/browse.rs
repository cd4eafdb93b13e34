//! Points opened on the repository host for browsing, downloads and instant recovery.
//!
//! An operator browsing a point asks for one directory at a time, seconds apart; opening the
//! repository (a key derivation), authenticating the point's index and loading its filesystem
//! each time would make every click cost a second. Opened repositories and points are kept
//! while in use and dropped after [`IDLE`] without a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_repo::browse::{FileEntry, Page};
use bulwark_repo::image::Image;
use bulwark_repo::storage::Location;
use bulwark_repo::volumes::{self, Volume};
use bulwark_repo::{Manifest, PointImage, PointKind, RepoError, Repository};

/// How long an opened point stays open without a request.
pub const IDLE: Duration = Duration::from_secs(600);
/// At most this many points open at once (each holds a decoded-block cache).
const MAX_OPEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(String),
}

impl ViewError {
    pub fn status(&self) -> tonic::Status {
        match self {
            ViewError::Repo(e @ RepoError::NoSuchPoint { .. }) => tonic::Status::not_found(e.to_string()),
            ViewError::Repo(e) if e.is_permanent() => tonic::Status::failed_precondition(e.to_string()),
            ViewError::Repo(e) => tonic::Status::unavailable(e.to_string()),
            ViewError::NotFound(m) => tonic::Status::not_found(m),
            ViewError::Invalid(m) => tonic::Status::invalid_argument(m),
            ViewError::Unsupported(m) => tonic::Status::unimplemented(m),
            ViewError::Io(m) => tonic::Status::internal(m),
        }
    }
}

fn io_err(e: std::io::Error) -> ViewError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ViewError::NotFound(e.to_string()),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => ViewError::Invalid(e.to_string()),
        _ => ViewError::Io(e.to_string()),
    }
}

/// One opened point.
pub enum View {
    Files {
        repo: Box<Repository>,
        manifest: Manifest,
    },
    Volume {
        manifest: Manifest,
        image: Arc<dyn Image>,
        /// The filesystems of its volumes opened so far, by volume number.
        filesystems: Mutex<HashMap<u32, Arc<bulwark_browse::Browser>>>,
        /// Whether filesystems the kernel reads may be mounted (see [`PointViews::new`]).
        kernel_mounts: bool,
    },
}

impl View {
    pub fn manifest(&self) -> &Manifest {
        match self {
            View::Files { manifest, .. } | View::Volume { manifest, .. } => manifest,
        }
    }
}

struct Entry<T> {
    value: T,
    used: Instant,
}

type Cache<K, T> = Mutex<HashMap<K, Entry<T>>>;

pub struct PointViews {
    repos: Cache<(String, [u8; 32]), Repository>,
    views: Cache<(String, String), Arc<View>>,
    kernel_mounts: bool,
}

fn take<K: std::hash::Hash + Eq + Clone, T: Clone>(map: &Cache<K, T>, key: &K) -> Option<T> {
    let mut m = map.lock().expect("no panics while held");
    let now = Instant::now();
    m.retain(|_, e| now.duration_since(e.used) < IDLE);
    m.get_mut(key).map(|e| {
        e.used = now;
        e.value.clone()
    })
}

fn keep<K: std::hash::Hash + Eq + Clone, T>(map: &Cache<K, T>, key: K, value: T) {
    let mut m = map.lock().expect("no panics while held");
    if m.len() >= MAX_OPEN {
        if let Some(oldest) = m.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) {
            m.remove(&oldest);
        }
    }
    m.insert(key, Entry { value, used: Instant::now() });
}

impl PointViews {
    /// `kernel_mounts`: whether XFS, btrfs and other filesystems only the kernel reads may be
    /// mounted (as root) to read their files; a node may keep other computers' images away from
    /// its kernel.
    pub fn new(kernel_mounts: bool) -> Self {
        PointViews { repos: Mutex::default(), views: Mutex::default(), kernel_mounts }
    }

    /// Closes what has not been used for [`IDLE`] (a point's filesystem may be a kernel mount:
    /// it goes now, not at the next request).
    pub fn sweep(&self) {
        let now = Instant::now();
        let stale = |used: Instant| now.duration_since(used) >= IDLE;
        let old: Vec<Arc<View>> = {
            let mut views = self.views.lock().expect("no panics while held");
            let keys: Vec<_> = views.iter().filter(|(_, e)| stale(e.used)).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| views.remove(k)).map(|e| e.value).collect()
        };
        self.repos.lock().expect("no panics while held").retain(|_, e| !stale(e.used));
        // Dropped outside the lock: unmounting may take a moment.
        drop(old);
    }

    /// The repository at `path`, opened with `password` (kept open while used).
    fn repository(&self, path: &Location, password: Option<&[u8]>) -> Result<Repository, ViewError> {
        // Keyed by a digest, so the password itself is not kept as a map key.
        let key = (path.to_string(), *blake3::hash(password.unwrap_or_default()).as_bytes());
        if let Some(r) = take(&self.repos, &key) {
            return Ok(r);
        }
        let repo = Repository::open(path, password)?;
        keep(&self.repos, key, repo.clone());
        Ok(repo)
    }

    /// Point `point` of the repository at `path`.
    pub fn open(&self, path: &Location, password: Option<&[u8]>, point: &str) -> Result<Arc<View>, ViewError> {
        let repo = self.repository(path, password)?;
        let key = (path.to_string(), point.to_string());
        if let Some(v) = take(&self.views, &key) {
            return Ok(v);
        }
        let manifest = repo.resolve(point)?;
        let view = Arc::new(match manifest.kind {
            PointKind::Files => View::Files { repo: Box::new(repo), manifest },
            PointKind::Volume => {
                let image: Arc<dyn Image> = Arc::new(PointImage::open(&repo, &manifest)?);
                View::Volume { manifest, image, filesystems: Mutex::default(), kernel_mounts: self.kernel_mounts }
            }
        });
        keep(&self.views, key, view.clone());
        Ok(view)
    }
}

/// The volumes of a point: a file-level point has none.
pub fn volumes_of(view: &View) -> Result<Vec<Volume>, ViewError> {
    match view {
        View::Files { manifest, .. } => {
            Err(ViewError::Invalid(format!("point {} is a file-level point: it has files, not volumes", manifest.id)))
        }
        View::Volume { image, .. } => volumes::volumes(image).map_err(io_err),
    }
}

/// One page of directory `path`.
pub fn list(view: &View, volume: u32, path: &str, cursor: Option<&str>, limit: usize) -> Result<Page, ViewError> {
    match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            Ok(bulwark_repo::browse::list_dir(repo, manifest, path, cursor, limit)?)
        }
        View::Volume { image, filesystems, kernel_mounts, .. } => {
            let page = filesystem(image, filesystems, *kernel_mounts, volume)?
                .list(path, cursor, limit)
                .map_err(browse_err)?;
            Ok(Page { entries: page.entries.into_iter().map(entry).collect(), next: page.next })
        }
    }
}

/// Metadata of the entry at `path`.
pub fn stat(view: &View, volume: u32, path: &str) -> Result<FileEntry, ViewError> {
    match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            Ok(bulwark_repo::browse::stat(repo, manifest, path)?)
        }
        View::Volume { image, filesystems, kernel_mounts, .. } => {
            Ok(entry(filesystem(image, filesystems, *kernel_mounts, volume)?.stat(path).map_err(browse_err)?))
        }
    }
}

/// A regular file of a point, opened for reading.
pub enum PointFile {
    Files(Box<bulwark_repo::browse::FileReader>),
    Volume { fs: Arc<bulwark_browse::Browser>, path: String, size: u64 },
}

impl PointFile {
    pub fn size(&self) -> u64 {
        match self {
            PointFile::Files(f) => f.size(),
            PointFile::Volume { size, .. } => *size,
        }
    }

    /// Up to `len` bytes from `offset` (fewer only at the end of the file).
    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ViewError> {
        match self {
            PointFile::Files(f) => Ok(f.read_at(offset, len)?),
            PointFile::Volume { fs, path, .. } => {
                let mut out = Vec::with_capacity(len.min(bulwark_browse::MAX_READ));
                while out.len() < len {
                    let piece = fs.read(path, offset + out.len() as u64, len - out.len()).map_err(browse_err)?;
                    if piece.is_empty() {
                        break;
                    }
                    out.extend_from_slice(&piece);
                }
                Ok(out)
            }
        }
    }
}

/// The regular file at `path` of a point, opened once for the reads of a download.
pub fn open_file(view: &View, volume: u32, path: &str) -> Result<PointFile, ViewError> {
    match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            Ok(PointFile::Files(Box::new(bulwark_repo::browse::open_file(repo, manifest, path)?)))
        }
        View::Volume { image, filesystems, kernel_mounts, .. } => {
            let fs = filesystem(image, filesystems, *kernel_mounts, volume)?;
            let e = fs.stat(path).map_err(browse_err)?;
            if e.kind != bulwark_browse::EntryKind::File {
                return Err(ViewError::Invalid(format!("{}: {path:?} is not a regular file", fs.describe())));
            }
            Ok(PointFile::Volume { fs, path: path.to_string(), size: e.size })
        }
    }
}

/// Directories deeper than this are refused: a filesystem that loops would otherwise never end.
const MAX_DEPTH: usize = 256;

/// Writes `path` of a point (a file, or a directory and everything under it) to `out` as a tar
/// stream, named relative to the root (`/etc` → `etc/…`). Streams: a file's bytes pass in
/// pieces; a file-level point's tree is read once, a volume's directories a page at a time.
/// Returns the number of entries written.
pub fn archive(view: &View, volume: u32, path: &str, out: &mut dyn std::io::Write) -> Result<u64, ViewError> {
    let mut tar = tar::Builder::new(out);
    let count = match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            archive_tree(repo, manifest, path, &mut tar)?
        }
        View::Volume { .. } => {
            let top = stat(view, volume, path)?;
            let mut count = 0;
            add(view, volume, &mut tar, path.trim_matches('/'), &top, 0, &mut count)?;
            count
        }
    };
    tar.finish().map_err(|e| ViewError::Io(format!("writing the archive: {e}")))?;
    Ok(count)
}

type Tar<'a> = tar::Builder<&'a mut dyn std::io::Write>;

fn header(mode: u32, uid: u32, gid: u32, mtime: i64, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_mtime(mtime.max(0) as u64);
    h.set_entry_type(kind);
    h.set_size(size);
    h
}

/// A file-level point's subtree in one pass over its tree (depth-first: the order tar wants).
fn archive_tree(repo: &Repository, m: &Manifest, path: &str, tar: &mut Tar) -> Result<u64, ViewError> {
    use bulwark_repo::tree::EntryKind as K;
    use std::os::unix::ffi::OsStrExt;
    let top = bulwark_repo::browse::tree_path(path).map_err(ViewError::Invalid)?;
    let mut tree = repo.tree_cursor(m)?;
    let (mut count, mut seen) = (0u64, false);
    while let Some(e) = tree.next_entry()? {
        let inside =
            top.is_empty() || e.path == top || (e.path.starts_with(&top) && e.path.get(top.len()) == Some(&b'/'));
        if !inside {
            if seen {
                break; // past the subtree
            }
            continue;
        }
        seen = true;
        let name = if e.path.is_empty() { &b"."[..] } else { &e.path[..] };
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
        let io = |err: std::io::Error| ViewError::Io(format!("writing {name:?} into the archive: {err}"));
        let h = |kind, size| header(e.mode & 0o7777, e.uid, e.gid, e.mtime.sec, kind, size);
        match e.kind {
            K::Dir => tar.append_data(&mut h(tar::EntryType::Directory, 0), name, std::io::empty()).map_err(io)?,
            K::Symlink => {
                let target = std::path::Path::new(std::ffi::OsStr::from_bytes(&e.target));
                tar.append_link(&mut h(tar::EntryType::Symlink, 0), name, target).map_err(io)?
            }
            K::File | K::HardLink => {
                let mut hd = h(tar::EntryType::Regular, e.size);
                let file = PointFile::Files(Box::new(bulwark_repo::browse::FileReader::new(repo, m, e.clone())));
                let content = std::io::BufReader::with_capacity(1 << 20, FileContent { file, at: 0 });
                tar.append_data(&mut hd, name, content).map_err(io)?
            }
            // Devices and fifos: a name without its node would mislead; left out.
            K::CharDev | K::BlockDev | K::Fifo => continue,
        }
        count += 1;
    }
    if !seen {
        return Err(ViewError::NotFound(format!("point {} has no path {path:?}", m.id)));
    }
    Ok(count)
}

/// A volume's directory (and what is under it) or file, walked a page at a time.
fn add(
    view: &View,
    volume: u32,
    tar: &mut Tar,
    name: &str,
    e: &FileEntry,
    depth: usize,
    count: &mut u64,
) -> Result<(), ViewError> {
    let io = |err: std::io::Error| ViewError::Io(format!("writing {name:?} into the archive: {err}"));
    // The root itself has no name in the archive: only what is under it.
    let entry_name = if name.is_empty() { "." } else { name };
    let h = |kind, size| header(e.mode, e.uid, e.gid, e.mtime, kind, size);
    match e.kind.as_str() {
        "dir" => {
            if depth > MAX_DEPTH {
                return Err(ViewError::Invalid(format!("{name:?} is nested deeper than {MAX_DEPTH} directories")));
            }
            tar.append_data(&mut h(tar::EntryType::Directory, 0), entry_name, std::io::empty()).map_err(io)?;
            *count += 1;
            let mut cursor: Option<String> = None;
            loop {
                let page = list(view, volume, &format!("/{name}"), cursor.as_deref(), 1000)?;
                for child in &page.entries {
                    // Listings show names as UTF-8; one that is not cannot be asked for by path.
                    if child.name.contains('\u{FFFD}') {
                        tracing::warn!("archive of /{name}: {:?} left out (its name is not UTF-8)", child.name);
                        continue;
                    }
                    let child_name =
                        if name.is_empty() { child.name.clone() } else { format!("{name}/{}", child.name) };
                    add(view, volume, tar, &child_name, child, depth + 1, count)?;
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => return Ok(()),
                }
            }
        }
        "symlink" => {
            *count += 1;
            tar.append_link(&mut h(tar::EntryType::Symlink, 0), entry_name, e.target.as_deref().unwrap_or_default())
                .map_err(io)
        }
        "file" => {
            *count += 1;
            let file = open_file(view, volume, &format!("/{name}"))?;
            let content = std::io::BufReader::with_capacity(1 << 20, FileContent { file, at: 0 });
            tar.append_data(&mut h(tar::EntryType::Regular, e.size), entry_name, content).map_err(io)
        }
        // Devices, fifos and sockets: a name without its node would mislead; left out.
        _ => Ok(()),
    }
}

/// A point's file as `Read`, for the archive (behind a 1 MiB buffer: tar copies in 8 KiB).
struct FileContent {
    file: PointFile,
    at: u64,
}

impl std::io::Read for FileContent {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.file.size();
        if self.at >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(1 << 20).min((size - self.at) as usize);
        let data = self.file.read(self.at, want).map_err(|e| std::io::Error::other(e.to_string()))?;
        if data.is_empty() {
            return Err(std::io::Error::other("the file ends before its size says"));
        }
        buf[..data.len()].copy_from_slice(&data);
        self.at += data.len() as u64;
        Ok(data.len())
    }
}

fn no_volume(m: &Manifest, volume: u32) -> Result<(), ViewError> {
    if volume != 0 {
        return Err(ViewError::Invalid(format!("point {} is a file-level point: it has no volume {volume}", m.id)));
    }
    Ok(())
}

/// The filesystem on volume `number` of a volume point, opened once and kept with the point.
fn filesystem(
    image: &Arc<dyn Image>,
    filesystems: &Mutex<HashMap<u32, Arc<bulwark_browse::Browser>>>,
    kernel_mounts: bool,
    number: u32,
) -> Result<Arc<bulwark_browse::Browser>, ViewError> {
    if let Some(b) = filesystems.lock().expect("no panics while held").get(&number) {
        return Ok(b.clone());
    }
    let volume = volumes::open_volume(image, number).map_err(io_err)?;
    let b = Arc::new(bulwark_browse::Browser::open_with(volume, kernel_mounts).map_err(browse_err)?);
    filesystems.lock().expect("no panics while held").insert(number, b.clone());
    Ok(b)
}

fn browse_err(e: bulwark_browse::BrowseError) -> ViewError {
    use bulwark_browse::BrowseError as B;
    match e {
        B::NotFound { .. } => ViewError::NotFound(e.to_string()),
        B::Unsupported { .. } | B::NeedsRoot { .. } | B::MountsOff { .. } => ViewError::Unsupported(e.to_string()),
        B::Mount { .. } => ViewError::Io(e.to_string()),
        B::BadPath { .. } | B::NoFilesystem { .. } | B::Corrupt { .. } | B::Reader { .. } => {
            ViewError::Invalid(e.to_string())
        }
        B::Read { .. } | B::Restore(_) => ViewError::Io(e.to_string()),
    }
}

/// A volume's entry as listings show entries of any point.
fn entry(e: bulwark_browse::Entry) -> FileEntry {
    use bulwark_browse::EntryKind as K;
    let kind = match e.kind {
        K::File => "file",
        K::Dir => "dir",
        K::Symlink => "symlink",
        K::Char => "char-device",
        K::Block => "block-device",
        K::Fifo => "fifo",
        K::Socket => "socket",
    };
    FileEntry {
        name: e.name,
        kind: kind.into(),
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        target: e.target,
    }
}
