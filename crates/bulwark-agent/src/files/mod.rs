//! File-level backup: a directory tree with its Linux metadata, into the same repository.
//!
//! Content is cut by content-defined chunking (FastCDC, about 1 MiB on average), so an insertion
//! shifts no chunk boundaries but its own, and chunks are shared with other points and other
//! computers. Each entry keeps its type, mode, owner (ids and names), nanosecond timestamps,
//! extended attributes (POSIX ACLs are among them), symlink target, hard links and holes.
//! A file whose inode, size, ctime and mtime are unchanged since the previous point of the same
//! name reuses its chunk list unread.

pub mod backup;
mod chunker;
pub mod glob;
mod meta;
pub mod restore;

pub use backup::{backup_files, FileBackupOptions, FileBackupReport};
pub use restore::{
    list_tree, restore_files, Fail, FileContent, FileRestoreOptions, FileRestoreReport, TreeWriter, WriteOptions,
};
