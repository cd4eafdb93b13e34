//! Garbage collection: removes chunks no restore point references, safe beside running backups.
//!
//! Both layouts share the mark phase and the leases:
//! - A backup holds a *writer lease* (see [`crate::locks`]) from before its first chunk until
//!   its manifest is written. The lease names the point it builds on (its parent), and while the
//!   lease lives that point cannot be deleted (`delete_point` and `begin_point` each write, then
//!   read the other's object), so the parent's chunks stay marked.
//! - The collector takes the maintenance lock (forgets refuse to run while it is held), reads the
//!   storage's clock (`start`), then the live leases, then every manifest and index (mark).
//! - What is not understood is kept. A point whose manifest is damaged, and an index whose
//!   manifest vanished without a forget (an *orphan*), keep every chunk their index names (read
//!   without authentication); the collector never deletes them. `forget --point` does, when told.
//! - A lease whose process died is seen as dead (expired, or its process gone) and ignored; its
//!   staged files, the index it may have committed and the lease itself are removed once older
//!   than the cutoff below.
//!
//! The sweep differs:
//! - **One file per chunk** (format 3 and older; after Proxmox Backup Server's scheme): every
//!   chunk a backup reuses it *touches* (sets its modification time to now) under the shared
//!   chunk lock; every chunk it writes is new, so fresh too. The cutoff is `min(start, oldest
//!   live lease) − grace`; one chunk directory at a time under the exclusive chunk lock, chunks
//!   unmarked *and* older than the cutoff go. A backup that committed before the collector
//!   listed manifests is marked; one running when leases were listed began after the cutoff, so
//!   all it touched or wrote is younger; a touch cannot slip between "is it old?" and "delete"
//!   because of the lock.
//! - **Packs** (format 4): a chunk inside a pack has no time of its own to refresh, so
//!   unreferenced chunks are *condemned* first and deleted once no backup that may not have seen
//!   the condemnation is running (see `sweep_packs`); packs left mostly dead are repacked.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::chunk::ChunkId;
use crate::error::Result;
use crate::locks;
use crate::pack::{self, IndexObject, PackId, Packs};
use crate::point::RestorePointId;
use crate::{Catalog, Repository};

/// The default margin for filesystem timestamp granularity.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How old the tombstone of a point that is still there must be before the collection takes it
/// for an interrupted forget.
const TOMBSTONE_SETTLES: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub points: usize,
    pub live_backups: usize,
    pub referenced_chunks: usize,
    pub deleted_chunks: u64,
    pub deleted_bytes: u64,
    /// Unreferenced but too young to delete (a running backup may be about to use them).
    pub spared_chunks: u64,
    pub removed_staged_files: u64,
    /// Indexes of backups that died before their manifest, and of interrupted forgets.
    pub removed_orphan_indexes: u64,
    /// Damaged chunks that verify had moved aside, deleted once stored again or unneeded.
    pub removed_damaged_copies: u64,
    /// Points whose manifest is damaged, kept with every chunk their index names.
    pub damaged_points_kept: Vec<String>,
    /// Indexes whose manifest was lost (not forgotten), kept with their chunks.
    pub orphan_indexes_kept: Vec<String>,
    /// Packs deleted whole (every chunk in them unreferenced, or left by dead backups).
    pub deleted_packs: u64,
    /// Packs rewritten without their unreferenced chunks.
    pub repacked_packs: u64,
    /// Referenced chunks not copied by a repack because their stored bytes were damaged: they
    /// read as missing until a backup with their data stores them again (`verify` names the
    /// points).
    pub damaged_left_behind: u64,
    /// Unreferenced chunks condemned and waiting: they go when every backup that began before
    /// they were condemned has ended (at the next collection).
    pub condemned_waiting: u64,
    /// Objects left in place because they are locked (an immutable repository's, still
    /// within their period): deleted by a collection after their date.
    pub locked_kept: u64,
    /// When the last of them may go (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// The backups they wait for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Objects someone deleted outside Bulwark in a bucket that keeps versions, brought back
    /// (see [`crate::storage::Storage::tidy_versions`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored_objects: Vec<String>,
    /// Overwritten versions of objects removed (a bucket that keeps versions).
    pub removed_old_versions: u64,
    /// Uploads in parts that dead writers began and never finished, aborted.
    pub aborted_uploads: u64,
}

