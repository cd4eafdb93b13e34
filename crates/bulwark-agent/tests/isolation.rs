//! A repository whose computers are isolated: each computer's points are written with a key
//! derived for it, so one computer's keys neither read another's chunks nor name its content,
//! while the repository (the master key) lists, restores, verifies and collects them all.

mod common;

use std::time::Duration;

use bulwark_agent::files::{backup_files, restore_files, FileBackupOptions, FileRestoreOptions};
use bulwark_repo::gc::collect_garbage;
use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::{Compression, InitOptions, Isolation, Repository};
use common::*;

fn isolated(dir: &std::path::Path) -> Repository {
    let opts = InitOptions {
        password: Some(b"correct horse".to_vec()),
        kdf: cheap_kdf(),
        isolation: Isolation::Computer,
        ..Default::default()
    };
    Repository::init(dir.join("repo"), &opts).unwrap()
}

fn chunk_files(dir: &std::path::Path) -> usize {
    let pw: &[u8] = b"correct horse";
    Repository::open(dir.join("repo"), Some(pw)).unwrap().chunk_count().unwrap()
}

#[test]
fn computers_of_an_isolated_repository_share_nothing_but_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = isolated(dir.path());
    let image = bulwark_testkit::mixed_bytes(3 << 20, 1 << 20, 7);
    let (a, b) = (repo.scoped("web-1"), repo.scoped("web-2"));
    assert_ne!(a.keys().master_key(), repo.keys().master_key());
    assert_ne!(a.keys().master_key(), b.keys().master_key());

    backup_bytes(&a, dir.path(), &image, &opts("web-1-disk", 1 << 20, Compression::Optimal));
    let after_a = chunk_files(dir.path());
    backup_bytes(&b, dir.path(), &image, &opts("web-2-disk", 1 << 20, Compression::Optimal));
    // The same blocks are stored once per computer: no name is shared across computers.
    assert_eq!(chunk_files(dir.path()), 2 * after_a, "dedup crossed computers");

    // The repository lists and restores both, each point with the keys it was written with.
    let points = repo.list_points().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0].key_scope.as_deref(), Some("web-1"));
    assert_eq!(points[1].key_scope.as_deref(), Some("web-2"));
    for p in &points {
        assert_same(&restore_bytes(&repo, dir.path(), p.id.as_str()), &image, &p.name);
    }
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);

    // One computer's keys read none of the other's chunks, and name the same content otherwise.
    let block = &image[..1 << 20];
    let (mut ca, mut cb) = (a.codec(Compression::None), b.codec(Compression::None));
    let (ida, idb) = (ca.digest(block), cb.digest(block));
    assert_ne!(ida, idb);
    assert!(!repo.chunk_copies(&ida).unwrap().is_empty() && !repo.chunk_copies(&idb).unwrap().is_empty());
    assert!(a.read_chunk(&mut ca, &idb).is_err(), "web-1's key read web-2's chunk");
    assert_eq!(b.read_chunk(&mut cb, &idb).unwrap(), block);

    // Garbage collection keeps what each computer's points use; forgetting one leaves the other.
    repo.delete_point(&points[0].id).unwrap();
    collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!(chunk_files(dir.path()), after_a);
    assert_same(&restore_bytes(&repo, dir.path(), points[1].id.as_str()), &image, "web-2 after gc");
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);

    // File-level points too.
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let fo = FileBackupOptions {
        snapshot: bulwark_agent::snapshot::SnapshotMode::None,
        ..FileBackupOptions::new("web-1-etc")
    };
    backup_files(&a, &src, &fo, &|_| {}, &NO_CANCEL).unwrap();
    let m = repo.resolve("web-1-etc:latest").unwrap();
    assert_eq!(m.key_scope.as_deref(), Some("web-1"));
    let out = dir.path().join("out");
    restore_files(&repo, &m, &out, &FileRestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap();
    assert_eq!(std::fs::read(out.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert!(verify(&repo, Selection::All, 2, &|_| {}).unwrap().ok);
}

#[test]
fn isolation_needs_encryption_and_older_builds_are_told_the_format_is_newer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions { isolation: Isolation::Computer, ..Default::default() };
    let e = Repository::init(dir.path().join("plain"), &opts).err().unwrap().to_string();
    assert!(e.contains("need an encrypted repository"), "{e}");
    // Packs make a repository version 4, which older builds refuse by its number.
    isolated(dir.path());
    let config = std::fs::read_to_string(dir.path().join("repo/config")).unwrap();
    assert!(config.contains("\"version\": 4") && config.contains("\"isolation\": \"computer\""), "{config}");
    // With one file per chunk, each repository is at the oldest version that reads it: a
    // shared encrypted one at 1, an isolated one at 2, a plain one at 3 (its manifests carry
    // integrity digests).
    let loose = |sub: &str, password: Option<Vec<u8>>, isolation| {
        let opts = InitOptions {
            password,
            kdf: cheap_kdf(),
            isolation,
            layout: bulwark_repo::Layout::Loose,
            ..Default::default()
        };
        drop(Repository::init(dir.path().join(sub), &opts).unwrap());
        std::fs::read_to_string(dir.path().join(sub).join("config")).unwrap()
    };
    let config = loose("i", Some(b"pw".to_vec()), Isolation::Computer);
    assert!(config.contains("\"version\": 2"), "{config}");
    let config = loose("s", Some(b"pw".to_vec()), Isolation::Shared);
    assert!(config.contains("\"version\": 1") && !config.contains("isolation"), "{config}");
    let config = loose("p", None, Isolation::Shared);
    assert!(config.contains("\"version\": 3"), "{config}");
}
