//! Bad input gets a clear message naming the problem, a non-zero exit, and changes nothing.

mod common;
mod stored;

use std::process::Command;

use common::*;

#[test]
fn wrong_password_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "right\n").unwrap();
    ok(bulwark().args(["repo", "init", "--encryption", "aes256gcm", "--password-file"]).arg(&pw).arg(&repo));
    let img = dir.path().join("a.img");
    std::fs::write(&img, vec![7u8; 3 << 20]).unwrap();
    ok(bulwark()
        .arg("backup")
        .arg(&img)
        .arg("--repo")
        .arg(&repo)
        .args(["--name", "a"])
        .env("BULWARK_PASSWORD", "right"));
    let r = run(bulwark().arg("points").arg("--repo").arg(&repo).env("BULWARK_PASSWORD", "wrong"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("wrong password"), "{}", r.stderr);
    let r = run(bulwark().arg("points").arg("--repo").arg(&repo));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is encrypted"), "{}", r.stderr);

    // The password can change; the data stays readable under the new one only.
    let new = dir.path().join("new");
    std::fs::write(&new, "newer").unwrap();
    ok(bulwark()
        .args(["repo", "passwd", "--repo"])
        .arg(&repo)
        .arg("--password-file")
        .arg(&pw)
        .arg("--new-password-file")
        .arg(&new));
    assert_eq!(run(bulwark().arg("points").arg("--repo").arg(&repo).env("BULWARK_PASSWORD", "right")).code, 1);
    let out = ok(bulwark().arg("verify").arg("--repo").arg(&repo).env("BULWARK_PASSWORD", "newer"));
    assert!(out.contains("healthy"), "{out}");
}

#[test]
fn not_a_repository_foreign_and_newer_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(bulwark().arg("points").arg("--repo").arg(dir.path()));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a Bulwark repository"), "{}", r.stderr);

    let repo = init_repo(dir.path());
    let config = repo.join("config");
    let original = std::fs::read_to_string(&config).unwrap();
    // What a newer build writes: another version, and its own digest (here: none).
    let mut newer: serde_json::Value = serde_json::from_str(&original).unwrap();
    newer.as_object_mut().unwrap().remove("integrity");
    newer["version"] = 99.into();
    std::fs::write(&config, serde_json::to_vec(&newer).unwrap()).unwrap();
    let r = run(bulwark().arg("points").arg("--repo").arg(&repo));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("newer than this Bulwark understands"), "{}", r.stderr);

    std::fs::write(&config, br#"{"format": "restic", "version": 2}"#).unwrap();
    let r = run(bulwark().arg("points").arg("--repo").arg(&repo));
    assert!(r.code == 1 && r.stderr.contains("not a Bulwark repository"), "{}", r.stderr);

    // Our own config, changed by damage: its copy takes its place.
    std::fs::write(&config, original.replace("\"version\": 4", "\"version\": 2")).unwrap();
    ok(bulwark().arg("points").arg("--repo").arg(&repo));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original, "healed from config.copy");
    // Both damaged: named as damaged, not as someone else's.
    let copy = repo.join("config.copy");
    for (a, b) in [("\"version\": 4", "\"version\": 2"), ("bulwark-repository", "bulwark-repositorz")] {
        std::fs::write(&config, original.replace(a, b)).unwrap();
        std::fs::write(&copy, original.replace(a, b)).unwrap();
        let r = run(bulwark().arg("points").arg("--repo").arg(&repo));
        assert!(r.code == 1 && r.stderr.contains("config file is damaged"), "{}", r.stderr);
    }
    std::fs::write(&config, &original).unwrap();

    let r = run(bulwark().args(["repo", "init"]).arg(&repo));
    assert!(r.code == 1 && r.stderr.contains("already exists"), "{}", r.stderr);
}

#[test]
fn unreadable_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (source, expect) in [(dir.path().join("absent.img"), "cannot open"), (fifo, "not a block device")] {
        let r = run(bulwark().arg("backup").arg(&source).arg("--repo").arg(&repo).args(["--name", "x"]));
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains(expect) && r.stderr.contains(&*source.to_string_lossy()), "{}", r.stderr);
    }
    let r = run(bulwark().arg("backup").arg(dir.path()).arg("--repo").arg(&repo).args([
        "--name",
        "x",
        "--block-size",
        "3M",
    ]));
    assert_eq!(r.code, 2, "bad usage");
    let points = json(bulwark().arg("points").arg("--repo").arg(&repo));
    assert_eq!(points.as_array().unwrap().len(), 0);
    assert!(no_staged_files(&repo));
}

