//! What is on a volume: a partition table (MBR or GPT) or not, and which filesystem each part holds.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
    Swap,
    Other,
}

/// One partition (or the whole volume when there is no partition table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub offset: u64,
    pub size: u64,
    pub fs: FsKind,
}

pub fn detect(f: &File, offset: u64) -> FsKind {
    let mut b = [0u8; 4096];
    let n = f.read_at(&mut b, offset).unwrap_or(0);
    if n >= 4 && &b[..4] == b"XFSB" {
        return FsKind::Xfs;
    }
    if n >= 1024 + 0x3a && b[1024 + 0x38..1024 + 0x3a] == [0x53, 0xEF] {
        return FsKind::Ext4;
    }
    if n == 4096 && (&b[4086..] == b"SWAPSPACE2" || &b[4086..] == b"SWAP-SPACE") {
        return FsKind::Swap;
    }
    FsKind::Other
}

fn u32le(b: &[u8]) -> u64 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as u64
}

fn u64le(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The parts of the volume at `path`.
pub fn scan(path: &Path) -> io::Result<Vec<Part>> {
    let f = File::open(path)?;
    let size = {
        use std::io::Seek;
        (&f).seek(io::SeekFrom::End(0))?
    };
    let mut mbr = [0u8; 512];
    f.read_at(&mut mbr, 0)?;
    let whole = || vec![Part { offset: 0, size, fs: detect(&f, 0) }];
    // A filesystem at offset 0 (its boot sector may look like an MBR) wins.
    if detect(&f, 0) != FsKind::Other || mbr[510..512] != [0x55, 0xAA] {
        return Ok(whole());
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..][..16]).collect();
    let mut parts = Vec::new();
    if entries.iter().any(|e| e[4] == 0xEE) {
        let mut hdr = [0u8; 512];
        f.read_at(&mut hdr, 512)?;
        if &hdr[..8] != b"EFI PART" {
            return Ok(whole());
        }
        let (lba, count, esize) = (u64le(&hdr[72..]), u32le(&hdr[80..]), u32le(&hdr[84..]));
        if !(128..=4096).contains(&esize) || count > 1024 {
            return Ok(whole());
        }
        let mut table = vec![0u8; (count * esize) as usize];
        f.read_at(&mut table, lba * 512)?;
        for e in table.chunks(esize as usize) {
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (u64le(&e[32..]), u64le(&e[40..]));
            if last >= first && (last + 1) * 512 <= size {
                let offset = first * 512;
                parts.push(Part { offset, size: (last + 1 - first) * 512, fs: detect(&f, offset) });
            }
        }
    } else {
        for e in entries {
            let (kind, start, len) = (e[4], u32le(&e[8..]), u32le(&e[12..]));
            // Empty and extended-container entries hold no filesystem of their own.
            if kind == 0 || matches!(kind, 0x05 | 0x0F | 0x85) || len == 0 || (start + len) * 512 > size {
                continue;
            }
            parts.push(Part { offset: start * 512, size: len * 512, fs: detect(&f, start * 512) });
        }
    }
    if parts.is_empty() {
        return Ok(whole());
    }
    Ok(parts)
}
