//! Sources and targets: block devices and image files.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{AgentError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    BlockDevice,
    ImageFile,
}

/// A volume opened for reading.
pub struct Volume {
    pub file: File,
    pub size: u64,
    pub kind: VolumeKind,
}

/// Opens a backup source: a block device or a regular (image) file.
pub fn open_source(path: &Path) -> Result<Volume> {
    let err = |what: &str, e: io::Error| AgentError::Source { path: path.into(), what: what.into(), source: e };
    let md = std::fs::metadata(path).map_err(|e| err("cannot open", e))?;
    let ft = md.file_type();
    let kind = if ft.is_block_device() {
        VolumeKind::BlockDevice
    } else if ft.is_file() {
        VolumeKind::ImageFile
    } else {
        return Err(AgentError::BadSource {
            path: path.into(),
            reason: "not a block device or an image file (directories need file-level backup)".into(),
        });
    };
    let mut file = File::open(path).map_err(|e| err("cannot open", e))?;
    let size = file.seek(SeekFrom::End(0)).map_err(|e| err("cannot find its size", e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| err("cannot seek", e))?;
    // Tell the kernel we read it once, front to back: bigger readahead.
    let _ = rustix::fs::fadvise(&file, 0, 0, rustix::fs::Advice::Sequential);
    Ok(Volume { file, size, kind })
}

/// A restore target, opened for writing.
pub struct Target {
    pub file: File,
    /// A new file whose holes already read as zeroes: zero blocks need no writing.
    pub fresh: bool,
    pub kind: VolumeKind,
    /// Its size: a block device may be larger than the volume restored onto it.
    pub size: u64,
}

/// Opens a block device for restore: only if it is not in use, exclusively (the kernel refuses
/// while it is mounted), only if it can hold `size` bytes, and, unless `overwrite`, only if it
/// is empty ([`crate::device_guard`]). Nothing is written here.
pub fn open_device_target(path: &Path, size: u64, overwrite: bool) -> Result<Target> {
    let err = |what: &str, e: io::Error| AgentError::Target { path: path.into(), what: what.into(), source: e };
    crate::device_guard::refuse_if_in_use(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| err("cannot open exclusively (is it mounted or in use?)", e))?;
    let have = file.seek(SeekFrom::End(0)).map_err(|e| err("cannot find its size", e))?;
    if have < size {
        return Err(AgentError::BadTarget {
            path: path.into(),
            reason: format!("too small: it holds {have} bytes, the volume needs {size}; nothing was written"),
        });
    }
    crate::device_guard::refuse_if_not_empty(path, &file, have, overwrite)?;
    Ok(Target { file, fresh: false, kind: VolumeKind::BlockDevice, size: have })
}
