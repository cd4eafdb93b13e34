//! Change tracking for LVM thin volumes: the thin snapshot of the last successful backup is kept
//! (renamed `bulwark-cbt-…`, inactive), and the pool's own metadata tells which blocks the new
//! snapshot maps differently: `thin_delta` on a metadata snapshot of the live pool, so nothing
//! is read but the pool's B-trees. A block both snapshots map to the same data block is
//! unchanged; one mapped differently, mapped in one only (written, or discarded) may have
//! changed. The pool's data block (64 KiB by default) is finer than a point's block, so the
//! answer is exact at the point's block size.
//!
//! The state (which point the kept snapshot became, and with what settings) is a file in the
//! agent's state folder; the kept snapshot's LVM UUID is recorded in it, so a snapshot replaced
//! under the same name (which may even get the same thin device id) is not trusted.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{ChangedBlocks, TrackingState};
use crate::snapshot::{run_tool, Snapshot, ThinSnapshot};

/// Fuller than this (data or metadata), a thin pool keeps no snapshot for change tracking.
pub const POOL_FULL_PERCENT: f64 = 80.0;

/// What is kept between two backups of one thin volume under one backup name.
pub struct ThinTracking {
    vg: String,
    /// The name the kept snapshot has in the volume group.
    kept: String,
    state: PathBuf,
}

/// [`TrackingState`] plus the kept snapshot's identity.
#[derive(Serialize, Deserialize)]
struct ThinState {
    #[serde(flatten)]
    state: TrackingState,
    /// The origin as `vg/lv`.
    origin: String,
    /// The kept snapshot's LVM UUID.
    uuid: String,
}

/// The LVM name of what is kept for `lv` under backup `name`: readable when it fits LVM's
/// limit on names, a digest of both otherwise.
fn kept_name(lv: &str, name: &str) -> String {
    let plain = format!("bulwark-cbt-{lv}-{name}");
    if plain.len() <= 120 {
        return plain;
    }
    // FNV-1a over both: only needs to tell apart the few volumes of one volume group.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lv.bytes().chain([0]).chain(name.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("bulwark-cbt-{h:016x}")
}

/// The device-mapper name LVM gives `vg/lv` (dashes doubled in each part).
fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// One field of `lvs` for `vg/lv`; an error when there is no such volume.
fn lv_field(vg: &str, lv: &str, field: &str) -> Result<String, String> {
    let out = run_tool(Command::new("lvs").args(["--noheadings", "-o", field]).arg(format!("{vg}/{lv}")))?;
    Ok(out.trim().to_string())
}

fn thin_id(vg: &str, lv: &str) -> Result<u64, String> {
    let id = lv_field(vg, lv, "thin_id")?;
    id.parse().map_err(|_| format!("LVM gives no thin device id for {vg}/{lv} ({id:?})"))
}

impl ThinTracking {
    pub fn new(state_dir: &Path, snap: &ThinSnapshot, name: &str) -> Self {
        let kept = kept_name(&snap.origin, name);
        let state = state_dir.join(format!("{}-{kept}.json", snap.vg));
        ThinTracking { vg: snap.vg.clone(), kept, state }
    }

    /// The kept snapshot as LVM names it: `vg/name`.
    fn kept_lv(&self) -> String {
        format!("{}/{}", self.vg, self.kept)
    }

    fn kept_exists(&self) -> bool {
        lv_field(&self.vg, &self.kept, "lv_name").is_ok()
    }

    pub fn load(&self) -> Result<TrackingState, String> {
        let raw = std::fs::read(&self.state).map_err(|e| format!("no tracking state ({e})"))?;
        let s: ThinState = serde_json::from_slice(&raw).map_err(|e| format!("tracking state unreadable ({e})"))?;
        // One question tells both whether it is there and whether it is the one kept.
        let uuid = lv_field(&self.vg, &self.kept, "lv_uuid")
            .map_err(|_| format!("the thin snapshot kept from the last backup ({}) is gone", self.kept_lv()))?;
        if uuid != s.uuid {
            return Err(format!(
                "{} is not the thin snapshot the last backup kept (UUID {uuid}, not {})",
                self.kept_lv(),
                s.uuid
            ));
        }
        Ok(s.state)
    }

