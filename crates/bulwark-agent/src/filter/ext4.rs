//! Unused blocks of ext4, read from the snapshot's own block bitmaps.
//!
//! Only trusted when the filesystem on the snapshot is consistent on disk: its journal needs no
//! recovery (a frozen filesystem has checkpointed its journal) — otherwise a bitmap could say
//! "free" of a block a replayed journal would fill. For a group whose bitmap was never
//! initialised (`BLOCK_UNINIT`) the bitmap is computed as the kernel computes it: the superblock
//! backup and descriptor blocks where the group has them, and the group's own bitmaps and inode
//! table where they lie inside it; the rest is free.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::BlockFilter;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const BG_BLOCK_UNINIT: u16 = 0x2;

/// Whether the ext4 filesystem at `offset` needs no journal recovery (its on-disk metadata is
/// the whole truth).
pub fn check_clean(path: &Path, offset: u64) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, offset + 1024).map_err(|e| format!("cannot read the superblock: {e}"))?;
    if le16(&sb, 0x38) != 0xEF53 {
        return Err("no ext4 superblock".into());
    }
    if le32(&sb, 0x60) & INCOMPAT_RECOVER != 0 {
        return Err("its journal needs recovery".into());
    }
    not_dirty_without_journal(&sb)
}

/// A filesystem without a journal is only consistent on disk when it was cleanly unmounted
/// (or frozen): its state says so.
fn not_dirty_without_journal(sb: &[u8]) -> Result<(), String> {
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    const STATE_VALID: u16 = 0x1;
    if le32(sb, 0x5C) & COMPAT_HAS_JOURNAL == 0 && le16(sb, 0x3A) & STATE_VALID == 0 {
        return Err("it has no journal and was not cleanly unmounted".into());
    }
    Ok(())
}

pub struct Ext4UnusedFilter {
    file: File,
    offset: u64,
    block_size: u64,
    blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    desc_size: u64,
    gdt_offset: u64,
    is64: bool,
    groups: u64,
    sparse_super: bool,
    /// `sparse_super2` places superblock backups where its own fields say: not modelled, so such
    /// filesystems keep uninitialised groups whole.
    sparse_super2: bool,
    reserved_gdt: u64,
    inode_table_blocks: u64,
    /// The bitmap of the group read last (`None`: the group counts as wholly used).
    cache: Option<(u64, Option<Vec<u8>>)>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Ext4UnusedFilter {
    pub fn open(path: &Path, offset: u64, part_size: u64) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut sb = [0u8; 1024];
        file.read_exact_at(&mut sb, offset + 1024).map_err(|e| format!("cannot read the superblock: {e}"))?;
        if le16(&sb, 0x38) != 0xEF53 {
            return Err("no ext4 superblock".into());
        }
        let incompat = le32(&sb, 0x60);
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err("its journal needs recovery, so its bitmaps may be stale".into());
        }
        not_dirty_without_journal(&sb)?;
        if incompat & INCOMPAT_META_BG != 0 {
            return Err("meta_bg layout is not supported by the filter".into());
        }
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let log = le32(&sb, 0x18);
        if log > 6 {
            return Err("implausible block size".into());
        }
        let block_size = 1024u64 << log;
        let mut blocks_count = le32(&sb, 0x4) as u64;
        if is64 {
            blocks_count |= (le32(&sb, 0x150) as u64) << 32;
        }
        let first_data_block = le32(&sb, 0x14) as u64;
        let blocks_per_group = le32(&sb, 0x20) as u64;
        let desc_size = if is64 { le16(&sb, 0xFE).max(32) as u64 } else { 32 };
        if blocks_per_group == 0 || blocks_per_group > block_size * 8 || blocks_count * block_size > part_size {
            return Err("superblock geometry does not fit the partition".into());
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        let inodes_per_group = le32(&sb, 0x28) as u64;
        let inode_size = if le32(&sb, 0x4C) == 0 { 128 } else { le16(&sb, 0x58) as u64 };
        Ok(Ext4UnusedFilter {
            groups,
            sparse_super: le32(&sb, 0x64) & 0x1 != 0,
            sparse_super2: le32(&sb, 0x5C) & 0x200 != 0,
            reserved_gdt: le16(&sb, 0xCE) as u64,
            inode_table_blocks: (inodes_per_group * inode_size).div_ceil(block_size),
            file,
            offset,
            block_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            desc_size,
            gdt_offset: offset + (first_data_block + 1) * block_size,
            is64,
            cache: None,
        })
    }

