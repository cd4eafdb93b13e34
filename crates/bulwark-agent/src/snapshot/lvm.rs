//! LVM snapshots (`lvcreate --snapshot`), classic and thin.
//!
//! **Freezing.** While `lvcreate` loads a snapshot, device-mapper suspends the origin with its
//! filesystem frozen (`lockfs`: the kernel's `freeze_bdev`), and thaws it on resume: the
//! snapshot is of a cleanly frozen filesystem without any ioctl of ours. Freezing it ourselves
//! first (`FIFREEZE`, as the reflink provider does) would make that suspend fail with EBUSY, so
//! this provider does not; a snapshot of a volume with a mounted filesystem is reported
//! [`Consistency::Frozen`], one of an unmounted volume crash-consistent.
//!
//! **Size of a classic snapshot.** Its copy-on-write space holds the origin's blocks written
//! while the snapshot lives: [`CowSize`], 20% of the origin unless the operator says otherwise,
//! doubled for each try after a snapshot overflowed, never more than the origin (a snapshot as
//! large as its origin cannot overflow) and never more than the volume group has free; a volume
//! group without a free extent fails the try with an error saying so. Thin snapshots take their
//! space from the pool and need no size.
//!
//! **Overflow.** When the copy-on-write space fills, the kernel invalidates the snapshot: its
//! reads fail and its status says `Invalid`. [`Snapshot::check`] asks LVM; the backup asks it
//! after reading (and when a read failed) and never commits a point from an invalid snapshot.
//!
//! **Leftovers.** Snapshots are named `bulwark-snap-<pid>-<random>`; one whose process is gone
//! is removed by the next backup of a volume in the same volume group.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::{owned_tag, pid_alive, run_tool, Consistency, Snapshot, SnapshotProvider, ThinSnapshot};

/// How much copy-on-write space a classic snapshot gets: one of the job model's shared words.
pub use bulwark_proto::domain::CowSize;

pub struct LvmProvider {
    size: CowSize,
    /// Snapshots of this provider found overflowed: each doubles the next one's space.
    overflows: Arc<AtomicU32>,
}

impl Default for LvmProvider {
    fn default() -> Self {
        LvmProvider::new(CowSize::default())
    }
}

/// What LVM says about the origin.
struct Origin {
    vg: String,
    lv: String,
    /// The thin pool of a thin volume.
    pool: Option<String>,
    size: u64,
    vg_free: u64,
    extent: u64,
}

impl LvmProvider {
    pub fn new(size: CowSize) -> Self {
        LvmProvider { size, overflows: Arc::new(AtomicU32::new(0)) }
    }

    /// Whether `source` is an LVM logical volume (device-mapper UUID starting with `LVM-`).
    pub fn supports(source: &Path) -> bool {
        let Ok(real) = std::fs::canonicalize(source) else { return false };
        let Some(dm) = real.file_name().and_then(|n| n.to_str()).filter(|n| n.starts_with("dm-")) else { return false };
        std::fs::read_to_string(format!("/sys/block/{dm}/dm/uuid")).is_ok_and(|u| u.starts_with("LVM-"))
    }

