use std::io::{self, Write};
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkCodec, ChunkId, Compression};
use crate::crypto::{self, KdfParams, KeyFile, Keys};
use crate::error::{RepoError, Result};
use crate::immutability::{self, Locker, GENERATION_DAYS};
use crate::index::{BlockIndexReader, BlockIndexWriter, BlockRef, BlockSize, IndexHeader};
use crate::integrity;
use crate::locks::{self, Lease, LEASE_TTL};
use crate::pack::Packs;
use crate::point::{validate_name, FileSummary, Manifest, PointKind, PointStats, RestorePointId};
use crate::storage::{self, Location, Storage};
use crate::tree::{RecordSplitter, TreeEntry, PIECE};
use std::collections::{HashMap, HashSet};

pub const FORMAT_NAME: &str = "bulwark-repository";
/// The newest format this build reads and writes. Version 2 added isolated computers; version
/// 3 puts an integrity digest in the manifests of unencrypted repositories (older builds refuse
/// such manifests, so the version says they are there). A repository is written at the oldest
/// version with what it uses; `bulwark repo upgrade` takes an unencrypted one to 3.
pub const FORMAT_VERSION: u32 = 4;
/// The first version whose plain manifests carry integrity digests.
const SEALED_MANIFESTS: u32 = 3;
/// The first version that stores chunks in packs ([`crate::pack`]).
const PACKED: u32 = 4;
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
    /// Chunks go into packs closed at about this size; absent: one file per chunk (versions
    /// 1 to 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pack_size: Option<u64>,
    /// Every point is locked for this many days after its time (see [`crate::immutability`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    immutable_days: Option<u32>,
}

/// How chunks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Many chunks to an object (version 4): what object stores need, and faster on any disk.
    #[default]
    Packs,
    /// One file per chunk, as versions 1 to 3 kept them: local directories only.
    Loose,
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
    pub layout: Layout,
    /// Size packs are closed at ([`crate::pack::DEFAULT_PACK_SIZE`] when `None`).
    pub pack_size: Option<u64>,
    /// Lock every point for this many days (see [`crate::immutability`]).
    pub immutable_days: Option<u32>,
}

/// An open repository. Cheap to clone: worker threads each hold one.
///
/// Manifests are always sealed with the master key, so whoever opens the repository lists every
/// point. Chunks, indexes and trees are written with `keys`: the master key, or one computer's
/// key in an isolated repository ([`Repository::scoped`], [`Repository::for_point`]).
#[derive(Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    location: Location,
    master: Keys,
    keys: Keys,
    scope: Option<String>,
    isolation: Isolation,
    /// Plain manifests carry (and must carry) an integrity digest.
    sealed: bool,
    /// The packs of a version 4 repository; `None` for one file per chunk.
    packs: Option<Arc<Packs>>,
    /// Days points stay locked, and what locks them.
    immutable: Option<(u32, Arc<dyn Locker>)>,
    /// The id the repository was given when it was created.
    repo_id: Arc<str>,
}

impl Repository {
    /// Creates a repository at `location` (an empty or absent directory, an empty bucket or
    /// prefix).
    pub fn init(location: impl Into<Location>, opts: &InitOptions) -> Result<Repository> {
        let location = location.into();
        let label = location.to_string();
        let ioe = |what: &str, e: io::Error| RepoError::Io { repo: label.clone(), what: what.into(), source: e };
        let storage = storage::open(&location).map_err(|e| ioe("opening the storage", e))?;
        if storage.exists(CONFIG).map_err(|e| ioe("reading config", e))? {
            return Err(RepoError::AlreadyExists { path: label });
        }
        let occupied = match location.as_path() {
            Some(path) => std::fs::read_dir(path).is_ok_and(|mut rd| rd.next().is_some()),
            None => !storage.list("").map_err(|e| ioe("listing the storage", e))?.is_empty(),
        };
        if occupied {
            return Err(RepoError::Invalid {
                repo: label,
                reason: match location.as_path() {
                    Some(_) => "the directory is not empty; a repository needs a directory of its own",
                    None => "the bucket (or prefix) is not empty; a repository needs one of its own",
                }
                .into(),
            });
        }
        if let Some(days) = opts.immutable_days {
            let why = if days == 0 || days > 3650 {
                Some("immutability lasts 1 to 3650 days")
            } else if opts.layout == Layout::Loose {
                Some("an immutable repository keeps chunks in packs (drop --loose)")
            } else {
                None
            };
            if let Some(reason) = why {
                return Err(RepoError::Invalid { repo: label, reason: reason.into() });
            }
            match &location {
                Location::S3(loc) => {
                    let s3 = storage::S3Storage::open(loc).map_err(|e| ioe("opening the storage", e))?;
                    immutability::S3Locker::check_bucket(&s3)
                        .map_err(|reason| RepoError::Invalid { repo: label.clone(), reason })?;
                }
                Location::Memory(_) => {
                    return Err(RepoError::Invalid {
                        repo: label,
                        reason: "a repository in memory cannot be immutable".into(),
                    })
                }
                Location::Local(_) => {}
            }
        }
        if opts.layout == Layout::Loose && !storage.is_local() {
            return Err(RepoError::Invalid {
                repo: label,
                reason: "one file per chunk needs a local directory; other storage keeps chunks in packs".into(),
            });
        }
        let pack_size = match (opts.layout, opts.pack_size) {
            (Layout::Loose, _) => None,
            (Layout::Packs, None) => Some(crate::pack::DEFAULT_PACK_SIZE),
            (Layout::Packs, Some(n)) if (crate::pack::MIN_PACK_SIZE..=crate::pack::MAX_PACK_SIZE).contains(&n) => {
                Some(n)
            }
            (Layout::Packs, Some(n)) => {
                return Err(RepoError::Invalid {
                    repo: label,
                    reason: format!(
                        "a pack size of {n} bytes: choose between {} MiB and {} MiB",
                        crate::pack::MIN_PACK_SIZE >> 20,
                        crate::pack::MAX_PACK_SIZE >> 20
                    ),
                })
            }
        };
        if opts.isolation == Isolation::Computer && opts.password.is_none() {
            return Err(RepoError::Invalid {
                repo: label,
                reason: "isolated computers need an encrypted repository (their keys derive from its master key)"
                    .into(),
            });
        }
        let mut dirs: Vec<String> = match pack_size {
            Some(_) => (0..=255u8).map(|b| format!("{}{b:02x}", crate::pack::DATA)).collect(),
            None => (0..=255u8).map(|b| format!("chunks/{b:02x}")).collect(),
        };
        dirs.extend(["points", "keys", "locks/writers", "locks/maintenance", "index", "gc"].map(String::from));
        storage.create_layout(&dirs).map_err(|e| ioe("creating directories", e))?;
        let keys = match &opts.password {
            Some(pw) => {
                let (keys, file) = Keys::generate(pw, opts.kdf)
                    .map_err(|reason| RepoError::Invalid { repo: label.clone(), reason })?;
                put_twice(&*storage, KEY_FILE, &integrity::seal(&file)).map_err(|e| ioe("writing key file", e))?;
                keys
            }
            None => Keys::none(),
        };
        let config = Config {
            format: FORMAT_NAME.into(),
            // The oldest version that has what this repository uses, so older builds read it
            // where they can: digests change plain manifests only.
            version: match (pack_size, keys.is_encrypted(), opts.isolation) {
                (Some(_), _, _) => PACKED,
                (None, false, _) => SEALED_MANIFESTS,
                (None, true, Isolation::Computer) => 2,
                (None, true, Isolation::Shared) => 1,
            },
            id: hex::encode(crypto::random_bytes::<16>()),
            created: Utc::now(),
            encryption: if keys.is_encrypted() { "aes256gcm" } else { "none" }.into(),
            isolation: opts.isolation,
            pack_size,
            immutable_days: opts.immutable_days,
        };
        // The config is written last: a directory without it is not (yet) a repository.
        put_twice(&*storage, CONFIG, &integrity::seal(&config)).map_err(|e| ioe("writing config", e))?;
        let immutable =
            immutability::locker(&location, config.immutable_days).map_err(|e| ioe("reaching the lock service", e))?;
        let repo = Repository::new(storage, location, keys, &config, immutable);
        // The repository's own objects are locked at once: a repository whose service cannot be
        // reached, or that lies outside its roots, is not made (its files are removed again).
        if let Some((days, locker)) = &repo.immutable {
            let until = Utc::now() + chrono::Duration::days(*days as i64 + GENERATION_DAYS);
            let own: Vec<String> =
                OWN_OBJECTS.iter().filter(|k| repo.storage.exists(k).unwrap_or(true)).map(|k| k.to_string()).collect();
            if let Err(e) = locker.lock(&own, until) {
                match repo.location.as_path() {
                    Some(path) => {
                        let _ = std::fs::remove_dir_all(path);
                    }
                    // The config first: without it, what is left is not a repository.
                    None => {
                        for k in [CONFIG, "config.copy", KEY_FILE, "keys/default.copy"] {
                            let _ = repo.storage.delete(k);
                        }
                    }
                }
                return Err(repo.io_err("locking the new repository's config and key file", e));
            }
        }
        Ok(repo)
    }

