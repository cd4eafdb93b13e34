//! Block filters on a real ext4: a reused disk (old data everywhere), a filesystem half full of
//! files of which half were deleted, an excluded folder and a swap file. The filtered point
//! stores a fraction of the unfiltered one, restores to an fsck-clean filesystem with every kept
//! file intact, and the repository holds no trace of deleted, excluded or swapped data.

mod common;

use std::path::Path;
use std::process::Command;

use bulwark_agent::change_tracking::CbtMode;
use bulwark_agent::filter::FilterOptions;
use bulwark_agent::snapshot::SnapshotMode;
use bulwark_agent::{backup_volume, BackupOptions};
use bulwark_repo::{BlockSize, Compression};
use bulwark_testkit::{random_bytes, MountedFs};
use common::*;

const SIZE: u64 = 256 << 20;
const FILE: usize = 2 << 20;

/// A file whose every 4 KiB block starts with `marker`, the rest random.
fn marked(marker: &str, seed: u64) -> Vec<u8> {
    marked_len(marker, seed, FILE)
}

fn marked_len(marker: &str, seed: u64, len: usize) -> Vec<u8> {
    let mut d = random_bytes(len, seed);
    for b in d.chunks_mut(4096) {
        b[..marker.len()].copy_from_slice(marker.as_bytes());
    }
    d
}

/// How often `needle` occurs in the repository's stored chunks (chunk files or packs).
fn repo_count(repo: &Path, needle: &[u8]) -> usize {
    fn walk(p: &Path, needle: &[u8]) -> usize {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path(), needle)
                } else {
                    std::fs::read(e.path()).unwrap().windows(needle.len()).filter(|w| *w == needle).count()
                }
            })
            .sum()
    }
    walk(&repo.join("chunks"), needle) + walk(&repo.join("data"), needle)
}

fn repo_contains(repo: &Path, needle: &[u8]) -> bool {
    repo_count(repo, needle) > 0
}

#[test]
fn filters_on_ext4_with_1k_blocks() {
    filters_drop_unused_excluded_and_swap_and_restore_fsck_clean("1024");
}

#[test]
fn filters_on_ext4_with_4k_blocks() {
    filters_drop_unused_excluded_and_swap_and_restore_fsck_clean("4096");
}

