//! Volume backup.
//!
//! 1. Snapshot the source (retried per policy) and remove snapshots dead backups left.
//! 2. Decide what to read: with change tracking (reflinked image files, LVM thin volumes), only
//!    blocks whose extents or pool mappings moved since the last backup; otherwise everything,
//!    compared by digest with the previous point's index.
//! 3. Filter: zero the ranges a restore does not need (unused, swap, excluded).
//! 4. A reader thread reads in large sequential reads into a fixed pool of buffers; one worker
//!    per core hashes, recognises zero blocks and blocks the repository already has, and
//!    compresses and stores the rest; this thread writes the index in order and commits.
//!
//! Memory is bounded by the buffer pool, whatever the volume's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bulwark_repo::index::BlockIndexReader;
use bulwark_repo::{BlockRef, BlockSize, ChunkCodec, ChunkId, Compression, PointSpec, PointStats};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use crate::change_tracking::{CbtMode, ChangedBlocks, Tracker, TrackingState};
use crate::error::{AgentError, Result};
use crate::filter::{filters_for, BlockFilter, FilterOptions, FilterStats};
use crate::snapshot::{
    create_with_retries, provider_for, Consistency, CowSize, Freeze, RetryPolicy, SnapshotMode, SnapshotProvider, Taken,
};
use crate::source::open_source;
use crate::target::{Answer, BackupTarget};
use crate::Progress;

/// Bytes read from the source per read call (and per unit of work): large sequential reads.
const BATCH_BYTES: usize = 8 << 20;
/// Blocks per unit of work when they are known unchanged (nothing to read).
const KNOWN_BATCH_BLOCKS: u64 = 1024;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub name: String,
    pub block_size: BlockSize,
    pub compression: Compression,
    pub threads: usize,
    pub snapshot: SnapshotMode,
    pub retry: RetryPolicy,
    /// Copy-on-write space of a classic LVM snapshot.
    pub lvm_cow: CowSize,
    /// The operator's pre-freeze and post-thaw scripts around each snapshot try, and the
    /// longest the freeze may last.
    pub freeze: Freeze,
    pub cbt: CbtMode,
    pub filters: FilterOptions,
    /// Where change tracking keeps what it needs between backups of block devices (LVM thin
    /// volumes); image files keep theirs beside the image.
    pub state_dir: PathBuf,
}

/// The agent's state folder when none is named.
pub const STATE_DIR: &str = "/var/lib/bulwark";

impl BackupOptions {
    pub fn new(name: impl Into<String>) -> Self {
        BackupOptions {
            name: name.into(),
            block_size: BlockSize::DEFAULT,
            compression: Compression::default(),
            threads: crate::default_threads(),
            snapshot: SnapshotMode::Auto,
            retry: RetryPolicy::default(),
            lvm_cow: CowSize::default(),
            freeze: Freeze::default(),
            cbt: CbtMode::Auto,
            filters: FilterOptions::all(),
            state_dir: PathBuf::from(STATE_DIR),
        }
    }
}

/// What a backup did; `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub point: String,
    pub name: String,
    pub source: String,
    pub parent: Option<String>,
    pub block_size: u32,
    pub compression: Compression,
    pub snapshot: &'static str,
    pub consistency: Consistency,
    /// Seconds from the freeze to the thaw (the pre-freeze script's start to the post-thaw
    /// script's end; the snapshot's creation alone without scripts).
    pub freeze_seconds: f64,
    /// What kept the point from being what the job asked for, the task ending with a warning:
    /// an application not prepared under the policy `ignore`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Whether changed block tracking chose what to read (else every block was read).
    pub change_tracking: bool,
    #[serde(flatten)]
    pub stats: PointStats,
    #[serde(flatten)]
    pub filtered: FilterStats,
    /// Things the operator should know: snapshot retries, fallbacks and why.
    pub notes: Vec<String>,
}

struct Batch {
    seq: u64,
    first_block: u64,
    /// The blocks' bytes, or empty when they are known unchanged and were not read.
    data: Vec<u8>,
    known: bool,
    /// The previous point's entry for each block, where there is one.
    previous: Vec<Option<BlockRef>>,
    /// Byte ranges (volume offsets) a restore does not need.
    drop: Vec<Range<u64>>,
}

