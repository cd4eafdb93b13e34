//! A copy-on-write overlay: what a writable export's clients write, kept apart from the point.
//!
//! A VM booted from a restore point writes (logs, a journal replay), and the point must stay as
//! it was. Written pages go to a sparse scratch file of the image's size; a bitmap says which
//! 4 KiB pages the file holds, so a read takes each page from the file or from the point. The
//! scratch file has no name (it is gone with the process, however the process ends).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bulwark_repo::image::{check_range, Image};

/// The overlay's unit: a write smaller than a page reads the rest of the page first.
pub const PAGE: u64 = 4096;

/// Writes go to the overlay, reads come from the overlay where written and from `base` elsewhere.
pub struct Overlay {
    base: Arc<dyn Image>,
    scratch: File,
    size: u64,
    /// One bit per page: set once the scratch file holds the page. Bits are only ever set, after
    /// the page's bytes are in the file, so a reader that sees a bit finds the data.
    written: Vec<AtomicU64>,
    /// Writes run one at a time: a partial page is read, merged and written back whole, and two
    /// such merges of one page must not interleave.
    writing: Mutex<()>,
}

impl Overlay {
    /// An empty overlay over `base`, its scratch file in `dir`.
    pub fn new(base: Arc<dyn Image>, dir: &Path) -> io::Result<Overlay> {
        let scratch = tempfile::tempfile_in(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating an overlay in {}: {e}", dir.display())))?;
        let size = base.size();
        scratch.set_len(size)?;
        let pages = size.div_ceil(PAGE);
        let written = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(Overlay { base, scratch, size, written, writing: Mutex::new(()) })
    }

    fn is_written(&self, page: u64) -> bool {
        self.written[(page / 64) as usize].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    fn mark_written(&self, first: u64, last: u64) {
        for page in first..=last {
            self.written[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::Release);
        }
    }

    /// Bytes the overlay holds (written pages × page size): what the scratch file may take.
    pub fn written_bytes(&self) -> u64 {
        self.written.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum::<u64>() * PAGE
    }

    /// The range of whole pages that `[offset, end)` touches, clipped to the image.
    fn page_span(&self, offset: u64, end: u64) -> (u64, u64, u64, u64) {
        let (first, last) = (offset / PAGE, (end - 1) / PAGE);
        (first, last, first * PAGE, ((last + 1) * PAGE).min(self.size))
    }

    /// Writes `data` at `offset`. On failure (a full disk: `ENOSPC`) the pages it covered read
    /// as before or as partly written, as NBD allows for a failed write; the overlay stays usable.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, data.len(), offset)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let _one_writer = self.writing.lock().expect("no panics while held");
        let (first, last, start, stop) = self.page_span(offset, end);
        if start == offset && stop == end {
            self.scratch.write_all_at(data, offset)?;
        } else {
            let mut buf = vec![0u8; (stop - start) as usize];
            if offset > start {
                let n = (PAGE.min(stop - start)) as usize;
                self.read_at(&mut buf[..n], start)?;
            }
            if end < stop {
                let tail = (last * PAGE - start) as usize;
                self.read_at(&mut buf[tail..], last * PAGE)?;
            }
            buf[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
            self.scratch.write_all_at(&buf, start)?;
        }
        self.mark_written(first, last);
        Ok(())
    }

    /// Makes `len` bytes from `offset` read as zeroes (NBD's WRITE_ZEROES and TRIM). Whole pages
    /// become holes in the scratch file, so zeroing a large range costs no space.
    pub fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, usize::try_from(len).unwrap_or(usize::MAX), offset)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let inner_start = offset.next_multiple_of(PAGE);
        let inner_end = if end == self.size { end } else { end / PAGE * PAGE };
        if inner_start >= inner_end {
            return self.write_zeroes(offset, end);
        }
        if offset < inner_start {
            self.write_zeroes(offset, inner_start)?;
        }
        if inner_end < end {
            self.write_zeroes(inner_end, end)?;
        }
        let _one_writer = self.writing.lock().expect("no panics while held");
        let punched = rustix::fs::fallocate(
            &self.scratch,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            inner_start,
            inner_end - inner_start,
        );
        if punched.is_err() {
            // A filesystem without holes: write the zeroes out, a page run at a time.
            let zeros = vec![0u8; 1 << 20];
            let mut at = inner_start;
            while at < inner_end {
                let n = (inner_end - at).min(zeros.len() as u64);
                self.scratch.write_all_at(&zeros[..n as usize], at)?;
                at += n;
            }
        }
        self.mark_written(inner_start / PAGE, (inner_end - 1) / PAGE);
        Ok(())
    }

