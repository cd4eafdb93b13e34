//! Chunks: one stored block, named by its digest, compressed and optionally sealed.
//!
//! On storage a chunk is `"BWC1"` followed by its body, sealed with the repository's key when
//! encrypted (bound to the chunk's name, so a chunk cannot be swapped for another). The body is
//! `codec (u8) ‖ plaintext length (u32 LE) ‖ payload`. A block that does not shrink is stored
//! raw, so random data costs nothing to "compress" on restore.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::crypto::Keys;

const MAGIC: &[u8; 4] = b"BWC1";
const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;
const CODEC_ZSTD: u8 = 2;
/// The smallest stored chunk: magic, codec and length.
pub const MIN_STORED_LEN: u64 = 9;
/// The largest plaintext a chunk may hold; guards decompression against forged lengths.
pub const MAX_CHUNK_LEN: usize = 16 << 20;

/// The name of a chunk: BLAKE3 (keyed when encrypted) of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The storage key: chunks spread over 256 directories by their first byte.
    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("chunks/{}/{}", &h[..2], h)
    }

    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let v = hex::decode(s).ok()?;
        Some(ChunkId(v.try_into().ok()?))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// Compression levels as operators know them. The mapping onto codecs is measured in
/// `docs/BENCHMARKS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Stored as read: for repositories on deduplicating storage appliances.
    None,
    /// LZ4: cheapest CPU, modest ratio.
    DedupeFriendly,
    /// zstd level 1 (hash log 16): the best ratio per CPU second; the default.
    #[default]
    Optimal,
    /// zstd level 6: noticeably smaller, about three times the CPU.
    High,
    /// zstd level 15: smallest, for slow links; expensive.
    Extreme,
}

impl Compression {
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::DedupeFriendly, Compression::Optimal, Compression::High, Compression::Extreme];

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::DedupeFriendly => "dedupe-friendly",
            Compression::Optimal => "optimal",
            Compression::High => "high",
            Compression::Extreme => "extreme",
        }
    }

    fn zstd_level(self) -> Option<i32> {
        match self {
            Compression::Optimal => Some(1),
            Compression::High => Some(6),
            Compression::Extreme => Some(15),
            _ => None,
        }
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown compression {s:?}; choose none, dedupe-friendly, optimal, high or extreme"))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Encodes and decodes chunks. Holds compression contexts and scratch space, so keep one per
/// worker thread and reuse it: nothing is allocated per block once warm.
pub struct ChunkCodec {
    keys: Keys,
    compression: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    unzstd: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

/// Why a stored chunk could not be turned back into its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkFault {
    NotAChunk,
    Unauthentic,
    Undecodable(String),
    DigestMismatch,
}

impl fmt::Display for ChunkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkFault::NotAChunk => f.write_str("not a chunk: bad header"),
            ChunkFault::Unauthentic => f.write_str("authentication failed: altered or foreign data"),
            ChunkFault::Undecodable(e) => write!(f, "cannot decompress: {e}"),
            ChunkFault::DigestMismatch => f.write_str("digest mismatch"),
        }
    }
}

/// Blocks at least this large are first tried on a sample: random data is stored raw without
/// paying for a full compression attempt.
const SAMPLE_FROM: usize = 256 << 10;
const SAMPLE_LEN: usize = 32 << 10;

impl ChunkCodec {
    pub fn new(keys: Keys, compression: Compression) -> Self {
        let zstd = compression.zstd_level().map(|l| {
            let mut c = zstd::bulk::Compressor::new(l).expect("zstd accepts levels 1 to 19");
            // The chunk header already records the length; the frame need not repeat it.
            let _ = c.include_contentsize(false);
            let _ = c.include_dictid(false);
            let _ = c.include_checksum(false);
            if l == 1 {
                // A larger match table than level 1's default: about 3% smaller on text at the
                // same speed (measured in docs/BENCHMARKS.md), so per-block compression matches a
                // whole-stream `zstd -1`.
                let _ = c.set_parameter(zstd::zstd_safe::CParameter::HashLog(16));
            }
            c
        });
        let unzstd = zstd::bulk::Decompressor::new().expect("zstd decompression context");
        ChunkCodec { keys, compression, zstd, unzstd, scratch: Vec::new() }
    }

    pub fn digest(&self, block: &[u8]) -> ChunkId {
        ChunkId(self.keys.chunk_digest(block))
    }

