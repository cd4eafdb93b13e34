//! Snapshots and changed block tracking on real filesystems: an ext4 filesystem in a disk image
//! on XFS, mounted through a loop device and written while it is backed up.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bulwark_agent::change_tracking::extents::TrackingFiles;
use bulwark_agent::change_tracking::CbtMode;
use bulwark_agent::filter::FilterOptions;
use bulwark_agent::snapshot::{Consistency, ReflinkProvider, RetryPolicy, Snapshot, SnapshotMode, SnapshotProvider};
use bulwark_agent::{backup_volume, backup_volume_with, AgentError, BackupOptions, BackupReport};
use bulwark_repo::{Compression, Repository};
use bulwark_testkit::{random_bytes, MountedFs};
use common::*;

const IMAGE_SIZE: u64 = 128 << 20;

struct Rig {
    dir: tempfile::TempDir,
    repo: Repository,
    // Drop order: the ext4 inside the image first, then the XFS holding it.
    inner: Option<MountedFs>,
    xfs: MountedFs,
    image: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        assert!(bulwark_testkit::is_root(), "loop devices and mounts need root; run the suite as root");
        let dir = tempfile::tempdir().unwrap();
        let xfs = MountedFs::create(dir.path(), "xfs", 1 << 30);
        let image = xfs.path().join("vm.img");
        let inner = MountedFs::on_image(
            &image,
            "ext4",
            IMAGE_SIZE,
            &["-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"],
        );
        let repo = new_repo(dir.path(), false);
        Rig { dir, repo, inner: Some(inner), xfs, image }
    }

    fn fs(&self) -> &Path {
        self.inner.as_ref().unwrap().path()
    }

    fn opts(&self) -> BackupOptions {
        BackupOptions {
            block_size: bulwark_repo::BlockSize::new(256 << 10).unwrap(),
            compression: Compression::DedupeFriendly,
            snapshot: SnapshotMode::Reflink,
            cbt: CbtMode::Extents,
            filters: FilterOptions::default(),
            retry: RetryPolicy { tries: 3, backoff: std::time::Duration::from_millis(10) },
            ..BackupOptions::new("vm")
        }
    }

    fn backup(&self) -> BackupReport {
        backup_volume(&self.repo, &self.image, &self.opts(), &|_| {}, &NO_CANCEL).unwrap()
    }

    fn base(&self) -> PathBuf {
        TrackingFiles::for_image(&self.image, "vm").base
    }

    /// The point restores byte-identical to the snapshot it was read from (kept as the base).
    fn assert_point_is_snapshot(&self, r: &BackupReport) {
        let snap = std::fs::read(self.base()).unwrap();
        let got = restore_bytes(&self.repo, self.dir.path(), &r.point);
        assert_same(&got, &snap, &r.point);
    }

    /// Snapshot clones still beside the image.
    fn snapshots_left(&self) -> usize {
        std::fs::read_dir(self.xfs.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".bulwark-snap-"))
            .count()
    }

    fn write_files(&self, round: u64, count: u64) {
        for i in 0..count {
            let path = self.fs().join(format!("f{}", (round * 7 + i) % 40));
            let data = random_bytes(((round + i) % 5 + 1) as usize * 100_000, round * 1000 + i);
            std::fs::write(path, data).unwrap();
        }
        if round % 2 == 1 {
            let _ = std::fs::remove_file(self.fs().join(format!("f{}", round % 40)));
        }
        // An in-place overwrite in the middle of a big file.
        let big = self.fs().join("big");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(big).unwrap();
        f.write_all_at(&random_bytes(64 << 10, round + 99), (round % 30) * (1 << 20)).unwrap();
    }
}

