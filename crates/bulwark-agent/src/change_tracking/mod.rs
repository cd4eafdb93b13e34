//! Changed block tracking: which blocks may differ from the previous point, without reading them.
//!
//! A tracker answers with a set of blocks that *may* have changed; every other block is taken
//! from the previous point's index unread. Whenever tracking cannot be trusted the backup falls
//! back to reading everything and comparing digests with the previous index, and says why: a
//! change is never missed silently.

pub mod extents;

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

    pub fn is_changed(&self, block: u64) -> bool {
        block >= self.blocks || self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }
}