    fn origin(source: &Path) -> Result<Origin, String> {
        let out = run_tool(
            Command::new("lvs")
                .args(["--noheadings", "--units", "b", "--nosuffix", "--separator", "|"])
                .args(["-o", "vg_name,lv_name,pool_lv,lv_size,vg_free,vg_extent_size"])
                .arg(source),
        )?;
        let f: Vec<&str> = out.trim().split('|').map(str::trim).collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| format!("lvs gave {s:?} for a size of {}", source.display()));
        match f.as_slice() {
            [vg, lv, pool, size, free, extent] => Ok(Origin {
                vg: vg.to_string(),
                lv: lv.to_string(),
                pool: (!pool.is_empty()).then(|| pool.to_string()),
                size: num(size)?,
                vg_free: num(free)?,
                extent: num(extent)?.max(512),
            }),
            _ => Err(format!("{} is not an LVM logical volume", source.display())),
        }
    }

    /// The copy-on-write space for a classic snapshot of `o`, in bytes (whole extents), and a
    /// note when it is less than the policy wanted.
    fn cow_bytes(&self, o: &Origin) -> Result<(u64, Option<String>), String> {
        let doublings = self.overflows.load(Ordering::Relaxed).min(20);
        let wanted = self.size.wanted(o.size).saturating_mul(1 << doublings).clamp(1, o.size.max(1));
        let wanted = wanted.div_ceil(o.extent) * o.extent;
        let free = o.vg_free / o.extent * o.extent;
        if free == 0 {
            return Err(format!(
                "volume group {} has no free extent for the copy-on-write space of a snapshot of {}/{} \
                 (wanted {}): extend it (vgextend) or free space in it, or use a thin volume",
                o.vg,
                o.vg,
                o.lv,
                human(wanted)
            ));
        }
        if free < wanted {
            return Ok((
                free,
                Some(format!(
                    "snapshot of {}/{} given {} of copy-on-write space, all that volume group {} has free \
                     ({} wanted): it fails if more than that is written to the volume during the backup",
                    o.vg,
                    o.lv,
                    human(free),
                    o.vg,
                    human(wanted)
                )),
            ));
        }
        Ok((wanted, None))
    }
}

fn human(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.2} MiB")
    }
}

/// Mount points of filesystems on the block device `source`.
fn mounts_of(source: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(source) else { return Vec::new() };
    let rdev = md.rdev();
    let number = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[2] == number)
        .map(|f| PathBuf::from(crate::inventory::unescape(f[4])))
        .collect()
}

/// Whether snapshot `vg/name` is still valid; counts an overflow in `overflows` when not.
fn check_valid(vg: &str, name: &str, cow: u64, overflows: &AtomicU32) -> Result<(), String> {
    let out =
        run_tool(Command::new("lvs").args(["--noheadings", "-o", "lv_attr,snap_percent"]).arg(format!("{vg}/{name}")))
            .map_err(|e| format!("cannot ask LVM whether snapshot {vg}/{name} is still valid: {e}"))?;
    let attr = out.split_whitespace().next().unwrap_or_default();
    // The fifth character of lv_attr is the state: `I` for an invalidated snapshot, `S` for
    // an invalidated one that is suspended.
    if matches!(attr.chars().nth(4), Some('I' | 'S')) {
        overflows.fetch_add(1, Ordering::Relaxed);
        return Err(format!(
            "snapshot {vg}/{name} overflowed: more than its {} of copy-on-write space was written to the \
             volume while it was read, and the kernel invalidated it",
            human(cow)
        ));
    }
    Ok(())
}