    /// Blocks of the new snapshot `snap` that the pool maps differently from the kept one.
    pub fn changed(&self, snap: &ThinSnapshot, size: u64, block_size: u64) -> Result<ChangedBlocks, String> {
        let (old, new) = (thin_id(&self.vg, &self.kept)?, thin_id(&snap.vg, &snap.name)?);
        let pool = {
            // LVM stacks the pool's target under `-tpool` once thin volumes use it.
            let tpool = format!("{}-tpool", dm_name(&snap.vg, &snap.pool));
            if Path::new("/dev/mapper").join(&tpool).exists() {
                tpool
            } else {
                dm_name(&snap.vg, &snap.pool)
            }
        };
        let meta = Path::new("/dev/mapper").join(format!("{}_tmeta", dm_name(&snap.vg, &snap.pool)));
        // The live metadata changes under a reader; a metadata snapshot (which commits the
        // pool's metadata first, the new snapshot included) does not. Only one can exist per
        // pool: a concurrent backup of the same pool makes this one fall back.
        run_tool(Command::new("dmsetup").args(["message", &pool, "0", "reserve_metadata_snap"]))
            .map_err(|e| format!("cannot take a metadata snapshot of pool {}/{} ({e})", snap.vg, snap.pool))?;
        let delta = run_tool(
            Command::new("thin_delta")
                .args(["-m", "--snap1", &old.to_string(), "--snap2", &new.to_string()])
                .arg(&meta),
        );
        let released = run_tool(Command::new("dmsetup").args(["message", &pool, "0", "release_metadata_snap"]));
        let delta = delta.map_err(|e| format!("thin_delta failed on pool {}/{} ({e})", snap.vg, snap.pool))?;
        released
            .map_err(|e| format!("cannot release the metadata snapshot of pool {}/{} ({e})", snap.vg, snap.pool))?;
        parse_delta(&delta, size, block_size)
    }

    /// Makes `snapshot` (a thin snapshot) the base of the next backup, which follows `state`.
    /// The state goes first: a crash in between leaves a kept snapshot without state, which the
    /// next backup does not trust and replaces.
    pub fn advance(&self, snapshot: Snapshot, snap: &ThinSnapshot, state: &TrackingState) -> Result<(), String> {
        let _ = std::fs::remove_file(&self.state);
        if self.kept_exists() {
            run_tool(Command::new("lvremove").args(["-f", &self.kept_lv()]))?;
        }
        // A kept snapshot holds the blocks the volume rewrites: in a nearly full pool that can
        // make the pool run out and the volume's writes fail. Tracking gives way.
        let out = run_tool(
            Command::new("lvs")
                .args(["--noheadings", "-o", "data_percent,metadata_percent"])
                .arg(format!("{}/{}", snap.vg, snap.pool)),
        )?;
        let full = out.split_whitespace().filter_map(|p| p.replace(',', ".").parse::<f64>().ok()).fold(0.0, f64::max);
        if full >= POOL_FULL_PERCENT {
            return Err(format!(
                "thin pool {}/{} is {full:.0}% full: no snapshot is kept for change tracking, as the blocks it \
                 would hold may be needed by the volume",
                snap.vg, snap.pool
            ));
        }
        let path = snapshot.keep();
        let renamed = run_tool(Command::new("lvrename").args([&self.vg, &snap.name, &self.kept]));
        if let Err(e) = renamed {
            let _ = run_tool(Command::new("lvremove").args(["-f", &format!("{}/{}", self.vg, snap.name)]));
            return Err(format!("cannot rename {} ({e})", path.display()));
        }
        // Inactive: nothing writes to it by mistake, and it holds no device.
        run_tool(Command::new("lvchange").args(["-an", &self.kept_lv()]))?;
        let uuid = lv_field(&self.vg, &self.kept, "lv_uuid")?;
        let s = ThinState { state: state.clone(), origin: format!("{}/{}", snap.vg, snap.origin), uuid };
        if let Some(dir) = self.state.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {} ({e})", dir.display()))?;
        }
        let tmp = self.state.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&s).expect("state serializes"))
            .and_then(|()| std::fs::rename(&tmp, &self.state))
            .map_err(|e| format!("cannot write {} ({e})", self.state.display()))
    }

    /// Forgets tracking and frees the pool space the kept snapshot holds.
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.state);
        if self.kept_exists() {
            let _ = run_tool(Command::new("lvremove").args(["-f", &self.kept_lv()]));
        }
    }
}

