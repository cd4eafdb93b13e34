//! Swap areas: only the header page is kept (so the area stays a valid swap area after
//! restore); the rest holds nothing a restore needs.

use std::ops::Range;

use super::BlockFilter;

pub struct SwapAreaFilter {
    drop: Range<u64>,
}

const HEADER: u64 = 4096;

impl SwapAreaFilter {
    pub fn new(offset: u64, size: u64) -> Self {
        SwapAreaFilter { drop: offset + HEADER.min(size)..offset + size }
    }
}

impl BlockFilter for SwapAreaFilter {
    fn name(&self) -> &'static str {
        "swap"
    }

    fn droppable(&mut self, start: u64, end: u64) -> std::io::Result<Vec<Range<u64>>> {
        let s = start.max(self.drop.start);
        let e = end.min(self.drop.end);
        Ok(if s < e { std::iter::once(s..e).collect() } else { Vec::new() })
    }
}
