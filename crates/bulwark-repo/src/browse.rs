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
        if parent != dir.as_slice() || cursor.is_some_and(|c| name <= c.as_bytes()) {
            continue;
        }
        if page.entries.len() == limit {
            page.next = page.entries.last().map(|l| l.name.clone());
            break;
        }
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

/// Up to `len` bytes from `offset` of the regular file at `path`, and the file's size.
pub fn read_file(repo: &Repository, m: &Manifest, path: &str, offset: u64, len: usize) -> Result<(u64, Vec<u8>)> {
    files_point(repo, m)?;
    let e = find(repo, m, path)?;
    if !matches!(e.kind, EntryKind::File | EntryKind::HardLink) {
        return Err(not_found(m, repo, format!("{path:?} is not a regular file")));
    }
    let end = offset.saturating_add(len as u64).min(e.size);
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let repo = repo.for_point(m);
    let mut codec: ChunkCodec = repo.codec(m.compression);
    let mut pos = offset;
    while pos < end {
        let x = e
            .extents
            .iter()
            .find(|x| x.offset <= pos && pos < x.offset + x.length)
            .or_else(|| e.extents.iter().filter(|x| x.offset > pos).min_by_key(|x| x.offset));
        match x {
            // A hole (sparse file) up to the next extent.
            Some(x) if x.offset > pos => {
                let n = (x.offset.min(end) - pos) as usize;
                out.resize(out.len() + n, 0);
                pos += n as u64;
            }
            None => {
                out.resize(out.len() + (end - pos) as usize, 0);
                pos = end;
            }
            Some(x) => {
                let n = (x.offset + x.length).min(end) - pos;
                let within = (pos - x.offset) as usize;
                match &x.chunk {
                    None => out.resize(out.len() + n as usize, 0),
                    Some(id) => {
                        let data = repo.read_chunk(&mut codec, id)?;
                        let piece = data.get(within..within + n as usize).ok_or_else(|| RepoError::DamagedPoint {
                            repo: repo.label(),
                            point: m.id.to_string(),
                            reason: format!("chunk {id} is shorter than the extent of {path:?} it holds"),
                        })?;
                        out.extend_from_slice(piece);
                    }
                }
                pos += n;
            }
        }
    }
    Ok((e.size, out))
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
}