impl GcReport {
    /// Counts an object kept because it is locked until `until`.
    fn locked(&mut self, until: Option<chrono::DateTime<chrono::Utc>>) {
        self.locked_kept += 1;
        if let Some(u) = until.map(|u| u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
            if self.locked_until.as_ref().is_none_or(|l| *l < u) {
                self.locked_until = Some(u);
            }
        }
    }
}

pub fn collect_garbage(repo: &Repository, grace: Duration) -> Result<GcReport> {
    let storage = repo.storage();
    let ioe = |what: &str, e| repo.io_err(what, e);
    // Held to the end: a point listed below must not be forgotten while the collection runs.
    let _maintenance = repo.maintenance("gc")?;
    let start = storage.now().map_err(|e| ioe("reading the storage clock", e))?;
    let writers = locks::writers(storage, true).map_err(|e| ioe("listing running backups", e))?;
    let oldest = writers.iter().map(|w| w.started).min().unwrap_or(start).min(start);
    let cutoff = oldest.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport { live_backups: writers.len(), ..Default::default() };
    // Before listing: an object someone hid behind a delete marker is back, so it is marked
    // (a manifest) or kept (a pack a point needs).
    let tidied = storage.tidy_versions().map_err(|e| ioe("tidying old versions of objects", e))?;
    report.restored_objects = tidied.restored;
    report.removed_old_versions = tidied.old_versions_removed;
    // Every live writer began after the cutoff, and so did its uploads.
    report.aborted_uploads =
        storage.abort_stale_uploads(cutoff).map_err(|e| ioe("aborting uploads left by dead backups", e))?;

    // Mark. A damaged or orphaned point keeps what its index names: deleting its chunks would
    // turn a repairable point into a lost one.
    let mut marked: HashSet<ChunkId> = HashSet::new();
    // The maintenance lock keeps every point listed here (and every parent a running backup
    // reuses chunks from) from being forgotten until marking is done; otherwise a point that
    // commits meanwhile could lose its parent, and with it the only marked reference to the
    // chunks it reused.
    let catalog = repo.catalog()?;
    report.points = catalog.points.len();
    mark(repo, &catalog, |_| true, &mut marked, &mut report)?;
    // A forget interrupted before it deleted the manifest took no effect: its tombstone goes
    // once old enough that no forget can still be at work on it (one that started before this
    // collection took the maintenance lock may be).
    let settled = start.checked_sub(TOMBSTONE_SETTLES).unwrap_or(SystemTime::UNIX_EPOCH);
    for m in catalog.points.iter().filter(|m| catalog.forgotten.contains(&m.id)) {
        let key = m.id.tombstone_key();
        if storage.stat(&key).map_err(|e| ioe("reading a tombstone", e))?.is_some_and(|t| t.modified < settled) {
            storage.delete(&key).map_err(|e| ioe("clearing a tombstone", e))?;
        }
    }
    report.referenced_chunks = marked.len();

    match repo.packs() {
        Some(packs) => sweep_packs(repo, packs, &catalog, &writers, &mut marked, cutoff, &mut report)?,
        None => sweep_loose(repo, &marked, cutoff, &mut report)?,
    }

    // Leftovers of dead backups and interrupted forgets in points/ and locks/: an index without a
    // manifest whose lease says its backup died, or whose tombstone says it was forgotten.
    let live: HashSet<&str> = writers.iter().map(|w| w.id.as_str()).collect();
    let dead = locks::writers(storage, false).map_err(|e| ioe("listing dead backups", e))?;
    let orphans: HashSet<String> = catalog.orphans.iter().map(|o| o.to_string()).collect();
    let committed: HashSet<&str> = catalog.points.iter().map(|m| m.id.as_str()).collect();
    let damaged: HashSet<&str> = catalog.damaged.iter().map(|d| d.id.as_str()).collect();
    for e in storage.list("points/").map_err(|e| ioe("listing points", e))? {
        let Some((id, ext)) = e.name.rsplit_once('.') else { continue };
        if !matches!(ext, "index" | "forgotten") || id.parse::<RestorePointId>().is_err() {
            continue;
        }
        let kept = committed.contains(id) || damaged.contains(id) || orphans.contains(id) || live.contains(id);
        if kept || e.modified >= cutoff {
            continue;
        }
        // Between listing manifests and now a backup may have committed this one.
        if storage.exists(&format!("points/{id}.manifest")).map_err(|e| ioe("checking a manifest", e))? {
            continue;
        }
        // A point whose manifest could not be locked leaves its index locked.
        if !delete_unless_locked(repo, &format!("points/{id}.index"), &mut report)
            .map_err(|e| ioe("deleting an orphaned index", e))?
        {
            continue;
        }
        if ext == "index" {
            report.removed_orphan_indexes += 1;
        }
        storage.delete(&format!("points/{id}.forgotten")).map_err(|e| ioe("deleting a tombstone", e))?;
    }
    for w in dead.iter().filter(|w| w.started < cutoff) {
        if !storage.exists(&format!("points/{}.index", w.id)).map_err(|e| ioe("checking an index", e))? {
            storage.delete(&format!("{}{}", locks::WRITERS, w.id)).map_err(|e| ioe("clearing a dead lease", e))?;
        }
    }
    for dir in ["points/", "locks/"] {
        for e in storage.list_stale_staged(dir).map_err(|e| ioe("listing staged files", e))? {
            if e.modified < cutoff {
                storage.delete(&format!("{dir}{}", e.name)).map_err(|e| ioe("deleting a staged file", e))?;
                report.removed_staged_files += 1;
            }
        }
    }
    Ok(report)
}

