//! The computer's storage as the backup server shows it to whoever chooses what to protect: the
//! disks, partitions, filesystems and mount points `lsblk` would list. Read straight from /sys and
//! /proc because agents run on minimal hosts and in containers, where util-linux may be missing
//! and the udev database `lsblk` consults is often empty.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What one agent reports about its computer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub kernel: String,
    pub devices: Vec<BlockDevice>,
}

/// One block device, each field meaning what the matching `lsblk` column means, so the server
/// can show either side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    pub name: String,
    pub path: String,
    /// lsblk's TYPE: "disk", "part", "loop", "rom", an md RAID level, or a device-mapper owner
    /// such as "lvm" or "crypt".
    pub kind: String,
    pub major_minor: String,
    pub size_bytes: u64,
    pub read_only: bool,
    /// A partition takes its disk's flag, as in lsblk: the kernel records it only on the disk.
    pub removable: bool,
    pub model: Option<String>,
    /// The mounted filesystem's type, else whatever [`probe_fs_type`] recognises.
    pub fs_type: Option<String>,
    /// Sorted; "[SWAP]" for active swap, as lsblk shows it.
    pub mount_points: Vec<String>,
    /// Partitions in partition-number order, so sda10 follows sda9.
    pub children: Vec<BlockDevice>,
}

/// Only an unreadable /sys/block or /proc is an error: a device that vanishes or misbehaves
/// during the scan is left out, so one bad disk never costs the server the whole picture.
pub fn collect() -> std::io::Result<Inventory> {
    let mounts = mounts();
    let mut devices = Vec::new();
    for entry in fs::read_dir("/sys/block")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let sys = entry.path();
        // RAM disks hold nothing worth a backup; lsblk leaves them out too.
        if name.starts_with("ram") {
            continue;
        }
        let Some(mut disk) = device(&sys, &name, None, &mounts) else { continue };
        // Unused loop devices: lsblk hides them, and most hosts keep several around.
        if disk.kind == "loop" && disk.size_bytes == 0 && !sys.join("loop/backing_file").exists() {
            continue;
        }
        let mut parts = Vec::new();
        for entry in fs::read_dir(&sys).into_iter().flatten().flatten() {
            let part = entry.path();
            let Some(number) = attr(&part, "partition").and_then(|n| n.parse::<u32>().ok()) else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            parts.extend(device(&part, &name, Some(disk.removable), &mounts).map(|p| (number, p)));
        }
        parts.sort_by_key(|(number, _)| *number);
        disk.children = parts.into_iter().map(|(_, part)| part).collect();
        devices.push(disk);
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_string();
    Ok(Inventory { hostname, kernel, devices })
}

/// The filesystem on a device from its superblock magic: the probe udev makes with libblkid to
/// fill the database lsblk reads, made here directly because that database is empty in
/// containers and lags behind a fresh mkfs. Only types a backup cares to name are known;
/// anything else, or an unreadable device, is `None`.
pub fn probe_fs_type(dev: &Path) -> Option<String> {
    let file = fs::File::open(dev).ok()?;
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ok().map(|()| buf)
    };
    let has = |offset: u64, magic: &[u8]| read(offset, magic.len()).is_some_and(|b| b == magic);
    // Swap's signature ends its first page, whose size is that of the machine that made it.
    let swap = |page: u64| has(page - 10, b"SWAPSPACE2") || has(page - 10, b"SWAP-SPACE");
    let found = if has(0, b"XFSB") {
        "xfs"
    } else if has(0x10040, b"_BHRfS_M") {
        "btrfs"
    } else if let Some(sb) = read(1024, 0x64).filter(|sb| u16::from_le_bytes([sb[56], sb[57]]) == 0xEF53) {
        let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
        // ext4 is ext3 plus features older drivers refuse; mkfs.ext4 always sets one of these.
        if le32(0x60) & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if le32(0x5C) & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        }
    } else if [4096, 8192, 16384, 65536].into_iter().any(swap) {
        "swap"
    } else if has(32769, b"CD001") {
        "iso9660"
    } else {
        // FAT has no magic of its own: a boot sector signature plus the type label it writes.
        let boot = read(0, 512)?;
        let label = |at: usize, text: &[u8]| &boot[at..at + text.len()] == text;
        let boot_signature = boot[510] == 0x55 && boot[511] == 0xAA;
        if !(boot_signature && (label(82, b"FAT32   ") || label(54, b"FAT16   ") || label(54, b"FAT12   "))) {
            return None;
        }
        "vfat"
    };
    Some(found.to_string())
}

