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
    /// zstd level 1: the best ratio per CPU second; the default.
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

/// Encodes and decodes chunks. Holds compression contexts, so keep one per worker thread.
pub struct ChunkCodec {
    keys: Keys,
    compression: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    unzstd: zstd::bulk::Decompressor<'static>,
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

impl ChunkCodec {
    pub fn new(keys: Keys, compression: Compression) -> Self {
        let zstd =
            compression.zstd_level().map(|l| zstd::bulk::Compressor::new(l).expect("zstd accepts levels 1 to 19"));
        let unzstd = zstd::bulk::Decompressor::new().expect("zstd decompression context");
        ChunkCodec { keys, compression, zstd, unzstd }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn digest(&self, block: &[u8]) -> ChunkId {
        ChunkId(self.keys.chunk_digest(block))
    }

    /// The stored form of `block`, whose name is `id`.
    pub fn encode(&mut self, id: &ChunkId, block: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(block.len() / 2 + 16);
        let compressed = match self.compression {
            Compression::None => None,
            Compression::DedupeFriendly => Some((CODEC_LZ4, lz4_flex::block::compress(block))),
            _ => {
                let z = self.zstd.as_mut().expect("zstd level has a context");
                z.compress(block).ok().map(|c| (CODEC_ZSTD, c))
            }
        };
        body.extend_from_slice(MAGIC);
        match compressed {
            Some((codec, c)) if c.len() < block.len() => {
                body.push(codec);
                body.extend_from_slice(&(block.len() as u32).to_le_bytes());
                body.extend_from_slice(&c);
            }
            _ => {
                body.push(CODEC_RAW);
                body.extend_from_slice(&(block.len() as u32).to_le_bytes());
                body.extend_from_slice(block);
            }
        }
        if !self.keys.is_encrypted() {
            return body;
        }
        let sealed = self.keys.seal(&id.0, body.split_off(MAGIC.len()));
        body.extend_from_slice(&sealed);
        body
    }

    /// The block stored in `stored`, checked against its name.
    pub fn decode(&mut self, id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>, ChunkFault> {
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
        let block = match body[0] {
            CODEC_RAW => payload.to_vec(),
            CODEC_LZ4 => {
                lz4_flex::block::decompress(payload, len).map_err(|e| ChunkFault::Undecodable(e.to_string()))?
            }
            CODEC_ZSTD => self.unzstd.decompress(payload, len).map_err(|e| ChunkFault::Undecodable(e.to_string()))?,
            c => return Err(ChunkFault::Undecodable(format!("unknown codec {c}"))),
        };
        if block.len() != len || self.digest(&block) != *id {
            return Err(ChunkFault::DigestMismatch);
        }
        Ok(block)
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
