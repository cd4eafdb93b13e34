//! Every restore point restores byte-identical, whatever the block size, compression level,
//! encryption and sequence of changes that led to it.

mod common;

use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::Compression;
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Change {
    Zero(u64),
    Random(u64, u64),
    FlipByte(u64, u64),
    CopyBlock(u64, u64),
    Resize(i64),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<u64>()).prop_map(Change::Zero),
        (any::<u64>(), any::<u64>()).prop_map(|(b, s)| Change::Random(b, s)),
        (any::<u64>(), any::<u64>()).prop_map(|(b, o)| Change::FlipByte(b, o)),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Change::CopyBlock(a, b)),
        (-300_000i64..300_000).prop_map(Change::Resize),
    ]
}

fn apply(img: &mut Vec<u8>, bs: usize, c: &Change) {
    let blocks = img.len().div_ceil(bs).max(1) as u64;
    let range = |b: u64, len: usize| {
        let start = (b % blocks) as usize * bs;
        start.min(len)..(start + bs).min(len)
    };
    match *c {
        Change::Zero(b) => {
            let r = range(b, img.len());
            img[r].fill(0)
        }
        Change::Random(b, seed) => {
            let r = range(b, img.len());
            let fill = bulwark_testkit::mixed_bytes(r.len(), r.len().max(1), seed | 2);
            img[r].copy_from_slice(&fill)
        }
        Change::FlipByte(b, o) => {
            let r = range(b, img.len());
            if !r.is_empty() {
                let at = r.start + (o as usize % r.len());
                img[at] ^= 0x5a;
            }
        }
        Change::CopyBlock(a, b) => {
            let (ra, rb) = (range(a, img.len()), range(b, img.len()));
            let n = ra.len().min(rb.len());
            let src = img[ra.start..ra.start + n].to_vec();
            img[rb.start..rb.start + n].copy_from_slice(&src);
        }
        Change::Resize(d) => {
            let new = (img.len() as i64 + d).max(1) as usize;
            img.resize(new, 0x33);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_point_restores_identical(
        bs in prop::sample::select(vec![256u32 << 10, 512 << 10, 1 << 20, 4 << 20]),
        level in prop::sample::select(Compression::ALL.to_vec()),
        encrypted in any::<bool>(),
        blocks in 0usize..5,
        tail in 0usize..300_000,
        seed in any::<u64>(),
        rounds in prop::collection::vec(prop::collection::vec(change(), 0..5), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), encrypted);
        let o = opts("vol", bs, level);
        let mut img = bulwark_testkit::mixed_bytes(blocks * bs as usize + tail, bs as usize, seed);
        let mut points = vec![(backup_bytes(&repo, dir.path(), &img, &o).point, img.clone())];
        for round in &rounds {
            for c in round {
                apply(&mut img, bs as usize, c);
            }
            points.push((backup_bytes(&repo, dir.path(), &img, &o).point, img.clone()));
        }
        for (point, want) in &points {
            assert_same(&restore_bytes(&repo, dir.path(), point), want, point);
        }
        let report = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
        prop_assert!(report.ok, "{report:?}");
    }
}

#[test]
fn incremental_stores_only_the_changed_block() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), false);
    let bs = 256 << 10;
    let o = opts("vol", bs, Compression::Optimal);
    let mut img = vec![0u8; 8 * bs as usize];
    for (i, b) in img.chunks_mut(bs as usize).enumerate() {
        b.iter_mut().enumerate().for_each(|(j, x)| *x = ((i * 7919 + j) % 253) as u8 + 1);
    }
    let full = backup_bytes(&repo, dir.path(), &img, &o);
    assert_eq!(full.stats.new_bytes, 8 * bs as u64);
    assert_eq!(full.parent, None);
    img[3 * bs as usize + 17] ^= 0xff;
    let incr = backup_bytes(&repo, dir.path(), &img, &o);
    assert_eq!(incr.parent.as_deref(), Some(full.point.as_str()));
    assert_eq!(incr.stats.new_bytes, bs as u64);
    assert_eq!(incr.stats.unchanged_bytes, 7 * bs as u64);
    assert!(incr.stats.stored_bytes < full.stats.stored_bytes / 4);
    assert_same(
        &restore_bytes(&repo, dir.path(), &full.point),
        &{
            let mut orig = img.clone();
            orig[3 * bs as usize + 17] ^= 0xff;
            orig
        },
        "full",
    );
    assert_same(&restore_bytes(&repo, dir.path(), "vol:latest"), &img, "incremental");
}

#[test]
fn zero_blocks_store_nothing_and_restore_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), false);
    let img = vec![0u8; 16 << 20];
    let r = backup_bytes(&repo, dir.path(), &img, &opts("empty", 1 << 20, Compression::Optimal));
    assert_eq!(r.stats.zero_bytes, 16 << 20);
    assert_eq!(r.stats.new_bytes, 0);
    let m = repo.resolve(&r.point).unwrap();
    let target = dir.path().join("out.img");
    bulwark_agent::restore_volume(&repo, &m, &target, &Default::default(), &|_| {}, &NO_CANCEL).unwrap();
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&target).unwrap();
    assert_eq!(md.len(), 16 << 20);
    assert_eq!(md.blocks(), 0, "a zero volume restores as a sparse file");
}

#[test]
fn identical_blocks_across_names_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), true);
    let img = bulwark_testkit::mixed_bytes(6 << 20, 1 << 20, 42);
    let a = backup_bytes(&repo, dir.path(), &img, &opts("host-a", 1 << 20, Compression::High));
    let b = backup_bytes(&repo, dir.path(), &img, &opts("host-b", 1 << 20, Compression::High));
    assert!(a.stats.new_bytes > 0);
    assert_eq!(b.stats.new_bytes, 0, "the second computer's identical blocks are already stored");
    assert_eq!(b.parent, None, "another name is not a parent");
}
