//! Does each computer of a job hold what the job backs up? Asked of the inventory the server
//! last stored for the computer (`bulwark computer show` refreshes it), when a job is created or
//! changed, so that a mistyped source is said then and not at the first failed night.
//!
//! These are warnings, never refusals: the inventory may be old, a disk may be added before the
//! job first runs, and an image file or a directory is not in it at all. The inventory lists
//! block devices by their kernel names (`/dev/sdb`, `/dev/dm-0`) with their partitions and mount
//! points, so only what it can settle is said: a device directly under `/dev` that the computer
//! does not have, a volume source that is where a filesystem is mounted, a files source that is
//! a device.

use serde_json::Value;

use crate::model::Job;

/// Every device of an inventory, partitions included.
fn devices(inventory: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for d in list.as_array().into_iter().flatten() {
            out.push(d);
            walk(&d["children"], out);
        }
    }
    let mut out = Vec::new();
    walk(&inventory["devices"], &mut out);
    out
}

/// What is doubtful about `job`'s sources on `computer`, whose last known inventory is
/// `inventory`.
pub fn warnings(job: &Job, computer: &str, inventory: &Value) -> Vec<String> {
    let devices = devices(inventory);
    let device = |path: &str| devices.iter().find(|d| d["path"] == path);
    let mounted_from = |dir: &str| {
        devices
            .iter()
            .find(|d| d["mount_points"].as_array().is_some_and(|m| m.iter().any(|p| p == dir)))
            .and_then(|d| d["path"].as_str())
    };
    let mut out = Vec::new();
    for source in &job.sources {
        let source = source.trim_end_matches('/');
        let source = if source.is_empty() { "/" } else { source };
        // `/dev/sdb` is a kernel name the inventory lists; `/dev/vg/lv` and `/dev/disk/by-id/…`
        // are links it does not resolve.
        let kernel_name = source.strip_prefix("/dev/").is_some_and(|n| !n.contains('/'));
        match job.mode.as_str() {
            "volumes" => {
                if kernel_name && device(source).is_none() {
                    let known: Vec<&str> = devices.iter().filter_map(|d| d["path"].as_str()).collect();
                    out.push(format!(
                        "computer {computer} has no device {source} (its last known inventory lists {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ));
                } else if let Some(dev) = mounted_from(source) {
                    out.push(format!(
                        "on computer {computer}, {source} is where {dev} is mounted: a volumes job backs up block \
                         devices and images; back up {dev}, or make it a files job (--mode files) to back up the \
                         directory"
                    ));
                }
            }
            "files" if device(source).is_some() || kernel_name => {
                out.push(format!(
                    "on computer {computer}, {source} is a device: a files job backs up directories; make it a \
                     volumes job (--mode volumes) to back up the device"
                ));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inventory() -> Value {
        json!({"hostname": "pc-1", "kernel": "6.1", "devices": [
            {"name": "sda", "path": "/dev/sda", "kind": "disk", "mount_points": [], "children": [
                {"name": "sda1", "path": "/dev/sda1", "kind": "part", "mount_points": ["/"], "children": []},
                {"name": "sda2", "path": "/dev/sda2", "kind": "part", "mount_points": ["/srv/data"], "children": []}
            ]},
            {"name": "dm-0", "path": "/dev/dm-0", "kind": "lvm", "mount_points": [], "children": []}
        ]})
    }

    fn job(mode: &str, sources: &[&str]) -> Job {
        serde_json::from_value(
            json!({"name": "j", "computers": ["pc-1"], "repository": "r", "mode": mode, "sources": sources}),
        )
        .unwrap()
    }

    #[test]
    fn a_device_the_computer_lacks_is_named_with_those_it_has() {
        let w = warnings(&job("volumes", &["/dev/sdb", "/dev/sda", "/dev/sda2"]), "pc-1", &inventory());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no device /dev/sdb") && w[0].contains("/dev/sda1, /dev/sda2, /dev/dm-0"), "{w:?}");
    }

    #[test]
    fn what_the_inventory_cannot_settle_is_not_doubted() {
        let sources = ["/dev/vg0/data", "/dev/mapper/vg0-data", "/var/lib/images/vm.img", "/dev/disk/by-id/x"];
        assert!(warnings(&job("volumes", &sources), "pc-1", &inventory()).is_empty());
        assert!(warnings(&job("files", &["/etc", "/home/"]), "pc-1", &inventory()).is_empty());
    }

    #[test]
    fn a_mount_point_in_a_volumes_job_and_a_device_in_a_files_job_are_doubted() {
        let w = warnings(&job("volumes", &["/srv/data/"]), "pc-1", &inventory());
        assert!(w.len() == 1 && w[0].contains("/dev/sda2 is mounted") && w[0].contains("--mode files"), "{w:?}");
        let w = warnings(&job("files", &["/dev/sda1"]), "pc-1", &inventory());
        assert!(w.len() == 1 && w[0].contains("is a device") && w[0].contains("--mode volumes"), "{w:?}");
    }
}
