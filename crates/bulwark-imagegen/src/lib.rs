//! Deterministic test images for Bulwark's demo, tests and benchmarks.
//!
//! An image is cut into 1 MiB regions; each region is, by a hash of the seed and its number,
//! zero (about 35%), compressible text-like data (about 35%) or incompressible random data
//! (about 30%). The same seed always gives the same bytes, so a benchmark on one machine can be
//! repeated on another. [`mutate`] rewrites a given share of the regions in place, as a day of
//! use would.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const REGION: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    Zero,
    Text,
    Random,
}

fn mix(seed: u64, n: u64, salt: u64) -> u64 {
    // SplitMix64 finaliser over the inputs: cheap, well spread.
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn region_kind(seed: u64, region: u64) -> RegionKind {
    match mix(seed, region, 1) % 100 {
        0..=34 => RegionKind::Zero,
        35..=69 => RegionKind::Text,
        _ => RegionKind::Random,
    }
}

const WORDS: &[&str] = &[
    "the",
    "backup",
    "volume",
    "restore",
    "point",
    "block",
    "chunk",
    "server",
    "agent",
    "data",
    "mover",
    "repository",
    "session",
    "task",
    "job",
    "snapshot",
    "linux",
    "kernel",
    "file",
    "system",
    "error",
    "warning",
    "info",
    "debug",
    "2026-11-25",
    "user",
    "root",
    "home",
    "var",
    "log",
    "etc",
    "config",
    "value",
    "key",
    "id",
    "name",
    "size",
    "time",
    "status",
    "ok",
    "failed",
    "success",
    "retry",
    "network",
    "disk",
    "memory",
    "cpu",
    "process",
    "thread",
    "queue",
    "request",
    "response",
    "GET",
    "POST",
    "/api/v1/jobs",
    "200",
    "404",
    "500",
    "true",
    "false",
    "null",
    "{",
    "}",
    "=",
];

/// Fills `buf` with the content of region `region` of the image `seed` (`version` 0 is the
/// original; [`mutate`] writes later versions).
pub fn fill_region(seed: u64, region: u64, version: u64, buf: &mut [u8]) {
    // A rewritten region draws from the same mix as the image (so an incremental's stored size
    // compares fairly with the full's), with content of its own.
    let kind = region_kind(seed ^ version.wrapping_mul(0xA076_1D64_78BD_642F), region);
    match kind {
        RegionKind::Zero => buf.fill(0),
        RegionKind::Random => {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&seed.to_le_bytes());
            key[8..16].copy_from_slice(&region.to_le_bytes());
            key[16..24].copy_from_slice(&version.to_le_bytes());
            blake3::Hasher::new_keyed(&key).finalize_xof().fill(buf);
        }
        RegionKind::Text => {
            let mut state = mix(seed ^ version, region, 2) | 1;
            let mut i = 0;
            while i < buf.len() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let w = WORDS[(state % WORDS.len() as u64) as usize].as_bytes();
                let sep: &[u8] = if state >> 60 == 0 { b"\n" } else { b" " };
                for &b in w.iter().chain(sep) {
                    if i == buf.len() {
                        break;
                    }
                    buf[i] = b;
                    i += 1;
                }
            }
        }
    }
}

/// Writes a new image of `size` bytes.
pub fn generate(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut f = File::create(path)?;
    let mut buf = vec![0u8; REGION as usize];
    let mut off = 0;
    let mut region = 0;
    while off < size {
        let len = (size - off).min(REGION) as usize;
        fill_region(seed, region, 0, &mut buf[..len]);
        f.write_all(&buf[..len])?;
        off += len as u64;
        region += 1;
    }
    f.sync_all()
}

/// Rewrites `percent`% of the image's regions (at least one) with new content drawn from the
/// same mix (a region may so become zero, as deleted data does), chosen by `seed` and `round`
/// (each round picks other regions). Returns the regions rewritten.
pub fn mutate(path: &Path, percent: f64, seed: u64, round: u64) -> io::Result<Vec<u64>> {
    let f = OpenOptions::new().write(true).read(true).open(path)?;
    let size = (&f).seek(SeekFrom::End(0))?;
    let regions = size.div_ceil(REGION);
    let want = ((regions as f64 * percent / 100.0).round() as u64).clamp(1, regions.max(1));
    let mut chosen: Vec<u64> = Vec::new();
    let mut k = 0;
    while (chosen.len() as u64) < want && regions > 0 {
        let r = mix(seed ^ 0x5eed, round, k + 3) % regions;
        if !chosen.contains(&r) {
            chosen.push(r);
        }
        k += 1;
    }
    chosen.sort_unstable();
    let mut buf = vec![0u8; REGION as usize];
    for &r in &chosen {
        let len = (size - r * REGION).min(REGION) as usize;
        fill_region(seed, r, round + 1, &mut buf[..len]);
        f.write_all_at(&buf[..len], r * REGION)?;
    }
    f.sync_all()?;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_near_the_advertised_shares() {
        let n = 10_000;
        let zero = (0..n).filter(|&r| region_kind(7, r) == RegionKind::Zero).count();
        let random = (0..n).filter(|&r| region_kind(7, r) == RegionKind::Random).count();
        assert!((3_200..3_800).contains(&zero), "{zero}");
        assert!((2_700..3_300).contains(&random), "{random}");
    }

    #[test]
    fn same_seed_same_bytes() {
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        for r in 0..20 {
            fill_region(3, r, 0, &mut a);
            fill_region(3, r, 0, &mut b);
            assert_eq!(a, b);
        }
    }
}
