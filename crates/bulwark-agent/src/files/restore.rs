//! File-level restore: all or part of a point's tree, with its metadata, into a directory.
//!
//! The tree is streamed once to check that every requested path is in the point, then again to
//! restore. Directories get their metadata when the walk leaves them (so restoring their
//! children does not disturb their times). Every chunk is checked against its digest as it is
//! read: damaged content is never written as if it were right. An existing target is only
//! written into with `overwrite`.
//!
//! One entry that cannot be restored (damaged content, a full disk, a name the target refuses)
//! does not stop the restore: a backup administrator wants everything that can be restored. It
//! is left out (a file appears only once whole) and listed in the report with the reason, and
//! the report is then incomplete. Only what makes every further entry pointless stops it: an
//! unreadable tree, an unreachable repository, a cancel.
//!
//! Nothing is ever written outside the target, whatever the tree says: an entry is created only
//! in a directory this restore made (or, with `overwrite`, found there as a real directory), so
//! no path passes through a symlink; a hard link's first path is resolved one component at a
//! time without following symlinks.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bulwark_repo::tree::{EntryKind, TreeEntry};
use bulwark_repo::{ChunkCodec, Compression, Manifest, RepoError};

use crate::target::{read_tree, BackupTarget};
use serde::Serialize;

use super::meta::{apply, MetaPolicy};
use crate::error::{AgentError, Result};
use crate::Progress;

#[derive(Debug, Clone, Default)]
pub struct FileRestoreOptions {
    /// Write into an existing, non-empty target, replacing entries of the same name.
    pub overwrite: bool,
    /// Restore only these paths (and what is under them); everything when empty.
    pub paths: Vec<String>,
    /// The files come from a computer that is not trusted: no device nodes or fifos, no
    /// set-id bits, no owners (the restoring user owns everything), no privilege-granting
    /// extended attributes. See [`MetaPolicy`].
    pub safe: bool,
}

/// An entry the restore left out, or could not restore completely.
#[derive(Debug, Clone, Serialize)]
pub struct NotRestored {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileRestoreReport {
    pub point: String,
    pub name: String,
    pub target: String,
    pub entries: u64,
    pub files: u64,
    pub written_bytes: u64,
    pub duration_s: f64,
    /// Whether every selected entry was restored: when false, `failed` says which were not.
    pub complete: bool,
    /// Entries not restored (the first [`MAX_LISTED`]), with the reason; the rest of the tree
    /// was restored.
    pub failed: Vec<NotRestored>,
    pub failed_total: u64,
    /// Metadata that could not be applied (for example an owner, when not restoring as root),
    /// and entries a safe restore skipped on purpose.
    pub warnings: Vec<String>,
}

/// How many failed entries and warnings a report lists (the totals count them all).
pub const MAX_LISTED: usize = 1000;

impl FileRestoreReport {
    /// One sentence for an incomplete restore: how many entries are missing and the first.
    pub fn incomplete_summary(&self) -> String {
        let first = self.failed.first().map(|f| format!("; first: {}: {}", f.path, f.reason)).unwrap_or_default();
        format!(
            "{} entr{} not restored (the rest of the tree was){first}",
            self.failed_total,
            if self.failed_total == 1 { "y was" } else { "ies were" }
        )
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_LISTED {
            self.warnings.push(w);
        }
    }

    fn fail(&mut self, path: &[u8], reason: String) {
        self.complete = false;
        self.failed_total += 1;
        if self.failed.len() < MAX_LISTED {
            let path = if path.is_empty() { ".".into() } else { String::from_utf8_lossy(path).into_owned() };
            self.failed.push(NotRestored { path, reason });
        }
    }
}

struct Selection(Vec<Vec<u8>>);

impl Selection {
    fn new(paths: &[String]) -> Self {
        Selection(paths.iter().map(|p| p.trim_matches('/').as_bytes().to_vec()).collect())
    }

    fn under(path: &[u8], base: &[u8]) -> bool {
        base.is_empty() || path == base || (path.starts_with(base) && path.get(base.len()) == Some(&b'/'))
    }

