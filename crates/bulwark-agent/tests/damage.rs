//! Damage is found, named and never restored as if it were data.
//!
//! The repositories here keep one file per chunk, so a test damages one chunk's file; damage
//! inside packs is tested in `bulwark-repo`'s `tests/packs.rs`.

mod common;

use std::path::PathBuf;

use bulwark_agent::{restore_volume, AgentError};
use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::{BlockRef, Compression, RepoError, Repository};
use common::*;

const BS: u32 = 256 << 10;

/// A repository with two points of distinct data; returns the first point's chunk for block 2.
fn setup(dir: &std::path::Path) -> (Repository, String, String, PathBuf) {
    let repo = new_loose_repo(dir, false);
    let mut img = vec![0u8; 6 * BS as usize];
    for (i, b) in img.chunks_mut(BS as usize).enumerate() {
        b.fill(i as u8 + 1);
    }
    let a = backup_bytes(&repo, dir, &img, &opts("vol", BS, Compression::Optimal));
    let other: Vec<u8> = img.iter().map(|x| x.wrapping_add(100)).collect();
    let b = backup_bytes(&repo, dir, &other, &opts("other", BS, Compression::Optimal));
    let m = repo.resolve(&a.point).unwrap();
    let mut ix = repo.open_index(&m).unwrap();
    let mut chunk = None;
    for i in 0..=2 {
        let r = ix.next_block().unwrap().unwrap();
        if i == 2 {
            let BlockRef::Chunk(id) = r else { panic!("block 2 holds data") };
            chunk = Some(dir.join("repo").join(id.key()));
        }
    }
    (repo, a.point, b.point, chunk.unwrap())
}

/// Verify names `bad` damaged at block 2, for one of `reasons`, and `good` whole.
fn damaged_point_is_named(repo: &Repository, bad: &str, good: &str, reasons: &[&str]) {
    let r = verify(repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(!r.ok);
    let bad_h = r.points.iter().find(|p| p.point == bad).unwrap();
    assert!(!bad_h.ok);
    assert_eq!(bad_h.damaged_ranges.len(), 1, "{bad_h:?}");
    let range = &bad_h.damaged_ranges[0];
    assert_eq!((range.first_block, range.last_block), (2, 2));
    assert_eq!(range.offset, 2 * BS as u64);
    assert!(reasons.iter().any(|r| range.reason.contains(r)), "{} is none of {reasons:?}", range.reason);
    assert!(r.points.iter().find(|p| p.point == good).unwrap().ok, "the other point is untouched");
}

/// What a restore over a damaged chunk must fail with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    Altered,
    Missing,
}

fn restore_fails_and_leaves_nothing(repo: &Repository, dir: &std::path::Path, point: &str, damage: Damage) {
    let m = repo.resolve(point).unwrap();
    let target = dir.join("restore.img");
    let err = restore_volume(repo, &m, &target, &Default::default(), &|_| {}, &NO_CANCEL).unwrap_err();
    let AgentError::RestoreFailed { block, cause, .. } = &err else { panic!("not a failed restore: {err}") };
    assert_eq!(*block, 2, "{err}");
    match (damage, cause.as_ref()) {
        (Damage::Altered, AgentError::Repo(RepoError::DamagedChunk { .. }))
        | (Damage::Missing, AgentError::Repo(RepoError::MissingChunk { .. })) => {}
        (d, other) => panic!("{d:?} chunk, but the restore failed with {other:?}"),
    }
    assert_eq!(err.failure(), bulwark_proto::domain::Failure::Permanent, "retrying cannot help: {err}");
    assert!(!target.exists(), "a failed restore leaves no file");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("bulwark-restore"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn flipped_byte_in_a_chunk_is_named_and_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, bad, good, chunk) = setup(dir.path());
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    // Restored before verify moves the damaged copy aside (after it, the chunk reads as missing).
    restore_fails_and_leaves_nothing(&repo, dir.path(), &bad, Damage::Altered);
    // Where the flip lands decides which check catches it first; each names the chunk.
    damaged_point_is_named(&repo, &bad, &good, &["digest mismatch", "cannot decompress", "not a chunk"]);
    restore_fails_and_leaves_nothing(&repo, dir.path(), &bad, Damage::Missing);
}

