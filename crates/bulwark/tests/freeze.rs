//! The operator's pre-freeze and post-thaw scripts around each snapshot try (`bulwark backup
//! --pre-freeze-script --post-thaw-script --freeze-limit`): they run in that order around the
//! snapshot, the thaw runs whatever failed, a failing or hanging script or a freeze past its
//! limit fails the try (and the backup, once the tries are spent) with a message naming it,
//! and no point is written from a failed try.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        ok(bulwark().args(["repo", "init"]).arg(dir.path().join("repo")));
        std::fs::write(
            dir.path().join("disk.img"),
            (0..6u32 << 18).flat_map(|i| (i * 7).to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        Setup { dir }
    }
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
    /// A backup with these scripts; each appends its word to the `steps` file.
    fn backup(&self, pre: &str, post: &str, extra: &[&str]) -> Run {
        let steps = self.path("steps");
        run(bulwark()
            .arg("backup")
            .arg(self.path("disk.img"))
            .arg("--repo")
            .arg(self.path("repo"))
            .args(["--name", "db", "--snapshot", "none", "--snapshot-retry-wait", "0", "--json"])
            .args(["--pre-freeze-script", &format!("echo freeze >> {}; {pre}", steps.display())])
            .args(["--post-thaw-script", &format!("echo thaw >> {}; {post}", steps.display())])
            .args(extra))
    }
    /// The steps the scripts recorded since the last call.
    fn steps(&self) -> Vec<String> {
        let s = std::fs::read_to_string(self.path("steps")).unwrap_or_default();
        let _ = std::fs::remove_file(self.path("steps"));
        s.lines().map(String::from).collect()
    }
    fn points(&self) -> usize {
        let out = ok(bulwark().args(["points", "--json", "--repo"]).arg(self.path("repo")));
        serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().len()
    }
}

fn restored_matches(s: &Setup, point: &str) {
    let to = s.path("restored.img");
    let _ = std::fs::remove_file(&to);
    ok(bulwark().arg("restore").arg(point).arg("--repo").arg(s.path("repo")).arg("--to").arg(&to));
    assert!(std::fs::read(&to).unwrap() == std::fs::read(s.path("disk.img")).unwrap(), "{point} restores other bytes");
}

#[test]
fn scripts_run_around_the_snapshot_and_the_freeze_is_reported() {
    let s = Setup::new();
    // The scripts are told the source: one that finds it unset fails the try.
    let r = s.backup("test -z \"$BULWARK_SOURCE\"", "", &["--snapshot-tries", "1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    s.steps();
    let src = s.path("disk.img");
    let r = s.backup(&format!("test \"$BULWARK_SOURCE\" = {}", src.display()), "", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.steps(), ["freeze", "thaw"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let frozen = report["freeze_seconds"].as_f64().unwrap();
    assert!(frozen > 0.0 && frozen < 10.0, "{report:#}");
    restored_matches(&s, report["point"].as_str().unwrap());
}

#[test]
fn a_failing_pre_freeze_script_fails_each_try_and_the_thaw_still_runs() {
    let s = Setup::new();
    let r = s.backup("echo the database refused >&2; exit 1", "", &["--snapshot-tries", "2"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("pre-freeze script failed") && r.stderr.contains("the database refused"), "{}", r.stderr);
    assert!(r.stderr.contains("failed 2 times"), "{}", r.stderr);
    assert_eq!(s.steps(), ["freeze", "thaw", "freeze", "thaw"]);
    assert_eq!(s.points(), 0, "a point from a failed try");

    // A failing post-thaw script fails the try too: the application may still be held.
    let r = s.backup("", "exit 4", &["--snapshot-tries", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("post-thaw script failed"), "{}", r.stderr);
    assert_eq!(s.points(), 0);
}

#[test]
fn a_hanging_script_is_killed_at_the_freeze_limit_and_a_long_freeze_fails_the_try() {
    let s = Setup::new();
    let started = Instant::now();
    let r = s.backup("sleep 60", "", &["--snapshot-tries", "1", "--freeze-limit", "1"]);
    assert_eq!(r.code, 1);
    assert!(started.elapsed() < Duration::from_secs(20), "waited {:?}", started.elapsed());
    assert!(r.stderr.contains("pre-freeze script ran past its timeout of 1.0 s"), "{}", r.stderr);
    assert_eq!(s.steps(), ["freeze", "thaw"], "the thaw must run after a killed pre-freeze script");
    assert_eq!(s.points(), 0);

    // Each script within its time, the whole freeze past the limit: the snapshot is dropped.
    let r = s.backup("sleep 0.7", "sleep 0.7", &["--snapshot-tries", "1", "--freeze-limit", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("longer than its limit of 1.0 s"), "{}", r.stderr);
    assert_eq!(s.points(), 0);
    assert!(Path::new(&s.path("disk.img")).exists());
}
