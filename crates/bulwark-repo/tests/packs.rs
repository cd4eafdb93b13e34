//! The pack layout (format version 4) under the guarantees of the one-file-per-chunk layout:
//! garbage collection beside running backups, repacking, damage found and named, and the same
//! behaviour on any storage (a local directory and memory here; S3 in `s3.rs`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bulwark_repo::gc::collect_garbage;
use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::{Compression, InitOptions, PointStats, Repository};
use common::{assert_restores, backup, spec, write_blocks, BS};

/// Block `i` of a volume called `seed`: distinct for every (seed, i), incompressible enough.
fn block(seed: u64, i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(BS);
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(i as u64).to_le_bytes());
    h.finalize_xof().fill({
        out.resize(BS, 0);
        &mut out
    });
    out
}

fn small_packs(location: impl Into<bulwark_repo::storage::Location>) -> Repository {
    // 1 MiB packs: 16 blocks each, so a few hundred blocks make many packs.
    Repository::init(location, &InitOptions { pack_size: Some(1 << 20), ..Default::default() }).unwrap()
}

fn objects(repo: &Repository, prefix: &str) -> usize {
    repo.storage().list(prefix).unwrap().len()
}

#[test]
fn points_in_packs_restore_and_dedupe_across_handles() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let a: Vec<_> = (0..100).map(|i| block(1, i)).collect();
    let m1 = backup(&repo, "a", &a);
    assert!((6..=8).contains(&objects(&repo, "data/")), "{} packs for 100 blocks", objects(&repo, "data/"));
    // Another process (another handle) finds every chunk and stores nothing again.
    let other = Repository::open(dir.path().join("r"), None).unwrap();
    let packs_before = objects(&repo, "data/");
    let m2 = backup(&other, "a", &a);
    assert_eq!(objects(&repo, "data/"), packs_before, "a second backup of the same data wrote packs");
    assert_restores(&other, &m1, &a);
    assert_restores(&repo, &m2, &a);
    let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(report.ok && report.chunks_checked == 100, "{report:?}");
}

#[test]
fn a_collection_beside_a_running_backup_keeps_what_it_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let old: Vec<_> = (0..40).map(|i| block(2, i)).collect();
    let m_old = backup(&repo, "old", &old);

    // A backup begins and will reuse the old point's chunks; the old point is forgotten and a
    // collection runs while the backup is still writing.
    let mut w = repo.begin_point(spec("new", 40, None)).unwrap();
    let half = write_blocks(&repo, &mut w, &old[..20]).unwrap();
    repo.delete_point(&m_old.id).unwrap();
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 0, "{gc:?}");
    assert_eq!(gc.condemned_waiting, 40, "{gc:?}");
    assert_eq!(gc.waiting_for, vec![w.id().to_string()]);
    // The backup goes on reusing (it began before the chunks were condemned) and commits.
    write_blocks(&repo, &mut w, &old[20..]).unwrap();
    let m_new = w.commit(PointStats::default()).unwrap();
    assert_eq!(half.len(), 20);

    // The next collection finds them referenced again: nothing is deleted.
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!((gc.deleted_chunks, gc.condemned_waiting), (0, 0), "{gc:?}");
    assert_restores(&repo, &m_new, &old);
    assert!(repo.storage().stat("gc/condemned").unwrap().is_none());
}

#[test]
fn a_backup_that_begins_after_condemnation_stores_condemned_chunks_again() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let data: Vec<_> = (0..32).map(|i| block(3, i)).collect();
    let m = backup(&repo, "x", &data);
    // A running backup holds the condemnation back.
    let blocker = repo.begin_point(spec("blocker", 1, None)).unwrap();
    repo.delete_point(&m.id).unwrap();
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.condemned_waiting, 32, "{gc:?}");
    // Object stores stamp times to the second: a backup counts as having seen the list only
    // when it began a few seconds after it.
    std::thread::sleep(Duration::from_secs(6));
    let mut w = repo.begin_point(spec("x", data.len(), None)).unwrap();
    let id = repo.codec(Compression::None).digest(&data[0]);
    assert!(!repo.reuse_chunk(&id).unwrap(), "a condemned chunk was offered for reuse");
    write_blocks(&repo, &mut w, &data).unwrap();
    let again = w.commit(PointStats::default()).unwrap();
    drop(blocker);
    // The collection now deletes the condemned copies; the new point keeps its own.
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.condemned_waiting, 0, "{gc:?}");
    assert!(gc.deleted_packs >= 1, "{gc:?}");
    assert_restores(&repo, &again, &data);
    let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(report.ok, "{report:?}");
}

