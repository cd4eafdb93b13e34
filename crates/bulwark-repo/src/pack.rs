//! Pack files: the version 4 layout, where chunks are stored many to an object.
//!
//! One object per chunk costs one inode (or one S3 request) per megabyte stored; packs make it
//! one per 16–32 MiB. The layout, after restic's:
//!
//! - `data/3f/3f2a…` — a **pack**: stored chunks back to back (each exactly as a loose chunk
//!   file would hold it), then a header sealed with the master key (each chunk's id, offset,
//!   length and the BLAKE3 digest of its stored bytes), its length (u32 LE) and `BWP1`. The
//!   header at the end lets a pack be written as a stream.
//! - `index/…` — **index objects**, sealed: which chunks each pack holds and where. A
//!   writer adds one index object for every 4 packs it finishes and one before each manifest,
//!   so everything a manifest refers to is findable before the manifest exists. Index objects
//!   never change; garbage collection replaces the whole set.
//! - `gc/condemned` — chunks the last collection found unreferenced, with the packs holding
//!   the copies it condemned (see [`crate::gc`]): backups that begin after it was written never
//!   reuse them, and a later collection deletes those copies only.
//!
//! Everything a point needs is reached from its manifest by chunk id, never by pack: packs can
//! be rewritten (repacked) under running readers, who look a chunk up again when its pack is
//! gone.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::SystemTime;

use crate::chunk::ChunkId;
use crate::crypto::{self, Keys};
use crate::storage::{StagedObject, Storage};

pub(crate) const DATA: &str = "data/";
pub(crate) const INDEX: &str = "index/";
pub(crate) const CONDEMNED: &str = "gc/condemned";
const PACK_MAGIC: &[u8; 4] = b"BWP1";
const HEADER_MAGIC: &[u8; 4] = b"BWH1";
const INDEX_MAGIC: &[u8; 4] = b"BWX1";
const CONDEMNED_MAGIC: &[u8; 4] = b"BWG2";
const CONDEMNED_MAGIC_V1: &[u8; 4] = b"BWG1";
/// The default size a pack is closed at.
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;
pub const MIN_PACK_SIZE: u64 = 1 << 20;
pub const MAX_PACK_SIZE: u64 = 1 << 30;
/// Packs finished before their index object is written (besides the one before a manifest, and
/// when a backup ends without one). What a writer killed outright loses for the next backup to
/// send again is at most these and the open pack; every index object costs a request.
const PACKS_PER_INDEX: usize = 4;
/// Entries per index object when garbage collection rewrites the index.
const ENTRIES_PER_INDEX: usize = 200_000;
const HEADER_ENTRY: usize = 32 + 8 + 4 + 32;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    fn random() -> PackId {
        PackId(crypto::random_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("{DATA}{}/{h}", &h[..2])
    }

    /// The pack a key under `data/` names (relative to `data/`), if it names one.
    pub fn from_listing(name: &str) -> Option<PackId> {
        let (dir, file) = name.split_once('/')?;
        let v = hex::decode(file).ok()?;
        let id = PackId(v.try_into().ok()?);
        (dir == &file[..2]).then_some(id)
    }
}

impl std::fmt::Display for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackId({})", self.to_hex())
    }
}

/// One chunk in a pack's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub chunk: ChunkId,
    pub offset: u64,
    pub len: u32,
    /// BLAKE3 of the stored bytes: checking a pack needs no key and no decoding.
    pub sum: [u8; 32],
}

/// Where one copy of a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
}

/// Seals a small object: authenticated always (keyed when encrypted), encrypted when the
/// repository is.
fn seal(keys: &Keys, aad: &str, mut plain: Vec<u8>) -> Vec<u8> {
    let mut h = keys.object_hasher();
    h.update(aad.as_bytes());
    h.update(&plain);
    plain.extend_from_slice(h.finalize().as_bytes());
    keys.seal(aad.as_bytes(), plain)
}

fn unseal(keys: &Keys, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
    let mut plain = keys.open(aad.as_bytes(), sealed).ok_or("it fails authentication (altered or damaged)")?;
    if plain.len() < 32 {
        return Err("it is truncated".into());
    }
    let body_len = plain.len() - 32;
    let mut h = keys.object_hasher();
    h.update(aad.as_bytes());
    h.update(&plain[..body_len]);
    if h.finalize().as_bytes()[..] != plain[body_len..] {
        return Err("its digest does not match (altered or damaged)".into());
    }
    plain.truncate(body_len);
    Ok(plain)
}

/// A little-endian reader over a decoded object; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("it ends early".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    /// A count of items each at least `min` bytes long, refused if the rest cannot hold them.
    fn count(&mut self, min: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err("it claims more entries than it holds".into());
        }
        Ok(n)
    }
}

fn header_aad(pack: &PackId) -> String {
    format!("bulwark pack {pack}")
}

fn encode_header(keys: &Keys, pack: &PackId, entries: &[PackEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + entries.len() * HEADER_ENTRY);
    b.extend_from_slice(HEADER_MAGIC);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        b.extend_from_slice(&e.chunk.0);
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.len.to_le_bytes());
        b.extend_from_slice(&e.sum);
    }
    let mut sealed = seal(keys, &header_aad(pack), b);
    let len = sealed.len() as u32;
    sealed.extend_from_slice(&len.to_le_bytes());
    sealed.extend_from_slice(PACK_MAGIC);
    sealed
}

/// Reads a whole pack's header and checks that its entries lie inside the pack.
pub fn parse_pack(keys: &Keys, pack: &PackId, bytes: &[u8]) -> Result<Vec<PackEntry>, String> {
    let n = bytes.len();
    if n < 8 || &bytes[n - 4..] != PACK_MAGIC {
        return Err("it does not end like a pack (truncated or not a pack)".into());
    }
    let hlen = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
    if hlen > n - 8 {
        return Err("its header length is larger than the pack".into());
    }
    let data_end = (n - 8 - hlen) as u64;
    let plain = unseal(keys, &header_aad(pack), &bytes[n - 8 - hlen..n - 8]).map_err(|e| format!("its header: {e}"))?;
    let mut c = Cursor(&plain);
    if c.take(4)? != HEADER_MAGIC {
        return Err("its header has a bad magic".into());
    }
    let count = c.count(HEADER_ENTRY)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let e = PackEntry { chunk: ChunkId(c.arr()?), offset: c.u64()?, len: c.u32()?, sum: c.arr()? };
        if e.offset.checked_add(e.len as u64).is_none_or(|end| end > data_end) {
            return Err(format!("its header places chunk {} outside the pack", e.chunk));
        }
        out.push(e);
    }
    Ok(out)
}

/// A pack in an index object: its id, size, and entries (chunk, offset, length).
pub type IndexedPack = (PackId, u64, Vec<(ChunkId, u64, u32)>);

/// What one index object says.
#[derive(Debug, Default, Clone)]
pub struct IndexObject {
    pub packs: Vec<IndexedPack>,
}