    /// Locks what point `m` needs but its manifest (see [`Repository::lock_manifest`]) until at
    /// least its time plus the immutability period; see [`crate::immutability`].
    fn lock_point(&self, m: &Manifest) -> Result<()> {
        // A point copied in after its period (an evacuation) needs no lock: a forget of it is
        // allowed already, and a store refuses a lock that ends in the past.
        let (Some((_, locker)), Some(needed)) = (&self.immutable, self.immutable_until(m)) else { return Ok(()) };
        let io = |e| self.io_err(format!("locking point {}", m.id), e);
        // The point's own objects are needed by it alone: locked until its period ends, so a
        // forget can remove them then. What later points reuse is locked a generation longer.
        locker.lock(&[m.id.index_key()], needed).map_err(io)?;
        let mut keys: Vec<String> = OWN_OBJECTS.iter().map(|k| k.to_string()).collect();
        if let Some(packs) = &self.packs {
            let mut chunks = HashSet::new();
            self.for_each_reference(m, |c| {
                chunks.insert(c);
            })?;
            let (pack_keys, index_keys) = packs.objects_holding(&chunks).map_err(io)?;
            keys.extend(pack_keys);
            keys.extend(index_keys);
        }
        keys.retain(|k| self.storage.exists(k).unwrap_or(true));
        let current = locker.locked_until(&keys).map_err(io)?;
        let short: Vec<String> =
            keys.into_iter().zip(current).filter(|(_, u)| u.is_none_or(|u| u < needed)).map(|(k, _)| k).collect();
        if !short.is_empty() {
            locker.lock(&short, needed + chrono::Duration::days(GENERATION_DAYS)).map_err(io)?;
        }
        Ok(())
    }

    /// Locks point `m`'s manifest, once written, until its period ends.
    fn lock_manifest(&self, m: &Manifest) -> Result<()> {
        let (Some((_, locker)), Some(until)) = (&self.immutable, self.immutable_until(m)) else { return Ok(()) };
        locker.lock(&[m.id.manifest_key()], until).map_err(|e| self.io_err(format!("locking point {}", m.id), e))
    }

    /// Whether points are locked for a period (see [`crate::immutability`]).
    pub fn is_immutable(&self) -> bool {
        self.immutable.is_some()
    }

    /// The days each point is locked for, in an immutable repository.
    pub fn immutable_days(&self) -> Option<u32> {
        self.immutable.as_ref().map(|(days, _)| *days)
    }

    /// The objects among `keys` locked now, with the date each lock ends (none in a repository
    /// that is not immutable).
    pub fn locks_of(&self, keys: &[String]) -> io::Result<HashMap<String, chrono::DateTime<Utc>>> {
        let Some((_, locker)) = &self.immutable else { return Ok(HashMap::new()) };
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let now = Utc::now();
        let dates = locker.locked_until(keys)?;
        Ok(keys.iter().zip(dates).filter_map(|(k, d)| d.filter(|d| *d > now).map(|d| (k.clone(), d))).collect())
    }

    /// When point `m` may be forgotten, if it is immutable now.
    pub fn immutable_until(&self, m: &Manifest) -> Option<chrono::DateTime<Utc>> {
        let (days, _) = self.immutable.as_ref()?;
        let until = m.created + chrono::Duration::days(*days as i64);
        (until > Utc::now()).then_some(until)
    }

