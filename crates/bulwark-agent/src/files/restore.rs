//! File-level restore: all or part of a point's tree, with its metadata, into a directory.
//!
//! The tree is streamed once to check that every requested path is in the point, then again to
//! restore. Directories get their metadata when the walk leaves them (so restoring their
//! children does not disturb their times). Every chunk is checked against its digest as it is
//! read: damaged content stops the restore with the file named, never written as if it were
//! right. An existing target is only written into with `overwrite`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bulwark_repo::tree::{EntryKind, TreeEntry};
use bulwark_repo::{Compression, Manifest};

use crate::target::{read_tree, BackupTarget};
use serde::Serialize;

use super::meta::apply;
use crate::error::{AgentError, Result};
use crate::Progress;

#[derive(Debug, Clone, Default)]
pub struct FileRestoreOptions {
    /// Write into an existing, non-empty target, replacing entries of the same name.
    pub overwrite: bool,
    /// Restore only these paths (and what is under them); everything when empty.
    pub paths: Vec<String>,
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
    /// Metadata that could not be applied (for example an owner, when not restoring as root).
    pub warnings: Vec<String>,
}

impl FileRestoreReport {
    /// Keeps the first hundred warnings.
    fn warn(&mut self, w: String) {
        if self.warnings.len() < 100 {
            self.warnings.push(w);
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
    let terr = |what: String, e: std::io::Error| AgentError::Target { path: target.into(), what, source: e };
    // Every requested path must be in the point before anything is written.
    let mut found: HashSet<Vec<u8>> = HashSet::new();
    read_tree(repo, m, |e| {
        if sel.0.contains(&e.path) {
            found.insert(e.path.clone());
        }
        Ok(())
    })?;
    if let Some(missing) = sel.0.iter().find(|p| !found.contains(*p)) {
        return Err(AgentError::BadTarget {
            path: target.into(),
            reason: format!("point {} has no path {:?}; nothing was written", m.id, String::from_utf8_lossy(missing)),
        });
    }
    match std::fs::read_dir(target) {
        Ok(mut rd) => {
            if rd.next().is_some() && !opts.overwrite {
                return Err(AgentError::BadTarget {
                    path: target.into(),
                    reason: "exists and is not empty; pass --overwrite to restore into it".into(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| terr("cannot create".into(), e))?
        }
        Err(e) => return Err(terr("is not a usable directory".into(), e)),
    }

    let mut report = FileRestoreReport {
        point: m.id.to_string(),
        name: m.name.clone(),
        target: target.display().to_string(),
        entries: 0,
        files: 0,
        written_bytes: 0,
        duration_s: 0.0,
        warnings: Vec::new(),
    };
    let mut codec = repo.point_codec(m, Compression::None);
    let (mut stored, mut block) = (Vec::new(), Vec::new());
    // Directories whose metadata is applied when the walk leaves them.
    let mut open_dirs: Vec<(PathBuf, TreeEntry)> = Vec::new();
    read_tree(repo, m, |e| {
        if cancel.load(Ordering::Relaxed) {
            return Err(bulwark_repo::RepoError::Invalid { repo: repo.label(), reason: "cancelled".into() });
        }
        if !sel.wants(&e.path) {
            return Ok(());
        }
        while let Some((_, top)) = open_dirs.last() {
            if Selection::under(&e.path, &top.path) && e.path != top.path {
                break;
            }
            let (p, d) = open_dirs.pop().expect("not empty");
            if let Err(w) = apply(&p, &d) {
                report.warn(w);
            }
        }
        // A tree from the repository is authenticated, but restore must stay inside the target
        // whatever the records say: only plain relative paths, and only under a directory this
        // restore created (a symlink of the tree or of the target never leads outside).
        let unsafe_path =
            |p: &[u8]| p.starts_with(b"/") || p.split(|&c| c == b'/').any(|c| c.is_empty() || c == b"." || c == b"..");
        let parent_ok = match e.path.iter().rposition(|&c| c == b'/') {
            _ if e.path.is_empty() => true,
            Some(i) => open_dirs.last().is_some_and(|(_, d)| d.path == e.path[..i]),
            None => open_dirs.last().is_some_and(|(_, d)| d.path.is_empty()),
        };
        if (!e.path.is_empty() && unsafe_path(&e.path))
            || (e.kind == EntryKind::HardLink && unsafe_path(&e.target))
            || !parent_ok
        {
            return Err(bulwark_repo::RepoError::DamagedPoint {
                repo: repo.label(),
                point: m.id.to_string(),
                reason: format!(
                    "tree entry {:?} would restore outside its directory; the restore stopped there",
                    e.path_lossy()
                ),
            });
        }
        let dest = if e.path.is_empty() { target.to_path_buf() } else { target.join(OsStr::from_bytes(&e.path)) };
        let outcome = restore_entry(
            repo,
            &mut codec,
            &mut stored,
            &mut block,
            &e,
            &dest,
            target,
            &sel,
            opts.overwrite,
            progress,
            &mut report,
        );
        match outcome {
            Ok(()) => {}
            Err(Fail::Data(err)) => {
                return Err(bulwark_repo::RepoError::DamagedPoint {
                    repo: repo.label(),
                    point: m.id.to_string(),
                    reason: format!("{}: {err}; the restore stopped there", e.path_lossy()),
                })
            }
            Err(Fail::Io(what, err)) => {
                return Err(bulwark_repo::RepoError::Invalid {
                    repo: repo.label(),
                    reason: format!("{}: {what}: {err}", dest.display()),
                })
            }
        }
        report.entries += 1;
        if e.kind == EntryKind::Dir {
            open_dirs.push((dest, e));
        } else if e.kind != EntryKind::HardLink {
            if let Err(w) = apply(&dest, &e) {
                report.warn(w);
            }
        }
        Ok(())
    })?;
    while let Some((p, d)) = open_dirs.pop() {
        if let Err(w) = apply(&p, &d) {
            report.warn(w);
        }
    }
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

enum Fail {
    Data(bulwark_repo::RepoError),
    Io(&'static str, std::io::Error),
}

#[allow(clippy::too_many_arguments)]
fn restore_entry(
    repo: &dyn BackupTarget,
    codec: &mut bulwark_repo::ChunkCodec,
    stored: &mut Vec<u8>,
    block: &mut Vec<u8>,
    e: &TreeEntry,
    dest: &Path,
    target: &Path,
    sel: &Selection,
    overwrite: bool,
    progress: Progress,
    report: &mut FileRestoreReport,
) -> std::result::Result<(), Fail> {
    let io = |what: &'static str| move |err: std::io::Error| Fail::Io(what, err);
    let replace = |dest: &Path| -> std::result::Result<(), Fail> {
        match std::fs::symlink_metadata(dest) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(dest).map_err(io("cannot replace")),
            Ok(_) => std::fs::remove_file(dest).map_err(io("cannot replace")),
            Err(_) => Ok(()),
        }
    };
    // A regular file replaces what is there only once it is whole (below); anything else is
    // created in place.
    let writes_file = matches!(e.kind, EntryKind::File) || (e.kind == EntryKind::HardLink && !sel.covers(&e.target));
    if overwrite && e.kind != EntryKind::Dir && !e.path.is_empty() && !writes_file {
        replace(dest)?;
    }
    match e.kind {
        EntryKind::Dir => {
            if !e.path.is_empty() {
                match std::fs::create_dir(dest) {
                    Ok(()) => {}
                    // An existing directory, not a symlink to one: children must land inside.
                    Err(err)
                        if err.kind() == std::io::ErrorKind::AlreadyExists
                            && overwrite
                            && std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) => {}
                    Err(err) => return Err(Fail::Io("cannot create directory", err)),
                }
            }
        }
        EntryKind::HardLink if sel.covers(&e.target) => {
            std::fs::hard_link(target.join(OsStr::from_bytes(&e.target)), dest).map_err(io("cannot link"))?;
            report.files += 1;
        }
        EntryKind::File | EntryKind::HardLink => {
            let name = dest.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
            let mut tmp_name = b".".to_vec();
            tmp_name.extend_from_slice(&name);
            tmp_name.extend_from_slice(format!(".bulwark-restore-{}", std::process::id()).as_bytes());
            let tmp = dest.with_file_name(OsStr::from_bytes(&tmp_name));
            let mut staged = Staged(Some(tmp.clone()));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("cannot create"))?;
            // Holes stay holes: only extents with content are written.
            f.set_len(e.size).map_err(io("cannot size"))?;
            for x in &e.extents {
                let Some(id) = x.chunk else { continue };
                repo.read_chunk_into(codec, &id, stored, block).map_err(Fail::Data)?;
                if block.len() as u64 != x.length {
                    return Err(Fail::Data(bulwark_repo::RepoError::DamagedChunk {
                        repo: repo.label(),
                        id,
                        reason: "content has the wrong length for its place".into(),
                    }));
                }
                f.write_all_at(block, x.offset).map_err(io("write failed"))?;
                report.written_bytes += x.length;
                progress(x.length);
            }
            drop(f);
            if std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
                replace(dest)?;
            }
            std::fs::rename(&tmp, dest).map_err(io("cannot move into place"))?;
            staged.0 = None;
            report.files += 1;
            if e.kind == EntryKind::HardLink {
                // Restored as a file of its own (its first link was not selected): metadata too.
                if let Err(w) = apply(dest, e) {
                    report.warn(w);
                }
            }
        }
        EntryKind::Symlink => {
            std::os::unix::fs::symlink(OsStr::from_bytes(&e.target), dest).map_err(io("cannot create symlink"))?
        }
        EntryKind::CharDev | EntryKind::BlockDev | EntryKind::Fifo => {
            let ft = match e.kind {
                EntryKind::CharDev => rustix::fs::FileType::CharacterDevice,
                EntryKind::BlockDev => rustix::fs::FileType::BlockDevice,
                _ => rustix::fs::FileType::Fifo,
            };
            rustix::fs::mknodat(rustix::fs::CWD, dest, ft, rustix::fs::Mode::from_raw_mode(e.mode & 0o7777), e.rdev)
                .map_err(|err| Fail::Io("cannot create node", err.into()))?;
        }
    }
    Ok(())
}

/// A file being restored under a temporary name; removed unless moved into place.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
