//! Files out of volume points through the command line: `ls` and `restore --path` of ext4
//! filesystems in image points, checked against `debugfs` and the kernel's own mount; disks with
//! partitions; a dirty journal; damaged and hostile filesystems; what is not read yet.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn sh(cmd: &mut Command) -> String {
    bulwark_testkit::run(cmd)
}

fn mkfs_ext4(src: &Path, img: &Path, size: &str, extra: &[&str]) {
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).args(extra).arg("-d").arg(src).arg(img).arg(size));
}

fn set_mtime(p: &Path, sec: i64) {
    let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: 0 };
    let ts = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// One entry as `debugfs -R "ls -p DIR"` shows it: inode, mode (with the type), uid, gid, size.
#[derive(Debug, PartialEq)]
struct Oracle {
    inode: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
}

/// `debugfs`'s listing of `dir` in `img`, by name (`.` and `..` left out). Its records are
/// `/INODE/MODE/UID/GID/NAME/SIZE/` and a name may hold a newline but never a `/`.
fn debugfs_ls(img: &Path, dir: &str) -> BTreeMap<String, Oracle> {
    let out = Command::new("debugfs").arg("-R").arg(format!("ls -p \"{dir}\"")).arg(img).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rest = text.as_str();
    let mut map = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches('\n');
        if rest.is_empty() {
            break;
        }
        let f: Vec<&str> = rest[1..].splitn(7, '/').collect();
        assert_eq!(f.len(), 7, "debugfs record: {rest:?}");
        if f[4] != "." && f[4] != ".." {
            map.insert(
                f[4].to_string(),
                Oracle {
                    inode: f[0].parse().unwrap(),
                    mode: u32::from_str_radix(f[1], 8).unwrap(),
                    uid: f[2].parse().unwrap(),
                    gid: f[3].parse().unwrap(),
                    size: f[5].parse().ok(),
                },
            );
        }
        rest = f[6];
    }
    assert!(!map.is_empty() || dir != "/", "debugfs listed nothing: {text:?}");
    map
}

/// `bulwark ls --json` of `dir`, in the oracle's terms.
fn bulwark_ls(repo: &Path, point: &str, dir: &str, volume: Option<u32>) -> BTreeMap<String, Oracle> {
    let mut c = bulwark();
    c.args(["ls", point, dir, "--repo"]).arg(repo);
    if let Some(v) = volume {
        c.args(["--volume", &v.to_string()]);
    }
    let v = json(&mut c);
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let kind = match e["kind"].as_str().unwrap() {
                "file" => 0o100000,
                "dir" => 0o040000,
                "symlink" => 0o120000,
                "char" => 0o020000,
                "block" => 0o060000,
                "fifo" => 0o010000,
                "socket" => 0o140000,
                k => panic!("kind {k}"),
            };
            let dir = e["kind"] == "dir";
            (
                e["name"].as_str().unwrap().to_string(),
                Oracle {
                    // Inode numbers are known for files only; the others take the oracle's.
                    inode: e["inode"].as_u64().unwrap_or(0),
                    mode: kind | e["mode"].as_u64().unwrap() as u32,
                    uid: e["uid"].as_u64().unwrap() as u32,
                    gid: e["gid"].as_u64().unwrap() as u32,
                    size: (!dir).then(|| e["size"].as_u64().unwrap()),
                },
            )
        })
        .collect()
}

fn assert_listing_matches(img: &Path, repo: &Path, point: &str, dir: &str, volume: Option<u32>) {
    let mut want = debugfs_ls(img, dir);
    let got = bulwark_ls(repo, point, dir, volume);
    for (name, o) in want.iter_mut() {
        if o.mode & 0o170000 != 0o100000 {
            o.inode = 0;
        }
        if o.mode & 0o170000 == 0o040000 {
            o.size = None;
        }
        let _ = name;
    }
    assert_eq!(got, want, "listing of {dir}");
}

