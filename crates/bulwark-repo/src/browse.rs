//! A file-level point browsed like a filesystem: one directory, or one file's bytes, at a time.
//!
//! The tree is a depth-first stream with each directory's children sorted, so a directory's
//! entries are found by reading up to the end of its subtree and no further, and the stream is
//! never held whole: memory is one tree piece and one page.

use serde::Serialize;

use crate::chunk::ChunkCodec;
use crate::point::{Manifest, PointKind};
use crate::tree::{EntryKind, TreeEntry};
use crate::{RepoError, Repository, Result};

/// One entry of a directory, as a listing shows it (whatever kind of point it comes from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink`, `char-device`, `block-device`, `fifo`, `socket`.
    pub kind: String,
    pub size: u64,
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One page of a directory listing; `next` is the cursor of the following page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Page {
    pub entries: Vec<FileEntry>,
    pub next: Option<String>,
}

/// The cursor of the page after the entry named `raw`: the name itself when it is UTF-8, else
/// its bytes in hex behind `hex:` (as is a UTF-8 name that starts so), so a cursor names
/// exactly one name whatever bytes names hold.
pub fn encode_cursor(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) if !s.starts_with("hex:") => s.to_string(),
        _ => format!("hex:{}", hex::encode(raw)),
    }
}

/// The name a cursor of [`encode_cursor`] stands for.
pub fn decode_cursor(c: &str) -> Vec<u8> {
    c.strip_prefix("hex:").and_then(|h| hex::decode(h).ok()).unwrap_or_else(|| c.as_bytes().to_vec())
}

/// A path as the tree stores it: relative, no empty or `.` components, `/` the root.
pub fn tree_path(path: &str) -> std::result::Result<Vec<u8>, String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} has a '..' component")),
            c => out.push(c),
        }
    }
    Ok(out.join("/").into_bytes())
}