fn index_aad(name: &str) -> String {
    format!("bulwark pack index {name}")
}

impl IndexObject {
    /// The same packs in objects of about `entries` entries each (a pack is never split);
    /// none if there are no packs.
    pub fn split(self, entries: usize) -> Vec<IndexObject> {
        let mut out = Vec::new();
        let (mut cur, mut n) = (IndexObject::default(), 0);
        for p in self.packs {
            n += p.2.len();
            cur.packs.push(p);
            if n >= entries {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
        }
        if !cur.packs.is_empty() {
            out.push(cur);
        }
        out
    }

    fn encode(&self, keys: &Keys, name: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(INDEX_MAGIC);
        b.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for (id, size, entries) in &self.packs {
            b.extend_from_slice(&id.0);
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (c, off, len) in entries {
                b.extend_from_slice(&c.0);
                b.extend_from_slice(&off.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
        }
        seal(keys, &index_aad(name), b)
    }

    pub fn decode(keys: &Keys, name: &str, sealed: &[u8]) -> Result<IndexObject, String> {
        let plain = unseal(keys, &index_aad(name), sealed)?;
        let mut c = Cursor(&plain);
        if c.take(4)? != INDEX_MAGIC {
            return Err("bad magic".into());
        }
        let mut out = IndexObject::default();
        for _ in 0..c.count(28)? {
            let (id, size) = (PackId(c.arr()?), c.u64()?);
            let n = c.count(44)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push((ChunkId(c.arr()?), c.u64()?, c.u32()?));
            }
            out.packs.push((id, size, entries));
        }
        Ok(out)
    }
}

/// The chunk → pack map of the whole repository, as the index objects loaded so far say.
#[derive(Default)]
pub(crate) struct IndexState {
    /// Index objects loaded, by name.
    loaded: HashSet<String>,
    chunks: HashMap<ChunkId, Loc>,
    /// Further copies of chunks stored more than once (two backups racing, a damaged copy
    /// replaced): rare, so kept apart.
    extra: HashMap<ChunkId, Vec<Loc>>,
    packs: HashMap<PackId, u64>,
    /// Which index object names each pack (what must stay for the pack to be found).
    pack_index: HashMap<PackId, String>,
    /// Whether the index objects were loaded at least once.
    complete: bool,
}

impl IndexState {
    fn add(&mut self, chunk: ChunkId, loc: Loc) {
        match self.chunks.get(&chunk) {
            None => {
                self.chunks.insert(chunk, loc);
            }
            Some(l) if *l == loc => {}
            Some(_) => {
                let extra = self.extra.entry(chunk).or_default();
                if !extra.contains(&loc) {
                    extra.push(loc);
                }
            }
        }
    }

    fn add_pack(&mut self, f: &Finished) {
        self.packs.insert(f.id, f.size);
        for (c, off, len) in &f.entries {
            self.add(*c, Loc { pack: f.id, offset: *off, len: *len });
        }
    }

    fn apply(&mut self, name: &str, obj: &IndexObject) {
        for (pack, size, entries) in &obj.packs {
            self.packs.insert(*pack, *size);
            self.pack_index.insert(*pack, name.to_string());
            for (c, offset, len) in entries {
                self.add(*c, Loc { pack: *pack, offset: *offset, len: *len });
            }
        }
    }

    pub fn locations(&self, chunk: &ChunkId) -> Vec<Loc> {
        let mut v: Vec<Loc> = self.chunks.get(chunk).copied().into_iter().collect();
        if let Some(e) = self.extra.get(chunk) {
            v.extend(e.iter().copied());
        }
        v
    }

    /// The index object each pack was loaded from.
    pub fn index_of(&self, pack: &PackId) -> Option<&String> {
        self.pack_index.get(pack)
    }

    /// Every chunk with at least one usable copy.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.chunks.keys().copied()
    }

    pub fn pack_ids(&self) -> impl Iterator<Item = PackId> + '_ {
        self.packs.keys().copied()
    }

    /// What a collection works on, taken at one instant: the index objects loaded, and every
    /// copy in the packs they name. Packs this process finished and has not indexed yet are
    /// in neither.
    pub fn snapshot(&self) -> IndexSnapshot {
        let mut by_pack: HashMap<PackId, Vec<(ChunkId, Loc)>> = HashMap::new();
        let copies = self.chunks.iter().chain(self.extra.iter().flat_map(|(c, ls)| ls.iter().map(move |l| (c, l))));
        for (c, l) in copies.filter(|(_, l)| self.pack_index.contains_key(&l.pack)) {
            by_pack.entry(l.pack).or_default().push((*c, *l));
        }
        let sizes = by_pack.keys().map(|p| (*p, self.packs.get(p).copied().unwrap_or(0))).collect();
        IndexSnapshot { names: self.loaded.iter().cloned().collect(), by_pack, sizes }
    }

    pub fn pack_size(&self, pack: &PackId) -> Option<u64> {
        self.packs.get(pack).copied()
    }
}

/// See [`IndexState::snapshot`].
pub(crate) struct IndexSnapshot {
    pub names: Vec<String>,
    pub by_pack: HashMap<PackId, Vec<(ChunkId, Loc)>>,
    pub sizes: HashMap<PackId, u64>,
}

/// A pack being written: chunks appended, then the header, then committed.
pub(crate) struct OpenPack {
    id: PackId,
    staged: Box<dyn StagedObject>,
    entries: Vec<PackEntry>,
    len: u64,
}

impl OpenPack {
    pub fn create(storage: &dyn Storage) -> io::Result<OpenPack> {
        let id = PackId::random();
        let staged = storage.create(&id.key())?;
        Ok(OpenPack { id, staged, entries: Vec::new(), len: 0 })
    }

