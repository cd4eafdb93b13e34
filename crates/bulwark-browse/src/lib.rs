//! The files inside a volume restore point, read straight from its image: list one directory,
//! look at one entry, read a file at any offset, extract files and directories with their
//! metadata (see docs/design/restore-anything.md).
//!
//! ext2, ext3 and ext4 are parsed in user space from the point's blocks (with `ext4-view`, which
//! maps a dirty journal over the filesystem in memory, so a crash-consistent point reads as if
//! its journal had been replayed): no root, no mount, and the kernel never parses an image that
//! may be damaged or hostile. What `ext4-view` 1.0 does not expose is not offered there:
//! extended attributes (so ACLs and file capabilities), device numbers (device nodes are not
//! extracted), link counts, and inode numbers other than those of regular files (enough to
//! restore hard links between files).
//!
//! XFS, btrfs, FAT and NTFS take the mount fallback ([`mount`]): as root, the kernel mounts the
//! volume read-only over a copy-on-write overlay of the point (its log replayed into the
//! overlay), and the files are read there, with the same semantics, plus extended attributes,
//! device numbers and link counts. Not as root, they are refused ([`BrowseError::NeedsRoot`]).
//! Mounts are undone when the browser is dropped; those of a process that was killed, by
//! [`clean_stale_mounts`].

mod ext4;
mod extract;
pub mod mount;
mod mounted;
mod path;
mod worker;

pub use mount::{clean_stale_mounts, Cleanup};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bulwark_repo::Image;
use serde::Serialize;

pub use bulwark_agent::files::FileRestoreReport as ExtractReport;
pub use bulwark_agent::Progress;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl EntryKind {
    /// The letter `ls -l` shows for it.
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Char => 'c',
            EntryKind::Block => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
        }
    }
}

/// One entry of a directory in a volume point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The name, for display (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    /// The name exactly as the filesystem holds it.
    #[serde(skip)]
    pub raw_name: Vec<u8>,
    pub kind: EntryKind,
    /// Bytes: a file's length, a symlink's target length, a directory's allocated size.
    pub size: u64,
    /// Permission bits, with set-user-id, set-group-id and sticky (`0o4755`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub atime: i64,
    pub atime_nsec: u32,
    /// A symlink's target, for display.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A symlink's target exactly as stored.
    #[serde(skip)]
    pub raw_target: Option<Vec<u8>>,
    /// The inode number: known for regular files only from `ext4-view` 1.0, for every entry of
    /// a mounted filesystem.
    pub inode: Option<u64>,
    /// The number of hard links: known on a mounted filesystem (`ext4-view` 1.0 does not tell).
    pub nlink: Option<u32>,
    /// A device node's number, where known (on a mounted filesystem).
    #[serde(skip)]
    pub rdev: Option<u64>,
    /// Extended attributes (ACLs, capabilities, labels, `user.*`), name and value: read by
    /// [`Browser::stat`] and extraction on a mounted filesystem, never by the ext4 reader.
    #[serde(skip)]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One page of a directory listing.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// The cursor for the next page; `None` on the last one.
    pub next: Option<String>,
}

/// How [`Browser::extract`] treats the target and metadata: as a file-level restore does
/// (`bulwark restore --path`).
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Write into an existing, non-empty target, replacing entries of the same names.
    pub overwrite: bool,
    /// The files come from a computer that is not trusted: no fifos, no set-id bits, no owners.
    pub safe: bool,
    /// Set to stop the extraction at the next piece of a file (the file being written is not
    /// left behind).
    pub cancel: Option<Arc<AtomicBool>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// Something Bulwark reads no files from (swap, an LVM physical volume, an ext4 feature the
    /// reader lacks).
    #[error("{what} holds {found}: Bulwark cannot read files from it; restore the volume whole instead")]
    Unsupported { what: String, found: String },
    /// A filesystem only the kernel reads here, and this process is not root.
    #[error(
        "{what} holds {found}: Bulwark reads its files by having the kernel mount it (read-only, over a \
         copy of the point's blocks), and mounting needs root; run this as root, or restore the volume whole \
         instead"
    )]
    NeedsRoot { what: String, found: String },
    /// A filesystem only the kernel reads here, on a node set not to mount images.
    #[error(
        "{what} holds {found}: Bulwark reads its files by having the kernel mount it, which this node is set not \
         to do (an image from another computer is not parsed by its kernel); restore the files with the point's \
         own computer (`bulwark restore POINT --path …`), or restore the volume whole"
    )]
    MountsOff { what: String, found: String },
    /// The kernel mount of a filesystem failed (or a piece under it).
    #[error("{what}: its {found} filesystem cannot be mounted to read its files: {reason}")]
    Mount { what: String, found: String, reason: String },
    /// No filesystem at all, or a whole disk rather than one of its volumes.
    #[error("{what}: {reason}")]
    NoFilesystem { what: String, reason: String },
    #[error("{what}: the filesystem is damaged: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("{what} has no path {path:?}")]
    NotFound { what: String, path: String },
    /// A path that cannot be used here: not absolute-and-plain, or not the kind of entry asked.
    #[error("{what}: {path:?}: {reason}")]
    BadPath { what: String, path: String, reason: String },
    /// The image itself could not be read (a damaged or missing chunk of the point).
    #[error("{what}: reading {path:?}: {reason}")]
    Read { what: String, path: String, reason: String },
    /// The reader stopped on metadata it could not handle; the browser is unusable after it.
    #[error("{what}: the filesystem reader stopped on damaged metadata{context}")]
    Reader { what: String, context: String },
    #[error(transparent)]
    Restore(#[from] bulwark_agent::AgentError),
}

