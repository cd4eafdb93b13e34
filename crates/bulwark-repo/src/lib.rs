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
pub mod copy;
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
pub use copy::{copy_point, CopiedPoint};
pub use error::{RepoError, Result};
pub use image::{ChunkFetch, Image, PointImage};
pub use index::{BlockIndexReader, BlockIndexWriter, BlockRef, BlockSize};
pub use point::{ApplicationRecord, FileSummary, Manifest, PointKind, PointStats, RestorePointId};
pub use repository::{
    Catalog, DamagedManifest, InitOptions, Isolation, Layout, PointSpec, PointWriter, Repository, TreeCursor,
    FORMAT_VERSION,
};

/// Runs `f` for every index below `n` on up to `threads` threads (this one among them); the
/// first error wins.
pub(crate) fn spread<E: Send>(
    threads: usize,
    n: usize,
    f: impl Fn(usize) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> std::result::Result<(), E> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= n {
                return Ok(());
            }
            f(i)?;
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(n)).map(|_| s.spawn(work)).collect();
        let mine = work();
        helpers.into_iter().map(|h| h.join().expect("spread work does not panic")).chain([mine]).collect()
    })
}
