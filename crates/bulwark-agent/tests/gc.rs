//! Retention and garbage collection: space comes back, and nothing a point needs ever goes,
//! even while backups run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bulwark_repo::gc::collect_garbage;
use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::{BlockRef, Compression, PointSpec, PointStats};
use common::*;

fn chunk_count(dir: &std::path::Path) -> usize {
    let pw: &[u8] = b"correct horse";
    bulwark_repo::Repository::open(dir.join("repo"), Some(pw)).unwrap().chunk_count().unwrap()
}

#[test]
fn forget_then_gc_frees_exactly_the_unshared_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), true);
    let o = opts("vol", 1 << 20, Compression::Optimal);
    let mut img = bulwark_testkit::mixed_bytes(8 << 20, 1 << 20, 5);
    let unique = bulwark_testkit::mixed_bytes(1 << 20, 1 << 20, 1234567);
    img[..1 << 20].iter_mut().zip(unique).enumerate().for_each(|(i, (x, u))| *x = u ^ (i as u8) | 1);
    let first = backup_bytes(&repo, dir.path(), &img, &o);
    img[..1 << 20].fill(0xab);
    let second = backup_bytes(&repo, dir.path(), &img, &o);
    let before = chunk_count(dir.path());
    repo.delete_point(&first.point.parse().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let report = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(report.deleted_chunks, 1, "only the block the second point rewrote was unique to the first");
    assert_eq!(chunk_count(dir.path()), before - 1);
    assert_same(&restore_bytes(&repo, dir.path(), &second.point), &img, "survivor");
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
}

#[test]
fn a_parent_cannot_be_deleted_from_under_a_running_backup() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), false);
    let img = bulwark_testkit::mixed_bytes(4 << 20, 1 << 20, 19);
    let parent = backup_bytes(&repo, dir.path(), &img, &opts("vol", 1 << 20, Compression::Optimal));
    let pm = repo.resolve(&parent.point).unwrap();
    let spec = PointSpec {
        kind: bulwark_repo::PointKind::Volume,
        name: "vol".into(),
        source: "test".into(),
        volume_size: 0,
        block_size: pm.block_size,
        compression: Compression::Optimal,
        parent: Some(pm.id.clone()),
        snapshot: "none".into(),
        consistency: "crash-inconsistent".into(),
        key_scope: None,
    };
    let w = repo.begin_point(spec.clone()).unwrap();
    assert_eq!(w.parent(), Some(&pm.id), "the parent is pinned");
    let err = repo.delete_point(&pm.id).unwrap_err();
    assert!(matches!(err, bulwark_repo::RepoError::PointInUse { .. }), "{err}");
    drop(w);
    repo.delete_point(&pm.id).unwrap();
    // A backup whose parent is already gone does not pretend to build on it.
    let w = repo.begin_point(spec).unwrap();
    assert_eq!(w.parent(), None);
}

#[test]
fn gc_spares_chunks_a_running_backup_reuses_from_a_forgotten_point() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), false);
    let bs = 1u32 << 20;
    let img = bulwark_testkit::mixed_bytes(4 << 20, bs as usize, 9);
    let parent = backup_bytes(&repo, dir.path(), &img, &opts("vol", bs, Compression::Optimal));
    let pm = repo.resolve(&parent.point).unwrap();
    let mut refs = Vec::new();
    let mut ix = repo.open_index(&pm).unwrap();
    while let Some(r) = ix.next_block().unwrap() {
        refs.push(r);
    }
    std::thread::sleep(Duration::from_millis(50));

    // A backup under another name begins and finds the point's first half already stored (it
    // does not build on the point, so nothing pins it)…
    let spec = PointSpec {
        kind: bulwark_repo::PointKind::Volume,
        name: "other".into(),
        source: "test".into(),
        volume_size: img.len() as u64,
        block_size: pm.block_size,
        compression: Compression::Optimal,
        parent: None,
        snapshot: "none".into(),
        consistency: "crash-inconsistent".into(),
        key_scope: None,
    };
    let mut w = repo.begin_point(spec).unwrap();
    for r in &refs[..2] {
        if let BlockRef::Chunk(id) = r {
            assert!(repo.reuse_chunk(id).unwrap());
        }
        w.push_block(r).unwrap();
    }
    // …while the parent is forgotten and a collection runs.
    repo.delete_point(&pm.id).unwrap();
    let report = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(report.live_backups, 1);
    // The second half was not yet touched: the collector may take it, and the backup must then
    // notice the chunk is gone and store the block again.
    for (i, r) in refs[2..].iter().enumerate() {
        if let BlockRef::Chunk(id) = r {
            if !repo.reuse_chunk(id).unwrap() {
                let block = &img[(i + 2) * bs as usize..][..bs as usize];
                let mut codec = repo.codec(Compression::Optimal);
                repo.put_chunk(id, &codec.encode(id, block)).unwrap();
            }
        }
        w.push_block(r).unwrap();
    }
    let m = w.commit(PointStats::default()).unwrap();
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok, "nothing the new point needs was swept");
    assert_same(&restore_bytes(&repo, dir.path(), m.id.as_str()), &img, "point written beside gc");
}

#[test]
fn concurrent_backups_forgets_and_gcs_keep_every_point_whole() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), false);
    let stop = AtomicBool::new(false);
    let bs = 256u32 << 10;
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..2u64 {
            let (repo, stop) = (&repo, &stop);
            let d = dir.path().join(format!("w{w}"));
            std::fs::create_dir_all(&d).unwrap();
            writers.push(s.spawn(move || {
                let o = opts(&format!("host{w}"), bs, Compression::DedupeFriendly);
                // Both hosts share a base, so their chunks overlap and dedupe across names.
                let mut img = bulwark_testkit::mixed_bytes(4 << 20, bs as usize, 77);
                let mut made = Vec::new();
                for round in 0..12u64 {
                    let b = (round * 3 + w) as usize % 16;
                    img[b * bs as usize..][..bs as usize].fill((round * 2 + w) as u8);
                    let r = backup_bytes(repo, &d, &img, &o);
                    made.push((r.point, img.clone()));
                }
                stop.store(true, Ordering::Relaxed);
                made
            }));
        }
        let (repo, stop) = (&repo, &stop);
        s.spawn(move || {
            let policy = bulwark_repo::retention::Policy { last: 3, ..Default::default() };
            while !stop.load(Ordering::Relaxed) {
                for name in ["host0", "host1"] {
                    let points: Vec<_> = repo.list_points().unwrap().into_iter().filter(|m| m.name == name).collect();
                    let created: Vec<_> = points.iter().map(|m| m.created).collect();
                    for (m, keep) in points.iter().zip(bulwark_repo::retention::apply(&policy, &created)) {
                        if keep.is_empty() {
                            match repo.delete_point(&m.id) {
                                Ok(()) | Err(bulwark_repo::RepoError::PointInUse { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }
                // The grace the product uses: with none, a collection may take a lease or a
                // manifest being staged this very instant for a dead writer's leftover.
                collect_garbage(repo, bulwark_repo::gc::DEFAULT_GRACE).unwrap();
            }
        });
        for (w, h) in writers.into_iter().enumerate() {
            let made = h.join().unwrap();
            let d = dir.path().join(format!("w{w}"));
            for (point, img) in made.iter().rev().take(3) {
                assert_same(&restore_bytes(repo, &d, point), img, point);
            }
        }
    });
    let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(report.ok, "{report:?}");
}