pub type Result<T, E = BrowseError> = std::result::Result<T, E>;

/// The files of one volume, read from its image. Cheap to share between threads: requests are
/// served one at a time by a reader thread the browser owns (the filesystem reader is not
/// thread-safe), which stops when the browser is dropped. A browser over a mounted filesystem
/// unmounts it when dropped (or [`Browser::close`]d).
pub struct Browser {
    // Field order matters: the reader thread (and every file it holds open in a mounted
    // filesystem) goes before the mount.
    worker: worker::Worker,
    mount: Option<mount::Mount>,
    what: String,
    fs: String,
    /// The filesystem's inode count: no walk can meet more directories than that.
    inodes: u64,
}

impl Browser {
    /// Opens the filesystem on `img` (one volume of a point, see
    /// [`bulwark_repo::volumes::open_volume`]): ext2/3/4 in user space, XFS, btrfs, FAT and NTFS
    /// through a kernel mount (as root only).
    pub fn open(img: Arc<dyn Image>) -> Result<Browser> {
        Browser::open_with(img, true)
    }

    /// [`Browser::open`], with the kernel mount fallback allowed or not: a node that reads the
    /// points of many computers may keep their images away from its kernel.
    pub fn open_with(img: Arc<dyn Image>, kernel_mounts: bool) -> Result<Browser> {
        let what = img.describe();
        let content = bulwark_repo::volumes::detect_content(img.as_ref()).map_err(|e| BrowseError::Read {
            what: what.clone(),
            path: "/".into(),
            reason: format!("cannot read its first blocks: {e}"),
        })?;
        match content.as_str() {
            "ext2" | "ext3" | "ext4" => {}
            "gpt" | "mbr" => {
                return Err(BrowseError::NoFilesystem {
                    what,
                    reason: format!(
                        "is a whole disk with a{} {content} partition table: choose one of its volumes",
                        if content == "mbr" { "n" } else { "" }
                    ),
                })
            }
            "" => {
                return Err(BrowseError::NoFilesystem {
                    what,
                    reason: "holds no filesystem Bulwark recognises (no ext2/3/4, XFS or btrfs superblock: empty, \
                             encrypted, or its superblock is damaged)"
                        .into(),
                })
            }
            other if mount::kernel_type(other).is_some() => {
                if !kernel_mounts {
                    return Err(BrowseError::MountsOff { what, found: mount::display_name(other).to_string() });
                }
                return Browser::open_mounted(img, what, content.clone());
            }
            "swap" => return Err(BrowseError::Unsupported { what, found: "swap space (no files)".into() }),
            "lvm2" => {
                return Err(BrowseError::Unsupported {
                    what,
                    found: "an LVM physical volume (the logical volumes in it are not opened)".into(),
                })
            }
            other => return Err(BrowseError::Unsupported { what, found: other.to_string() }),
        }
        let mut sb = [0u8; 4];
        img.read_at(&mut sb, 1024).map_err(|e| BrowseError::Read {
            what: what.clone(),
            path: "/".into(),
            reason: format!("cannot read the superblock: {e}"),
        })?;
        let inodes = u32::from_le_bytes(sb) as u64;
        let worker = worker::Worker::start(Box::new(ext4::loader(img, what.clone())), what.clone())?;
        Ok(Browser { worker, mount: None, what, fs: content, inodes })
    }

    /// The mount fallback: the kernel mounts the volume, the reader thread reads it there.
    fn open_mounted(img: Arc<dyn Image>, what: String, content: String) -> Result<Browser> {
        let m = mount::Mount::new(img, &content, &what)?;
        let fail = |reason: String| BrowseError::Mount {
            what: what.clone(),
            found: mount::display_name(&content).to_string(),
            reason,
        };
        let root = m.root().map_err(|e| fail(format!("cannot open the mounted filesystem: {e}")))?;
        let inodes = match rustix::fs::fstatvfs(&root) {
            Ok(v) if v.f_files > 0 => v.f_files,
            _ => u64::MAX,
        };
        // On an error `m` is dropped, and unmounts.
        let worker = worker::Worker::start(mounted::loader(root, what.clone()), what.clone())?;
        Ok(Browser { worker, mount: Some(m), what, fs: content, inodes })
    }

