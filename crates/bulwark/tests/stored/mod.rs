//! Where a repository keeps a chunk's bytes, for tests that damage them on disk: a file of its
//! own (one file per chunk) or a range of a pack (format 4). Found through the repository's own
//! index, so the tests damage exactly the chunk they mean in either layout.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bulwark_repo::{ChunkId, Repository};

/// One stored copy of a chunk: the file, and the chunk's bytes in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl StoredChunk {
    /// Flips one bit in the middle of the chunk's stored bytes.
    pub fn flip(&self) {
        let mut bytes = std::fs::read(&self.path).unwrap();
        bytes[(self.offset + self.len / 2) as usize] ^= 0x40;
        std::fs::write(&self.path, &bytes).unwrap();
    }

    /// Overwrites the chunk's stored bytes with zeros.
    pub fn zero(&self) {
        let mut bytes = std::fs::read(&self.path).unwrap();
        bytes[self.offset as usize..(self.offset + self.len) as usize].fill(0);
        std::fs::write(&self.path, &bytes).unwrap();
    }
}

/// Every stored copy of every chunk the points of `repo` reference (or point `point`'s only).
pub fn stored_chunks(repo: &Path, password: Option<&[u8]>, point: Option<&str>) -> Vec<StoredChunk> {
    let r = Repository::open(repo, password).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for m in r.list_points().unwrap() {
        if point.is_some_and(|p| p != m.id.as_str()) {
            continue;
        }
        r.for_each_reference(&m, |id| {
            ids.insert(id);
        })
        .unwrap();
    }
    copies(&r, repo, ids)
}

/// The stored copies of the given chunks.
pub fn copies(r: &Repository, repo: &Path, ids: impl IntoIterator<Item = ChunkId>) -> Vec<StoredChunk> {
    let mut out = Vec::new();
    for id in ids {
        for (key, offset, len) in r.chunk_copies(&id).unwrap() {
            out.push(StoredChunk { id, path: repo.join(key), offset, len });
        }
    }
    out
}

/// Bytes of chunk data the repository holds (chunk files and packs).
pub fn stored_bytes(repo: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(&repo.join("chunks")) + walk(&repo.join("data"))
}
