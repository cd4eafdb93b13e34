//! Extraction: entries of a volume's filesystem written into a directory by the file-level
//! restore's [`TreeWriter`], so both restores follow one set of rules (conflicts, `overwrite`,
//! `safe`, staging, never a path outside the target).
//!
//! The walk is depth first, one directory open per level and its entries fetched in batches,
//! so memory follows the depth of the tree, not its size; a file's content is copied in pieces
//! with the next piece already asked for. Damaged filesystems are bounded: no deeper than
//! [`MAX_DEPTH`] levels, no more directories than the filesystem has inodes (a directory that
//! contains its own ancestor would otherwise be walked forever).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bulwark_agent::files::{Fail, FileContent, TreeWriter, WriteOptions};
use bulwark_agent::AgentError;
use bulwark_repo::tree::{EntryKind as TreeKind, Time, TreeEntry};

use crate::path::{join, parse};
use crate::{BrowseError, Browser, Entry, EntryKind, ExtractOptions, ExtractReport, Progress, Result};

/// Deeper than this a tree is taken for a loop (the reader resolves paths of at most 1000
/// components; a Linux path of one-letter names is at most 2048 deep).
pub const MAX_DEPTH: usize = 990;
/// The longest path Linux takes in one call, with its terminating NUL.
const PATH_MAX: usize = 4096;
/// Bytes of a file read from the image per request.
const PIECE: usize = 1 << 20;
/// Directory entries fetched per request.
const BATCH: usize = 512;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn abs(rel: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1);
    p.push(b'/');
    p.extend_from_slice(rel);
    p
}

fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn cancelled(c: &Option<Arc<AtomicBool>>) -> bool {
    c.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
}

fn kind_words(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Char => "character device",
        EntryKind::Block => "block device",
        EntryKind::Fifo => "fifo",
        EntryKind::Socket => "socket",
    }
}

