//! Copying restore points from one repository to another (evacuating an extent of a scale-out
//! repository, say).
//!
//! A copy is the same point: same id, time, name, parent, stats and so on; only what the
//! target's keys decide differs. Chunk names may differ between repositories (an encrypted
//! repository keys its digests; an isolated one uses each computer's keys), so every chunk is
//! read through the source (authenticated and decoded), named with the target's codec, and
//! stored there unless the target already holds it whole. A volume point's index and a file
//! point's tree are written again with the target's names.
//!
//! The copy is written like a backup ([`crate::PointWriter`]): a lease while it runs, the
//! manifest last. A copy that fails or is interrupted leaves no point in the target, and a point
//! already there is not copied again, so an evacuation that stopped resumes where it was.
//! Memory stays flat: blocks are streamed one at a time, a tree one piece at a time.

use std::collections::HashMap;

use crate::chunk::{ChunkCodec, ChunkId};
use crate::error::{RepoError, Result};
use crate::index::BlockRef;
use crate::point::{Manifest, PointKind, PointStats, RestorePointId};
use crate::repository::Repository;
use crate::tree::PIECE;

/// What [`copy_point`] did.
#[derive(Debug, Clone)]
pub struct CopiedPoint {
    /// The point as the target holds it.
    pub manifest: Manifest,
    /// `false`: the target held the point already and nothing was written.
    pub copied: bool,
    /// Bytes stored in the target: new chunks (as stored: compressed, maybe encrypted) and the
    /// point's index.
    pub stored_bytes: u64,
    /// Chunks stored in the target, and chunks it already held whole.
    pub chunks_stored: u64,
    pub chunks_reused: u64,
}

/// Chunks translated within one copy, remembered up to this many (about 64 bytes each), so a
/// block repeated in a point is read once.
const REMEMBERED: usize = 1 << 18;

/// Copies point `id` from `from` into `to`, keeping its identity (see the module's note).
/// `progress` is told the bytes of the point handled so far (blocks of a volume point; file
/// content and tree of a file point).
///
/// Copy a chain oldest first: the parent is recorded as it is, and pinned in `to` while the
/// child is written when it is there. A chunk of the source that is damaged or missing fails
/// the copy with [`RepoError::DamagedPoint`] naming the point and where in it (a block and its
/// bytes, or a file and its bytes); the target is left without the point.
pub fn copy_point(
    from: &Repository,
    to: &Repository,
    id: &RestorePointId,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CopiedPoint> {
    match to.load_manifest(id) {
        Ok(there) => {
            // Copied before (an evacuation resumed): the source may have forgotten it since.
            match from.load_manifest(id) {
                Ok(m) if (m.created, &m.name, m.kind) != (there.created, &there.name, there.kind) => {
                    return Err(RepoError::Invalid {
                        repo: to.label(),
                        reason: format!(
                            "it holds another point with the id {id} ({} of {}, not {} of {})",
                            there.name, there.created, m.name, m.created
                        ),
                    });
                }
                Ok(_) | Err(RepoError::NoSuchPoint { .. }) => {}
                Err(e) => return Err(e),
            }
            return Ok(CopiedPoint {
                manifest: there,
                copied: false,
                stored_bytes: 0,
                chunks_stored: 0,
                chunks_reused: 0,
            });
        }
        Err(RepoError::NoSuchPoint { .. }) => {}
        Err(e) => return Err(e),
    }
    let m = from.load_manifest(id)?;
    let src = from.for_point(&m);
    let dst = to.with_scope(m.key_scope.as_deref());
    let mut writer = dst.begin_copy(&m)?;
    let mut t = Translator::new(&src, &dst, &m);
    let manifest = match m.kind {
        PointKind::Volume => {
            let mut index = src.open_index(&m)?;
            let header = index.header();
            let bs = header.block_size.bytes() as u64;
            let mut i = 0u64;
            let mut done = 0u64;
            while let Some(r) =
                index.next_block().map_err(|e| from.io_err(format!("reading index of point {id}"), e))?
            {
                let len = header.block_len(i) as u64;
                let r = match r {
                    BlockRef::Chunk(c) => BlockRef::Chunk(t.translate(&c).map_err(|e| {
                        in_point(e, from, id, format!("block {i} (bytes {}..{})", i * bs, i * bs + len))
                    })?),
                    other => other,
                };
                writer.push_block(&r)?;
                i += 1;
                done += len;
                progress(done);
            }
            writer.commit(PointStats::default())?
        }
        PointKind::Files => {
            let mut cursor = from.tree_cursor(&m)?;
            let mut tree = Vec::with_capacity(PIECE * 2);
            let (mut pieces, mut tree_len, mut done) = (Vec::new(), 0u64, 0u64);
            while let Some(mut e) = cursor.next_entry().map_err(|e| in_point(e, from, id, "its file tree".into()))? {
                let path = e.path_lossy();
                for x in &mut e.extents {
                    if let Some(c) = &x.chunk {
                        let n = t.translate(c).map_err(|err| {
                            let place = format!("file {path} (bytes {}..{})", x.offset, x.offset + x.length);
                            in_point(err, from, id, place)
                        })?;
                        x.chunk = Some(n);
                        done += x.length;
                    }
                }
                e.encode(&mut tree);
                while tree.len() >= PIECE {
                    let rest = tree.split_off(PIECE);
                    let piece = std::mem::replace(&mut tree, rest);
                    pieces.push(t.store(&piece)?);
                    tree_len += piece.len() as u64;
                    done += piece.len() as u64;
                }
                progress(done);
            }
            if !tree.is_empty() {
                pieces.push(t.store(&tree)?);
                tree_len += tree.len() as u64;
                progress(done + tree.len() as u64);
            }
            if tree_len != m.volume_size {
                return Err(RepoError::DamagedPoint {
                    repo: from.label(),
                    point: id.to_string(),
                    reason: format!("its tree reads as {tree_len} bytes, its manifest says {}", m.volume_size),
                });
            }
            writer.commit_files(&pieces, tree_len, PointStats::default(), Default::default())?
        }
    };
    Ok(CopiedPoint {
        stored_bytes: t.stored_bytes + manifest.spec_index_len(),
        chunks_stored: t.chunks_stored,
        chunks_reused: t.chunks_reused,
        manifest,
        copied: true,
    })
}

/// Says where in point `id` a chunk of the source could not be read.
fn in_point(e: RepoError, from: &Repository, id: &RestorePointId, place: String) -> RepoError {
    match e {
        RepoError::DamagedChunk { id: chunk, reason, .. } => RepoError::DamagedPoint {
            repo: from.label(),
            point: id.to_string(),
            reason: format!("{place}: chunk {chunk} is damaged ({reason}); run `bulwark verify`"),
        },
        RepoError::MissingChunk { id: chunk, .. } => RepoError::DamagedPoint {
            repo: from.label(),
            point: id.to_string(),
            reason: format!("{place}: chunk {chunk} is missing; run `bulwark verify`"),
        },
        RepoError::Io { repo, what, source } => {
            RepoError::Io { repo, what: format!("copying point {id}, {place}: {what}"), source }
        }
        other => other,
    }
}

/// Turns chunks of the source into chunks of the target.
struct Translator<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    read: ChunkCodec,
    write: ChunkCodec,
    /// Both repositories name chunks alike and store them alike (the same keys, or neither
    /// encrypted): a chunk the target holds is not read, one it lacks is stored as read.
    same_names: bool,
    stored: Vec<u8>,
    block: Vec<u8>,
    encoded: Vec<u8>,
    seen: HashMap<ChunkId, ChunkId>,
    stored_bytes: u64,
    chunks_stored: u64,
    chunks_reused: u64,
}

