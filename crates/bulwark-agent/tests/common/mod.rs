#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use bulwark_agent::{backup_volume, restore_volume, BackupOptions, BackupReport, RestoreOptions};
use bulwark_repo::crypto::KdfParams;
use bulwark_repo::{BlockSize, Compression, InitOptions, Repository};

pub static NO_CANCEL: AtomicBool = AtomicBool::new(false);

/// Argon2 at its cheapest: the tests exercise encryption, not key stretching.
pub fn cheap_kdf() -> KdfParams {
    KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
}

pub fn new_repo(dir: &Path, encrypted: bool) -> Repository {
    let password = encrypted.then(|| b"correct horse".to_vec());
    Repository::init(dir.join("repo"), &InitOptions { password, kdf: cheap_kdf(), ..Default::default() }).unwrap()
}

/// A repository with one file per chunk (the layout of format 3 and older), for tests that
/// damage or inspect one chunk's file.
pub fn new_loose_repo(dir: &Path, encrypted: bool) -> Repository {
    let password = encrypted.then(|| b"correct horse".to_vec());
    let opts = InitOptions { password, kdf: cheap_kdf(), layout: bulwark_repo::Layout::Loose, ..Default::default() };
    Repository::init(dir.join("repo"), &opts).unwrap()
}

pub fn opts(name: &str, bs: u32, c: Compression) -> BackupOptions {
    BackupOptions { block_size: BlockSize::new(bs).unwrap(), compression: c, ..BackupOptions::new(name) }
}

pub fn backup_bytes(repo: &Repository, dir: &Path, bytes: &[u8], o: &BackupOptions) -> BackupReport {
    let src = dir.join("source.img");
    std::fs::write(&src, bytes).unwrap();
    backup_volume(repo, &src, o, &|_| {}, &NO_CANCEL).unwrap()
}

pub fn restore_bytes(repo: &Repository, dir: &Path, point: &str) -> Vec<u8> {
    let m = repo.resolve(point).unwrap();
    let target = dir.join(format!("restored-{point}.img"));
    let _ = std::fs::remove_file(&target);
    restore_volume(repo, &m, &target, &RestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap();
    let out = std::fs::read(&target).unwrap();
    std::fs::remove_file(&target).unwrap();
    out
}

/// Asserts two volumes are identical, naming the first differing block.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: restored size differs");
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!("{what}: restored volume differs first at byte {at}");
    }
}
