use std::io;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkCodec, ChunkId, Compression};
use crate::crypto::{self, KdfParams, KeyFile, Keys};
use crate::error::{RepoError, Result};
use crate::index::{BlockIndexReader, BlockIndexWriter, BlockRef, BlockSize, IndexHeader};
use crate::point::{validate_name, FileSummary, Manifest, PointKind, PointStats, RestorePointId};
use crate::storage::{LocalStorage, Storage, WriterLease};
use crate::tree::{RecordSplitter, TreeEntry, PIECE};

pub const FORMAT_NAME: &str = "bulwark-repository";
/// The newest format this build reads and writes. Version 2 adds isolated computers; a
/// repository without them is still written as version 1, which older builds read.
pub const FORMAT_VERSION: u32 = 2;
const MANIFEST_MAGIC: &[u8; 4] = b"BWM1";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    format: String,
    version: u32,
    id: String,
    created: chrono::DateTime<Utc>,
    encryption: String,
    #[serde(default, skip_serializing_if = "Isolation::is_shared")]
    isolation: Isolation,
}

/// Whom the agents writing a repository are trusted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// One key for every computer: a block backed up by two computers is stored once, and the
    /// agents writing it are trusted with each other's data (each holds the key that reads it
    /// all, and can ask whether any content is stored).
    #[default]
    Shared,
    /// A key per computer, derived from the master key: dedup works within one computer's
    /// points only, and an agent can neither read another computer's chunks nor learn whether
    /// some content is stored for another computer. Needs encryption.
    Computer,
}

impl Isolation {
    fn is_shared(&self) -> bool {
        *self == Isolation::Shared
    }

    pub fn name(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Computer => "computer",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "shared" | "" => Ok(Isolation::Shared),
            "computer" => Ok(Isolation::Computer),
            _ => Err(format!("unknown isolation {s:?}: shared or computer")),
        }
    }
}

/// How to create a repository.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// `Some(password)` encrypts the repository with AES-256-GCM.
    pub password: Option<Vec<u8>>,
    pub kdf: KdfParams,
    pub isolation: Isolation,
}

/// An open repository. Cheap to clone: worker threads each hold one.
///
/// Manifests are always sealed with the master key, so whoever opens the repository lists every
/// point. Chunks, indexes and trees are written with `keys`: the master key, or one computer's
/// key in an isolated repository ([`Repository::scoped`], [`Repository::for_point`]).
#[derive(Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    master: Keys,
    keys: Keys,
    scope: Option<String>,
    isolation: Isolation,
}

impl Repository {
    /// Creates a repository in `path` (an empty or absent directory).
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Repository> {
        let storage = LocalStorage::new(path);
        let label = path.display().to_string();
        let ioe = |what: &str, e: io::Error| RepoError::Io { repo: label.clone(), what: what.into(), source: e };
        if storage.exists("config").map_err(|e| ioe("reading config", e))? {
            return Err(RepoError::AlreadyExists { path: path.into() });
        }
        if let Ok(mut rd) = std::fs::read_dir(path) {
            if rd.next().is_some() {
                return Err(RepoError::Invalid {
                    repo: label,
                    reason: "the directory is not empty; a repository needs a directory of its own".into(),
                });
            }
        }
        if opts.isolation == Isolation::Computer && opts.password.is_none() {
            return Err(RepoError::Invalid {
                repo: label,
                reason: "isolated computers need an encrypted repository (their keys derive from its master key)"
                    .into(),
            });
        }
        let mut dirs: Vec<String> = (0..=255u8).map(|b| format!("chunks/{b:02x}")).collect();
        dirs.extend(["points", "keys", "locks/writers"].map(String::from));
        storage.create_layout(&dirs).map_err(|e| ioe("creating directories", e))?;
        let keys = match &opts.password {
            Some(pw) => {
                let (keys, file) = Keys::generate(pw, opts.kdf)
                    .map_err(|reason| RepoError::Invalid { repo: label.clone(), reason })?;
                let json = serde_json::to_vec_pretty(&file).expect("key file serializes");
                storage.put("keys/default", &json, true).map_err(|e| ioe("writing key file", e))?;
                keys
            }
            None => Keys::none(),
        };
        let config = Config {
            format: FORMAT_NAME.into(),
            version: if opts.isolation == Isolation::Shared { 1 } else { FORMAT_VERSION },
            id: hex::encode(crypto::random_bytes::<16>()),
            created: Utc::now(),
            encryption: if keys.is_encrypted() { "aes256gcm" } else { "none" }.into(),
            isolation: opts.isolation,
        };
        // The config is written last: a directory without it is not (yet) a repository.
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        storage.put("config", &json, true).map_err(|e| ioe("writing config", e))?;
        Ok(Repository::new(storage, keys, opts.isolation))
    }

