//! Where a repository's objects physically live.
//!
//! The repository sees its storage as a flat namespace of keys (`points/….manifest`,
//! `data/3f/3f2a…`) holding immutable objects: read whole or by range, written whole and
//! atomically (or only if absent), listed by prefix, deleted. That is all an object store
//! offers, so that is all the repository logic may use; coordination between writers (leases,
//! the maintenance lock) is built from objects with expiry in [`crate::locks`]. Each backend is
//! a file of its own here, and [`open`] maps a [`Location`] to one.
//!
//! A few capabilities only a local directory has (durability barriers, modification times a
//! backup can refresh, extended attributes) are trait methods whose defaults say "not here";
//! the version 1 layout (one file per chunk) needs them and so lives on local storage only.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::SystemTime;

pub mod cache;
pub mod local;
pub mod location;
pub mod memory;
pub mod s3;
mod sigv4;

pub use local::LocalStorage;
pub use location::Location;
pub use memory::MemoryStorage;
pub use s3::S3Storage;

/// One object as a listing or a stat shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key relative to the listed prefix (the whole key for a stat).
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
    /// What changes whenever the object is rewritten, where the storage says (an S3 ETag):
    /// finer than `modified`, which object stores keep to the second.
    pub tag: Option<String>,
}

/// What [`Storage::tidy_versions`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VersionsTidied {
    /// Objects that were hidden behind a delete marker and are back.
    pub restored: Vec<String>,
    pub markers_removed: u64,
    /// Versions no longer current (overwritten objects' earlier bytes) deleted.
    pub old_versions_removed: u64,
    /// Versions no longer current kept because a lock still protects them.
    pub old_versions_locked: u64,
}

/// An object being written; invisible under its key until [`StagedObject::commit`].
pub trait StagedObject: Write + Send {
    /// Makes the object visible under its key, atomically. Durability follows at the next
    /// [`Storage::sync`] (or at once with `durable`; an object store's is always at once).
    fn commit(self: Box<Self>, durable: bool) -> io::Result<()>;
    /// Records the digest of the object's bytes with it (see [`Storage::stored_sum`]); a storage
    /// that keeps no such records ignores it.
    fn set_sum(&mut self, sum: &[u8; 32]) -> io::Result<()> {
        let _ = sum;
        Ok(())
    }
}

/// See [`Storage::sync_point`].
pub trait SyncPoint: Send {
    fn sync(&self) -> io::Result<()>;
}

/// The sync point of a storage whose writes are durable when they return.
pub struct AlreadyDurable;

impl SyncPoint for AlreadyDurable {
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Held while a guarded operation runs; released on drop.
pub trait Guard: Send {}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{what} needs a repository in a local directory"))
}