/// A source tree with every kind of entry a restore must get right.
fn make_tree(src: &Path) {
    std::fs::create_dir_all(src.join("dir/sub/deeper")).unwrap();
    std::fs::write(src.join("dir/big.bin"), bulwark_testkit::random_bytes(3 << 20 | 1234, 7)).unwrap();
    let sparse = std::fs::File::create(src.join("dir/sparse")).unwrap();
    sparse.set_len(20 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 9 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (20 << 20) - 3).unwrap();
    drop(sparse);
    std::fs::write(src.join("dir/empty"), b"").unwrap();
    std::fs::write(src.join("dir/sub/deeper/note.txt"), b"deep\n").unwrap();
    std::os::unix::fs::symlink("sub/deeper/note.txt", src.join("dir/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("dir/dangling")).unwrap();
    std::fs::write(src.join("dir/first-name"), b"one inode, two names").unwrap();
    std::fs::hard_link(src.join("dir/first-name"), src.join("dir/sub/second-name")).unwrap();
    for odd in ["with space", "ünïcödé ✓", "new\nline"] {
        std::fs::write(src.join("dir").join(odd), odd.as_bytes()).unwrap();
    }
    std::fs::write(src.join("secret"), b"0600").unwrap();
    chmod(&src.join("secret"), 0o600);
    std::fs::write(src.join("dir/tool"), b"#!/bin/sh\n").unwrap();
    chmod(&src.join("dir/tool"), 0o4755);
    chmod(&src.join("dir/sub"), 0o750);
    std::os::unix::fs::lchown(src.join("dir/sub"), Some(1001), Some(1002)).unwrap();
    std::os::unix::fs::lchown(src.join("dir/big.bin"), Some(2001), Some(2002)).unwrap();
    std::os::unix::fs::lchown(src.join("dir/link"), Some(3001), Some(3002)).unwrap();
    for (i, p) in ["dir/big.bin", "dir/sparse", "dir/empty", "dir/link", "dir/sub/deeper", "dir/sub", "dir", "secret"]
        .iter()
        .enumerate()
    {
        set_mtime(&src.join(p), 1_500_000_000 + i as i64 * 1000);
    }
}

/// Output and source agree on content, type, mode, owner and mtime for every path given.
fn assert_same(src: &Path, out: &Path, paths: &[&str]) {
    for p in paths {
        let (a, b) = (src.join(p), out.join(p));
        let (ma, mb) = (std::fs::symlink_metadata(&a).unwrap(), std::fs::symlink_metadata(&b).unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{p}: type");
        assert_eq!(ma.mode(), mb.mode(), "{p}: mode");
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{p}: owner");
        assert_eq!(ma.mtime(), mb.mtime(), "{p}: mtime");
        if ma.is_file() {
            assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{p}: content");
        } else if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&a).unwrap(), std::fs::read_link(&b).unwrap(), "{p}: target");
        }
    }
}

fn restore_paths(repo: &Path, point: &str, to: &Path, paths: &[&str], extra: &[&str]) -> Run {
    let mut c = bulwark();
    c.args(["restore", point, "--repo"]).arg(repo).arg("--to").arg(to);
    for p in paths {
        c.args(["--path", p]);
    }
    run(c.args(extra))
}