    pub fn append(&mut self, chunk: &ChunkId, stored: &[u8]) -> io::Result<()> {
        self.staged.write_all(stored)?;
        let sum = *blake3::hash(stored).as_bytes();
        self.entries.push(PackEntry { chunk: *chunk, offset: self.len, len: stored.len() as u32, sum });
        self.len += stored.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes the header and commits the pack: what an index object says of it.
    pub fn close(mut self, keys: &Keys) -> Result<Finished, (PackId, io::Error)> {
        let header = encode_header(keys, &self.id, &self.entries);
        let size = self.len + header.len() as u64;
        if let Err(e) = self.staged.write_all(&header).and_then(|()| self.staged.commit(false)) {
            return Err((self.id, e));
        }
        let entries = self.entries.iter().map(|e| (e.chunk, e.offset, e.len)).collect();
        Ok(Finished { id: self.id, size, entries })
    }
}

/// The chunks of a pack finished but not yet in an index object.
pub(crate) struct Finished {
    pub id: PackId,
    pub size: u64,
    pub entries: Vec<(ChunkId, u64, u32)>,
}

/// Condemned chunks, as the last collection left them.
#[derive(Debug, Clone, Default)]
pub struct Condemned {
    /// What backups must not reuse.
    pub chunks: HashSet<ChunkId>,
    /// The copies condemned: what a later collection may delete. A copy stored after the list
    /// was written (by a backup that saw it and stored the chunk again) is not one of them.
    pub copies: HashSet<(ChunkId, PackId)>,
    /// When the list was written (the storage's clock): backups that began after it (with a
    /// margin) have seen it.
    pub written: Option<SystemTime>,
}

/// A pack's check, done by the first thread that needs it while the others wait.
type CheckSlot = Arc<Mutex<Option<Arc<PackHealth>>>>;

/// A repository's packs as one process sees them: the index, the pack being filled, the
/// packs finished since the last index object.
///
/// On remote storage (where writing a pack is a slow upload, and reading a chunk one request),
/// two things run beside the callers:
/// - a pack that fills is uploaded by a thread of its own while the next one fills, at most
///   [`UPLOADS_IN_FLIGHT`] at once (a writer that fills another waits for a turn, so memory is
///   bounded by the packs in flight, not by the data). An upload that fails is counted like any
///   abandoned pack (see [`Packs::failures`]) and reported to the next `put` or `flush`;
///   `flush` returns only when every pack handed over before it is stored and indexed.
/// - readers that go through a pack in order get it in windows of [`WINDOW`] bytes, the next
///   one read ahead, instead of one request per chunk (see [`Packs::read_copy`]).
pub(crate) struct Packs {
    core: Arc<Core>,
    target: u64,
    open: Mutex<Option<OpenPack>>,
    condemned: RwLock<Condemned>,
    /// Packs checked whole in this process, and what was found.
    checked: Mutex<HashMap<PackId, CheckSlot>>,
}

/// What the threads that upload packs share with the writers.
pub(crate) struct Core {
    storage: Arc<dyn Storage>,
    keys: Keys,
    state: RwLock<IndexState>,
    finished: Mutex<Vec<Finished>>,
    /// Held while an index object of this process is written and while the index is
    /// refreshed: a refresh sees each of this process's packs indexed, queued, or both.
    indexing: Mutex<()>,
    /// Packs abandoned after an error: chunks that writers were told were stored are lost,
    /// so no point that may use them may be committed (see [`Packs::failures`]).
    failures: Mutex<(u64, Option<String>)>,
    /// Whether the storage is remote: packs are then uploaded in the background and read in
    /// windows.
    remote: bool,
    uploads: Mutex<Uploads>,
    /// Signalled whenever an upload ends.
    uploaded: Condvar,
    windows: Mutex<Windows>,
    /// Signalled whenever a window has been read (or its read failed).
    window_read: Condvar,
}

/// Packs uploading in the background.
#[derive(Default)]
struct Uploads {
    in_flight: usize,
    /// Tickets in the order packs were handed over: the next one to give, every one below
    /// `done_below` ended, and those ended above it.
    next_ticket: u64,
    done_below: u64,
    done: HashSet<u64>,
    /// The last failure not yet reported to a writer: taken by the next `put` or `flush`.
    unreported: Option<(io::ErrorKind, String)>,
}

/// Packs finished and being uploaded at once, besides the one filling (on remote storage).
pub const UPLOADS_IN_FLIGHT: usize = 2;

/// How much of a pack a reader going through it in order gets per request (on remote storage).
pub const WINDOW: u64 = 8 << 20;
/// Windows kept for readers, at most (beyond those being read).
const WINDOWS_KEPT: usize = 6;
/// Windows read ahead of the one in use, each by a thread of its own: one GET of a window
/// takes longer than the readers take to use one (measured on loopback SeaweedFS).
const READ_AHEAD: usize = 3;
/// How far from where the last read of a pack ended a read may start and still count as going
/// through the pack in order (chunks in between may be reused from elsewhere, and parallel
/// readers ask slightly out of order).
const IN_ORDER_GAP: u64 = 4 << 20;
/// Packs whose last read end is remembered, for telling readers in order from others.
const RECENT_PACKS: usize = 32;

/// Windows of packs read whole for readers going through them in order.
#[derive(Default)]
struct Windows {
    list: Vec<Window>,
    /// Where the last read of each recently read pack ended, most recent last.
    recent: Vec<(PackId, u64)>,
    /// Ticks for the least recently used window.
    clock: u64,
    /// Buffers of windows dropped, for the next windows read: the same few buffers serve a
    /// whole restore (a freed buffer of this size is not given back to the system, so new ones
    /// would add up to far more memory than the windows kept).
    spare: Vec<Vec<u8>>,
}

struct Window {
    pack: PackId,
    start: u64,
    end: u64,
    /// `None` while it is being read.
    bytes: Option<Arc<Vec<u8>>>,
    /// Whether the window after it was asked for.
    next_asked: bool,
    used: u64,
}

impl std::ops::Deref for Packs {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Packs {
    pub fn new(storage: Arc<dyn Storage>, keys: Keys, target: u64) -> Packs {
        let remote = !storage.is_local();
        Packs {
            core: Arc::new(Core {
                storage,
                keys,
                state: RwLock::new(IndexState::default()),
                finished: Mutex::new(Vec::new()),
                indexing: Mutex::new(()),
                failures: Mutex::new((0, None)),
                remote,
                uploads: Mutex::new(Uploads::default()),
                uploaded: Condvar::new(),
                windows: Mutex::new(Windows::default()),
                window_read: Condvar::new(),
            }),
            target,
            open: Mutex::new(None),
            condemned: RwLock::new(Condemned::default()),
            checked: Mutex::new(HashMap::new()),
        }
    }

    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.state.read().expect("no panics while held")
    }