/// The value of attribute `name` in one XML element line of thin_delta's output.
fn attr(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}=\""))? + name.len() + 3;
    line[at..].split('"').next()?.parse().ok()
}

/// Reads thin_delta's report (XML: a superblock giving the data block size in sectors, then
/// ranges of data blocks `same`, `different`, `left_only`, `right_only`) into the point's blocks.
fn parse_delta(xml: &str, size: u64, block_size: u64) -> Result<ChangedBlocks, String> {
    let mut changed = ChangedBlocks::none(size.div_ceil(block_size));
    let mut unit = None;
    let mut diff = false;
    for line in xml.lines().map(str::trim) {
        if line.starts_with("<superblock") {
            unit = attr(line, "data_block_size").map(|s| s * 512);
        } else if line.starts_with("<diff ") {
            diff = true;
        } else if ["<different", "<left_only", "<right_only"].iter().any(|t| line.starts_with(t)) {
            let (Some(unit), Some(begin), Some(length)) = (unit, attr(line, "begin"), attr(line, "length")) else {
                return Err(format!("thin_delta's report is not understood at {line:?}"));
            };
            changed.mark_bytes(begin * unit, (begin + length) * unit, block_size);
        } else if !line.is_empty() && !["<same", "</diff", "</superblock", "<?xml"].iter().any(|t| line.starts_with(t))
        {
            return Err(format!("thin_delta's report is not understood at {line:?}"));
        }
    }
    if unit.is_none() || !diff {
        return Err("thin_delta's report holds no comparison".into());
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_ranges_mark_the_point_blocks_they_touch() {
        // 64 KiB data blocks (128 sectors); a point of 1 MiB blocks, 4 MiB.
        let xml = r#"<superblock uuid="" time="1" transaction="3" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">
    <same begin="0" length="16"/>
    <different begin="16" length="1"/>
    <same begin="17" length="30"/>
    <right_only begin="47" length="2"/>
    <left_only begin="63" length="1"/>
  </diff>
</superblock>
"#;
        let c = parse_delta(xml, 4 << 20, 1 << 20).unwrap();
        // Block 16 (1 MiB..) -> point block 1; 47..49 straddle blocks 2 and 3; 63 -> block 3.
        assert!(!c.is_changed(0) && c.is_changed(1) && c.is_changed(2) && c.is_changed(3));
        let only =
            parse_delta(xml.replace("right_only", "same").replace("left_only", "same").as_str(), 4 << 20, 1 << 20);
        let only = only.unwrap();
        assert!(!only.is_changed(0) && only.is_changed(1) && !only.is_changed(2) && !only.is_changed(3));
    }

    #[test]
    fn a_report_not_understood_is_an_error() {
        assert!(parse_delta("", 1 << 20, 1 << 20).is_err());
        let odd = "<superblock data_block_size=\"128\">\n<diff left=\"1\" right=\"2\">\n<moved begin=\"1\"/>\n";
        assert!(parse_delta(odd, 1 << 20, 1 << 20).unwrap_err().contains("moved"));
    }

    #[test]
    fn kept_names_fit_lvm() {
        assert_eq!(kept_name("root", "web-root"), "bulwark-cbt-root-web-root");
        let long = kept_name(&"l".repeat(100), &"n".repeat(100));
        assert!(long.len() <= 127 && long.starts_with("bulwark-cbt-"), "{long}");
        assert_eq!(dm_name("my-vg", "thin-pool"), "my--vg-thin--pool");
    }
}
