//! The block index of a volume restore point: one chunk reference per block.
//!
//! Layout: `"BWI1" ‖ block size (u32 LE) ‖ volume size (u64 LE) ‖ block count (u64 LE)`, then one
//! 32-byte entry per block (all zeroes marks a zero block, which stores nothing), then a 32-byte
//! authenticator over everything before it (keyed when the repository is encrypted). The
//! manifest records the authenticator, so an index can be neither truncated, altered nor swapped
//! for another point's without detection. Indexes are written and read as streams: memory stays
//! flat whatever the volume's size.

use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::crypto::Keys;
use crate::storage::{StagedObject, Storage};

const MAGIC: &[u8; 4] = b"BWI1";
const HEADER_LEN: u64 = 24;
const ENTRY_LEN: u64 = 32;
const ZERO_MARK: [u8; 32] = [0; 32];

/// The unit of change detection and deduplication for volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct BlockSize(u32);

impl BlockSize {
    pub const DEFAULT: BlockSize = BlockSize(1 << 20);
    /// The sizes offered to operators; the library accepts any power of two from 4 KiB to 16 MiB.
    pub const OFFERED: [u32; 4] = [256 << 10, 512 << 10, 1 << 20, 4 << 20];

    pub fn new(bytes: u32) -> Result<Self, String> {
        if bytes.is_power_of_two() && (4096..=16 << 20).contains(&bytes) {
            Ok(BlockSize(bytes))
        } else {
            Err(format!("block size {bytes} is not a power of two between 4 KiB and 16 MiB"))
        }
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    pub fn blocks_for(self, volume_size: u64) -> u64 {
        volume_size.div_ceil(self.0 as u64)
    }
}

impl TryFrom<u32> for BlockSize {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        BlockSize::new(v)
    }
}

impl From<BlockSize> for u32 {
    fn from(b: BlockSize) -> u32 {
        b.0
    }
}

impl FromStr for BlockSize {
    type Err = String;
    /// `256K`, `512K`, `1M`, `4M` (also `1MiB`, plain bytes).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
        let (num, mul) = match t.char_indices().last() {
            Some((i, 'K' | 'k')) => (&t[..i], 1u32 << 10),
            Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
            _ => (t, 1),
        };
        let n: u32 = num.parse().map_err(|_| format!("cannot read block size {s:?}; use 256K, 512K, 1M or 4M"))?;
        BlockSize::new(n.checked_mul(mul).ok_or_else(|| format!("block size {s:?} is too large"))?)
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1 << 20 {
            write!(f, "{}M", self.0 >> 20)
        } else {
            write!(f, "{}K", self.0 >> 10)
        }
    }
}

/// What one block of a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockRef {
    Zero,
    Chunk(ChunkId),
}

impl BlockRef {
    /// Decodes a 32-byte index entry (also the wire form of a block reference).
    pub fn from_entry(e: [u8; 32]) -> BlockRef {
        if e == ZERO_MARK {
            BlockRef::Zero
        } else {
            BlockRef::Chunk(ChunkId(e))
        }
    }

    pub fn entry(&self) -> [u8; 32] {
        match self {
            BlockRef::Zero => ZERO_MARK,
            BlockRef::Chunk(id) => id.0,
        }
    }
}

/// The shape of an indexed volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    pub block_size: BlockSize,
    pub volume_size: u64,
    pub block_count: u64,
}

impl IndexHeader {
    pub fn new(block_size: BlockSize, volume_size: u64) -> Self {
        IndexHeader { block_size, volume_size, block_count: block_size.blocks_for(volume_size) }
    }

    /// Length in bytes of block `i` (the last block may be short).
    pub fn block_len(&self, i: u64) -> usize {
        let bs = self.block_size.bytes() as u64;
        (self.volume_size - i * bs).min(bs) as usize
    }

    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&self.block_size.bytes().to_le_bytes());
        h[8..16].copy_from_slice(&self.volume_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.block_count.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN as usize]) -> Result<Self, String> {
        if &h[..4] != MAGIC {
            return Err("not a block index (bad header)".into());
        }
        let block_size = BlockSize::new(u32::from_le_bytes(h[4..8].try_into().unwrap()))?;
        let volume_size = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let block_count = u64::from_le_bytes(h[16..24].try_into().unwrap());
        if block_count != block_size.blocks_for(volume_size) {
            return Err("block count does not match the volume size".into());
        }
        Ok(IndexHeader { block_size, volume_size, block_count })
    }
}

/// Writes a block index as blocks arrive, in order.
pub struct BlockIndexWriter {
    out: BufWriter<Box<dyn StagedObject>>,
    hasher: blake3::Hasher,
    header: IndexHeader,
    written: u64,
}

impl BlockIndexWriter {
    pub fn new(staged: Box<dyn StagedObject>, keys: &Keys, header: IndexHeader) -> io::Result<Self> {
        let mut w = BlockIndexWriter {
            out: BufWriter::with_capacity(1 << 16, staged),
            hasher: keys.object_hasher(),
            header,
            written: 0,
        };
        let h = header.encode();
        w.hasher.update(&h);
        w.out.write_all(&h)?;
        Ok(w)
    }