    /// Loads index objects written since the last call (all of them the first time). When an
    /// index object loaded before is gone (a collection rewrote the index), starts over.
    pub fn refresh(&self) -> io::Result<()> {
        // No index object is written meanwhile by this process (see `Core::index_finished`).
        let _indexing = self.indexing.lock().expect("no panics while held");
        let listed = self.storage.list(INDEX)?;
        let names: HashSet<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        let restart = {
            let st = self.state();
            st.loaded.iter().any(|n| !names.contains(n.as_str()))
        };
        let mut fresh = IndexState::default();
        let mut guard;
        let base: &mut IndexState = if restart {
            &mut fresh
        } else {
            guard = self.state.write().expect("no panics while held");
            &mut guard
        };
        // Read without holding the lock when starting over; the common case (a few new objects)
        // holds it briefly.
        let todo: Vec<&str> = names.iter().copied().filter(|n| !base.loaded.contains(*n)).collect();
        let mut objects = Vec::with_capacity(todo.len());
        for name in todo {
            match self.storage.read(&format!("{INDEX}{name}")) {
                Ok(raw) => {
                    let obj = IndexObject::decode(&self.keys, name, &raw).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("index object {name} is unreadable: {e}"))
                    })?;
                    objects.push((name.to_string(), obj));
                }
                // Replaced by a collection between listing and reading: the next refresh sees
                // its successors.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        for (name, obj) in objects {
            base.apply(&name, &obj);
            base.loaded.insert(name);
        }
        base.complete = true;
        if restart {
            let _ = base;
            // Packs this process finished and has not indexed yet are in no object. The queue
            // stays locked until the state is replaced, so a pack finishing now is in one or
            // the other (`Core::finish` adds to both under the queue's lock).
            let finished = self.finished.lock().expect("no panics while held");
            for f in finished.iter() {
                fresh.add_pack(f);
            }
            *self.state.write().expect("no panics while held") = fresh;
        }
        Ok(())
    }

    fn ensure_loaded(&self) -> io::Result<()> {
        if !self.state().complete {
            self.refresh()?;
        }
        Ok(())
    }

    /// Reads the condemned list (at the start of every backup, after its lease is written).
    pub fn load_condemned(&self) -> io::Result<()> {
        let c = read_condemned(&*self.storage, &self.keys)?;
        *self.condemned.write().expect("no panics while held") = c;
        Ok(())
    }

    pub fn is_condemned(&self, chunk: &ChunkId) -> bool {
        self.condemned.read().expect("no panics while held").chunks.contains(chunk)
    }

    pub fn locations(&self, chunk: &ChunkId) -> io::Result<Vec<Loc>> {
        self.ensure_loaded()?;
        Ok(self.state().locations(chunk))
    }

    /// Appends a stored chunk to the open pack; closes the pack when it is full. On remote
    /// storage the full pack is uploaded in the background (this waits for a turn while
    /// [`UPLOADS_IN_FLIGHT`] are under way); a background upload's failure not reported yet is
    /// this call's error.
    pub fn put(&self, chunk: &ChunkId, stored: &[u8]) -> io::Result<()> {
        self.take_unreported()?;
        let full = {
            let mut open = self.open.lock().expect("no panics while held");
            if open.is_none() {
                *open = Some(OpenPack::create(&*self.storage)?);
            }
            let p = open.as_mut().expect("just opened");
            if let Err(e) = p.append(chunk, stored) {
                let lost = open.take().expect("open");
                self.fail(&lost.id, &e);
                return Err(e);
            }
            if p.len() < self.target {
                None
            } else if self.remote {
                // The turn is waited for holding the open pack: every writer then waits, and
                // no more than the packs in flight and this one are held in memory.
                let ticket = self.wait_for_turn();
                open.take().map(|p| (p, Some(ticket)))
            } else {
                open.take().map(|p| (p, None))
            }
        };
        match full {
            Some((p, Some(ticket))) => {
                Core::upload(&self.core, p, ticket);
                Ok(())
            }
            Some((p, None)) => self.finish(p),
            None => Ok(()),
        }
    }

    /// Closes the open pack and indexes every finished one: what a manifest needs first. Returns
    /// once every pack handed to a background upload before the call is stored, and fails if
    /// one of them could not be (or another background failure was not reported yet).
    pub fn flush(&self) -> io::Result<()> {
        let failed_before = self.failures().0;
        let (open, last) = {
            let open = self.open.lock().expect("no panics while held");
            // Tickets are handed out under the open pack's lock: every pack filled before this
            // point has one below `last`.
            (open, self.uploads.lock().expect("no panics while held").next_ticket)
        };
        let mut open = open;
        let closing = open.take();
        drop(open);
        // The open pack goes up from here while the others finish.
        let closed = closing.map(|p| self.finish(p));
        self.wait_uploads(last);
        if let Some(Err(e)) = closed {
            return Err(e);
        }
        self.take_unreported()?;
        let (failed, why) = self.failures();
        if failed != failed_before {
            return Err(io::Error::other(why.unwrap_or_else(|| "a pack could not be written".into())));
        }
        self.index_finished()
    }

    /// The keys of the packs holding `chunks` (every copy) and of the index objects naming
    /// those packs: what a point needs kept.
    pub fn objects_holding(&self, chunks: &HashSet<ChunkId>) -> io::Result<(Vec<String>, Vec<String>)> {
        self.ensure_loaded()?;
        let st = self.state();
        let mut packs = HashSet::new();
        for c in chunks {
            packs.extend(st.locations(c).into_iter().map(|l| l.pack));
        }
        let index: HashSet<&String> = packs.iter().filter_map(|p| st.index_of(p)).collect();
        Ok((packs.iter().map(PackId::key).collect(), index.into_iter().map(|n| format!("{INDEX}{n}")).collect()))
    }

    /// Reads the stored bytes of one copy of a chunk. On remote storage, a reader going through
    /// a pack in order gets it from windows of [`WINDOW`] bytes read whole (the next one read
    /// ahead when half of one is used), shared by every reader of this repository; the first
    /// read of a pack, and reads out of order, ask for the chunk alone.
    pub fn read_copy(&self, loc: &Loc, buf: &mut Vec<u8>) -> io::Result<()> {
        let (lo, hi) = (loc.offset, loc.offset + loc.len as u64);
        let size = if self.remote && loc.len > 0 { self.state().pack_size(&loc.pack) } else { None };
        let Some(size) = size.filter(|s| hi <= *s) else {
            return self.storage.read_range(&loc.pack.key(), loc.offset, loc.len as u64, buf);
        };
        // A few rounds: a window this reader reads may be gone again before it is used (many
        // readers, few windows kept); it then reads the chunk alone.
        for _ in 0..4 {
            let plan = {
                let mut w = self.windows.lock().expect("no panics while held");
                loop {
                    match w.gather(loc.pack, lo, hi, size, buf) {
                        Gathered::Waiting => w = self.window_read.wait(w).expect("no panics while held"),
                        other => break other,
                    }
                }
            };
            match plan {
                Gathered::Whole { ahead } => {
                    for start in ahead {
                        self.read_window_behind(loc.pack, start);
                    }
                    return Ok(());
                }
                Gathered::Read(start) => match self.read_window(loc.pack, start) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                    Err(_) => break,
                },
                Gathered::Alone | Gathered::Waiting => break,
            }
        }
        self.storage.read_range(&loc.pack.key(), loc.offset, loc.len as u64, buf)
    }

    /// Reads a placed window by a thread of its own, so that the reader that asked goes on
    /// with what it has. Best effort: a failure here is met again, and reported, by the read
    /// that needs the window.
    fn read_window_behind(&self, pack: PackId, start: u64) {
        let core = self.core.clone();
        let spawned = std::thread::Builder::new()
            .name("pack-read-ahead".into())
            .spawn(move || drop(core.read_window(pack, start)));
        if spawned.is_err() {
            let _ = self.read_window(pack, start);
        }
    }

    /// The copies of a chunk, looking again when a copy's pack is gone (rewritten by a
    /// collection since the index was loaded).
    pub fn read_first(&self, chunk: &ChunkId, buf: &mut Vec<u8>) -> io::Result<Option<Loc>> {
        for attempt in 0..2 {
            if attempt == 1 {
                self.refresh()?;
            }
            for loc in self.locations(chunk)? {
                match self.read_copy(&loc, buf) {
                    Ok(()) => return Ok(Some(loc)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    }

    /// Whether a backup may reference `chunk` without storing it: indexed, not condemned, and
    /// its copy in a pack checked whole (by this process, or marked by an earlier check).
    pub fn reusable(&self, chunk: &ChunkId) -> io::Result<bool> {
        if self.is_condemned(chunk) {
            return Ok(false);
        }
        for loc in self.locations(chunk)? {
            match self.check_pack(&loc.pack) {
                Ok(health) if health.is_sound(chunk) => return Ok(true),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Checks a pack whole once per process (or trusts a mark a storage keeps of an earlier
    /// check): its header authentic, every chunk's stored bytes matching the header's digest.
    pub fn check_pack(&self, pack: &PackId) -> io::Result<Arc<PackHealth>> {
        let slot = self.checked.lock().expect("no panics while held").entry(*pack).or_default().clone();
        let mut slot = slot.lock().expect("no panics while held");
        if let Some(h) = &*slot {
            return Ok(h.clone());
        }
        let key = pack.key();
        let size = self.state().pack_size(pack);
        let health = if size.is_some() && self.storage.checked_size(&key)? == size {
            PackHealth::default()
        } else {
            let bytes = self.storage.read(&key)?;
            let health = PackHealth::of(&self.keys, pack, &bytes);
            if health.is_whole() && size == Some(bytes.len() as u64) {
                let _ = self.storage.mark_checked(&key, bytes.len() as u64);
            }
            health
        };
        let health = Arc::new(health);
        *slot = Some(health.clone());
        Ok(health)
    }

    /// The size a pack is closed at.
    pub fn target(&self) -> u64 {
        self.target
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl Core {
    fn fail(&self, pack: &PackId, e: &io::Error) {
        let mut f = self.failures.lock().expect("no panics while held");
        f.0 += 1;
        f.1 = Some(format!("pack {pack} could not be written: {e}"));
    }

    /// How many packs were abandoned so far, and the last reason.
    pub fn failures(&self) -> (u64, Option<String>) {
        self.failures.lock().expect("no panics while held").clone()
    }

    /// Writes the header, commits the pack, and indexes it (with the packs finished before it,
    /// every [`PACKS_PER_INDEX`]).
    fn finish(&self, p: OpenPack) -> io::Result<()> {
        let f = match p.close(&self.keys) {
            Ok(f) => f,
            Err((id, e)) => {
                self.fail(&id, &e);
                return Err(e);
            }
        };
        // Into the state and the queue at once: a refresh that starts over rebuilds the state
        // from the index objects and the queue, and must find the pack in one of them.
        // Not taken as checked for having been written: what reaches the disk is read back
        // before the first reuse, as for any other pack.
        let queued = {
            let mut finished = self.finished.lock().expect("no panics while held");
            self.state.write().expect("no panics while held").add_pack(&f);
            finished.push(f);
            finished.len()
        };
        if queued >= PACKS_PER_INDEX {
            self.index_finished()
        } else {
            Ok(())
        }
    }

    /// Writes one index object for the packs finished and not indexed yet.
    fn index_finished(&self) -> io::Result<()> {
        // Held from taking the batch until the state knows its index object: a refresh in
        // between would find the packs neither queued nor in any object it lists.
        let _indexing = self.indexing.lock().expect("no panics while held");
        let batch = std::mem::take(&mut *self.finished.lock().expect("no panics while held"));
        if batch.is_empty() {
            return Ok(());
        }
        let obj = IndexObject { packs: batch.iter().map(|f| (f.id, f.size, f.entries.clone())).collect() };
        match self.put_index(&obj) {
            Ok(name) => {
                let mut st = self.state.write().expect("no panics while held");
                for f in &batch {
                    st.pack_index.insert(f.id, name.clone());
                }
                st.loaded.insert(name);
                Ok(())
            }
            Err(e) => {
                // Back in the queue: the next flush tries again.
                self.finished.lock().expect("no panics while held").extend(batch);
                Err(e)
            }
        }
    }

    /// Writes an index object under a new name; returns the name.
    pub fn put_index(&self, obj: &IndexObject) -> io::Result<String> {
        let name = hex::encode(crypto::random_bytes::<16>());
        self.storage.put(&format!("{INDEX}{name}"), &obj.encode(&self.keys, &name), false)?;
        Ok(name)
    }

    /// The last failure of a background upload, if no `put` or `flush` has reported it yet.
    fn take_unreported(&self) -> io::Result<()> {
        match self.uploads.lock().expect("no panics while held").unreported.take() {
            Some((kind, text)) => Err(io::Error::new(kind, text)),
            None => Ok(()),
        }
    }

    /// Waits until fewer than [`UPLOADS_IN_FLIGHT`] uploads are under way, and takes a turn:
    /// the ticket of the next upload.
    fn wait_for_turn(&self) -> u64 {
        let mut u = self.uploads.lock().expect("no panics while held");
        while u.in_flight >= UPLOADS_IN_FLIGHT {
            u = self.uploaded.wait(u).expect("no panics while held");
        }
        u.in_flight += 1;
        u.next_ticket += 1;
        u.next_ticket - 1
    }

    /// Uploads a full pack on a thread of its own (on this one if no thread can be had), with
    /// a turn taken by [`Core::wait_for_turn`].
    fn upload(core: &Arc<Core>, p: OpenPack, ticket: u64) {
        let turn = Turn { core: core.clone(), ticket, pack: p.id, result: None };
        let job = Arc::new(Mutex::new(Some((p, turn))));
        let run = |job: &Mutex<Option<(OpenPack, Turn)>>| {
            let taken = job.lock().expect("no panics while held").take();
            if let Some((p, mut turn)) = taken {
                turn.result = Some(turn.core.finish(p));
            }
        };
        let spawned = {
            let job = job.clone();
            std::thread::Builder::new().name("bulwark-pack-upload".into()).spawn(move || run(&job))
        };
        if spawned.is_err() {
            run(&job);
        }
    }

    fn uploaded_one(&self, ticket: u64, pack: PackId, r: io::Result<()>) {
        {
            let mut guard = self.uploads.lock().expect("no panics while held");
            let u = &mut *guard;
            u.in_flight -= 1;
            u.done.insert(ticket);
            while u.done.remove(&u.done_below) {
                u.done_below += 1;
            }
            if let Err(e) = r {
                u.unreported = Some((e.kind(), format!("uploading pack {pack} in the background: {e}")));
            }
        }
        self.uploaded.notify_all();
    }

    /// Waits until every upload with a ticket below `ticket` has ended.
    fn wait_uploads(&self, ticket: u64) {
        let mut u = self.uploads.lock().expect("no panics while held");
        while u.done_below < ticket {
            u = self.uploaded.wait(u).expect("no panics while held");
        }
    }

    /// Reads the window of `pack` that starts at `start` (placed by [`Windows::gather`]) and
    /// hands it to the readers waiting for it.
    fn read_window(&self, pack: PackId, start: u64) -> io::Result<()> {
        let end = {
            let w = self.windows.lock().expect("no panics while held");
            match w.list.iter().find(|x| x.pack == pack && x.start == start && x.bytes.is_none()) {
                Some(x) => x.end,
                None => return Ok(()),
            }
        };
        let mut bytes = self.windows.lock().expect("no panics while held").spare.pop().unwrap_or_default();
        let r = self.storage.read_range(&pack.key(), start, end - start, &mut bytes);
        let mut w = self.windows.lock().expect("no panics while held");
        let at = w.list.iter().position(|x| x.pack == pack && x.start == start && x.bytes.is_none());
        if let Some(i) = at {
            match &r {
                Ok(()) => {
                    w.list[i].bytes = Some(Arc::new(bytes));
                    w.clock += 1;
                    w.list[i].used = w.clock;
                    w.evict();
                }
                Err(_) => {
                    w.list.swap_remove(i);
                    w.keep_spare(bytes);
                }
            }
        }
        drop(w);
        self.window_read.notify_all();
        r
    }
}

/// One background upload's turn, given back when the upload ends however it ends: a panic
/// included, so that a flush never waits for an upload that will not come, and the pack counts
/// as abandoned.
struct Turn {
    core: Arc<Core>,
    ticket: u64,
    pack: PackId,
    result: Option<io::Result<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let r = self.result.take().unwrap_or_else(|| {
            let e = io::Error::other("the upload stopped unexpectedly");
            self.core.fail(&self.pack, &e);
            Err(e)
        });
        self.core.uploaded_one(self.ticket, self.pack, r);
    }
}

/// What [`Windows::gather`] found for a chunk.
enum Gathered {
    /// Its bytes are in the buffer; read the windows at `ahead` next (they are placed).
    Whole { ahead: Vec<u64> },
    /// A window it needs is being read: wait.
    Waiting,
    /// Read the window placed at this offset, then look again.
    Read(u64),
    /// Read it alone.
    Alone,
}

impl Windows {
    /// Copies `[lo, hi)` of `pack` (`size` bytes long) into `buf` from the windows that hold it,
    /// or says what to do instead. Places the windows to read (marked as being read, so that
    /// others wait for them rather than read them again).
    fn gather(&mut self, pack: PackId, lo: u64, hi: u64, size: u64, buf: &mut Vec<u8>) -> Gathered {
        buf.clear();
        let mut at = lo;
        let mut last = None;
        while at < hi {
            let Some(i) = self.list.iter().position(|w| w.pack == pack && w.start <= at && at < w.end) else {
                break;
            };
            let Some(bytes) = self.list[i].bytes.clone() else { return Gathered::Waiting };
            let w = &self.list[i];
            let to = hi.min(w.end);
            buf.extend_from_slice(&bytes[(at - w.start) as usize..(to - w.start) as usize]);
            self.clock += 1;
            self.list[i].used = self.clock;
            last = Some(i);
            at = to;
        }
        // The start of a pack counts as in order: a restore goes from pack to pack.
        let in_order =
            lo < IN_ORDER_GAP || self.recent.iter().any(|(p, end)| *p == pack && end.abs_diff(lo) <= IN_ORDER_GAP);
        self.note(pack, hi);
        if at == hi {
            let w = &mut self.list[last.expect("at least one window read")];
            // A window in use: the next ones are read ahead (those not there yet).
            let mut ahead = Vec::new();
            if !std::mem::replace(&mut w.next_asked, true) {
                let mut from = w.end;
                for _ in 0..READ_AHEAD {
                    if from >= size {
                        break;
                    }
                    if let Some(x) = self.list.iter().find(|x| x.pack == pack && x.start <= from && from < x.end) {
                        from = x.end;
                        continue;
                    }
                    ahead.push(from);
                    from = self.place(pack, from, from + WINDOW, size);
                }
            }
            return Gathered::Whole { ahead };
        }
        if at == lo && !in_order {
            return Gathered::Alone;
        }
        // Whatever the window, it covers at least the rest of this chunk.
        self.place(pack, at, (at + WINDOW).max(hi), size);
        Gathered::Read(at)
    }

    /// Places a window to read (from `start` to at most `end`); returns where it ends.
    fn place(&mut self, pack: PackId, start: u64, end: u64, size: u64) -> u64 {
        // A window never runs into the next one (read ahead, or by another reader).
        let end = self
            .list
            .iter()
            .filter(|w| w.pack == pack && w.start > start)
            .map(|w| w.start)
            .fold(end.min(size), u64::min);
        self.list.push(Window { pack, start, end, bytes: None, next_asked: false, used: 0 });
        end
    }

    /// Remembers where the last read of `pack` ended.
    fn note(&mut self, pack: PackId, end: u64) {
        self.recent.retain(|(p, _)| *p != pack);
        if self.recent.len() >= RECENT_PACKS {
            self.recent.remove(0);
        }
        self.recent.push((pack, end));
    }

    /// Drops the least recently used windows beyond [`WINDOWS_KEPT`] (never one being read).
    fn evict(&mut self) {
        while self.list.iter().filter(|w| w.bytes.is_some()).count() > WINDOWS_KEPT {
            let oldest = self
                .list
                .iter()
                .enumerate()
                .filter(|(_, w)| w.bytes.is_some())
                .min_by_key(|(_, w)| w.used)
                .map(|(i, _)| i)
                .expect("more than none kept");
            let dropped = self.list.swap_remove(oldest);
            if let Some(bytes) = dropped.bytes.and_then(|b| Arc::try_unwrap(b).ok()) {
                self.keep_spare(bytes);
            }
        }
    }

    fn keep_spare(&mut self, bytes: Vec<u8>) {
        if self.spare.len() < WINDOWS_KEPT {
            self.spare.push(bytes);
        }
    }
}

/// What checking a pack whole found.
#[derive(Debug, Default)]
pub struct PackHealth {
    /// Why its header cannot be read (then none of its chunks can be trusted).
    pub unreadable: Option<String>,
    /// Chunks whose stored bytes do not match the header's digest.
    pub damaged: HashSet<ChunkId>,
}

impl PackHealth {
    pub fn of(keys: &Keys, pack: &PackId, bytes: &[u8]) -> PackHealth {
        match parse_pack(keys, pack, bytes) {
            Err(e) => PackHealth { unreadable: Some(e), damaged: HashSet::new() },
            Ok(entries) => PackHealth {
                unreadable: None,
                damaged: entries
                    .iter()
                    .filter(|e| {
                        let stored = &bytes[e.offset as usize..(e.offset + e.len as u64) as usize];
                        *blake3::hash(stored).as_bytes() != e.sum
                    })
                    .map(|e| e.chunk)
                    .collect(),
            },
        }
    }

    pub fn is_whole(&self) -> bool {
        self.unreadable.is_none() && self.damaged.is_empty()
    }

    pub fn is_sound(&self, chunk: &ChunkId) -> bool {
        self.unreadable.is_none() && !self.damaged.contains(chunk)
    }
}

fn condemned_aad() -> &'static str {
    "bulwark condemned chunks"
}

pub(crate) fn read_condemned(storage: &dyn Storage, keys: &Keys) -> io::Result<Condemned> {
    let Some(meta) = storage.stat(CONDEMNED)? else { return Ok(Condemned::default()) };
    let raw = match storage.read(CONDEMNED) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Condemned::default()),
        Err(e) => return Err(e),
    };
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("{CONDEMNED} is unreadable: {e}"));
    let plain = unseal(keys, condemned_aad(), &raw).map_err(invalid)?;
    let mut c = Cursor(&plain);
    // A list of the first kind names chunks without their copies: backups still keep off
    // them, but a collection deletes none of it and condemns afresh.
    let with_copies = match c.take(4).map_err(invalid)? {
        m if m == CONDEMNED_MAGIC => true,
        m if m == CONDEMNED_MAGIC_V1 => false,
        _ => return Err(invalid("bad magic".into())),
    };
    let n = c.count(if with_copies { 48 } else { 32 }).map_err(invalid)?;
    let mut out = Condemned { written: Some(meta.modified), ..Default::default() };
    for _ in 0..n {
        let chunk = ChunkId(c.arr().map_err(invalid)?);
        out.chunks.insert(chunk);
        if with_copies {
            out.copies.insert((chunk, PackId(c.arr().map_err(invalid)?)));
        }
    }
    Ok(out)
}

pub(crate) fn write_condemned(
    storage: &dyn Storage,
    keys: &Keys,
    copies: &HashSet<(ChunkId, PackId)>,
) -> io::Result<()> {
    let mut b = CONDEMNED_MAGIC.to_vec();
    b.extend_from_slice(&(copies.len() as u32).to_le_bytes());
    let mut sorted: Vec<&(ChunkId, PackId)> = copies.iter().collect();
    sorted.sort_by_key(|(c, p)| (c.0, p.0));
    for (c, p) in sorted {
        b.extend_from_slice(&c.0);
        b.extend_from_slice(&p.0);
    }
    storage.put(CONDEMNED, &seal(keys, condemned_aad(), b), true)
}

pub(crate) fn entries_per_index() -> usize {
    ENTRIES_PER_INDEX
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    fn packs(name: &str, keys: Keys, target: u64) -> Packs {
        Packs::new(Arc::new(MemoryStorage::named(name)), keys, target)
    }

    fn chunk(i: u32) -> (ChunkId, Vec<u8>) {
        let data = format!("stored bytes of chunk {i}").repeat(i as usize % 7 + 1).into_bytes();
        (ChunkId(*blake3::hash(&data).as_bytes()), data)
    }

    #[test]
    fn chunks_come_back_from_packs_and_a_second_process_finds_them() {
        for keys in [Keys::none(), Keys::from_master(&[7; 64])] {
            let name = format!("pack-rt-{}", keys.is_encrypted());
            let p = packs(&name, keys.clone(), 1000);
            for i in 0..100 {
                let (id, data) = chunk(i);
                p.put(&id, &data).unwrap();
            }
            p.flush().unwrap();
            let other = packs(&name, keys, 1000);
            let mut buf = Vec::new();
            for i in 0..100 {
                let (id, data) = chunk(i);
                assert!(other.read_first(&id, &mut buf).unwrap().is_some());
                assert_eq!(buf, data);
                assert!(other.reusable(&id).unwrap());
            }
            let packs_written = other.storage.list(DATA).unwrap().len();
            assert!((5..=30).contains(&packs_written), "{packs_written} packs");
        }
    }

    /// A pack that fills is uploaded while the next one fills: every chunk is readable, and
    /// indexed, once `flush` returns.
    #[test]
    fn packs_uploaded_in_the_background_are_all_there_after_a_flush() {
        let p = Arc::new(packs("pack-bg", Keys::none(), 4000));
        assert!(p.remote, "memory storage is not a local directory");
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in (t..300).step_by(3) {
                        let (id, data) = chunk(i);
                        p.put(&id, &data).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        p.flush().unwrap();
        assert_eq!(p.uploads.lock().unwrap().in_flight, 0);
        let other = packs("pack-bg", Keys::none(), 4000);
        let mut buf = Vec::new();
        for i in 0..300 {
            let (id, data) = chunk(i);
            assert!(other.read_first(&id, &mut buf).unwrap().is_some(), "chunk {i} not found");
            assert_eq!(buf, data, "chunk {i}");
        }
    }

    /// An upload that fails in the background is reported by the next `put` or by `flush`
    /// (never lost), counted as an abandoned pack, and no index object names the pack.
    #[test]
    fn a_pack_that_fails_in_the_background_is_reported_and_never_indexed() {
        let p = packs("pack-bg-fail", Keys::none(), 2000);
        MemoryStorage::fail_commits_under("pack-bg-fail", DATA);
        let mut i = 0;
        while p.uploads.lock().unwrap().next_ticket == 0 {
            let (id, data) = chunk(i);
            p.put(&id, &data).expect("nothing failed yet");
            i += 1;
        }
        // Once the upload has ended, the next writer hears of its failure, by name.
        p.wait_uploads(1);
        let (id, data) = chunk(i);
        let e = p.put(&id, &data).unwrap_err();
        assert!(e.to_string().contains("in the background"), "{e}");
        assert!(e.to_string().contains("as the test asked"), "{e}");
        assert_eq!(p.failures().0, 1);
        // Said once; what fails later is said again.
        let (id, data) = chunk(i + 1);
        p.put(&id, &data).unwrap();
        assert!(p.flush().is_err());
        // A failure that no writer heard of is the flush's error.
        let q = packs("pack-bg-fail", Keys::none(), 2000);
        let mut i = 0;
        while q.uploads.lock().unwrap().next_ticket == 0 {
            let (id, data) = chunk(i);
            q.put(&id, &data).unwrap();
            i += 1;
        }
        let e = q.flush().unwrap_err();
        assert!(e.to_string().contains("as the test asked"), "{e}");
        // Nothing names a pack that is not there.
        let fresh = packs("pack-bg-fail", Keys::none(), 2000);
        fresh.refresh().unwrap();
        assert_eq!(fresh.state().pack_ids().count(), 0);
        assert!(fresh.storage.list(DATA).unwrap().is_empty());
    }

    /// A backup whose pack fails to upload in the background is not committed: a named error,
    /// and no point listed.
    #[test]
    fn a_backup_whose_pack_fails_in_the_background_is_not_committed() {
        use crate::{BlockRef, BlockSize, Compression, InitOptions, PointKind, PointSpec, PointStats, Repository};
        let loc: crate::storage::Location = "memory://pack-bg-backup".parse().unwrap();
        let repo = Repository::init(loc.clone(), &InitOptions { pack_size: Some(MIN_PACK_SIZE), ..Default::default() })
            .unwrap();
        let spec = PointSpec {
            kind: PointKind::Volume,
            name: "v".into(),
            source: "test".into(),
            volume_size: 48 << 16,
            block_size: BlockSize::new(1 << 16).unwrap(),
            compression: Compression::None,
            parent: None,
            snapshot: String::new(),
            consistency: String::new(),
            key_scope: None,
        };
        let mut w = repo.begin_point(spec).unwrap();
        MemoryStorage::fail_commits_under("pack-bg-backup", DATA);
        let mut codec = repo.codec(Compression::None);
        let mut failed = None;
        for i in 0..48u32 {
            let block: Vec<u8> = (0..1u32 << 16).map(|j| (i.wrapping_mul(7919) ^ j.wrapping_mul(31)) as u8).collect();
            let id = codec.digest(&block);
            if let Err(e) = repo.put_chunk(&id, &codec.encode(&id, &block)) {
                failed = Some(e);
                break;
            }
            w.push_block(&BlockRef::Chunk(id)).unwrap();
        }
        let e = match failed {
            Some(e) => e,
            None => w.commit(PointStats::default()).expect_err("the backup was committed"),
        };
        assert!(e.to_string().contains("as the test asked"), "{e}");
        assert!(Repository::open(loc, None).unwrap().list_points().unwrap().is_empty());
    }

    /// Readers going through a pack in order get it in windows, in parallel, and every chunk
    /// comes back right; a reader out of order gets its chunk alone.
    #[test]
    fn chunks_read_in_order_come_from_windows() {
        let p = Arc::new(packs("pack-windows", Keys::none(), 3 * WINDOW));
        let chunks: Vec<(ChunkId, Vec<u8>)> = (0..120u32)
            .map(|i| {
                let data: Vec<u8> =
                    (0..(100_000 + i * 3_000)).map(|j| (j ^ i.wrapping_mul(2654435761)) as u8).collect();
                (ChunkId(*blake3::hash(&data).as_bytes()), data)
            })
            .collect();
        for (id, data) in &chunks {
            p.put(id, data).unwrap();
        }
        p.flush().unwrap();
        let reader = Arc::new(packs("pack-windows", Keys::none(), 3 * WINDOW));
        reader.refresh().unwrap();
        let chunks = Arc::new(chunks);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (reader, chunks, next) = (reader.clone(), chunks.clone(), next.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((id, data)) = chunks.get(i) else { return };
                        let loc = reader.locations(id).unwrap()[0];
                        reader.read_copy(&loc, &mut buf).unwrap();
                        assert!(buf == *data, "chunk {i}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Reads ahead end on their own threads, soon after the readers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut w = reader.windows.lock().unwrap();
        while w.list.iter().any(|x| x.bytes.is_none()) && std::time::Instant::now() < deadline {
            w = reader.window_read.wait_timeout(w, std::time::Duration::from_millis(100)).unwrap().0;
        }
        assert!(w.list.iter().all(|x| x.bytes.is_some()), "no window left half read");
        assert!(w.list.len() <= WINDOWS_KEPT);
        assert!(!w.list.is_empty(), "reads in order used windows");
        drop(w);
        // Out of order, away from a pack's start: read alone and right.
        let fresh = packs("pack-windows", Keys::none(), 3 * WINDOW);
        let mut buf = Vec::new();
        for i in [119, 40, 60] {
            let loc = fresh.locations(&chunks[i].0).unwrap()[0];
            assert!(loc.offset >= IN_ORDER_GAP, "chunk {i} is near its pack's start");
            fresh.read_copy(&loc, &mut buf).unwrap();
            assert!(buf == chunks[i].1, "chunk {i}");
        }
        assert!(fresh.windows.lock().unwrap().list.is_empty(), "reads out of order used windows");
        // A pack's start is where a restore going through packs in order comes to next.
        let loc = fresh.locations(&chunks[0].0).unwrap()[0];
        assert_eq!(loc.offset, 0);
        fresh.read_copy(&loc, &mut buf).unwrap();
        assert!(buf == chunks[0].1, "chunk 0");
        assert!(fresh.windows.lock().unwrap().list.iter().any(|w| w.start == 0), "no window at the pack's start");
    }

    #[test]
    fn a_damaged_chunk_in_a_pack_is_not_reused() {
        let p = packs("pack-damage", Keys::none(), 1 << 20);
        let (a, da) = chunk(1);
        let (b, db) = chunk(2);
        p.put(&a, &da).unwrap();
        p.put(&b, &db).unwrap();
        p.flush().unwrap();
        let loc = p.locations(&a).unwrap()[0];
        let mut bytes = p.storage.read(&loc.pack.key()).unwrap();
        bytes[loc.offset as usize] ^= 1;
        p.storage.put(&loc.pack.key(), &bytes, true).unwrap();
        let fresh = packs("pack-damage", Keys::none(), 1 << 20);
        assert!(!fresh.reusable(&a).unwrap(), "a damaged copy was reused");
        assert!(fresh.reusable(&b).unwrap());
        // Stored again, the chunk has a sound copy to reuse.
        fresh.put(&a, &da).unwrap();
        fresh.flush().unwrap();
        let again = packs("pack-damage", Keys::none(), 1 << 20);
        assert_eq!(again.locations(&a).unwrap().len(), 2);
        assert!(again.reusable(&a).unwrap());
    }

    #[test]
    fn forged_headers_and_index_objects_are_refused() {
        let keys = Keys::from_master(&[9; 64]);
        let id = PackId::random();
        let e = PackEntry { chunk: ChunkId([1; 32]), offset: 0, len: 4, sum: [0; 32] };
        let mut pack = b"abcd".to_vec();
        pack.extend(encode_header(&keys, &id, &[e]));
        assert_eq!(parse_pack(&keys, &id, &pack).unwrap(), vec![e]);
        assert!(parse_pack(&keys, &PackId::random(), &pack).is_err(), "a header moved to another pack");
        assert!(parse_pack(&Keys::from_master(&[8; 64]), &id, &pack).is_err());
        assert!(parse_pack(&keys, &id, &pack[1..]).is_err());
        let plain = Keys::none();
        let mut forged = b"abcd".to_vec();
        forged.extend(encode_header(&plain, &id, &[PackEntry { len: 99, ..e }]));
        assert!(parse_pack(&plain, &id, &forged).unwrap_err().contains("outside"));
        let obj = IndexObject { packs: vec![(id, 5, vec![(e.chunk, 0, 4)])] };
        let sealed = obj.encode(&keys, "n1");
        assert!(IndexObject::decode(&keys, "n1", &sealed).is_ok());
        assert!(IndexObject::decode(&keys, "n2", &sealed).is_err(), "an index object renamed");
    }
}