/// Marks what the points of `catalog` that pass `which` reference. A damaged or orphaned point
/// keeps what its index names: deleting its chunks would turn a repairable point into a lost one.
fn mark(
    repo: &Repository,
    catalog: &Catalog,
    which: impl Fn(&RestorePointId) -> bool,
    marked: &mut HashSet<ChunkId>,
    report: &mut GcReport,
) -> Result<()> {
    for m in catalog.points.iter().filter(|m| which(&m.id)) {
        let marked_all = repo.for_each_reference(m, |id| {
            marked.insert(id);
        });
        if let Err(e) = marked_all {
            // Its index or tree is damaged: keep what can still be read of it.
            report.damaged_points_kept.push(format!("{} ({e})", m.id));
            repo.salvage_references(&m.id, |id| {
                marked.insert(id);
            })?;
        }
    }
    for d in catalog.damaged.iter().filter(|d| which(&d.id)) {
        report.damaged_points_kept.push(d.id.to_string());
        repo.salvage_references(&d.id, |id| {
            marked.insert(id);
        })?;
    }
    for id in catalog.orphans.iter().filter(|id| which(id)) {
        report.orphan_indexes_kept.push(id.to_string());
        repo.salvage_references(id, |c| {
            marked.insert(c);
        })?;
    }
    Ok(())
}

