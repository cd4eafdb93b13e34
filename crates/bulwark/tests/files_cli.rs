//! File-level points through the command line: unreadable files, btrfs snapshots, ls, and the
//! repository operations (verify, forget, gc) that work on file points as on volume points.

mod common;
mod stored;

use std::process::Command;

use common::*;

#[test]
fn unreadable_files_are_reported_and_the_point_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("pub")).unwrap();
    std::fs::write(src.join("pub/readable"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"root only").unwrap();
    let repo = init_repo(dir.path());
    // The backup runs as an unprivileged user who may write the repository but not read
    // `secret`.
    for p in [dir.path(), &src, &src.join("pub"), &src.join("pub/readable")] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(src.join("secret"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(Command::new("chown").args(["-R", "65534:65534"]).arg(&repo).status().unwrap().success());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_bulwark"))
        .arg("backup")
        .arg(&src)
        .arg("--repo")
        .arg(&repo)
        .args(["--name", "src", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "warning");
    let warnings = r["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("secret") && w.as_str().unwrap().contains("Permission denied")),
        "{warnings:?}"
    );
    let ls = json(bulwark().args(["ls", "src:latest", "--repo"]).arg(&repo));
    let paths: Vec<&str> = ls.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec![".", "pub", "pub/readable"]);
}

#[test]
fn btrfs_subvolumes_are_snapshotted_and_the_snapshot_released() {
    assert!(bulwark_testkit::is_root(), "loop devices and mounts need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let fs = bulwark_testkit::MountedFs::create(dir.path(), "btrfs", 256 << 20);
    let vol = fs.path().join("vol");
    bulwark_testkit::run(Command::new("btrfs").args(["subvolume", "create"]).arg(&vol));
    std::fs::write(vol.join("data"), bulwark_testkit::random_bytes(3 << 20, 1)).unwrap();
    let repo = init_repo(dir.path());
    let r = json(bulwark().arg("backup").arg(&vol).arg("--repo").arg(&repo).args(["--name", "vol"]));
    assert_eq!(r["snapshot"], "btrfs", "{r}");
    assert_eq!(r["consistency"], "crash-consistent");
    let left = std::fs::read_dir(vol.join(".bulwark-snapshots")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the snapshot is deleted after the backup");
    let out = dir.path().join("out");
    ok(bulwark().args(["restore", "vol:latest", "--repo"]).arg(&repo).arg("--to").arg(&out));
    assert!(std::fs::read(out.join("data")).unwrap() == bulwark_testkit::random_bytes(3 << 20, 1));
    assert!(!out.join(".bulwark-snapshots").exists());
}

#[test]
fn verify_forget_and_gc_work_on_file_points() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("docs/report.bin"), bulwark_testkit::random_bytes(2 << 20, 5)).unwrap();
    std::fs::write(src.join("other"), bulwark_testkit::random_bytes(10_000, 6)).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret").unwrap();
    let repo = dir.path().join("repo");
    ok(bulwark().args(["repo", "init", "--encryption", "aes256gcm", "--password-file"]).arg(&pw).arg(&repo));
    let with_pw = |c: &mut Command| {
        c.arg("--password-file").arg(&pw);
    };
    let mut c = bulwark();
    c.arg("backup").arg(&src).arg("--repo").arg(&repo).args(["--name", "src"]);
    with_pw(&mut c);
    let first = json(&mut c);
    std::fs::write(src.join("docs/report.bin"), bulwark_testkit::random_bytes(2 << 20, 7)).unwrap();
    let mut c = bulwark();
    c.arg("backup").arg(&src).arg("--repo").arg(&repo).args(["--name", "src"]);
    with_pw(&mut c);
    json(&mut c);

    // Forget the first point, collect: its unique chunks go, the second point stays whole.
    let mut c = bulwark();
    c.arg("forget").arg("--repo").arg(&repo).args(["--name", "src", "--keep-last", "1"]);
    with_pw(&mut c);
    json(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let mut c = bulwark();
    c.arg("gc").arg("--repo").arg(&repo);
    with_pw(&mut c);
    let gc = json(&mut c);
    assert!(gc["deleted_chunks"].as_u64().unwrap() >= 2, "{gc}");
    let mut c = bulwark();
    c.arg("verify").arg("--repo").arg(&repo).arg("--json");
    with_pw(&mut c);
    assert_eq!(run(&mut c).code, 0);

    // Damage the big file's chunks: verify names the file.
    let password = std::fs::read_to_string(&pw).unwrap();
    for c in stored::stored_chunks(&repo, Some(password.trim().as_bytes()), None) {
        if c.len > 200_000 {
            c.zero();
        }
    }
    let mut c = bulwark();
    c.arg("verify").arg("--repo").arg(&repo).arg("--json");
    with_pw(&mut c);
    let r = run(&mut c);
    assert_eq!(r.code, 3, "{}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let files = &v["points"][0]["damaged_files"];
    let files = files.as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["path"], "docs/report.bin", "{v}");
    assert_eq!(files[0]["chunk"].as_str().unwrap().len(), 64, "{v}");
    assert_ne!(v["points"][0]["point"], first["point"]);
}

/// Runs `bulwark ARGS` as the unprivileged user 65534 (nobody).
fn as_nobody(args: &[&std::ffi::OsStr]) -> Run {
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .env_remove("BULWARK_PASSWORD"))
}

fn chmod(p: &std::path::Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// One file whose content is damaged in the repository does not stop the restore: the rest
/// comes back, the damaged file is absent (not half written), the report and --json name it
/// with the reason, and the exit status is 1.
#[test]
fn a_damaged_file_is_reported_and_everything_else_restored() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("a-first"), b"first").unwrap();
    std::fs::write(src.join("docs/big.bin"), bulwark_testkit::random_bytes(3 << 20, 21)).unwrap();
    std::fs::write(src.join("z-last"), b"last").unwrap();
    let repo = init_repo(dir.path());
    backup(&repo, &src, "src");
    // The big file's chunks are the only large ones (the tree's piece is small).
    for c in stored::stored_chunks(&repo, None, None) {
        if c.len > 200_000 {
            c.zero();
        }
    }
    let out = dir.path().join("out");
    let r = run(bulwark().args(["restore", "src:latest", "--json", "--repo"]).arg(&repo).arg("--to").arg(&out));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("incomplete") && r.stderr.contains("docs/big.bin"), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["complete"], false);
    assert_eq!(v["failed_total"], 1);
    assert_eq!(v["failed"][0]["path"], "docs/big.bin", "{v:#}");
    assert!(v["failed"][0]["reason"].as_str().unwrap().contains("damaged"), "{v:#}");
    assert_eq!(std::fs::read(out.join("a-first")).unwrap(), b"first");
    assert_eq!(std::fs::read(out.join("z-last")).unwrap(), b"last");
    let left: Vec<_> = std::fs::read_dir(out.join("docs")).unwrap().collect();
    assert!(left.is_empty(), "no half file and no temporary file: {left:?}");

    let out = dir.path().join("out-human");
    let r = restore(&repo, "src:latest", &out);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("INCOMPLETE") && r.stdout.contains("not restored: docs/big.bin"), "{}", r.stdout);
}

