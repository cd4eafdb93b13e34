//! What stands between a mistyped device name and a destroyed disk: a restore onto a block
//! device is refused while the device or one of its partitions is mounted, used as swap or held
//! by another driver (LVM, RAID, dm-crypt), and, unless the operator says `--overwrite`, while
//! it holds anything at all (a filesystem, a partition table, any non-zero byte where those
//! live). File targets have always needed `--overwrite` to be replaced; a device deserves no less.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::error::{AgentError, Result};

/// How much of each end of a device is read to decide whether it is empty: partition tables,
/// filesystem superblocks, LVM, LUKS and RAID metadata all lie in the first MiB, and a GPT
/// backup header and old-style RAID superblocks in the last.
const LOOK: u64 = 1 << 20;

/// Refuses a device that is mounted, an active swap area or held by another driver, naming
/// where. Checked before the device is opened, so the message says more than the kernel's
/// "Device or resource busy".
pub fn refuse_if_in_use(path: &Path) -> Result<()> {
    let Ok(md) = std::fs::metadata(path) else { return Ok(()) };
    let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    let mut uses = Vec::new();
    // The device itself, then each of its partitions.
    let mut devices = vec![(format!("{major}:{minor}"), path.display().to_string(), sys.clone())];
    for part in std::fs::read_dir(&sys).into_iter().flatten().flatten() {
        let p = part.path();
        if p.join("partition").exists() {
            if let Ok(dev) = std::fs::read_to_string(p.join("dev")) {
                let name = format!("/dev/{}", part.file_name().to_string_lossy().replace('!', "/"));
                devices.push((dev.trim().to_string(), name, p));
            }
        }
    }
    for (major_minor, name, sys) in &devices {
        for at in crate::inventory::mount_points_of(major_minor, name) {
            uses.push(if at == "[SWAP]" {
                format!("{name} is active swap")
            } else {
                format!("{name} is mounted at {at}")
            });
        }
        for holder in std::fs::read_dir(sys.join("holders")).into_iter().flatten().flatten() {
            uses.push(format!("{name} is held by {}", holder.file_name().to_string_lossy()));
        }
    }
    if uses.is_empty() {
        return Ok(());
    }
    Err(AgentError::BadTarget {
        path: path.into(),
        reason: format!(
            "is in use: {}; a restore never writes over a device in use (unmount it or stop what holds it); \
             nothing was written",
            uses.join(", ")
        ),
    })
}

/// Refuses a device that holds anything, unless `overwrite`; says what it found.
pub fn refuse_if_not_empty(path: &Path, file: &File, size: u64, overwrite: bool) -> Result<()> {
    if overwrite {
        return Ok(());
    }
    let err = |e| AgentError::Target { path: path.into(), what: "cannot read to check it is empty".into(), source: e };
    let head_len = size.min(LOOK);
    let mut head = vec![0u8; head_len as usize];
    file.read_exact_at(&mut head, 0).map_err(err)?;
    let tail_at = size.saturating_sub(LOOK).max(head_len);
    let mut tail = vec![0u8; (size - tail_at) as usize];
    file.read_exact_at(&mut tail, tail_at).map_err(err)?;
    let first = match head.iter().position(|&b| b != 0) {
        Some(at) => at as u64,
        None => match tail.iter().position(|&b| b != 0) {
            Some(at) => tail_at + at as u64,
            None => return Ok(()),
        },
    };
    Err(AgentError::BadTarget {
        path: path.into(),
        reason: format!(
            "is not empty: it holds {}; nothing was written. Check that this is the device you mean; \
             --overwrite replaces everything on it",
            describe(path, &head, first)
        ),
    })
}

/// Names what a non-empty device holds, as precisely as its first bytes allow.
fn describe(path: &Path, head: &[u8], first_nonzero: u64) -> String {
    if let Some(fs) = crate::inventory::probe_fs_type(path) {
        return format!("a filesystem ({fs})");
    }
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(512, b"EFI PART") || at(4096, b"EFI PART") {
        "a partition table (GPT)".into()
    } else if at(0, b"LUKS\xba\xbe") {
        "a LUKS encrypted volume".into()
    } else if at(512 + 24, b"LVM2 001") {
        "an LVM physical volume".into()
    } else if at(510, &[0x55, 0xaa]) {
        "a partition table or boot sector (MBR)".into()
    } else {
        format!("data (the first non-zero byte is at offset {first_nonzero})")
    }
}