/// The sweep of a repository with one file per chunk: under the exclusive chunk lock, every
/// unmarked chunk older than the cutoff goes.
fn sweep_loose(repo: &Repository, marked: &HashSet<ChunkId>, cutoff: SystemTime, report: &mut GcReport) -> Result<()> {
    let storage = repo.storage();
    let ioe = |what: &str, e| repo.io_err(what, e);
    for b in 0..=255u8 {
        let dir = format!("chunks/{b:02x}/");
        let _guard = storage.lock_chunks_exclusive().map_err(|e| ioe("taking the chunk lock", e))?;
        for e in storage.list(&dir).map_err(|e| ioe("listing chunks", e))? {
            if let Some(id) = e.name.strip_suffix(".damaged").and_then(ChunkId::from_hex) {
                // A damaged copy kept for inspection goes once a good one is stored again, or
                // no point needs it any more.
                let replaced = storage.exists(&id.key()).map_err(|e| ioe("checking a chunk", e))?;
                if (replaced || !marked.contains(&id)) && e.modified < cutoff {
                    storage.delete(&format!("{dir}{}", e.name)).map_err(|e| ioe("deleting a damaged chunk", e))?;
                    report.removed_damaged_copies += 1;
                }
                continue;
            }
            let Some(id) = ChunkId::from_hex(&e.name) else { continue };
            if marked.contains(&id) {
                continue;
            }
            if e.modified >= cutoff {
                report.spared_chunks += 1;
                continue;
            }
            storage.delete(&id.key()).map_err(|e| ioe(&format!("deleting chunk {id}"), e))?;
            report.deleted_chunks += 1;
            report.deleted_bytes += e.size;
        }
        for e in storage.list_stale_staged(&dir).map_err(|e| ioe("listing staged chunks", e))? {
            if e.modified < cutoff {
                storage.delete(&format!("{dir}{}", e.name)).map_err(|e| ioe("deleting a staged chunk", e))?;
                report.removed_staged_files += 1;
            }
        }
    }

    Ok(())
}

