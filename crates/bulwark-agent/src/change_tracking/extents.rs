//! Change tracking for reflinked image files: the clone kept from the last successful backup
//! shares its physical extents with the image until the image is written (copy-on-write), so a
//! range whose physical mapping (`FIEMAP`) is identical in the old clone and the new one is
//! unchanged. Anything the kernel reports as not yet placed, inline or otherwise uncertain counts
//! as changed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{ChangedBlocks, TrackingState};

/// One mapped range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Unknown location, delayed allocation, inline or tail-packed data: no stable identity.
const UNTRUSTED: u32 = 0x2 | 0x4 | 0x200 | 0x400;
const ENCODED: u32 = 0x8;
const UNWRITTEN: u32 = 0x800;
const HEADER_WORDS: usize = 4; // struct fiemap header: 32 bytes
const EXTENT_WORDS: usize = 7; // struct fiemap_extent: 56 bytes
const BATCH: usize = 256;

/// The extents of `file` overlapping `[start, end)`, in logical order.
pub fn fiemap(file: &File, start: u64, end: u64) -> io::Result<Vec<Extent>> {
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = start;
    while pos < end {
        let mut buf = vec![0u64; HEADER_WORDS + EXTENT_WORDS * BATCH];
        buf[0] = pos; // fm_start
        buf[1] = end - pos; // fm_length
        buf[2] = FIEMAP_FLAG_SYNC as u64; // fm_flags (low half), fm_mapped_extents (high half) = 0
        buf[3] = BATCH as u64; // fm_extent_count (low half), fm_reserved = 0
                               // SAFETY: `buf` is a properly aligned, zero-initialised `struct fiemap` followed by room
                               // for `BATCH` extents, as fm_extent_count tells the kernel; it outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = (buf[2] >> 32) as usize;
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for i in 0..mapped.min(BATCH) {
            let e = &buf[HEADER_WORDS + i * EXTENT_WORDS..][..EXTENT_WORDS];
            let flags = e[5] as u32; // fe_flags follows fe_logical, fe_physical, fe_length, 2 reserved
            out.push(Extent { logical: e[0], physical: e[1], length: e[2], flags });
            last |= flags & FIEMAP_EXTENT_LAST != 0;
            pos = e[0] + e[2];
        }
        if last {
            break;
        }
    }
    Ok(out)
}

/// Blocks of a volume of `size` bytes whose mapping in `new` differs from `base`.
pub fn changed_between(base: &File, new: &File, size: u64, block_size: u64) -> io::Result<ChangedBlocks> {
    let mut changed = ChangedBlocks::none(size.div_ceil(block_size));
    // Windows keep the extent lists short whatever the file's size or fragmentation.
    const WINDOW: u64 = 1 << 30;
    let mut start = 0;
    while start < size {
        let end = (start + WINDOW).min(size);
        let a = fiemap(base, start, end)?;
        let b = fiemap(new, start, end)?;
        compare(&a, &b, start, end, block_size, &mut changed);
        start = end;
    }
    Ok(changed)
}

/// What maps logical offset `at`: the extent and its index, or `None` for a hole.
fn lookup(list: &[Extent], at: u64) -> Option<&Extent> {
    let i = list.partition_point(|e| e.logical + e.length <= at);
    list.get(i).filter(|e| e.logical <= at)
}

/// The next offset after `at` where `list`'s mapping may change.
fn next_edge(list: &[Extent], at: u64) -> u64 {
    let i = list.partition_point(|e| e.logical + e.length <= at);
    match list.get(i) {
        Some(e) if e.logical <= at => e.logical + e.length,
        Some(e) => e.logical,
        None => u64::MAX,
    }
}

fn compare(a: &[Extent], b: &[Extent], start: u64, end: u64, bs: u64, changed: &mut ChangedBlocks) {
    let mut at = start;
    while at < end {
        let stop = next_edge(a, at).min(next_edge(b, at)).min(end);
        let same = match (lookup(a, at), lookup(b, at)) {
            (None, None) => true,
            (Some(x), Some(y)) => {
                if (x.flags | y.flags) & UNTRUSTED != 0 || (x.flags ^ y.flags) & UNWRITTEN != 0 {
                    false
                } else if (x.flags | y.flags) & ENCODED != 0 {
                    x.logical == y.logical && x.physical == y.physical && x.length == y.length
                } else {
                    x.physical.wrapping_sub(x.logical) == y.physical.wrapping_sub(y.logical)
                }
            }
            _ => false,
        };
        if !same {
            changed.mark_bytes(at, stop, bs);
        }
        at = stop;
    }
}

/// Where the base clone and its state live: beside the image (a clone must stay on the image's
/// filesystem), one pair per backup name.
pub struct TrackingFiles {
    pub base: PathBuf,
    pub state: PathBuf,
}

impl TrackingFiles {
    pub fn for_image(image: &Path, name: &str) -> Self {
        let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file = image.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let base = dir.join(format!(".bulwark-cbt-{file}-{name}"));
        let state = dir.join(format!(".bulwark-cbt-{file}-{name}.json"));
        TrackingFiles { base, state }
    }

    pub fn load(&self) -> Result<TrackingState, String> {
        let raw = std::fs::read(&self.state).map_err(|e| format!("no tracking state ({e})"))?;
        let s: TrackingState = serde_json::from_slice(&raw).map_err(|e| format!("tracking state unreadable ({e})"))?;
        if !self.base.exists() {
            return Err("the base clone of the last backup is gone".into());
        }
        Ok(s)
    }

    /// Makes `snapshot` the base for the next backup, which follows `state`. The state is
    /// replaced after the clone, so a crash in between leaves a state naming an older point —
    /// which the next backup sees as stale and does not trust.
    pub fn advance(&self, snapshot: &Path, state: &TrackingState) -> io::Result<()> {
        let _ = std::fs::remove_file(&self.state);
        std::fs::rename(snapshot, &self.base)?;
        let tmp = self.state.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(state).expect("state serializes"))?;
        std::fs::rename(&tmp, &self.state)
    }

    /// Forgets tracking (after a failed or untrusted run nothing is lost: the next backup falls
    /// back to reading everything).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(&self.base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(logical: u64, physical: u64, length: u64) -> Extent {
        Extent { logical, physical, length, flags: 0 }
    }

    #[test]
    fn shared_extents_are_unchanged_and_moved_ones_changed() {
        let base = [e(0, 1000, 4096), e(4096, 9000, 8192)];
        let new = [e(0, 1000, 4096), e(4096, 9000, 4096), e(8192, 50_000, 4096)];
        let mut c = ChangedBlocks::none(3);
        compare(&base, &new, 0, 12288, 4096, &mut c);
        assert!(!c.is_changed(0) && !c.is_changed(1) && c.is_changed(2));
    }

    #[test]
    fn holes_filled_or_punched_are_changes() {
        let base = [e(0, 1000, 4096)];
        let new = [e(4096, 2000, 4096)];
        let mut c = ChangedBlocks::none(3);
        compare(&base, &new, 0, 12288, 4096, &mut c);
        assert!(c.is_changed(0) && c.is_changed(1) && !c.is_changed(2));
    }

    #[test]
    fn untrusted_flags_count_as_changed() {
        let mut x = e(0, 1000, 4096);
        x.flags = 0x4;
        let mut c = ChangedBlocks::none(1);
        compare(&[x], &[x], 0, 4096, 4096, &mut c);
        assert!(c.is_changed(0));
    }
}