    fn bitmap(&mut self, group: u64) -> io::Result<Option<&[u8]>> {
        if self.cache.as_ref().map(|c| c.0) != Some(group) {
            let mut d = vec![0u8; self.desc_size as usize];
            self.file.read_exact_at(&mut d, self.gdt_offset + group * self.desc_size)?;
            let flags = le16(&d, 0x12);
            let bitmap = if flags & BG_BLOCK_UNINIT != 0 {
                self.uninit_bitmap(group, &d)
            } else {
                let mut at = le32(&d, 0) as u64;
                if self.is64 && self.desc_size >= 64 {
                    at |= (le32(&d, 0x20) as u64) << 32;
                }
                if at == 0 || at >= self.blocks_count {
                    None
                } else {
                    let mut b = vec![0u8; self.block_size as usize];
                    self.file.read_exact_at(&mut b, self.offset + at * self.block_size)?;
                    Some(b)
                }
            };
            self.cache = Some((group, bitmap));
        }
        Ok(self.cache.as_ref().and_then(|c| c.1.as_deref()))
    }

    fn has_super(&self, group: u64) -> bool {
        if !self.sparse_super || group <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < group {
                p *= base;
            }
            p == group
        })
    }

    /// The bitmap the kernel would build for an uninitialised group (`None`: keep it whole).
    fn uninit_bitmap(&self, group: u64, desc: &[u8]) -> Option<Vec<u8>> {
        if self.sparse_super2 {
            return None;
        }
        let start = self.first_data_block + group * self.blocks_per_group;
        let len = self.blocks_per_group.min(self.blocks_count - start);
        let mut bits = vec![0u8; self.block_size as usize];
        let mut mark = |from: u64, count: u64| {
            for b in from..from + count {
                if b >= start && b < start + len {
                    let i = b - start;
                    bits[(i / 8) as usize] |= 1 << (i % 8);
                }
            }
        };
        if self.has_super(group) {
            let gdt = (self.groups * self.desc_size).div_ceil(self.block_size);
            mark(start, 1 + gdt + self.reserved_gdt);
        }
        let field = |lo: usize, hi: usize| {
            let mut v = le32(desc, lo) as u64;
            if self.is64 && self.desc_size >= 64 {
                v |= (le32(desc, hi) as u64) << 32;
            }
            v
        };
        mark(field(0x0, 0x20), 1);
        mark(field(0x4, 0x24), 1);
        mark(field(0x8, 0x28), self.inode_table_blocks);
        Some(bits)
    }
}

impl BlockFilter for Ext4UnusedFilter {
    fn name(&self) -> &'static str {
        "unused"
    }

    fn droppable(&mut self, start: u64, end: u64) -> io::Result<Vec<Range<u64>>> {
        let fs_end = self.offset + self.blocks_count * self.block_size;
        let (s, e) = (start.max(self.offset), end.min(fs_end));
        let mut out: Vec<Range<u64>> = Vec::new();
        if s >= e {
            return Ok(out);
        }
        let bs = self.block_size;
        // Whole filesystem blocks inside the window only.
        let first = (s - self.offset).div_ceil(bs).max(self.first_data_block);
        let last = (e - self.offset) / bs;
        let mut blk = first;
        while blk < last {
            let rel = blk - self.first_data_block;
            let group = rel / self.blocks_per_group;
            let group_end = (self.first_data_block + (group + 1) * self.blocks_per_group).min(last);
            let (offset, fdb, bpg) = (self.offset, self.first_data_block, self.blocks_per_group);
            match self.bitmap(group)? {
                None => blk = group_end,
                Some(bitmap) => {
                    while blk < group_end {
                        let bit = (blk - fdb) % bpg;
                        if bitmap[(bit / 8) as usize] & (1 << (bit % 8)) == 0 {
                            let from = offset + blk * bs;
                            match out.last_mut() {
                                Some(r) if r.end == from => r.end += bs,
                                _ => out.push(from..from + bs),
                            }
                        }
                        blk += 1;
                    }
                }
            }
        }
        Ok(out)
    }
}
