//! Where a backup goes (and a restore comes from). The pipelines in [`crate::backup`] and [`crate::files`] write through
//! [`BackupTarget`]: a repository opened on this computer (`bulwark backup`) or a data mover
//! across the network ([`crate::remote`]), which stores what the agent sends.
//!
//! The interface is what a round trip can afford: chunk queries come in batches, uploads need
//! no answer, and the index streams in order.

use bulwark_repo::index::BlockIndexReader;
use bulwark_repo::{
    BlockRef, ChunkCodec, ChunkId, Compression, FileSummary, Manifest, PointSpec, PointStats, PointWriter, Repository,
    RestorePointId, Result, TreeCursor,
};

/// The answer to a chunk query: here already, or on its way across the network.
pub enum Answer {
    Ready(Vec<bool>),
    Later(Box<dyn FnOnce() -> Result<Vec<bool>> + Send>),
}

impl Answer {
    pub fn is_ready(&self) -> bool {
        matches!(self, Answer::Ready(_))
    }

    pub fn wait(self) -> Result<Vec<bool>> {
        match self {
            Answer::Ready(v) => Ok(v),
            Answer::Later(f) => f(),
        }
    }
}

pub trait BackupTarget: Sync {
    /// Names the target in messages.
    fn label(&self) -> String;
    fn codec(&self, compression: Compression) -> ChunkCodec;
    /// A codec with the keys point `m` was written with (they differ from [`BackupTarget::codec`]'s
    /// in a repository whose computers are isolated).
    fn point_codec(&self, m: &Manifest, compression: Compression) -> ChunkCodec {
        let _ = m;
        self.codec(compression)
    }
    /// The newest point of a backup name that a backup through this target may build on.
    fn latest(&self, name: &str) -> Result<Option<Manifest>>;
    fn open_index(&self, m: &Manifest) -> Result<BlockIndexReader>;
    fn tree_cursor(&self, m: &Manifest) -> Result<TreeCursor>;
    /// For each id, whether the repository has that chunk; those it has are kept for the point
    /// being written (a concurrent garbage collection will not sweep them).
    fn have_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// [`BackupTarget::have_chunks`] without waiting for the answer, so the caller can work
    /// (compress, hash the next batch) while the question crosses the network.
    fn query_chunks(&self, ids: &[ChunkId]) -> Result<Answer> {
        Ok(Answer::Ready(self.have_chunks(ids)?))
    }
    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.have_chunks(std::slice::from_ref(id))?[0])
    }
    /// For each chunk of the pinned parent point, whether it is present and sound (see
    /// [`Repository::chunk_is_sound`]). Across the network this is [`BackupTarget::have_chunks`].
    fn parent_chunks_sound(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.have_chunks(ids)
    }
    /// Stores an encoded chunk. May return before it is stored; a failure then surfaces at a
    /// later call or at the commit, which never succeeds without every chunk.
    fn put_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<()>;
    fn begin_point(&self, spec: PointSpec) -> Result<Box<dyn PointSink + '_>>;
    /// Reads, authenticates and decodes one chunk (restores read through this too).
    fn read_chunk_into(
        &self,
        codec: &mut ChunkCodec,
        id: &ChunkId,
        stored: &mut Vec<u8>,
        block: &mut Vec<u8>,
    ) -> Result<()>;
}

/// Every entry of a file point's tree, in order.
pub fn read_tree(
    t: &dyn BackupTarget,
    m: &Manifest,
    mut f: impl FnMut(bulwark_repo::tree::TreeEntry) -> Result<()>,
) -> Result<()> {
    let mut cursor = t.tree_cursor(m)?;
    while let Some(e) = cursor.next_entry()? {
        f(e)?;
    }
    Ok(())
}

/// A restore point being written; dropped without a commit, it leaves nothing visible.
pub trait PointSink: Send {
    /// The parent, pinned while the point is written; `None` if there is none or it was gone.
    fn parent(&self) -> Option<&RestorePointId>;
    /// The next block's entry in the index (volume points).
    fn push_block(&mut self, r: &BlockRef) -> Result<()>;
    fn commit(self: Box<Self>, stats: PointStats) -> Result<Manifest>;
    fn commit_files(
        self: Box<Self>,
        pieces: &[ChunkId],
        tree_len: u64,
        stats: PointStats,
        summary: FileSummary,
    ) -> Result<Manifest>;
}