#[test]
fn forgetting_most_points_repacks_and_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    // Interleaved backups: every pack holds chunks of several points.
    let sets: Vec<Vec<Vec<u8>>> = (0..4).map(|s| (0..48).map(|i| block(10 + s, i)).collect()).collect();
    let mut points = Vec::new();
    let mut writers: Vec<_> = (0..4).map(|s| repo.begin_point(spec(&format!("p{s}"), 48, None)).unwrap()).collect();
    for i in 0..48 {
        for (s, w) in writers.iter_mut().enumerate() {
            write_blocks(&repo, w, &sets[s][i..i + 1]).unwrap();
        }
    }
    for w in writers {
        points.push(w.commit(PointStats::default()).unwrap());
    }
    let bytes_before: u64 = repo.storage().list("data/").unwrap().iter().map(|e| e.size).sum();
    for m in &points[..3] {
        repo.delete_point(&m.id).unwrap();
    }
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 3 * 48, "{gc:?}");
    assert!(gc.repacked_packs >= 1, "{gc:?}");
    let bytes_after: u64 = repo.storage().list("data/").unwrap().iter().map(|e| e.size).sum();
    assert!(bytes_after * 3 < bytes_before, "{bytes_before} -> {bytes_after} bytes of packs");
    assert_restores(&repo, &points[3], &sets[3]);
    // A fresh handle sees only the rewritten index.
    let fresh = Repository::open(dir.path().join("r"), None).unwrap();
    assert_restores(&fresh, &points[3], &sets[3]);
    assert!(verify(&fresh, Selection::All, 2, &|_| {}).unwrap().ok);
}

#[test]
fn a_damaged_pack_is_named_by_verify_and_healed_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let data: Vec<_> = (0..40).map(|i| block(4, i)).collect();
    let m = backup(&repo, "d", &data);
    let victim = repo.codec(Compression::None).digest(&data[17]);
    let copies = repo.chunk_copies(&victim).unwrap();
    assert_eq!(copies.len(), 1);
    let (key, offset, _) = &copies[0];
    let path = dir.path().join("r").join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[*offset as usize + 100] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(!report.ok);
    let ranges = &report.points[0].damaged_ranges;
    assert_eq!((ranges.len(), ranges[0].first_block, ranges[0].last_block), (1, 17, 17), "{report:?}");
    // Never built on: the next backup stores the chunk again, beside the damaged copy.
    assert!(!repo.reuse_chunk(&victim).unwrap());
    let healed = backup(&repo, "d", &data);
    assert_restores(&repo, &healed, &data);
    assert_restores(&repo, &m, &data);
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
    assert_eq!(repo.chunk_copies(&victim).unwrap().len(), 2);
    // The collection keeps the sound copy and lets the damaged one go.
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 0, "{gc:?}");
    let left = repo.chunk_copies(&victim).unwrap();
    assert_eq!(left.len(), 1);
    assert_ne!(&left[0].0, key, "the damaged copy was kept");
    assert_restores(&repo, &healed, &data);
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
}

#[test]
fn a_truncated_pack_is_damage_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let data: Vec<_> = (0..16).map(|i| block(5, i)).collect();
    backup(&repo, "t", &data);
    let pack = repo.storage().list("data/").unwrap().into_iter().max_by_key(|e| e.size).unwrap();
    let path = dir.path().join("r/data").join(&pack.name);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(pack.size / 2).unwrap();
    let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(!report.ok && report.chunks_damaged >= 7, "{report:?}");
    // A new backup of the same data does not build on the truncated pack.
    let fresh = Repository::open(dir.path().join("r"), None).unwrap();
    let again = backup(&fresh, "t", &data);
    assert_restores(&fresh, &again, &data);
}