    /// Appends one block's entry. More entries than the volume has blocks is an error, not a
    /// panic: a data mover writes indexes an agent sends.
    pub fn push(&mut self, r: &BlockRef) -> io::Result<()> {
        if self.written >= self.header.block_count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more block entries than the volume's {} blocks", self.header.block_count),
            ));
        }
        let e = r.entry();
        self.hasher.update(&e);
        self.written += 1;
        self.out.write_all(&e)
    }

    /// Commits the index (durable at the next storage sync) and returns its authenticator.
    pub fn finish(mut self) -> io::Result<[u8; 32]> {
        if self.written != self.header.block_count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("index has {} of the volume's {} block entries", self.written, self.header.block_count),
            ));
        }
        let auth = *self.hasher.finalize().as_bytes();
        self.out.write_all(&auth)?;
        let staged = self.out.into_inner().map_err(|e| e.into_error())?;
        staged.commit(false)?;
        Ok(auth)
    }
}

/// Reads a block index in order, after checking it whole against its authenticator.
pub struct BlockIndexReader {
    input: BufReader<Box<dyn Read + Send>>,
    header: IndexHeader,
    next: u64,
}

impl BlockIndexReader {
    /// Opens the index at `key`. The whole object is authenticated first (one streaming pass),
    /// so no caller ever acts on an entry of a damaged index. `expected` is the authenticator the
    /// manifest recorded.
    pub fn open(storage: &dyn Storage, key: &str, keys: &Keys, expected: &[u8; 32]) -> Result<Self, String> {
        Self::open_with(&|| storage.open_read(key), keys, expected)
    }

    /// [`BlockIndexReader::open`] over any source that can be read twice (a file a data mover
    /// sent, say): once to authenticate, once to read.
    pub fn open_with(
        open: &dyn Fn() -> io::Result<Box<dyn Read + Send>>,
        keys: &Keys,
        expected: &[u8; 32],
    ) -> Result<Self, String> {
        let io_err = |e: io::Error| format!("cannot read index: {e}");
        let mut input = BufReader::with_capacity(1 << 16, open().map_err(io_err)?);
        let mut h = [0u8; HEADER_LEN as usize];
        input.read_exact(&mut h).map_err(|_| "index is truncated (no header)".to_string())?;
        let header = IndexHeader::decode(&h)?;
        let mut hasher = keys.object_hasher();
        hasher.update(&h);
        let body_len = header.block_count * ENTRY_LEN;
        let mut copied = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while copied < body_len {
            let want = (body_len - copied).min(buf.len() as u64) as usize;
            input
                .read_exact(&mut buf[..want])
                .map_err(|_| format!("index is truncated: {} of {} entries", copied / ENTRY_LEN, header.block_count))?;
            hasher.update(&buf[..want]);
            copied += want as u64;
        }
        let mut auth = [0u8; 32];
        input.read_exact(&mut auth).map_err(|_| "index is truncated (no authenticator)".to_string())?;
        if input.read(&mut buf).map_err(io_err)? != 0 {
            return Err("index has trailing bytes".into());
        }
        if *hasher.finalize().as_bytes() != auth || auth != *expected {
            return Err("index fails authentication (altered, or not this point's)".into());
        }
        let mut input = BufReader::with_capacity(1 << 16, open().map_err(io_err)?);
        input.read_exact(&mut h).map_err(io_err)?;
        Ok(BlockIndexReader { input, header, next: 0 })
    }

    /// Opens an index *without* authenticating it, for the one reader that must act on what is
    /// left of a point whose manifest is lost: garbage collection, which keeps every chunk such
    /// an index names (a wrong entry only keeps a chunk longer). Entries end at the first
    /// truncated one.
    pub fn open_unauthenticated(storage: &dyn Storage, key: &str) -> Result<Self, String> {
        let mut input =
            BufReader::with_capacity(1 << 16, storage.open_read(key).map_err(|e| format!("cannot read index: {e}"))?);
        let mut h = [0u8; HEADER_LEN as usize];
        input.read_exact(&mut h).map_err(|_| "index is truncated (no header)".to_string())?;
        Ok(BlockIndexReader { input, header: IndexHeader::decode(&h)?, next: 0 })
    }

    pub fn header(&self) -> IndexHeader {
        self.header
    }

    /// The next block's reference, `None` after the last.
    pub fn next_block(&mut self) -> io::Result<Option<BlockRef>> {
        if self.next == self.header.block_count {
            return Ok(None);
        }
        let mut e = [0u8; 32];
        self.input.read_exact(&mut e)?;
        self.next += 1;
        Ok(Some(BlockRef::from_entry(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_parse_as_operators_write_them() {
        assert_eq!("256K".parse::<BlockSize>().unwrap().bytes(), 256 << 10);
        assert_eq!("1M".parse::<BlockSize>().unwrap().bytes(), 1 << 20);
        assert_eq!("4MiB".parse::<BlockSize>().unwrap().bytes(), 4 << 20);
        assert!("3M".parse::<BlockSize>().is_err());
        assert!("lots".parse::<BlockSize>().is_err());
        assert_eq!(BlockSize::new(512 << 10).unwrap().to_string(), "512K");
    }

    #[test]
    fn short_last_block() {
        let h = IndexHeader::new(BlockSize::new(4096).unwrap(), 10_000);
        assert_eq!(h.block_count, 3);
        assert_eq!(h.block_len(2), 10_000 - 8192);
    }
}