impl<'a> Translator<'a> {
    fn new(src: &'a Repository, dst: &'a Repository, m: &Manifest) -> Self {
        const PROBE: &[u8] = b"bulwark copy: do both repositories name chunks alike?";
        let same_names = src.is_encrypted() == dst.is_encrypted()
            && src.keys().chunk_digest(PROBE) == dst.keys().chunk_digest(PROBE);
        Translator {
            src,
            dst,
            read: src.codec(m.compression),
            write: dst.codec(m.compression),
            same_names,
            stored: Vec::new(),
            block: Vec::new(),
            encoded: Vec::new(),
            seen: HashMap::new(),
            stored_bytes: 0,
            chunks_stored: 0,
            chunks_reused: 0,
        }
    }

    /// The target's name of source chunk `id`, which the target holds once this returns.
    fn translate(&mut self, id: &ChunkId) -> Result<ChunkId> {
        if let Some(n) = self.seen.get(id) {
            return Ok(*n);
        }
        let n = if self.same_names && self.dst.reuse_chunk(id)? {
            self.chunks_reused += 1;
            *id
        } else {
            self.src.read_chunk_into(&mut self.read, id, &mut self.stored, &mut self.block)?;
            if self.same_names {
                // `stored` holds the copy that decoded whole, which the target can keep as is.
                self.dst.put_chunk(id, &self.stored)?;
                self.chunks_stored += 1;
                self.stored_bytes += self.stored.len() as u64;
                *id
            } else {
                let block = std::mem::take(&mut self.block);
                let n = self.store(&block);
                self.block = block;
                n?
            }
        };
        if self.seen.len() >= REMEMBERED {
            self.seen.clear();
        }
        self.seen.insert(*id, n);
        Ok(n)
    }

    /// Stores `data` in the target unless it holds it already; its name there.
    fn store(&mut self, data: &[u8]) -> Result<ChunkId> {
        let n = self.write.digest(data);
        if self.dst.reuse_chunk(&n)? {
            self.chunks_reused += 1;
        } else {
            self.write.encode_into(&n, data, &mut self.encoded);
            self.dst.put_chunk(&n, &self.encoded)?;
            self.chunks_stored += 1;
            self.stored_bytes += self.encoded.len() as u64;
        }
        Ok(n)
    }
}