#[test]
fn deleted_chunk_is_named_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, bad, good, chunk) = setup(dir.path());
    std::fs::remove_file(&chunk).unwrap();
    damaged_point_is_named(&repo, &bad, &good, &["missing"]);
    restore_fails_and_leaves_nothing(&repo, dir.path(), &bad, Damage::Missing);
}

#[test]
fn truncated_index_is_named_and_restore_refuses_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, bad, good, _) = setup(dir.path());
    let index = dir.path().join("repo/points").join(format!("{bad}.index"));
    let len = std::fs::metadata(&index).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&index).unwrap().set_len(len - 40).unwrap();
    let r = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(!r.ok);
    let h = r.points.iter().find(|p| p.point == bad).unwrap();
    assert!(h.problem.as_deref().unwrap().contains("truncated"), "{h:?}");
    assert!(r.points.iter().find(|p| p.point == good).unwrap().ok);
    let m = repo.resolve(&bad).unwrap();
    let target = dir.path().join("restore.img");
    assert!(restore_volume(&repo, &m, &target, &Default::default(), &|_| {}, &NO_CANCEL).is_err());
    assert!(!target.exists());
}

#[test]
fn damaged_chunk_is_stored_again_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, bad, _, chunk) = setup(dir.path());
    std::fs::remove_file(&chunk).unwrap();
    // The source still has the data: the next backup of the name stores the lost block again.
    let mut img = vec![0u8; 6 * BS as usize];
    for (i, b) in img.chunks_mut(BS as usize).enumerate() {
        b.fill(i as u8 + 1);
    }
    let again = backup_bytes(&repo, dir.path(), &img, &opts("vol", BS, Compression::Optimal));
    assert_eq!(again.stats.new_bytes, BS as u64);
    assert!(chunk.exists());
    assert_same(&restore_bytes(&repo, dir.path(), &bad), &img, "the old point heals too");
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
}

#[test]
fn an_empty_chunk_left_by_a_power_cut_is_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_loose_repo(dir.path(), false);
    let img = bulwark_testkit::mixed_bytes(4 * BS as usize, BS as usize, 31);
    // What a power cut during an uncommitted backup can leave: the name, without the content.
    let block = &img[..BS as usize];
    assert!(block.iter().any(|&b| b != 0), "the first block holds data");
    let id = repo.codec(Compression::Optimal).digest(block);
    std::fs::write(dir.path().join("repo").join(id.key()), b"").unwrap();
    let r = backup_bytes(&repo, dir.path(), &img, &opts("vol", BS, Compression::Optimal));
    assert_same(&restore_bytes(&repo, dir.path(), &r.point), &img, "point over an empty chunk");
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
}

fn flip_middle(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    // In place, as the disk would: same file, same size.
    std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&std::fs::File::options().write(true).open(path).unwrap(), &bytes, 0)
        .unwrap();
}

fn first_image() -> Vec<u8> {
    let mut img = vec![0u8; 6 * BS as usize];
    for (i, b) in img.chunks_mut(BS as usize).enumerate() {
        b.fill(i as u8 + 1);
    }
    img
}