pub fn extract(
    b: &Browser,
    paths: &[String],
    to: &Path,
    opts: &ExtractOptions,
    progress: Progress,
) -> Result<ExtractReport> {
    let started = Instant::now();
    let stat = |rel: &[u8], asked: &str| {
        let p = abs(rel);
        let asked = asked.to_string();
        b.worker.call(move |st| st.stat(&p, &asked))
    };
    // Every path first, before anything is written: present, and reached through directories
    // only (a symlink on the way would put the entry at a place the filesystem does not have it).
    let all = ["/".to_string()];
    let mut sel = Vec::new();
    for p in if paths.is_empty() { &all[..] } else { paths } {
        let comps =
            parse(p).map_err(|reason| BrowseError::BadPath { what: b.what.clone(), path: p.clone(), reason })?;
        for i in 1..comps.len() {
            let prefix = join(&comps[..i]);
            let e = stat(&prefix[1..], p)?;
            if e.kind != EntryKind::Dir {
                return Err(BrowseError::BadPath {
                    what: b.what.clone(),
                    path: p.clone(),
                    reason: format!(
                        "{} is a {}, not a directory; give the path it leads to",
                        lossy(&prefix),
                        kind_words(e.kind)
                    ),
                });
            }
        }
        stat(&join(&comps)[1..], p)?;
        sel.push(comps);
    }
    // Depth-first order, each path once, none under another.
    sel.sort();
    sel.dedup();
    let sel: Vec<Vec<Vec<u8>>> =
        sel.iter().filter(|s| !sel.iter().any(|o| o.len() < s.len() && s.starts_with(o))).cloned().collect();

    let wopts = WriteOptions { overwrite: opts.overwrite, safe: opts.safe };
    let writer = TreeWriter::new(to, &wopts, b.what.clone(), String::new(), progress)?;
    let mut walk = Walk {
        b,
        w: writer,
        content: Content { b, cancel: opts.cancel.clone() },
        cancel: opts.cancel.clone(),
        links: HashMap::new(),
        dirs: 0,
        // The reader resolves paths of its own up to PATH_MAX too: a margin keeps the first
        // refusal this one, which says why.
        room: PATH_MAX.saturating_sub(to.as_os_str().len() + 2).min(PATH_MAX - 64),
    };
    let root = stat(b"", "/")?;
    if sel.iter().any(|s| s.is_empty()) {
        walk.walk(Vec::new(), root)?;
    } else {
        walk.emit(Vec::new(), &root)?;
        let mut chain: Vec<Vec<u8>> = Vec::new();
        for s in &sel {
            let parent = &s[..s.len() - 1];
            let common = chain.iter().zip(parent).take_while(|(a, b)| a == b).count();
            chain.truncate(common);
            for c in &parent[common..] {
                chain.push(c.clone());
                let rel = join(&chain)[1..].to_vec();
                let e = stat(&rel, &lossy(&rel))?;
                walk.emit(rel, &e)?;
            }
            let rel = join(s)[1..].to_vec();
            let e = stat(&rel, &lossy(&rel))?;
            walk.walk(rel, e)?;
        }
    }
    let mut report = walk.w.finish();
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A directory being walked.
struct Open {
    handle: u64,
    rel: Vec<u8>,
    pending: VecDeque<std::result::Result<Entry, (Vec<u8>, String)>>,
    done: bool,
}

struct Walk<'b, 'w> {
    b: &'b Browser,
    w: TreeWriter<'w>,
    content: Content<'b>,
    cancel: Option<Arc<AtomicBool>>,
    /// The first path each file inode was restored at: its other names become hard links.
    links: HashMap<u64, Vec<u8>>,
    dirs: u64,
    /// The longest relative path that still fits in [`PATH_MAX`] under the target.
    room: usize,
}

impl Walk<'_, '_> {
    /// Hands `e` (at `rel`) to the writer; whether it is a directory to descend into.
    fn emit(&mut self, rel: Vec<u8>, e: &Entry) -> Result<bool> {
        let depth = rel.split(|&c| c == b'/').count();
        if rel.len() > self.room || depth > MAX_DEPTH {
            let why = format!(
                "not restored: it lies more than {MAX_DEPTH} directories deep or its path under the target would be \
                 longer than the {PATH_MAX} bytes Linux takes: the filesystem's directories probably loop (it is \
                 damaged)"
            );
            self.w.fail(&rel, why);
            return Ok(false);
        }
        let mut target = Vec::new();
        let kind = match e.kind {
            EntryKind::Dir => TreeKind::Dir,
            EntryKind::Symlink => {
                target = e.raw_target.clone().unwrap_or_default();
                TreeKind::Symlink
            }
            EntryKind::Fifo => TreeKind::Fifo,
            EntryKind::File => match e.inode.and_then(|i| self.links.get(&i)) {
                Some(first) => {
                    target = first.clone();
                    TreeKind::HardLink
                }
                None => {
                    if let Some(i) = e.inode {
                        self.links.insert(i, rel.clone());
                    }
                    TreeKind::File
                }
            },
            EntryKind::Char | EntryKind::Block => {
                self.w.warn(format!(
                    "{}: {} not restored: the device numbers of nodes in volume points cannot be read yet",
                    lossy(&rel),
                    kind_words(e.kind)
                ));
                return Ok(false);
            }
            // As a file-level backup leaves them out: a socket is made by the program serving it.
            EntryKind::Socket => return Ok(false),
        };
        let mut t = TreeEntry::new(kind, rel);
        t.mode = e.mode;
        (t.uid, t.gid) = (e.uid, e.gid);
        t.atime = Time { sec: e.atime, nsec: e.atime_nsec };
        t.mtime = Time { sec: e.mtime, nsec: e.mtime_nsec };
        t.ino = e.inode.unwrap_or(0);
        t.size = if kind == TreeKind::File { e.size } else { 0 };
        t.target = target;
        self.w.entry(t, &mut self.content)?;
        Ok(kind == TreeKind::Dir)
    }

    /// `e` at `rel` and, for a directory, everything under it.
    fn walk(&mut self, rel: Vec<u8>, e: Entry) -> Result<()> {
        if !self.emit(rel.clone(), &e)? {
            return Ok(());
        }
        let mut stack = Vec::new();
        self.open(&mut stack, rel)?;
        while let Some(top) = stack.last_mut() {
            if cancelled(&self.cancel) {
                return Err(AgentError::Cancelled.into());
            }
            if top.pending.is_empty() && !top.done {
                let h = top.handle;
                match self.b.worker.call(move |st| st.next_entries(h, BATCH)) {
                    Ok((batch, done)) => {
                        top.pending.extend(batch);
                        top.done = done;
                    }
                    Err(err @ BrowseError::Reader { .. }) => return Err(err),
                    Err(err) => {
                        let rel = top.rel.clone();
                        top.done = true;
                        self.w.fail(&rel, format!("its entries could not all be read: {err}"));
                    }
                }
                continue;
            }
            let parent = top.rel.clone();
            match top.pending.pop_front() {
                None => {
                    let h = top.handle;
                    stack.pop();
                    let _ = self.b.worker.send(move |st| {
                        st.close_dir(h);
                        Ok(())
                    });
                }
                Some(Err((name, reason))) => self.w.fail(&child(&parent, &name), reason),
                Some(Ok(e)) => {
                    let rel = child(&parent, &e.raw_name);
                    if self.emit(rel.clone(), &e)? {
                        self.open(&mut stack, rel)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the directory at `rel` for the walk, within the bounds on damaged filesystems.
    fn open(&mut self, stack: &mut Vec<Open>, rel: Vec<u8>) -> Result<()> {
        self.dirs += 1;
        if self.dirs > self.b.inodes {
            return Err(BrowseError::Corrupt {
                what: self.b.what.clone(),
                reason: format!(
                    "the walk met more directories than the filesystem has inodes ({}): its directories loop",
                    self.b.inodes
                ),
            });
        }
        let p = abs(&rel);
        match self.b.worker.call(move |st| st.open_dir(&p)) {
            Ok(handle) => stack.push(Open { handle, rel, pending: VecDeque::new(), done: false }),
            Err(err @ BrowseError::Reader { .. }) => return Err(err),
            Err(err) => self.w.fail(&rel, format!("its entries could not be read: {err}")),
        }
        Ok(())
    }
}

/// The content of files, read from the image on the browser's thread.
struct Content<'b> {
    b: &'b Browser,
    cancel: Option<Arc<AtomicBool>>,
}

impl Content<'_> {
    fn copy(&self, h: u64, size: u64, f: &File, progress: Progress) -> std::result::Result<u64, Fail<BrowseError>> {
        let fatal_or = |err: BrowseError, what: String| match err {
            BrowseError::Reader { .. } => Fail::Fatal(err),
            err => Fail::Entry(format!("{what}: {err}")),
        };
        let mut pending = VecDeque::new();
        let (mut asked, mut at, mut written) = (0u64, 0u64, 0u64);
        loop {
            // One piece ahead: the image is read while the previous piece is written.
            while asked < size && pending.len() < 2 {
                pending.push_back(self.b.worker.send(move |st| st.read_file(h, PIECE)));
                asked += PIECE as u64;
            }
            let Some(rx) = pending.pop_front() else { break };
            if cancelled(&self.cancel) {
                return Err(Fail::Fatal(AgentError::Cancelled.into()));
            }
            let piece =
                self.b.worker.wait(rx).map_err(|e| fatal_or(e, format!("content at offset {at} unreadable")))?;
            if piece.is_empty() {
                break;
            }
            written += write_data(f, &piece, at).map_err(|e| Fail::Entry(format!("write failed: {e}")))?;
            at += piece.len() as u64;
            progress(piece.len() as u64);
        }
        if at != size {
            return Err(Fail::Entry(format!(
                "the file ends after {at} of its {size} bytes in the image; the filesystem is damaged"
            )));
        }
        Ok(written)
    }
}

/// Writes the blocks of `piece` that are not all zeroes (the file was sized beforehand, so
/// the others stay holes); returns the bytes written.
fn write_data(f: &File, piece: &[u8], at: u64) -> std::io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut written = 0;
    let mut run: Option<usize> = None;
    let mut flush = |from: usize, to: usize| -> std::io::Result<()> {
        f.write_all_at(&piece[from..to], at + from as u64)?;
        written += (to - from) as u64;
        Ok(())
    };
    for (i, block) in piece.chunks(BLOCK).enumerate() {
        let start = i * BLOCK;
        match (block.iter().all(|&c| c == 0), run) {
            (false, None) => run = Some(start),
            (true, Some(from)) => {
                flush(from, start)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(from) = run {
        flush(from, piece.len())?;
    }
    Ok(written)
}

impl FileContent for Content<'_> {
    type Fatal = BrowseError;

    fn write(&mut self, e: &TreeEntry, f: &File, progress: Progress) -> std::result::Result<u64, Fail<BrowseError>> {
        let p = abs(&e.path);
        let h = match self.b.worker.call(move |st| st.open_file(&p)) {
            Ok(h) => h,
            Err(err @ BrowseError::Reader { .. }) => return Err(Fail::Fatal(err)),
            Err(err) => return Err(Fail::Entry(format!("cannot be opened in the image: {err}"))),
        };
        let r = self.copy(h, e.size, f, progress);
        let _ = self.b.worker.send(move |st| {
            st.close_file(h);
            Ok(())
        });
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_left_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("f")).unwrap();
        let mut piece = vec![0u8; 5 * 4096 + 100];
        piece[4096..4096 + 10].fill(7);
        piece[5 * 4096..].fill(9);
        f.set_len(piece.len() as u64 + 8192).unwrap();
        let n = write_data(&f, &piece, 8192).unwrap();
        assert_eq!(n, 4096 + 100);
        let mut back = vec![1u8; piece.len()];
        f.read_exact_at(&mut back, 8192).unwrap();
        assert_eq!(back, piece);
    }
}