    /// Restored: the path is selected, under a selected path, or a parent of one.
    fn wants(&self, path: &[u8]) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| Self::under(path, s) || Self::under(s, path))
    }

    /// Restored with its content (not only as a parent directory).
    fn covers(&self, path: &[u8]) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| Self::under(path, s))
    }
}

/// Calls `f` for every entry at or under `path` (everything when `None`).
pub fn list_tree(
    repo: &dyn BackupTarget,
    m: &Manifest,
    path: Option<&str>,
    mut f: impl FnMut(&TreeEntry),
) -> Result<()> {
    let sel = Selection::new(&path.map(|p| vec![p.to_string()]).unwrap_or_default());
    read_tree(repo, m, |e| {
        if sel.covers(&e.path) {
            f(&e);
        }
        Ok(())
    })?;
    Ok(())
}

/// Restores the selected entries of the file point `m` into the directory `target`. Entries
/// that could not be restored are in the report (`complete` false); an error means the restore
/// could not go on at all (or never started: a requested path the point lacks, a non-empty
/// target without `overwrite`).
pub fn restore_files(
    repo: &dyn BackupTarget,
    m: &Manifest,
    target: &Path,
    opts: &FileRestoreOptions,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<FileRestoreReport> {
    let started = Instant::now();
    let sel = Selection::new(&opts.paths);
    check_selection(repo, m, &sel)?;
    let wopts = WriteOptions { overwrite: opts.overwrite, safe: opts.safe };
    let mut w = TreeWriter::new(target, &wopts, m.id.to_string(), m.name.clone(), progress)?;
    let mut chunks =
        Chunks { repo, codec: repo.point_codec(m, Compression::None), stored: Vec::new(), block: Vec::new() };
    read_tree(repo, m, |mut e| {
        if cancel.load(Ordering::Relaxed) {
            return Err(RepoError::Invalid { repo: repo.label(), reason: "cancelled".into() });
        }
        if !sel.wants(&e.path) {
            return Ok(());
        }
        // A hard link whose first path is not restored becomes a file of its own.
        if e.kind == EntryKind::HardLink && !sel.covers(&e.target) {
            e.kind = EntryKind::File;
        }
        w.entry(e, &mut chunks)
    })
    .map_err(|e| if cancel.load(Ordering::Relaxed) { AgentError::Cancelled } else { e.into() })?;
    let mut report = w.finish();
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The content of a file-level point's files: its chunks, each checked against its digest.
struct Chunks<'a> {
    repo: &'a dyn BackupTarget,
    codec: ChunkCodec,
    stored: Vec<u8>,
    block: Vec<u8>,
}

impl FileContent for Chunks<'_> {
    type Fatal = RepoError;

    fn write(
        &mut self,
        e: &TreeEntry,
        f: &std::fs::File,
        progress: Progress,
    ) -> std::result::Result<u64, Fail<RepoError>> {
        let mut written = 0;
        // Holes stay holes: only extents with content are written.
        for x in &e.extents {
            let Some(id) = x.chunk else { continue };
            match self.repo.read_chunk_into(&mut self.codec, &id, &mut self.stored, &mut self.block) {
                Ok(()) if self.block.len() as u64 == x.length => {}
                Ok(()) => {
                    let reason = "content has the wrong length for its place".to_string();
                    let err = RepoError::DamagedChunk { repo: self.repo.label(), id, reason };
                    return Err(Fail::Entry(format!("content at offset {} is damaged: {err}", x.offset)));
                }
                Err(err @ (RepoError::DamagedChunk { .. } | RepoError::MissingChunk { .. })) => {
                    return Err(Fail::Entry(format!("content at offset {} is damaged: {err}", x.offset)))
                }
                Err(err) => return Err(Fail::Fatal(err)),
            }
            f.write_all_at(&self.block, x.offset).map_err(|err| Fail::Entry(format!("write failed: {err}")))?;
            written += x.length;
            progress(x.length);
        }
        Ok(written)
    }
}