#[test]
fn restore_refuses_existing_file_and_unknown_point() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let img = dir.path().join("a.img");
    std::fs::write(&img, bulwark_testkit::mixed_bytes(3 << 20, 1 << 20, 1)).unwrap();
    backup(&repo, &img, "a");
    let r = restore(&repo, "a:latest", &img);
    assert!(r.code == 1 && r.stderr.contains("--overwrite"), "{}", r.stderr);
    let r = restore(&repo, "b:latest", &dir.path().join("out"));
    assert!(r.code == 1 && r.stderr.contains("no restore point"), "{}", r.stderr);
    ok(bulwark().args(["restore", "a:latest", "--overwrite"]).arg("--repo").arg(&repo).arg("--to").arg(&img));
}

#[test]
fn target_device_too_small_is_refused_before_writing() {
    assert!(bulwark_testkit::is_root(), "loop devices need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let img = dir.path().join("a.img");
    std::fs::write(&img, bulwark_testkit::mixed_bytes(16 << 20, 1 << 20, 3)).unwrap();
    let p = backup(&repo, &img, "a");
    let small = bulwark_testkit::LoopDevice::create(dir.path(), "small.img", 8 << 20);
    let r = restore(&repo, p["point"].as_str().unwrap(), &small.device);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("too small"), "{}", r.stderr);
    let content = std::fs::read(&small.image).unwrap();
    assert!(content.iter().all(|&b| b == 0), "nothing was written");
}

#[test]
fn restore_onto_a_used_block_device_is_identical() {
    assert!(bulwark_testkit::is_root(), "loop devices need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let data = bulwark_testkit::mixed_bytes(12 << 20, 1 << 20, 4);
    assert!(data.chunks(1 << 20).any(|b| b.iter().all(|&x| x == 0)), "the image has zero blocks");
    let img = dir.path().join("a.img");
    std::fs::write(&img, &data).unwrap();
    backup(&repo, &img, "a");
    // The device holds old data everywhere, so zero blocks must really be written.
    let dev = bulwark_testkit::LoopDevice::create(dir.path(), "dev.img", 16 << 20);
    std::fs::write(&dev.device, vec![0xeeu8; 16 << 20]).unwrap();
    let r =
        run(bulwark().args(["restore", "a:latest", "--overwrite", "--repo"]).arg(&repo).arg("--to").arg(&dev.device));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = std::fs::read(&dev.device).unwrap();
    assert!(got[..data.len()] == data[..], "restored device differs");
}

/// One mistyped device name must not destroy a disk: a device holding a filesystem, a
/// partition table or any data is refused without --overwrite (naming the device and what it
/// holds, writing nothing); a mounted one is refused even with it.
#[test]
fn a_device_that_holds_data_or_is_mounted_is_refused() {
    assert!(bulwark_testkit::is_root(), "loop devices need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let data = bulwark_testkit::mixed_bytes(8 << 20, 1 << 20, 5);
    let img = dir.path().join("a.img");
    std::fs::write(&img, &data).unwrap();
    backup(&repo, &img, "a");
    let dev = bulwark_testkit::LoopDevice::create(dir.path(), "dev.img", 16 << 20);
    let shown = dev.device.display().to_string();
    let restore_to = |overwrite: bool| {
        let mut c = bulwark();
        c.args(["restore", "a:latest", "--repo"]).arg(&repo).arg("--to").arg(&dev.device);
        if overwrite {
            c.arg("--overwrite");
        }
        run(&mut c)
    };
    let partition_table = || {
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        mbr
    };
    bulwark_testkit::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev.device));
    for (what, expect) in [("filesystem", "ext4"), ("partition table", "MBR"), ("stray bytes", "offset 16252928")] {
        match what {
            "partition table" => {
                std::fs::write(&dev.device, vec![0u8; 16 << 20]).unwrap();
                std::fs::write(&dev.device, partition_table()).unwrap();
            }
            "stray bytes" => {
                std::fs::write(&dev.device, vec![0u8; 16 << 20]).unwrap();
                let f = std::fs::OpenOptions::new().write(true).open(&dev.device).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, b"x", 16252928).unwrap();
            }
            _ => {}
        }
        let before = std::fs::read(&dev.device).unwrap();
        let r = restore_to(false);
        assert_eq!(r.code, 1, "{what}: {}", r.stderr);
        assert!(r.stderr.contains(&shown) && r.stderr.contains("not empty"), "{what}: {}", r.stderr);
        assert!(r.stderr.contains(expect) && r.stderr.contains("--overwrite"), "{what}: {}", r.stderr);
        assert!(std::fs::read(&dev.device).unwrap() == before, "{what}: nothing was written");
    }
    let r = restore_to(true);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read(&dev.device).unwrap()[..data.len()] == data[..], "restored with --overwrite");

    let fs = bulwark_testkit::MountedFs::create(dir.path(), "ext4", 16 << 20);
    let r = run(bulwark()
        .args(["restore", "a:latest", "--overwrite", "--repo"])
        .arg(&repo)
        .arg("--to")
        .arg(&fs.loopdev.device));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is mounted at") && r.stderr.contains(&*fs.path().to_string_lossy()), "{}", r.stderr);
    assert!(fs.path().join("lost+found").exists(), "the mounted filesystem is intact");
}