impl BackupTarget for Repository {
    fn label(&self) -> String {
        Repository::label(self)
    }
    fn codec(&self, compression: Compression) -> ChunkCodec {
        Repository::codec(self, compression)
    }
    fn point_codec(&self, m: &Manifest, compression: Compression) -> ChunkCodec {
        self.for_point(m).codec(compression)
    }
    fn latest(&self, name: &str) -> Result<Option<Manifest>> {
        Repository::latest_own(self, name)
    }
    fn open_index(&self, m: &Manifest) -> Result<BlockIndexReader> {
        Repository::open_index(self, m)
    }
    fn tree_cursor(&self, m: &Manifest) -> Result<TreeCursor> {
        Repository::tree_cursor(self, m)
    }
    fn have_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ids.iter().map(|id| self.reuse_chunk(id)).collect()
    }
    fn parent_chunks_sound(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ids.iter().map(|id| self.chunk_is_sound(id)).collect()
    }
    fn put_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<()> {
        Repository::put_chunk(self, id, stored)
    }
    fn begin_point(&self, spec: PointSpec) -> Result<Box<dyn PointSink + '_>> {
        Ok(Box::new(Repository::begin_point(self, spec)?))
    }
    fn read_chunk_into(
        &self,
        codec: &mut ChunkCodec,
        id: &ChunkId,
        stored: &mut Vec<u8>,
        block: &mut Vec<u8>,
    ) -> Result<()> {
        Repository::read_chunk_into(self, codec, id, stored, block)
    }
}

impl PointSink for PointWriter {
    fn parent(&self) -> Option<&RestorePointId> {
        PointWriter::parent(self)
    }
    fn push_block(&mut self, r: &BlockRef) -> Result<()> {
        PointWriter::push_block(self, r)
    }
    fn commit(self: Box<Self>, stats: PointStats) -> Result<Manifest> {
        PointWriter::commit(*self, stats)
    }
    fn commit_files(
        self: Box<Self>,
        pieces: &[ChunkId],
        tree_len: u64,
        stats: PointStats,
        summary: FileSummary,
    ) -> Result<Manifest> {
        PointWriter::commit_files(*self, pieces, tree_len, stats, summary)
    }
}

/// The chunks of one point read through a backup target (this repository, or a data mover across
/// the network), for a [`bulwark_repo::PointImage`] that reads the point at any offset.
struct TargetChunks {
    target: std::sync::Arc<dyn BackupTarget + Send + Sync>,
    m: Manifest,
    codecs: std::sync::Mutex<Vec<ChunkCodec>>,
}

impl bulwark_repo::ChunkFetch for TargetChunks {
    fn label(&self) -> String {
        self.target.label()
    }
    fn fetch(&self, id: &ChunkId, stored: &mut Vec<u8>, block: &mut Vec<u8>) -> bulwark_repo::Result<()> {
        let pooled = self.codecs.lock().expect("no panics while held").pop();
        let mut codec = pooled.unwrap_or_else(|| self.target.point_codec(&self.m, self.m.compression));
        let r = self.target.read_chunk_into(&mut codec, id, stored, block);
        self.codecs.lock().expect("no panics while held").push(codec);
        r
    }
}

/// Volume point `m`, readable at any offset, its chunks read through `target`.
pub fn point_image(
    target: std::sync::Arc<dyn BackupTarget + Send + Sync>,
    m: &Manifest,
) -> bulwark_repo::Result<bulwark_repo::PointImage> {
    let index = target.open_index(m)?;
    let what = format!("point {} ({})", m.id, m.name);
    let chunks = TargetChunks { target, m: m.clone(), codecs: std::sync::Mutex::new(Vec::new()) };
    bulwark_repo::PointImage::new(Box::new(chunks), index, what, bulwark_repo::image::DEFAULT_CACHE_BYTES)
}
