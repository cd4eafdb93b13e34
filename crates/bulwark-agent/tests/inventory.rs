//! The inventory against `lsblk` and `blkid -p` on real loop devices: a mounted ext4 (also
//! bind-mounted on a path with a space, so the mount table's escapes and several mount points are
//! exercised) and an unmounted xfs, which only the superblock probe can name. Every signature the
//! probe knows is also checked on synthetic images, which needs no root.

use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_agent::inventory::{self, BlockDevice, Inventory};
use bulwark_testkit::{run, LoopDevice, MountedFs};

const MIB: u64 = 1 << 20;

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn find<'a>(inv: &'a Inventory, dev: &Path) -> &'a BlockDevice {
    let name = dev.file_name().unwrap().to_str().unwrap();
    let names: Vec<&str> = inv.devices.iter().map(|d| d.name.as_str()).collect();
    inv.devices.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("{name} not in the inventory: {names:?}"))
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().to_str().unwrap().to_string()
}

/// Everything but FSTYPE comes from lsblk itself. lsblk takes FSTYPE from the udev database,
/// which is empty where no udevd runs (containers) and can lag behind a fresh mkfs on a reused
/// loop device, so the filesystem is checked against `blkid -p`: the probe udev runs,
/// made directly on the device.
fn assert_same_as_lsblk(dev: &BlockDevice) {
    let columns = "NAME,MAJ:MIN,SIZE,TYPE,MOUNTPOINTS";
    let out = run(Command::new("lsblk").args(["-b", "-J", "-o", columns]).arg(&dev.path));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &json["blockdevices"][0];
    assert_eq!(l["name"].as_str(), Some(dev.name.as_str()), "{out}");
    assert_eq!(l["maj:min"].as_str(), Some(dev.major_minor.as_str()), "{out}");
    // Older lsblk prints sizes as strings even in JSON.
    let size = l["size"].as_u64().or_else(|| l["size"].as_str()?.parse().ok());
    assert_eq!(size, Some(dev.size_bytes), "{out}");
    assert_eq!(l["type"].as_str(), Some(dev.kind.as_str()), "{out}");
    // An unmounted device has `[null]`.
    let mut points: Vec<String> =
        l["mountpoints"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(String::from)).collect();
    points.sort();
    assert_eq!(points, dev.mount_points, "{out}");

    // blkid exits non-zero when it finds nothing, which is an answer here, not a failure.
    let blkid = Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE"]).arg(&dev.path).output().unwrap();
    let probed = String::from_utf8_lossy(&blkid.stdout).trim().to_string();
    assert_eq!(dev.fs_type.as_deref(), (!probed.is_empty()).then_some(probed.as_str()), "blkid -p {}", dev.path);
}

#[test]
fn mounted_ext4_matches_lsblk() {
    assert!(bulwark_testkit::is_root(), "loop devices and mounts need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let fs = MountedFs::create(dir.path(), "ext4", 64 * MIB);
    let bind = dir.path().join("bind target");
    std::fs::create_dir(&bind).unwrap();
    run(Command::new("mount").arg("--bind").arg(fs.path()).arg(&bind));
    let _bind = Unmount(bind.clone());

    let inv = inventory::collect().unwrap();
    let dev = find(&inv, &fs.loopdev.device);
    assert_eq!(dev.path, fs.loopdev.device.to_str().unwrap());
    assert_eq!(dev.kind, "loop");
    assert_eq!(dev.size_bytes, 64 * MIB);
    assert_eq!(dev.fs_type.as_deref(), Some("ext4"));
    let mut want = vec![canonical(fs.path()), canonical(&bind)];
    want.sort();
    assert_eq!(dev.mount_points, want);
    assert!(dev.children.is_empty(), "{dev:?}");
    assert_same_as_lsblk(dev);
    // The probe, which mounted devices skip, agrees with the mount table.
    assert_eq!(inventory::probe_fs_type(&fs.loopdev.device).as_deref(), Some("ext4"));

    assert_eq!(inv.hostname, run(Command::new("uname").arg("-n")));
    assert_eq!(inv.kernel, run(Command::new("uname").arg("-r")));
}

#[test]
fn unmounted_xfs_is_probed_and_matches_lsblk() {
    assert!(bulwark_testkit::is_root(), "loop devices need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    // mkfs.xfs refuses filesystems under 300 MiB; the image is sparse.
    let lo = LoopDevice::create(dir.path(), "xfs.img", 320 * MIB);
    run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&lo.device));

    let inv = inventory::collect().unwrap();
    let dev = find(&inv, &lo.device);
    assert_eq!(dev.kind, "loop");
    assert_eq!(dev.size_bytes, 320 * MIB);
    assert_eq!(dev.fs_type.as_deref(), Some("xfs"));
    assert!(dev.mount_points.is_empty(), "{dev:?}");
    assert_same_as_lsblk(dev);
}