#[test]
fn files_of_an_ext4_point_list_and_restore_as_the_source_has_them() {
    assert!(bulwark_testkit::is_root(), "owners need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let img = dir.path().join("fs.img");
    mkfs_ext4(&src, &img, "64M", &[]);
    let repo = init_repo(dir.path());
    backup(&repo, &img, "fs");

    for d in ["/", "/dir", "/dir/sub", "/dir/sub/deeper"] {
        assert_listing_matches(&img, &repo, "fs:latest", d, None);
    }
    // Pages: each name once, in order, across --after.
    let first = json(bulwark().args(["ls", "fs:latest", "/dir", "--limit", "4", "--repo"]).arg(&repo));
    let names: Vec<&str> = first.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    let rest = json(bulwark().args(["ls", "fs:latest", "/dir", "--after", names[3], "--repo"]).arg(&repo));
    let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    all.extend(rest.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), debugfs_ls(&img, "/dir").len());
    // The table shows modes as `ls -l` does.
    let table = ok(bulwark().args(["ls", "fs:latest", "/dir", "--repo"]).arg(&repo));
    assert!(table.contains("-rwsr-xr-x") && table.contains("link -> sub/deeper/note.txt"), "{table}");

    // A directory and a file, restored at their paths with their metadata.
    let out = dir.path().join("out");
    let r = restore_paths(&repo, "fs:latest", &out, &["/dir", "/secret"], &["--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["complete"], true, "{report}");
    assert_same(
        &src,
        &out,
        &[
            "secret",
            "dir",
            "dir/big.bin",
            "dir/sparse",
            "dir/empty",
            "dir/link",
            "dir/dangling",
            "dir/tool",
            "dir/sub",
            "dir/sub/deeper",
            "dir/sub/deeper/note.txt",
            "dir/with space",
            "dir/ünïcödé ✓",
            "dir/new\nline",
            "dir/first-name",
            "dir/sub/second-name",
        ],
    );
    let (a, b) = (out.join("dir/first-name"), out.join("dir/sub/second-name"));
    assert_eq!(a.metadata().unwrap().ino(), b.metadata().unwrap().ino(), "a hard link stays one");
    assert!(out.join("dir/sparse").metadata().unwrap().blocks() < 1024, "holes stay holes");
    let top: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top.len(), 2, "only what was asked for: {top:?}");

    // A single file deep down: its directories come with it.
    let out2 = dir.path().join("out2");
    let r = restore_paths(&repo, "fs:latest", &out2, &["dir/sub/deeper/note.txt"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&src, &out2, &["dir/sub", "dir/sub/deeper/note.txt"]);
    // Into the same place again: refused without --overwrite, replaced with it.
    let again = restore_paths(&repo, "fs:latest", &out2, &["/secret"], &[]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("--overwrite"), "{}", again.stderr);
    std::fs::write(out2.join("secret"), b"changed").unwrap();
    let r = restore_paths(&repo, "fs:latest", &out2, &["/secret"], &["--overwrite"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&src, &out2, &["secret"]);
    // --safe: no set-id bits, no owners.
    let out3 = dir.path().join("out3");
    let r = restore_paths(&repo, "fs:latest", &out3, &["/dir/tool", "/dir/big.bin"], &["--safe"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(out3.join("dir/tool").metadata().unwrap().mode() & 0o7777, 0o755);
    assert_eq!(out3.join("dir/big.bin").metadata().unwrap().uid(), 0);
}

#[test]
fn a_dirty_journal_reads_as_if_replayed() {
    assert!(bulwark_testkit::is_root(), "loop mounts need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("live.img");
    // Dropped (unmounted) at the end of the test, also when an assertion fails.
    let fs = bulwark_testkit::MountedFs::on_image(&img, "ext4", 64 << 20, &[]);
    std::fs::create_dir_all(fs.path().join("data/inner")).unwrap();
    std::fs::write(fs.path().join("data/inner/data.bin"), bulwark_testkit::random_bytes(2 << 20, 3)).unwrap();
    for i in 0..20 {
        std::fs::write(fs.path().join(format!("data/f{i:02}")), format!("file {i}\n")).unwrap();
    }
    sh(Command::new("sync").arg("-f").arg(fs.path()));
    let copy = dir.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let features = sh(Command::new("dumpe2fs").arg("-h").arg(&copy));
    assert!(features.contains("needs_recovery"), "the copy of a mounted filesystem has a journal to replay");
    let repo = init_repo(dir.path());
    backup(&repo, &copy, "live");

    let listed = json(bulwark().args(["ls", "live:latest", "/data", "--repo"]).arg(&repo));
    let mut names: Vec<String> =
        listed.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect();
    let mut want: Vec<String> = std::fs::read_dir(fs.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    let out = dir.path().join("out");
    let r = restore_paths(&repo, "live:latest", &out, &["/data"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let mut paths = vec!["data/inner/data.bin".to_string()];
    paths.extend((0..20).map(|i| format!("data/f{i:02}")));
    for p in &paths {
        assert!(std::fs::read(out.join(p)).unwrap() == std::fs::read(fs.path().join(p)).unwrap(), "{p}");
    }
}

/// Writes a GPT with two Linux partitions of 32 MiB (at 1 MiB and 34 MiB) holding `a` and `b`.
fn gpt_disk(dir: &Path, a: &Path, b: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(80 << 20).unwrap();
    let script = "label: gpt\nstart=2048, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"first\"\n\
                  start=69632, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"second\"\n";
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk runs (package fdisk)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    for (part, seek) in [(a, "2048"), (b, "69632")] {
        sh(Command::new("dd").arg(format!("if={}", part.display())).arg(format!("of={}", disk.display())).args([
            "bs=512",
            &format!("seek={seek}"),
            "conv=notrunc,sparse",
            "status=none",
        ]));
    }
    disk
}

#[test]
fn a_disk_point_shows_its_volumes_and_each_filesystem_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
    std::fs::create_dir_all(s1.join("etc")).unwrap();
    std::fs::write(s1.join("etc/hostname"), b"first\n").unwrap();
    std::fs::create_dir_all(s2.join("home/user")).unwrap();
    std::fs::write(s2.join("home/user/notes"), bulwark_testkit::random_bytes(100_000, 9)).unwrap();
    let (p1, p2) = (dir.path().join("p1.img"), dir.path().join("p2.img"));
    mkfs_ext4(&s1, &p1, "32M", &[]);
    mkfs_ext4(&s2, &p2, "32M", &[]);
    let disk = gpt_disk(dir.path(), &p1, &p2);
    let repo = init_repo(dir.path());
    backup(&repo, &disk, "disk");

    let vols = json(bulwark().args(["ls", "disk:latest", "--repo"]).arg(&repo));
    let vols = vols.as_array().unwrap();
    let summary: Vec<(u64, &str, &str)> = vols
        .iter()
        .map(|v| (v["number"].as_u64().unwrap(), v["content"].as_str().unwrap(), v["label"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(summary, vec![(0, "gpt", ""), (1, "ext4", "first"), (2, "ext4", "second")]);
    let table = ok(bulwark().args(["ls", "disk:latest", "--repo"]).arg(&repo));
    assert!(table.contains("--volume") && table.contains("second"), "{table}");

    let root = bulwark_ls(&repo, "disk:latest", "/", Some(2));
    assert!(root.contains_key("home") && !root.contains_key("etc"), "{root:?}");
    // The oracle reads the partition from the disk at its offset.
    let home = bulwark_ls(&repo, "disk:latest", "/home/user", Some(2));
    let want = debugfs_ls(&p2, "/home/user");
    assert_eq!(home.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert_eq!(home["notes"].inode, want["notes"].inode);

    let out = dir.path().join("out");
    let r = restore_paths(&repo, "disk:latest", &out, &["/home/user/notes"], &["--volume", "2"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(out.join("home/user/notes")).unwrap() == std::fs::read(s2.join("home/user/notes")).unwrap());
    // Two filesystems and no --volume: which one is not guessed.
    let r = restore_paths(&repo, "disk:latest", &dir.path().join("out2"), &["/etc"], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--volume"), "{}", r.stderr);
    assert!(!dir.path().join("out2").exists());
    let r = run(bulwark().args(["ls", "disk:latest", "/", "--volume", "7", "--repo"]).arg(&repo));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no volume 7 (it has 0, 1, 2)"), "{}", r.stderr);
}

/// The command failed with a message, not a crash.
fn assert_clean_failure(r: &Run, says: &str) {
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.contains(says), "expected {says:?} in: {}", r.stderr);
}

fn patch(img: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, at).unwrap();
}

/// Where `debugfs` says a group's inode table starts, in bytes.
fn inode_table(img: &Path) -> u64 {
    let out = sh(Command::new("dumpe2fs").arg(img));
    let line = out.lines().find(|l| l.contains("Inode table at")).unwrap();
    let block: u64 = line.split("Inode table at ").nth(1).unwrap().split('-').next().unwrap().trim().parse().unwrap();
    let bs: u64 = out.lines().find(|l| l.starts_with("Block size:")).unwrap()[11..].trim().parse().unwrap();
    block * bs
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let repo = init_repo(dir.path());
    let good = dir.path().join("good.img");
    mkfs_ext4(&src, &good, "16M", &[]);
    backup(&repo, &good, "good");

    // A path that is not there: nothing is written, not even the target directory.
    let out = dir.path().join("out");
    let r = restore_paths(&repo, "good:latest", &out, &["/etc/hosts", "/etc/nope"], &[]);
    assert_clean_failure(&r, "has no path \"/etc/nope\"");
    assert!(!out.exists());
    let r = restore_paths(&repo, "good:latest", &out, &["/etc/../boot"], &[]);
    assert_clean_failure(&r, "..");
    let r = restore_paths(&repo, "good:latest", &out, &["/etc/hosts/x"], &[]);
    assert_clean_failure(&r, "not a directory");
    assert!(!out.exists());
    let r = run(bulwark().args(["ls", "good:latest", "/", "--volume", "1", "--repo"]).arg(&repo));
    assert_clean_failure(&r, "no volume 1");

    // Superblock zeroed: no filesystem at all.
    let zeroed = dir.path().join("zeroed.img");
    std::fs::copy(&good, &zeroed).unwrap();
    patch(&zeroed, 1024, &[0u8; 1024]);
    backup(&repo, &zeroed, "zeroed");
    let r = run(bulwark().args(["ls", "zeroed:latest", "--repo"]).arg(&repo));
    assert_clean_failure(&r, "no filesystem");
    // Superblock garbled behind its magic: damaged, said so.
    let garbled = dir.path().join("garbled.img");
    std::fs::copy(&good, &garbled).unwrap();
    let mut sb = bulwark_testkit::random_bytes(1024, 11);
    sb[56..58].copy_from_slice(&[0x53, 0xEF]);
    sb[96..100].copy_from_slice(&0x40u32.to_le_bytes());
    sb[100..104].fill(0);
    sb[24..28].copy_from_slice(&200u32.to_le_bytes());
    patch(&garbled, 1024, &sb);
    backup(&repo, &garbled, "garbled");
    let r = run(bulwark().args(["ls", "garbled:latest", "--repo"]).arg(&repo));
    assert_clean_failure(&r, "damaged");

    // Inode table garbled, with and without metadata checksums: an error or an incomplete
    // restore naming the damage; never a crash, never a write outside the target.
    for (name, extra) in [("csum", &[][..]), ("nocsum", &["-O", "^metadata_csum"][..])] {
        let img = dir.path().join(format!("{name}.img"));
        mkfs_ext4(&src, &img, "16M", extra);
        let at = inode_table(&img);
        patch(&img, at, &bulwark_testkit::random_bytes(64 << 10, 12));
        backup(&repo, &img, name);
        let point = format!("{name}:latest");
        let r = run(bulwark().args(["ls", &point, "/", "--repo"]).arg(&repo));
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        if name == "csum" {
            assert_clean_failure(&r, "damaged");
        }
        let out = dir.path().join(format!("out-{name}"));
        let r = restore_paths(&repo, &point, &out, &["/"], &[]);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_ne!(r.code, 0, "{name}: a garbled root cannot restore completely: {}", r.stdout);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".bulwark-restore")), "{left:?}");

    // XFS: named, and what it needs said.
    let xfs = dir.path().join("xfs.img");
    std::fs::File::create(&xfs).unwrap().set_len(300 << 20).unwrap();
    sh(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&xfs));
    backup(&repo, &xfs, "xfs");
    let r = run(bulwark().args(["ls", "xfs:latest", "--repo"]).arg(&repo));
    assert_clean_failure(&r, "holds xfs");
    assert!(r.stderr.contains("mount fallback"), "{}", r.stderr);
    let r = restore_paths(&repo, "xfs:latest", &dir.path().join("out-xfs"), &["/etc"], &[]);
    assert_clean_failure(&r, "mount fallback");
}

#[test]
fn hostile_names_and_directory_loops_stay_inside_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/file"), b"inside").unwrap();
    std::fs::write(src.join("a/XXslashXX"), b"renamed to hold a slash").unwrap();
    let img = dir.path().join("fs.img");
    // No metadata checksums: the damage below must be caught by reading, not by a checksum.
    mkfs_ext4(&src, &img, "16M", &["-O", "^metadata_csum"]);
    // A directory entry in b that points back at a: a loop.
    sh(Command::new("debugfs").args(["-w", "-R", "ln /a /a/b/up"]).arg(&img));
    let repo = init_repo(dir.path());
    backup(&repo, &img, "loop");
    // A name with a `/` in it: the bytes of the name changed in place.
    let data = std::fs::read(&img).unwrap();
    let at = data.windows(9).position(|w| w == b"XXslashXX").unwrap();
    patch(&img, at as u64 + 2, b"/../../");
    backup(&repo, &img, "slash");

    let out = dir.path().join("out");
    let r = restore_paths(&repo, "loop:latest", &out, &["/a"], &["--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let first = report["failed"][0]["reason"].as_str().unwrap();
    assert!(first.contains("directories probably loop"), "{first}");
    assert!(report["failed_total"].as_u64().unwrap() <= 2, "the walk stops at the loop: {report}");
    assert_eq!(std::fs::read(out.join("a/b/file")).unwrap(), b"inside");

    let out2 = dir.path().join("out2");
    let r = restore_paths(&repo, "slash:latest", &out2, &["/a"], &[]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("name contains a path separator"), "{}", r.stderr);
    let r = run(bulwark().args(["ls", "slash:latest", "/a", "--repo"]).arg(&repo));
    assert_clean_failure(&r, "name contains a path separator");
    // Nothing but the target was written in the test's directory.
    let mut left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["fs.img", "out", "out2", "repo", "src"]);
}
