//! The Bulwark repository: where restore points live.
//!
//! A repository is a deduplicated, content-addressed store. Every stored block (volume mode) is a
//! **chunk** named by the BLAKE3 digest of its plaintext (keyed BLAKE3 when the repository is
//! encrypted, so names leak nothing), compressed and optionally sealed with AES-256-GCM. A
//! **restore point** is a manifest plus a block index (one chunk reference per block). Every point
//! is complete on its own: deleting one never touches another.
//!
//! Chunks are stored many to a pack file ([`pack`]; format 4) or, in repositories made before,
//! one file each. The storage is pluggable ([`storage`]: a directory, S3, memory): the logic here
//! uses only what an object store offers, and coordinates writers with leases ([`locks`]).
//!
//! All writes are atomic (staged and renamed, or a whole object put; the manifest last, after
//! everything it refers to is durable), so a crash at any instant leaves either a whole point or
//! none. Garbage collection is mark and sweep, safe beside running backups (see [`gc`]).
//!
//! This crate knows nothing of networks, servers or terminals: the standalone CLI, the agent and
//! the data mover all call it, so a restore behaves the same wherever it runs. It deliberately
//! does not read volumes either; that is `bulwark-agent`'s job.

pub mod browse;
pub mod chunk;
pub mod crypto;
mod error;
pub mod gc;
pub mod image;
pub mod immutability;
pub mod index;
mod integrity;
pub mod locks;
pub mod pack;
pub mod point;
mod repository;
pub mod retention;
pub mod storage;
pub mod tree;
pub mod verify;
pub mod volumes;

pub use chunk::{ChunkCodec, ChunkId, Compression};
pub use error::{RepoError, Result};
pub use image::{ChunkFetch, Image, PointImage};
pub use index::{BlockIndexReader, BlockIndexWriter, BlockRef, BlockSize};
pub use point::{FileSummary, Manifest, PointKind, PointStats, RestorePointId};
pub use repository::{
    Catalog, DamagedManifest, InitOptions, Isolation, Layout, PointSpec, PointWriter, Repository, TreeCursor,
    FORMAT_VERSION,
};