/// Every requested path must be in the point before anything is written.
fn check_selection(repo: &dyn BackupTarget, m: &Manifest, sel: &Selection) -> Result<()> {
    let mut found: HashSet<Vec<u8>> = HashSet::new();
    read_tree(repo, m, |e| {
        if sel.0.contains(&e.path) {
            found.insert(e.path.clone());
        }
        Ok(())
    })?;
    match sel.0.iter().find(|p| !found.contains(*p)) {
        Some(missing) => {
            Err(AgentError::NoSuchPath { point: m.id.to_string(), path: String::from_utf8_lossy(missing).into_owned() })
        }
        None => Ok(()),
    }
}

/// What a path is, in words, for a target that is not a directory.
fn kind_of(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a file"
    }
}

/// Creates the target directory, or checks that an existing one may be written into. Each
/// refusal names the target and what is wrong with it.
fn prepare_target(target: &Path, overwrite: bool) -> Result<()> {
    let bad = |reason: String| AgentError::BadTarget { path: target.into(), reason };
    let not_a_dir = |what: &str| {
        bad(format!(
            "is {what}, not a directory: a file-level point is restored into a directory (an absent or empty one, \
             or with --overwrite one whose entries of the same names are replaced){}",
            if what == "a block device" { "; a device takes a volume point" } else { "" }
        ))
    };
    let in_the_way = |a: &Path| {
        let what = a.metadata().map_or("not a directory", |md| kind_of(&md));
        bad(format!("cannot be created: {} on its path is {what}, not a directory", a.display()))
    };
    match std::fs::metadata(target) {
        Ok(md) if !md.is_dir() => Err(not_a_dir(kind_of(&md))),
        Ok(_) => match std::fs::read_dir(target).map(|mut rd| rd.next().is_some()) {
            Ok(true) if !overwrite => Err(bad("exists and is not empty; pass --overwrite to restore into it".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(bad(format!("is a directory this user cannot read ({e})"))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(target).map_err(|e| {
            // Say which part of the path is in the way, not only that creating it failed.
            match target.ancestors().skip(1).find(|a| a.symlink_metadata().is_ok()) {
                Some(a) if !a.is_dir() => in_the_way(a),
                Some(a) => bad(format!("cannot be created in {} ({e})", a.display())),
                None => bad(format!("cannot be created ({e})")),
            }
        }),
        Err(e) => match target.ancestors().skip(1).find(|a| a.symlink_metadata().is_ok() && !a.is_dir()) {
            Some(a) => Err(in_the_way(a)),
            None => Err(bad(format!("cannot be looked at ({e})"))),
        },
    }
}

/// Why one entry was not restored.
pub enum Fail<E> {
    /// Left out, with the reason; the restore goes on.
    Entry(String),
    /// The restore cannot go on (the source is unreachable or unusable).
    Fatal(E),
}

impl<E> From<String> for Fail<E> {
    fn from(reason: String) -> Self {
        Fail::Entry(reason)
    }
}

/// Where the bytes of the regular files a [`TreeWriter`] restores come from.
pub trait FileContent {
    /// What stops the whole restore (an unreachable repository).
    type Fatal;
    /// Writes the content of `e` into `f` (new, already `e.size` long: parts left unwritten read
    /// as zeroes and stay holes), calling `progress` as it goes; returns the bytes written.
    fn write(
        &mut self,
        e: &TreeEntry,
        f: &std::fs::File,
        progress: Progress,
    ) -> std::result::Result<u64, Fail<Self::Fatal>>;
}

/// How a [`TreeWriter`] treats the target and the entries' metadata (see [`FileRestoreOptions`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    pub overwrite: bool,
    pub safe: bool,
}

/// What happened to an entry that did not fail.
enum Done {
    Restored,
    /// A hard link made to a file restored earlier: its metadata is that file's.
    Linked,
    /// Left out on purpose (a device node in a safe restore); already warned about.
    Skipped,
}

/// Writes a tree of entries into a target directory, with the rules every file restore follows
/// (see the module's comment): entries come parent first, depth first (as a point's tree
/// streams); each is created only inside a directory this writer made; a regular file appears
/// only once whole; a directory gets its metadata when the walk leaves it.
pub struct TreeWriter<'a> {
    target: &'a Path,
    overwrite: bool,
    safe: bool,
    policy: MetaPolicy,
    progress: Progress<'a>,
    /// Directories this restore made (or found as real directories, with `overwrite`): the
    /// only places an entry may be created. Their metadata is applied when the walk leaves them.
    open_dirs: Vec<(PathBuf, TreeEntry)>,
    /// Directories that could not be restored: what is under them cannot be either.
    failed_dirs: HashSet<Vec<u8>>,
    report: FileRestoreReport,
}

impl<'a> TreeWriter<'a> {
    /// Checks the target (created if absent; an existing one must be an empty directory, or
    /// any directory with `overwrite`). The report names the point `point` (`name`).
    pub fn new(
        target: &'a Path,
        opts: &WriteOptions,
        point: String,
        name: String,
        progress: Progress<'a>,
    ) -> Result<TreeWriter<'a>> {
        prepare_target(target, opts.overwrite)?;
        Ok(TreeWriter {
            target,
            overwrite: opts.overwrite,
            safe: opts.safe,
            policy: MetaPolicy { safe: opts.safe },
            progress,
            open_dirs: Vec::new(),
            failed_dirs: HashSet::new(),
            report: FileRestoreReport {
                point,
                name,
                target: target.display().to_string(),
                entries: 0,
                files: 0,
                written_bytes: 0,
                duration_s: 0.0,
                complete: true,
                failed: Vec::new(),
                failed_total: 0,
                warnings: Vec::new(),
            },
        })
    }

    /// Applies the metadata of the directories still open and returns the report.
    pub fn finish(mut self) -> FileRestoreReport {
        self.close_dirs(None);
        self.report
    }

    /// Notes something about the restore that is not a failure (an entry skipped on purpose).
    pub fn warn(&mut self, w: String) {
        self.report.warn(w);
    }

    /// Notes an entry (at `path`, relative to the target) that could not be restored, or a
    /// directory whose entries could not all be read.
    pub fn fail(&mut self, path: &[u8], reason: String) {
        self.report.fail(path, reason);
    }

    /// Restores one entry: a hard link links to its `target`, a path this writer restored
    /// before (a hard link whose first path is not restored must come as a file of its own).
    /// An entry that cannot be restored is noted in the report; only a fatal error of `content`
    /// is returned.
    pub fn entry<C: FileContent>(&mut self, e: TreeEntry, content: &mut C) -> std::result::Result<(), C::Fatal> {
        self.close_dirs(Some(&e.path));
        let placed = self.check_place(&e).map(|()| self.dest(&e.path));
        let outcome = match placed {
            Ok(dest) => self.restore(&e, &dest, content).map(|done| (dest, done)),
            Err(reason) => Err(Fail::Entry(reason)),
        };
        match outcome {
            Ok((dest, Done::Restored)) => {
                self.report.entries += 1;
                if e.kind == EntryKind::Dir {
                    self.open_dirs.push((dest, e));
                } else {
                    self.apply(&dest, &e);
                }
            }
            Ok((_, Done::Linked)) => self.report.entries += 1,
            Ok((_, Done::Skipped)) => {}
            Err(Fail::Entry(reason)) => {
                if e.kind == EntryKind::Dir {
                    self.failed_dirs.insert(e.path.clone());
                }
                self.report.fail(&e.path, reason);
            }
            Err(Fail::Fatal(err)) => return Err(err),
        }
        Ok(())
    }

    fn dest(&self, path: &[u8]) -> PathBuf {
        if path.is_empty() {
            self.target.to_path_buf()
        } else {
            self.target.join(OsStr::from_bytes(path))
        }
    }

    fn apply(&mut self, dest: &Path, e: &TreeEntry) {
        for w in apply(dest, e, self.policy) {
            self.report.warn(w);
        }
    }

    /// Applies the metadata of the directories the walk has left: all of them when `next` is
    /// `None`, else those `next` is not under.
    fn close_dirs(&mut self, next: Option<&[u8]>) {
        while let Some((_, top)) = self.open_dirs.last() {
            if next.is_some_and(|p| Selection::under(p, &top.path) && p != top.path) {
                break;
            }
            let (p, d) = self.open_dirs.pop().expect("not empty");
            self.apply(&p, &d);
        }
    }

    /// A tree from the repository is authenticated, but a restore must stay inside the target
    /// whatever the records say: only plain relative paths, and only in a directory this
    /// restore holds open (so never through a symlink of the tree or of the target).
    fn check_place(&self, e: &TreeEntry) -> std::result::Result<(), String> {
        let unsafe_path =
            |p: &[u8]| p.starts_with(b"/") || p.split(|&c| c == b'/').any(|c| c.is_empty() || c == b"." || c == b"..");
        if e.path.is_empty() {
            return match e.kind {
                EntryKind::Dir => Ok(()),
                _ => Err("the top of the tree is not a directory; the tree is malformed".into()),
            };
        }
        if unsafe_path(&e.path) {
            return Err("would restore outside its directory (an absolute path or a `.`, `..` or empty \
                        component); the tree is malformed"
                .into());
        }
        if e.kind == EntryKind::HardLink && unsafe_path(&e.target) {
            return Err(format!(
                "a hard link to {:?}, outside its directory; the tree is malformed",
                String::from_utf8_lossy(&e.target)
            ));
        }
        let parent = match e.path.iter().rposition(|&c| c == b'/') {
            Some(i) => &e.path[..i],
            None => &[][..],
        };
        if self.open_dirs.last().is_some_and(|(_, d)| d.path == parent) {
            return Ok(());
        }
        if self.failed_dirs.contains(parent) {
            return Err(format!("its directory {:?} was not restored", String::from_utf8_lossy(parent)));
        }
        Err(format!(
            "would restore outside its directory: {:?} is not a directory this restore made (a symlink, \
             or out of order); the tree is malformed",
            String::from_utf8_lossy(parent)
        ))
    }

    fn restore<C: FileContent>(
        &mut self,
        e: &TreeEntry,
        dest: &Path,
        content: &mut C,
    ) -> std::result::Result<Done, Fail<C::Fatal>> {
        let io = |what: &str, err: std::io::Error| Fail::Entry(format!("{what}: {err}"));
        // A regular file replaces what is there only once it is whole (in `write_file`);
        // anything else is created in place.
        let writes_file = e.kind == EntryKind::File;
        let node = matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev | EntryKind::Fifo);
        if node && self.safe {
            self.report.warn(format!("{}: {} skipped (safe restore)", dest.display(), kind_name(e.kind)));
            return Ok(Done::Skipped);
        }
        if self.overwrite && e.kind != EntryKind::Dir && !e.path.is_empty() && !writes_file {
            replace(dest).map_err(|err| io("cannot replace what is there", err))?;
        }
        match e.kind {
            EntryKind::Dir => {
                if !e.path.is_empty() {
                    match std::fs::create_dir(dest) {
                        Ok(()) => {}
                        // An existing directory, not a symlink to one: children must land inside.
                        Err(err)
                            if err.kind() == std::io::ErrorKind::AlreadyExists
                                && self.overwrite
                                && std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) => {}
                        Err(err) => return Err(io("cannot create directory", err)),
                    }
                }
                Ok(Done::Restored)
            }
            EntryKind::HardLink => {
                link_beneath(self.target, &e.target, dest)?;
                self.report.files += 1;
                Ok(Done::Linked)
            }
            EntryKind::File => {
                self.write_file(e, dest, content)?;
                self.report.files += 1;
                Ok(Done::Restored)
            }
            EntryKind::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&e.target), dest)
                    .map_err(|err| io("cannot create symlink", err))?;
                Ok(Done::Restored)
            }
            EntryKind::CharDev | EntryKind::BlockDev | EntryKind::Fifo => {
                let ft = match e.kind {
                    EntryKind::CharDev => rustix::fs::FileType::CharacterDevice,
                    EntryKind::BlockDev => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let mode = rustix::fs::Mode::from_raw_mode(e.mode & 0o7777);
                rustix::fs::mknodat(rustix::fs::CWD, dest, ft, mode, e.rdev)
                    .map_err(|err| io("cannot create node", err.into()))?;
                Ok(Done::Restored)
            }
        }
    }

    /// Writes a regular file under a short temporary name in its directory and moves it into
    /// place only when whole. (A name built from the file's own would be too long for a file
    /// whose name already has the 255 bytes Linux allows.)
    fn write_file<C: FileContent>(
        &mut self,
        e: &TreeEntry,
        dest: &Path,
        content: &mut C,
    ) -> std::result::Result<(), Fail<C::Fatal>> {
        let io = |what: &str, err: std::io::Error| Fail::Entry(format!("{what}: {err}"));
        let dir = dest.parent().expect("an entry below the target has a parent");
        let (f, staged) = create_staged(dir).map_err(|err| io("cannot create a temporary file", err))?;
        f.set_len(e.size).map_err(|err| io("cannot size", err))?;
        self.report.written_bytes += content.write(e, &f, self.progress)?;
        drop(f);
        if std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
            replace(dest).map_err(|err| io("cannot replace the directory there", err))?;
        }
        std::fs::rename(&staged.0, dest).map_err(|err| io("cannot move into place", err))?;
        staged.keep();
        Ok(())
    }
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::CharDev => "character device",
        EntryKind::BlockDev => "block device",
        EntryKind::Fifo => "fifo",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::File | EntryKind::HardLink => "file",
    }
}