/// Restoring as an unprivileged user: owners cannot be set, and that costs nothing else:
/// modes, extended attributes and the times of files and directories are applied.
#[test]
fn an_unprivileged_restore_keeps_modes_times_and_attributes() {
    assert!(bulwark_testkit::is_root(), "needs root to switch users; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/shared"), b"group-writable").unwrap();
    chmod(&src.join("sub/shared"), 0o664);
    std::os::unix::fs::lchown(src.join("sub/shared"), Some(1000), Some(1000)).unwrap();
    rustix::fs::lsetxattr(src.join("sub/shared").as_path(), "user.note", b"kept", rustix::fs::XattrFlags::empty())
        .unwrap();
    chmod(&src.join("sub"), 0o750);
    std::os::unix::fs::lchown(src.join("sub"), Some(1000), Some(1000)).unwrap();
    let old = rustix::fs::Timespec { tv_sec: 1_500_000_000, tv_nsec: 123_456_789 };
    for p in [src.join("sub/shared"), src.join("sub")] {
        let ts = rustix::fs::Timestamps { last_access: old, last_modification: old };
        rustix::fs::utimensat(rustix::fs::CWD, &p, &ts, rustix::fs::AtFlags::empty()).unwrap();
    }
    let repo = init_repo(dir.path());
    backup(&repo, &src, "src");
    assert!(Command::new("chown").args(["-R", "65534:65534"]).arg(&repo).status().unwrap().success());
    // An empty directory the user may write: where such a user restores.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::lchown(&out, Some(65534), Some(65534)).unwrap();
    let r = as_nobody(&[
        "restore".as_ref(),
        "src:latest".as_ref(),
        "--repo".as_ref(),
        repo.as_ref(),
        "--to".as_ref(),
        out.as_ref(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("cannot set owner"), "the owner is a warning: {}", r.stdout);
    let md = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md("sub/shared").mode() & 0o7777, 0o664);
    assert_eq!(md("sub").mode() & 0o7777, 0o750);
    assert_eq!(md("sub/shared").uid(), 65534);
    for p in ["sub/shared", "sub"] {
        assert_eq!((md(p).mtime(), md(p).mtime_nsec()), (old.tv_sec, old.tv_nsec), "{p}: times applied");
    }
    let mut v = vec![0u8; 64];
    let n = rustix::fs::lgetxattr(out.join("sub/shared").as_path(), "user.note", &mut v).unwrap();
    assert_eq!(&v[..n], b"kept");
}

/// A directory the user cannot list or enter is not backed up as an empty point that looks
/// like a success: the backup fails naming it, and nothing is committed.
#[test]
fn backing_up_a_directory_the_user_cannot_enter_fails() {
    assert!(bulwark_testkit::is_root(), "needs root to switch users; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let repo = init_repo(dir.path());
    assert!(Command::new("chown").args(["-R", "65534:65534"]).arg(&repo).status().unwrap().success());
    // 0700: cannot list; 0744: can list, cannot enter (no entry's metadata is readable).
    for mode in [0o700, 0o744] {
        let src = dir.path().join(format!("src-{mode:o}"));
        std::fs::create_dir_all(src.join("inside")).unwrap();
        std::fs::write(src.join("file"), b"data").unwrap();
        chmod(&src, mode);
        let r = as_nobody(&[
            "backup".as_ref(),
            src.as_ref(),
            "--repo".as_ref(),
            repo.as_ref(),
            "--name".as_ref(),
            "src".as_ref(),
        ]);
        assert_eq!(r.code, 1, "mode {mode:o}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&*src.to_string_lossy()) && r.stderr.contains("cannot list or enter"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    }
    let points = json(bulwark().arg("points").arg("--repo").arg(&repo));
    assert_eq!(points.as_array().unwrap().len(), 0, "nothing committed: {points}");
}
