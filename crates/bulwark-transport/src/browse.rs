//! Points opened on the repository host for browsing, downloads and instant recovery.
//!
//! An operator browsing a point asks for one directory at a time, seconds apart; opening the
//! repository (a key derivation), authenticating the point's index and loading its filesystem
//! each time would make every click cost a second. Opened repositories and points are kept
//! while in use and dropped after [`IDLE`] without a request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_repo::browse::{FileEntry, Page};
use bulwark_repo::image::Image;
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

#[derive(Default)]
pub struct PointViews {
    repos: Cache<(PathBuf, [u8; 32]), Repository>,
    views: Cache<(PathBuf, String), Arc<View>>,
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
    /// The repository at `path`, opened with `password` (kept open while used).
    fn repository(&self, path: &Path, password: Option<&[u8]>) -> Result<Repository, ViewError> {
        // Keyed by a digest, so the password itself is not kept as a map key.
        let key = (path.to_path_buf(), *blake3::hash(password.unwrap_or_default()).as_bytes());
        if let Some(r) = take(&self.repos, &key) {
            return Ok(r);
        }
        let repo = Repository::open(path, password)?;
        keep(&self.repos, key, repo.clone());
        Ok(repo)
    }

    /// Point `point` of the repository at `path`.
    pub fn open(&self, path: &Path, password: Option<&[u8]>, point: &str) -> Result<Arc<View>, ViewError> {
        let repo = self.repository(path, password)?;
        let key = (path.to_path_buf(), point.to_string());
        if let Some(v) = take(&self.views, &key) {
            return Ok(v);
        }
        let manifest = repo.resolve(point)?;
        let view = Arc::new(match manifest.kind {
            PointKind::Files => View::Files { repo: Box::new(repo), manifest },
            PointKind::Volume => {
                let image: Arc<dyn Image> = Arc::new(PointImage::open(&repo, &manifest)?);
                View::Volume { manifest, image, filesystems: Mutex::default() }
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
        View::Volume { image, filesystems, .. } => {
            let page = filesystem(image, filesystems, volume)?.list(path, cursor, limit).map_err(browse_err)?;
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
        View::Volume { image, filesystems, .. } => {
            Ok(entry(filesystem(image, filesystems, volume)?.stat(path).map_err(browse_err)?))
        }
    }
}

/// Up to `len` bytes from `offset` of the file at `path`, and the file's size.
pub fn read(view: &View, volume: u32, path: &str, offset: u64, len: usize) -> Result<(u64, Vec<u8>), ViewError> {
    match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            Ok(bulwark_repo::browse::read_file(repo, manifest, path, offset, len)?)
        }
        View::Volume { image, filesystems, .. } => {
            let fs = filesystem(image, filesystems, volume)?;
            let e = fs.stat(path).map_err(browse_err)?;
            if e.kind != bulwark_browse::EntryKind::File {
                return Err(ViewError::Invalid(format!("{}: {path:?} is not a regular file", fs.describe())));
            }
            let mut out = Vec::with_capacity(len.min(bulwark_browse::MAX_READ));
            while out.len() < len {
                let piece = fs.read(path, offset + out.len() as u64, len - out.len()).map_err(browse_err)?;
                if piece.is_empty() {
                    break;
                }
                out.extend_from_slice(&piece);
            }
            Ok((e.size, out))
        }
    }
}

/// Directories deeper than this are refused: a filesystem that loops would otherwise never end.
const MAX_DEPTH: usize = 256;

/// Writes `path` of a point (a file, or a directory and everything under it) to `out` as a tar
/// stream, named relative to the root (`/etc` → `etc/…`). Streams: a file's bytes pass in
/// pieces, a directory is listed a page at a time. Returns the number of entries written.
pub fn archive(view: &View, volume: u32, path: &str, out: &mut dyn std::io::Write) -> Result<u64, ViewError> {
    let mut tar = tar::Builder::new(out);
    let top = stat(view, volume, path)?;
    let name = path.trim_matches('/').to_string();
    let mut count = 0;
    add(view, volume, &mut tar, &name, &top, 0, &mut count)?;
    tar.finish().map_err(|e| ViewError::Io(format!("writing the archive: {e}")))?;
    Ok(count)
}

fn add(
    view: &View,
    volume: u32,
    tar: &mut tar::Builder<&mut dyn std::io::Write>,
    name: &str,
    e: &FileEntry,
    depth: usize,
    count: &mut u64,
) -> Result<(), ViewError> {
    let io = |e: std::io::Error| ViewError::Io(format!("writing {name:?} into the archive: {e}"));
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime.max(0) as u64);
    // The root itself has no name in the archive: only what is under it.
    let entry_name = if name.is_empty() { "." } else { name };
    *count += 1;
    match e.kind.as_str() {
        "dir" => {
            if depth > MAX_DEPTH {
                return Err(ViewError::Invalid(format!("{name:?} is nested deeper than {MAX_DEPTH} directories")));
            }
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, entry_name, std::io::empty()).map_err(io)?;
            let mut cursor: Option<String> = None;
            loop {
                let page = list(view, volume, &format!("/{name}"), cursor.as_deref(), 1000)?;
                for child in &page.entries {
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
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, entry_name, e.target.as_deref().unwrap_or_default()).map_err(io)
        }
        "file" => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.size);
            let content = FileReader { view, volume, path: format!("/{name}"), at: 0, size: e.size };
            tar.append_data(&mut h, entry_name, content).map_err(io)
        }
        // Devices, fifos and sockets: names only would mislead; they are left out.
        _ => {
            *count -= 1;
            Ok(())
        }
    }
}

/// A file of a point, read in pieces as the archive asks for them.
struct FileReader<'a> {
    view: &'a View,
    volume: u32,
    path: String,
    at: u64,
    size: u64,
}

impl std::io::Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(1 << 20).min((self.size - self.at) as usize);
        let (_, data) = read(self.view, self.volume, &self.path, self.at, want)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if data.is_empty() {
            return Err(std::io::Error::other(format!("{} ends before its size says", self.path)));
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
    number: u32,
) -> Result<Arc<bulwark_browse::Browser>, ViewError> {
    if let Some(b) = filesystems.lock().expect("no panics while held").get(&number) {
        return Ok(b.clone());
    }
    let volume = volumes::open_volume(image, number).map_err(io_err)?;
    let b = Arc::new(bulwark_browse::Browser::open(volume).map_err(browse_err)?);
    filesystems.lock().expect("no panics while held").insert(number, b.clone());
    Ok(b)
}

fn browse_err(e: bulwark_browse::BrowseError) -> ViewError {
    use bulwark_browse::BrowseError as B;
    match e {
        B::NotFound { .. } => ViewError::NotFound(e.to_string()),
        B::Unsupported { .. } => ViewError::Unsupported(e.to_string()),
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