#[test]
fn a_flipped_chunk_is_not_built_on_even_before_verify_sees_it() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (plain, bad, _, chunk) = setup(dir.path());
        let repo = if encrypted {
            drop(plain);
            let d = dir.path().join("enc");
            std::fs::create_dir_all(&d).unwrap();
            let (repo, bad, _, chunk) = {
                let repo = new_loose_repo(&d, true);
                let a = backup_bytes(&repo, &d, &first_image(), &opts("vol", BS, Compression::Optimal));
                let m = repo.resolve(&a.point).unwrap();
                let mut ix = repo.open_index(&m).unwrap();
                ix.next_block().unwrap();
                ix.next_block().unwrap();
                let BlockRef::Chunk(id) = ix.next_block().unwrap().unwrap() else { panic!("block 2 holds data") };
                (repo, a.point, (), d.join("repo").join(id.key()))
            };
            flip_middle(&chunk);
            (repo, bad, d)
        } else {
            flip_middle(&chunk);
            (plain, bad, dir.path().to_path_buf())
        };
        let (repo, bad, d) = repo;
        // No verify between: the backup checks, once, every chunk it has not seen checked.
        let again = backup_bytes(&repo, &d, &first_image(), &opts("vol", BS, Compression::Optimal));
        assert_eq!(again.stats.new_bytes, BS as u64, "the damaged block is stored again (encrypted: {encrypted})");
        assert_same(&restore_bytes(&repo, &d, &again.point), &first_image(), "the new point");
        assert_same(&restore_bytes(&repo, &d, &bad), &first_image(), "the old point heals too");
        assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
        // Checked chunks carry their mark: the next backup reuses them without reading them.
        // (Where the filesystem keeps user extended attributes: elsewhere there are no marks.)
        let probe = d.join("xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        if rustix::fs::setxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok() {
            let marked = repo.storage().checked_size(&chunk_key(&repo, &again.point, 0)).unwrap();
            assert!(marked.is_some(), "a reused chunk is marked checked");
        }
    }
}

fn chunk_key(repo: &Repository, point: &str, block: u64) -> String {
    let m = repo.resolve(point).unwrap();
    let mut ix = repo.open_index(&m).unwrap();
    for _ in 0..block {
        ix.next_block().unwrap();
    }
    let BlockRef::Chunk(id) = ix.next_block().unwrap().unwrap() else { panic!("block {block} holds data") };
    id.key()
}

#[test]
fn a_damaged_chunk_of_an_unchanged_file_is_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_loose_repo(dir.path(), false);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = bulwark_testkit::mixed_bytes(3 << 20, 64 << 10, 7);
    std::fs::write(src.join("big"), &data).unwrap();
    let opts = bulwark_agent::files::FileBackupOptions::new("files");
    let first = bulwark_agent::files::backup_files(&repo, &src, &opts, &|_| {}, &NO_CANCEL).unwrap();
    let m = repo.resolve(&first.point).unwrap();
    let mut content = Vec::new();
    repo.read_tree(&m, |e| {
        content.extend(e.extents.iter().filter_map(|x| x.chunk));
        Ok(())
    })
    .unwrap();
    let victim = dir.path().join("repo").join(content[0].key());
    flip_middle(&victim);
    let second = bulwark_agent::files::backup_files(&repo, &src, &opts, &|_| {}, &NO_CANCEL).unwrap();
    assert_eq!(second.summary.unchanged_files, 0, "the file with a damaged chunk is read again");
    assert!(second.stats.new_bytes > 0);
    let r = verify(&repo, Selection::All, 2, &|_| {}).unwrap();
    assert!(r.ok, "both points whole: {r:?}");
    let out = dir.path().join("out");
    let m = repo.resolve(&first.point).unwrap();
    bulwark_agent::files::restore_files(&repo, &m, &out, &Default::default(), &|_| {}, &NO_CANCEL).unwrap();
    assert_same(&std::fs::read(out.join("big")).unwrap(), &data, "the first point's file");
}

/// The data mover's batch answer: marked chunks at a glance, the rest read back on several
/// threads, a damaged or missing one answered "absent".
#[test]
fn reuse_answers_for_a_batch_check_unmarked_chunks_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_loose_repo(dir.path(), true);
    let mut codec = repo.codec(Compression::Optimal);
    let ids: Vec<_> = (0..6u8)
        .map(|i| {
            let block = vec![i + 1; 64 << 10];
            let id = codec.digest(&block);
            repo.put_chunk(&id, &codec.encode(&id, &block)).unwrap();
            id
        })
        .collect();
    flip_middle(&dir.path().join("repo").join(ids[2].key()));
    std::fs::remove_file(dir.path().join("repo").join(ids[4].key())).unwrap();
    let want = [true, true, false, true, false, true];
    assert_eq!(repo.reuse_chunks(&ids, 3).unwrap(), want);
    // Now marked (the sound ones): the same answer without reading.
    assert_eq!(repo.reuse_chunks(&ids, 3).unwrap(), want);
}
