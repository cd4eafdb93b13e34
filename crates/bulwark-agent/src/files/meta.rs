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

/// How much of an entry's metadata a restore applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaPolicy {
    /// For files from a computer that is not trusted: no owners (the restoring user keeps
    /// them), no set-user-id, set-group-id or (on files) sticky bits, and no extended attributes
    /// that grant privileges or that the kernel and security modules act on (`security.*`,
    /// which holds file capabilities and labels, and `trusted.*`).
    pub safe: bool,
}

impl MetaPolicy {
    /// The permission bits to apply.
    pub fn mode(&self, e: &TreeEntry) -> u32 {
        let mode = e.mode & 0o7777;
        if !self.safe {
            return mode;
        }
        let sticky = if e.kind == EntryKind::Dir { 0 } else { 0o1000 };
        mode & !(0o6000 | sticky)
    }

    fn xattr_wanted(&self, name: &[u8]) -> bool {
        !self.safe || !(name.starts_with(b"security.") || name.starts_with(b"trusted."))
    }
}

/// Applies owner, mode, extended attributes and timestamps, in the order that keeps each:
/// `chown` clears set-id bits, so the mode follows it; times come last. Each piece is applied
/// on its own: one that fails (an owner, when not restoring as root) is a warning and the
/// others still apply. Returns the warnings.
pub fn apply(path: &Path, e: &TreeEntry, policy: MetaPolicy) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut warn = |what: &str, x: std::io::Error| warnings.push(format!("{}: {what}: {x}", path.display()));
    if !policy.safe {
        if let Err(x) = std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid)) {
            warn(&format!("cannot set owner {}:{}", e.uid, e.gid), x);
        }
    }
    if e.kind != EntryKind::Symlink {
        use std::os::unix::fs::PermissionsExt;
        let mode = policy.mode(e);
        if let Err(x) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            warn(&format!("cannot set mode {mode:04o}"), x);
        }
    }
    for (k, v) in e.xattrs.iter().filter(|(k, _)| policy.xattr_wanted(k)) {
        if let Err(x) = rustix::fs::lsetxattr(path, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty()) {
            warn(&format!("cannot set attribute {}", String::from_utf8_lossy(k)), x.into());
        }
    }
    let ts = |t: Time| rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec as _ };
    if let Err(x) = rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps { last_access: ts(e.atime), last_modification: ts(e.mtime) },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        warn("cannot set times", x.into());
    }
    warnings
}