    fn new(storage: LocalStorage, keys: Keys, isolation: Isolation) -> Repository {
        Repository { storage: Arc::new(storage), master: keys.clone(), keys, scope: None, isolation }
    }

    /// Opens the repository in `path`; `password` is needed when it is encrypted.
    pub fn open(path: &Path, password: Option<&[u8]>) -> Result<Repository> {
        let storage = LocalStorage::new(path);
        let label = path.display().to_string();
        let raw = match storage.read("config") {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::NotARepository { path: path.into() })
            }
            Err(e) => return Err(RepoError::Io { repo: label, what: "reading config".into(), source: e }),
        };
        let config: Config = match serde_json::from_slice(&raw) {
            Ok(c) => c,
            Err(_) => {
                let found = serde_json::from_slice::<serde_json::Value>(&raw)
                    .ok()
                    .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(String::from))
                    .unwrap_or_else(|| "unreadable".into());
                return Err(RepoError::ForeignFormat { path: path.into(), found });
            }
        };
        if config.format != FORMAT_NAME {
            return Err(RepoError::ForeignFormat { path: path.into(), found: config.format });
        }
        if config.version > FORMAT_VERSION {
            return Err(RepoError::NewerFormat { path: path.into(), found: config.version, supported: FORMAT_VERSION });
        }
        let keys = match config.encryption.as_str() {
            "none" => Keys::none(),
            "aes256gcm" => {
                let pw = password.ok_or_else(|| RepoError::PasswordRequired { path: path.into() })?;
                let (keys, _) = unlock(&storage, &label, pw)?;
                keys
            }
            other => {
                return Err(RepoError::Invalid {
                    repo: label,
                    reason: format!("unknown encryption {other:?} in config"),
                })
            }
        };
        if config.isolation == Isolation::Computer && !keys.is_encrypted() {
            return Err(RepoError::Invalid {
                repo: label,
                reason: "isolated computers in an unencrypted repository".into(),
            });
        }
        Ok(Repository::new(storage, keys, config.isolation))
    }

    /// Whom the repository's agents are trusted with.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// This repository as one computer writes and reads it: with that computer's keys when
    /// computers are isolated, as it is when they share. Points begun through it record the
    /// scope, so every reader knows which keys they need.
    pub fn scoped(&self, computer: &str) -> Repository {
        match (self.isolation, self.master.scoped(computer)) {
            (Isolation::Computer, Some(keys)) => Repository { keys, scope: Some(computer.to_string()), ..self.clone() },
            _ => self.clone(),
        }
    }

    /// This repository with the keys point `m` was written with.
    pub fn for_point(&self, m: &Manifest) -> Repository {
        self.with_scope(m.key_scope.as_deref())
    }

    /// This repository with one computer's keys (`Some`), or the master key (`None`).
    pub fn with_scope(&self, scope: Option<&str>) -> Repository {
        match scope.and_then(|s| Some((s, self.master.scoped(s)?))) {
            Some((s, keys)) => Repository { keys, scope: Some(s.to_string()), ..self.clone() },
            None => Repository { keys: self.master.clone(), scope: None, ..self.clone() },
        }
    }

    /// The computer whose keys this handle uses, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Re-wraps the master key under a new password. Chunks are untouched.
    pub fn change_password(path: &Path, old: &[u8], new: &[u8], kdf: KdfParams) -> Result<()> {
        let storage = LocalStorage::new(path);
        let label = path.display().to_string();
        let repo = Repository::open(path, Some(old))?;
        if !repo.keys.is_encrypted() {
            return Err(RepoError::Invalid { repo: label, reason: "the repository is not encrypted".into() });
        }
        let (_, master) = unlock(&storage, &label, old)?;
        let file =
            crypto::wrap(&master, new, kdf).map_err(|reason| RepoError::Invalid { repo: label.clone(), reason })?;
        let json = serde_json::to_vec_pretty(&file).expect("key file serializes");
        storage.put("keys/default", &json, true).map_err(|e| RepoError::Io {
            repo: label,
            what: "writing key file".into(),
            source: e,
        })
    }

    pub fn label(&self) -> String {
        self.storage.describe()
    }

    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn is_encrypted(&self) -> bool {
        self.keys.is_encrypted()
    }

    pub(crate) fn io_err(&self, what: impl Into<String>, source: io::Error) -> RepoError {
        RepoError::Io { repo: self.label(), what: what.into(), source }
    }

    pub fn codec(&self, compression: Compression) -> ChunkCodec {
        ChunkCodec::new(self.keys.clone(), compression)
    }

    /// Reads, authenticates and decompresses one chunk, checking it against its name.
    pub fn read_chunk(&self, codec: &mut ChunkCodec, id: &ChunkId) -> Result<Vec<u8>> {
        let (mut stored, mut block) = (Vec::new(), Vec::new());
        self.read_chunk_into(codec, id, &mut stored, &mut block)?;
        Ok(block)
    }

    /// Like [`Repository::read_chunk`], with buffers the caller reuses (`stored` is scratch).
    pub fn read_chunk_into(
        &self,
        codec: &mut ChunkCodec,
        id: &ChunkId,
        stored: &mut Vec<u8>,
        block: &mut Vec<u8>,
    ) -> Result<()> {
        match self.storage.read_into(&id.key(), stored) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::MissingChunk { repo: self.label(), id: *id })
            }
            Err(e) => return Err(self.io_err(format!("reading chunk {id}"), e)),
        }
        codec.decode_into(id, stored, block).map_err(|f| RepoError::DamagedChunk {
            repo: self.label(),
            id: *id,
            reason: f.to_string(),
        })
    }

    /// Marks chunk `id` as used by the point being written; `false` if the repository lacks it.
    /// Only meaningful inside a [`PointWriter`]'s lifetime (its lease is what protects the chunk
    /// from a concurrent garbage collection).
    pub fn reuse_chunk(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        if !self.storage.touch_shared(&key).map_err(|e| self.io_err(format!("touching chunk {id}"), e))? {
            return Ok(false);
        }
        // A chunk is made durable with its point, after it became visible: after a power cut
        // during a backup that never committed, its name can survive with no content. Such a
        // chunk counts as absent, so this backup writes it again.
        let len = self.storage.size(&key).map_err(|e| self.io_err(format!("reading chunk {id}"), e))?;
        Ok(len >= crate::chunk::MIN_STORED_LEN)
    }

    /// Stores an encoded chunk (see [`ChunkCodec::encode`]). Durable at the point's commit.
    pub fn put_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<()> {
        self.storage.put(&id.key(), stored, false).map_err(|e| self.io_err(format!("writing chunk {id}"), e))
    }

    /// Starts a restore point; nothing is visible until [`PointWriter::commit`].
    pub fn begin_point(&self, spec: PointSpec) -> Result<PointWriter> {
        validate_name(&spec.name).map_err(|reason| RepoError::Invalid { repo: self.label(), reason })?;
        let created = Utc::now();
        let id = RestorePointId::generate(created);
        let mut spec = spec;
        // Whatever a writer claims, the point is of the keys it is written with.
        spec.key_scope = self.scope.clone();
        let lease = {
            // Pin the parent: under the shared point lock, announce it, then check it still
            // exists. `delete_point` checks the leases under the exclusive lock, so either it saw
            // this lease or the parent was already gone and is not used.
            let _points = self.storage.lock_points(false).map_err(|e| self.io_err("taking the point lock", e))?;
            let parent = spec.parent.as_ref().map(|p| p.as_str().to_string());
            let lease = self
                .storage
                .lease_writer(id.as_str(), parent.as_deref())
                .map_err(|e| self.io_err("registering the backup", e))?;
            if let Some(p) = &spec.parent {
                if !self.storage.exists(&p.manifest_key()).map_err(|e| self.io_err("checking the parent point", e))? {
                    spec.parent = None;
                }
            }
            lease
        };
        let index = match spec.kind {
            PointKind::Volume => Some(self.index_writer(&id, IndexHeader::new(spec.block_size, spec.volume_size))?),
            PointKind::Files => None,
        };
        let sync = self.storage.sync_point().map_err(|e| self.io_err("opening the repository for sync", e))?;
        Ok(PointWriter { repo: self.clone(), id, created, spec, index, sync, _lease: lease })
    }

    fn index_writer(&self, id: &RestorePointId, header: IndexHeader) -> Result<BlockIndexWriter> {
        let staged = self.storage.create(&id.index_key()).map_err(|e| self.io_err("creating the block index", e))?;
        BlockIndexWriter::new(staged, &self.keys, header).map_err(|e| self.io_err("writing the block index", e))
    }

    /// All restore points, oldest first. Unreadable manifests are errors (run verify).
    pub fn list_points(&self) -> Result<Vec<Manifest>> {
        let entries = self.storage.list("points/").map_err(|e| self.io_err("listing points", e))?;
        let mut out = Vec::new();
        for e in entries {
            let Some(id) = e.name.strip_suffix(".manifest") else { continue };
            let Ok(id) = id.parse::<RestorePointId>() else { continue };
            match self.load_manifest(&id) {
                Ok(m) => out.push(m),
                // Forgotten between listing and reading: not an error.
                Err(RepoError::NoSuchPoint { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    pub fn load_manifest(&self, id: &RestorePointId) -> Result<Manifest> {
        let raw = match self.storage.read(&id.manifest_key()) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::NoSuchPoint { repo: self.label(), point: id.to_string() })
            }
            Err(e) => return Err(self.io_err(format!("reading manifest of {id}"), e)),
        };
        let damaged =
            |reason: &str| RepoError::DamagedPoint { repo: self.label(), point: id.to_string(), reason: reason.into() };
        let json = if self.master.is_encrypted() {
            let sealed = raw.strip_prefix(MANIFEST_MAGIC).ok_or_else(|| damaged("manifest has a bad header"))?;
            self.master
                .open(manifest_aad(id).as_bytes(), sealed)
                .ok_or_else(|| damaged("manifest fails authentication"))?
        } else {
            raw
        };
        let m: Manifest = serde_json::from_slice(&json).map_err(|e| damaged(&format!("manifest unreadable: {e}")))?;
        if m.id != *id {
            return Err(damaged("manifest belongs to another point"));
        }
        Ok(m)
    }

    /// Resolves a point given as its id or as `NAME:latest`.
    pub fn resolve(&self, spec: &str) -> Result<Manifest> {
        if let Some(name) = spec.strip_suffix(":latest") {
            return self.latest(name)?.ok_or_else(|| RepoError::NoSuchPoint {
                repo: self.label(),
                point: format!("{spec} (no point named {name:?})"),
            });
        }
        let id: RestorePointId = spec.parse().map_err(|reason| RepoError::Invalid { repo: self.label(), reason })?;
        self.load_manifest(&id)
    }

    /// The newest point of a backup name.
    pub fn latest(&self, name: &str) -> Result<Option<Manifest>> {
        Ok(self.list_points()?.into_iter().rev().find(|m| m.name == name))
    }

    /// The newest point of a backup name that a backup through this handle may build on: one
    /// written with this handle's keys. A point of other keys (where computers are isolated:
    /// another computer's, or the master key's) would mix keys in the new point; the backup
    /// starts afresh instead.
    pub fn latest_own(&self, name: &str) -> Result<Option<Manifest>> {
        Ok(self.latest(name)?.filter(|m| m.key_scope.as_deref() == self.scope()))
    }

    /// Opens a point's block index, authenticated against its manifest.
    pub fn open_index(&self, m: &Manifest) -> Result<BlockIndexReader> {
        let damaged = |reason: String| RepoError::DamagedPoint { repo: self.label(), point: m.id.to_string(), reason };
        let auth =
            m.index_auth_bytes().ok_or_else(|| damaged("manifest has a malformed index authenticator".into()))?;
        let keys = &self.for_point(m).keys;
        let reader = BlockIndexReader::open(self.storage(), &m.id.index_key(), keys, &auth).map_err(damaged)?;
        let h = reader.header();
        if h.volume_size != m.volume_size || h.block_size != m.block_size {
            return Err(damaged("index does not match its manifest".into()));
        }
        Ok(reader)
    }

    /// A point's index object as stored, for a data mover to send to an agent, which
    /// authenticates it against the manifest itself.
    pub fn read_index_object(&self, m: &Manifest) -> Result<Box<dyn io::Read + Send>> {
        self.storage.open_read(&m.id.index_key()).map_err(|e| self.io_err(format!("reading index of {}", m.id), e))
    }

    /// A chunk as stored (compressed, maybe encrypted), unchecked: for a data mover to send.
    pub fn read_stored_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        match self.storage.read(&id.key()) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RepoError::MissingChunk { repo: self.label(), id: *id })
            }
            Err(e) => Err(self.io_err(format!("reading chunk {id}"), e)),
        }
    }

    /// Streams the entries of a file point's tree, in tree order, to `f`.
    pub fn read_tree(&self, m: &Manifest, mut f: impl FnMut(TreeEntry) -> Result<()>) -> Result<()> {
        let mut cursor = self.tree_cursor(m)?;
        while let Some(e) = cursor.next_entry()? {
            f(e)?;
        }
        Ok(())
    }

    /// A pull reader over a file point's tree (for merging with a new tree in one pass).
    pub fn tree_cursor(&self, m: &Manifest) -> Result<TreeCursor> {
        if m.kind != PointKind::Files {
            return Err(RepoError::Invalid {
                repo: self.label(),
                reason: format!("point {} is not a file-level point", m.id),
            });
        }
        let repo = self.for_point(m);
        let mut codec = repo.codec(Compression::None);
        let fetch = Box::new(move |id: &ChunkId| repo.read_chunk(&mut codec, id));
        Ok(TreeCursor::new(self.label(), m, self.open_index(m)?, fetch))
    }

    /// Every chunk a point references: its index entries and, for a file point, its files'
    /// content. Chunks may repeat.
    pub fn for_each_reference(&self, m: &Manifest, mut f: impl FnMut(ChunkId)) -> Result<()> {
        let mut index = self.open_index(m)?;
        while let Some(r) = index.next_block().map_err(|e| self.io_err(format!("reading index of {}", m.id), e))? {
            if let BlockRef::Chunk(id) = r {
                f(id);
            }
        }
        if m.kind == PointKind::Files {
            self.read_tree(m, |e| {
                e.extents.iter().filter_map(|x| x.chunk).for_each(&mut f);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Deletes a point: the manifest first (the point is gone at once), then its index.
    /// Chunks are left to garbage collection; no other point is touched.
    pub fn delete_point(&self, id: &RestorePointId) -> Result<()> {
        let _points = self.storage.lock_points(true).map_err(|e| self.io_err("taking the point lock", e))?;
        let writers = self.storage.live_writers().map_err(|e| self.io_err("listing running backups", e))?;
        if let Some(w) = writers.iter().find(|w| w.parent.as_deref() == Some(id.as_str())) {
            return Err(RepoError::PointInUse { repo: self.label(), point: id.to_string(), writer: w.id.clone() });
        }
        self.storage.delete(&id.manifest_key()).map_err(|e| self.io_err(format!("deleting manifest of {id}"), e))?;
        self.storage.sync().map_err(|e| self.io_err("syncing", e))?;
        self.storage.delete(&id.index_key()).map_err(|e| self.io_err(format!("deleting index of {id}"), e))
    }
}

fn unlock(storage: &LocalStorage, label: &str, pw: &[u8]) -> Result<(Keys, [u8; 64])> {
    let raw = storage.read("keys/default").map_err(|e| RepoError::Io {
        repo: label.into(),
        what: "reading key file".into(),
        source: e,
    })?;
    let file: KeyFile = serde_json::from_slice(&raw)
        .map_err(|e| RepoError::Invalid { repo: label.into(), reason: format!("key file unreadable: {e}") })?;
    match Keys::unlock(&file, pw) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(RepoError::WrongPassword { path: label.into() }),
        Err(reason) => Err(RepoError::Invalid { repo: label.into(), reason }),
    }
}

fn manifest_aad(id: &RestorePointId) -> String {
    format!("bulwark manifest {id}")
}

/// What a new restore point is of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointSpec {
    pub kind: PointKind,
    pub name: String,
    pub source: String,
    pub volume_size: u64,
    pub block_size: BlockSize,
    pub compression: Compression,
    pub parent: Option<RestorePointId>,
    pub snapshot: String,
    pub consistency: String,
    /// Set by [`Repository::begin_point`] from the keys it writes with; never taken from input.
    #[serde(skip)]
    pub key_scope: Option<String>,
}

/// A restore point being written. Dropped without [`PointWriter::commit`], it leaves nothing
/// visible: the staged index is removed and its new chunks are garbage for the next collection.
pub struct PointWriter {
    repo: Repository,
    id: RestorePointId,
    created: chrono::DateTime<Utc>,
    spec: PointSpec,
    /// The block index of a volume point, written as blocks arrive.
    index: Option<BlockIndexWriter>,
    sync: Box<dyn crate::storage::SyncPoint>,
    _lease: Box<dyn WriterLease>,
}

impl PointWriter {
    pub fn id(&self) -> &RestorePointId {
        &self.id
    }

    /// The parent this point builds on, pinned until the point is committed or dropped; `None`
    /// when there is none or it was deleted before it could be pinned.
    pub fn parent(&self) -> Option<&RestorePointId> {
        self.spec.parent.as_ref()
    }

    /// Appends the next block's entry to a volume point's index.
    pub fn push_block(&mut self, r: &BlockRef) -> Result<()> {
        let Some(index) = self.index.as_mut() else {
            return Err(RepoError::Invalid {
                repo: self.repo.label(),
                reason: "block entries for a file point".into(),
            });
        };
        index.push(r).map_err(|e| self.repo.io_err("writing the block index", e))
    }

    /// Commits a file point whose tree stream (`tree_len` bytes) was stored as `pieces`.
    pub fn commit_files(
        mut self,
        pieces: &[crate::ChunkId],
        tree_len: u64,
        stats: PointStats,
        summary: FileSummary,
    ) -> Result<Manifest> {
        let header = IndexHeader::new(BlockSize::new(PIECE as u32).expect("valid piece size"), tree_len);
        let mut index = self.repo.index_writer(&self.id, header)?;
        for p in pieces {
            index.push(&BlockRef::Chunk(*p)).map_err(|e| self.repo.io_err("writing the tree index", e))?;
        }
        self.spec.volume_size = tree_len;
        self.spec.block_size = header.block_size;
        self.index = Some(index);
        self.commit_with(stats, Some(summary))
    }

    /// Makes the point durable and visible: index, sync, manifest (durably), in that order.
    pub fn commit(self, stats: PointStats) -> Result<Manifest> {
        self.commit_with(stats, None)
    }

    fn commit_with(self, mut stats: PointStats, files: Option<FileSummary>) -> Result<Manifest> {
        let repo = &self.repo;
        let Some(index) = self.index else {
            return Err(RepoError::Invalid { repo: repo.label(), reason: "a file point committed as a volume".into() });
        };
        let auth = index.finish().map_err(|e| repo.io_err("writing the block index", e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let mut manifest = Manifest {
            id: self.id.clone(),
            name: self.spec.name,
            kind: self.spec.kind,
            created: self.created,
            host,
            source: self.spec.source,
            volume_size: self.spec.volume_size,
            block_size: self.spec.block_size,
            compression: self.spec.compression,
            index_auth: hex::encode(auth),
            parent: self.spec.parent,
            snapshot: self.spec.snapshot,
            consistency: self.spec.consistency,
            key_scope: self.spec.key_scope,
            stats: PointStats::default(),
            files,
        };
        stats.stored_bytes = stats.stored_bytes.saturating_add(manifest.spec_index_len());
        manifest.stats = stats;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let body = if repo.master.is_encrypted() {
            let mut b = MANIFEST_MAGIC.to_vec();
            b.extend(repo.master.seal(manifest_aad(&self.id).as_bytes(), json));
            b
        } else {
            json
        };
        // Everything the manifest refers to must be on disk before the manifest is.
        self.sync.sync().map_err(|e| repo.io_err("syncing chunks and index", e))?;
        repo.storage
            .put(&self.id.manifest_key(), &body, true)
            .map_err(|e| repo.io_err(format!("writing manifest of {}", self.id), e))?;
        Ok(manifest)
    }
}

impl Manifest {
    fn spec_index_len(&self) -> u64 {
        24 + 32 * self.block_size.blocks_for(self.volume_size) + 32
    }
}

/// Reads a file point's tree entry by entry, a piece at a time.
pub struct TreeCursor {
    label: String,
    point: String,
    index: BlockIndexReader,
    fetch: PieceFetch,
    splitter: RecordSplitter,
    ready: std::collections::VecDeque<TreeEntry>,
}

/// Reads (and authenticates, and decodes) one tree piece by its chunk id.
pub type PieceFetch = Box<dyn FnMut(&ChunkId) -> Result<Vec<u8>> + Send>;

impl TreeCursor {
    /// A cursor over the tree of point `m`, whose (authenticated) index is `index`, reading
    /// pieces with `fetch`: from a repository here, or through a data mover.
    pub fn new(label: String, m: &Manifest, index: BlockIndexReader, fetch: PieceFetch) -> TreeCursor {
        TreeCursor {
            label,
            point: m.id.to_string(),
            index,
            fetch,
            splitter: RecordSplitter::default(),
            ready: std::collections::VecDeque::new(),
        }
    }

    /// The next entry without consuming it.
    pub fn peek(&mut self) -> Result<Option<&TreeEntry>> {
        while self.ready.is_empty() {
            let damaged = |reason: String| RepoError::DamagedPoint {
                repo: self.label.clone(),
                point: self.point.clone(),
                reason,
            };
            let io_err = |e| RepoError::Io { repo: self.label.clone(), what: "reading a tree index".into(), source: e };
            match self.index.next_block().map_err(io_err)? {
                None => {
                    if !self.splitter.is_clean() {
                        return Err(damaged("the tree ends inside a record".into()));
                    }
                    return Ok(None);
                }
                Some(BlockRef::Zero) => return Err(damaged("a tree piece is marked zero".into())),
                Some(BlockRef::Chunk(id)) => {
                    let piece = (self.fetch)(&id)?;
                    let entries = self.splitter.feed(&piece).map_err(|e| damaged(format!("tree unreadable: {e}")))?;
                    self.ready.extend(entries);
                }
            }
        }
        Ok(self.ready.front())
    }

    pub fn next_entry(&mut self) -> Result<Option<TreeEntry>> {
        self.peek()?;
        Ok(self.ready.pop_front())
    }
}