/// A zeroed image with bytes placed at given offsets.
struct Image(Vec<u8>);

impl Image {
    fn new() -> Image {
        Image(vec![0; 128 << 10])
    }

    fn put(mut self, at: usize, bytes: &[u8]) -> Image {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn probe(&self, path: &Path) -> Option<String> {
        std::fs::write(path, &self.0).unwrap();
        inventory::probe_fs_type(path)
    }
}

#[test]
fn probe_names_known_signatures_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    let p = path.as_path();
    let ext = |compat: u32, incompat: u32| {
        Image::new()
            .put(1024 + 56, &0xEF53u16.to_le_bytes())
            .put(1024 + 0x5C, &compat.to_le_bytes())
            .put(1024 + 0x60, &incompat.to_le_bytes())
            .probe(p)
    };
    assert_eq!(ext(0x4, 0x2 | 0x40).as_deref(), Some("ext4")); // extents
    assert_eq!(ext(0x4, 0x2 | 0x80).as_deref(), Some("ext4")); // 64bit
    assert_eq!(ext(0, 0x200).as_deref(), Some("ext4")); // flex_bg
    assert_eq!(ext(0x4, 0x2).as_deref(), Some("ext3")); // has_journal, filetype
    assert_eq!(ext(0, 0x2).as_deref(), Some("ext2"));

    assert_eq!(Image::new().put(0, b"XFSB").probe(p).as_deref(), Some("xfs"));
    assert_eq!(Image::new().put(0x10040, b"_BHRfS_M").probe(p).as_deref(), Some("btrfs"));
    assert_eq!(Image::new().put(4086, b"SWAPSPACE2").probe(p).as_deref(), Some("swap"));
    assert_eq!(Image::new().put(4086, b"SWAP-SPACE").probe(p).as_deref(), Some("swap"));
    assert_eq!(Image::new().put(65526, b"SWAPSPACE2").probe(p).as_deref(), Some("swap"));
    assert_eq!(Image::new().put(32769, b"CD001").probe(p).as_deref(), Some("iso9660"));
    let boot = || Image::new().put(510, &[0x55, 0xAA]);
    assert_eq!(boot().put(82, b"FAT32   ").probe(p).as_deref(), Some("vfat"));
    assert_eq!(boot().put(54, b"FAT16   ").probe(p).as_deref(), Some("vfat"));
    assert_eq!(boot().put(54, b"FAT12   ").probe(p).as_deref(), Some("vfat"));

    // A label without the boot signature, a bare boot signature (an MBR), zeros, a file too
    // short to hold any signature, and a missing device are all unknown.
    assert_eq!(Image::new().put(82, b"FAT32   ").probe(p), None);
    assert_eq!(boot().probe(p), None);
    assert_eq!(Image::new().probe(p), None);
    std::fs::write(p, b"XFS").unwrap();
    assert_eq!(inventory::probe_fs_type(p), None);
    assert_eq!(inventory::probe_fs_type(&dir.path().join("missing")), None);
}
