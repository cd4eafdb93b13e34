//! Block filters: "skip what a restore does not need".
//!
//! Each filter names byte ranges of the volume whose content a restore need not reproduce:
//! blocks the filesystem marks unused, swap, and the data of excluded files. The backup zeroes
//! those ranges before hashing, so wholly dropped blocks become zero blocks (stored as nothing)
//! and partly dropped ones compress and deduplicate better. The restored filesystem is the same
//! filesystem with zeroes where nothing lived; excluded files come back as zero-filled files of
//! their original size. Filters read the snapshot, never the live volume, and are asked for
//! ranges front to back, so each keeps only what it needs for the current stretch.

mod exclude;
mod ext4;
pub mod layout;
mod swap;

use std::ops::Range;
use std::path::Path;

use serde::Serialize;

pub use exclude::ExcludeFilter;
pub use ext4::Ext4UnusedFilter;
pub use swap::SwapAreaFilter;

use crate::snapshot::Consistency;

pub trait BlockFilter: Send {
    /// The name the summary reports the dropped bytes under.
    fn name(&self) -> &'static str;
    /// Byte ranges within `[start, end)` of the volume that a restore does not need, ascending.
    /// Called with ascending, non-overlapping windows.
    fn droppable(&mut self, start: u64, end: u64) -> std::io::Result<Vec<Range<u64>>>;
}

/// Bytes each filter dropped.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FilterStats {
    pub unused_bytes: u64,
    pub swap_bytes: u64,
    pub excluded_bytes: u64,
}

impl FilterStats {
    pub fn add(&mut self, name: &str, bytes: u64) {
        match name {
            "unused" => self.unused_bytes += bytes,
            "swap" => self.swap_bytes += bytes,
            _ => self.excluded_bytes += bytes,
        }
    }
}

/// What the operator asked to drop.
#[derive(Debug, Clone, Default)]
pub struct FilterOptions {
    /// Drop blocks the filesystems mark unused.
    pub unused: bool,
    /// Drop swap areas and swap files.
    pub swap: bool,
    /// Paths (from each filesystem's root) whose file data is not stored.
    pub exclude: Vec<String>,
}

impl FilterOptions {
    /// What the options are, for noticing a change between two backups.
    pub fn describe(&self) -> String {
        format!("unused={} swap={} exclude={:?}", self.unused, self.swap, self.exclude)
    }

    pub fn all() -> Self {
        FilterOptions { unused: true, swap: true, exclude: Vec::new() }
    }
}

/// Builds the filters for a snapshot: finds the partitions and filesystems on it, and sets up
/// each requested filter where it can be trusted. `notes` receives what was skipped and why.
pub fn filters_for(
    snapshot: &Path,
    consistency: Consistency,
    opts: &FilterOptions,
    notes: &mut Vec<String>,
    file_ranges: &mut Vec<Range<u64>>,
) -> Vec<Box<dyn BlockFilter>> {
    let mut out: Vec<Box<dyn BlockFilter>> = Vec::new();
    if !opts.unused && !opts.swap && opts.exclude.is_empty() {
        return out;
    }
    let parts = match layout::scan(snapshot) {
        Ok(p) => p,
        Err(e) => {
            notes.push(format!("filters off: cannot read the volume layout ({e})"));
            return out;
        }
    };
    let mut extra: Vec<Range<u64>> = Vec::new();
    let mut excluded: Vec<Range<u64>> = Vec::new();
    for p in &parts {
        match p.fs {
            layout::FsKind::Swap if opts.swap => {
                out.push(Box::new(SwapAreaFilter::new(p.offset, p.size)));
            }
            layout::FsKind::Ext4 if opts.unused => {
                if consistency == Consistency::CrashInconsistent {
                    notes.push(format!("unused-block filter off for the ext4 filesystem at {}: read live, its bitmaps cannot be trusted", p.offset));
                } else {
                    match Ext4UnusedFilter::open(snapshot, p.offset, p.size) {
                        Ok(f) => out.push(Box::new(f)),
                        Err(e) => {
                            notes.push(format!("unused-block filter off for the ext4 filesystem at {}: {e}", p.offset))
                        }
                    }
                }
            }
            _ => {}
        }
        if matches!(p.fs, layout::FsKind::Ext4 | layout::FsKind::Xfs) && (opts.swap || !opts.exclude.is_empty()) {
            // Files are located by mounting the snapshot without replaying its journal: only
            // right when nothing is left to replay, or a wrong file's blocks would be dropped.
            let clean = match (p.fs, consistency) {
                (_, Consistency::CrashInconsistent) => Err("the source was read live".to_string()),
                (layout::FsKind::Ext4, _) => ext4::check_clean(snapshot, p.offset),
                (_, Consistency::Frozen) => Ok(()),
                _ => Err("an XFS log is only known clean on a frozen snapshot".to_string()),
            };
            if let Err(e) = clean {
                notes.push(format!("exclusions and swap files not applied to the filesystem at {}: {e}", p.offset));
                continue;
            }
            match exclude::file_ranges(snapshot, p, &opts.exclude, opts.swap) {
                Ok((ex, sw)) => {
                    excluded.extend(ex);
                    extra.extend(sw);
                }
                Err(e) => {
                    notes.push(format!("exclusions and swap files not applied to the filesystem at {}: {e}", p.offset))
                }
            }
        }
    }
    // Ranges dropped because of which file they belong to: change tracking cannot see a file
    // move in or out of an exclusion (its blocks stay put), so it re-reads these.
    file_ranges.extend(excluded.iter().cloned());
    file_ranges.extend(extra.iter().cloned());
    if !excluded.is_empty() {
        out.push(Box::new(ExcludeFilter::new("excluded", excluded)));
    }
    if !extra.is_empty() {
        out.push(Box::new(ExcludeFilter::new("swap", extra)));
    }
    out
}
