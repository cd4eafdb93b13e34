//! The service on a real ext4 filesystem: what a lock protects, what it refuses, and how it
//! ends.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use bulwark_hardened::{ErrorKind, Ledger, LockChange, Service, ServiceConfig};
use chrono::{TimeDelta, Utc};
use common::*;

fn days(n: i64) -> TimeDelta {
    TimeDelta::try_days(n).unwrap()
}

#[test]
fn every_locked_file_resists_deletion_change_and_unlocking_without_the_capability() {
    let fx = Fixture::new();
    // The harness itself can delete: an unlocked file of the data mover's goes.
    fs::write(fx.path("locks/scratch"), b"x").unwrap();
    std::os::unix::fs::chown(fx.path("locks/scratch"), Some(MOVER_UID), Some(MOVER_GID)).unwrap();
    assert_ok(&as_data_mover(&format!("rm {}", q(&fx.path("locks/scratch")))), "deleting an unlocked file");

    let until = Utc::now() + days(30);
    let report = fx.service().lock(&fx.repo, &keys(), until).unwrap();
    assert_eq!(report.repository, fx.repo);
    assert_eq!(report.keys.len(), KEYS.len());
    assert!(report.keys.iter().all(|k| k.until == until && k.change == LockChange::New), "{report:?}");

    for (i, key) in KEYS.iter().enumerate() {
        assert_file_is_locked(&fx.path(key), &content(i));
    }
    // Nor can the data mover empty the directory above a locked file.
    assert_not_permitted(&as_data_mover(&format!("rm -rf {}", q(&fx.path("points")))), "rm -rf points");
    assert!(fx.path(KEYS[2]).exists());

    let ledger = Ledger::load(&Ledger::list(&fx.state).unwrap()[0]).unwrap();
    assert_eq!(ledger.repository(), fx.repo);
    assert!(KEYS.iter().all(|k| ledger.until(k) == Some(until)));
    let md = fs::metadata(ledger.path()).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o644), "the ledger is root's, readable by all");
    assert!(!ledger.path().starts_with(&fx.root), "the ledger lives outside the roots");
}

#[test]
fn a_shorter_date_leaves_the_longer_lock() {
    let fx = Fixture::new();
    let service = fx.service();
    let long = Utc::now() + days(30);
    let short = Utc::now() + days(7);
    service.lock(&fx.repo, &keys()[..2], long).unwrap();

    let report = service.lock(&fx.repo, &keys()[..3], short).unwrap();
    let changes: Vec<_> = report.keys.iter().map(|k| (k.key.as_str(), k.until, k.change)).collect();
    assert_eq!(
        changes,
        [(KEYS[0], long, LockChange::Kept), (KEYS[1], long, LockChange::Kept), (KEYS[2], short, LockChange::New)]
    );
    let status = service.status(&fx.repo, &keys()[..3]).unwrap();
    assert_eq!(status.iter().map(|s| s.locked_until).collect::<Vec<_>>(), [Some(long), Some(long), Some(short)]);

    let later = Utc::now() + days(60);
    let report = service.lock(&fx.repo, &keys()[..1], later).unwrap();
    assert_eq!((report.keys[0].until, report.keys[0].change), (later, LockChange::Extended));
}