/// `parent_removable` is set for a partition.
fn device(sys: &Path, name: &str, parent_removable: Option<bool>, mounts: &[Mount]) -> Option<BlockDevice> {
    // Hidden devices (the per-path halves of NVMe multipath) cannot be used on their own.
    if attr(sys, "hidden").as_deref() == Some("1") {
        return None;
    }
    let major_minor = attr(sys, "dev")?;
    // sysfs counts 512-byte sectors whatever the device's own sector size.
    let size_bytes = attr(sys, "size")?.parse::<u64>().ok()?.saturating_mul(512);
    // A '/' in a device name (cciss/c0d0) is a '!' in sysfs.
    let path = format!("/dev/{}", name.replace('!', "/"));
    let own: Vec<&Mount> = mounts.iter().filter(|m| m.is_of(&major_minor, &path)).collect();
    let mut mount_points: Vec<String> = own.iter().map(|m| m.target.clone()).collect();
    mount_points.sort();
    mount_points.dedup();
    let fs_type = match own.first() {
        Some(m) => Some(m.fs_type.clone()),
        None => probe_fs_type(Path::new(&path)),
    };
    Some(BlockDevice {
        name: name.to_string(),
        kind: kind(sys, name, parent_removable.is_some()),
        path,
        major_minor,
        size_bytes,
        read_only: attr(sys, "ro").as_deref() == Some("1"),
        removable: attr(sys, "removable").map_or(parent_removable.unwrap_or(false), |r| r == "1"),
        model: attr(sys, "device/model").filter(|m| !m.is_empty()),
        fs_type,
        mount_points,
        children: Vec::new(),
    })
}

/// lsblk's TYPE, worked out the way lsblk does.
fn kind(sys: &Path, name: &str, partition: bool) -> String {
    if partition {
        "part".into()
    } else if name.starts_with("dm-") {
        // Device-mapper keeps the owner in the UUID's prefix: "LVM-…", "CRYPT-…", kpartx's "part1-…".
        match attr(sys, "dm/uuid").and_then(|u| u.split('-').next().map(str::to_ascii_lowercase)) {
            Some(owner) if owner.starts_with("part") => "part".into(),
            Some(owner) if !owner.is_empty() => owner,
            _ => "dm".into(),
        }
    } else if name.starts_with("loop") {
        "loop".into()
    } else if name.starts_with("md") {
        attr(sys, "md/level").filter(|level| !level.is_empty()).unwrap_or_else(|| "md".into())
    } else if name.starts_with("sr") || attr(sys, "device/type").as_deref() == Some("5") {
        "rom".into()
    } else {
        "disk".into()
    }
}

/// A sysfs attribute, trimmed; `None` when absent or unreadable, normal for a device going away.
fn attr(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string())
}

/// Where the device `path` (major:minor `major_minor`) is mounted now, "[SWAP]" for swap.
pub(crate) fn mount_points_of(major_minor: &str, path: &str) -> Vec<String> {
    mounts().into_iter().filter(|m| m.is_of(major_minor, path)).map(|m| m.target).collect()
}

/// A mount (from /proc/self/mountinfo) or an active swap area (from /proc/swaps).
struct Mount {
    dev: String,
    source: String,
    target: String,
    fs_type: String,
}

impl Mount {
    /// btrfs mounts carry an anonymous device number (0:N) and swap areas none, so those are
    /// matched by the device path they name instead.
    fn is_of(&self, major_minor: &str, path: &str) -> bool {
        if self.dev.is_empty() || self.dev.starts_with("0:") {
            self.source == path
        } else {
            self.dev == major_minor
        }
    }
}

/// Unreadable tables mean no mounts: devices are still listed, and probed instead.
fn mounts() -> Vec<Mount> {
    let mut out = Vec::new();
    for line in fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        // Optional fields (shared:N, master:N) sit between the mount options and the "-".
        let Some(sep) = f.iter().skip(6).position(|x| *x == "-").map(|i| i + 6) else { continue };
        if let (Some(fs_type), Some(source)) = (f.get(sep + 1), f.get(sep + 2)) {
            let (dev, target) = (f[2].to_string(), unescape(f[4]));
            out.push(Mount { dev, source: unescape(source), target, fs_type: unescape(fs_type) });
        }
    }
    for line in fs::read_to_string("/proc/swaps").unwrap_or_default().lines().skip(1) {
        if let Some(file) = line.split_whitespace().next() {
            let source = unescape(file);
            out.push(Mount { dev: String::new(), source, target: "[SWAP]".into(), fs_type: "swap".into() });
        }
    }
    out
}

/// The kernel writes space, tab, newline and backslash in these tables as octal escapes (`\040`).
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match digits.map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'))) {
            Some(v) if v <= 0xFF => {
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