/// Deletes an object unless it is locked (an immutable repository's: the attribute or the
/// bucket's Object Lock refuses the deletion); `Ok(false)` then, and the next collection tries
/// again. The sweep asks for locks before it deletes; this catches a lock set meanwhile.
fn delete_unless_locked(repo: &Repository, key: &str, report: &mut GcReport) -> std::io::Result<bool> {
    let storage = repo.storage();
    match storage.delete(key) {
        Ok(()) => Ok(true),
        Err(e)
            if crate::storage::s3::ObjectLocked::find(&e).is_some()
                || (storage.is_local() && repo.is_immutable() && e.kind() == std::io::ErrorKind::PermissionDenied) =>
        {
            let until = repo.locks_of(&[key.to_string()]).ok().and_then(|l| l.into_values().next());
            report.locked(until);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A pack is rewritten when less than this share of it is still referenced.
const REPACK_BELOW: f64 = 0.5;
/// Object stores stamp times to the second: a backup counts as having seen a condemned list
/// only when its lease began this long after the list was written.
const CONDEMNED_MARGIN: Duration = Duration::from_secs(5);

/// The packs a collection writes for the live chunks of the packs it repacks.
struct Repack {
    open: Option<pack::OpenPack>,
    target: u64,
    done: Vec<pack::Finished>,
}

impl Repack {
    fn put(
        &mut self,
        storage: &dyn crate::storage::Storage,
        keys: &crate::crypto::Keys,
        chunk: &ChunkId,
        stored: &[u8],
    ) -> std::io::Result<()> {
        let open = match &mut self.open {
            Some(p) => p,
            None => self.open.insert(pack::OpenPack::create(storage)?),
        };
        open.append(chunk, stored)?;
        if open.len() >= self.target {
            self.close(keys)?;
        }
        Ok(())
    }

    fn close(&mut self, keys: &crate::crypto::Keys) -> std::io::Result<()> {
        if let Some(p) = self.open.take() {
            self.done.push(p.close(keys).map_err(|(_, e)| e)?);
        }
        Ok(())
    }

    /// Every pack written, committed.
    fn finish(mut self, keys: &crate::crypto::Keys) -> std::io::Result<Vec<pack::Finished>> {
        self.close(keys)?;
        Ok(self.done)
    }
}

/// The sweep of a repository with packs. A pack cannot be touched like a loose chunk, so what
/// running backups may still reuse is found another way: unreferenced chunks are first
/// *condemned* (listed in `gc/condemned`), and deleted only once no backup that began before the
/// list was written is still running. Backups read the list after writing their lease and never
/// reuse a condemned chunk (they store it again), so once those older backups are gone, a
/// condemned chunk is referenced only by points already committed, which are marked again
/// here. When no backup runs, condemning and deleting happen in one collection.
fn sweep_packs(
    repo: &Repository,
    packs: &Packs,
    catalog: &Catalog,
    writers: &[locks::LiveWriter],
    marked: &mut HashSet<ChunkId>,
    cutoff: SystemTime,
    report: &mut GcReport,
) -> Result<()> {
    let storage = repo.storage();
    let keys = packs.keys();
    let ioe = |what: &str, e| repo.io_err(what, e);
    packs.refresh().map_err(|e| ioe("reading the pack index", e))?;
    // What this collection may rewrite: the index objects loaded now and the packs they name.
    // Packs a backup of this process indexes from here on are named by objects of their own,
    // which stay as they are.
    let snap = packs.state().snapshot();
    let earlier = pack::read_condemned(storage, keys).map_err(|e| ioe("reading the condemned chunks", e))?;
    let copies: HashSet<(ChunkId, PackId)> =
        snap.by_pack.iter().flat_map(|(p, cs)| cs.iter().map(move |(c, _)| (*c, *p))).collect();

    // Backups that may not have seen the earlier list hold it back: those running when this
    // collection listed leases, before it marked. (One that ended after marking would have
    // committed a point the marks do not cover; one that began after the list saw it.) Only
    // the copies the list names go: a backup that saw the list stored the chunk again, and
    // its point will need that copy.
    let mut finalized: HashSet<(ChunkId, PackId)> = HashSet::new();
    let mut list = earlier.copies.clone();
    let blocked = match earlier.written {
        Some(written) => {
            let blockers: Vec<String> =
                writers.iter().filter(|w| w.started < written + CONDEMNED_MARGIN).map(|w| w.id.clone()).collect();
            if blockers.is_empty() {
                finalized.extend(earlier.copies.iter().filter(|cp| !marked.contains(&cp.0) && copies.contains(cp)));
            }
            report.waiting_for = blockers;
            !report.waiting_for.is_empty()
        }
        None => false,
    };
    if !blocked {
        // Condemn what nothing references now. The list keeps what is about to be deleted too,
        // so a backup beginning meanwhile reuses none of it.
        let fresh: HashSet<(ChunkId, PackId)> =
            copies.iter().filter(|cp| !marked.contains(&cp.0) && !finalized.contains(cp)).copied().collect();
        list = fresh.iter().chain(finalized.iter()).copied().collect();
        if !fresh.is_empty() {
            pack::write_condemned(storage, keys, &list).map_err(|e| ioe("writing the condemned chunks", e))?;
            // With no backup running now, every later one sees the list: the fresh copies can go
            // at once, less what points committed since marking reference.
            let running = locks::writers(storage, true).map_err(|e| ioe("listing running backups", e))?;
            if running.is_empty() {
                let since = repo.catalog()?;
                let known: HashSet<&RestorePointId> = catalog.points.iter().map(|m| &m.id).collect();
                mark(repo, &since, |id| !known.contains(id), marked, report)?;
                finalized.extend(fresh.iter().filter(|cp| !marked.contains(&cp.0)));
            } else {
                report.waiting_for = running.into_iter().map(|w| w.id).collect();
            }
        }
    }

    // Delete and repack. Dead are the finalized copies, and every copy of a chunk stored twice
    // (two backups racing, a condemned chunk stored again) but the one in the pack with the
    // most live chunks.
    let by_pack = &snap.by_pack;
    let is_live = |c: &ChunkId, p: &PackId| !finalized.contains(&(*c, *p));
    let live_count: HashMap<PackId, usize> =
        by_pack.iter().map(|(p, cs)| (*p, cs.iter().filter(|(c, _)| is_live(c, p)).count())).collect();
    // A damaged copy is never the one kept while a sound one exists: the packs of chunks
    // stored twice are checked (a damaged chunk stored again is the usual reason for a second
    // copy).
    let mut copies_of: HashMap<ChunkId, Vec<PackId>> = HashMap::new();
    for (p, cs) in by_pack {
        for (c, _) in cs.iter().filter(|(c, _)| is_live(c, p)) {
            copies_of.entry(*c).or_default().push(*p);
        }
    }
    let mut keeper: HashMap<ChunkId, PackId> = HashMap::with_capacity(copies_of.len());
    for (c, candidates) in copies_of {
        let best = if candidates.len() == 1 {
            candidates[0]
        } else {
            let sound = |p: &PackId| packs.check_pack(p).is_ok_and(|h| h.is_sound(&c));
            *candidates.iter().max_by_key(|p| (sound(p), live_count[*p], **p)).expect("a chunk listed has a copy")
        };
        keeper.insert(c, best);
    }
    // What each pack comes to: deleted (nothing live), repacked (mostly dead) or kept. A
    // locked pack is kept as it is: neither deleted nor rewritten before its date.
    enum Fate {
        Delete,
        Repack,
        Keep,
    }
    let mut fates = Vec::with_capacity(by_pack.len());
    for (pack, cs) in by_pack {
        let (live, dead): (Vec<_>, Vec<_>) = cs.iter().partition(|(c, _)| keeper.get(c) == Some(pack));
        let dead_bytes: u64 = dead.iter().map(|(_, l)| l.len as u64).sum();
        let live_bytes: u64 = live.iter().map(|(_, l)| l.len as u64).sum();
        let size = snap.sizes.get(pack).copied().unwrap_or(1).max(1);
        let fate = if live.is_empty() {
            Fate::Delete
        } else if dead_bytes > 0 && (live_bytes as f64) < REPACK_BELOW * size as f64 {
            Fate::Repack
        } else {
            Fate::Keep
        };
        fates.push((*pack, live, dead_bytes, size, fate));
    }
    let mut candidates: Vec<String> = fates.iter().filter(|f| !matches!(f.4, Fate::Keep)).map(|f| f.0.key()).collect();
    candidates.extend(snap.names.iter().map(|name| format!("{}{name}", pack::INDEX)));
    let locks = repo.locks_of(&candidates).map_err(|e| ioe("reading the locks of objects to delete", e))?;

    let mut doomed = Vec::new();
    let mut rewritten = IndexObject::default();
    // The live chunks of repacked packs go into packs of this collection's own, indexed with
    // the rewritten index before anything old is deleted (not into a backup's open pack,
    // whose index object could come after the deletions).
    let mut repack = Repack { open: None, target: packs.target(), done: Vec::new() };
    let mut any_dead = false;
    for (pack, live, dead_bytes, size, mut fate) in fates {
        any_dead |= dead_bytes > 0;
        if let Some(until) = locks.get(&pack.key()) {
            match fate {
                // Left out of the index: a collection after its date deletes it as unindexed.
                Fate::Delete => {
                    report.locked(Some(*until));
                    continue;
                }
                Fate::Repack => {
                    report.locked(Some(*until));
                    fate = Fate::Keep;
                }
                Fate::Keep => {}
            }
        }
        if let Fate::Delete = fate {
            report.deleted_bytes += dead_bytes;
            doomed.push(pack);
            report.deleted_packs += 1;
            continue;
        }
        if let Fate::Repack = fate {
            // Copied only as far as the pack's header vouches for each chunk: a repack must
            // not turn damage into a copy that looks sound. A damaged chunk is left behind (it
            // reads as missing, and the next backup with its data stores it again); a pack
            // whose header cannot be read is kept as it is.
            let bytes = storage.read(&pack.key()).map_err(|e| ioe(&format!("reading pack {pack} to repack it"), e))?;
            if let Ok(entries) = pack::parse_pack(keys, &pack, &bytes) {
                let sums: HashMap<(ChunkId, u64), [u8; 32]> =
                    entries.iter().map(|e| ((e.chunk, e.offset), e.sum)).collect();
                for (c, l) in &live {
                    let stored = bytes.get(l.offset as usize..(l.offset + l.len as u64) as usize);
                    match (stored, sums.get(&(*c, l.offset))) {
                        (Some(stored), Some(sum)) if blake3::hash(stored).as_bytes() == sum => {
                            repack.put(storage, keys, c, stored).map_err(|e| ioe("writing a repacked pack", e))?
                        }
                        _ => report.damaged_left_behind += 1,
                    }
                }
                report.deleted_bytes += dead_bytes;
                doomed.push(pack);
                report.repacked_packs += 1;
                continue;
            }
        }
        rewritten.packs.push((pack, size, live.iter().map(|(c, l)| (*c, l.offset, l.len)).collect()));
    }
    report.deleted_chunks = finalized.len() as u64;
    if any_dead {
        for f in repack.finish(keys).map_err(|e| ioe("writing a repacked pack", e))? {
            rewritten.packs.push((f.id, f.size, f.entries));
        }
        // New index first, then the old one goes, then the packs: a reader finds every live
        // chunk at every instant (twice, for a moment).
        for obj in rewritten.split(pack::entries_per_index()) {
            packs.put_index(&obj).map_err(|e| ioe("writing the pack index", e))?;
        }
        storage.sync().map_err(|e| ioe("syncing", e))?;
        for name in &snap.names {
            let key = format!("{}{name}", pack::INDEX);
            match locks.get(&key) {
                Some(until) => report.locked(Some(*until)),
                None => {
                    delete_unless_locked(repo, &key, report).map_err(|e| ioe("deleting an old index object", e))?;
                }
            }
        }
        for p in &doomed {
            delete_unless_locked(repo, &p.key(), report).map_err(|e| ioe(&format!("deleting pack {p}"), e))?;
        }
        packs.refresh().map_err(|e| ioe("reading the pack index", e))?;
    }
    report.condemned_waiting = list.iter().filter(|cp| !finalized.contains(cp) && copies.contains(cp)).count() as u64;
    if report.condemned_waiting == 0 && (earlier.written.is_some() || !list.is_empty()) {
        storage.delete(pack::CONDEMNED).map_err(|e| ioe("clearing the condemned chunks", e))?;
    }

    // Packs no index names, older than every running backup: left by backups that died.
    let indexed_packs: HashSet<PackId> = packs.state().pack_ids().collect();
    let unindexed: Vec<(PackId, u64)> = storage
        .list(pack::DATA)
        .map_err(|e| ioe("listing packs", e))?
        .into_iter()
        .filter_map(|e| {
            PackId::from_listing(&e.name)
                .filter(|p| !indexed_packs.contains(p) && e.modified < cutoff)
                .map(|p| (p, e.size))
        })
        .collect();
    let keys_of: Vec<String> = unindexed.iter().map(|(p, _)| p.key()).collect();
    let locks = repo.locks_of(&keys_of).map_err(|e| ioe("reading the locks of objects to delete", e))?;
    for (p, size) in unindexed {
        if let Some(until) = locks.get(&p.key()) {
            report.locked(Some(*until));
            continue;
        }
        if delete_unless_locked(repo, &p.key(), report).map_err(|e| ioe(&format!("deleting pack {p}"), e))? {
            report.deleted_packs += 1;
            report.deleted_bytes += size;
        }
    }
    for e in storage.list_stale_staged(pack::DATA).map_err(|e| ioe("listing staged packs", e))? {
        if e.modified < cutoff {
            storage.delete(&format!("{}{}", pack::DATA, e.name)).map_err(|e| ioe("deleting a staged pack", e))?;
            report.removed_staged_files += 1;
        }
    }
    Ok(())
}
