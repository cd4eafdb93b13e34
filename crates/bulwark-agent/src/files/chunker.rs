//! Content-defined chunking (FastCDC) of a file's data ranges, with bounded memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use fastcdc::v2020::FastCDC;

pub const MIN: u32 = 256 << 10;
pub const AVG: u32 = 1 << 20;
pub const MAX: u32 = 4 << 20;
const WINDOW: usize = 2 * MAX as usize;

/// The data ranges of a file (holes skipped): `SEEK_DATA`/`SEEK_HOLE`, or the whole file where
/// the filesystem cannot tell.
pub fn data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos as i64)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let end = match rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(start as i64)) {
            Ok(e) => e.min(size),
            Err(_) => size,
        };
        if end > start {
            out.push((start, end));
        }
        pos = end.max(start + 1);
    }
    out
}

/// Cuts `[start, end)` of `f` into content-defined chunks, calling `emit(offset, bytes)` for
/// each. Memory: one window of twice the largest chunk.
pub fn chunk_range(
    f: &File,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
    emit: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    buf.resize(WINDOW, 0);
    let mut filled = 0usize;
    let mut base = start; // file offset of buf[0]
    let mut read = 0u64;
    loop {
        while filled < WINDOW && base + (filled as u64) < end {
            let want = ((end - base) as usize - filled).min(WINDOW - filled);
            let n = f.read_at(&mut buf[filled..filled + want], base + filled as u64)?;
            if n == 0 {
                // The file shrank while being read: stop at what is there.
                return finish(buf, filled, base, emit).map(|()| read);
            }
            filled += n;
            read += n as u64;
        }
        let eof = base + filled as u64 >= end;
        let mut pos = 0usize;
        for c in FastCDC::new(&buf[..filled], MIN, AVG, MAX) {
            if !eof && c.offset + c.length == filled {
                break;
            }
            emit(base + c.offset as u64, &buf[c.offset..c.offset + c.length])?;
            pos = c.offset + c.length;
        }
        if eof {
            return Ok(read);
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        base += pos as u64;
    }
}

fn finish(buf: &[u8], filled: usize, base: u64, emit: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>) -> io::Result<()> {
    for c in FastCDC::new(&buf[..filled], MIN, AVG, MAX) {
        emit(base + c.offset as u64, &buf[c.offset..c.offset + c.length])?;
    }
    Ok(())
}