    /// `ext2`, `ext3`, `ext4`, or one the mount fallback reads (`xfs`, `btrfs`, `vfat`, `ntfs`).
    pub fn filesystem(&self) -> &str {
        &self.fs
    }

    /// Whether the files are read from a kernel mount (the fallback) rather than in user space.
    pub fn is_mounted(&self) -> bool {
        self.mount.is_some()
    }

    /// Stops the browser; for a mounted filesystem, unmounts it and returns what could not be
    /// undone (which [`clean_stale_mounts`] tries again later). Dropping does the same, quietly.
    pub fn close(self) -> Vec<String> {
        let Browser { worker, mount, .. } = self;
        drop(worker);
        mount.map(|mut m| m.close()).unwrap_or_default()
    }

    /// What the browser reads, for messages.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// One page of the directory at `path` (symlinks on the way are followed inside the
    /// filesystem), sorted by name: at most `limit` entries after `cursor` (the `next` of the
    /// previous page). Only this directory is read, and only the entries of the page are
    /// looked at.
    pub fn list(&self, path: &str, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let p = self.path(path)?;
        let cursor = cursor.map(bulwark_repo::browse::decode_cursor);
        let shown = path.to_string();
        self.worker.call(move |st| st.list(&p, &shown, cursor, limit.max(1)))
    }

    /// The entry at `path` itself (a symlink, not what it points to).
    pub fn stat(&self, path: &str) -> Result<Entry> {
        let p = self.path(path)?;
        let shown = path.to_string();
        self.worker.call(move |st| st.stat(&p, &shown))
    }

    /// Up to `len` bytes (at most [`MAX_READ`]) of the regular file at `path` from `offset`;
    /// fewer at its end, none past it. Reading on where the previous read ended is cheap.
    pub fn read(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let p = self.path(path)?;
        let shown = path.to_string();
        self.worker.call(move |st| st.read(&p, &shown, offset, len.min(MAX_READ)))
    }

    /// Restores the entries at `paths` (and everything under the directories among them) into
    /// the directory `to`, at the same paths (`/etc/hosts` into `TO/etc/hosts`), with their
    /// metadata, by the rules of a file-level restore (see [`bulwark_agent::files::TreeWriter`]).
    /// Every path must be in the filesystem, or nothing is written. Entries that cannot be
    /// restored are listed in the report (`complete` false); an error means the extraction
    /// could not start or go on. An empty `paths` extracts everything.
    pub fn extract(
        &self,
        paths: &[String],
        to: &Path,
        opts: &ExtractOptions,
        progress: Progress,
    ) -> Result<ExtractReport> {
        extract::extract(self, paths, to, opts, progress)
    }

    fn path(&self, p: &str) -> Result<Vec<u8>> {
        path::parse(p).map(|c| path::join(&c)).map_err(|reason| BrowseError::BadPath {
            what: self.what.clone(),
            path: p.to_string(),
            reason,
        })
    }
}

/// Restores of files out of volume points on an agent, whose restore pipeline hands the point's
/// image here (see [`bulwark_agent::pipeline::VolumeFiles`]).
pub struct VolumeFilesRestore;

impl bulwark_agent::pipeline::VolumeFiles for VolumeFilesRestore {
    fn restore(
        &self,
        image: bulwark_repo::PointImage,
        m: &bulwark_repo::Manifest,
        to: &Path,
        settings: &bulwark_agent::pipeline::RestoreSettings,
        progress: Progress,
        cancel: &Arc<AtomicBool>,
    ) -> bulwark_agent::Result<ExtractReport> {
        use bulwark_agent::AgentError;
        let img: Arc<dyn Image> = Arc::new(image);
        let volume = bulwark_repo::volumes::open_volume(&img, settings.volume)
            .map_err(|e| AgentError::Unsupported { reason: e.to_string() })?;
        let to_agent = |e: BrowseError| match e {
            BrowseError::Restore(e) => e,
            BrowseError::NotFound { path, .. } => AgentError::NoSuchPath { point: m.id.to_string(), path },
            e => AgentError::Unsupported { reason: e.to_string() },
        };
        let browser = Browser::open(volume).map_err(to_agent)?;
        let opts = ExtractOptions { overwrite: settings.overwrite, safe: settings.safe, cancel: Some(cancel.clone()) };
        browser.extract(&settings.paths, to, &opts, progress).map_err(to_agent)
    }
}

/// The most one [`Browser::read`] returns.
pub const MAX_READ: usize = 16 << 20;
