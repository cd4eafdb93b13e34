//! Repair: stores damaged or missing chunks again from a source that still has their data, so
//! every point that uses them is whole again (chunks are shared by name, so one good copy
//! heals them all).
//!
//! A chunk is stored only when the bytes read hash to its name: a source that changed since
//! the backup repairs nothing and harms nothing. The next backup of a damaged point's name does
//! the same for whatever it reads; this is for when that is not soon enough, or the source is
//! an old copy.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use bulwark_repo::verify::VerifyReport;
use bulwark_repo::{BlockRef, ChunkId, Manifest, PointKind, Repository};

use crate::source::open_source;
use crate::{AgentError, Result};

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Damaged or missing chunks the damaged points need.
    pub wanted_chunks: usize,
    pub stored_chunks: usize,
    pub sources: Vec<String>,
    pub notes: Vec<String>,
}

/// Where one wanted chunk's data was, in one point.
enum Place {
    /// Volume points: bytes `[offset, offset + len)` of the volume.
    Volume { offset: u64, len: u64 },
    /// File-level points: bytes `[offset, offset + len)` of the file at `path` in the tree.
    File { path: PathBuf, offset: u64, len: u64 },
}

/// Looks in `sources` for the data of the chunks `report` found damaged or missing, and
/// stores each chunk found. `progress` receives bytes read.
pub fn repair(
    repo: &Repository,
    report: &VerifyReport,
    sources: &[PathBuf],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RepairReport> {
    let mut out =
        RepairReport { sources: sources.iter().map(|s| s.display().to_string()).collect(), ..Default::default() };
    let wanted: HashSet<(ChunkId, Option<String>)> =
        report.damaged_chunks.iter().filter_map(|d| Some((ChunkId::from_hex(&d.chunk)?, d.scope.clone()))).collect();
    out.wanted_chunks = wanted.len();
    let mut stored: HashSet<(ChunkId, Option<String>)> = HashSet::new();
    for health in report.points.iter().filter(|p| !p.ok && p.problem.is_none()) {
        let m = repo.resolve(&health.point)?;
        let places = places_of(repo, &m, &wanted, &stored)?;
        if places.is_empty() {
            continue;
        }
        let point_repo = repo.for_point(&m);
        let mut codec = point_repo.codec(m.compression);
        let mut found = 0usize;
        for source in sources {
            let dir = source.is_dir();
            if dir != (m.kind == PointKind::Files) {
                continue;
            }
            let volume = if dir { None } else { Some(open_source(source)?.file) };
            let mut buf = Vec::new();
            for (id, place) in &places {
                let key = (*id, m.key_scope.clone());
                if stored.contains(&key) {
                    continue;
                }
                let read = match (place, &volume) {
                    (Place::Volume { offset, len }, Some(f)) => read_at(f, *offset, *len, &mut buf),
                    (Place::File { path, offset, len }, None) => {
                        File::open(source.join(path)).and_then(|f| read_at(&f, *offset, *len, &mut buf))
                    }
                    _ => continue,
                };
                if read.is_err() {
                    continue;
                }
                progress(buf.len() as u64);
                if codec.digest(&buf) != *id {
                    continue;
                }
                let encoded = codec.encode(id, &buf);
                point_repo.put_chunk(id, &encoded)?;
                stored.insert(key);
                found += 1;
            }
        }
        let missing = places.iter().filter(|(id, _)| !stored.contains(&(*id, m.key_scope.clone()))).count();
        if missing > 0 {
            out.notes.push(format!(
                "point {} ({}): {missing} damaged pieces not found in the sources given{}",
                m.id,
                m.name,
                if found > 0 { format!(" ({found} found)") } else { String::new() }
            ));
        }
    }
    repo.storage().sync().map_err(|e| AgentError::Repo(repo_io(repo, e)))?;
    out.stored_chunks = stored.len();
    Ok(out)
}

fn repo_io(repo: &Repository, e: std::io::Error) -> bulwark_repo::RepoError {
    bulwark_repo::RepoError::Io { repo: repo.label(), what: "syncing repaired chunks".into(), source: e }
}

fn read_at(f: &File, offset: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.resize(len as usize, 0);
    f.read_exact_at(buf, offset)
}

/// Where each still-wanted chunk of point `m` was read from when it was backed up.
fn places_of(
    repo: &Repository,
    m: &Manifest,
    wanted: &HashSet<(ChunkId, Option<String>)>,
    stored: &HashSet<(ChunkId, Option<String>)>,
) -> Result<Vec<(ChunkId, Place)>> {
    let want = |id: &ChunkId| {
        let key = (*id, m.key_scope.clone());
        wanted.contains(&key) && !stored.contains(&key)
    };
    let mut places = Vec::new();
    match m.kind {
        PointKind::Volume => {
            let mut index = repo.open_index(m)?;
            let header = index.header();
            let bs = header.block_size.bytes() as u64;
            let mut block = 0u64;
            while let Some(r) = index.next_block().map_err(|e| AgentError::Repo(repo_io(repo, e)))? {
                if let BlockRef::Chunk(id) = r {
                    if want(&id) {
                        places.push((id, Place::Volume { offset: block * bs, len: header.block_len(block) as u64 }));
                    }
                }
                block += 1;
            }
        }
        PointKind::Files => repo.read_tree(m, |e| {
            for x in &e.extents {
                if let Some(id) = x.chunk.filter(|id| want(id)) {
                    let path = Path::new(std::ffi::OsStr::from_bytes(&e.path)).to_path_buf();
                    places.push((id, Place::File { path, offset: x.offset, len: x.length }));
                }
            }
            Ok(())
        })?,
    }
    Ok(places)
}