/// Removes what is at `dest` (a directory with everything in it; a symlink itself, never
/// what it points to).
fn replace(dest: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(dest),
        Ok(_) => std::fs::remove_file(dest),
        Err(_) => Ok(()),
    }
}

/// Makes `dest` a hard link of the regular file at `first` (a path relative to `target`),
/// resolving `first` one component at a time from `target` without following a symlink, so
/// the link can only be to a file inside the target, never one a symlink leads to.
fn link_beneath(target: &Path, first: &[u8], dest: &Path) -> std::result::Result<(), String> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let shown = String::from_utf8_lossy(first);
    let refuse = |why: String| format!("refused: a hard link to {shown:?}, which {why}");
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir: OwnedFd = rustix::fs::openat(rustix::fs::CWD, target, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| format!("cannot open the target: {e}"))?;
    let mut parts = first.split(|&c| c == b'/').peekable();
    while let Some(part) = parts.next() {
        let part = OsStr::from_bytes(part);
        if parts.peek().is_none() {
            let st = rustix::fs::statat(&dir, part, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| refuse(format!("is not there ({e})")))?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
                return Err(refuse("is not a regular file".into()));
            }
            return rustix::fs::linkat(&dir, part, rustix::fs::CWD, dest, AtFlags::empty())
                .map_err(|e| format!("cannot link to {shown:?}: {e}"));
        }
        // With O_NOFOLLOW and O_DIRECTORY a symlink is refused rather than followed; the
        // fstat is a second guard (O_PATH opens a symlink itself on some kernels).
        dir = rustix::fs::openat(&dir, part, flags, Mode::empty())
            .map_err(|e| refuse(format!("passes through something that is not a directory ({e})")))?;
        let st = rustix::fs::fstat(&dir).map_err(|e| format!("cannot inspect {shown:?}: {e}"))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return Err(refuse("passes through something that is not a directory".into()));
        }
    }
    Err(refuse("is empty".into()))
}

/// A file being restored under a temporary name; removed unless kept.
struct Staged(PathBuf, bool);

impl Staged {
    fn keep(mut self) {
        self.1 = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A new file with a short, unused name in `dir`, readable only by the restoring user until
/// its metadata is applied.
fn create_staged(dir: &Path) -> std::io::Result<(std::fs::File, Staged)> {
    loop {
        let tmp = dir.join(crate::restore::staging_name());
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(f) => return Ok((f, Staged(tmp, false))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}
