//! File-level backup and restore: every entry kind, odd names, deep nesting, metadata, holes and
//! hard links come back as they were; incrementals stay right under renames, truncations and
//! same-size-same-mtime rewrites.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_agent::files::{backup_files, restore_files, FileBackupOptions, FileBackupReport, FileRestoreOptions};
use bulwark_agent::snapshot::SnapshotMode;
use bulwark_repo::Repository;
use bulwark_testkit::{assert_same_tree, describe_tree, random_bytes};
use common::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn odd_name(rng: &mut Rng, i: u64) -> Vec<u8> {
    let mut n: Vec<u8> = match rng.below(6) {
        0 => format!("plain{i}").into_bytes(),
        1 => format!("new\nline{i}").into_bytes(),
        2 => format!("ünïcödé-名前-{i}").into_bytes(),
        3 => {
            let mut v = format!("bad{i}-").into_bytes();
            v.extend_from_slice(&[0xff, 0xfe, 0x80]);
            v
        }
        4 => format!(" spaced  {i} ").into_bytes(),
        _ => format!("-dash*?[{i}]").into_bytes(),
    };
    n.retain(|&b| b != b'/' && b != 0);
    n
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A random tree with every kind of entry, odd names and deep nesting.
fn random_tree(root: &Path, seed: u64) {
    let mut rng = Rng(seed | 1);
    std::fs::create_dir_all(root).unwrap();
    let mut dirs = vec![root.to_path_buf()];
    // A deep chain.
    let mut deep = root.join("deep");
    for level in 0..40 {
        deep = deep.join(format!("level{level}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"at the bottom").unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for i in 0..120u64 {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let path = parent.join(OsStr::from_bytes(&odd_name(&mut rng, i)));
        match rng.below(10) {
            0 | 1 => {
                std::fs::create_dir(&path).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
                dirs.push(path.clone());
            }
            2 => {
                // Sparse: data, a hole, data.
                let f = std::fs::File::create(&path).unwrap();
                f.write_all_at(&random_bytes(10_000, i), 0).unwrap();
                f.write_all_at(b"tail", 50 << 20).unwrap();
                files.push(path.clone());
            }
            3 => std::os::unix::fs::symlink(format!("../target-{i}\nodd"), &path).unwrap(),
            4 if !files.is_empty() => {
                let first = &files[rng.below(files.len() as u64) as usize];
                std::fs::hard_link(first, &path).unwrap();
            }
            5 => {
                assert!(Command::new("mkfifo").arg(&path).status().unwrap().success());
            }
            6 => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0o640),
                    rustix::fs::makedev(1, 3),
                )
                .unwrap();
            }
            _ => {
                let len = [0usize, 1, 4095, 70_000, 3 << 20][rng.below(5) as usize];
                std::fs::write(&path, random_bytes(len, seed ^ i)).unwrap();
                files.push(path.clone());
            }
        }
        if rng.below(3) == 0 && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() || m.is_dir()) {
            set_xattr(&path, "user.comment", format!("note {i}").as_bytes());
        }
        if rng.below(4) == 0 && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            std::os::unix::fs::lchown(&path, Some(1000 + i as u32), Some(2000 + i as u32)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4751)).unwrap();
        }
    }
    // A POSIX ACL, set the way administrators do.
    let acl_file = root.join("acl-file");
    std::fs::write(&acl_file, b"acl").unwrap();
    assert!(Command::new("setfacl").args(["-m", "u:1234:rw,g:4321:r"]).arg(&acl_file).status().unwrap().success());
    assert!(Command::new("setfacl")
        .args(["-d", "-m", "u:1234:rwx"])
        .arg(root.join("deep"))
        .status()
        .unwrap()
        .success());
    // Timestamps with nanoseconds, set last (writing in a directory changes its mtime).
    let mut stack = vec![root.to_path_buf()];
    let mut n = 0i64;
    while let Some(p) = stack.pop() {
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        n += 1;
        let t = rustix::fs::Timespec { tv_sec: 1_600_000_000 + n * 3600, tv_nsec: (n * 7919) % 1_000_000_000 };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &p,
            &rustix::fs::Timestamps { last_access: t, last_modification: t },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

fn opts() -> FileBackupOptions {
    FileBackupOptions { snapshot: SnapshotMode::None, ..FileBackupOptions::new("tree") }
}

fn backup(repo: &Repository, src: &Path) -> FileBackupReport {
    backup_files(repo, src, &opts(), &|_| {}, &NO_CANCEL).unwrap()
}

fn restore(repo: &Repository, point: &str, to: &Path) {
    let m = repo.resolve(point).unwrap();
    restore_files(repo, &m, to, &FileRestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap();
}

#[test]
fn random_trees_with_every_entry_kind_restore_with_their_metadata() {
    assert!(bulwark_testkit::is_root(), "owners and device nodes need root; run the suite as root");
    for (seed, encrypted) in [(1u64, false), (2, true), (3, false)] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        random_tree(&src, seed);
        let want = describe_tree(&src);
        let repo = new_repo(dir.path(), encrypted);
        let r = backup(&repo, &src);
        assert_eq!(r.summary.status, "ok", "{:?}", r.summary.warnings);
        let out = dir.path().join("out");
        restore(&repo, &r.point, &out);
        assert_same_tree(&describe_tree(&out), &want, &format!("seed {seed}"));
    }
}

#[test]
fn sockets_are_skipped_with_a_note_and_the_point_marked_warning() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let repo = new_repo(dir.path(), false);
    let r = backup(&repo, &src);
    assert_eq!(r.summary.status, "warning");
    assert!(r.summary.warnings.iter().any(|w| w.contains("socket skipped")), "{:?}", r.summary.warnings);
    assert_eq!(r.summary.files, 1);
}