    /// Compresses `block` into the scratch buffer: `(codec, length)`, or `None` to store raw.
    fn compress(&mut self, block: &[u8]) -> Option<(u8, usize)> {
        match self.compression {
            Compression::None => None,
            Compression::DedupeFriendly => {
                let bound = lz4_flex::block::get_maximum_output_size(block.len());
                if self.scratch.len() < bound {
                    self.scratch.resize(bound, 0);
                }
                lz4_flex::block::compress_into(block, &mut self.scratch[..bound]).ok().map(|n| (CODEC_LZ4, n))
            }
            _ => {
                let bound = zstd::zstd_safe::compress_bound(block.len());
                if self.scratch.len() < bound {
                    self.scratch.resize(bound, 0);
                }
                let z = self.zstd.as_mut().expect("zstd level has a context");
                if block.len() >= SAMPLE_FROM {
                    let sample = &block[block.len() / 2..][..SAMPLE_LEN];
                    match z.compress_to_buffer(sample, &mut self.scratch[..bound]) {
                        Ok(n) if n * 100 < SAMPLE_LEN * 97 => {}
                        _ => return None,
                    }
                }
                z.compress_to_buffer(block, &mut self.scratch[..bound]).ok().map(|n| (CODEC_ZSTD, n))
            }
        }
    }

    /// The stored form of `block`, whose name is `id`.
    pub fn encode(&mut self, id: &ChunkId, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(id, block, &mut out);
        out
    }

    /// Like [`ChunkCodec::encode`], into a buffer the caller reuses.
    pub fn encode_into(&mut self, id: &ChunkId, block: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(MAGIC);
        match self.compress(block) {
            Some((codec, n)) if n < block.len() => {
                out.push(codec);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(&self.scratch[..n]);
            }
            _ => {
                out.push(CODEC_RAW);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(block);
            }
        }
        if self.keys.is_encrypted() {
            let sealed = self.keys.seal(&id.0, out.split_off(MAGIC.len()));
            out.extend_from_slice(&sealed);
        }
    }

    /// The block stored in `stored`, checked against its name.
    pub fn decode(&mut self, id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>, ChunkFault> {
        let mut out = Vec::new();
        self.decode_into(id, stored, &mut out)?;
        Ok(out)
    }

    /// Like [`ChunkCodec::decode`], into a buffer the caller reuses.
    pub fn decode_into(&mut self, id: &ChunkId, stored: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkFault> {
        let Some(rest) = stored.strip_prefix(MAGIC) else { return Err(ChunkFault::NotAChunk) };
        let opened;
        let body = if self.keys.is_encrypted() {
            opened = self.keys.open(&id.0, rest).ok_or(ChunkFault::Unauthentic)?;
            &opened[..]
        } else {
            rest
        };
        if body.len() < 5 {
            return Err(ChunkFault::NotAChunk);
        }
        let len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_CHUNK_LEN {
            return Err(ChunkFault::Undecodable(format!("claims {len} bytes")));
        }
        let payload = &body[5..];
        let undecodable = |e: String| ChunkFault::Undecodable(e);
        match body[0] {
            CODEC_RAW => {
                out.clear();
                out.extend_from_slice(payload);
            }
            CODEC_LZ4 => {
                // Same length as last time (the usual case): no zero-filling.
                out.resize(len, 0);
                let n = lz4_flex::block::decompress_into(payload, out).map_err(|e| undecodable(e.to_string()))?;
                out.truncate(n);
            }
            CODEC_ZSTD => {
                out.clear();
                out.reserve(len);
                self.unzstd.decompress_to_buffer(payload, out).map_err(|e| undecodable(e.to_string()))?;
            }
            c => return Err(undecodable(format!("unknown codec {c}"))),
        }
        if out.len() != len || self.digest(out) != *id {
            return Err(ChunkFault::DigestMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KdfParams;

    fn cheap() -> KdfParams {
        KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[test]
    fn every_level_round_trips_encrypted_and_not() {
        let (enc, _) = Keys::generate(b"pw", cheap()).unwrap();
        let text: Vec<u8> = (0..300_000u32).map(|i| b"backup "[i as usize % 7]).collect();
        let random: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for keys in [Keys::none(), enc] {
            for c in Compression::ALL {
                let mut codec = ChunkCodec::new(keys.clone(), c);
                for block in [&text[..], &random[..], &[][..]] {
                    let id = codec.digest(block);
                    let stored = codec.encode(&id, block);
                    assert_eq!(codec.decode(&id, &stored).unwrap(), block, "{c}");
                }
            }
        }
    }

    #[test]
    fn flipped_byte_is_detected() {
        let (enc, _) = Keys::generate(b"pw", cheap()).unwrap();
        for keys in [Keys::none(), enc] {
            let mut codec = ChunkCodec::new(keys, Compression::Optimal);
            let block = vec![7u8; 4096];
            let id = codec.digest(&block);
            let mut stored = codec.encode(&id, &block);
            let last = stored.len() - 1;
            stored[last] ^= 1;
            assert!(codec.decode(&id, &stored).is_err());
        }
    }
}