pub trait Storage: Send + Sync {
    /// A name for messages: a path or a URL, never a credential.
    fn describe(&self) -> String;
    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(key, &mut buf)?;
        Ok(buf)
    }
    /// Reads a whole object into `buf` (replacing its content, keeping its allocation).
    fn read_into(&self, key: &str, buf: &mut Vec<u8>) -> io::Result<()>;
    /// Reads `len` bytes at `offset` into `buf` (replacing its content); an object too short
    /// for the range is an `UnexpectedEof` error.
    fn read_range(&self, key: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()>;
    fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>>;
    /// Stages a new object; a committed object with the same key is replaced atomically.
    fn create(&self, key: &str) -> io::Result<Box<dyn StagedObject>>;
    /// Writes a whole object atomically.
    fn put(&self, key: &str, data: &[u8], durable: bool) -> io::Result<()> {
        let mut staged = self.create(key)?;
        staged.write_all(data)?;
        staged.commit(durable)
    }
    /// Writes a whole object durably unless the key exists: `Ok(false)` when it did (the
    /// object is then untouched). What locks are made of.
    fn put_new(&self, key: &str, data: &[u8]) -> io::Result<bool>;
    /// An object's size and time, `None` when absent.
    fn stat(&self, key: &str) -> io::Result<Option<Entry>>;
    fn exists(&self, key: &str) -> io::Result<bool> {
        Ok(self.stat(key)?.is_some())
    }
    /// The size of an object (0 when absent).
    fn size(&self, key: &str) -> io::Result<u64> {
        Ok(self.stat(key)?.map_or(0, |e| e.size))
    }
    /// Every object whose key starts with `prefix` (a "directory" ending in `/`), at any depth,
    /// named relative to it; staged objects are not listed.
    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>>;
    /// Deletes an object; an absent one is no error.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// The storage's own clock (the time a new object would be stamped with). Garbage collection
    /// and lease expiry compare object times with it, so no client's clock ever matters.
    fn now(&self) -> io::Result<SystemTime>;
    /// Makes everything committed so far durable.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    /// A handle whose `sync` reports every write-back error since the handle was taken, even
    /// one another process's sync has already seen: taken when a backup starts, synced before
    /// its manifest.
    fn sync_point(&self) -> io::Result<Box<dyn SyncPoint>> {
        Ok(Box::new(AlreadyDurable))
    }
    /// Moves a damaged object out of its key (kept beside it for inspection, as `KEY.damaged`):
    /// the key then reads as missing, so the next backup that has the data stores it again.
    fn quarantine(&self, key: &str) -> io::Result<()> {
        let bytes = self.read(key)?;
        self.put(&format!("{key}.damaged"), &bytes, true)?;
        self.delete(key)
    }

    /// On a store that keeps earlier versions of objects (an S3 bucket with versioning, which
    /// Object Lock needs), removes what the repository does not see but pays for: versions
    /// overwritten since (a renewed lease's, a rewritten list's), unless a lock still protects
    /// them; and delete markers, which this program never writes (it deletes every version of
    /// an object), so an object someone deleted outside it comes back rather than being lost
    /// when its lock ends.
    fn tidy_versions(&self) -> io::Result<VersionsTidied> {
        Ok(VersionsTidied::default())
    }
    /// Aborts uploads of objects in parts begun before `before` and never finished (a writer
    /// died mid-object: its parts are stored, and billed, but no object shows them). Returns
    /// how many were aborted.
    fn abort_stale_uploads(&self, before: SystemTime) -> io::Result<u64> {
        let _ = before;
        Ok(0)
    }

    // What only a local directory offers: the version 1 layout (a file per chunk) needs it.

    /// Creates the directory skeleton of a new repository; nothing to do on an object store.
    fn create_layout(&self, dirs: &[String]) -> io::Result<()> {
        let _ = dirs;
        Ok(())
    }
    /// Staged objects under a prefix left behind by writers that died, with their age.
    fn list_stale_staged(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let _ = prefix;
        Ok(Vec::new())
    }
    /// Marks an existing object as in use now (its modification time), under the shared side of
    /// the chunk lock, so a collector holding the exclusive side never sees the object old and
    /// then deletes it after it was touched; `false` if absent.
    fn touch_shared(&self, key: &str) -> io::Result<bool> {
        let _ = key;
        Err(unsupported("refreshing a chunk's time"))
    }
    /// Exclusive side of the chunk lock: held by the collector around "stat and delete".
    fn lock_chunks_exclusive(&self) -> io::Result<Box<dyn Guard>> {
        Err(unsupported("the chunk lock"))
    }
    /// Records that the object at `key`, `size` bytes long, was checked whole (read, decoded,
    /// its digest matched). `Ok(false)` when this storage keeps no such marks.
    fn mark_checked(&self, key: &str, size: u64) -> io::Result<bool> {
        let _ = (key, size);
        Ok(false)
    }
    /// The size recorded by [`Storage::mark_checked`] for the object at `key`, if it has a mark.
    /// Rewriting an object drops its mark.
    fn checked_size(&self, key: &str) -> io::Result<Option<u64>> {
        let _ = key;
        Ok(None)
    }
    /// The BLAKE3 digest of the object's bytes recorded when it was written
    /// ([`StagedObject::set_sum`]), if any.
    fn stored_sum(&self, key: &str) -> io::Result<Option<[u8; 32]>> {
        let _ = key;
        Ok(None)
    }
    /// Whether this is a directory on a local filesystem (what the version 1 layout needs).
    fn is_local(&self) -> bool {
        false
    }
}

/// Opens the storage a location names.
/// What a repository takes of its storage, and what that storage has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Every object's size, as the storage counts it.
    pub stored_bytes: u64,
    pub objects: u64,
    /// The filesystem of a repository in a directory; `None` for object stores, which have no
    /// capacity to report.
    pub capacity: Option<Capacity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    /// What an unprivileged writer may still use (without the blocks reserved for root).
    pub free_bytes: u64,
}

/// Measures the repository at `location`: lists every object (no key needed) and, for a
/// directory, asks its filesystem.
pub fn usage(location: &Location) -> io::Result<Usage> {
    let storage = open(location)?;
    let objects = storage.list("")?;
    let capacity = match location {
        Location::Local(dir) => {
            let st = rustix::fs::statvfs(dir.as_path()).map_err(io::Error::from)?;
            Some(Capacity { total_bytes: st.f_blocks * st.f_frsize, free_bytes: st.f_bavail * st.f_frsize })
        }
        Location::S3(_) | Location::Memory(_) => None,
    };
    Ok(Usage { stored_bytes: objects.iter().map(|e| e.size).sum(), objects: objects.len() as u64, capacity })
}

pub fn open(location: &Location) -> io::Result<Arc<dyn Storage>> {
    match location {
        Location::Local(path) => Ok(Arc::new(LocalStorage::new(path.clone()))),
        Location::Memory(name) => Ok(Arc::new(MemoryStorage::named(name))),
        Location::S3(loc) => Ok(Arc::new(S3Storage::open(loc)?)),
    }
}