impl SnapshotProvider for LvmProvider {
    fn name(&self) -> &'static str {
        "lvm"
    }

    fn create(&self, source: &Path) -> Result<Snapshot, String> {
        let o = Self::origin(source)?;
        let name = format!("bulwark-snap-{}", owned_tag());
        let mut cmd = Command::new("lvcreate");
        cmd.args(["--snapshot", "--name", &name]);
        let mut notes = Vec::new();
        let mut cow = 0;
        if o.pool.is_some() {
            // A thin snapshot needs no size and is not activated by default.
            cmd.args(["--setactivationskip", "n"]);
        } else {
            let (bytes, note) = self.cow_bytes(&o)?;
            cow = bytes;
            notes.extend(note);
            cmd.args(["--size", &format!("{bytes}b")]);
        }
        let mounts = mounts_of(source);
        run_tool(cmd.arg(format!("{}/{}", o.vg, o.lv)))?;
        let full = format!("{}/{name}", o.vg);
        let release = Box::new(move || run_tool(Command::new("lvremove").args(["-f", &full])).map(|_| ()));
        let consistency = if mounts.is_empty() { Consistency::CrashConsistent } else { Consistency::Frozen };
        let mut snap = Snapshot::new(PathBuf::from(format!("/dev/{}/{name}", o.vg)), "lvm", consistency, Some(release));
        if let Some(pool) = &o.pool {
            snap.thin =
                Some(ThinSnapshot { vg: o.vg.clone(), pool: pool.clone(), origin: o.lv.clone(), name: name.clone() });
        } else {
            let (vg, overflows) = (o.vg.clone(), self.overflows.clone());
            snap = snap.with_check(Box::new(move || check_valid(&vg, &name, cow, &overflows)));
            notes.push(format!("classic snapshot of {}/{} with {} of copy-on-write space", o.vg, o.lv, human(cow)));
        }
        for m in &mounts {
            notes.push(format!("froze {} for the instant of the snapshot (device-mapper's suspend)", m.display()));
        }
        snap.notes = notes;
        Ok(snap)
    }

    fn remove_stale(&self, source: &Path) -> Vec<String> {
        let Ok(o) = Self::origin(source) else { return Vec::new() };
        let Ok(out) = run_tool(Command::new("lvs").args(["--noheadings", "-o", "lv_name", &o.vg])) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for name in out.split_whitespace().filter(|n| n.starts_with("bulwark-snap-")) {
            let pid = name.split('-').nth(2).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !pid_alive(p))
                && run_tool(Command::new("lvremove").args(["-f", &format!("{}/{name}", o.vg)])).is_ok()
            {
                removed.push(format!("{}/{name}", o.vg));
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cow_size_parses_shares_and_sizes() {
        assert_eq!("20%".parse(), Ok(CowSize::PercentOfOrigin(20)));
        assert_eq!("512M".parse(), Ok(CowSize::Bytes(512 << 20)));
        assert_eq!("2GiB".parse(), Ok(CowSize::Bytes(2 << 30)));
        assert_eq!("4096".parse(), Ok(CowSize::Bytes(4096)));
        for bad in ["0%", "101%", "", "M", "12X", "0", "99999999999T"] {
            assert!(bad.parse::<CowSize>().is_err(), "{bad:?} accepted");
        }
    }

    fn origin(size: u64, free: u64) -> Origin {
        Origin { vg: "vg".into(), lv: "lv".into(), pool: None, size, vg_free: free, extent: 4 << 20 }
    }

    #[test]
    fn cow_space_follows_policy_capped_by_origin_and_free_space() {
        let p = LvmProvider::default();
        // 20% of 100 MiB, rounded up to whole 4 MiB extents.
        assert_eq!(p.cow_bytes(&origin(100 << 20, 1 << 30)).unwrap(), (20 << 20, None));
        // Capped by what the volume group has free, saying so.
        let (b, note) = p.cow_bytes(&origin(1 << 30, 10 << 20)).unwrap();
        assert_eq!(b, 8 << 20);
        assert!(note.unwrap().contains("all that volume group vg has free"));
        // No free extent: an error naming the volume group and the remedy.
        let e = p.cow_bytes(&origin(1 << 30, 1 << 20)).unwrap_err();
        assert!(e.contains("volume group vg has no free extent") && e.contains("vgextend"), "{e}");
        // Each overflow doubles the next snapshot's space, never beyond the origin's size.
        p.overflows.store(2, Ordering::Relaxed);
        assert_eq!(p.cow_bytes(&origin(100 << 20, 1 << 30)).unwrap().0, 80 << 20);
        p.overflows.store(5, Ordering::Relaxed);
        assert_eq!(p.cow_bytes(&origin(100 << 20, 1 << 30)).unwrap().0, 100 << 20);
        let fixed = LvmProvider::new(CowSize::Bytes(6 << 20));
        assert_eq!(fixed.cow_bytes(&origin(100 << 20, 1 << 30)).unwrap().0, 8 << 20);
    }
}