fn filters_drop_unused_excluded_and_swap_and_restore_fsck_clean(fs_block: &str) {
    assert!(bulwark_testkit::is_root(), "loop devices and mounts need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let xfs = MountedFs::create(dir.path(), "xfs", 1 << 30);
    let image = xfs.path().join("disk.img");
    // A reused disk: old data everywhere, which mkfs (told not to discard) leaves in free space.
    std::fs::write(&image, marked_len("OLD-DISK-MARKER", 1, SIZE as usize)).unwrap();
    let fs = MountedFs::on_image(
        &image,
        "ext4",
        SIZE,
        &["-b", fs_block, "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"],
    );
    let root = fs.path();
    let mut kept = Vec::new();
    for i in 0..48u64 {
        let marker = if i % 2 == 0 { format!("KEPT-MARKER-{i:03}") } else { format!("DELETED-MARKER-{i:03}") };
        let data = marked(&marker, 100 + i);
        std::fs::write(root.join(format!("file{i}")), &data).unwrap();
        if i % 2 == 0 {
            kept.push((format!("file{i}"), data));
        }
    }
    std::fs::create_dir_all(root.join("scratch/deep")).unwrap();
    for i in 0..4u64 {
        std::fs::write(root.join(format!("scratch/deep/tmp{i}")), marked("EXCLUDED-MARKER", 300 + i)).unwrap();
    }
    std::fs::write(root.join("swapfile"), marked("SWAP-MARKER", 400).repeat(4)).unwrap();
    assert!(Command::new("mkswap").arg(root.join("swapfile")).output().unwrap().status.success());
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/fstab"), "/dev/vda1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n").unwrap();
    for i in (1..48u64).step_by(2) {
        std::fs::remove_file(root.join(format!("file{i}"))).unwrap();
    }
    bulwark_testkit::run(&mut Command::new("sync"));

    let base = BackupOptions {
        block_size: BlockSize::new(256 << 10).unwrap(),
        compression: Compression::None,
        snapshot: SnapshotMode::Reflink,
        cbt: CbtMode::None,
        ..BackupOptions::new("disk")
    };
    let on_dir = dir.path().join("on");
    let off_dir = dir.path().join("off");
    std::fs::create_dir_all(&on_dir).unwrap();
    std::fs::create_dir_all(&off_dir).unwrap();
    let repo_on = new_repo(&on_dir, false);
    let repo_off = new_repo(&off_dir, false);
    let on_opts = BackupOptions {
        filters: FilterOptions { exclude: vec!["/scratch".into()], ..FilterOptions::all() },
        ..base.clone()
    };
    let on = backup_volume(&repo_on, &image, &on_opts, &|_| {}, &NO_CANCEL).unwrap();
    let off = backup_volume(
        &repo_off,
        &image,
        &BackupOptions { filters: FilterOptions::default(), ..base },
        &|_| {},
        &NO_CANCEL,
    )
    .unwrap();

    assert!(on.filtered.unused_bytes > SIZE / 2, "{:?} {:?}", on.filtered, on.notes);
    assert!(on.filtered.excluded_bytes >= 4 * FILE as u64, "{:?}", on.filtered);
    assert!(on.filtered.swap_bytes >= 4 * FILE as u64 - 4096, "{:?}", on.filtered);
    let ratio = on.stats.stored_bytes as f64 / off.stats.stored_bytes as f64;
    assert!(ratio <= 0.30, "filtered point stores {ratio:.3} of the unfiltered one");

    let on_repo = on_dir.join("repo");
    assert!(repo_contains(&on_repo, b"KEPT-MARKER-000"), "the search itself works");
    for gone in ["DELETED-MARKER", "EXCLUDED-MARKER", "SWAP-MARKER"] {
        assert!(!repo_contains(&on_repo, gone.as_bytes()), "{gone} data reached the repository");
    }
    // Old data survives only in blocks the bitmaps mark used that mkfs never wrote (bitmaps of
    // uninitialised groups, reserved descriptor blocks): a sliver, not the free space. The
    // marker recurs every 4 KiB of the old disk.
    let old = repo_count(&on_repo, b"OLD-DISK-MARKER") as u64 * 4096;
    assert!(old <= SIZE / 50, "{old} bytes of old-disk data stored");

    let restored = dir.path().join("restored.img");
    let m = repo_on.resolve(&on.point).unwrap();
    bulwark_agent::restore_volume(&repo_on, &m, &restored, &Default::default(), &|_| {}, &NO_CANCEL).unwrap();
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&restored).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let back = bulwark_testkit::mount_read_only(&restored);
    for (name, data) in &kept {
        assert!(std::fs::read(back.path().join(name)).unwrap() == *data, "{name} differs after restore");
    }
    let tmp = std::fs::read(back.path().join("scratch/deep/tmp0")).unwrap();
    assert_eq!(tmp.len(), FILE, "an excluded file keeps its size");
    assert!(tmp.iter().all(|&b| b == 0), "and holds zeroes");
    let swap = std::fs::read(back.path().join("swapfile")).unwrap();
    assert_eq!(&swap[4086..4096], b"SWAPSPACE2", "the swap file keeps its header");
}

