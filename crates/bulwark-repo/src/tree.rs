//! The file tree of a file-level restore point.
//!
//! A tree is a stream of [`TreeEntry`] records in depth-first order, each directory's children
//! sorted by name bytes (so two trees can be merged in one pass, and a path's parent always
//! precedes it). The stream is cut into 1 MiB pieces stored as ordinary chunks — compressed,
//! encrypted and deduplicated like file data — and the point's block index lists the pieces.
//! Names never leave the repository unencrypted, and reading a tree needs memory for one piece.
//!
//! Record: `u32 length ‖ body`. Body: kind (u8), path, mode, uid, gid, user and group names,
//! atime, mtime, ctime (i64 s + u32 ns each), inode, size, rdev, xattrs, then per kind: a file's
//! extents (offset, length, chunk or zero), a symlink's target, a hard link's first path (plus
//! the file's extents, so a partial restore can still produce the content).

use std::cmp::Ordering;

use crate::chunk::ChunkId;

/// Size of the pieces the tree stream is cut into.
pub const PIECE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    HardLink,
    CharDev,
    BlockDev,
    Fifo,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::HardLink => 3,
            EntryKind::CharDev => 4,
            EntryKind::BlockDev => 5,
            EntryKind::Fifo => 6,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::HardLink,
            4 => EntryKind::CharDev,
            5 => EntryKind::BlockDev,
            6 => EntryKind::Fifo,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::HardLink => "hardlink",
            EntryKind::CharDev => "chardev",
            EntryKind::BlockDev => "blockdev",
            EntryKind::Fifo => "fifo",
        }
    }
}

/// A timestamp with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// One piece of a file's content: `length` bytes at `offset`, stored as a chunk or all zero
/// (restored as a hole). Ranges not covered by any extent are holes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    pub offset: u64,
    pub length: u64,
    pub chunk: Option<ChunkId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub kind: EntryKind,
    /// Path relative to the backup's root, as raw bytes (any name Linux allows); the root
    /// itself is the empty path.
    pub path: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Vec<u8>,
    pub group: Vec<u8>,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub ino: u64,
    pub size: u64,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub extents: Vec<FileExtent>,
    /// Symlink target, or a hard link's first path.
    pub target: Vec<u8>,
}

impl TreeEntry {
    pub fn new(kind: EntryKind, path: Vec<u8>) -> Self {
        TreeEntry {
            kind,
            path,
            mode: 0,
            uid: 0,
            gid: 0,
            user: Vec::new(),
            group: Vec::new(),
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
            ino: 0,
            size: 0,
            rdev: 0,
            xattrs: Vec::new(),
            extents: Vec::new(),
            target: Vec::new(),
        }
    }

    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(self.kind.code());
        put_bytes(out, &self.path);
        for v in [self.mode, self.uid, self.gid] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_bytes(out, &self.user);
        put_bytes(out, &self.group);
        for t in [self.atime, self.mtime, self.ctime] {
            out.extend_from_slice(&t.sec.to_le_bytes());
            out.extend_from_slice(&t.nsec.to_le_bytes());
        }
        for v in [self.ino, self.size, self.rdev] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.xattrs.len() as u32).to_le_bytes());
        for (k, v) in &self.xattrs {
            put_bytes(out, k);
            put_bytes(out, v);
        }
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.length.to_le_bytes());
            match e.chunk {
                Some(id) => {
                    out.push(1);
                    out.extend_from_slice(&id.0);
                }
                None => out.push(0),
            }
        }
        put_bytes(out, &self.target);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes one record body (without its length prefix).
    pub fn decode(b: &[u8]) -> Result<TreeEntry, String> {
        let mut r = Reader { b, at: 0 };
        let kind = EntryKind::from_code(r.u8()?).ok_or("unknown entry kind")?;
        let path = r.bytes()?;
        let mut e = TreeEntry::new(kind, path);
        e.mode = r.u32()?;
        e.uid = r.u32()?;
        e.gid = r.u32()?;
        e.user = r.bytes()?;
        e.group = r.bytes()?;
        for t in [&mut e.atime, &mut e.mtime, &mut e.ctime] {
            t.sec = r.u64()? as i64;
            t.nsec = r.u32()?;
        }
        e.ino = r.u64()?;
        e.size = r.u64()?;
        e.rdev = r.u64()?;
        let n = r.u32()? as usize;
        for _ in 0..n.min(1 << 16) {
            let k = r.bytes()?;
            let v = r.bytes()?;
            e.xattrs.push((k, v));
        }
        let n = r.u32()? as usize;
        if n > b.len() / 17 {
            return Err("implausible extent count".into());
        }
        for _ in 0..n {
            let offset = r.u64()?;
            let length = r.u64()?;
            let chunk = match r.u8()? {
                1 => Some(ChunkId(r.take(32)?.try_into().expect("32 bytes"))),
                0 => None,
                _ => return Err("bad extent marker".into()),
            };
            e.extents.push(FileExtent { offset, length, chunk });
        }
        e.target = r.bytes()?;
        if r.at != b.len() {
            return Err("trailing bytes in a tree record".into());
        }
        Ok(e)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let s = self.b.get(self.at..self.at.checked_add(n).ok_or("overflow")?).ok_or("truncated tree record")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// Depth-first order with sorted children: compares paths component by component.
pub fn tree_order(a: &[u8], b: &[u8]) -> Ordering {
    let mut x = a.split(|&c| c == b'/').filter(|c| !c.is_empty());
    let mut y = b.split(|&c| c == b'/').filter(|c| !c.is_empty());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => match p.cmp(q) {
                Ordering::Equal => continue,
                o => return o,
            },
        }
    }
}

/// Splits a tree stream into records as pieces arrive.
#[derive(Default)]
pub struct RecordSplitter {
    buf: Vec<u8>,
}

impl RecordSplitter {
    /// Feeds the next piece; returns the complete records it finished.
    pub fn feed(&mut self, piece: &[u8]) -> Result<Vec<TreeEntry>, String> {
        self.buf.extend_from_slice(piece);
        let mut out = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let len = u32::from_le_bytes(self.buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            if self.buf.len() - at - 4 < len {
                break;
            }
            out.push(TreeEntry::decode(&self.buf[at + 4..at + 4 + len])?);
            at += 4 + len;
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// Whether the stream ended on a record boundary.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_odd_names() {
        let mut e = TreeEntry::new(EntryKind::File, b"dir/new\nline/\xff\xfe".to_vec());
        e.xattrs.push((b"user.k".to_vec(), vec![0, 1, 2]));
        e.extents.push(FileExtent { offset: 4096, length: 10, chunk: Some(ChunkId([7; 32])) });
        e.extents.push(FileExtent { offset: 1 << 20, length: 5, chunk: None });
        e.mtime = Time { sec: -5, nsec: 999_999_999 };
        let mut buf = Vec::new();
        e.encode(&mut buf);
        e.encode(&mut buf);
        let mut s = RecordSplitter::default();
        let mut got = s.feed(&buf[..7]).unwrap();
        got.extend(s.feed(&buf[7..]).unwrap());
        assert_eq!(got, vec![e.clone(), e]);
        assert!(s.is_clean());
    }

    #[test]
    fn order_is_depth_first_with_sorted_children() {
        let mut v: Vec<&[u8]> = vec![b"a/b", b"a", b"a-b", b"", b"a/b/c", b"b"];
        v.sort_by(|x, y| tree_order(x, y));
        assert_eq!(v, vec![&b""[..], b"a", b"a/b", b"a/b/c", b"a-b", b"b"]);
    }
}