#[test]
fn incrementals_stay_right_under_renames_truncations_and_same_mtime_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    random_tree(&src, 7);
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("a/big"), random_bytes(5 << 20, 70)).unwrap();
    std::fs::write(src.join("a/same"), random_bytes(100_000, 71)).unwrap();
    let repo = new_repo(dir.path(), false);
    let mut points = vec![(backup(&repo, &src).point, describe_tree(&src))];

    // 1: rename, hard link across directories.
    std::fs::rename(src.join("a/big"), src.join("b/big-renamed")).unwrap();
    std::fs::hard_link(src.join("a/same"), src.join("b/same-link")).unwrap();
    let r = backup(&repo, &src);
    assert!(r.summary.unchanged_files > 0);
    assert_eq!(r.stats.new_bytes, 0, "a rename stores nothing new");
    points.push((r.point, describe_tree(&src)));

    // 2: truncate, and rewrite through the other link.
    let f = std::fs::OpenOptions::new().write(true).open(src.join("b/big-renamed")).unwrap();
    f.set_len(1 << 20).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("b/same-link"))
        .unwrap()
        .write_all_at(b"CHANGED", 10)
        .unwrap();
    points.push((backup(&repo, &src).point, describe_tree(&src)));

    // 3: same size, mtime put back: only ctime tells.
    let same = src.join("a/same");
    let before = std::fs::metadata(&same).unwrap();
    std::fs::OpenOptions::new().write(true).open(&same).unwrap().write_all_at(b"SNEAKY", 500).unwrap();
    let t = rustix::fs::Timespec { tv_sec: before.mtime(), tv_nsec: before.mtime_nsec() as _ };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &same,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let r = backup(&repo, &src);
    assert!(r.stats.read_bytes >= 100_000, "the rewritten file was read again");
    points.push((r.point, describe_tree(&src)));

    for (i, (point, want)) in points.iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        restore(&repo, point, &out);
        assert_same_tree(&describe_tree(&out), want, &format!("point {i}"));
    }
    let v = bulwark_repo::verify::verify(&repo, bulwark_repo::verify::Selection::All, 2, &|_| {}).unwrap();
    assert!(v.ok, "{v:?}");
}

use std::os::unix::fs::MetadataExt;

