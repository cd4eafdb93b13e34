//! Read-only btrfs subvolume snapshots, for directories on btrfs (file-level backup).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{owned_tag, pid_alive, run_tool, Consistency, Snapshot, SnapshotProvider};

pub struct BtrfsProvider;

const DIR: &str = ".bulwark-snapshots";

impl BtrfsProvider {
    fn snapshot_dir(source: &Path) -> PathBuf {
        source.join(DIR)
    }
}

impl SnapshotProvider for BtrfsProvider {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn create(&self, source: &Path) -> Result<Snapshot, String> {
        let dir = Self::snapshot_dir(source);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let dest = dir.join(owned_tag());
        run_tool(Command::new("btrfs").args(["subvolume", "snapshot", "-r"]).arg(source).arg(&dest))?;
        let d = dest.clone();
        let release =
            Box::new(move || run_tool(Command::new("btrfs").args(["subvolume", "delete"]).arg(&d)).map(|_| ()));
        Ok(Snapshot::new(dest, "btrfs", Consistency::CrashConsistent, Some(release)))
    }

    fn remove_stale(&self, source: &Path) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(Self::snapshot_dir(source)) else { return removed };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !pid_alive(p))
                && run_tool(Command::new("btrfs").args(["subvolume", "delete"]).arg(e.path())).is_ok()
            {
                removed.push(e.path().display().to_string());
            }
        }
        removed
    }
}
