//! The health check: re-reads every chunk the chosen points reference, re-hashes it, and names
//! each damaged point with the block ranges (or files) a restore would get wrong.
//!
//! What it learns it leaves behind: every chunk found whole is marked checked (a backup builds
//! on it without reading it again), and every chunk found damaged is set aside
//! ([`crate::Repository::quarantine_chunk`]), so the next backup that has its data stores it
//! again, which makes the damaged points whole again too. A repository
//! the user may only read is checked all the same; nothing is marked or moved.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkId, Compression};
use crate::error::{RepoError, Result};
use crate::index::BlockRef;
use crate::point::{Manifest, PointKind};
use crate::Repository;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamagedRange {
    pub first_block: u64,
    pub last_block: u64,
    /// Byte offset and length of the range in the volume.
    pub offset: u64,
    pub length: u64,
    /// The damaged chunks behind the range (at most 8 shown).
    pub chunks: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointHealth {
    pub point: String,
    pub name: Option<String>,
    pub ok: bool,
    /// Damage to the point's own metadata (manifest or index), if any.
    pub problem: Option<String>,
    pub damaged_ranges: Vec<DamagedRange>,
    /// For a file point: the files whose content is damaged (at most 100 listed), with the
    /// first damaged chunk of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_files: Vec<DamagedFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamagedChunk {
    pub chunk: String,
    /// The computer whose keys it is under, where computers are isolated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamagedFile {
    pub path: String,
    pub chunk: String,
    pub reason: String,
}

impl PointHealth {
    fn problem(point: String, name: Option<String>, problem: String) -> PointHealth {
        PointHealth { point, name, ok: false, problem: Some(problem), damaged_ranges: vec![], damaged_files: vec![] }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub points: Vec<PointHealth>,
    pub chunks_checked: usize,
    /// Chunks missing or damaged.
    pub chunks_damaged: usize,
    /// Each of them (what `verify --repair` looks for in a source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_chunks: Vec<DamagedChunk>,
    /// Damaged chunks moved aside, so the next backup with their data stores them again.
    pub chunks_quarantined: usize,
    /// Why damaged chunks were left in place (a repository this user may only read), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_failed: Option<String>,
    pub bytes_checked: u64,
}

/// Which points to check.
pub enum Selection<'a> {
    All,
    One(&'a str),
}

/// Runs the health check with `threads` readers; `progress` receives plaintext bytes checked.
pub fn verify(
    repo: &Repository,
    which: Selection,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport> {
    let mut health = Vec::new();
    let mut manifests: Vec<Manifest> = Vec::new();
    match which {
        Selection::One(spec) => manifests.push(repo.resolve(spec)?),
        Selection::All => {
            let catalog = repo.catalog()?;
            manifests = catalog.points;
            for d in catalog.damaged {
                let problem = format!(
                    "{}; the point cannot be restored. Its index and chunks are kept; `bulwark forget --point {}` \
                     removes it",
                    d.reason, d.id
                );
                health.push(PointHealth::problem(d.id.to_string(), None, problem));
            }
            for id in catalog.orphans {
                let problem = format!(
                    "its manifest is gone (deleted or lost, not forgotten): the point cannot be restored. Its index \
                     and chunks are kept; `bulwark forget --point {id}` removes them"
                );
                health.push(PointHealth::problem(id.to_string(), None, problem));
            }
        }
    }

    // Pass 1: every distinct chunk, from every readable index, with the keys that read it (one
    // computer's, where computers are isolated).
    let mut wanted: HashSet<Scoped> = HashSet::new();
    let mut readable = Vec::new();
    for m in manifests {
        match collect(repo, &m, &mut wanted) {
            Ok(()) => readable.push(m),
            Err(e) => {
                // Chunk errors here are the file tree's pieces: name them as the tree's.
                let problem = match e {
                    RepoError::MissingChunk { id, .. } => format!("its file tree is damaged: piece {id} is missing"),
                    RepoError::DamagedChunk { id, reason, .. } => {
                        format!("its file tree is damaged: piece {id}: {reason}")
                    }
                    RepoError::DamagedPoint { reason, .. } => reason,
                    other => other.to_string(),
                };
                let problem = match m.kind {
                    PointKind::Files => format!("{problem}; its files cannot be listed or restored"),
                    PointKind::Volume => format!("{problem}; it cannot be restored"),
                };
                health.push(PointHealth::problem(m.id.to_string(), Some(m.name.clone()), problem))
            }
        }
    }

    // Pass 2: check the chunks, in parallel.
    let ids: Vec<Scoped> = wanted.into_iter().collect();
    let next = AtomicUsize::new(0);
    let damaged: Mutex<HashMap<Scoped, String>> = Mutex::new(HashMap::new());
    let bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut codecs = HashMap::new();
                let (mut stored, mut block) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, scope)) = ids.get(i) else { break };
                    let codec = codecs
                        .entry(scope.clone())
                        .or_insert_with(|| repo.with_scope(scope.as_deref()).codec(Compression::None));
                    match repo.read_chunk_into(codec, id, &mut stored, &mut block) {
                        Ok(()) => {
                            bytes.fetch_add(block.len() as u64, Ordering::Relaxed);
                            progress(block.len() as u64);
                        }
                        Err(e) => {
                            let reason = match e {
                                RepoError::MissingChunk { .. } => "missing".to_string(),
                                RepoError::DamagedChunk { reason, .. } => reason,
                                other => format!("{UNREADABLE}{other}"),
                            };
                            damaged.lock().expect("no panics while held").insert((*id, scope.clone()), reason);
                        }
                    }
                }
            });
        }
    });
    let damaged = damaged.into_inner().expect("no panics while held");
    let (mut quarantined, mut quarantine_failed) = (0, None);
    for ((id, scope), reason) in &damaged {
        if reason == "missing" || reason.starts_with(UNREADABLE) {
            continue;
        }
        // A backup may have stored a good copy since: check again right before moving it.
        let scoped = repo.with_scope(scope.as_deref());
        if scoped.read_chunk(&mut scoped.codec(Compression::None), id).is_ok() {
            continue;
        }
        match repo.quarantine_chunk(id) {
            Ok(true) => quarantined += 1,
            Ok(false) => {}
            Err(e) => quarantine_failed = Some(format!("chunk {id} not moved aside: {e}")),
        }
    }

    // Pass 3: map damaged chunks back onto each point's blocks.
    for m in readable {
        let ranges = if damaged.is_empty() { Vec::new() } else { ranges_of(repo, &m, &damaged)? };
        let mut files = Vec::new();
        if !damaged.is_empty() && m.kind == PointKind::Files {
            repo.read_tree(&m, |e| {
                let bad = e.extents.iter().find_map(|x| {
                    let c = x.chunk?;
                    damaged.get(&(c, m.key_scope.clone())).map(|reason| (c, reason))
                });
                if let (Some((c, reason)), true) = (bad, files.len() < 100) {
                    files.push(DamagedFile { path: e.path_lossy(), chunk: c.to_hex(), reason: reason.clone() });
                }
                Ok(())
            })?;
        }
        health.push(PointHealth {
            point: m.id.to_string(),
            name: Some(m.name.clone()),
            ok: ranges.is_empty() && files.is_empty(),
            problem: None,
            damaged_ranges: ranges,
            damaged_files: files,
        });
    }
    health.sort_by(|a, b| a.point.cmp(&b.point));
    Ok(VerifyReport {
        ok: health.iter().all(|h| h.ok),
        points: health,
        chunks_checked: ids.len(),
        chunks_damaged: damaged.len(),
        damaged_chunks: {
            let mut v: Vec<DamagedChunk> = damaged
                .iter()
                .map(|((id, scope), reason)| DamagedChunk {
                    chunk: id.to_hex(),
                    scope: scope.clone(),
                    reason: reason.clone(),
                })
                .collect();
            v.sort_by(|a, b| a.chunk.cmp(&b.chunk));
            v
        },
        chunks_quarantined: quarantined,
        quarantine_failed,
        bytes_checked: bytes.into_inner(),
    })
}