#[test]
fn cbt_incrementals_restore_identical_under_random_writes() {
    let rig = Rig::new();
    std::fs::write(rig.fs().join("big"), random_bytes(32 << 20, 1)).unwrap();
    rig.write_files(0, 10);
    let first = rig.backup();
    assert_eq!(first.snapshot, "reflink");
    assert_eq!(first.consistency, Consistency::Frozen, "the mounted ext4 was frozen: {:?}", first.notes);
    assert!(!first.change_tracking, "nothing to track against yet");
    rig.assert_point_is_snapshot(&first);
    for round in 1..=4 {
        rig.write_files(round, 3);
        let r = rig.backup();
        assert!(r.change_tracking, "round {round}: {:?}", r.notes);
        assert!(r.stats.read_bytes < IMAGE_SIZE / 4, "round {round}: read {} of {IMAGE_SIZE}", r.stats.read_bytes);
        rig.assert_point_is_snapshot(&r);
    }
    assert_eq!(rig.snapshots_left(), 0, "no snapshot is left behind");
}

#[test]
fn damaged_or_stale_tracking_falls_back_and_stays_correct() {
    let rig = Rig::new();
    rig.write_files(0, 8);
    rig.backup();
    let t = TrackingFiles::for_image(&rig.image, "vm");

    std::fs::write(&t.state, b"{ not json").unwrap();
    rig.write_files(1, 3);
    let r = rig.backup();
    assert!(!r.change_tracking && r.notes.iter().any(|n| n.contains("change tracking not used")), "{:?}", r.notes);
    rig.assert_point_is_snapshot(&r);

    std::fs::remove_file(&t.base).unwrap();
    rig.write_files(2, 3);
    let r = rig.backup();
    assert!(!r.change_tracking && r.notes.iter().any(|n| n.contains("gone")), "{:?}", r.notes);
    rig.assert_point_is_snapshot(&r);

    // A newer point of the same name from elsewhere: the tracked one is no longer the parent.
    let other = rig.dir.path().join("other.img");
    std::fs::write(&other, random_bytes(IMAGE_SIZE as usize, 5)).unwrap();
    backup_volume(
        &rig.repo,
        &other,
        &BackupOptions { snapshot: SnapshotMode::None, ..rig.opts() },
        &|_| {},
        &NO_CANCEL,
    )
    .unwrap();
    rig.write_files(3, 3);
    let r = rig.backup();
    assert!(!r.change_tracking && r.notes.iter().any(|n| n.contains("not the one tracked")), "{:?}", r.notes);
    rig.assert_point_is_snapshot(&r);

    // Tracking resumes after a trusted run.
    rig.write_files(4, 3);
    assert!(rig.backup().change_tracking);
}

#[test]
fn a_write_landing_during_the_snapshot_is_wholly_in_or_out() {
    let rig = Rig::new();
    const RECORD: usize = 64 << 10;
    const RECORDS: u64 = 64;
    let path = rig.fs().join("journal.dat");
    std::fs::write(&path, vec![0u8; RECORD * RECORDS as usize]).unwrap();
    let stop = AtomicBool::new(false);
    let points: Vec<String> = std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                // One write() per record: the freeze lets each one in wholly or not at all.
                f.write_all_at(&vec![(i % 251 + 1) as u8; RECORD], (i % RECORDS) * RECORD as u64).unwrap();
                i += 1;
            }
        });
        let mut points = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            points.push(rig.backup().point);
        }
        stop.store(true, Ordering::Relaxed);
        points
    });
    let mut seen_new = false;
    for p in points {
        let m = rig.repo.resolve(&p).unwrap();
        let img = rig.dir.path().join(format!("{p}.img"));
        bulwark_agent::restore_volume(&rig.repo, &m, &img, &Default::default(), &|_| {}, &NO_CANCEL).unwrap();
        let mounted = bulwark_testkit::mount_read_only(&img);
        let data = std::fs::read(mounted.path().join("journal.dat")).unwrap();
        for (r, rec) in data.chunks(RECORD).enumerate() {
            assert!(rec.iter().all(|&b| b == rec[0]), "point {p}: record {r} is torn");
            seen_new |= rec[0] != 0;
        }
    }
    assert!(seen_new, "the writer's records reached the points");
}

