//! LVM snapshots (`lvcreate --snapshot`), classic and thin.
//!
//! Device-mapper is not available on the machines Bulwark is developed and tested on, so this
//! provider is deliberately small: it only drives the LVM tools, names its snapshots so stale
//! ones can be found (`bulwark-snap-<pid>-<random>`), and removes them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{owned_tag, pid_alive, run_tool, Consistency, Snapshot, SnapshotProvider};

pub struct LvmProvider;

/// Copy-on-write space for a classic snapshot, as a share of the origin.
const COW_SIZE: &str = "20%ORIGIN";

impl LvmProvider {
    /// Whether `source` is an LVM logical volume (device-mapper UUID starting with `LVM-`).
    pub fn supports(source: &Path) -> bool {
        let Ok(real) = std::fs::canonicalize(source) else { return false };
        let Some(dm) = real.file_name().and_then(|n| n.to_str()).filter(|n| n.starts_with("dm-")) else { return false };
        std::fs::read_to_string(format!("/sys/block/{dm}/dm/uuid")).is_ok_and(|u| u.starts_with("LVM-"))
    }

    fn vg_lv(source: &Path) -> Result<(String, String, bool), String> {
        let out = run_tool(Command::new("lvs").args(["--noheadings", "-o", "vg_name,lv_name,pool_lv"]).arg(source))?;
        let f: Vec<&str> = out.split_whitespace().collect();
        match f.as_slice() {
            [vg, lv] => Ok((vg.to_string(), lv.to_string(), false)),
            [vg, lv, _pool] => Ok((vg.to_string(), lv.to_string(), true)),
            _ => Err(format!("{} is not an LVM logical volume", source.display())),
        }
    }
}

impl SnapshotProvider for LvmProvider {
    fn name(&self) -> &'static str {
        "lvm"
    }

    fn create(&self, source: &Path) -> Result<Snapshot, String> {
        let (vg, lv, thin) = Self::vg_lv(source)?;
        let name = format!("bulwark-snap-{}", owned_tag());
        let mut cmd = Command::new("lvcreate");
        cmd.args(["--snapshot", "--name", &name]);
        if thin {
            // A thin snapshot needs no size and is not activated by default.
            cmd.args(["--setactivationskip", "n"]);
        } else {
            cmd.args(["--extents", COW_SIZE]);
        }
        run_tool(cmd.arg(format!("{vg}/{lv}")))?;
        let full = format!("{vg}/{name}");
        let release = Box::new(move || run_tool(Command::new("lvremove").args(["-f", &full])).map(|_| ()));
        Ok(Snapshot::new(
            PathBuf::from(format!("/dev/{vg}/{name}")),
            "lvm",
            Consistency::CrashConsistent,
            Some(release),
        ))
    }

    fn remove_stale(&self, source: &Path) -> Vec<String> {
        let Ok((vg, _, _)) = Self::vg_lv(source) else { return Vec::new() };
        let Ok(out) = run_tool(Command::new("lvs").args(["--noheadings", "-o", "lv_name", &vg])) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for name in out.split_whitespace().filter(|n| n.starts_with("bulwark-snap-")) {
            let pid = name.split('-').nth(2).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !pid_alive(p))
                && run_tool(Command::new("lvremove").args(["-f", &format!("{vg}/{name}")])).is_ok()
            {
                removed.push(format!("{vg}/{name}"));
            }
        }
        removed
    }
}
