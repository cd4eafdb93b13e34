//! Reflink snapshots of disk-image files on XFS or btrfs (the common case of VM disks on a KVM
//! host): freeze any filesystem from the image that this host has mounted, clone the file with
//! `FICLONE` (instant; blocks are shared until written), thaw, and read the clone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{owned_tag, pid_alive, Consistency, Snapshot, SnapshotProvider};

pub struct ReflinkProvider;

const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683E;
// _IOWR('X', 119, int) and _IOWR('X', 120, int) from <linux/fs.h>.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

impl ReflinkProvider {
    /// Whether `source` is a regular file on a filesystem that can clone it.
    pub fn supports(source: &Path) -> bool {
        let Ok(md) = std::fs::metadata(source) else { return false };
        if !md.is_file() {
            return false;
        }
        match rustix::fs::statfs(source) {
            Ok(s) => matches!(s.f_type, XFS_MAGIC | BTRFS_MAGIC),
            Err(_) => false,
        }
    }

    fn prefix(source: &Path) -> String {
        let name = source.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        format!(".bulwark-snap-{name}-")
    }
}

/// Clones `source` to `dest` (same filesystem) sharing all blocks.
pub(crate) fn clone_file(source: &Path, dest: &Path) -> Result<(), String> {
    let src = File::open(source).map_err(|e| format!("cannot open {}: {e}", source.display()))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| format!("cannot create clone {}: {e}", dest.display()))?;
    if let Err(e) = rustix::fs::ioctl_ficlone(&out, &src) {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(format!("cannot clone {} (FICLONE): {e}", source.display()));
    }
    Ok(())
}

impl SnapshotProvider for ReflinkProvider {
    fn name(&self) -> &'static str {
        "reflink"
    }

    fn create(&self, source: &Path) -> Result<Snapshot, String> {
        let dir = source.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dest = dir.join(format!("{}{}", Self::prefix(source), owned_tag()));
        let mounts = mounts_backed_by(source);
        let frozen = Frozen::freeze(&mounts)?;
        let cloned = clone_file(source, &dest);
        let thawed = frozen.thaw();
        cloned?;
        let consistency = if mounts.is_empty() { Consistency::CrashConsistent } else { Consistency::Frozen };
        let d = dest.clone();
        let release =
            Box::new(move || std::fs::remove_file(&d).map_err(|e| format!("cannot remove {}: {e}", d.display())));
        let mut snap = Snapshot::new(dest, "reflink", consistency, Some(release));
        if let Err(e) = thawed {
            return Err(format!("clone taken but thaw failed: {e}"));
        }
        for m in &mounts {
            snap.notes.push(format!("froze {} for the instant of the clone", m.display()));
        }
        Ok(snap)
    }

    fn remove_stale(&self, source: &Path) -> Vec<String> {
        let dir = source.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let prefix = Self::prefix(source);
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else { return removed };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(&prefix) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !pid_alive(p)) && std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
        removed
    }
}

/// Filesystems frozen for the clone; thawed on drop if not before.
struct Frozen(Vec<(PathBuf, File)>);

impl Frozen {
    fn freeze(mounts: &[PathBuf]) -> Result<Frozen, String> {
        let mut done = Frozen(Vec::new());
        for m in mounts {
            let f = File::open(m).map_err(|e| format!("cannot open mount point {}: {e}", m.display()))?;
            // SAFETY: FIFREEZE takes no pointer argument (the int is unused); the descriptor is
            // open and owned by `f` for the duration of the call.
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), FIFREEZE, 0) };
            if rc != 0 {
                return Err(format!("cannot freeze {}: {}", m.display(), std::io::Error::last_os_error()));
            }
            done.0.push((m.clone(), f));
        }
        Ok(done)
    }

    fn thaw(mut self) -> Result<(), String> {
        let mut err = Ok(());
        for (m, f) in self.0.drain(..) {
            // SAFETY: as for FIFREEZE: no pointer argument, `f` is open.
            if unsafe { libc::ioctl(f.as_raw_fd(), FITHAW, 0) } != 0 {
                err = Err(format!("cannot thaw {}: {}", m.display(), std::io::Error::last_os_error()));
            }
        }
        err
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for (_, f) in self.0.drain(..) {
            // SAFETY: as above.
            unsafe { libc::ioctl(f.as_raw_fd(), FITHAW, 0) };
        }
    }
}

/// Mount points of filesystems this host mounted from `image` through loop devices (the image
/// itself or its partitions), one per filesystem.
pub(crate) fn mounts_backed_by(image: &Path) -> Vec<PathBuf> {
    let devs = loop_devices_of(image);
    if devs.is_empty() {
        return Vec::new();
    }
    let mut numbers = Vec::new();
    for d in &devs {
        let sys = Path::new("/sys/block").join(d);
        if let Ok(n) = std::fs::read_to_string(sys.join("dev")) {
            numbers.push(n.trim().to_string());
        }
        for part in std::fs::read_dir(&sys).into_iter().flatten().flatten() {
            if part.file_name().to_string_lossy().starts_with(d.as_str()) {
                if let Ok(n) = std::fs::read_to_string(part.path().join("dev")) {
                    numbers.push(n.trim().to_string());
                }
            }
        }
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && numbers.iter().any(|n| n == f[2]) && !seen.contains(&f[2]) {
            seen.push(f[2]);
            out.push(PathBuf::from(crate::inventory::unescape(f[4])));
        }
    }
    out
}

/// Loop devices (names like `loop3`) whose backing file is `image`.
pub(crate) fn loop_devices_of(image: &Path) -> Vec<String> {
    let Ok(real) = std::fs::canonicalize(image) else { return Vec::new() };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim_end_matches('\n')) == real {
                out.push(name);
            }
        }
    }
    out
}