/// A disk with an MBR: an ext4 partition and a swap partition. The swap partition keeps only its
/// header; the ext4 one is filtered by its own bitmaps at its offset.
#[test]
fn partitioned_disk_drops_swap_partition_and_filters_ext4_partition() {
    assert!(bulwark_testkit::is_root(), "loop devices and mounts need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let xfs = MountedFs::create(dir.path(), "xfs", 1 << 30);
    let image = xfs.path().join("disk.img");
    const MIB: u64 = 1 << 20;
    let (p1, p1_len, p2, p2_len) = (MIB, 96 * MIB, 97 * MIB, 31 * MIB);
    let mut disk = marked_len("OLD-DISK-MARKER", 9, 128 << 20);
    disk[..512].fill(0);
    for (i, (start, len, kind)) in [(p1, p1_len, 0x83u8), (p2, p2_len, 0x82)].into_iter().enumerate() {
        let e = &mut disk[446 + 16 * i..][..16];
        e[4] = kind;
        e[8..12].copy_from_slice(&((start / 512) as u32).to_le_bytes());
        e[12..16].copy_from_slice(&((len / 512) as u32).to_le_bytes());
    }
    disk[510] = 0x55;
    disk[511] = 0xAA;
    std::fs::write(&image, &disk).unwrap();
    let part = |start: u64, len: u64| {
        let out = bulwark_testkit::run(
            Command::new("losetup")
                .args(["--find", "--show", "--offset", &start.to_string(), "--sizelimit", &len.to_string()])
                .arg(&image),
        );
        out.trim().to_string()
    };
    let dev1 = part(p1, p1_len);
    bulwark_testkit::run(Command::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-b",
        "4096",
        "-E",
        "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
        &dev1,
    ]));
    let mnt = tempfile::tempdir().unwrap();
    bulwark_testkit::run(Command::new("mount").arg(&dev1).arg(mnt.path()));
    let keep = marked("KEPT-MARKER", 7);
    std::fs::write(mnt.path().join("keep"), &keep).unwrap();
    std::fs::write(mnt.path().join("gone"), marked("DELETED-MARKER", 8)).unwrap();
    std::fs::remove_file(mnt.path().join("gone")).unwrap();
    bulwark_testkit::run(Command::new("umount").arg(mnt.path()));
    bulwark_testkit::run(Command::new("losetup").args(["-d", &dev1]));
    let dev2 = part(p2, p2_len);
    bulwark_testkit::run(Command::new("mkswap").arg(&dev2));
    bulwark_testkit::run(Command::new("losetup").args(["-d", &dev2]));

    let repo = new_repo(dir.path(), false);
    let opts =
        BackupOptions { compression: Compression::None, snapshot: SnapshotMode::Reflink, ..BackupOptions::new("disk") };
    let r = backup_volume(&repo, &image, &opts, &|_| {}, &NO_CANCEL).unwrap();
    assert!(r.filtered.swap_bytes >= p2_len - 4096, "{:?} {:?}", r.filtered, r.notes);
    assert!(r.filtered.unused_bytes > p1_len / 2, "{:?} {:?}", r.filtered, r.notes);
    assert!(r.stats.stored_bytes < 16 * MIB, "stored {}", r.stats.stored_bytes);
    let on_repo = dir.path().join("repo");
    assert!(repo_contains(&on_repo, b"KEPT-MARKER"));
    assert!(!repo_contains(&on_repo, b"DELETED-MARKER"));

    let restored = dir.path().join("restored.img");
    let m = repo.resolve(&r.point).unwrap();
    bulwark_agent::restore_volume(&repo, &m, &restored, &Default::default(), &|_| {}, &NO_CANCEL).unwrap();
    let back = std::fs::read(&restored).unwrap();
    assert_eq!(&back[..512], &disk[..512], "the partition table is kept");
    assert_eq!(&back[(p2 + 4086) as usize..(p2 + 4096) as usize], b"SWAPSPACE2", "the swap header is kept");
    let part1 = dir.path().join("p1.img");
    std::fs::write(&part1, &back[p1 as usize..(p1 + p1_len) as usize]).unwrap();
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&part1).output().unwrap();
    assert!(fsck.status.success(), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    let mounted = bulwark_testkit::mount_read_only(&part1);
    assert!(std::fs::read(mounted.path().join("keep")).unwrap() == keep);
}
