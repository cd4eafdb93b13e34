//! The service behind its Unix socket: who may connect, what travels, the sweep timer.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_hardened::{ErrorKind, HardenedClient, LockChange, RunningServer, ServerConfig};
use chrono::{TimeDelta, Utc};
use common::*;

struct Running {
    // Field order: the server stops before its socket's directory and the filesystem go.
    server: Option<RunningServer>,
    sockets: tempfile::TempDir,
    fx: Fixture,
}

impl Running {
    fn start(sweep_every: Duration) -> Running {
        let fx = Fixture::new();
        let sockets = tempfile::tempdir().unwrap();
        open_to_all(sockets.path());
        let service = Arc::new(fx.service());
        let config =
            ServerConfig { sweep_every, ..ServerConfig::new(sockets.path().join("hardened.sock"), Some(MOVER_GID)) };
        let server = bulwark_hardened::start(service, &config).unwrap();
        Running { fx, sockets, server: Some(server) }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.sockets.path().join("hardened.sock")
    }
}

#[test]
fn a_member_of_the_group_locks_over_the_socket_and_others_cannot_connect() {
    let run = Running::start(Duration::from_secs(60));
    let socket = run.socket();
    let md = fs::symlink_metadata(&socket).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!((md.mode() & 0o777, md.uid(), md.gid()), (0o660, 0, MOVER_GID));
    assert_eq!(fs::read_dir(run.sockets.path()).unwrap().count(), 1, "no staged socket left behind");

    let until = Utc::now() + TimeDelta::try_days(14).unwrap();
    let (repo, s) = (run.fx.repo.clone(), socket.clone());
    let (report, status) = on_thread_as(MOVER_UID, MOVER_GID, move || {
        let mut client = HardenedClient::connect(&s).unwrap();
        let report = client.lock(&repo, &keys(), until).unwrap();
        let status = client.status(&repo, &keys()).unwrap();
        (report, status)
    });
    assert_eq!(report.repository, run.fx.repo);
    assert!(report.keys.iter().all(|k| k.until == until && k.change == LockChange::New), "{report:?}");
    assert!(status.iter().all(|s| s.locked_until == Some(until)), "{status:?}");
    for (i, key) in KEYS.iter().enumerate() {
        assert_file_is_locked(&run.fx.path(key), &content(i));
    }

    let s = socket.clone();
    let e = on_thread_as(MOVER_UID - 1, MOVER_GID - 1, move || HardenedClient::connect(&s).err().expect("refused"));
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}

#[test]
fn refusals_and_malformed_requests_are_answered_with_their_kind() {
    let run = Running::start(Duration::from_secs(60));
    let mut client = HardenedClient::connect(run.socket()).unwrap();
    let until = Utc::now() + TimeDelta::try_days(1).unwrap();
    let outside = run.fx.fs.path().to_path_buf();
    let e = client.lock(&outside, &keys(), until).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.message().contains("not under any of this service's roots"), "{e}");
    let e = client.lock(&run.fx.repo, &["../x".to_string()], until).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    // The connection stays usable after an error.
    client.lock(&run.fx.repo, &keys()[..1], until).unwrap();

    let stream = UnixStream::connect(run.socket()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = String::new();
    writer.write_all(b"{\"op\":\"delete\",\"repository\":\"/\"}\n").unwrap();
    reader.read_line(&mut reply).unwrap();
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!((v["reply"].as_str(), v["kind"].as_str()), (Some("error"), Some("protocol")), "{reply}");
    reply.clear();
    let status = format!("{{\"op\":\"status\",\"repository\":{:?},\"keys\":[{:?}]}}\n", run.fx.repo, KEYS[0]);
    writer.write_all(status.as_bytes()).unwrap();
    reader.read_line(&mut reply).unwrap();
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["reply"], "status", "{reply}");
    assert_eq!(v["keys"][0]["locked_until"].as_str().map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()), Some(until));
}

#[test]
fn a_second_service_on_the_same_socket_is_refused_and_a_stopped_one_leaves_no_socket() {
    let mut run = Running::start(Duration::from_secs(60));
    let other = || {
        let state = run.fx.dir.path().join("other-state");
        let config = bulwark_hardened::ServiceConfig::new(vec![run.fx.root.clone()], state);
        Arc::new(bulwark_hardened::Service::open(config).unwrap())
    };
    let e = bulwark_hardened::start(other(), &ServerConfig::new(run.socket(), None)).err().expect("taken");
    assert!(e.message().contains("another service is listening"), "{e}");

    // A client still connected does not hold up the stop.
    let _idle = HardenedClient::connect(run.socket()).unwrap();
    let started = Instant::now();
    run.server.take().unwrap().stop();
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    assert!(!run.socket().exists());
    assert_eq!(HardenedClient::connect(run.socket()).err().unwrap().kind(), ErrorKind::Unavailable);

    // The socket is free for a successor, whose stop is prompt even when its socket file was
    // removed behind its back.
    let successor = bulwark_hardened::start(other(), &ServerConfig::new(run.socket(), None)).unwrap();
    HardenedClient::connect(run.socket()).unwrap().status(&run.fx.repo, &keys()).unwrap();
    fs::remove_file(run.socket()).unwrap();
    let started = Instant::now();
    successor.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
}

#[test]
fn the_sweep_timer_clears_expired_locks() {
    let run = Running::start(Duration::from_millis(300));
    let mut client = HardenedClient::connect(run.socket()).unwrap();
    let until = Utc::now() + TimeDelta::try_seconds(2).unwrap();
    client.lock(&run.fx.repo, &keys(), until).unwrap();
    assert_not_permitted(&as_data_mover(&format!("rm -f {}", q(&run.fx.path(KEYS[0])))), "delete before the date");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.status(&run.fx.repo, &keys()).unwrap().iter().any(|s| s.locked_until.is_some()) {
        assert!(Instant::now() < deadline, "the sweep never cleared the locks");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Utc::now() >= until, "cleared before the date");
    for key in KEYS {
        assert_ok(&as_data_mover(&format!("rm {}", q(&run.fx.path(key)))), &format!("delete {key} after the date"));
    }
}
