//! Volume restore: every block of a point back onto a block device or into an image file,
//! byte-identical to the source at backup time.
//!
//! Workers fetch, authenticate, decompress and re-hash chunks in parallel and write each block at
//! its offset, so no reordering is needed. A block whose chunk is damaged or missing stops the
//! restore: wrong data is never written. A file target is written under a temporary name and
//! renamed into place only when complete, so a failed restore leaves no half file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bulwark_repo::{BlockRef, Compression, Manifest};

use crate::target::BackupTarget;
use crossbeam_channel::bounded;
use serde::Serialize;

use crate::error::{AgentError, Result};
use crate::source::{open_device_target, Target, VolumeKind};
use crate::Progress;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace an existing, non-empty target file.
    pub overwrite: bool,
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        // Twice the cores: a restore waits on reading chunks from the repository's disk as much
        // as it computes, and more readers keep the disk busy while others decompress.
        RestoreOptions { overwrite: false, threads: crate::default_threads() * 2 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub point: String,
    pub name: String,
    pub target: String,
    pub volume_size: u64,
    pub written_bytes: u64,
    pub zero_bytes: u64,
    pub duration_s: f64,
    /// What the operator should know: a partition table adapted to a larger disk.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

const JOB_BLOCKS: usize = 8;

/// Restores the point `m` onto `target` (a block device, or a file created or replaced).
pub fn restore_volume(
    repo: &dyn BackupTarget,
    m: &Manifest,
    target: &Path,
    opts: &RestoreOptions,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<RestoreReport> {
    let started = Instant::now();
    // Authenticate the whole index before the target is touched.
    let mut index = repo.open_index(m)?;
    let header = index.header();
    let (out, staged) = open_target(target, m.volume_size, opts.overwrite)?;
    let staged = StagedFile(staged);

    let bs = header.block_size.bytes() as u64;
    let written = AtomicU64::new(0);
    let zero = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<(u64, AgentError)>> = Mutex::new(None);
    let zeroes = vec![0u8; if out.fresh { 0 } else { bs as usize }];
    let fail = |block: u64, e: AgentError| {
        stop.store(true, Ordering::Relaxed);
        let mut f = failure.lock().expect("no panics while held");
        if f.as_ref().is_none_or(|(b, _)| block < *b) {
            *f = Some((block, e));
        }
    };

    std::thread::scope(|s| {
        let (tx, rx) = bounded::<Vec<(u64, BlockRef)>>(opts.threads.max(1) * 2);
        for _ in 0..opts.threads.max(1) {
            let rx = rx.clone();
            let (out, written, zero, zeroes, stop, fail) = (&out, &written, &zero, &zeroes, &stop, &fail);
            s.spawn(move || {
                let mut codec = repo.point_codec(m, Compression::None);
                let (mut stored, mut d) = (Vec::new(), Vec::new());
                for job in rx.iter() {
                    for (block, r) in job {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let len = header.block_len(block);
                        let offset = block * bs;
                        let data = match r {
                            BlockRef::Zero => {
                                zero.fetch_add(len as u64, Ordering::Relaxed);
                                progress(len as u64);
                                if out.fresh {
                                    continue;
                                }
                                &zeroes[..len]
                            }
                            BlockRef::Chunk(id) => match repo.read_chunk_into(&mut codec, &id, &mut stored, &mut d) {
                                Ok(()) if d.len() == len => {
                                    write_block(out, target, offset, &d, written, progress, block, fail);
                                    continue;
                                }
                                Ok(()) => {
                                    let e = bulwark_repo::RepoError::DamagedChunk {
                                        repo: repo.label(),
                                        id,
                                        reason: "block has the wrong length for its place".into(),
                                    };
                                    fail(block, e.into());
                                    return;
                                }
                                Err(e) => {
                                    fail(block, e.into());
                                    return;
                                }
                            },
                        };
                        write_block(out, target, offset, data, written, progress, block, fail);
                    }
                }
            });
        }
        drop(rx);
        let mut block = 0u64;
        let mut job = Vec::with_capacity(JOB_BLOCKS);
        loop {
            if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                break;
            }
            match index.next_block() {
                Ok(Some(r)) => {
                    job.push((block, r));
                    block += 1;
                    if job.len() == JOB_BLOCKS && tx.send(std::mem::take(&mut job)).is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    if !job.is_empty() {
                        let _ = tx.send(std::mem::take(&mut job));
                    }
                    break;
                }
                Err(e) => {
                    fail(
                        block,
                        bulwark_repo::RepoError::Io { repo: repo.label(), what: "reading the index".into(), source: e }
                            .into(),
                    );
                    break;
                }
            }
        }
    });

    let note = match out.kind {
        VolumeKind::BlockDevice => "; the device holds a partial restore",
        VolumeKind::ImageFile => "; nothing was left at the target",
    };
    if let Some((block, cause)) = failure.into_inner().expect("no panics while held") {
        return Err(AgentError::RestoreFailed {
            point: m.id.to_string(),
            block,
            offset: block * bs,
            cause: Box::new(cause),
            note,
        });
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(AgentError::Cancelled);
    }
    let terr = |what: &str, e| AgentError::Target { path: target.into(), what: what.into(), source: e };
    out.file.sync_all().map_err(|e| terr("flushing to disk", e))?;
    let mut notes = Vec::new();
    if out.kind == VolumeKind::BlockDevice {
        if out.size > m.volume_size {
            // A whole disk onto a larger one: its partition table made to end where the disk does.
            notes.extend(
                crate::partition_table::grow_gpt(&out.file, m.volume_size, out.size)
                    .map_err(|e| terr("moving the partition table's backup copy to the end", e))?,
            );
        }
        notes.extend(crate::partition_table::reread(&out.file, target));
    }
    staged.commit(target).map_err(|e| terr("renaming into place", e))?;
    Ok(RestoreReport {
        point: m.id.to_string(),
        name: m.name.clone(),
        target: target.display().to_string(),
        volume_size: m.volume_size,
        written_bytes: written.into_inner(),
        zero_bytes: zero.into_inner(),
        duration_s: started.elapsed().as_secs_f64(),
        notes,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_block(
    out: &Target,
    target: &Path,
    offset: u64,
    data: &[u8],
    written: &AtomicU64,
    progress: Progress,
    block: u64,
    fail: &(dyn Fn(u64, AgentError) + Sync),
) {
    match out.file.write_all_at(data, offset) {
        Ok(()) => {
            written.fetch_add(data.len() as u64, Ordering::Relaxed);
            progress(data.len() as u64);
        }
        Err(e) => fail(
            block,
            AgentError::Target { path: target.into(), what: format!("write failed at offset {offset}"), source: e },
        ),
    }
}

/// A file being restored under a temporary name; removed unless committed.
struct StagedFile(Option<(PathBuf, PathBuf)>);

impl StagedFile {
    fn commit(mut self, _target: &Path) -> std::io::Result<()> {
        if let Some((tmp, dest)) = self.0.take() {
            std::fs::rename(&tmp, &dest)?;
            if let Some(dir) = dest.parent() {
                File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?.sync_all()?;
            }
        }
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.0.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A short name for a file being restored, unique among the restores of this process (the
/// agent runs several at once): short, because the name it stands in for may already be as long
/// as Linux allows.
pub(crate) fn staging_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(".bulwark-restore-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Opens the target; for files, returns the staged path to rename into place on success.
fn open_target(path: &Path, size: u64, overwrite: bool) -> Result<(Target, Option<(PathBuf, PathBuf)>)> {
    let terr = |what: &str, e| AgentError::Target { path: path.into(), what: what.into(), source: e };
    match std::fs::metadata(path) {
        Ok(md) if md.file_type().is_block_device() => {
            return Ok((open_device_target(path, size, overwrite)?, None));
        }
        Ok(md) if md.is_file() => {
            if md.len() > 0 && !overwrite {
                return Err(AgentError::BadTarget {
                    path: path.into(),
                    reason: "exists and is not empty; pass --overwrite to replace it".into(),
                });
            }
        }
        Ok(_) => {
            return Err(AgentError::BadTarget {
                path: path.into(),
                reason: "is neither a block device nor a file".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(terr("cannot inspect", e)),
    }
    if path.file_name().is_none() {
        return Err(AgentError::BadTarget { path: path.into(), reason: "has no file name".into() });
    }
    let tmp = path.with_file_name(staging_name());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| terr("cannot create", e))?;
    let staged = Some((tmp.clone(), path.to_path_buf()));
    if let Err(e) = file.set_len(size) {
        let _ = std::fs::remove_file(&tmp);
        return Err(terr("cannot size the new file", e));
    }
    Ok((Target { file, fresh: true, kind: VolumeKind::ImageFile, size }, staged))
}
