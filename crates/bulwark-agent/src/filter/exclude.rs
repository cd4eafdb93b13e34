//! Excluded files and swap files: their data extents, found by mounting the snapshot's
//! filesystem read-only and asking the kernel where each file lives (`FIEMAP`).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::layout::{FsKind, Part};
use super::BlockFilter;
use crate::change_tracking::extents::fiemap;
use crate::snapshot::run_tool;

/// Drops a fixed list of byte ranges.
pub struct ExcludeFilter {
    name: &'static str,
    ranges: Vec<Range<u64>>,
    next: usize,
}

impl ExcludeFilter {
    pub fn new(name: &'static str, mut ranges: Vec<Range<u64>>) -> Self {
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        ExcludeFilter { name, ranges: merged, next: 0 }
    }
}

impl BlockFilter for ExcludeFilter {
    fn name(&self) -> &'static str {
        self.name
    }

    fn droppable(&mut self, start: u64, end: u64) -> std::io::Result<Vec<Range<u64>>> {
        while self.next < self.ranges.len() && self.ranges[self.next].end <= start {
            self.next += 1;
        }
        let mut out = Vec::new();
        for r in &self.ranges[self.next..] {
            if r.start >= end {
                break;
            }
            out.push(r.start.max(start)..r.end.min(end));
        }
        Ok(out)
    }
}

/// A read-only loop device over a part of the snapshot, mounted on a temporary directory.
struct ReadOnlyMount {
    dir: PathBuf,
    device: String,
    mounted: bool,
}

impl ReadOnlyMount {
    fn new(snapshot: &Path, part: &Part) -> Result<Self, String> {
        let device = run_tool(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only", "--offset", &part.offset.to_string()])
                .args(["--sizelimit", &part.size.to_string()])
                .arg(snapshot),
        )?
        .trim()
        .to_string();
        let dir = std::env::temp_dir().join(format!("bulwark-ro-{}", crate::snapshot::owned_tag()));
        let mut m = ReadOnlyMount { dir, device, mounted: false };
        std::fs::create_dir(&m.dir).map_err(|e| format!("cannot create a mount point: {e}"))?;
        let opts = match part.fs {
            // The snapshot is consistent (checked by the caller); never replay anything into it.
            FsKind::Xfs => "ro,norecovery,nouuid",
            _ => "ro,noload",
        };
        run_tool(Command::new("mount").args(["-o", opts]).arg(&m.device).arg(&m.dir))?;
        m.mounted = true;
        Ok(m)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Extents that are a file's own data and safe to drop: not shared with another file (reflink),
/// not inline in metadata, with a known place.
const KEEP_FLAGS: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000;

fn file_extents(path: &Path, offset: u64, skip_head: u64, out: &mut Vec<Range<u64>>) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let md = f.metadata().map_err(|e| e.to_string())?;
    // Another name of the same inode may lie outside the exclusion: its data must stay.
    if std::os::unix::fs::MetadataExt::nlink(&md) > 1 {
        return Ok(());
    }
    let len = md.len();
    for e in fiemap(&f, 0, len.max(1)).map_err(|e| format!("FIEMAP of {} failed: {e}", path.display()))? {
        if e.flags & KEEP_FLAGS != 0 {
            continue;
        }
        let (mut l, mut p, mut n) = (e.logical, e.physical, e.length);
        if l < skip_head {
            let cut = (skip_head - l).min(n);
            l += cut;
            p += cut;
            n -= cut;
        }
        let _ = l;
        if n > 0 {
            out.push(offset + p..offset + p + n);
        }
    }
    Ok(())
}

fn walk(path: &Path, offset: u64, out: &mut Vec<Range<u64>>) -> Result<(), String> {
    let md = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if md.is_file() {
        file_extents(path, offset, 0, out)
    } else if md.is_dir() {
        for e in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?.flatten() {
            walk(&e.path(), offset, out)?;
        }
        Ok(())
    } else {
        Ok(())
    }
}

/// Excluded ranges and swap-file ranges.
pub type FileRanges = (Vec<Range<u64>>, Vec<Range<u64>>);

/// Byte ranges (volume coordinates) of the excluded paths' data and of the swap files that the
/// filesystem's own `/etc/fstab` lists (their header page kept).
pub fn file_ranges(snapshot: &Path, part: &Part, exclude: &[String], swap: bool) -> Result<FileRanges, String> {
    let m = ReadOnlyMount::new(snapshot, part)?;
    let mut excluded = Vec::new();
    // Paths are resolved by the host: one that leads outside the mounted snapshot (through an
    // absolute symlink in the guest) names blocks of another filesystem, and is ignored.
    let root = std::fs::canonicalize(&m.dir).unwrap_or_else(|_| m.dir.clone());
    let inside = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(&root));
    for p in exclude {
        let path = m.dir.join(p.trim_start_matches('/'));
        if std::fs::symlink_metadata(&path).is_ok() && inside(&path) {
            walk(&path, part.offset, &mut excluded)?;
        }
    }
    let mut swapfiles = Vec::new();
    if swap {
        let fstab = std::fs::read_to_string(m.dir.join("etc/fstab")).unwrap_or_default();
        for line in fstab.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 3 && f[2] == "swap" && f[0].starts_with('/') && !f[0].starts_with("/dev/") {
                let path = m.dir.join(f[0].trim_start_matches('/'));
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) && inside(&path) {
                    file_extents(&path, part.offset, 4096, &mut swapfiles)?;
                }
            }
        }
    }
    Ok((excluded, swapfiles))
}