fn parent_and_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// Whether `path` is `dir` or under it.
fn within(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

fn entry_of(e: &TreeEntry) -> FileEntry {
    let kind = match e.kind {
        EntryKind::File | EntryKind::HardLink => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::CharDev => "char-device",
        EntryKind::BlockDev => "block-device",
        EntryKind::Fifo => "fifo",
    };
    FileEntry {
        name: String::from_utf8_lossy(parent_and_name(&e.path).1).into_owned(),
        kind: kind.into(),
        size: e.size,
        mode: e.mode & 0o7777,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime.sec,
        target: (e.kind == EntryKind::Symlink).then(|| String::from_utf8_lossy(&e.target).into_owned()),
    }
}

fn not_found(m: &Manifest, repo: &Repository, what: String) -> RepoError {
    RepoError::Invalid { repo: repo.label(), reason: format!("point {}: {what}", m.id) }
}

fn files_point(repo: &Repository, m: &Manifest) -> Result<()> {
    if m.kind != PointKind::Files {
        return Err(not_found(m, repo, "is a volume point, not a file-level point".into()));
    }
    Ok(())
}

/// The entries of directory `path` in file-level point `m`, after the name `cursor`, at most
/// `limit` of them.
pub fn list_dir(repo: &Repository, m: &Manifest, path: &str, cursor: Option<&str>, limit: usize) -> Result<Page> {
    files_point(repo, m)?;
    let dir = tree_path(path).map_err(|e| not_found(m, repo, e))?;
    let mut tree = repo.tree_cursor(m)?;
    let mut seen_dir = dir.is_empty();
    let mut page = Page::default();
    let after = cursor.map(decode_cursor);
    let mut last = Vec::new();
    while let Some(e) = tree.next_entry()? {
        if e.path == dir {
            if e.kind != EntryKind::Dir {
                return Err(not_found(m, repo, format!("{path:?} is not a directory")));
            }
            seen_dir = true;
            continue;
        }
        if !within(&e.path, &dir) {
            if seen_dir {
                break; // past the directory's subtree
            }
            continue;
        }
        let (parent, name) = parent_and_name(&e.path);
        if parent != dir.as_slice() || after.as_ref().is_some_and(|c| name <= c.as_slice()) {
            continue;
        }
        if page.entries.len() == limit {
            page.next = Some(encode_cursor(&last));
            break;
        }
        last = name.to_vec();
        page.entries.push(entry_of(&e));
    }
    if !seen_dir {
        return Err(not_found(m, repo, format!("has no directory {path:?}")));
    }
    Ok(page)
}

/// The tree entry at `path` (a hard link resolved to its file).
fn find(repo: &Repository, m: &Manifest, path: &str) -> Result<TreeEntry> {
    let want = tree_path(path).map_err(|e| not_found(m, repo, e))?;
    let mut tree = repo.tree_cursor(m)?;
    while let Some(e) = tree.next_entry()? {
        if e.path == want {
            return Ok(e);
        }
    }
    Err(not_found(m, repo, format!("has no file {path:?}")))
}

/// Metadata of the entry at `path` of file-level point `m`.
pub fn stat(repo: &Repository, m: &Manifest, path: &str) -> Result<FileEntry> {
    files_point(repo, m)?;
    Ok(entry_of(&find(repo, m, path)?))
}

/// A regular file of a file-level point, read at any offset: its entry found once, the chunk
/// decoded last kept (downloads and archives read on where they stopped).
pub struct FileReader {
    repo: Repository,
    point: String,
    entry: TreeEntry,
    codec: ChunkCodec,
    last: Option<(crate::ChunkId, Vec<u8>)>,
}

/// The regular file at `path` of file-level point `m`, opened for reading.
pub fn open_file(repo: &Repository, m: &Manifest, path: &str) -> Result<FileReader> {
    files_point(repo, m)?;
    let e = find(repo, m, path)?;
    if !matches!(e.kind, EntryKind::File | EntryKind::HardLink) {
        return Err(not_found(m, repo, format!("{path:?} is not a regular file")));
    }
    Ok(FileReader::new(repo, m, e))
}

impl FileReader {
    /// A reader of the file entry `entry` of point `m` (found in its tree by the caller).
    pub fn new(repo: &Repository, m: &Manifest, entry: TreeEntry) -> FileReader {
        let repo = repo.for_point(m);
        let codec = repo.codec(m.compression);
        FileReader { repo, point: m.id.to_string(), entry, codec, last: None }
    }

    pub fn size(&self) -> u64 {
        self.entry.size
    }

    /// Up to `len` bytes from `offset` (fewer only at the end of the file).
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.entry.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let extents = &self.entry.extents;
            let x = extents
                .iter()
                .find(|x| x.offset <= pos && pos < x.offset.saturating_add(x.length))
                .or_else(|| extents.iter().filter(|x| x.offset > pos).min_by_key(|x| x.offset))
                .copied();
            match x {
                // A hole (sparse file) up to the next extent, or to the end.
                Some(x) if x.offset > pos => {
                    let n = x.offset.min(end) - pos;
                    out.resize(out.len() + n as usize, 0);
                    pos += n;
                }
                None => {
                    out.resize(out.len() + (end - pos) as usize, 0);
                    pos = end;
                }
                Some(x) => {
                    let n = x.offset.saturating_add(x.length).min(end) - pos;
                    let within = (pos - x.offset) as usize;
                    match &x.chunk {
                        None => out.resize(out.len() + n as usize, 0),
                        Some(id) => {
                            if self.last.as_ref().is_none_or(|(l, _)| l != id) {
                                let data = self.repo.read_chunk(&mut self.codec, id)?;
                                self.last = Some((*id, data));
                            }
                            let data = &self.last.as_ref().expect("just read").1;
                            let piece =
                                data.get(within..within + n as usize).ok_or_else(|| RepoError::DamagedPoint {
                                    repo: self.repo.label(),
                                    point: self.point.clone(),
                                    reason: format!(
                                        "chunk {id} is shorter than the extent of {:?} it holds",
                                        self.entry.path_lossy()
                                    ),
                                })?;
                            out.extend_from_slice(piece);
                        }
                    }
                    pos += n;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_dot_dot_refused() {
        assert_eq!(tree_path("/").unwrap(), b"");
        assert_eq!(tree_path("/etc//ssh/./").unwrap(), b"etc/ssh");
        assert!(tree_path("/etc/../root").is_err());
        assert!(within(b"etc/ssh/x", b"etc"));
        assert!(!within(b"etcetera", b"etc"));
        assert_eq!(parent_and_name(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
    }

    #[test]
    fn cursors_name_exactly_one_name() {
        for raw in [&b"plain"[..], b"\xc3", b"\xff\xfe", b"hex:41", "caf\u{e9}".as_bytes()] {
            assert_eq!(decode_cursor(&encode_cursor(raw)), raw, "{raw:?}");
        }
        assert_eq!(encode_cursor(b"plain"), "plain");
    }
}