#[derive(Default)]
struct BatchResult {
    seq: u64,
    refs: Vec<BlockRef>,
    covered: u64,
    read: u64,
    zero: u64,
    unchanged: u64,
    new: u64,
    stored: u64,
    /// Blocks taken as unchanged before the repository confirmed it still has their chunks.
    check: Option<Check>,
    /// Chunks to send once the repository says which it lacks.
    uploads: Option<Uploads>,
}

/// A query about unchanged blocks' chunks still on its way; the collector reads the answer and
/// stores again any chunk the repository lost.
struct Check {
    answer: Answer,
    /// (position in `refs`, block number) of each block asked about, in query order.
    blocks: Vec<(usize, u64)>,
    drop: Vec<Range<u64>>,
}

/// Backs up `source` (a block device or an image file) into `repo` as a new restore point.
pub fn backup_volume(
    repo: &dyn BackupTarget,
    source: &Path,
    opts: &BackupOptions,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<BackupReport> {
    // Fail on a bad source before touching snapshots.
    open_source(source)?;
    backup_volume_with(repo, source, opts, &*provider_for(opts.snapshot, source, opts.lvm_cow), progress, cancel)
}

/// [`backup_volume`] with a given snapshot provider.
pub fn backup_volume_with(
    repo: &dyn BackupTarget,
    source: &Path,
    opts: &BackupOptions,
    provider: &dyn SnapshotProvider,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<BackupReport> {
    let started = Instant::now();
    let mut notes = Vec::new();
    for stale in provider.remove_stale(source) {
        notes.push(format!("removed stale snapshot {stale} left by an interrupted backup"));
    }
    // A snapshot that became invalid while it was read (an overflowed classic LVM snapshot)
    // costs its attempt, not the task: a new snapshot is taken and read, as many times as
    // snapshot creation itself is tried.
    let tries = opts.retry.tries.max(1);
    let mut wait = opts.retry.backoff;
    for attempt in 1.. {
        match backup_attempt(repo, source, opts, provider, progress, cancel, started, &mut notes) {
            Err(AgentError::SnapshotInvalid { reason, .. }) if attempt < tries => {
                notes.push(format!(
                    "attempt {attempt} of {tries} failed: {reason}; the snapshot was removed and a new one is read"
                ));
                std::thread::sleep(wait);
                wait *= 2;
            }
            r => return r,
        }
    }
    unreachable!("the attempts end with a result")
}

/// One snapshot, read whole; a point committed unless something failed.
#[allow(clippy::too_many_arguments)]
fn backup_attempt(
    repo: &dyn BackupTarget,
    source: &Path,
    opts: &BackupOptions,
    provider: &dyn SnapshotProvider,
    progress: Progress,
    cancel: &AtomicBool,
    started: Instant,
    notes: &mut Vec<String>,
) -> Result<BackupReport> {
    let Taken { snapshot, frozen, applications, warnings, .. } =
        create_with_retries(provider, source, opts.retry, &opts.freeze, &mut |m| notes.push(m))
            .map_err(|reason| AgentError::Snapshot { source_path: source.into(), reason })?;
    notes.extend(snapshot.notes.iter().cloned());
    let volume = open_source(&snapshot.path)?;
    let (size, bs) = (volume.size, opts.block_size);

    let parent = repo.latest(&opts.name)?;
    let mut previous: Option<BlockIndexReader> = None;
    if let Some(p) = &parent {
        if p.block_size != bs {
            notes.push(format!(
                "previous point {} used block size {}, this backup {}: every block compared with the repository",
                p.id, p.block_size, bs
            ));
        } else {
            match repo.open_index(p) {
                Ok(ix) => previous = Some(ix),
                Err(e) => {
                    notes.push(format!("previous point unusable ({e}): every block compared with the repository"))
                }
            }
        }
    }

    let mut file_ranges = Vec::new();
    let mut filters = filters_for(&snapshot.path, snapshot.consistency, &opts.filters, notes, &mut file_ranges);

    // Change tracking, trusted only when it provably describes the change since `parent`.
    let tracking = Tracker::for_snapshot(&snapshot, source, &opts.name, &opts.state_dir);
    if opts.cbt == CbtMode::None {
        // Nothing kept for a tracking nobody uses (a thin snapshot holds pool space).
        if let Some(t) = &tracking {
            t.clear();
        }
    }
    let tracking = tracking.filter(|_| opts.cbt != CbtMode::None);
    if opts.cbt == CbtMode::Extents && tracking.is_none() {
        notes.push(
            "change tracking needs a reflink snapshot of an image file or a thin LVM snapshot: every block read".into(),
        );
    }
    let changed = match (&tracking, &parent, &previous) {
        (Some(t), Some(p), Some(_)) => match t.load() {
            Ok(st) if st.point != p.id.as_str() => {
                Err(format!("the newest point of {:?} is {}, not the one tracked ({})", opts.name, p.id, st.point))
            }
            Ok(st) if st.volume_size != size || st.block_size != bs.bytes() => {
                Err("the volume's size or the block size changed".to_string())
            }
            Ok(st) if st.filters != opts.filters.describe() => Err("the filter settings changed".to_string()),
            Ok(st) => t.changed(&volume.file, size, bs.bytes() as u64).map(|mut c| {
                // Blocks of excluded or swap files, then or now, are read again: a file can
                // move in or out of an exclusion without its blocks moving.
                let now = file_ranges.iter().map(|r| (r.start, r.end));
                for (a, b) in st.file_ranges.iter().copied().chain(now) {
                    c.mark_bytes(a, b, bs.bytes() as u64);
                }
                c
            }),
            Err(e) => Err(e),
        },
        (Some(_), _, _) => Err("no usable previous point".into()),
        _ => Err(String::new()),
    };
    let changed: Option<ChangedBlocks> = match changed {
        Ok(c) => {
            let source = tracking.as_ref().map_or("", |t| t.source());
            notes.push(format!(
                "change tracking ({source}): {} of {} blocks may have changed",
                c.count(),
                bs.blocks_for(size)
            ));
            Some(c)
        }
        Err(reason) => {
            if !reason.is_empty() {
                notes.push(format!("change tracking not used: {reason}; every block read and compared"));
            }
            None
        }
    };

    let spec = PointSpec {
        kind: bulwark_repo::PointKind::Volume,
        name: opts.name.clone(),
        source: source.display().to_string(),
        volume_size: size,
        block_size: bs,
        compression: opts.compression,
        parent: previous.as_ref().and(parent.as_ref()).map(|p| p.id.clone()),
        snapshot: snapshot.provider.to_string(),
        consistency: snapshot.consistency.as_str().to_string(),
        key_scope: None,
    };
    let mut writer = repo.begin_point(spec)?;

    let threads = opts.threads.max(1);
    let bsz = bs.bytes() as u64;
    let batch_blocks = (BATCH_BYTES as u64 / bsz).max(1);
    let pool_size = threads * 2 + 2;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(pool_size);
    for _ in 0..pool_size {
        pool_tx.send(Vec::with_capacity((batch_blocks * bsz) as usize)).expect("pool has room");
    }
    let (work_tx, work_rx) = bounded::<Batch>(threads);
    // A batch holds a slot from the read until the collector has settled it: results carrying
    // compressed chunks (waiting for a remote answer) cannot pile up beyond this.
    let (slot_tx, slot_rx) = bounded::<()>(pool_size * 2);
    let (done_tx, done_rx) = bounded::<Result<BatchResult>>(pool_size);
    let stop = AtomicBool::new(false);
    let blocks = bs.blocks_for(size);
    let mut filtered = FilterStats::default();
    let vol_file = &volume.file;

    let mut stats = PointStats { source_bytes: size, applications, ..Default::default() };
    let (mut repair_codec, mut repair_buf) = (repo.codec(opts.compression), Vec::new());
    let outcome: Result<()> = std::thread::scope(|s| {
        // Reader: the only thread that reads the previous index and asks the filters.
        let reader = s.spawn(|| -> Result<()> {
            let work_tx = work_tx; // owned: the workers see the end of the work when it returns
            let filters: &mut Vec<Box<dyn BlockFilter>> = &mut filters;
            let mut block = 0u64;
            let mut seq = 0u64;
            while block < blocks {
                if cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                    return Err(AgentError::Cancelled);
                }
                let known_at = |b: u64| previous.is_some() && changed.as_ref().is_some_and(|c| !c.is_changed(b));
                let known = known_at(block);
                let limit = if known { KNOWN_BATCH_BLOCKS } else { batch_blocks };
                let mut end = block + 1;
                while end < blocks && end - block < limit && known_at(end) == known {
                    end += 1;
                }
                let (from, to) = (block * bsz, (end * bsz).min(size));
                let mut prev = Vec::with_capacity((end - block) as usize);
                for _ in block..end {
                    prev.push(match previous.as_mut() {
                        Some(ix) => ix.next_block().map_err(|e| repo_io(repo, "reading the previous index", e))?,
                        None => None,
                    });
                }
                let mut drop = Vec::new();
                for f in filters.iter_mut() {
                    let ranges = f.droppable(from, to).map_err(|e| AgentError::Source {
                        path: source.into(),
                        what: format!("{} filter failed at offset {from}", f.name()),
                        source: e,
                    })?;
                    filtered.add(f.name(), ranges.iter().map(|r| r.end - r.start).sum());
                    drop.extend(ranges);
                }
                if slot_tx.send(()).is_err() {
                    return Ok(());
                }
                let data = if known {
                    Vec::new()
                } else {
                    let Ok(mut data) = pool_rx.recv() else { return Ok(()) };
                    // Buffers come back at their last length: resizing to the same length costs
                    // nothing, where clearing would zero-fill 8 MiB per read.
                    data.resize((to - from) as usize, 0);
                    vol_file.read_exact_at(&mut data, from).map_err(|e| AgentError::Source {
                        path: source.into(),
                        what: format!("read failed at offset {from}"),
                        source: e,
                    })?;
                    data
                };
                if work_tx.send(Batch { seq, first_block: block, data, known, previous: prev, drop }).is_err() {
                    return Ok(());
                }
                block = end;
                seq += 1;
            }
            Ok(())
        });
        for _ in 0..threads {
            let (work_rx, done_tx, pool_tx) = (work_rx.clone(), done_tx.clone(), pool_tx.clone());
            s.spawn(move || worker(repo, opts, vol_file, size, work_rx, done_tx, pool_tx));
        }
        drop((done_tx, work_rx, pool_tx));

        // Collector (this thread): results in order into the index.
        let mut repair =
            BlockRun { target: repo, codec: &mut repair_codec, bs: bsz, size, drop: &[], encoded: &mut repair_buf };
        let mut pending: BTreeMap<u64, BatchResult> = BTreeMap::new();
        let mut next = 0u64;
        let collected: Result<()> = (|| {
            for r in done_rx.iter() {
                let r = r?;
                pending.insert(r.seq, r);
                while let Some(mut r) = pending.remove(&next) {
                    if let Some(check) = r.check.take() {
                        repair.confirm(check, vol_file, &mut r)?;
                    }
                    if let Some(u) = r.uploads.take() {
                        u.settle(repo, &mut r)?;
                    }
                    for b in &r.refs {
                        writer.push_block(b)?;
                    }
                    stats.read_bytes += r.read;
                    stats.zero_bytes += r.zero;
                    stats.unchanged_bytes += r.unchanged;
                    stats.new_bytes += r.new;
                    stats.stored_bytes += r.stored;
                    progress(r.covered);
                    next += 1;
                    let _ = slot_rx.try_recv();
                }
            }
            Ok(())
        })();
        if collected.is_err() {
            stop.store(true, Ordering::Relaxed);
            drop(done_rx);
        }
        // No more results are settled: a reader waiting for a slot must see the end, not wait.
        drop(slot_rx);
        let read = reader.join().expect("reader does not panic");
        collected.and(read)
    });
    // What was read is the snapshot's instant only if the snapshot still is valid now (a read
    // that failed may have failed because it was not).
    if let Err(reason) = snapshot.check() {
        return Err(AgentError::SnapshotInvalid { source_path: source.into(), reason });
    }
    outcome?;
    if cancel.load(Ordering::Relaxed) {
        return Err(AgentError::Cancelled);
    }
    stats.duration_s = started.elapsed().as_secs_f64();
    let manifest = writer.commit(stats)?;

    // The snapshot becomes the base of the next backup's change tracking, or goes: closed
    // first (LVM refuses to remove an open snapshot).
    drop((filters, volume));
    let consistency = snapshot.consistency;
    let provider_name = snapshot.provider;
    match tracking {
        Some(t) => {
            let state = TrackingState {
                point: manifest.id.to_string(),
                volume_size: size,
                block_size: bs.bytes(),
                filters: opts.filters.describe(),
                file_ranges: file_ranges.iter().map(|r| (r.start, r.end)).collect(),
            };
            if let Err(e) = t.advance(snapshot, &state) {
                t.clear();
                notes.push(format!("change tracking state not saved ({e}): the next backup reads every block"));
            }
        }
        None => {
            if let Err(e) = snapshot.release() {
                notes.push(format!("snapshot not released: {e}"));
            }
        }
    }
    Ok(BackupReport {
        point: manifest.id.to_string(),
        name: manifest.name,
        source: manifest.source,
        parent: manifest.parent.map(|p| p.to_string()),
        block_size: bs.bytes(),
        compression: opts.compression,
        snapshot: provider_name,
        consistency,
        freeze_seconds: frozen.as_secs_f64(),
        warnings,
        change_tracking: changed.is_some(),
        stats: PointStats { duration_s: started.elapsed().as_secs_f64(), ..manifest.stats },
        filtered,
        notes: std::mem::take(notes),
    })
}

fn repo_io(repo: &dyn BackupTarget, what: &str, e: std::io::Error) -> AgentError {
    AgentError::Repo(bulwark_repo::RepoError::Io { repo: repo.label(), what: what.into(), source: e })
}

fn worker(
    target: &dyn BackupTarget,
    opts: &BackupOptions,
    source: &File,
    size: u64,
    work: Receiver<Batch>,
    done: Sender<Result<BatchResult>>,
    pool: Sender<Vec<u8>>,
) {
    let mut codec = target.codec(opts.compression);
    let bs = opts.block_size.bytes() as u64;
    let (mut scratch, mut encoded) = (Vec::new(), Vec::new());
    for mut batch in work.iter() {
        let mut r = BatchResult { seq: batch.seq, ..Default::default() };
        let mut blocks = BlockRun { target, codec: &mut codec, bs, size, drop: &batch.drop, encoded: &mut encoded };
        let outcome = if batch.known {
            blocks.known(source, batch.first_block, &batch.previous, &mut scratch, &mut r)
        } else {
            blocks.store(&mut batch.data, batch.first_block, &batch.previous, &mut r)
        };
        if !batch.known {
            let _ = pool.send(std::mem::take(&mut batch.data));
        }
        if done.send(outcome.map(|()| r)).is_err() {
            return;
        }
    }
}

/// One worker's view of the blocks of a batch.
struct BlockRun<'a> {
    target: &'a dyn BackupTarget,
    codec: &'a mut ChunkCodec,
    bs: u64,
    size: u64,
    /// Byte ranges (volume offsets) a restore does not need.
    drop: &'a [Range<u64>],
    encoded: &'a mut Vec<u8>,
}

