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
    Files { repo: Repository, manifest: Manifest },
    Volume { manifest: Manifest, image: Arc<dyn Image> },
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

#[derive(Default)]
pub struct PointViews {
    repos: Mutex<HashMap<(PathBuf, [u8; 32]), Entry<Repository>>>,
    views: Mutex<HashMap<(PathBuf, String), Entry<Arc<View>>>>,
}

fn take<K: std::hash::Hash + Eq + Clone, T: Clone>(map: &Mutex<HashMap<K, Entry<T>>>, key: &K) -> Option<T> {
    let mut m = map.lock().expect("no panics while held");
    let now = Instant::now();
    m.retain(|_, e| now.duration_since(e.used) < IDLE);
    m.get_mut(key).map(|e| {
        e.used = now;
        e.value.clone()
    })
}

fn keep<K: std::hash::Hash + Eq + Clone, T>(map: &Mutex<HashMap<K, Entry<T>>>, key: K, value: T) {
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
            PointKind::Files => View::Files { repo, manifest },
            PointKind::Volume => {
                let image: Arc<dyn Image> = Arc::new(PointImage::open(&repo, &manifest)?);
                View::Volume { manifest, image }
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
        View::Volume { .. } => Err(unsupported_volume_files(view)),
    }
}

/// Metadata of the entry at `path`.
pub fn stat(view: &View, volume: u32, path: &str) -> Result<FileEntry, ViewError> {
    match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            Ok(bulwark_repo::browse::stat(repo, manifest, path)?)
        }
        View::Volume { .. } => Err(unsupported_volume_files(view)),
    }
}

/// Up to `len` bytes from `offset` of the file at `path`, and the file's size.
pub fn read(view: &View, volume: u32, path: &str, offset: u64, len: usize) -> Result<(u64, Vec<u8>), ViewError> {
    match view {
        View::Files { repo, manifest } => {
            no_volume(manifest, volume)?;
            Ok(bulwark_repo::browse::read_file(repo, manifest, path, offset, len)?)
        }
        View::Volume { .. } => Err(unsupported_volume_files(view)),
    }
}

fn no_volume(m: &Manifest, volume: u32) -> Result<(), ViewError> {
    if volume != 0 {
        return Err(ViewError::Invalid(format!("point {} is a file-level point: it has no volume {volume}", m.id)));
    }
    Ok(())
}

fn unsupported_volume_files(view: &View) -> ViewError {
    ViewError::Unsupported(format!("point {}: files of volume points cannot be read here yet", view.manifest().id))
}
