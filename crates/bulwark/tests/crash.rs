//! kill -9 at random instants: afterwards the repository verifies clean, every listed point
//! restores to exactly what was backed up, and the next backup succeeds.

mod common;
mod stored;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

fn digest(path: &std::path::Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap())
}

#[test]
fn kill_nine_at_random_instants_leaves_a_consistent_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let img = dir.path().join("vol.img");
    bulwark_imagegen::generate(&img, 48 << 20, 11).unwrap();

    // How long an uninterrupted backup takes, so kills land all over it.
    let t = Instant::now();
    backup(&repo, &img, "vol");
    let full = t.elapsed();
    let mut expected: HashMap<String, blake3::Hash> = HashMap::new();
    let known = |expected: &HashMap<String, blake3::Hash>| {
        let pts = json(bulwark().arg("points").arg("--repo").arg(&repo));
        pts.as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .filter(|id| !expected.contains_key(id))
            .collect::<Vec<_>>()
    };
    for id in known(&expected) {
        expected.insert(id, digest(&img));
    }

    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..30u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bulwark_imagegen::mutate(&img, 3.0, 11, round).unwrap();
        let want = digest(&img);
        let delay = Duration::from_micros(state % (full.as_micros() as u64 * 13 / 10 + 1));
        let mut child = bulwark()
            .arg("backup")
            .arg(&img)
            .arg("--repo")
            .arg(&repo)
            .args(["--name", "vol", "--block-size", "256K"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        for id in known(&expected) {
            // The kill came after the commit: that point must hold this round's image.
            expected.insert(id, want);
        }
        let v = verify(&repo);
        assert_eq!(v.code, 0, "round {round}: verify after kill -9:\n{}", v.stdout);
    }

    for (id, want) in &expected {
        let out = dir.path().join(format!("{id}.out"));
        let r = restore(&repo, id, &out);
        assert_eq!(r.code, 0, "{id}: {}", r.stderr);
        assert_eq!(digest(&out), *want, "point {id} restores what was backed up");
        std::fs::remove_file(&out).unwrap();
    }

    // The next backup succeeds, and a collection clears what the killed ones left.
    let last = backup(&repo, &img, "vol");
    let out = dir.path().join("last.out");
    assert_eq!(restore(&repo, last["point"].as_str().unwrap(), &out).code, 0);
    assert_eq!(digest(&out), digest(&img));
    std::thread::sleep(Duration::from_millis(2100));
    ok(bulwark().arg("gc").arg("--repo").arg(&repo));
    assert!(no_staged_files(&repo), "gc removes what killed backups staged");
    assert!(std::fs::read_dir(repo.join("locks/writers")).unwrap().next().is_none(), "no stale leases");
    assert_eq!(verify(&repo).code, 0);
}

#[test]
fn listings_and_verify_speak_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let img = dir.path().join("vol.img");
    bulwark_imagegen::generate(&img, 6 << 20, 2).unwrap();
    let b = backup(&repo, &img, "vol");
    for field in ["point", "source_bytes", "read_bytes", "zero_bytes", "new_bytes", "stored_bytes", "duration_s"] {
        assert!(b.get(field).is_some(), "backup --json lacks {field}: {b}");
    }
    bulwark_imagegen::mutate(&img, 20.0, 2, 0).unwrap();
    backup(&repo, &img, "vol");
    let pts = json(bulwark().arg("points").arg("--repo").arg(&repo).args(["--name", "vol"]));
    assert_eq!(pts.as_array().unwrap().len(), 2);
    let v = verify(&repo);
    assert_eq!(v.code, 0);
    let v: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(v["ok"], true);

    // Damage one chunk: exit status 3, the point named.
    stored::stored_chunks(&repo, None, None)[0].zero();
    let r = verify(&repo);
    assert_eq!(r.code, 3);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["points"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["ok"] == false && !p["damaged_ranges"].as_array().unwrap().is_empty()));

    // Forget keeps the newest, gc runs.
    let f = json(bulwark().arg("forget").arg("--repo").arg(&repo).args(["--name", "vol", "--keep-last", "1"]));
    assert_eq!(f["points"].as_array().unwrap().iter().filter(|p| p["kept"] == true).count(), 1);
    assert_eq!(json(bulwark().arg("points").arg("--repo").arg(&repo)).as_array().unwrap().len(), 1);
    json(bulwark().arg("gc").arg("--repo").arg(&repo));
}

#[test]
fn sigterm_cancels_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let img = dir.path().join("vol.img");
    bulwark_imagegen::generate(&img, 256 << 20, 12).unwrap();
    let child = bulwark()
        .arg("backup")
        .arg(&img)
        .arg("--repo")
        .arg(&repo)
        .args(["--name", "vol", "--compression", "extreme"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));
    assert!(no_staged_files(&repo), "a cancelled backup leaves no staged files");
    assert!(std::fs::read_dir(repo.join("locks/writers")).unwrap().next().is_none(), "and no lease");
    assert_eq!(json(bulwark().arg("points").arg("--repo").arg(&repo)).as_array().unwrap().len(), 0);
}