impl BlockRun<'_> {
    fn len(&self, block: u64) -> u64 {
        self.bs.min(self.size - block * self.bs)
    }

    /// Blocks change tracking says are unchanged: their previous chunks are asked about in one
    /// query (which also keeps them); a block whose chunk the repository lost is read again.
    fn known(
        &mut self,
        source: &File,
        first: u64,
        previous: &[Option<BlockRef>],
        scratch: &mut Vec<u8>,
        r: &mut BatchResult,
    ) -> Result<()> {
        let ids: Vec<ChunkId> =
            previous.iter().filter_map(|p| if let Some(BlockRef::Chunk(id)) = p { Some(*id) } else { None }).collect();
        let answer = self.target.query_chunks(&ids)?;
        if !answer.is_ready() && previous.iter().all(Option::is_some) {
            // Across the network: take the blocks as unchanged now and let the collector check
            // the answer, so this worker moves on instead of waiting for a round trip.
            let mut blocks = Vec::with_capacity(ids.len());
            for (i, prev) in previous.iter().enumerate() {
                let block = first + i as u64;
                let len = self.len(block);
                r.covered += len;
                match prev {
                    Some(BlockRef::Chunk(id)) => {
                        blocks.push((r.refs.len(), block));
                        r.unchanged += len;
                        r.refs.push(BlockRef::Chunk(*id));
                    }
                    _ => {
                        r.zero += len;
                        r.refs.push(BlockRef::Zero);
                    }
                }
            }
            r.check = Some(Check { answer, blocks, drop: self.drop.to_vec() });
            return Ok(());
        }
        let mut have = answer.wait()?.into_iter();
        for (i, prev) in previous.iter().enumerate() {
            let block = first + i as u64;
            let len = self.len(block);
            match prev {
                Some(BlockRef::Zero) => {
                    r.covered += len;
                    r.zero += len;
                    r.refs.push(BlockRef::Zero);
                    continue;
                }
                Some(BlockRef::Chunk(id)) if have.next() == Some(true) => {
                    r.covered += len;
                    r.unchanged += len;
                    r.refs.push(BlockRef::Chunk(*id));
                    continue;
                }
                _ => {}
            }
            let from = block * self.bs;
            scratch.resize(len as usize, 0);
            source.read_exact_at(scratch, from).map_err(|e| AgentError::Source {
                path: "snapshot".into(),
                what: format!("read failed at offset {from}"),
                source: e,
            })?;
            self.store(scratch, block, std::slice::from_ref(prev), r)?;
            if let Some(u) = r.uploads.take() {
                u.settle(self.target, r)?;
            }
        }
        Ok(())
    }

    /// Reads the answer of a deferred [`Check`]: any chunk the repository lost is read again
    /// from the snapshot and stored, and the block's entry follows what was read.
    fn confirm(&mut self, check: Check, source: &File, r: &mut BatchResult) -> Result<()> {
        let have = check.answer.wait()?;
        for (&(at, block), present) in check.blocks.iter().zip(have) {
            if present {
                continue;
            }
            let len = self.len(block);
            let from = block * self.bs;
            let mut data = vec![0u8; len as usize];
            source.read_exact_at(&mut data, from).map_err(|e| AgentError::Source {
                path: "snapshot".into(),
                what: format!("read failed at offset {from}"),
                source: e,
            })?;
            let mut one = BatchResult::default();
            let mut run = BlockRun { drop: &check.drop, ..self.reborrow() };
            run.store(&mut data, block, &[None], &mut one)?;
            if let Some(u) = one.uploads.take() {
                u.settle(self.target, &mut one)?;
            }
            r.unchanged -= len;
            r.read += one.read;
            r.zero += one.zero;
            r.new += one.new;
            r.stored += one.stored;
            r.refs[at] = one.refs[0];
        }
        Ok(())
    }

    fn reborrow(&mut self) -> BlockRun<'_> {
        BlockRun {
            target: self.target,
            codec: self.codec,
            bs: self.bs,
            size: self.size,
            drop: self.drop,
            encoded: self.encoded,
        }
    }

    /// Blocks read from the snapshot (`data` holds them from block `first` on): zero blocks
    /// recognised, the rest hashed and asked about in one query, and those the repository
    /// lacks compressed and stored.
    fn store(&mut self, data: &mut [u8], first: u64, previous: &[Option<BlockRef>], r: &mut BatchResult) -> Result<()> {
        let mut refs = vec![BlockRef::Zero; previous.len()];
        let mut ids: Vec<(usize, ChunkId)> = Vec::with_capacity(previous.len());
        for (i, slot) in refs.iter_mut().enumerate() {
            let block = first + i as u64;
            let (at, len) = ((i as u64 * self.bs) as usize, self.len(block));
            let bytes = &mut data[at..at + len as usize];
            r.covered += len;
            r.read += len;
            zero_ranges(bytes, block * self.bs, self.drop);
            if is_zero(bytes) {
                r.zero += len;
                continue;
            }
            let id = self.codec.digest(bytes);
            *slot = BlockRef::Chunk(id);
            ids.push((i, id));
        }
        let query: Vec<ChunkId> = ids.iter().map(|(_, id)| *id).collect();
        let answer = self.target.query_chunks(&query)?;
        r.refs.extend(refs);
        let (bs, size) = (self.bs, self.size);
        let candidate = |i: usize, id: ChunkId, encoded: Vec<u8>| Upload {
            id,
            len: bs.min(size - (first + i as u64) * bs),
            same_as_previous: previous[i] == Some(BlockRef::Chunk(id)),
            encoded,
        };
        if !answer.is_ready() {
            // The query is crossing the network: compress every candidate now (blocks that were
            // read are mostly new) and leave the answer to the collector; this worker moves on.
            let mut items = Vec::with_capacity(ids.len());
            for &(i, id) in &ids {
                let at = (i as u64 * self.bs) as usize;
                let len = self.len(first + i as u64) as usize;
                let mut encoded = Vec::new();
                self.codec.encode_into(&id, &data[at..at + len], &mut encoded);
                items.push(candidate(i, id, encoded));
            }
            r.uploads = Some(Uploads { answer, items });
            return Ok(());
        }
        // Here the answer is at hand: compress only what the repository lacks.
        let have = answer.wait()?;
        let mut stored: Vec<ChunkId> = Vec::new();
        for (&(i, id), present) in ids.iter().zip(have) {
            let item = candidate(i, id, Vec::new());
            if present {
                // Reusing a chunk keeps it from a concurrent garbage collection until commit.
                r.unchanged += if item.same_as_previous { item.len } else { 0 };
                continue;
            }
            // The same content twice in one batch is stored once.
            if stored.contains(&id) {
                continue;
            }
            let at = (i as u64 * self.bs) as usize;
            self.codec.encode_into(&id, &data[at..at + item.len as usize], self.encoded);
            self.target.put_chunk(&id, self.encoded)?;
            stored.push(id);
            r.new += item.len;
            r.stored += self.encoded.len() as u64;
        }
        Ok(())
    }
}