    fn new(
        storage: Arc<dyn Storage>,
        location: Location,
        keys: Keys,
        config: &Config,
        immutable: Option<(u32, Arc<dyn Locker>)>,
    ) -> Repository {
        // Across a network, index objects and check marks are worth keeping on this machine.
        let storage = match location {
            Location::S3(_) => {
                storage::cache::CachedStorage::wrap(storage, &storage::cache::default_cache_root(), &config.id)
            }
            _ => storage,
        };
        let packs = config.pack_size.map(|size| Arc::new(Packs::new(storage.clone(), keys.clone(), size)));
        Repository {
            packs,
            immutable,
            repo_id: config.id.as_str().into(),
            storage,
            location,
            master: keys.clone(),
            keys,
            scope: None,
            isolation: config.isolation,
            sealed: config.version >= SEALED_MANIFESTS,
        }
    }

    /// Opens the repository at `location`; `password` is needed when it is encrypted.
    pub fn open(location: impl Into<Location>, password: Option<&[u8]>) -> Result<Repository> {
        let location = location.into();
        let label = location.to_string();
        let storage = storage::open(&location).map_err(|e| RepoError::Io {
            repo: label.clone(),
            what: "opening the storage".into(),
            source: e,
        })?;
        let config = read_config(&*storage, &label)?;
        let keys = match config.encryption.as_str() {
            "none" => Keys::none(),
            "aes256gcm" => {
                let pw = password.ok_or_else(|| RepoError::PasswordRequired { path: label.clone() })?;
                let (keys, _) = unlock(&*storage, &label, pw)?;
                keys
            }
            other => return Err(damaged_config(&label, format!("it names an unknown encryption {other:?}"))),
        };
        if config.isolation == Isolation::Computer && !keys.is_encrypted() {
            return Err(damaged_config(&label, "it isolates computers in an unencrypted repository".into()));
        }
        if (config.version >= PACKED) != config.pack_size.is_some() {
            return Err(damaged_config(&label, format!("its version ({}) and its pack size disagree", config.version)));
        }
        if config.pack_size.is_none() && !storage.is_local() {
            return Err(RepoError::Invalid {
                repo: label,
                reason: "it keeps one file per chunk (format version 3 or older), which Bulwark reads from a local \
                         directory only"
                    .into(),
            });
        }
        let immutable = immutability::locker(&location, config.immutable_days).map_err(|e| RepoError::Io {
            repo: label.clone(),
            what: "opening the storage's locks".into(),
            source: e,
        })?;
        Ok(Repository::new(storage, location, keys, &config, immutable))
    }

    /// Takes a repository of an older format to [`FORMAT_VERSION`]: seals the manifests of an
    /// unencrypted repository and the key file with integrity digests, then the config. Safe to
    /// interrupt and run again; returns how many manifests it sealed.
    pub fn upgrade(location: impl Into<Location>, password: Option<&[u8]>) -> Result<usize> {
        let repo = Repository::open(location, password)?;
        let mut config = read_config(&*repo.storage, &repo.label())?;
        let ioe = |what: String, e| repo.io_err(what, e);
        let _maintenance = repo.maintenance("upgrade")?;
        let mut sealed = 0;
        if !repo.master.is_encrypted() {
            let catalog = repo.catalog()?;
            if let Some(d) = catalog.damaged.first() {
                return Err(RepoError::DamagedPoint {
                    repo: repo.label(),
                    point: d.id.to_string(),
                    reason: format!(
                        "{}; sealing it would make the damage look whole: forget it (`bulwark forget --point {}`) first",
                        d.reason, d.id
                    ),
                });
            }
            for m in &catalog.points {
                let raw = repo
                    .storage
                    .read(&m.id.manifest_key())
                    .map_err(|e| ioe(format!("reading manifest of {}", m.id), e))?;
                if matches!(integrity::check(&raw), integrity::Checked::Unsealed(_)) {
                    repo.storage
                        .put(&m.id.manifest_key(), &integrity::seal(m), true)
                        .map_err(|e| ioe(format!("writing manifest of {}", m.id), e))?;
                    sealed += 1;
                }
            }
        } else if let Some(pw) = password {
            // (Opening it above healed a damaged primary from its copy, or failed.)
            let storage = &*repo.storage;
            let raw = storage.read(KEY_FILE).map_err(|e| ioe("reading key file".into(), e))?;
            if let integrity::Checked::Intact(v) | integrity::Checked::Unsealed(v) = integrity::check(&raw) {
                let file: KeyFile = serde_json::from_value(v).map_err(|e| damaged_key(&repo.label(), e.to_string()))?;
                unlock_one(&raw, &repo.label(), pw)?;
                put_twice(storage, KEY_FILE, &integrity::seal(&file)).map_err(|e| ioe("writing key file".into(), e))?;
            }
        }
        if !repo.master.is_encrypted() {
            config.version = config.version.max(SEALED_MANIFESTS);
        }
        put_twice(&*repo.storage, CONFIG, &integrity::seal(&config)).map_err(|e| ioe("writing config".into(), e))?;
        Ok(sealed)
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
    pub fn change_password(location: impl Into<Location>, old: &[u8], new: &[u8], kdf: KdfParams) -> Result<()> {
        let repo = Repository::open(location, Some(old))?;
        let (storage, label) = (&*repo.storage, repo.label());
        if !repo.keys.is_encrypted() {
            return Err(RepoError::Invalid { repo: label, reason: "the repository is not encrypted".into() });
        }
        let (_, master) = unlock(storage, &label, old)?;
        let file =
            crypto::wrap(&master, new, kdf).map_err(|reason| RepoError::Invalid { repo: label.clone(), reason })?;
        put_twice(storage, KEY_FILE, &integrity::seal(&file)).map_err(|e| RepoError::Io {
            repo: label,
            what: "writing key file".into(),
            source: e,
        })
    }

    /// The id the repository was given when it was created: the same repository whatever path
    /// or address it is reached by.
    pub fn repository_id(&self) -> &str {
        &self.repo_id
    }

    pub fn label(&self) -> String {
        self.storage.describe()
    }

    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// Where the repository is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Takes the maintenance lock (one collection or upgrade at a time; forgets wait for it).
    pub(crate) fn maintenance(&self, what: &str) -> Result<Lease> {
        match locks::maintenance(self.storage.clone(), what)
            .map_err(|e| self.io_err("taking the maintenance lock", e))?
        {
            Ok(lease) => Ok(lease),
            Err(holder) => Err(RepoError::Busy { repo: self.label(), holder: holder.describe() }),
        }
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
        if let Some(packs) = &self.packs {
            return self.read_packed_chunk(packs, codec, id, stored, block);
        }
        let key = id.key();
        match self.storage.read_into(&key, stored) {
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
        })?;
        // Read whole and matching its name: a backup may build on it without reading it again.
        // Best effort: a repository this user may only read keeps no marks.
        if self.storage.checked_size(&key).ok().flatten() != Some(stored.len() as u64) {
            let _ = self.storage.mark_checked(&key, stored.len() as u64);
        }
        Ok(())
    }