#[test]
fn full_disk_fails_cleanly_and_keeps_earlier_points() {
    assert!(bulwark_testkit::is_root(), "loop devices need root; run the suite as root");
    let dir = tempfile::tempdir().unwrap();
    let fs = bulwark_testkit::MountedFs::create(dir.path(), "ext4", 32 << 20);
    let repo = fs.path().join("repo");
    ok(bulwark().args(["repo", "init"]).arg(&repo));
    let small = dir.path().join("small.img");
    let small_data = bulwark_testkit::mixed_bytes(4 << 20, 1 << 20, 8);
    std::fs::write(&small, &small_data).unwrap();
    backup(&repo, &small, "small");
    let big = dir.path().join("big.img");
    bulwark_imagegen::generate(&big, 96 << 20, 9).unwrap();
    let r = run(bulwark().arg("backup").arg(&big).arg("--repo").arg(&repo).args([
        "--name",
        "big",
        "--compression",
        "none",
    ]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(r.stderr.contains(&*repo.to_string_lossy()), "the message names the repository: {}", r.stderr);
    let v = verify(&repo);
    assert_eq!(v.code, 0, "{}", v.stdout);
    let points = json(bulwark().arg("points").arg("--repo").arg(&repo));
    assert_eq!(points.as_array().unwrap().len(), 1, "no half point of the failed backup");
    let out = dir.path().join("small.out");
    assert_eq!(restore(&repo, "small:latest", &out).code, 0);
    assert!(std::fs::read(&out).unwrap() == small_data);
    // What the failed backup wrote is garbage: gc gives the space back (a pack it could not
    // finish is gone already).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let gc = json(bulwark().arg("gc").arg("--repo").arg(&repo));
    assert_eq!(gc["condemned_waiting"], 0, "{gc}");
    assert!(stored::stored_bytes(&repo) < 6 << 20, "{} bytes stored for a 4 MiB point", stored::stored_bytes(&repo));
    assert!(no_staged_files(&repo));
}

/// A file-level restore refused because of its target names the target and what is wrong with
/// it; one refused because of the point names the point. Nothing is written either way.
#[test]
fn file_restore_refusals_name_the_target_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    backup(&repo, &src, "etc");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let shown = |p: &std::path::Path| p.display().to_string();
    for (to, expect) in [
        (file.clone(), format!("target {}: is a file, not a directory", shown(&file))),
        (file.join("under"), format!("{} on its path is a file, not a directory", shown(&file))),
        ("/dev/null".into(), "target /dev/null: is a character device, not a directory".to_string()),
    ] {
        let r = restore(&repo, "etc:latest", &to);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains(&expect) && r.stderr.contains(&shown(&to)), "{expect}: {}", r.stderr);
        assert!(!r.stderr.contains("invalid argument") && !r.stderr.contains("os error 20"), "{}", r.stderr);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    let out = dir.path().join("out");
    let r = run(bulwark()
        .args(["restore", "etc:latest", "--path", "etc/passwd", "--repo"])
        .arg(&repo)
        .arg("--to")
        .arg(&out));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("has no path \"etc/passwd\"") && r.stderr.contains("nothing was written"),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "nothing was written");
    // And what only file-level points take, for a volume point, before anything is written.
    let img = dir.path().join("a.img");
    std::fs::write(&img, vec![1u8; 1 << 20]).unwrap();
    backup(&repo, &img, "img");
    let r = run(bulwark().args(["restore", "img:latest", "--safe", "--repo"]).arg(&repo).arg("--to").arg(&out));
    assert!(r.code == 1 && r.stderr.contains("--safe") && r.stderr.contains("volume point"), "{}", r.stderr);
    assert!(!out.exists(), "nothing was written");
}