/// Compressed chunks of a batch waiting for the repository's answer to "which do you have".
struct Uploads {
    answer: Answer,
    items: Vec<Upload>,
}

struct Upload {
    id: ChunkId,
    len: u64,
    same_as_previous: bool,
    encoded: Vec<u8>,
}

impl Uploads {
    /// Reads the answer and sends what the repository lacks (the same content once).
    fn settle(self, target: &dyn BackupTarget, r: &mut BatchResult) -> Result<()> {
        let have = self.answer.wait()?;
        let mut stored: Vec<ChunkId> = Vec::new();
        for (item, present) in self.items.into_iter().zip(have) {
            if present {
                r.unchanged += if item.same_as_previous { item.len } else { 0 };
            } else if !stored.contains(&item.id) {
                target.put_chunk(&item.id, &item.encoded)?;
                stored.push(item.id);
                r.new += item.len;
                r.stored += item.encoded.len() as u64;
            }
        }
        Ok(())
    }
}

/// Zeroes the parts of `data` (which starts at volume offset `at`) that fall in `ranges`.
fn zero_ranges(data: &mut [u8], at: u64, ranges: &[Range<u64>]) {
    let end = at + data.len() as u64;
    for r in ranges {
        let (s, e) = (r.start.max(at), r.end.min(end));
        if s < e {
            data[(s - at) as usize..(e - at) as usize].fill(0);
        }
    }
}

/// Zero test at memory speed: the compiler vectorises the 16-byte compare.
pub(crate) fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(16);
    chunks.all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}