/// A snapshot provider that fails its first `fail` tries, then takes real reflink snapshots.
struct Flaky {
    fail: u32,
    tries: std::sync::atomic::AtomicU32,
}

impl SnapshotProvider for Flaky {
    fn name(&self) -> &'static str {
        "reflink"
    }
    fn create(&self, source: &Path) -> Result<Snapshot, String> {
        if self.tries.fetch_add(1, Ordering::Relaxed) < self.fail {
            return Err("device busy".into());
        }
        ReflinkProvider.create(source)
    }
    fn remove_stale(&self, source: &Path) -> Vec<String> {
        ReflinkProvider.remove_stale(source)
    }
}

#[test]
fn snapshot_retries_are_logged_and_exhaustion_leaves_nothing() {
    let rig = Rig::new();
    rig.write_files(0, 4);
    let flaky = Flaky { fail: 2, tries: Default::default() };
    let r = backup_volume_with(&rig.repo, &rig.image, &rig.opts(), &flaky, &|_| {}, &NO_CANCEL).unwrap();
    let failed: Vec<_> = r.notes.iter().filter(|n| n.contains("failed (try")).collect();
    assert_eq!(failed.len(), 2, "{:?}", r.notes);
    assert!(r.notes.iter().any(|n| n.contains("succeeded on try 3 of 3")), "{:?}", r.notes);

    let points_before = rig.repo.list_points().unwrap().len();
    let hopeless = Flaky { fail: 3, tries: Default::default() };
    let err = backup_volume_with(&rig.repo, &rig.image, &rig.opts(), &hopeless, &|_| {}, &NO_CANCEL).unwrap_err();
    assert!(matches!(err, AgentError::Snapshot { .. }), "{err}");
    assert!(err.to_string().contains("failed 3 times"), "{err}");
    assert_eq!(rig.repo.list_points().unwrap().len(), points_before);
    assert_eq!(rig.snapshots_left(), 0);
}

#[test]
fn stale_snapshots_of_dead_backups_are_removed_at_the_next_start() {
    let rig = Rig::new();
    let dead_pid = (400_000..).find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let stale = rig.xfs.path().join(format!(".bulwark-snap-vm.img-{dead_pid}-0badf00d"));
    std::fs::write(&stale, b"left by a killed backup").unwrap();
    let r = rig.backup();
    assert!(!stale.exists());
    assert!(r.notes.iter().any(|n| n.contains("removed stale snapshot")), "{:?}", r.notes);
}

#[test]
fn a_file_moved_out_of_an_exclusion_is_stored_by_the_next_cbt_backup() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.fs().join("scratch")).unwrap();
    let data = random_bytes(3 << 20, 42);
    std::fs::write(rig.fs().join("scratch/keepme"), &data).unwrap();
    let opts = BackupOptions {
        filters: FilterOptions { exclude: vec!["/scratch".into()], ..FilterOptions::default() },
        ..rig.opts()
    };
    let first = backup_volume(&rig.repo, &rig.image, &opts, &|_| {}, &NO_CANCEL).unwrap();
    assert!(first.filtered.excluded_bytes >= 3 << 20, "{:?}", first.filtered);
    // A rename moves no data blocks: only the exclusion changes.
    std::fs::rename(rig.fs().join("scratch/keepme"), rig.fs().join("keepme")).unwrap();
    let second = backup_volume(&rig.repo, &rig.image, &opts, &|_| {}, &NO_CANCEL).unwrap();
    assert!(second.change_tracking, "{:?}", second.notes);
    let m = rig.repo.resolve(&second.point).unwrap();
    let img = rig.dir.path().join("second.img");
    bulwark_agent::restore_volume(&rig.repo, &m, &img, &Default::default(), &|_| {}, &NO_CANCEL).unwrap();
    let mounted = bulwark_testkit::mount_read_only(&img);
    assert!(std::fs::read(mounted.path().join("keepme")).unwrap() == data, "the moved file's data was stored");
}