    /// [`Repository::read_chunk_into`] in a version 4 repository: every copy of the chunk is
    /// tried, so one damaged copy does not fail a restore while another is whole.
    fn read_packed_chunk(
        &self,
        packs: &Packs,
        codec: &mut ChunkCodec,
        id: &ChunkId,
        stored: &mut Vec<u8>,
        block: &mut Vec<u8>,
    ) -> Result<()> {
        let mut damage = None;
        for attempt in 0..2 {
            if attempt == 1 {
                // Packs rewritten by a collection since the index was loaded.
                packs.refresh().map_err(|e| self.io_err("reading the pack index", e))?;
            }
            let locs = packs.locations(id).map_err(|e| self.io_err("reading the pack index", e))?;
            for loc in locs {
                match packs.read_copy(&loc, stored) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        damage = Some(format!("pack {} is truncated", loc.pack));
                        continue;
                    }
                    Err(e) => return Err(self.io_err(format!("reading chunk {id} from pack {}", loc.pack), e)),
                }
                match codec.decode_into(id, stored, block) {
                    Ok(()) => return Ok(()),
                    Err(f) => damage = Some(format!("{f} (in pack {})", loc.pack)),
                }
            }
            if damage.is_some() {
                break;
            }
        }
        Err(match damage {
            Some(reason) => RepoError::DamagedChunk { repo: self.label(), id: *id, reason },
            None => RepoError::MissingChunk { repo: self.label(), id: *id },
        })
    }

    /// Marks chunk `id` as used by the point being written; `false` if the repository lacks it
    /// *or it cannot be trusted*, so the caller stores it again. Only meaningful inside a
    /// [`PointWriter`]'s lifetime (its lease is what protects the chunk from a concurrent
    /// garbage collection).
    ///
    /// A new point is never built on unchecked data: a chunk is reused when it was checked
    /// whole since it was written (by `verify`, a restore, or an earlier backup's reuse, which
    /// leave a mark recording its size), or after it is checked now, once: its stored bytes
    /// against the digest recorded when it was written, or (a chunk from before such digests)
    /// read, decoded and hashed like a restore would. A damaged chunk reads as absent, and the
    /// backup's good copy replaces it.
    pub fn reuse_chunk(&self, id: &ChunkId) -> Result<bool> {
        if let Some(packs) = &self.packs {
            // No touch: the collection spares what running backups may use by other means
            // (see `gc`).
            return packs.reusable(id).map_err(|e| self.io_err(format!("checking chunk {id}"), e));
        }
        if !self.storage.touch_shared(&id.key()).map_err(|e| self.io_err(format!("touching chunk {id}"), e))? {
            return Ok(false);
        }
        self.chunk_is_sound(id)
    }

    /// [`Repository::reuse_chunk`] for many chunks, the reads of unmarked ones spread over
    /// `threads` threads (a data mover answers an agent's queries on one thread per stream).
    pub fn reuse_chunks(&self, ids: &[ChunkId], threads: usize) -> Result<Vec<bool>> {
        if self.packs.is_some() {
            // Checking an unchecked pack reads it whole: spread those reads over the threads.
            let answers: Vec<std::sync::atomic::AtomicBool> = ids.iter().map(|_| Default::default()).collect();
            crate::spread(threads, ids.len(), |i| {
                answers[i].store(self.reuse_chunk(&ids[i])?, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })?;
            return Ok(answers.into_iter().map(|a| a.into_inner()).collect());
        }
        let mut answers = Vec::with_capacity(ids.len());
        let mut unmarked = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if !self.storage.touch_shared(&id.key()).map_err(|e| self.io_err(format!("touching chunk {id}"), e))? {
                answers.push(false);
                continue;
            }
            match self.sound_at_a_glance(id)? {
                Some(sound) => answers.push(sound),
                None => {
                    answers.push(false);
                    unmarked.push(i);
                }
            }
        }
        let checked = std::sync::Mutex::new(Vec::new());
        crate::spread(threads, unmarked.len(), |j| {
            let i = unmarked[j];
            let sound = self.check_stored(&ids[i])?;
            checked.lock().expect("no panics while held").push((i, sound));
            Ok(())
        })?;
        for (i, sound) in checked.into_inner().expect("no panics while held") {
            answers[i] = sound;
        }
        Ok(answers)
    }

    /// The check of [`Repository::reuse_chunk`] without the touch: for chunks of a point a
    /// writer has pinned (its parent), which a collection cannot remove anyway.
    pub fn chunk_is_sound(&self, id: &ChunkId) -> Result<bool> {
        if self.packs.is_some() {
            return self.reuse_chunk(id);
        }
        match self.sound_at_a_glance(id)? {
            Some(sound) => Ok(sound),
            None => self.check_stored(id),
        }
    }

    /// What metadata alone tells of a chunk: absent or empty (`Some(false)`), marked checked at
    /// its size (`Some(true)`), or nothing: it must be read (`None`).
    fn sound_at_a_glance(&self, id: &ChunkId) -> Result<Option<bool>> {
        let key = id.key();
        // A chunk is made durable with its point, after it became visible: after a power cut
        // during a backup that never committed, its name can survive with no content. Such a
        // chunk counts as absent, so this backup writes it again.
        let io = |e| self.io_err(format!("reading chunk {id}"), e);
        let len = self.storage.size(&key).map_err(io)?;
        if len < crate::chunk::MIN_STORED_LEN {
            return Ok(Some(false));
        }
        if self.storage.checked_size(&key).map_err(io)? == Some(len) {
            return Ok(Some(true));
        }
        Ok(None)
    }

    /// Reads an unmarked chunk whole: its stored bytes against the digest recorded when it was
    /// written, or (a chunk from before such digests) decoded like a restore. Marks it if sound.
    fn check_stored(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        let io = |e| self.io_err(format!("reading chunk {id}"), e);
        if let Some(sum) = self.storage.stored_sum(&key).map_err(io)? {
            let mut stored = Vec::new();
            return match self.storage.read_into(&key, &mut stored) {
                Ok(()) if *blake3::hash(&stored).as_bytes() == sum => {
                    let _ = self.storage.mark_checked(&key, stored.len() as u64);
                    Ok(true)
                }
                Ok(()) => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io(e)),
            };
        }
        let (mut stored, mut block) = (Vec::new(), Vec::new());
        match self.read_chunk_into(&mut self.codec(Compression::None), id, &mut stored, &mut block) {
            Ok(()) => Ok(true),
            Err(RepoError::DamagedChunk { .. } | RepoError::MissingChunk { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores an encoded chunk (see [`ChunkCodec::encode`]). Durable at the point's commit.
    /// The digest of its stored bytes goes with it, so the first backup that reuses it checks
    /// it with a read and a hash instead of a decode.
    pub fn put_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<()> {
        let io = |e| self.io_err(format!("writing chunk {id}"), e);
        if let Some(packs) = &self.packs {
            return packs.put(id, stored).map_err(io);
        }
        let mut staged = self.storage.create(&id.key()).map_err(io)?;
        staged.write_all(stored).map_err(io)?;
        staged.set_sum(blake3::hash(stored).as_bytes()).map_err(io)?;
        staged.commit(false).map_err(io)
    }

    /// Stops using a chunk found damaged (by `verify`), so the next backup that has its data
    /// stores it again: a loose chunk is moved aside (kept as `KEY.damaged`) and reads as
    /// missing. In a pack there is nothing to do (`Ok(false)`): a copy whose bytes do not match
    /// its pack's header is never reused, a new copy is stored beside it, reads take whichever
    /// copy is whole, and garbage collection drops the damaged one.
    pub fn quarantine_chunk(&self, id: &ChunkId) -> Result<bool> {
        match &self.packs {
            None => {
                self.storage.quarantine(&id.key()).map_err(|e| self.io_err(format!("moving chunk {id} aside"), e))?;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Makes every chunk put so far findable by other processes: the open pack is closed and
    /// indexed. A commit does this itself; a chunk stored loose is findable at once.
    pub fn flush(&self) -> Result<()> {
        match &self.packs {
            Some(packs) => packs.flush().map_err(|e| self.io_err("writing packs", e)),
            None => Ok(()),
        }
    }

    /// How many distinct chunks the repository holds (as far as this process knows: a pack
    /// another process has not indexed yet is not counted).
    pub fn chunk_count(&self) -> Result<usize> {
        let io = |e| self.io_err("counting chunks", e);
        match &self.packs {
            None => Ok(self
                .storage
                .list("chunks/")
                .map_err(io)?
                .iter()
                .filter(|e| ChunkId::from_hex(e.name.rsplit('/').next().unwrap_or("")).is_some())
                .count()),
            Some(packs) => {
                packs.refresh().map_err(io)?;
                Ok(packs.state().chunks().count())
            }
        }
    }

    /// The packs of a version 4 repository.
    pub(crate) fn packs(&self) -> Option<&Arc<Packs>> {
        self.packs.as_ref()
    }

    /// Where the copies of a chunk are stored: keys of objects, with the offset and length of
    /// the chunk in each (what a test needs to damage one, or an operator to find it).
    pub fn chunk_copies(&self, id: &ChunkId) -> Result<Vec<(String, u64, u64)>> {
        match &self.packs {
            None => {
                let size = self.storage.size(&id.key()).map_err(|e| self.io_err(format!("finding chunk {id}"), e))?;
                Ok(if size > 0 { vec![(id.key(), 0, size)] } else { vec![] })
            }
            Some(packs) => Ok(packs
                .locations(id)
                .map_err(|e| self.io_err(format!("finding chunk {id}"), e))?
                .into_iter()
                .map(|l| (l.pack.key(), l.offset, l.len as u64))
                .collect()),
        }
    }

    /// Starts a restore point; nothing is visible until [`PointWriter::commit`].
    pub fn begin_point(&self, spec: PointSpec) -> Result<PointWriter> {
        validate_name(&spec.name).map_err(|reason| RepoError::Invalid { repo: self.label(), reason })?;
        let created = Utc::now();
        let id = RestorePointId::generate(created);
        let mut spec = spec;
        // Whatever a writer claims, the point is of the keys it is written with.
        spec.key_scope = self.scope.clone();
        self.begin_with(spec, id, created, None)
    }

    /// Starts the copy of point `m` (of another repository) into this one, through the handle
    /// whose keys it is to be written with: the same id and time, and at the commit the same
    /// manifest but for the index authenticator (see [`crate::copy`]).
    pub(crate) fn begin_copy(&self, m: &Manifest) -> Result<PointWriter> {
        let spec = PointSpec {
            kind: m.kind,
            name: m.name.clone(),
            source: m.source.clone(),
            volume_size: m.volume_size,
            block_size: m.block_size,
            compression: m.compression,
            parent: m.parent.clone(),
            snapshot: m.snapshot.clone(),
            consistency: m.consistency.clone(),
            key_scope: m.key_scope.clone(),
        };
        self.begin_with(spec, m.id.clone(), m.created, Some(Box::new(m.clone())))
    }

    fn begin_with(
        &self,
        mut spec: PointSpec,
        id: RestorePointId,
        created: chrono::DateTime<Utc>,
        copy_of: Option<Box<Manifest>>,
    ) -> Result<PointWriter> {
        // Pin the parent: announce it in the lease, then check it still stands. A forget
        // writes its tombstone, then reads the leases (see `delete_point`): with a store whose
        // reads follow its writes, either the forget sees this lease and refuses, or this
        // sees the tombstone (or the manifest gone) and starts afresh.
        let parent = spec.parent.as_ref().map(|p| p.as_str().to_string());
        let lease = Lease::take(
            self.storage.clone(),
            format!("{}{}", locks::WRITERS, id.as_str()),
            "backup",
            parent.as_deref(),
            LEASE_TTL,
        )
        .map_err(|e| self.io_err("registering the backup", e))?;
        if let Some(p) = &spec.parent {
            let exists =
                |key: String| self.storage.exists(&key).map_err(|e| self.io_err("checking the parent point", e));
            if !exists(p.manifest_key())? || exists(p.tombstone_key())? {
                spec.parent = None;
            }
        }
        // Read after the lease is written: a collection that condemned chunks before this
        // backup began finds the lease younger than its list, so it knows this backup saw it.
        let failures = match &self.packs {
            Some(packs) => {
                let io = |e| self.io_err("reading the pack index", e);
                packs.load_condemned().map_err(io)?;
                packs.refresh().map_err(io)?;
                packs.failures().0
            }
            None => 0,
        };
        let index = match spec.kind {
            PointKind::Volume => Some(self.index_writer(&id, IndexHeader::new(spec.block_size, spec.volume_size))?),
            PointKind::Files => None,
        };
        let sync = self.storage.sync_point().map_err(|e| self.io_err("opening the repository for sync", e))?;
        let _flush = FlushOnDrop(self.packs.clone());
        Ok(PointWriter { repo: self.clone(), id, created, spec, index, sync, lease, failures, copy_of, _flush })
    }

    fn index_writer(&self, id: &RestorePointId, header: IndexHeader) -> Result<BlockIndexWriter> {
        let staged = self.storage.create(&id.index_key()).map_err(|e| self.io_err("creating the block index", e))?;
        BlockIndexWriter::new(staged, &self.keys, header).map_err(|e| self.io_err("writing the block index", e))
    }

    /// All readable restore points, oldest first. A point whose manifest is damaged is left out
    /// (see [`Repository::catalog`]): one bad object never hides the others.
    pub fn list_points(&self) -> Result<Vec<Manifest>> {
        Ok(self.catalog()?.points)
    }

    /// Every point the repository holds, readable or not, and the indexes that lost their
    /// manifest.
    pub fn catalog(&self) -> Result<Catalog> {
        let entries = self.storage.list("points/").map_err(|e| self.io_err("listing points", e))?;
        let mut catalog = Catalog::default();
        let (mut manifests, mut indexes) = (Vec::new(), Vec::new());
        for e in &entries {
            let Some((id, ext)) = e.name.rsplit_once('.') else { continue };
            let Ok(id) = id.parse::<RestorePointId>() else { continue };
            match ext {
                "manifest" => manifests.push(id),
                "index" => indexes.push(id),
                "forgotten" => {
                    catalog.forgotten.insert(id);
                }
                _ => {}
            }
        }
        for id in &manifests {
            match self.load_manifest(id) {
                Ok(m) => catalog.points.push(m),
                // Forgotten between listing and reading: not an error.
                Err(RepoError::NoSuchPoint { .. }) => {}
                Err(RepoError::DamagedPoint { reason, .. }) => {
                    catalog.damaged.push(DamagedManifest { id: id.clone(), reason })
                }
                Err(e) => catalog.damaged.push(DamagedManifest { id: id.clone(), reason: e.to_string() }),
            }
        }
        let with_manifest: HashSet<&RestorePointId> = manifests.iter().collect();
        for id in indexes {
            if with_manifest.contains(&id) || catalog.forgotten.contains(&id) {
                continue;
            }
            // A backup that is running, or died before writing its manifest, still has its
            // lease: its index is no orphan.
            let lease = format!("{}{id}", locks::WRITERS);
            if self.storage.exists(&lease).map_err(|e| self.io_err("checking a backup's lease", e))? {
                continue;
            }
            // Committed between listing and now.
            if self.storage.exists(&id.manifest_key()).map_err(|e| self.io_err("checking a manifest", e))? {
                continue;
            }
            catalog.orphans.push(id);
        }
        catalog.points.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(catalog)
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
        let value: serde_json::Value = if self.master.is_encrypted() {
            let sealed = raw.strip_prefix(MANIFEST_MAGIC).ok_or_else(|| damaged("its manifest has a bad header"))?;
            let json = self
                .master
                .open(manifest_aad(id).as_bytes(), sealed)
                .ok_or_else(|| damaged("its manifest fails authentication (altered or damaged)"))?;
            serde_json::from_slice(&json).map_err(|e| damaged(&format!("its manifest is unreadable: {e}")))?
        } else {
            match integrity::check(&raw) {
                integrity::Checked::Intact(v) => v,
                integrity::Checked::Unsealed(_) if self.sealed => {
                    return Err(damaged("its manifest has lost its integrity digest"))
                }
                integrity::Checked::Unsealed(v) => v,
                integrity::Checked::Damaged(reason) => return Err(damaged(&format!("its manifest: {reason}"))),
            }
        };
        let m: Manifest =
            serde_json::from_value(value).map_err(|e| damaged(&format!("its manifest is unreadable: {e}")))?;
        if m.id != *id {
            return Err(damaged("its manifest belongs to another point"));
        }
        Ok(m)
    }

    /// Every chunk a point whose manifest is lost or damaged may still reference, as far as its
    /// index (read without authentication, which needs the manifest) tells. Garbage collection
    /// keeps them, so a point it cannot read is never made worse.
    pub fn salvage_references(&self, id: &RestorePointId, mut f: impl FnMut(ChunkId)) -> Result<()> {
        let reader = match crate::index::BlockIndexReader::open_unauthenticated(self.storage(), &id.index_key()) {
            Ok(r) => r,
            Err(_) => return Ok(()),
        };
        let mut index = reader;
        let mut pieces = Vec::new();
        while let Ok(Some(r)) = index.next_block() {
            if let BlockRef::Chunk(c) = r {
                f(c);
                pieces.push(c);
            }
        }
        // A file point's index lists its tree pieces; the tree names the content. The keys are
        // the master key's or, where computers are isolated, one of theirs: try each known one.
        if index.header().block_size.bytes() as usize != PIECE {
            return Ok(());
        }
        let mut scopes: Vec<Option<String>> = vec![None];
        if self.isolation == Isolation::Computer {
            let known = self.list_points()?.into_iter().filter_map(|m| m.key_scope);
            scopes.extend(known.collect::<HashSet<_>>().into_iter().map(Some));
        }
        let Some(scope) = pieces.first().and_then(|first| {
            scopes.into_iter().find(|s| {
                let repo = self.with_scope(s.as_deref());
                repo.read_chunk(&mut repo.codec(Compression::None), first).is_ok()
            })
        }) else {
            return Ok(());
        };
        let repo = self.with_scope(scope.as_deref());
        let mut codec = repo.codec(Compression::None);
        let mut splitter = RecordSplitter::default();
        for p in pieces {
            let Ok(piece) = repo.read_chunk(&mut codec, &p) else { break };
            let Ok(entries) = splitter.feed(&piece) else { break };
            for e in entries {
                e.extents.iter().filter_map(|x| x.chunk).for_each(&mut f);
            }
        }
        Ok(())
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
        Ok(self.catalog()?.latest(name).cloned())
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
        // Where nothing checks the manifest itself (a plain repository from before digests), a
        // mismatch may be the manifest's fault as much as the index's: say so.
        let unchecked = !self.master.is_encrypted() && !self.sealed;
        let blame = |reason: String| {
            damaged(if unchecked {
                format!("{reason}; or its manifest is damaged (it predates integrity digests: `bulwark repo upgrade`)")
            } else {
                reason
            })
        };
        let reader = BlockIndexReader::open(self.storage(), &m.id.index_key(), keys, &auth).map_err(blame)?;
        let h = reader.header();
        if h.volume_size != m.volume_size || h.block_size != m.block_size {
            return Err(blame("its index does not match its manifest".into()));
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
        if let Some(packs) = &self.packs {
            let mut buf = Vec::new();
            return match packs.read_first(id, &mut buf) {
                Ok(Some(_)) => Ok(buf),
                Ok(None) => Err(RepoError::MissingChunk { repo: self.label(), id: *id }),
                Err(e) => Err(self.io_err(format!("reading chunk {id}"), e)),
            };
        }
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

    /// Deletes a point (readable, damaged, or an orphaned index): a tombstone first, so what an
    /// interruption leaves is known to be a forget and not a lost manifest; then the manifest
    /// (the point is gone at once), its index, and the tombstone. Chunks are left to garbage
    /// collection; no other point is touched.
    pub fn delete_point(&self, id: &RestorePointId) -> Result<()> {
        if self.immutable.is_some() {
            if let Some(until) = self.load_manifest(id).ok().and_then(|m| self.immutable_until(&m)) {
                return Err(RepoError::Immutable {
                    repo: self.label(),
                    point: id.to_string(),
                    until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
            }
        }
        let exists = |key: String| self.storage.exists(&key).map_err(|e| self.io_err("checking a point", e));
        if !exists(id.manifest_key())? && !exists(id.index_key())? {
            return Err(RepoError::NoSuchPoint { repo: self.label(), point: id.to_string() });
        }
        let tomb = id.tombstone_key();
        self.storage.put(&tomb, b"forgotten\n", true).map_err(|e| self.io_err(format!("forgetting {id}"), e))?;
        // Now that the tombstone is written, a backup that starts will not build on the point and
        // a collection that starts will keep its chunks; one already running is seen here.
        let refuse = |e: RepoError| -> Result<()> {
            self.storage.delete(&tomb).map_err(|e| self.io_err(format!("withdrawing the forget of {id}"), e))?;
            Err(e)
        };
        let writers = locks::writers(&*self.storage, true).map_err(|e| self.io_err("listing running backups", e))?;
        if let Some(w) = writers.iter().find(|w| w.parent.as_deref() == Some(id.as_str())) {
            return refuse(RepoError::PointInUse { repo: self.label(), point: id.to_string(), writer: w.id.clone() });
        }
        // A collection marks what the points it listed reference: a point it listed must stay
        // until it is done, or a backup that reused the point's chunks could lose them.
        if let Some(h) =
            locks::maintenance_holder(&*self.storage).map_err(|e| self.io_err("reading the maintenance lock", e))?
        {
            return refuse(RepoError::Busy { repo: self.label(), holder: h.describe() });
        }
        self.storage.delete(&id.manifest_key()).map_err(|e| self.io_err(format!("deleting manifest of {id}"), e))?;
        self.storage.sync().map_err(|e| self.io_err("syncing", e))?;
        self.storage.delete(&id.index_key()).map_err(|e| self.io_err(format!("deleting index of {id}"), e))?;
        self.storage.delete(&tomb).map_err(|e| self.io_err(format!("forgetting {id}"), e))
    }
}

const KEY_FILE: &str = "keys/default";

/// The repository's own objects, which every point needs (locked with each).
const OWN_OBJECTS: [&str; 4] = ["config", "config.copy", "keys/default", "keys/default.copy"];

const CONFIG: &str = "config";

/// The repository's own objects (config, key file) are stored twice, `KEY` and `KEY.copy`:
/// losing either would lose every point. The copy is written first, so an interrupted write
/// leaves one whole.
fn put_twice(storage: &dyn Storage, key: &str, bytes: &[u8]) -> io::Result<()> {
    storage.put(&format!("{key}.copy"), bytes, true)?;
    storage.put(key, bytes, true)
}

/// Reads one of the objects [`put_twice`] wrote: the primary, or when it is damaged or gone
/// and the copy `parse`s, the copy, which then replaces the primary (best effort: a repository
/// this user may only read is left as it is).
fn read_twice<T>(storage: &dyn Storage, key: &str, parse: impl Fn(Option<&[u8]>) -> Result<T>) -> Result<T> {
    let primary = storage.read(key);
    let first = match &primary {
        Ok(raw) => parse(Some(raw)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => parse(None),
        Err(e) => Err(RepoError::Io {
            repo: storage.describe(),
            what: format!("reading {key}"),
            source: io::Error::new(e.kind(), e.to_string()),
        }),
    };
    let healable = matches!(
        first,
        Err(RepoError::DamagedObject { .. }
            | RepoError::NotARepository { .. }
            | RepoError::WrongPassword { .. }
            | RepoError::WrongPasswordOrDamagedKey { .. }
            | RepoError::Io { .. })
    );
    if !healable {
        return first;
    }
    let Ok(copy) = storage.read(&format!("{key}.copy")) else { return first };
    if primary.as_ref().is_ok_and(|p| *p == copy) {
        return first;
    }
    match parse(Some(&copy)) {
        Ok(v) => {
            let _ = storage.put(key, &copy, true);
            Ok(v)
        }
        Err(_) => first,
    }
}

/// Reads and checks the config: a damaged one is named as such, not as another product's.
fn read_config(storage: &dyn Storage, label: &str) -> Result<Config> {
    read_twice(storage, CONFIG, |raw| parse_config(raw, label))
}

fn parse_config(raw: Option<&[u8]>, label: &str) -> Result<Config> {
    let path = label;
    let Some(raw) = raw else { return Err(RepoError::NotARepository { path: path.into() }) };
    let value = match integrity::check(raw) {
        integrity::Checked::Intact(v) | integrity::Checked::Unsealed(v) => v,
        integrity::Checked::Damaged(reason) => {
            // Another product's config (not even JSON, say) is not damage to ours.
            let ours = [&b"bulwark"[..], b"integrity"].iter().any(|w| raw.windows(w.len()).any(|x| x == *w));
            if !ours {
                return Err(RepoError::ForeignFormat { path: path.into(), found: "unreadable".into() });
            }
            return Err(damaged_config(label, reason));
        }
    };
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT_NAME) => {}
        Some(other) if integrity::near(other, FORMAT_NAME) => {
            return Err(damaged_config(label, format!("its format field reads {other:?}")))
        }
        Some(other) => return Err(RepoError::ForeignFormat { path: path.into(), found: other.into() }),
        None if raw.windows(7).any(|w| w == b"bulwark") => {
            return Err(damaged_config(label, "it has no format field".into()))
        }
        None => return Err(RepoError::ForeignFormat { path: path.into(), found: "unreadable".into() }),
    }
    let config: Config = serde_json::from_value(value).map_err(|e| damaged_config(label, format!("{e}")))?;
    if config.version > FORMAT_VERSION {
        return Err(RepoError::NewerFormat { path: path.into(), found: config.version, supported: FORMAT_VERSION });
    }
    Ok(config)
}

fn damaged_config(label: &str, reason: String) -> RepoError {
    RepoError::DamagedObject {
        repo: label.into(),
        object: "its config file".into(),
        reason,
        remedy: "copy `config` back from a copy of this repository (it holds no secrets and changes only with \
                 `repo upgrade`)"
            .into(),
    }
}

fn damaged_key(label: &str, reason: String) -> RepoError {
    RepoError::DamagedObject {
        repo: label.into(),
        object: "its key file (keys/default)".into(),
        reason,
        remedy: "without it nothing here can be decrypted: copy keys/default back from a copy of this repository"
            .into(),
    }
}

fn unlock(storage: &dyn Storage, label: &str, pw: &[u8]) -> Result<(Keys, [u8; 64])> {
    read_twice(storage, KEY_FILE, |raw| match raw {
        Some(raw) => unlock_one(raw, label, pw),
        None => Err(RepoError::Io {
            repo: label.into(),
            what: "reading key file".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "keys/default is missing or unreadable"),
        }),
    })
}

fn unlock_one(raw: &[u8], label: &str, pw: &[u8]) -> Result<(Keys, [u8; 64])> {
    let (value, sealed) = match integrity::check(raw) {
        integrity::Checked::Intact(v) => (v, true),
        integrity::Checked::Unsealed(v) => (v, false),
        integrity::Checked::Damaged(reason) => return Err(damaged_key(label, reason)),
    };
    let file: KeyFile = serde_json::from_value(value).map_err(|e| damaged_key(label, e.to_string()))?;
    match Keys::unlock(&file, pw) {
        Ok(Some(k)) => Ok(k),
        Ok(None) if sealed => Err(RepoError::WrongPassword { path: label.into() }),
        Ok(None) => Err(RepoError::WrongPasswordOrDamagedKey { path: label.into() }),
        Err(reason) => Err(damaged_key(label, reason)),
    }
}

fn manifest_aad(id: &RestorePointId) -> String {
    format!("bulwark manifest {id}")
}

/// A restore point whose manifest cannot be read: listed as damaged, never an error for the
/// other points.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedManifest {
    pub id: RestorePointId,
    pub reason: String,
}

/// What [`Repository::catalog`] found in `points/`.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Readable points, oldest first.
    pub points: Vec<Manifest>,
    pub damaged: Vec<DamagedManifest>,
    /// Indexes whose manifest is gone though no forget removed it and no backup is writing
    /// it: a lost manifest. Garbage collection keeps them and the chunks they name.
    pub orphans: Vec<RestorePointId>,
    /// Points with a forget's tombstone (`points/ID.forgotten`): the forget was interrupted.
    pub forgotten: HashSet<RestorePointId>,
}

impl Catalog {
    /// The newest readable point of a backup name.
    pub fn latest(&self, name: &str) -> Option<&Manifest> {
        self.points.iter().rev().find(|m| m.name == name)
    }
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
    lease: Lease,
    /// Packs abandoned in this process before the point began (see [`Packs::failures`]).
    failures: u64,
    /// The point this one copies: its manifest is kept as it is (host, parent, stats, files).
    copy_of: Option<Box<Manifest>>,
    _flush: FlushOnDrop,
}

/// Closes and indexes the open pack when a backup ends without committing (its stream broke,
/// its agent died): what it stored is then found by the next backup, which sends only the rest.
struct FlushOnDrop(Option<Arc<Packs>>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(packs) = &self.0 {
            let _ = packs.flush();
        }
    }
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
            consistency: stats.consistency.take().unwrap_or(self.spec.consistency),
            key_scope: self.spec.key_scope,
            stats: PointStats::default(),
            files,
        };
        match self.copy_of {
            Some(original) => {
                // A copy is the same point: only the authenticator (of this repository's keys)
                // is its own.
                let Manifest { host, parent, key_scope, stats, files, .. } = *original;
                manifest = Manifest { host, parent, key_scope, stats, files, ..manifest };
            }
            None => {
                stats.stored_bytes = stats.stored_bytes.saturating_add(manifest.spec_index_len());
                manifest.stats = stats;
            }
        }
        let body = if repo.master.is_encrypted() {
            let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
            let mut b = MANIFEST_MAGIC.to_vec();
            b.extend(repo.master.seal(manifest_aad(&self.id).as_bytes(), json));
            b
        } else if repo.sealed {
            integrity::seal(&manifest)
        } else {
            serde_json::to_vec_pretty(&manifest).expect("manifest serializes")
        };
        // Everything the manifest refers to must be on disk before the manifest is.
        if let Some(packs) = &repo.packs {
            packs.flush().map_err(|e| repo.io_err("writing packs", e))?;
            let (failures, why) = packs.failures();
            if failures != self.failures {
                return Err(RepoError::Invalid {
                    repo: repo.label(),
                    reason: format!(
                        "backup {} is not committed: {}",
                        self.id,
                        why.unwrap_or_else(|| "a pack could not be written".into())
                    ),
                });
            }
        }
        self.sync.sync().map_err(|e| repo.io_err("syncing chunks and index", e))?;
        self.lease.check().map_err(|reason| RepoError::Invalid {
            repo: repo.label(),
            reason: format!("backup {} is not committed: {reason}", self.id),
        })?;
        repo.lock_point(&manifest)?;
        repo.storage
            .put(&self.id.manifest_key(), &body, true)
            .map_err(|e| repo.io_err(format!("writing manifest of {}", self.id), e))?;
        if let Err(e) = repo.lock_manifest(&manifest) {
            // A point is committed locked or not at all.
            let _ = repo.storage.delete(&self.id.manifest_key());
            return Err(e);
        }
        Ok(manifest)
    }
}

impl Manifest {
    /// The bytes of the point's index object.
    pub(crate) fn spec_index_len(&self) -> u64 {
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
