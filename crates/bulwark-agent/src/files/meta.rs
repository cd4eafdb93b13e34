//! Reading and applying Linux metadata.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bulwark_repo::tree::{EntryKind, Time, TreeEntry};

/// User and group names by id, from this system's databases.
pub struct Names {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl Names {
    pub fn load() -> Self {
        let parse = |file: &str| -> HashMap<u32, Vec<u8>> {
            std::fs::read(file)
                .unwrap_or_default()
                .split(|&b| b == b'\n')
                .filter_map(|l| {
                    let f: Vec<&[u8]> = l.split(|&b| b == b':').collect();
                    let id = std::str::from_utf8(f.get(2)?).ok()?.parse().ok()?;
                    Some((id, f[0].to_vec()))
                })
                .collect()
        };
        Names { users: parse("/etc/passwd"), groups: parse("/etc/group") }
    }
}

fn time(sec: i64, nsec: i64) -> Time {
    Time { sec, nsec: nsec as u32 }
}

/// The entry for `path` (relative path `rel`) from its `lstat`; `None` for sockets (which a
/// restore cannot recreate meaningfully).
pub fn entry_for(abs: &Path, rel: Vec<u8>, md: &Metadata, names: &Names) -> Option<TreeEntry> {
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_char_device() {
        EntryKind::CharDev
    } else if ft.is_block_device() {
        EntryKind::BlockDev
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        return None;
    };
    let mut e = TreeEntry::new(kind, rel);
    e.mode = md.mode();
    e.uid = md.uid();
    e.gid = md.gid();
    e.user = names.users.get(&e.uid).cloned().unwrap_or_default();
    e.group = names.groups.get(&e.gid).cloned().unwrap_or_default();
    e.atime = time(md.atime(), md.atime_nsec());
    e.mtime = time(md.mtime(), md.mtime_nsec());
    e.ctime = time(md.ctime(), md.ctime_nsec());
    e.ino = md.ino();
    e.size = if kind == EntryKind::File { md.size() } else { 0 };
    e.rdev = md.rdev();
    e.xattrs = read_xattrs(abs);
    if kind == EntryKind::Symlink {
        e.target = std::fs::read_link(abs).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
    }
    Some(e)
}

/// Extended attributes (without following a symlink); none where the filesystem has none.
pub fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < 1 << 20 => names.resize(names.len() * 4, 0),
            Err(_) => return Vec::new(),
        }
    };
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        loop {
            match rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value) {
                Ok(n) => {
                    value.truncate(n);
                    out.push((name.to_vec(), value));
                    break;
                }
                Err(rustix::io::Errno::RANGE) if value.len() < 1 << 24 => value.resize(value.len() * 4, 0),
                Err(_) => break,
            }
        }
    }
    out.sort();
    out
}

/// Applies owner, mode, extended attributes and timestamps, in the order that keeps each:
/// `chown` clears set-id bits, so the mode follows it; times come last.
pub fn apply(path: &Path, e: &TreeEntry) -> Result<(), String> {
    let err = |what: &str, x: std::io::Error| format!("{}: {what}: {x}", path.display());
    std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid)).map_err(|x| err("cannot set owner", x))?;
    if e.kind != EntryKind::Symlink {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(|x| err("cannot set mode", x))?;
    }
    for (k, v) in &e.xattrs {
        rustix::fs::lsetxattr(path, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty())
            .map_err(|x| err(&format!("cannot set attribute {}", String::from_utf8_lossy(k)), x.into()))?;
    }
    let ts = |t: Time| rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec as _ };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps { last_access: ts(e.atime), last_modification: ts(e.mtime) },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|x| err("cannot set times", x.into()))
}