#[test]
fn partial_restore_and_existing_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc/ssh")).unwrap();
    std::fs::create_dir_all(src.join("home/ann")).unwrap();
    std::fs::write(src.join("etc/ssh/sshd_config"), b"PermitRootLogin no\n").unwrap();
    std::fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::write(src.join("home/ann/notes"), b"notes").unwrap();
    let repo = new_repo(dir.path(), false);
    let r = backup(&repo, &src);
    let m = repo.resolve(&r.point).unwrap();
    let out = dir.path().join("out");
    let o = FileRestoreOptions { paths: vec!["/etc/ssh".into()], ..Default::default() };
    restore_files(&repo, &m, &out, &o, &|_| {}, &NO_CANCEL).unwrap();
    assert_eq!(std::fs::read(out.join("etc/ssh/sshd_config")).unwrap(), b"PermitRootLogin no\n");
    assert!(!out.join("etc/hosts").exists() && !out.join("home").exists());

    // A non-empty target is not written into without --overwrite…
    std::fs::write(out.join("etc/ssh/sshd_config"), b"local edit").unwrap();
    let err = restore_files(&repo, &m, &out, &FileRestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(out.join("etc/ssh/sshd_config")).unwrap(), b"local edit");
    // …and a path the point lacks is refused before anything is written.
    let o = FileRestoreOptions { paths: vec!["etc/nope".into()], overwrite: true, ..Default::default() };
    assert!(restore_files(&repo, &m, &out, &o, &|_| {}, &NO_CANCEL).unwrap_err().to_string().contains("no path"));
    assert_eq!(std::fs::read(out.join("etc/ssh/sshd_config")).unwrap(), b"local edit");
    let o = FileRestoreOptions { overwrite: true, ..Default::default() };
    restore_files(&repo, &m, &out, &o, &|_| {}, &NO_CANCEL).unwrap();
    assert_same_tree(&describe_tree(&out), &describe_tree(&src), "overwrite");
}

#[test]
fn excluded_globs_are_not_backed_up() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("var/cache/x")).unwrap();
    std::fs::create_dir_all(src.join("home/ann/.cache")).unwrap();
    std::fs::write(src.join("var/cache/x/big"), b"EXCLUDED-CACHE").unwrap();
    std::fs::write(src.join("home/ann/.cache/c"), b"EXCLUDED-HOME-CACHE").unwrap();
    std::fs::write(src.join("home/ann/a.tmp"), b"EXCLUDED-TMP").unwrap();
    std::fs::write(src.join("home/ann/keep"), b"KEPT").unwrap();
    let repo = new_repo(dir.path(), false);
    let o = FileBackupOptions {
        exclude: vec!["/var/cache".into(), "home/**/.cache".into(), "*.tmp".into()],
        compression: bulwark_repo::Compression::None,
        ..opts()
    };
    let r = backup_files(&repo, &src, &o, &|_| {}, &NO_CANCEL).unwrap();
    let m = repo.resolve(&r.point).unwrap();
    let mut paths = Vec::new();
    bulwark_agent::files::list_tree(&repo, &m, None, |e| paths.push(e.path_lossy())).unwrap();
    assert_eq!(paths, vec!["", "home", "home/ann", "home/ann/keep", "var"]);
}

/// Commits a point whose tree is exactly `entries`, as a tampered repository could hold.
fn crafted_point(repo: &Repository, entries: &[bulwark_repo::tree::TreeEntry]) -> bulwark_repo::Manifest {
    use bulwark_repo::{BlockSize, Compression, FileSummary, PointKind, PointSpec, PointStats};
    let mut stream = Vec::new();
    for e in entries {
        e.encode(&mut stream);
    }
    let spec = PointSpec {
        kind: PointKind::Files,
        name: "evil".into(),
        source: "crafted".into(),
        volume_size: 0,
        block_size: BlockSize::new(1 << 20).unwrap(),
        compression: Compression::None,
        parent: None,
        snapshot: "none".into(),
        consistency: "crash-inconsistent".into(),
        key_scope: None,
    };
    let w = repo.begin_point(spec).unwrap();
    let mut codec = repo.codec(Compression::None);
    let id = codec.digest(&stream);
    repo.put_chunk(&id, &codec.encode(&id, &stream)).unwrap();
    w.commit_files(&[id], stream.len() as u64, PointStats::default(), FileSummary::default()).unwrap()
}

fn entry(kind: bulwark_repo::tree::EntryKind, path: &str, target: &str) -> bulwark_repo::tree::TreeEntry {
    let mut e = bulwark_repo::tree::TreeEntry::new(kind, path.as_bytes().to_vec());
    e.target = target.as_bytes().to_vec();
    e.mode = 0o644;
    e
}