#[test]
fn a_backup_that_dies_before_its_manifest_leaves_nothing_after_a_collection() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let kept: Vec<_> = (0..20).map(|i| block(6, i)).collect();
    let m = backup(&repo, "kept", &kept);
    let packs_before: HashSet<String> = repo.storage().list("data/").unwrap().into_iter().map(|e| e.name).collect();
    {
        let other = Repository::open(dir.path().join("r"), None).unwrap();
        let mut w = other.begin_point(spec("dies", 50, None)).unwrap();
        write_blocks(&other, &mut w, &(0..50).map(|i| block(7, i)).collect::<Vec<_>>()).unwrap();
        // Dropped without a commit, like a process that died: its finished packs are
        // written, some indexed.
    }
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert!(gc.deleted_packs >= 3, "{gc:?}");
    let packs_after: HashSet<String> = repo.storage().list("data/").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(packs_after, packs_before, "{gc:?}");
    assert_restores(&repo, &m, &kept);
}

#[test]
fn the_same_repository_logic_runs_on_memory_storage() {
    let loc: bulwark_repo::storage::Location = "memory://packs-test".parse().unwrap();
    let repo = small_packs(&loc);
    let data: Vec<_> = (0..30).map(|i| block(8, i)).collect();
    let m = backup(&repo, "m", &data);
    let again = Repository::open(&loc, None).unwrap();
    assert_restores(&again, &m, &data);
    again.delete_point(&m.id).unwrap();
    let gc = collect_garbage(&again, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 30, "{gc:?}");
    assert_eq!(objects(&again, "data/"), 0);
    // One file per chunk needs a directory.
    let loose = Repository::init(
        "memory://loose-test".parse::<bulwark_repo::storage::Location>().unwrap(),
        &InitOptions { layout: bulwark_repo::Layout::Loose, ..Default::default() },
    );
    assert!(loose.is_err());
}

#[test]
fn a_collection_keeps_the_copies_a_running_backup_stored_again_after_condemnation() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let data: Vec<_> = (0..32).map(|i| block(4, i)).collect();
    let m = backup(&repo, "x", &data);
    let blocker = repo.begin_point(spec("blocker", 1, None)).unwrap();
    repo.delete_point(&m.id).unwrap();
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.condemned_waiting, 32, "{gc:?}");
    std::thread::sleep(Duration::from_secs(6));
    // A backup that saw the list stores the same chunks again, and is still running when the
    // blocker ends and the next collection deletes the condemned copies: its own copies stay.
    let mut w = repo.begin_point(spec("x", data.len(), None)).unwrap();
    write_blocks(&repo, &mut w, &data).unwrap();
    drop(blocker);
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 32, "{gc:?}");
    let again = w.commit(PointStats::default()).unwrap();
    assert_restores(&repo, &again, &data);
    // So does a collection in another process, which finds them through the index.
    let other = Repository::open(dir.path().join("r"), None).unwrap();
    other.delete_point(&again.id).unwrap();
    let gc = collect_garbage(&other, Duration::ZERO).unwrap();
    assert_eq!(gc.condemned_waiting, 0, "{gc:?}");
    assert_eq!(objects(&other, "data/"), 0, "{gc:?}");
    let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(report.ok, "{report:?}");
}

#[test]
fn a_point_found_less_consistent_at_its_end_is_committed_as_such() {
    // A file-level backup whose application backup could not be ended (policy ignore) began as
    // application-consistent; the manifest says what it became, the stats do not keep it.
    let dir = tempfile::tempdir().unwrap();
    let repo = small_packs(dir.path().join("r"));
    let mut s = spec("db", 4, None);
    s.consistency = "application-consistent".into();
    let mut w = repo.begin_point(s).unwrap();
    write_blocks(&repo, &mut w, &(0..4).map(|i| block(5, i)).collect::<Vec<_>>()).unwrap();
    let stats = PointStats { consistency: Some("crash-inconsistent".into()), ..Default::default() };
    let m = w.commit(stats).unwrap();
    let listed = repo.list_points().unwrap();
    assert_eq!((m.consistency.as_str(), listed[0].consistency.as_str()), ("crash-inconsistent", "crash-inconsistent"));
    assert_eq!(listed[0].stats.consistency, None);
}
