//! A volume restore point as a random-access disk image: what browsing its files, serving it over
//! NBD and exporting it all read through.
//!
//! A restore streams a point's blocks in order; these readers jump around (a filesystem's
//! superblock, then an inode table, then one file's extents). [`PointImage`] answers a read at any
//! offset from the point's block index, fetching, authenticating and decoding only the chunks it
//! touches, and keeps the most recently used decoded blocks in a bounded cache. Memory does not
//! grow with the volume: the index's entries wait in an unnamed temporary file (32 bytes per
//! block), the cache has a fixed budget.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use crate::chunk::{ChunkCodec, ChunkId};
use crate::index::{BlockIndexReader, BlockRef, IndexHeader};
use crate::point::{Manifest, PointKind};
use crate::{RepoError, Repository, Result};

/// Anything that reads like a disk: a point, a partition of one, an overlay over either.
pub trait Image: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`. A read past the end is an error (`UnexpectedEof`); a block that
    /// cannot be read (a damaged or missing chunk) is an error naming it, never wrong bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Whether `len` bytes from `offset` are known to read as zeroes without reading them (a zero
    /// block of the point). `false` means "maybe not": exports keep such ranges as holes.
    fn is_zero(&self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }
    /// A short description for messages ("point 2026…-3f2a9c (vm1)").
    fn describe(&self) -> String;
}

/// Where a [`PointImage`] gets decoded chunks from: the repository itself, or (on an agent) a
/// data mover across the network.
pub trait ChunkFetch: Send + Sync {
    fn label(&self) -> String;
    /// Reads, authenticates and decodes chunk `id` into `block` (`stored` is scratch).
    fn fetch(&self, id: &ChunkId, stored: &mut Vec<u8>, block: &mut Vec<u8>) -> Result<()>;
}

/// Chunks of one point read from a local repository, with codecs pooled across threads.
struct RepoChunks {
    repo: Repository,
    compression: crate::Compression,
    codecs: Mutex<Vec<ChunkCodec>>,
}

impl ChunkFetch for RepoChunks {
    fn label(&self) -> String {
        self.repo.label()
    }
    fn fetch(&self, id: &ChunkId, stored: &mut Vec<u8>, block: &mut Vec<u8>) -> Result<()> {
        let pooled = self.codecs.lock().expect("no panics while held").pop();
        let mut codec = pooled.unwrap_or_else(|| self.repo.codec(self.compression));
        let r = self.repo.read_chunk_into(&mut codec, id, stored, block);
        self.codecs.lock().expect("no panics while held").push(codec);
        r
    }
}

/// The default budget of decoded blocks kept in memory, per opened point.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// A volume point, readable at any offset.
pub struct PointImage {
    fetch: Box<dyn ChunkFetch>,
    header: IndexHeader,
    /// The authenticated index entries, 32 bytes per block (see the module's comment).
    entries: File,
    cache: Mutex<BlockCache>,
    /// Signalled whenever a block finishes loading (see [`PointImage::block`]).
    loaded: Condvar,
    what: String,
}

impl PointImage {
    /// Opens volume point `m` of a local repository. The whole index is authenticated first.
    pub fn open(repo: &Repository, m: &Manifest) -> Result<PointImage> {
        if m.kind != PointKind::Volume {
            return Err(RepoError::Invalid {
                repo: repo.label(),
                reason: format!("point {} is a file-level point, not a volume image", m.id),
            });
        }
        let index = repo.open_index(m)?;
        let chunks = RepoChunks { repo: repo.for_point(m), compression: m.compression, codecs: Mutex::new(Vec::new()) };
        Self::new(Box::new(chunks), index, describe(m), DEFAULT_CACHE_BYTES)
    }

    /// A point whose (already authenticated) index is `index` and whose chunks come from
    /// `fetch`; at most `cache_bytes` of decoded blocks stay in memory.
    pub fn new(
        fetch: Box<dyn ChunkFetch>,
        mut index: BlockIndexReader,
        what: String,
        cache_bytes: usize,
    ) -> Result<PointImage> {
        let header = index.header();
        let label = fetch.label();
        let io_err = |what: &str, e: io::Error| RepoError::Io { repo: label.clone(), what: what.into(), source: e };
        let entries = tempfile::tempfile().map_err(|e| io_err("creating a scratch file for the block index", e))?;
        let mut w = io::BufWriter::with_capacity(1 << 16, &entries);
        while let Some(r) = index.next_block().map_err(|e| io_err("reading the block index", e))? {
            w.write_all(&r.entry()).map_err(|e| io_err("writing the index scratch file", e))?;
        }
        w.flush().map_err(|e| io_err("writing the index scratch file", e))?;
        drop(w);
        let slots = (cache_bytes / header.block_size.bytes() as usize).max(2);
        Ok(PointImage {
            fetch,
            header,
            entries,
            cache: Mutex::new(BlockCache::new(slots)),
            loaded: Condvar::new(),
            what,
        })
    }

    pub fn header(&self) -> IndexHeader {
        self.header
    }

    fn block_ref(&self, block: u64) -> io::Result<BlockRef> {
        let mut e = [0u8; 32];
        self.entries.read_exact_at(&mut e, block * 32)?;
        Ok(BlockRef::from_entry(e))
    }

    /// Block `block`, decoded; `None` for a zero block.
    ///
    /// Readers of one block at once decode it once: clients split their reads finer than a
    /// block (an NBD client asks for 256 KiB, a block is 1 MiB), so without this every block
    /// read sequentially by parallel requests would be fetched and decoded several times over.
    fn block(&self, block: u64) -> io::Result<Option<Arc<Vec<u8>>>> {
        if let Some(b) = self.cache.lock().expect("no panics while held").get(block) {
            return Ok(Some(b));
        }
        let id = match self.block_ref(block)? {
            BlockRef::Zero => return Ok(None),
            BlockRef::Chunk(id) => id,
        };
        let mut cache = self.cache.lock().expect("no panics while held");
        loop {
            if let Some(b) = cache.get(block) {
                return Ok(Some(b));
            }
            if cache.loading.insert(block) {
                break;
            }
            // Another reader is loading it: wait, then look again (a failed load leaves it to
            // the next reader, who tries, and fails, for itself).
            cache = self.loaded.wait(cache).expect("no panics while held");
        }
        drop(cache);
        let loading = Loading { image: self, block };
        let (mut stored, mut data) = (Vec::new(), Vec::new());
        self.fetch.fetch(&id, &mut stored, &mut data).map_err(|e| {
            io::Error::other(format!("{} block {block} (offset {}): {e}", self.what, block * self.bs()))
        })?;
        if data.len() != self.header.block_len(block) {
            return Err(io::Error::other(format!(
                "{} block {block}: chunk {id} holds {} bytes, the block {}",
                self.what,
                data.len(),
                self.header.block_len(block)
            )));
        }
        let data = Arc::new(data);
        self.cache.lock().expect("no panics while held").put(block, data.clone());
        drop(loading);
        Ok(Some(data))
    }

    fn bs(&self) -> u64 {
        self.header.block_size.bytes() as u64
    }
}

fn describe(m: &Manifest) -> String {
    format!("point {} ({})", m.id, m.name)
}

impl Image for PointImage {
    fn size(&self) -> u64 {
        self.header.volume_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), buf.len(), offset)?;
        let bs = self.bs();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / bs, (at % bs) as usize);
            let n = (buf.len() - done).min(bs as usize - within);
            match self.block(block)? {
                Some(data) => buf[done..done + n].copy_from_slice(&data[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn is_zero(&self, offset: u64, len: u64) -> io::Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        let bs = self.bs();
        let end = offset.saturating_add(len).min(self.size());
        for block in offset / bs..end.div_ceil(bs) {
            if self.block_ref(block)? != BlockRef::Zero {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// The error for a read that does not fit in an image of `size` bytes.
pub fn check_range(size: u64, len: usize, offset: u64) -> io::Result<()> {
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at {offset} is past the end of a {size}-byte image"),
        ));
    }
    Ok(())
}

/// An image held in memory: small images, and tests that compare against a plain buffer.
pub struct MemImage(pub Vec<u8>);

impl Image for MemImage {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), buf.len(), offset)?;
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn describe(&self) -> String {
        "an image in memory".into()
    }
}

/// A window of another image: one partition of a whole-disk point.
pub struct Slice<I: ?Sized> {
    pub inner: Arc<I>,
    pub start: u64,
    pub len: u64,
    pub what: String,
}

impl<I: Image + ?Sized> Image for Slice<I> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.len, buf.len(), offset)?;
        self.inner.read_at(buf, self.start + offset)
    }
    fn is_zero(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.inner.is_zero(self.start + offset, len.min(self.len.saturating_sub(offset)))
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// A block being loaded by one reader; when it is done (or failed), readers waiting for it look
/// again.
struct Loading<'a> {
    image: &'a PointImage,
    block: u64,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        let mut cache = self.image.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.loading.remove(&self.block);
        drop(cache);
        self.image.loaded.notify_all();
    }
}

/// The most recently used decoded blocks. Small (tens of entries), so eviction scans.
struct BlockCache {
    slots: usize,
    tick: u64,
    blocks: HashMap<u64, (Arc<Vec<u8>>, u64)>,
    /// Blocks a reader is fetching and decoding now.
    loading: HashSet<u64>,
}

impl BlockCache {
    fn new(slots: usize) -> Self {
        BlockCache { slots, tick: 0, blocks: HashMap::with_capacity(slots), loading: HashSet::new() }
    }

    fn get(&mut self, block: u64) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.blocks.get_mut(&block).map(|(data, used)| {
            *used = tick;
            data.clone()
        })
    }

    fn put(&mut self, block: u64, data: Arc<Vec<u8>>) {
        if self.blocks.len() >= self.slots && !self.blocks.contains_key(&block) {
            if let Some(oldest) = self.blocks.iter().min_by_key(|(_, (_, used))| *used).map(|(b, _)| *b) {
                self.blocks.remove(&oldest);
            }
        }
        self.tick += 1;
        self.blocks.insert(block, (data, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_evicts_the_least_recently_used() {
        let mut c = BlockCache::new(2);
        c.put(1, Arc::new(vec![1]));
        c.put(2, Arc::new(vec![2]));
        assert!(c.get(1).is_some());
        c.put(3, Arc::new(vec![3]));
        assert!(c.get(2).is_none(), "2 was used least recently");
        assert!(c.get(1).is_some() && c.get(3).is_some());
    }

    /// A repository holding one volume point of `volume`, in blocks of `bs` bytes.
    fn point_of(volume: &[u8], bs: usize) -> (tempfile::TempDir, Repository, Manifest) {
        use crate::{BlockSize, Compression, InitOptions, PointSpec, PointStats};
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("r"), &InitOptions::default()).unwrap();
        let spec = PointSpec {
            kind: PointKind::Volume,
            name: "vol".into(),
            source: "test".into(),
            volume_size: volume.len() as u64,
            block_size: BlockSize::new(bs as u32).unwrap(),
            compression: Compression::Optimal,
            parent: None,
            snapshot: String::new(),
            consistency: String::new(),
            key_scope: None,
        };
        let mut codec = repo.codec(Compression::Optimal);
        let mut w = repo.begin_point(spec).unwrap();
        for block in volume.chunks(bs) {
            if block.iter().all(|&b| b == 0) {
                w.push_block(&BlockRef::Zero).unwrap();
                continue;
            }
            let id = codec.digest(block);
            repo.put_chunk(&id, &codec.encode(&id, block)).unwrap();
            w.push_block(&BlockRef::Chunk(id)).unwrap();
        }
        let m = w.commit(PointStats::default()).unwrap();
        (dir, repo, m)
    }

    /// A point of 4 KiB blocks (one short, one zero, one repeated) read back at every kind of
    /// offset: inside a block, across blocks, through the zero block, up to the last byte.
    #[test]
    fn reads_at_any_offset_match_the_volume() {
        let bs = 4096usize;
        let mut volume: Vec<u8> = (0..5 * bs + 1000).map(|i| (i * 7 % 251) as u8).collect();
        volume[2 * bs..3 * bs].fill(0);
        let b1 = volume[bs..2 * bs].to_vec();
        volume[4 * bs..5 * bs].copy_from_slice(&b1);
        let (_dir, repo, m) = point_of(&volume, bs);
        let img = PointImage::open(&repo, &m).unwrap();
        assert_eq!(img.size(), volume.len() as u64);
        for (off, len) in [(0, 10), (bs - 3, 7), (bs * 2 - 1, bs + 2), (0, volume.len()), (volume.len() - 1, 1)] {
            let mut buf = vec![0xAA; len];
            img.read_at(&mut buf, off as u64).unwrap();
            assert_eq!(buf, volume[off..off + len], "read of {len} at {off}");
        }
        assert!(img.is_zero(2 * bs as u64, bs as u64).unwrap());
        assert!(!img.is_zero(2 * bs as u64, bs as u64 + 1).unwrap());
        let mut past = vec![0; 2];
        assert_eq!(img.read_at(&mut past, volume.len() as u64 - 1).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Chunks fetched from a repository, counted.
    struct Counting {
        inner: RepoChunks,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ChunkFetch for Counting {
        fn label(&self) -> String {
            self.inner.label()
        }
        fn fetch(&self, id: &ChunkId, stored: &mut Vec<u8>, block: &mut Vec<u8>) -> Result<()> {
            self.fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.fetch(id, stored, block)
        }
    }

    /// Many readers of one block at once: one of them fetches and decodes it, the others get
    /// its result.
    #[test]
    fn concurrent_readers_of_a_block_decode_it_once() {
        let bs = 256 << 10;
        let volume: Vec<u8> = (0..2 * bs).map(|i| (i * 13 % 241) as u8).collect();
        let (_dir, repo, m) = point_of(&volume, bs);
        let inner = RepoChunks { repo: repo.clone(), compression: m.compression, codecs: Mutex::new(Vec::new()) };
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = Box::new(Counting { inner, fetches: fetches.clone() });
        let img = PointImage::new(counting, repo.open_index(&m).unwrap(), "t".into(), 1 << 20).unwrap();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (img, start, volume) = (&img, &start, &volume);
                s.spawn(move || {
                    start.wait();
                    let off = bs + t * 1000;
                    let mut buf = vec![0u8; 4096];
                    img.read_at(&mut buf, off as u64).unwrap();
                    assert_eq!(buf, volume[off..off + 4096]);
                });
            }
        });
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn ranges_past_the_end_are_refused() {
        assert!(check_range(100, 10, 90).is_ok());
        assert!(check_range(100, 11, 90).is_err());
        assert!(check_range(100, 1, u64::MAX).is_err());
    }
}