/// Marks a reason as a read that failed (an I/O error), not content found wrong: such a chunk
/// is not moved aside, the disk may read it next time.
const UNREADABLE: &str = "unreadable: ";

/// A chunk and the computer whose keys read it (`None`: the master key). The same name under
/// two computers' keys is two chunks to check, each with its own keys.
type Scoped = (ChunkId, Option<String>);

fn collect(repo: &Repository, m: &Manifest, into: &mut HashSet<Scoped>) -> Result<()> {
    repo.for_each_reference(m, |id| {
        into.insert((id, m.key_scope.clone()));
    })
}

fn ranges_of(repo: &Repository, m: &Manifest, damaged: &HashMap<Scoped, String>) -> Result<Vec<DamagedRange>> {
    let mut index = repo.open_index(m)?;
    let header = index.header();
    let bs = header.block_size.bytes() as u64;
    let mut out: Vec<DamagedRange> = Vec::new();
    let mut block = 0u64;
    while let Some(r) = index.next_block().map_err(|e| repo.io_err(format!("reading index of {}", m.id), e))? {
        if let BlockRef::Chunk(id) = r {
            if let Some(reason) = damaged.get(&(id, m.key_scope.clone())) {
                let len = header.block_len(block) as u64;
                match out.last_mut() {
                    Some(last) if last.last_block + 1 == block => {
                        last.last_block = block;
                        last.length += len;
                        let hex = id.to_hex();
                        if last.chunks.len() < 8 && !last.chunks.contains(&hex) {
                            last.chunks.push(hex);
                        }
                        if !last.reason.contains(reason.as_str()) {
                            last.reason = format!("{}; {reason}", last.reason);
                        }
                    }
                    _ => out.push(DamagedRange {
                        first_block: block,
                        last_block: block,
                        offset: block * bs,
                        length: len,
                        chunks: vec![id.to_hex()],
                        reason: reason.clone(),
                    }),
                }
            }
        }
        block += 1;
    }
    Ok(out)
}