/// The entries a restore reported as not restored, with the reasons.
fn failed(r: &bulwark_agent::files::FileRestoreReport) -> Vec<(String, String)> {
    r.failed.iter().map(|f| (f.path.clone(), f.reason.clone())).collect()
}

/// A point whose tree was crafted to escape the target: `../` paths, absolute paths and paths
/// through a symlink are refused and reported, and nothing lands outside the target.
#[test]
fn crafted_trees_cannot_restore_outside_the_target() {
    use bulwark_repo::tree::EntryKind::{Dir, Fifo, Symlink};
    for (evil, refused) in [
        (vec![entry(Dir, "", ""), entry(Fifo, "../escaped", "")], "../escaped"),
        (vec![entry(Dir, "", ""), entry(Fifo, "/escaped", "")], "/escaped"),
        (vec![entry(Dir, "", ""), entry(Symlink, "a", ".."), entry(Fifo, "a/escaped", "")], "a/escaped"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), false);
        let m = crafted_point(&repo, &evil);
        let out = dir.path().join("deep/out");
        let r = restore_files(&repo, &m, &out, &FileRestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap();
        assert!(!r.complete);
        let f = failed(&r);
        assert!(f.iter().any(|(p, why)| p == refused && why.contains("outside its directory")), "{f:?}");
        assert!(!dir.path().join("deep/escaped").exists() && !Path::new("/escaped").exists());
    }
}

/// The attack of a hostile computer's tree: a symlink `x` to a directory outside the target,
/// then a hard link `y` to `x/secret` (and a file `x/planted`). Restored as root, a naive
/// restore would link the outside file into the target (and plant one outside). Neither
/// happens, the entries are reported, and the rest of the tree is restored.
#[test]
fn hard_links_and_paths_through_a_restored_symlink_are_refused() {
    use bulwark_repo::tree::EntryKind::{Dir, File, HardLink, Symlink};
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"root's secret").unwrap();
    let repo = new_repo(dir.path(), false);
    let out = dir.path().join("out");
    let m = crafted_point(
        &repo,
        &[
            entry(Dir, "", ""),
            entry(File, "fine", ""),
            entry(Symlink, "x", outside.to_str().unwrap()),
            entry(File, "x/planted", ""),
            entry(HardLink, "y", "x/secret"),
            entry(HardLink, "z", "fine"),
        ],
    );
    let r = restore_files(&repo, &m, &out, &FileRestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap();
    let f = failed(&r);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].0 == "x/planted" && f[0].1.contains("outside its directory"), "{f:?}");
    assert!(f[1].0 == "y" && f[1].1.contains("refused") && f[1].1.contains("x/secret"), "{f:?}");
    assert!(!r.complete);
    assert!(!out.join("y").exists(), "nothing linked");
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1, "the outside file gained no link");
    let outside_now: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside_now, vec![std::ffi::OsString::from("secret")], "nothing planted outside");
    // The legitimate link is made.
    assert_eq!(std::fs::metadata(out.join("z")).unwrap().ino(), std::fs::metadata(out.join("fine")).unwrap().ino());

    // The same through a symlink already in the target (not from the tree), with --overwrite.
    let out2 = dir.path().join("out2");
    std::fs::create_dir(&out2).unwrap();
    std::os::unix::fs::symlink(&outside, out2.join("x")).unwrap();
    let m = crafted_point(&repo, &[entry(Dir, "", ""), entry(HardLink, "y", "x/secret")]);
    let o = FileRestoreOptions { overwrite: true, ..Default::default() };
    let r = restore_files(&repo, &m, &out2, &o, &|_| {}, &NO_CANCEL).unwrap();
    assert!(failed(&r).iter().any(|(p, why)| p == "y" && why.contains("refused")), "{:?}", r.failed);
    assert!(!out2.join("y").exists());
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
}

