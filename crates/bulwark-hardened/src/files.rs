//! Reaching a repository's files without being led anywhere else, and their immutable attribute.
//!
//! The repository's directories belong to the data mover's user, the very party the service
//! does not trust: it can plant symbolic links, hard links, FIFOs, or rename a directory
//! between two of our calls. So every file is opened relative to an open descriptor of the
//! repository with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, in one step the kernel
//! checks, never by a path checked first and opened later, and the attribute is set through
//! the very descriptor that was checked.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, IFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{HardenedError, Result};

/// The longest key accepted; far above any key the repository writes.
const MAX_KEY_LEN: usize = 1024;

/// Checks a key's shape: a relative `/`-separated path of plain names (no empty, `.` or `..`
/// component). The kernel's checks at open time are the real barrier; this one rejects
/// requests that can only be mistakes or attacks before anything is opened, with a clear
/// message.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let refuse = |why: &str| Err(HardenedError::refused(format!("key {key:?} is refused: {why}")));
    if key.is_empty() {
        return refuse("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return refuse("it is too long");
    }
    if key.starts_with('/') {
        return refuse("it is an absolute path; keys are relative to the repository");
    }
    if key.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return refuse("it has an empty, `.` or `..` component; keys name files inside the repository");
    }
    Ok(())
}

/// Opens a directory by an absolute path in which no component may be a symbolic link, so the
/// path's text says where it leads.
pub(crate) fn open_dir_no_symlinks(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    )
}

/// Opens the file at `key` strictly beneath `repo`, following no symbolic link. `O_NONBLOCK`
/// keeps a planted FIFO from blocking the service; the caller checks the type on the result.
pub(crate) fn open_beneath(repo: impl AsFd, key: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        repo,
        key,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
}

/// Opens the file at `key` for locking: a regular file strictly beneath `repo`, reached without
/// symbolic links, with no other hard link. A second link is the one way a file outside the
/// repository could be reached from inside it (`RESOLVE_BENEATH` sees names, not inodes), and
/// the repository never makes one for a committed object.
pub(crate) fn open_for_lock(repo: impl AsFd, repo_name: &Path, key: &str) -> Result<OwnedFd> {
    let what = || format!("repository {}: key {key}", repo_name.display());
    let fd = match open_beneath(repo, key) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            return Err(HardenedError::refused(format!(
                "{}: the path passes through a symbolic link; only the repository's own files are locked",
                what()
            )))
        }
        Err(Errno::XDEV) => {
            return Err(HardenedError::refused(format!("{}: the path leads outside the repository", what())))
        }
        Err(Errno::NOENT | Errno::NOTDIR) => {
            return Err(HardenedError::new(crate::ErrorKind::NotFound, format!("{}: no such file", what())))
        }
        Err(e) => return Err(HardenedError::io(what(), e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| HardenedError::io(what(), e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(HardenedError::refused(format!("{}: not a regular file", what())));
    }
    if st.st_nlink > 1 {
        return Err(HardenedError::refused(format!(
            "{}: the file has {} hard links; a repository's files have one, so this one may be \
             another file linked into the repository",
            what(),
            st.st_nlink
        )));
    }
    Ok(fd)
}

/// Whether the file has the immutable attribute.
pub(crate) fn is_immutable(fd: impl AsFd) -> rustix::io::Result<bool> {
    Ok(rustix::fs::ioctl_getflags(fd)?.contains(IFlags::IMMUTABLE))
}

/// Sets or clears the immutable attribute, keeping the file's other flags; `Ok(false)` when it
/// already was as asked. Needs `CAP_LINUX_IMMUTABLE`.
pub(crate) fn set_immutable(fd: impl AsFd, on: bool) -> rustix::io::Result<bool> {
    let flags = rustix::fs::ioctl_getflags(&fd)?;
    if flags.contains(IFlags::IMMUTABLE) == on {
        return Ok(false);
    }
    rustix::fs::ioctl_setflags(&fd, if on { flags | IFlags::IMMUTABLE } else { flags - IFlags::IMMUTABLE })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_keys_pass() {
        for key in ["config", "points/7f3a.manifest", "data/3f/3f2a9c", "index/0a1b", "keys/default"] {
            check_key(key).unwrap();
        }
    }

    #[test]
    fn keys_that_could_leave_the_repository_are_refused() {
        for key in ["", "/etc/passwd", "../x", "data/../../x", "data/..", "./config", "data//x", "data/", "a\0b"] {
            let e = check_key(key).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Refused, "{key:?}");
        }
        assert!(check_key(&"a/".repeat(600)).is_err());
    }
}