    fn write_zeroes(&self, from: u64, to: u64) -> io::Result<()> {
        self.write_at(&vec![0u8; (to - from) as usize], from)
    }
}

impl Image for Overlay {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, buf.len(), offset)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        // Runs of pages from one side, each read in one call: a large read of a point an overlay
        // barely touches stays one large read of the point.
        let mut at = offset;
        while at < end {
            let from_overlay = self.is_written(at / PAGE);
            let mut run_end = ((at / PAGE + 1) * PAGE).min(end);
            while run_end < end && self.is_written(run_end / PAGE) == from_overlay {
                run_end = ((run_end / PAGE + 1) * PAGE).min(end);
            }
            let part = &mut buf[(at - offset) as usize..(run_end - offset) as usize];
            if from_overlay {
                self.scratch.read_exact_at(part, at)?;
            } else {
                self.base.read_at(part, at)?;
            }
            at = run_end;
        }
        Ok(())
    }

    fn is_zero(&self, offset: u64, len: u64) -> io::Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        let end = offset.saturating_add(len).min(self.size);
        if (offset / PAGE..end.div_ceil(PAGE)).any(|p| self.is_written(p)) {
            return Ok(false);
        }
        self.base.is_zero(offset, len)
    }

    fn describe(&self) -> String {
        format!("{} with a writable overlay", self.base.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_repo::image::MemImage as Bytes;

    fn read_all(img: &dyn Image) -> Vec<u8> {
        let mut out = vec![0u8; img.size() as usize];
        img.read_at(&mut out, 0).unwrap();
        out
    }

    /// Writes and zeroings of every alignment, the last short page included, read back as the
    /// same operations applied to a plain buffer; the base is never changed.
    #[test]
    fn overlay_matches_a_plain_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 * PAGE as usize + 1234;
        let original = bulwark_testkit::random_bytes(size, 3);
        let base: Arc<dyn Image> = Arc::new(Bytes(original.clone()));
        let ov = Overlay::new(base.clone(), dir.path()).unwrap();
        let mut model = original.clone();
        let p = PAGE as usize;
        let writes = [(0, 10), (p - 5, 10), (2 * p, p), (3 * p + 1, 2 * p), (size - 7, 7), (size - 1300, 1300)];
        for (i, (off, len)) in writes.into_iter().enumerate() {
            let data = vec![0x11 * (i as u8 + 1); len];
            ov.write_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
            assert_eq!(read_all(&ov), model, "after writing {len} at {off}");
        }
        for (off, len) in [(5 * p + 3, 3 * p), (p, 100), (size - 2000, 2000), (7 * p, p)] {
            ov.zero(off as u64, len as u64).unwrap();
            model[off..off + len].fill(0);
            assert_eq!(read_all(&ov), model, "after zeroing {len} at {off}");
        }
        for (off, len) in [(0, size), (p - 1, 2), (size - 1, 1), (4 * p + 17, 3 * p)] {
            let mut buf = vec![0xEE; len];
            ov.read_at(&mut buf, off as u64).unwrap();
            assert_eq!(buf, model[off..off + len]);
        }
        assert_eq!(read_all(base.as_ref()), original, "the base is untouched");
        assert!(ov.write_at(&[1, 2], size as u64 - 1).is_err(), "past the end");
        assert!(ov.zero(size as u64 - 1, 2).is_err(), "past the end");
    }
}