/// Names of 255 bytes (the most Linux allows), for files, directories, symlinks and hard
/// links, back up and restore.
#[test]
fn names_of_255_bytes_restore() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long = |c: char| c.to_string().repeat(255);
    let sub = src.join(long('d'));
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join(long('f')), random_bytes(3 << 20, 11)).unwrap();
    std::fs::write(src.join(long('g')), b"small").unwrap();
    std::fs::hard_link(src.join(long('g')), sub.join(long('h'))).unwrap();
    std::os::unix::fs::symlink(long('t'), src.join(long('s'))).unwrap();
    let want = describe_tree(&src);
    let repo = new_repo(dir.path(), false);
    let r = backup(&repo, &src);
    let out = dir.path().join("out");
    let m = repo.resolve(&r.point).unwrap();
    let report = restore_files(&repo, &m, &out, &FileRestoreOptions::default(), &|_| {}, &NO_CANCEL).unwrap();
    assert!(report.complete, "{:?}", report.failed);
    assert_same_tree(&describe_tree(&out), &want, "255-byte names");
}

/// A restore for files of an untrusted computer: no device nodes or fifos, no set-id or
/// sticky bits on files, no owners, no `security.*` or `trusted.*` attributes; the rest as
/// it was.
#[test]
fn safe_restore_drops_devices_set_id_bits_owners_and_privileged_attributes() {
    assert!(bulwark_testkit::is_root(), "device nodes and owners need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("shared")).unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    std::fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
    mode(&src.join("suid"), 0o4755);
    std::fs::write(src.join("sgid"), b"x").unwrap();
    mode(&src.join("sgid"), 0o2711);
    std::fs::write(src.join("sticky"), b"x").unwrap();
    mode(&src.join("sticky"), 0o1644);
    mode(&src.join("shared"), 0o3777);
    std::fs::write(src.join("owned"), b"x").unwrap();
    std::os::unix::fs::lchown(src.join("owned"), Some(1234), Some(5678)).unwrap();
    set_xattr(&src.join("owned"), "user.note", b"kept");
    set_xattr(&src.join("owned"), "trusted.evil", b"dropped");
    assert!(Command::new("mkfifo").arg(src.join("fifo")).status().unwrap().success());
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("mem"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 1),
    )
    .unwrap();
    let repo = new_repo(dir.path(), false);
    let r = backup(&repo, &src);
    let m = repo.resolve(&r.point).unwrap();
    let out = dir.path().join("out");
    let o = FileRestoreOptions { safe: true, ..Default::default() };
    let report = restore_files(&repo, &m, &out, &o, &|_| {}, &NO_CANCEL).unwrap();
    assert!(report.complete, "{:?}", report.failed);
    assert!(!out.join("fifo").exists() && !out.join("mem").exists(), "no device nodes or fifos");
    for what in ["mem", "fifo"] {
        assert!(report.warnings.iter().any(|w| w.contains(what) && w.contains("skipped")), "{:?}", report.warnings);
    }
    let got = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
    assert_eq!(got("suid").mode() & 0o7777, 0o755);
    assert_eq!(got("sgid").mode() & 0o7777, 0o711);
    assert_eq!(got("sticky").mode() & 0o7777, 0o644);
    assert_eq!(got("shared").mode() & 0o7777, 0o1777, "a directory keeps its sticky bit, loses set-group-id");
    // The test's own temporary directory belongs to the user running it.
    let me = std::fs::metadata(dir.path()).map(|m| (m.uid(), m.gid())).unwrap();
    assert_eq!((got("owned").uid(), got("owned").gid()), me, "owned by the restoring user");
    assert_eq!(std::fs::read(out.join("owned")).unwrap(), b"x");
    let attrs: Vec<String> = xattr_names(&out.join("owned"));
    assert_eq!(attrs, vec!["user.note".to_string()]);
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap();
    buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8_lossy(n).into_owned()).collect()
}

#[test]
fn a_backup_moves_no_access_times() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), false);
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), b"content").unwrap();
    // Access times older than the modification times: relatime would move them on any read.
    let old = std::fs::FileTimes::new().set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1 << 20));
    for p in [src.join("sub/file"), src.join("sub"), src.clone()] {
        std::fs::File::open(&p).unwrap().set_times(old).unwrap();
    }
    let atimes = || -> Vec<i64> {
        [src.join("sub/file"), src.join("sub"), src.clone()]
            .iter()
            .map(|p| std::os::unix::fs::MetadataExt::atime(&std::fs::metadata(p).unwrap()))
            .collect()
    };
    let before = atimes();
    backup(&repo, &src);
    assert_eq!(atimes(), before, "the walk and the reads left every access time as it was");
}
