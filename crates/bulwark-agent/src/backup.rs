//! Volume backup: read the source front to back in large reads, hash every block on every core,
//! skip zero blocks, skip blocks unchanged since the previous point of the same name (compared
//! with that point's index: no change tracking needed), compress and store only blocks the
//! repository lacks, then commit the point.
//!
//! Memory is bounded by a fixed pool of read buffers, whatever the volume's size.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bulwark_repo::index::BlockIndexReader;
use bulwark_repo::{BlockRef, BlockSize, Compression, PointSpec, PointStats, Repository};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use crate::error::{AgentError, Result};
use crate::source::open_source;
use crate::Progress;

/// Bytes read from the source per read call (and per unit of work): large sequential reads.
const BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub name: String,
    pub block_size: BlockSize,
    pub compression: Compression,
    pub threads: usize,
}

impl BackupOptions {
    pub fn new(name: impl Into<String>) -> Self {
        BackupOptions {
            name: name.into(),
            block_size: BlockSize::DEFAULT,
            compression: Compression::default(),
            threads: crate::default_threads(),
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
    #[serde(flatten)]
    pub stats: PointStats,
    /// Things the operator should know (for example why the previous point was not used).
    pub notes: Vec<String>,
}

struct Batch {
    seq: u64,
    data: Vec<u8>,
    /// The previous point's entry for each block, where there is one.
    previous: Vec<Option<BlockRef>>,
}

#[derive(Default)]
struct BatchResult {
    seq: u64,
    refs: Vec<BlockRef>,
    zero: u64,
    unchanged: u64,
    new: u64,
    stored: u64,
    len: u64,
}

/// Backs up `source` (a block device or an image file) into `repo` as a new restore point.
pub fn backup_volume(
    repo: &Repository,
    source: &Path,
    opts: &BackupOptions,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<BackupReport> {
    let started = Instant::now();
    let mut volume = open_source(source)?;
    let bs = opts.block_size;
    let mut notes = Vec::new();

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
    let spec = PointSpec {
        name: opts.name.clone(),
        source: source.display().to_string(),
        volume_size: volume.size,
        block_size: bs,
        compression: opts.compression,
        parent: previous.as_ref().and(parent.as_ref()).map(|p| p.id.clone()),
    };
    let mut writer = repo.begin_point(spec.clone())?;

    let threads = opts.threads.max(1);
    let batch_len = BATCH_BYTES.max(bs.bytes() as usize) / bs.bytes() as usize * bs.bytes() as usize;
    let pool_size = threads * 2 + 2;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(pool_size);
    for _ in 0..pool_size {
        pool_tx.send(Vec::with_capacity(batch_len)).expect("pool has room");
    }
    let (work_tx, work_rx) = bounded::<Batch>(threads);
    let (done_tx, done_rx) = bounded::<Result<BatchResult>>(pool_size);
    let size = volume.size;
    let stop = AtomicBool::new(false);

    let mut stats = PointStats { source_bytes: size, ..Default::default() };
    let outcome: Result<()> = std::thread::scope(|s| {
        // Reader: the only thread that touches the source and the previous index.
        let reader = s.spawn(|| -> Result<()> {
            // Owned here, so the workers see the end of the work when the reader is done.
            let work_tx = work_tx;
            let mut offset = 0u64;
            let mut seq = 0u64;
            while offset < size {
                if cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                    return Err(AgentError::Cancelled);
                }
                let Ok(mut data) = pool_rx.recv() else { return Ok(()) };
                let want = (size - offset).min(batch_len as u64) as usize;
                // Buffers come back at their last length: resizing to the same length costs
                // nothing, where clearing would zero-fill 8 MiB per read.
                data.resize(want, 0);
                volume.file.read_exact(&mut data).map_err(|e| AgentError::Source {
                    path: source.into(),
                    what: format!("read failed at offset {offset}"),
                    source: e,
                })?;
                let nblocks = want.div_ceil(bs.bytes() as usize);
                let mut prev = Vec::with_capacity(nblocks);
                for _ in 0..nblocks {
                    prev.push(match previous.as_mut() {
                        Some(ix) => ix.next_block().map_err(|e| repo_io(repo, "reading the previous index", e))?,
                        None => None,
                    });
                }
                if work_tx.send(Batch { seq, data, previous: prev }).is_err() {
                    return Ok(());
                }
                offset += want as u64;
                seq += 1;
            }
            Ok(())
        });
        for _ in 0..threads {
            let (work_rx, done_tx, pool_tx) = (work_rx.clone(), done_tx.clone(), pool_tx.clone());
            s.spawn(move || worker(repo, opts, work_rx, done_tx, pool_tx));
        }
        drop((done_tx, work_rx, pool_tx));

        // Collector (this thread): results in order into the index.
        let mut pending: BTreeMap<u64, BatchResult> = BTreeMap::new();
        let mut next = 0u64;
        let collected: Result<()> = (|| {
            for r in done_rx.iter() {
                let r = r?;
                pending.insert(r.seq, r);
                while let Some(r) = pending.remove(&next) {
                    for b in &r.refs {
                        writer.index().push(b).map_err(|e| repo_io(repo, "writing the block index", e))?;
                    }
                    stats.read_bytes += r.len;
                    stats.zero_bytes += r.zero;
                    stats.unchanged_bytes += r.unchanged;
                    stats.new_bytes += r.new;
                    stats.stored_bytes += r.stored;
                    progress(r.len);
                    next += 1;
                }
            }
            Ok(())
        })();
        if collected.is_err() {
            stop.store(true, Ordering::Relaxed);
            drop(done_rx);
        }
        let read = reader.join().expect("reader does not panic");
        collected.and(read)
    });
    outcome?;
    if cancel.load(Ordering::Relaxed) {
        return Err(AgentError::Cancelled);
    }
    if stats.read_bytes != size {
        return Err(AgentError::BadSource { path: source.into(), reason: "the source ended early".into() });
    }
    stats.duration_s = started.elapsed().as_secs_f64();
    let manifest = writer.commit(stats)?;
    Ok(BackupReport {
        point: manifest.id.to_string(),
        name: manifest.name,
        source: manifest.source,
        parent: manifest.parent.map(|p| p.to_string()),
        block_size: bs.bytes(),
        compression: opts.compression,
        stats: PointStats { duration_s: started.elapsed().as_secs_f64(), ..manifest.stats },
        notes,
    })
}

fn repo_io(repo: &Repository, what: &str, e: std::io::Error) -> AgentError {
    AgentError::Repo(bulwark_repo::RepoError::Io { repo: repo.label(), what: what.into(), source: e })
}

fn worker(
    repo: &Repository,
    opts: &BackupOptions,
    work: Receiver<Batch>,
    done: Sender<Result<BatchResult>>,
    pool: Sender<Vec<u8>>,
) {
    let mut codec = repo.codec(opts.compression);
    let bs = opts.block_size.bytes() as usize;
    for batch in work.iter() {
        let mut r = BatchResult { seq: batch.seq, len: batch.data.len() as u64, ..Default::default() };
        let mut failed = None;
        for (i, block) in batch.data.chunks(bs).enumerate() {
            match classify(repo, &mut codec, block, batch.previous[i], &mut r) {
                Ok(b) => r.refs.push(b),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let _ = pool.send(batch.data);
        let msg = match failed {
            Some(e) => Err(e),
            None => Ok(r),
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}

/// Decides what one block is, storing it if the repository lacks it.
fn classify(
    repo: &Repository,
    codec: &mut bulwark_repo::ChunkCodec,
    block: &[u8],
    previous: Option<BlockRef>,
    r: &mut BatchResult,
) -> Result<BlockRef> {
    let len = block.len() as u64;
    if is_zero(block) {
        r.zero += len;
        return Ok(BlockRef::Zero);
    }
    let id = codec.digest(block);
    // Reusing a chunk (unchanged, or stored by anyone before) touches it, which is what keeps a
    // concurrent garbage collection from sweeping it before this point commits.
    if repo.reuse_chunk(&id)? {
        if previous == Some(BlockRef::Chunk(id)) {
            r.unchanged += len;
        }
        return Ok(BlockRef::Chunk(id));
    }
    let stored = codec.encode(&id, block);
    repo.put_chunk(&id, &stored)?;
    r.new += len;
    r.stored += stored.len() as u64;
    Ok(BlockRef::Chunk(id))
}

/// Zero test at memory speed: the compiler vectorises the 16-byte compare.
fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(16);
    chunks.all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}
