//! Changed block tracking: which blocks may differ from the previous point, without reading them.
//!
//! A tracker answers with a set of blocks that *may* have changed; every other block is taken
//! from the previous point's index unread. Whenever tracking cannot be trusted the backup falls
//! back to reading everything and comparing digests with the previous index, and says why: a
//! change is never missed silently.

pub mod extents;
pub mod thin;

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::snapshot::{Snapshot, ThinSnapshot};

/// The operator's choice (`--cbt`), one of the job model's shared words.
pub use bulwark_proto::domain::CbtMode;

/// One bit per block: set = may have changed (must be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedBlocks {
    bits: Vec<u64>,
    blocks: u64,
}

impl ChangedBlocks {
    pub fn none(blocks: u64) -> Self {
        ChangedBlocks { bits: vec![0; blocks.div_ceil(64) as usize], blocks }
    }

    pub fn mark(&mut self, block: u64) {
        if block < self.blocks {
            self.bits[(block / 64) as usize] |= 1 << (block % 64);
        }
    }

    /// Marks every block overlapping the byte range `[start, end)`.
    pub fn mark_bytes(&mut self, start: u64, end: u64, block_size: u64) {
        if end <= start {
            return;
        }
        for b in start / block_size..end.div_ceil(block_size) {
            self.mark(b);
        }
    }

    /// How many blocks may have changed.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_changed(&self, block: u64) -> bool {
        block >= self.blocks || self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }
}

/// What the last successful backup left for the next one besides its snapshot: the point it
/// became and the settings it was taken with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackingState {
    pub point: String,
    pub volume_size: u64,
    pub block_size: u32,
    /// The filter settings of that backup ([`crate::filter::FilterOptions::describe`]).
    pub filters: String,
    /// Byte ranges that backup dropped for belonging to excluded or swap files.
    pub file_ranges: Vec<(u64, u64)>,
}

/// Where a backup learns what changed since the last one: the storage's own record of it.
pub enum Tracker {
    /// The reflink clone of an image file kept from the last backup, compared by extents.
    Extents(extents::TrackingFiles),
    /// The LVM thin snapshot kept from the last backup, compared in the pool's metadata.
    Thin(thin::ThinTracking, ThinSnapshot),
}

impl Tracker {
    /// The tracker for `snapshot` of `source` backed up under `name`, if its provider keeps
    /// something to compare with: thin tracking's state lives in `state_dir`.
    pub fn for_snapshot(snapshot: &Snapshot, source: &Path, name: &str, state_dir: &Path) -> Option<Tracker> {
        match (&snapshot.thin, snapshot.provider) {
            (Some(t), _) => Some(Tracker::Thin(thin::ThinTracking::new(state_dir, t, name), t.clone())),
            (None, "reflink") => Some(Tracker::Extents(extents::TrackingFiles::for_image(source, name))),
            _ => None,
        }
    }

    /// Where the answer comes from, for the backup's notes.
    pub fn source(&self) -> &'static str {
        match self {
            Tracker::Extents(_) => "the extents of the kept reflink clone",
            Tracker::Thin(..) => "the thin pool's metadata",
        }
    }

    pub fn load(&self) -> Result<TrackingState, String> {
        match self {
            Tracker::Extents(t) => t.load(),
            Tracker::Thin(t, _) => t.load(),
        }
    }

    /// Blocks that may differ between what was kept and `volume` (the new snapshot, opened).
    pub fn changed(&self, volume: &File, size: u64, block_size: u64) -> Result<ChangedBlocks, String> {
        match self {
            Tracker::Extents(t) => File::open(&t.base)
                .and_then(|base| extents::changed_between(&base, volume, size, block_size))
                .map_err(|e| format!("cannot map extents ({e})")),
            Tracker::Thin(t, snap) => t.changed(snap, size, block_size),
        }
    }

    /// Keeps `snapshot` as the base of the next backup, which follows `state`.
    pub fn advance(&self, snapshot: Snapshot, state: &TrackingState) -> Result<(), String> {
        match self {
            Tracker::Extents(t) => t.advance(&snapshot.keep(), state).map_err(|e| e.to_string()),
            Tracker::Thin(t, snap) => t.advance(snapshot, snap, state),
        }
    }

    /// Forgets what was kept: the next backup reads every block.
    pub fn clear(&self) {
        match self {
            Tracker::Extents(t) => t.clear(),
            Tracker::Thin(t, _) => t.clear(),
        }
    }
}