#[test]
fn keys_leading_outside_the_repository_are_refused_and_nothing_is_touched() {
    let fx = Fixture::new();
    let outside = fx.root.join("outside");
    fs::write(&outside, b"not the repository's").unwrap();
    let beyond = fx.fs.path().join("beyond");
    fs::create_dir(&beyond).unwrap();
    fs::write(beyond.join("victim"), b"v").unwrap();
    // What a data mover could plant in the repository it owns.
    std::os::unix::fs::symlink("../../outside", fx.path("points/planted.manifest")).unwrap();
    std::os::unix::fs::symlink(&beyond, fx.path("data/linked")).unwrap();
    fs::hard_link(&outside, fx.path("data/3f/hardlinked")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        fx.path("data/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();

    let service = fx.service();
    let until = Utc::now() + days(30);
    let refused = [
        "../outside".to_string(),
        outside.display().to_string(),
        "data/../../outside".to_string(),
        "points/planted.manifest".to_string(),
        "data/linked/victim".to_string(),
        "data/3f/hardlinked".to_string(),
        "data/fifo".to_string(),
        "data".to_string(),
    ];
    for key in &refused {
        // Alone, and beside a good key: a request with one bad key locks nothing.
        for keys in [vec![key.clone()], vec![KEYS[0].to_string(), key.clone()]] {
            let e = service.lock(&fx.repo, &keys, until).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Refused, "{keys:?}: {e}");
            assert!(e.message().contains(key.trim_start_matches('/')), "{keys:?}: {e}");
        }
    }
    let e = service.lock(&fx.repo, &["points/absent.manifest".to_string()], until).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    for file in [&outside, &beyond.join("victim"), &fx.path(KEYS[0])] {
        assert!(!is_immutable(file), "{} was locked", file.display());
    }
    assert!(Ledger::list(&fx.state).unwrap().is_empty(), "nothing was recorded");
    assert_ok(&as_data_mover(&format!("rm {}", q(&fx.path(KEYS[0])))), "deleting a file no lock reached");
}

#[test]
fn repositories_outside_the_roots_are_refused() {
    let fx = Fixture::new();
    let elsewhere = fx.fs.path().join("elsewhere");
    fs::create_dir_all(elsewhere.join("points")).unwrap();
    fs::write(elsewhere.join("config"), b"c").unwrap();
    std::os::unix::fs::symlink(&elsewhere, fx.root.join("linked-repo")).unwrap();
    let service = fx.service();
    let until = Utc::now() + days(30);
    let config = vec!["config".to_string()];
    for repo in [
        elsewhere.clone(),
        fx.root.join("../elsewhere"),
        fx.root.join("linked-repo"),
        Path::new("repos/r1").to_path_buf(),
    ] {
        let e = service.lock(&repo, &config, until).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{}: {e}", repo.display());
        let e = service.status(&repo, &config).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{}: {e}", repo.display());
    }
    assert!(!is_immutable(&elsewhere.join("config")));
    assert!(Ledger::list(&fx.state).unwrap().is_empty());
}

#[test]
fn dates_in_the_past_or_beyond_the_maximum_are_refused() {
    let fx = Fixture::new();
    let service = Service::open(ServiceConfig { max_lock_days: 90, ..fx.config() }).unwrap();
    for until in [Utc::now() - days(1), Utc::now() + days(91)] {
        let e = service.lock(&fx.repo, &keys(), until).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{until}: {e}");
    }
    assert!(KEYS.iter().all(|k| !is_immutable(&fx.path(k))));
    service.lock(&fx.repo, &keys(), Utc::now() + days(89)).unwrap();
}

#[test]
fn expired_locks_are_cleared_by_the_sweep_and_the_files_can_then_be_deleted() {
    let fx = Fixture::new();
    let service = fx.service();
    let until = Utc::now() + TimeDelta::try_seconds(2).unwrap();
    service.lock(&fx.repo, &keys(), until).unwrap();
    // A locked file cannot move, but its directory can: its key then names nothing.
    fs::rename(fx.path("data/b0"), fx.path("data/b0.moved")).unwrap();

    let early = service.sweep(Utc::now()).unwrap();
    assert!(early.cleared.is_empty() && early.gone.is_empty(), "{early:?}");
    assert_not_permitted(&as_data_mover(&format!("rm -f {}", q(&fx.path(KEYS[0])))), "delete before the date");

    std::thread::sleep((until - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100));
    let swept = service.sweep(Utc::now()).unwrap();
    assert!(swept.failed.is_empty(), "{:?}", swept.failed);
    let cleared: Vec<_> = swept.cleared.iter().map(|k| k.key.as_str()).collect();
    let expected: Vec<_> = KEYS.iter().copied().filter(|k| !k.starts_with("data/b0")).collect();
    assert_eq!(sorted(cleared), sorted(expected));
    assert_eq!(swept.gone.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["data/b0/b07d52e6a1f9"]);
    assert!(Ledger::list(&fx.state).unwrap().is_empty(), "an emptied ledger is removed");

    for key in KEYS.iter().filter(|k| !k.starts_with("data/b0")) {
        assert!(!is_immutable(&fx.path(key)));
        assert_ok(&as_data_mover(&format!("rm {}", q(&fx.path(key)))), &format!("delete {key} after the date"));
    }
    // The moved file left the ledger untouched: it stays locked until root frees it.
    assert!(is_immutable(&fx.path("data/b0.moved/b07d52e6a1f9")));
    assert!(service.sweep(Utc::now()).unwrap().gone.is_empty());
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn the_ledger_survives_a_restart() {
    let fx = Fixture::new();
    let until = Utc::now() + days(30);
    let first = fx.service();
    first.lock(&fx.repo, &keys(), until).unwrap();
    let e = Service::open(fx.config()).err().expect("a second service on the same state directory");
    assert!(e.message().contains("another immutability service"), "{e}");
    drop(first);

    let second = fx.service();
    let status = second.status(&fx.repo, &keys()).unwrap();
    assert!(status.iter().all(|s| s.locked_until == Some(until)), "{status:?}");
    let report = second.lock(&fx.repo, &keys(), until - days(1)).unwrap();
    assert!(report.keys.iter().all(|k| k.until == until && k.change == LockChange::Kept), "{report:?}");
    assert!(second.sweep(Utc::now()).unwrap().cleared.is_empty());
    assert_file_is_locked(&fx.path(KEYS[2]), &content(2));
}

#[test]
fn status_reports_only_files_that_are_really_locked() {
    let fx = Fixture::new();
    let service = fx.service();
    let until = Utc::now() + days(30);
    service.lock(&fx.repo, &keys()[..2], until).unwrap();
    let asked = vec![KEYS[0].to_string(), KEYS[1].to_string(), KEYS[2].to_string(), "points/absent".to_string()];
    let status = service.status(&fx.repo, &asked).unwrap();
    assert_eq!(status.iter().map(|s| s.locked_until).collect::<Vec<_>>(), [Some(until), Some(until), None, None]);

    // Root may clear the attribute (the threat model grants it): the date on record then
    // promises nothing, and status says so; a new lock sets the attribute again.
    assert_ok(&std::process::Command::new("chattr").arg("-i").arg(fx.path(KEYS[0])).output().unwrap(), "chattr -i");
    assert_eq!(service.status(&fx.repo, &asked[..1]).unwrap()[0].locked_until, None);
    service.lock(&fx.repo, &asked[..1], until).unwrap();
    assert_eq!(service.status(&fx.repo, &asked[..1]).unwrap()[0].locked_until, Some(until));
    assert_file_is_locked(&fx.path(KEYS[0]), &content(0));
}

#[test]
fn the_ledgers_must_lie_outside_the_roots_and_be_roots_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repos");
    fs::create_dir(&root).unwrap();
    for state in [root.join("state"), dir.path().to_path_buf()] {
        let e = Service::open(ServiceConfig::new(vec![root.clone()], state.clone())).err().expect("overlap");
        assert_eq!(e.kind(), ErrorKind::Refused, "{}: {e}", state.display());
    }
    let open_state = dir.path().join("open-state");
    fs::create_dir(&open_state).unwrap();
    fs::set_permissions(&open_state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let e = Service::open(ServiceConfig::new(vec![root.clone()], open_state)).err().expect("writable by others");
    assert!(e.message().contains("writable by nobody else"), "{e}");

    let made = dir.path().join("var/lib/hardened");
    Service::open(ServiceConfig::new(vec![root], made.clone())).unwrap();
    assert_eq!(fs::metadata(&made).unwrap().mode() & 0o777, 0o755);
}
