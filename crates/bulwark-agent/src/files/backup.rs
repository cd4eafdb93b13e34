//! File-level backup: walk, read and chunk in parallel, write the tree in order.
//!
//! A walker thread visits the tree depth first (children sorted by name), builds each entry
//! from `lstat`, and merges with the previous point's tree to find unchanged files. Workers read
//! and chunk changed files. This thread puts results back in tree order, writes the tree stream
//! in 1 MiB pieces and commits. Entries travel in batches (one message per [`BATCH`] entries or
//! [`BATCH_BYTES`] of file data: per-entry messages cost more than an unchanged file), and at
//! most [`IN_FLIGHT`] batches are between walker and writer, so memory is bounded whatever the
//! tree's size.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bulwark_repo::tree::{tree_order, EntryKind, FileExtent, TreeEntry, PIECE};
use bulwark_repo::{ChunkCodec, ChunkId, Compression, FileSummary, PointKind, PointSpec, PointStats, TreeCursor};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use super::chunker::{chunk_range, data_ranges};
use super::glob::Exclude;
use super::meta::{entry_for, Names};
use crate::apps::{Addition, AdditionContent, AppPolicy};
use crate::error::{AgentError, Result};
use crate::snapshot::{
    create_with_retries, BtrfsProvider, Consistency, Freeze, NoSnapshot, RetryPolicy, SnapshotMode, SnapshotProvider,
    Taken,
};
use crate::target::BackupTarget;
use crate::Progress;

const IN_FLIGHT: usize = 64;
const BATCH: usize = 64;
const BATCH_BYTES: u64 = 8 << 20;
const MAX_WARNINGS: usize = 100;
const SNAPSHOT_DIR: &[u8] = b".bulwark-snapshots";

#[derive(Debug, Clone)]
pub struct FileBackupOptions {
    pub name: String,
    pub compression: Compression,
    pub threads: usize,
    pub exclude: Vec<String>,
    pub snapshot: SnapshotMode,
    pub retry: RetryPolicy,
    /// The operator's pre-freeze and post-thaw scripts around each snapshot try, and the
    /// longest the freeze may last.
    pub freeze: Freeze,
    /// Read every file, ignoring the previous point (stores again anything the repository lost).
    pub full: bool,
}

impl FileBackupOptions {
    pub fn new(name: impl Into<String>) -> Self {
        FileBackupOptions {
            name: name.into(),
            compression: Compression::default(),
            threads: crate::default_threads(),
            exclude: Vec::new(),
            snapshot: SnapshotMode::Auto,
            retry: RetryPolicy::default(),
            freeze: Freeze::default(),
            full: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileBackupReport {
    pub point: String,
    pub name: String,
    pub source: String,
    pub parent: Option<String>,
    pub snapshot: &'static str,
    pub consistency: Consistency,
    /// Seconds from the freeze to the thaw (the pre-freeze script's start to the post-thaw
    /// script's end; the snapshot's creation alone without scripts).
    pub freeze_seconds: f64,
    /// What kept the point from being what the job asked for, the task ending with a warning:
    /// an application not prepared under the policy `ignore`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(flatten)]
    pub stats: PointStats,
    #[serde(flatten)]
    pub summary: FileSummary,
    pub notes: Vec<String>,
}

// Nearly every job is an entry: boxing it to shrink the rare warning would allocate per entry.
#[allow(clippy::large_enum_variant)]
enum Job {
    Entry(EntryJob),
    /// Something the walker could not back up, reported in order with the entries.
    Warning(String),
}

struct EntryJob {
    entry: TreeEntry,
    abs: PathBuf,
    reuse: Option<Vec<FileExtent>>,
    /// First path of an inode with several links: later links copy its extents.
    link_first: bool,
}

struct Batch {
    seq: u64,
    jobs: Vec<Job>,
}

#[derive(Default)]
struct Outcome {
    entry: Option<TreeEntry>,
    link_first: bool,
    unchanged: bool,
    read: u64,
    new: u64,
    stored: u64,
    warning: Option<String>,
}

/// Whether `dir` is the root of a btrfs subvolume (so a read-only snapshot of it can be taken).
fn is_btrfs_subvolume(dir: &Path) -> bool {
    const BTRFS_MAGIC: i64 = 0x9123_683E;
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type == BTRFS_MAGIC)
        && std::fs::metadata(dir).is_ok_and(|m| m.ino() == 256)
}

/// Backs up the directory `source` as a file-level restore point.
pub fn backup_files(
    repo: &dyn BackupTarget,
    source: &Path,
    opts: &FileBackupOptions,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<FileBackupReport> {
    let started = Instant::now();
    let md = std::fs::metadata(source).map_err(|e| AgentError::Source {
        path: source.into(),
        what: "cannot open".into(),
        source: e,
    })?;
    if !md.is_dir() {
        return Err(AgentError::BadSource { path: source.into(), reason: "not a directory".into() });
    }
    check_enterable(source)?;
    let provider: Box<dyn SnapshotProvider> = match opts.snapshot {
        SnapshotMode::Auto if is_btrfs_subvolume(source) => Box::new(BtrfsProvider),
        SnapshotMode::Auto | SnapshotMode::None => Box::new(NoSnapshot),
        SnapshotMode::Btrfs => Box::new(BtrfsProvider),
        other => {
            return Err(AgentError::BadSource {
                path: source.into(),
                reason: format!("--snapshot {other} is for volumes; a directory takes auto, btrfs or none"),
            })
        }
    };
    let mut notes = Vec::new();
    for stale in provider.remove_stale(source) {
        notes.push(format!("removed stale snapshot {stale} left by an interrupted backup"));
    }
    let freeze = Freeze { file_level: true, ..opts.freeze.clone() };
    let Taken { mut snapshot, frozen, applications, mut warnings, held } =
        create_with_retries(&*provider, source, opts.retry, &freeze, &mut |m| notes.push(m))
            .map_err(|reason| AgentError::Snapshot { source_path: source.into(), reason })?;
    if snapshot.provider == "none" {
        notes.push("no snapshot: files are read live; any that change while read are reported".into());
    } else {
        notes.extend(snapshot.notes.iter().cloned());
    }
    let root = snapshot.path.clone();

    let parent = if opts.full { None } else { repo.latest(&opts.name)? };
    let parent = match parent {
        Some(p) if p.kind != PointKind::Files => {
            notes.push(format!("previous point {} is a volume point: every file read", p.id));
            None
        }
        p => p,
    };
    let spec = PointSpec {
        kind: PointKind::Files,
        name: opts.name.clone(),
        source: source.display().to_string(),
        volume_size: 0,
        block_size: bulwark_repo::BlockSize::new(PIECE as u32).expect("valid piece size"),
        compression: opts.compression,
        parent: parent.as_ref().map(|p| p.id.clone()),
        snapshot: snapshot.provider.to_string(),
        consistency: snapshot.consistency.as_str().to_string(),
        key_scope: None,
    };
    // The writer pins the parent first: its chunks then stay in the repository while this
    // backup reuses them, without touching each one.
    let writer = repo.begin_point(spec)?;
    let mut cursor: Option<TreeCursor> = None;
    if let (Some(p), Some(_)) = (&parent, writer.parent()) {
        match repo.tree_cursor(p) {
            Ok(c) => cursor = Some(c),
            Err(e) => notes.push(format!("previous point unusable ({e}): every file read")),
        }
    }

    let threads = opts.threads.max(1);
    let (job_tx, job_rx) = bounded::<Batch>(threads * 2);
    let (done_tx, done_rx) = bounded::<Result<(u64, Vec<Outcome>)>>(threads * 2);
    let (slot_tx, slot_rx) = bounded::<()>(IN_FLIGHT);
    let stop = AtomicBool::new(false);
    let mut patterns = opts.exclude.clone();
    patterns.extend(held.iter().flat_map(|h| h.exclude()));
    let exclude = Exclude::new(&patterns);
    let mut walk_notes: Vec<String> = Vec::new();

    let mut stats = PointStats { applications, ..Default::default() };
    let mut summary = FileSummary { status: "ok".into(), ..Default::default() };
    let mut tree = TreeOut::new(repo.codec(opts.compression), !held.is_empty())?;

    let outcome: Result<()> = std::thread::scope(|s| {
        let walker = s.spawn(|| {
            let job_tx = job_tx;
            let mut w = Walker {
                names: Names::load(),
                exclude: &exclude,
                cursor: cursor.take(),
                links: HashMap::new(),
                seq: 0,
                batch: Vec::with_capacity(BATCH),
                batch_bytes: 0,
                jobs: &job_tx,
                slots: &slot_tx,
                stop: &stop,
                cancel,
                notes: &mut walk_notes,
            };
            w.visit_root(&root).and_then(|()| w.flush())
        });
        for _ in 0..threads {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            s.spawn(move || worker(repo, opts.compression, job_rx, done_tx, progress));
        }
        drop((job_rx, done_tx));

        let mut pending: BTreeMap<u64, Vec<Outcome>> = BTreeMap::new();
        let mut next = 0u64;
        let mut first_links: HashMap<Vec<u8>, Vec<FileExtent>> = HashMap::new();
        let collected: Result<()> = (|| {
            for r in done_rx.iter() {
                let (seq, outcomes) = r?;
                pending.insert(seq, outcomes);
                while let Some(outcomes) = pending.remove(&next) {
                    next += 1;
                    let _ = slot_rx.recv();
                    for o in outcomes {
                        stats.read_bytes += o.read;
                        stats.new_bytes += o.new;
                        stats.stored_bytes += o.stored;
                        if let Some(w) = o.warning {
                            add_warning(&mut summary, w);
                        }
                        let Some(mut e) = o.entry else { continue };
                        match e.kind {
                            EntryKind::Dir => summary.dirs += 1,
                            EntryKind::File => summary.files += 1,
                            EntryKind::HardLink => {
                                match first_links.get(&e.target) {
                                    Some(x) => e.extents = x.clone(),
                                    // The first link could not be read, so neither was this
                                    // one's content: leave it out rather than store zeroes.
                                    None => {
                                        let w = format!(
                                            "{}: skipped, a hard link of {} which could not be read",
                                            e.path_lossy(),
                                            String::from_utf8_lossy(&e.target)
                                        );
                                        add_warning(&mut summary, w);
                                        continue;
                                    }
                                }
                                summary.files += 1;
                            }
                            _ => {}
                        }
                        if o.unchanged {
                            summary.unchanged_files += 1;
                        }
                        if e.kind == EntryKind::File {
                            stats.source_bytes += e.size;
                        }
                        if o.link_first {
                            first_links.insert(e.path.clone(), e.extents.clone());
                        }
                        summary.entries += 1;
                        tree.push(repo, &e)?;
                    }
                }
            }
            Ok(())
        })();
        if collected.is_err() {
            stop.store(true, Ordering::Relaxed);
            drop(done_rx);
            drop(slot_rx);
        }
        let walked = walker.join().expect("walker does not panic");
        collected.and(walked)
    });
    outcome?;
    if cancel.load(Ordering::Relaxed) {
        return Err(AgentError::Cancelled);
    }
    notes.extend(walk_notes);
    // Applications in backup mode through the copy end it now; what they add (a backup label,
    // the WAL written meanwhile) goes into the tree in its place.
    let mut additions = Vec::new();
    let mut keep = Vec::new();
    for h in held {
        let finished = h.finish(&mut |m| notes.push(m)).and_then(|f| {
            let added = add_files(repo, opts.compression, &f.additions, progress)?;
            Ok((f, added))
        });
        match finished {
            Ok((f, added)) => {
                stats.applications.push(f.record);
                additions.extend(added);
                keep.push(f.keep);
            }
            Err(reason) if opts.freeze.app_policy == AppPolicy::Ignore => {
                notes.push(format!("{reason}; the point is not application-consistent (processing policy: ignore)"));
                warnings.push(reason);
                snapshot.consistency = match snapshot.provider {
                    "none" => Consistency::CrashInconsistent,
                    _ => Consistency::CrashConsistent,
                };
                stats.consistency = Some(snapshot.consistency.as_str().to_string());
            }
            Err(reason) => return Err(AgentError::Application { source_path: source.into(), reason }),
        }
    }
    for (e, o) in &additions {
        stats.read_bytes += o.read;
        stats.new_bytes += o.new;
        stats.stored_bytes += o.stored;
        stats.source_bytes += e.size;
        summary.files += 1;
        summary.entries += 1;
    }
    let (pieces, tree_len, tree_stored) = tree.finish(repo, additions.into_iter().map(|(e, _)| e).collect())?;
    drop(keep);
    stats.stored_bytes += tree_stored;
    stats.duration_s = started.elapsed().as_secs_f64();
    let manifest = writer.commit_files(&pieces, tree_len, stats, summary)?;
    let consistency = snapshot.consistency;
    let provider_name = snapshot.provider;
    if let Err(e) = snapshot.release() {
        notes.push(format!("snapshot not released: {e}"));
    }
    Ok(FileBackupReport {
        point: manifest.id.to_string(),
        name: manifest.name.clone(),
        source: manifest.source.clone(),
        parent: manifest.parent.as_ref().map(|p| p.to_string()),
        snapshot: provider_name,
        consistency,
        freeze_seconds: frozen.as_secs_f64(),
        warnings,
        stats: PointStats { duration_s: started.elapsed().as_secs_f64(), ..manifest.stats.clone() },
        summary: manifest.files.clone().unwrap_or_default(),
        notes,
    })
}

/// A directory this user cannot list or enter would back up as an empty point that looks like
/// a success: refuse it before anything is written.
fn check_enterable(dir: &Path) -> Result<()> {
    let refused = |e: std::io::Error| AgentError::Source {
        path: dir.into(),
        what: "cannot list or enter the directory to back up (run the backup as a user who can, such as \
               root); nothing was backed up"
            .into(),
        source: e,
    };
    std::fs::read_dir(dir).map_err(refused)?;
    // Looking `.` up inside needs the search permission that reading any entry's metadata needs.
    std::fs::symlink_metadata(dir.join(".")).map(drop).map_err(refused)
}

/// The names in `dir`, read without moving its access time where the kernel allows it (the
/// owner, or root): a backup leaves the source as it found it, and an unchanged directory
/// gives the next backup an identical tree, whose pieces then deduplicate (and can replace a
/// damaged one).
fn list_names(dir: &Path) -> std::io::Result<Vec<OsString>> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(dir, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::open(dir, flags, Mode::empty())?,
        r => r?,
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// Counts a warning and keeps the first [`MAX_WARNINGS`] for the report.
fn add_warning(summary: &mut FileSummary, w: String) {
    summary.warnings_total += 1;
    summary.status = "warning".into();
    if summary.warnings.len() < MAX_WARNINGS {
        summary.warnings.push(w);
    }
}

fn store_piece(
    repo: &dyn BackupTarget,
    codec: &mut ChunkCodec,
    piece: &[u8],
    pieces: &mut Vec<ChunkId>,
) -> Result<u64> {
    let id = codec.digest(piece);
    pieces.push(id);
    if repo.has_chunk(&id)? {
        return Ok(0);
    }
    let stored = codec.encode(&id, piece);
    repo.put_chunk(&id, &stored)?;
    Ok(stored.len() as u64)
}

/// The tree stream, cut into pieces as entries come in tree order; or, while additions are
/// pending that come only at the end (see [`crate::apps::Held`]), spooled to an unnamed
/// temporary file and merged with them in order at the end. Memory stays bounded either way.
struct TreeOut {
    codec: ChunkCodec,
    buf: Vec<u8>,
    pieces: Vec<ChunkId>,
    len: u64,
    stored: u64,
    spool: Option<std::io::BufWriter<File>>,
}

impl TreeOut {
    fn new(codec: ChunkCodec, spooled: bool) -> Result<TreeOut> {
        let spool = match spooled {
            true => Some(std::io::BufWriter::with_capacity(1 << 20, tempfile::tempfile().map_err(AgentError::Spool)?)),
            false => None,
        };
        Ok(TreeOut { codec, buf: Vec::with_capacity(PIECE * 2), pieces: Vec::new(), len: 0, stored: 0, spool })
    }

    fn push(&mut self, repo: &dyn BackupTarget, e: &TreeEntry) -> Result<()> {
        match &mut self.spool {
            Some(w) => {
                use std::io::Write;
                self.buf.clear();
                e.encode(&mut self.buf);
                w.write_all(&self.buf).map_err(AgentError::Spool)
            }
            None => self.emit(repo, e),
        }
    }

    fn emit(&mut self, repo: &dyn BackupTarget, e: &TreeEntry) -> Result<()> {
        e.encode(&mut self.buf);
        while self.buf.len() >= PIECE {
            let rest = self.buf.split_off(PIECE);
            let piece = std::mem::replace(&mut self.buf, rest);
            self.stored += store_piece(repo, &mut self.codec, &piece, &mut self.pieces)?;
            self.len += piece.len() as u64;
        }
        Ok(())
    }

    /// The pieces, the stream's length and the bytes stored, with `additions` (in tree order)
    /// merged in: an addition replaces an entry of the same path.
    fn finish(mut self, repo: &dyn BackupTarget, additions: Vec<TreeEntry>) -> Result<(Vec<ChunkId>, u64, u64)> {
        let mut adds = additions.into_iter().peekable();
        if let Some(w) = self.spool.take() {
            use std::io::{Read, Seek};
            let mut f = w.into_inner().map_err(|e| AgentError::Spool(e.into_error()))?;
            f.rewind().map_err(AgentError::Spool)?;
            self.buf.clear();
            let mut splitter = bulwark_repo::tree::RecordSplitter::default();
            let mut piece = vec![0u8; PIECE];
            loop {
                let n = f.read(&mut piece).map_err(AgentError::Spool)?;
                if n == 0 {
                    break;
                }
                let entries = splitter
                    .feed(&piece[..n])
                    .map_err(|e| AgentError::Spool(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                for e in entries {
                    let mut replaced = false;
                    while let Some(a) = adds.next_if(|a| tree_order(&a.path, &e.path).is_le()) {
                        replaced |= a.path == e.path;
                        self.emit(repo, &a)?;
                    }
                    if !replaced {
                        self.emit(repo, &e)?;
                    }
                }
            }
        }
        for a in adds {
            self.emit(repo, &a)?;
        }
        if !self.buf.is_empty() {
            let piece = std::mem::take(&mut self.buf);
            self.stored += store_piece(repo, &mut self.codec, &piece, &mut self.pieces)?;
            self.len += piece.len() as u64;
        }
        Ok((self.pieces, self.len, self.stored))
    }
}

/// Reads and stores what applications add to the point (see [`crate::apps::Addition`]): the
/// entries, in tree order, and what reading each took.
fn add_files(
    repo: &dyn BackupTarget,
    compression: Compression,
    additions: &[Addition],
    progress: Progress,
) -> std::result::Result<Vec<(TreeEntry, Outcome)>, String> {
    let names = Names::load();
    let mut codec = repo.codec(compression);
    let (mut buf, mut encoded) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(additions.len());
    for a in additions {
        let (abs, like) = match &a.content {
            AdditionContent::File(abs) => (abs, abs),
            AdditionContent::Bytes { like, .. } => (like, like),
        };
        let md = std::fs::symlink_metadata(like).map_err(|e| format!("{}: cannot read: {e}", like.display()))?;
        let mut entry = entry_for(like, a.rel.clone(), &md, &names)
            .ok_or_else(|| format!("{}: not a file or directory", like.display()))?;
        let o = match &a.content {
            AdditionContent::File(_) => {
                let job = Job::Entry(EntryJob { entry, abs: abs.clone(), reuse: None, link_first: false });
                let o = process(repo, &mut codec, job, &mut buf, &mut encoded, progress).map_err(|e| e.to_string())?;
                // Changing while read is expected (the WAL goes on past the backup's end); not
                // being read at all is a failure.
                match (&o.entry, &o.warning) {
                    (None, w) => return Err(w.clone().unwrap_or_else(|| format!("{}: not read", abs.display()))),
                    _ => o,
                }
            }
            AdditionContent::Bytes { data, .. } => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let now = bulwark_repo::tree::Time { sec: now.as_secs() as i64, nsec: now.subsec_nanos() };
                entry.kind = EntryKind::File;
                entry.mode = libc::S_IFREG | 0o600;
                (entry.atime, entry.mtime, entry.ctime) = (now, now, now);
                (entry.ino, entry.size, entry.rdev) = (0, data.len() as u64, 0);
                entry.xattrs.clear();
                let id = codec.digest(data);
                let mut o = Outcome { read: data.len() as u64, ..Default::default() };
                if !repo.has_chunk(&id).map_err(|e| e.to_string())? {
                    codec.encode_into(&id, data, &mut encoded);
                    repo.put_chunk(&id, &encoded).map_err(|e| e.to_string())?;
                    (o.new, o.stored) = (data.len() as u64, encoded.len() as u64);
                }
                entry.extents = vec![FileExtent { offset: 0, length: data.len() as u64, chunk: Some(id) }];
                o.entry = Some(entry);
                o
            }
        };
        out.push((o.entry.clone().expect("an entry"), o));
    }
    out.sort_by(|a, b| tree_order(&a.0.path, &b.0.path));
    Ok(out)
}

struct Walker<'a> {
    names: Names,
    exclude: &'a Exclude,
    cursor: Option<TreeCursor>,
    links: HashMap<(u64, u64), Vec<u8>>,
    seq: u64,
    batch: Vec<Job>,
    batch_bytes: u64,
    jobs: &'a Sender<Batch>,
    slots: &'a Sender<()>,
    stop: &'a AtomicBool,
    cancel: &'a AtomicBool,
    notes: &'a mut Vec<String>,
}

impl Walker<'_> {
    fn visit_root(&mut self, root: &Path) -> Result<()> {
        let md = std::fs::symlink_metadata(root).map_err(|e| AgentError::Source {
            path: root.into(),
            what: "cannot stat".into(),
            source: e,
        })?;
        // A snapshot's root is checked too: the source's was checked before it was taken.
        check_enterable(root)?;
        let entry = entry_for(root, Vec::new(), &md, &self.names).expect("a directory has an entry");
        self.send(entry, root.to_path_buf(), None, false)?;
        self.visit_dir(root, &[])
    }

    fn send(&mut self, entry: TreeEntry, abs: PathBuf, reuse: Option<Vec<FileExtent>>, link_first: bool) -> Result<()> {
        if entry.kind == EntryKind::File && reuse.is_none() {
            self.batch_bytes += entry.size;
        }
        self.push(Job::Entry(EntryJob { entry, abs, reuse, link_first }))
    }

    fn push(&mut self, job: Job) -> Result<()> {
        self.batch.push(job);
        if self.batch.len() >= BATCH || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.batch_bytes = 0;
        if self.slots.send(()).is_err() || self.jobs.send(Batch { seq: self.seq, jobs }).is_err() {
            return Err(AgentError::Cancelled);
        }
        self.seq += 1;
        Ok(())
    }

    fn warn(&mut self, what: String) -> Result<()> {
        self.push(Job::Warning(what))
    }

    fn previous(&mut self, rel: &[u8]) -> Option<TreeEntry> {
        let c = self.cursor.as_mut()?;
        loop {
            let ord = match c.peek() {
                Ok(Some(p)) => tree_order(&p.path, rel),
                Ok(None) => return None,
                Err(e) => {
                    self.notes.push(format!("previous tree unreadable ({e}): the rest is read in full"));
                    self.cursor = None;
                    return None;
                }
            };
            match ord {
                std::cmp::Ordering::Less => {
                    let _ = c.next_entry();
                }
                std::cmp::Ordering::Equal => return c.next_entry().ok().flatten(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }

    fn visit_dir(&mut self, dir: &Path, rel: &[u8]) -> Result<()> {
        let mut names: Vec<OsString> = match list_names(dir) {
            Ok(names) => names,
            Err(e) => return self.warn(format!("{}: cannot list: {e}", dir.display())),
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            if rel.is_empty() && name.as_bytes() == SNAPSHOT_DIR {
                continue;
            }
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            if self.exclude.matches(&child) {
                continue;
            }
            let abs = dir.join(&name);
            let md = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    self.warn(format!("{}: cannot read: {e}", abs.display()))?;
                    continue;
                }
            };
            let Some(mut entry) = entry_for(&abs, child.clone(), &md, &self.names) else {
                self.warn(format!("{}: socket skipped (a restore cannot recreate it)", abs.display()))?;
                continue;
            };
            let mut reuse = None;
            let mut link_first = false;
            if entry.kind == EntryKind::File {
                if md.nlink() > 1 {
                    match self.links.get(&(md.dev(), md.ino())) {
                        Some(first) => {
                            entry.kind = EntryKind::HardLink;
                            entry.target = first.clone();
                        }
                        None => {
                            self.links.insert((md.dev(), md.ino()), child.clone());
                            link_first = true;
                        }
                    }
                }
                if entry.kind == EntryKind::File {
                    if let Some(p) = self.previous(&child) {
                        let same = matches!(p.kind, EntryKind::File | EntryKind::HardLink)
                            && p.ino == entry.ino
                            && p.size == entry.size
                            && p.mtime == entry.mtime
                            && p.ctime == entry.ctime;
                        if same {
                            reuse = Some(p.extents);
                        }
                    }
                }
            }
            let is_dir = entry.kind == EntryKind::Dir;
            self.send(entry, abs.clone(), reuse, link_first)?;
            if is_dir {
                self.visit_dir(&abs, &child)?;
            }
        }
        Ok(())
    }
}

fn worker(
    repo: &dyn BackupTarget,
    compression: Compression,
    batches: Receiver<Batch>,
    done: Sender<Result<(u64, Vec<Outcome>)>>,
    progress: Progress,
) {
    let mut codec = repo.codec(compression);
    let (mut buf, mut encoded) = (Vec::new(), Vec::new());
    for mut batch in batches.iter() {
        let r: Result<Vec<Outcome>> = check_reuse(repo, &mut batch).and_then(|()| {
            batch.jobs.into_iter().map(|job| process(repo, &mut codec, job, &mut buf, &mut encoded, progress)).collect()
        });
        let failed = r.is_err();
        if done.send(r.map(|o| (batch.seq, o))).is_err() || failed {
            return;
        }
    }
}

/// An unchanged file is reused unread only if the repository still has every chunk of it, whole
/// (see [`bulwark_repo::Repository::chunk_is_sound`]): one question for the whole batch. A file
/// with a chunk lost or found damaged is read again, which stores the chunk again.
fn check_reuse(repo: &dyn BackupTarget, batch: &mut Batch) -> Result<()> {
    let mut ids: Vec<ChunkId> = Vec::new();
    for job in &batch.jobs {
        if let Job::Entry(EntryJob { reuse: Some(extents), .. }) = job {
            ids.extend(extents.iter().filter_map(|x| x.chunk));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    // The parent is pinned, so its chunks need no touch, only the check.
    let have = repo.parent_chunks_sound(&ids)?;
    if have.iter().all(|&h| h) {
        return Ok(());
    }
    let lost: std::collections::HashSet<ChunkId> =
        ids.iter().zip(have).filter_map(|(id, h)| (!h).then_some(*id)).collect();
    for job in &mut batch.jobs {
        if let Job::Entry(j) = job {
            if j.reuse.as_ref().is_some_and(|x| x.iter().any(|x| x.chunk.is_some_and(|c| lost.contains(&c)))) {
                j.reuse = None;
            }
        }
    }
    Ok(())
}

fn process(
    repo: &dyn BackupTarget,
    codec: &mut ChunkCodec,
    job: Job,
    buf: &mut Vec<u8>,
    encoded: &mut Vec<u8>,
    progress: Progress,
) -> Result<Outcome> {
    let job = match job {
        Job::Entry(j) => j,
        Job::Warning(w) => return Ok(Outcome { warning: Some(w), ..Default::default() }),
    };
    let mut o = Outcome { link_first: job.link_first, ..Default::default() };
    let mut e = job.entry;
    if e.kind != EntryKind::File {
        o.entry = Some(e);
        return Ok(o);
    }
    if let Some(extents) = job.reuse {
        // The parent is pinned, so its chunks stay: no need to touch them.
        progress(e.size);
        e.extents = extents;
        o.unchanged = true;
        o.entry = Some(e);
        return Ok(o);
    }
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(&job.abs)
        .or_else(|_| File::open(&job.abs))
    {
        Ok(f) => f,
        Err(err) => {
            o.warning = Some(format!("{}: cannot read: {err}", job.abs.display()));
            return Ok(o);
        }
    };
    let before = f.metadata().ok();
    let mut extents = Vec::new();
    let mut repo_error = None;
    let mut read_total = 0u64;
    // A file with as many blocks allocated as its size needs has no holes: skip the seeks.
    let dense = before.as_ref().is_some_and(|m| m.blocks() * 512 >= m.size());
    let ranges = if dense { vec![(0, e.size)] } else { data_ranges(&f, e.size) };
    for (start, end) in ranges {
        let mut emit = |offset: u64, data: &[u8]| -> std::io::Result<()> {
            let len = data.len() as u64;
            if crate::backup::is_zero(data) {
                extents.push(FileExtent { offset, length: len, chunk: None });
                return Ok(());
            }
            let id = codec.digest(data);
            let stored = (|| -> Result<u64> {
                if repo.has_chunk(&id)? {
                    return Ok(0);
                }
                codec.encode_into(&id, data, encoded);
                repo.put_chunk(&id, encoded)?;
                Ok(encoded.len() as u64)
            })();
            match stored {
                Ok(n) => {
                    if n > 0 {
                        o.new += len;
                        o.stored += n;
                    }
                    extents.push(FileExtent { offset, length: len, chunk: Some(id) });
                    progress(len);
                    Ok(())
                }
                Err(err) => {
                    repo_error = Some(err);
                    Err(std::io::Error::other("repository error"))
                }
            }
        };
        match chunk_range(&f, start, end, buf, &mut emit) {
            Ok(n) => read_total += n,
            Err(err) => {
                if let Some(r) = repo_error.take() {
                    return Err(r);
                }
                o.warning = Some(format!("{}: read failed: {err}", job.abs.display()));
                return Ok(o);
            }
        }
    }
    o.read = read_total;
    let after = f.metadata().ok();
    let sig = |m: &Option<std::fs::Metadata>| {
        m.as_ref().map(|m| (m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
    };
    if sig(&before) != sig(&after) {
        o.warning = Some(format!("{}: changed while being read", job.abs.display()));
    }
    e.extents = extents;
    o.entry = Some(e);
    Ok(o)
}
