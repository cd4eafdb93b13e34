//! The S3 backend against a real server (SeaweedFS's `weed mini`, one per test): every trait
//! operation, failures by name, a server that dies and comes back, Object Lock semantics as the
//! server enforces them, and a repository in packs in a bucket. Skipped (saying so) without a `weed` binary, unless
//! `BULWARK_REQUIRE_S3` is set.

mod common;

use std::io::{self, Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use bulwark_repo::gc::collect_garbage;
use bulwark_repo::storage::location::S3Location;
use bulwark_repo::storage::s3::{Credentials, ObjectLocked, RetentionMode, RetentionPeriod, S3Options, S3Storage};
use bulwark_repo::storage::{Location, Storage};
use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::{Compression, InitOptions, Layout, PointStats, Repository};
use bulwark_testkit::{random_bytes, S3Server};
use common::{assert_restores, backup, spec, write_blocks, BS};

const KEY: &str = "AKIDBULWARKTEST";
const SECRET: &str = "bulwark-test-secret-0123456789";

fn unique(what: &str) -> String {
    let mut r = [0u8; 6];
    for (i, b) in r.iter_mut().enumerate() {
        *b = (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos() >> (i * 4)) as u8;
    }
    format!("{what}-{}-{:x}", std::process::id(), u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], 0, 0]))
}

fn location(server: &S3Server, bucket: &str, prefix: &str) -> S3Location {
    match server.location(bucket, prefix).parse::<Location>().unwrap() {
        Location::S3(l) => l,
        other => panic!("{other:?}"),
    }
}

fn storage_with(server: &S3Server, bucket: &str, prefix: &str, creds: Credentials, opts: S3Options) -> S3Storage {
    S3Storage::with_options(&location(server, bucket, prefix), creds, opts).unwrap()
}

fn storage(server: &S3Server, bucket: &str, prefix: &str) -> S3Storage {
    storage_with(server, bucket, prefix, Credentials::new(KEY, SECRET, None), S3Options::default())
}

/// A storage on a new bucket of its own, under a prefix (so prefix handling is always tested).
fn fresh(server: &S3Server) -> S3Storage {
    let bucket = unique("b");
    storage(server, &bucket, "").create_bucket(false).unwrap();
    storage(server, &bucket, "repo/one")
}

/// A credentials file (the AWS shared format) with the test server's key, in `dir`.
fn credentials_file(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("creds");
    std::fs::write(&file, format!("[default]\naws_access_key_id={KEY}\naws_secret_access_key={SECRET}\n")).unwrap();
    file
}

/// A repository on S3 keeps a local cache: this file's tests share one that goes away with the
/// run, set once before any test opens a repository.
fn set_cache_dir() {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("BULWARK_CACHE_DIR", dir.path());
        dir
    });
}

fn names(s: &dyn Storage, prefix: &str) -> Vec<String> {
    let mut n: Vec<String> = s.list(prefix).unwrap().into_iter().map(|e| e.name).collect();
    n.sort();
    n
}

#[test]
fn every_operation_round_trips() {
    let Some(server) = S3Server::start() else { return };
    let s = fresh(&server);
    let shown = s.describe();
    assert!(shown.starts_with("s3://") && shown.contains("repo/one") && !shown.contains(SECRET), "{shown}");
    assert!(!format!("{s:?}").contains(SECRET) && !format!("{s:?}").contains(KEY));

    assert!(s.stat("points/a").unwrap().is_none());
    assert!(!s.exists("points/a").unwrap());
    let e = s.read("points/a").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

    let before = s.now().unwrap();
    s.put("points/a", b"hello", true).unwrap();
    let first = s.stat("points/a").unwrap().unwrap().tag;
    s.put("points/a", b"hellp", true).unwrap();
    let second = s.stat("points/a").unwrap().unwrap().tag;
    assert!(first.is_some() && first != second, "{first:?} {second:?}");
    s.put("points/a", b"hello", true).unwrap();
    s.put("empty", b"", false).unwrap();
    s.put("data/3f/3f2a", &random_bytes(100_000, 1), false).unwrap();
    assert_eq!(s.read("points/a").unwrap(), b"hello");
    assert_eq!(s.read("empty").unwrap(), b"");
    let mut buf = vec![9; 3];
    s.read_into("data/3f/3f2a", &mut buf).unwrap();
    assert_eq!(buf, random_bytes(100_000, 1));
    let st = s.stat("points/a").unwrap().unwrap();
    assert_eq!((st.name.as_str(), st.size), ("points/a", 5));
    let skew = st.modified.duration_since(before).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "stamped {skew:?} from the server's clock");
    assert_eq!(s.size("data/3f/3f2a").unwrap(), 100_000);
    assert_eq!(s.size("nothing").unwrap(), 0);

    let mut r = s.open_read("data/3f/3f2a").unwrap();
    let mut streamed = Vec::new();
    r.read_to_end(&mut streamed).unwrap();
    assert_eq!(streamed, random_bytes(100_000, 1));
    assert_eq!(s.open_read("nothing").err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));

    let mut w = s.create("points/b").unwrap();
    w.write_all(b"st").unwrap();
    w.write_all(b"aged").unwrap();
    assert!(!s.exists("points/b").unwrap(), "a staged object is invisible");
    w.commit(true).unwrap();
    assert_eq!(s.read("points/b").unwrap(), b"staged");
    drop(s.create("points/dropped").unwrap());
    let mut w = s.create("points/dropped").unwrap();
    w.write_all(b"never").unwrap();
    drop(w);
    assert!(!s.exists("points/dropped").unwrap());

    // Listings: recursive, relative to the prefix asked for and to the repository's.
    assert_eq!(names(&s, ""), ["data/3f/3f2a", "empty", "points/a", "points/b"]);
    assert_eq!(names(&s, "points/"), ["a", "b"]);
    assert_eq!(names(&s, "data/"), ["3f/3f2a"]);
    assert!(names(&s, "none/").is_empty());
    let other = storage(&server, &s.location().bucket, "repo/two");
    assert!(names(&other, "").is_empty(), "another prefix sees nothing of this one");
    let whole = storage(&server, &s.location().bucket, "");
    assert_eq!(names(&whole, "repo/"), ["one/data/3f/3f2a", "one/empty", "one/points/a", "one/points/b"]);

    // Replacing, deleting, and deleting what is not there.
    s.put("points/a", b"again", true).unwrap();
    assert_eq!(s.read("points/a").unwrap(), b"again");
    s.delete("points/a").unwrap();
    s.delete("points/a").unwrap();
    s.delete("never/was").unwrap();
    assert!(!s.exists("points/a").unwrap());
    s.quarantine("points/b").unwrap();
    assert_eq!(names(&s, "points/"), ["b.damaged"]);

    let now = s.now().unwrap();
    let off = now.duration_since(SystemTime::now()).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(5), "the server's clock is {off:?} from ours");
}

#[test]
fn ranges_and_objects_too_short() {
    let Some(server) = S3Server::start() else { return };
    let s = fresh(&server);
    let data = random_bytes(10_000, 2);
    s.put("obj", &data, false).unwrap();
    let mut buf = Vec::new();
    s.read_range("obj", 0, 10, &mut buf).unwrap();
    assert_eq!(buf, data[..10]);
    s.read_range("obj", 1234, 4000, &mut buf).unwrap();
    assert_eq!(buf, data[1234..5234]);
    s.read_range("obj", 9990, 10, &mut buf).unwrap();
    assert_eq!(buf, data[9990..]);
    s.read_range("obj", 10_000, 0, &mut buf).unwrap();
    assert!(buf.is_empty());
    for (offset, len) in [(9990, 11), (10_000, 1), (20_000, 5), (10_001, 0)] {
        let e = s.read_range("obj", offset, len, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{offset}+{len}: {e}");
    }
    let e = s.read_range("absent", 0, 1, &mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

#[test]
fn listings_page_past_a_thousand_keys() {
    let Some(server) = S3Server::start() else { return };
    let s = Arc::new(fresh(&server));
    let n = 1100;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in (t..n).step_by(8) {
                    s.put(&format!("data/{:02x}/{i:05}", i % 7), &[i as u8], false).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let mut want: Vec<String> = (0..n).map(|i| format!("{:02x}/{i:05}", i % 7)).collect();
    want.sort();
    assert_eq!(names(&*s, "data/"), want);
    // Small pages: many continuation tokens.
    let small = storage_with(
        &server,
        &s.location().bucket,
        &s.location().prefix,
        Credentials::new(KEY, SECRET, None),
        S3Options { page_size: 70, ..S3Options::default() },
    );
    assert_eq!(names(&small, "data/"), want);
    assert_eq!(names(&small, "data/03/").len(), (0..n).filter(|i| i % 7 == 3).count());
}

#[test]
fn large_objects_go_up_in_parts() {
    let Some(server) = S3Server::start() else { return };
    let s = fresh(&server);
    let s = storage_with(
        &server,
        &s.location().bucket,
        &s.location().prefix,
        Credentials::new(KEY, SECRET, None),
        S3Options { part_size: 16 << 20, ..S3Options::default() },
    );
    let data = random_bytes(40 << 20, 3);
    // Written in odd pieces through a staged object, and whole through put.
    let mut w = s.create("packs/big").unwrap();
    for piece in data.chunks(3_000_001) {
        w.write_all(piece).unwrap();
    }
    w.commit(true).unwrap();
    s.put("packs/whole", &data, true).unwrap();
    for key in ["packs/big", "packs/whole"] {
        assert_eq!(s.size(key).unwrap(), data.len() as u64);
        let back = s.read(key).unwrap();
        assert!(back == data, "{key} read back differs");
        let mut buf = Vec::new();
        // Across the boundary of the first two 16 MiB parts.
        s.read_range(key, (16 << 20) - 100, 200, &mut buf).unwrap();
        assert_eq!(buf, data[(16 << 20) - 100..(16 << 20) + 100]);
        let mut streamed = Vec::new();
        s.open_read(key).unwrap().read_to_end(&mut streamed).unwrap();
        assert!(streamed == data, "{key} streamed differs");
    }
    // Exactly one part's worth goes up whole.
    s.put("packs/edge", &data[..16 << 20], true).unwrap();
    assert_eq!(s.size("packs/edge").unwrap(), 16 << 20);
    // An abandoned multipart upload leaves nothing behind, visible or not.
    let mut w = s.create("packs/abandoned").unwrap();
    w.write_all(&data[..20 << 20]).unwrap();
    assert_eq!(s.incomplete_uploads("packs/").unwrap().len(), 1, "one part sent");
    drop(w);
    assert!(!s.exists("packs/abandoned").unwrap());
    assert!(s.incomplete_uploads("").unwrap().is_empty(), "the upload was aborted");
}

#[test]
fn put_new_has_exactly_one_winner() {
    let Some(server) = S3Server::start() else { return };
    let s = Arc::new(fresh(&server));
    for round in 0..10 {
        let key = format!("locks/maintenance/{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|who| {
                let (s, key, barrier) = (s.clone(), key.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let body = format!("holder {who}");
                    barrier.wait();
                    (s.put_new(&key, body.as_bytes()).unwrap(), body)
                })
            })
            .collect();
        let results: Vec<(bool, String)> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<&String> = results.iter().filter(|r| r.0).map(|r| &r.1).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(s.read(&key).unwrap(), winners[0].as_bytes(), "round {round}: the winner's object stays");
    }
    assert!(!s.put_new("locks/maintenance/0", b"late").unwrap());
    assert!(s.put_new("locks/maintenance/new", b"first").unwrap());
}

#[test]
fn wrong_credentials_are_named() {
    let Some(server) = S3Server::start_with_credentials(KEY, SECRET) else { return };
    let bucket = unique("b");
    let good = storage(&server, &bucket, "");
    good.create_bucket(false).unwrap();
    good.put("k", b"v", true).unwrap();
    for (key, secret) in [(KEY, "not-the-secret-at-all"), ("AKIDNOSUCHKEY", SECRET)] {
        let bad = storage_with(&server, &bucket, "", Credentials::new(key, secret, None), S3Options::default());
        let started = Instant::now();
        let results: Vec<(&str, io::Error)> = vec![
            ("read", bad.read("k").unwrap_err()),
            ("stat", bad.stat("k").unwrap_err()),
            ("put", bad.put("k2", b"v", true).unwrap_err()),
            ("list", bad.list("").unwrap_err()),
            ("now", bad.now().unwrap_err()),
        ];
        assert!(started.elapsed() < Duration::from_secs(5), "refusals are not retried");
        for (op, e) in results {
            let text = e.to_string();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{op}: {text}");
            assert!(text.contains("credentials are wrong"), "{op}: {text}");
            assert!(text.contains(&bucket) && text.contains(&server.endpoint()), "{op}: {text}");
            assert!(!text.contains(secret) && !text.contains(key), "{op} shows a credential: {text}");
        }
    }
    assert_eq!(good.read("k").unwrap(), b"v");

    // From a credentials file named by the location, through storage::open.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3-credentials");
    std::fs::write(&file, format!("[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")).unwrap();
    let loc: Location =
        format!("{}&credentials-file={}", server.location(&bucket, ""), file.display()).parse().unwrap();
    let opened = bulwark_repo::storage::open(&loc).unwrap();
    assert_eq!(opened.read("k").unwrap(), b"v");
    std::fs::write(&file, format!("[default]\naws_access_key_id = {KEY}\naws_secret_access_key = wrong\n")).unwrap();
    let e = bulwark_repo::storage::open(&loc).unwrap().read("k").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("credentials are wrong") && e.to_string().contains("s3-credentials"), "{e}");
}

#[test]
fn a_missing_bucket_is_named() {
    let Some(server) = S3Server::start() else { return };
    let bucket = unique("nobucket");
    let s = storage(&server, &bucket, "repo");
    let mut buf = Vec::new();
    let results: Vec<(&str, io::Error)> = vec![
        ("stat", s.stat("config").unwrap_err()),
        ("read", s.read("config").unwrap_err()),
        ("range", s.read_range("config", 0, 1, &mut buf).unwrap_err()),
        ("list", s.list("").unwrap_err()),
        ("put", s.put("config", b"x", true).unwrap_err()),
        ("put_new", s.put_new("config", b"x").unwrap_err()),
        ("delete", s.delete("config").unwrap_err()),
        ("now", s.now().unwrap_err()),
    ];
    for (op, e) in results {
        let text = e.to_string();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{op}: {text}");
        assert!(text.contains(&format!("there is no bucket {bucket}")), "{op}: {text}");
        assert!(text.contains(&server.endpoint()), "{op}: {text}");
    }
}

#[test]
fn a_server_that_dies_is_retried_then_reported_and_used_again_when_back() {
    let Some(mut server) = S3Server::start() else { return };
    let s = Arc::new(fresh(&server));
    let data = random_bytes(40 << 20, 4);
    s.put("packs/big", &data, true).unwrap();

    // Killed in the middle of a streamed read and of a multipart upload.
    let mut reader = s.open_read("packs/big").unwrap();
    let mut first = vec![0; 1 << 20];
    reader.read_exact(&mut first).unwrap();
    let mut writer = s.create("packs/new").unwrap();
    writer.write_all(&data[..20 << 20]).unwrap();
    server.kill();

    let started = Instant::now();
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest);
    let write = writer.write_all(&data[20 << 20..]).and_then(|()| writer.commit(true));
    let stat = s.stat("packs/big");
    let elapsed = started.elapsed();
    // Five tries a request, the waits between them 0.2-0.4, 0.4-0.8, 0.8-1.6 and 1.6-3.2 s.
    assert!(elapsed < Duration::from_secs(40), "gave up after {elapsed:?}");
    assert!(rest.len() < data.len(), "the server cannot have sent it all");
    for (op, e) in [("read", read.unwrap_err()), ("write", write.unwrap_err()), ("stat", stat.unwrap_err())] {
        let text = e.to_string();
        assert!(
            !matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof),
            "{op}: a lost server must not look like a missing or short object: {e:?}"
        );
        assert!(text.contains(&server.endpoint()) && text.contains(&s.location().bucket), "{op}: {text}");
        assert!(text.contains("packs/"), "{op} names the key: {text}");
    }
    let e = s.stat("packs/big").unwrap_err().to_string();
    assert!(e.contains("gave up after 5 attempts"), "{e}");

    // A request made while it is down succeeds when it comes back within the retries (more of
    // them than by default, so a slow start on a busy machine stays within them).
    let patient = S3Options {
        max_attempts: 12,
        retry_base: Duration::from_millis(250),
        retry_cap: Duration::from_secs(2),
        ..S3Options::default()
    };
    let waiting = {
        let s = storage_with(
            &server,
            &s.location().bucket,
            &s.location().prefix,
            Credentials::new(KEY, SECRET, None),
            patient.clone(),
        );
        std::thread::spawn(move || s.read("packs/big"))
    };
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    assert!(waiting.join().unwrap().unwrap() == data, "read through the restart");

    // A stream cut by a crash picks up where it broke off once the server is back.
    let patient =
        storage_with(&server, &s.location().bucket, &s.location().prefix, Credentials::new(KEY, SECRET, None), patient);
    let mut reader = patient.open_read("packs/big").unwrap();
    let mut streamed = vec![0; 3 << 20];
    reader.read_exact(&mut streamed).unwrap();
    server.kill();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        server
    });
    reader.read_to_end(&mut streamed).unwrap();
    let server = restarter.join().unwrap();
    assert!(streamed == data, "resumed stream differs");

    // The same storage works again: what was written before is there, the broken upload is not.
    assert!(s.read("packs/big").unwrap() == data);
    assert!(!s.exists("packs/new").unwrap());
    s.put("after", b"fine", true).unwrap();
    assert_eq!(s.read("after").unwrap(), b"fine");
    assert!(server.is_running());
}

#[test]
fn a_hung_server_times_out() {
    let Some(server) = S3Server::start() else { return };
    let bucket = unique("b");
    storage(&server, &bucket, "").create_bucket(false).unwrap();
    let opts = S3Options {
        io_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        max_attempts: 2,
        ..S3Options::default()
    };
    let s = storage_with(&server, &bucket, "", Credentials::new(KEY, SECRET, None), opts);
    s.put("k", b"v", true).unwrap();
    server.pause();
    let started = Instant::now();
    let e = s.read("k").unwrap_err();
    let elapsed = started.elapsed();
    server.resume();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(e.to_string().contains("gave up after 2 attempts"), "{e}");
    assert_eq!(s.read("k").unwrap(), b"v");
}

#[test]
fn https_trusts_the_location_s_ca_file_beside_the_usual_roots() {
    let Some(server) = S3Server::start_tls() else { return };
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::write(&creds, format!("[default]\naws_access_key_id={KEY}\naws_secret_access_key={SECRET}\n")).unwrap();
    let bucket = unique("tls");
    let at = |extra: &str| -> Location {
        format!("s3://{bucket}/r?endpoint={}&credentials-file={}{extra}", server.https_endpoint(), creds.display())
            .parse()
            .unwrap()
    };
    let trusted = at(&format!("&ca-file={}", server.ca_file().display()));
    let Location::S3(loc) = &trusted else { panic!() };
    S3Storage::open(loc).unwrap().create_bucket(false).unwrap();
    let s = bulwark_repo::storage::open(&trusted).unwrap();
    s.put("k", b"over TLS", true).unwrap();
    assert_eq!(s.read("k").unwrap(), b"over TLS");

    // Without the CA the certificate is refused at once (no retries), saying why.
    let started = Instant::now();
    let e = bulwark_repo::storage::open(&at("")).unwrap().read("k").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "a certificate refusal is not retried: {e:?}");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(
        e.to_string().to_lowercase().contains("certificate") && e.to_string().contains(&server.https_endpoint()),
        "{e}"
    );
    // A CA file that is none is refused when the storage is opened.
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let e = bulwark_repo::storage::open(&at(&format!("&ca-file={}", dir.path().join("junk.pem").display())))
        .err()
        .expect("a CA file without a certificate");
    assert!(e.to_string().contains("junk.pem"), "{e}");
}

#[test]
fn object_lock_is_enforced_by_the_server() {
    let Some(server) = S3Server::start() else { return };
    let plain = fresh(&server);
    assert!(!plain.object_lock_configuration().unwrap().enabled);

    let bucket = unique("locked");
    let s = storage(&server, &bucket, "repo");
    s.create_bucket(true).unwrap();
    let e = s.create_bucket(true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    let config = s.object_lock_configuration().unwrap();
    assert!(config.enabled, "{config:?}");
    s.set_default_retention(Some((RetentionMode::Compliance, RetentionPeriod::Days(1)))).unwrap();
    let config = s.object_lock_configuration().unwrap();
    assert_eq!(config.default_retention, Some((RetentionMode::Compliance, RetentionPeriod::Days(1))), "{config:?}");
    s.set_default_retention(None).unwrap();
    assert_eq!(s.object_lock_configuration().unwrap().default_retention, None);

    s.put("packs/p1", b"pack one", true).unwrap();
    let versions = s.list_versions("packs/").unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let v1 = versions[0].version_id.clone();
    assert!(versions[0].latest && !versions[0].delete_marker && versions[0].name == "p1", "{versions:?}");
    assert_eq!(s.retention("packs/p1", Some(&v1)).unwrap(), None);

    let now = s.now().unwrap();
    let day = Duration::from_secs(86_400);
    s.put_retention("packs/p1", Some(&v1), RetentionMode::Compliance, now + day).unwrap();
    let r = s.retention("packs/p1", Some(&v1)).unwrap().expect("a retention");
    assert_eq!(r.mode, RetentionMode::Compliance);
    let off = r.until.duration_since(now + day).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(1), "retained until {:?}, asked {:?}", r.until, now + day);
    assert_eq!(s.retention("packs/p1", None).unwrap().map(|r| r.mode), Some(RetentionMode::Compliance));

    // The server refuses to delete the version or shorten its lock; extending is fine.
    let e = s.delete_version("packs/p1", &v1).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    let locked = ObjectLocked::find(&e).unwrap_or_else(|| panic!("not a lock refusal: {e}"));
    assert_eq!((locked.key.as_str(), locked.version.as_deref()), ("packs/p1", Some(v1.as_str())));
    assert_eq!(locked.retention.as_ref().map(|r| r.mode), Some(RetentionMode::Compliance));
    let e = s.put_retention("packs/p1", Some(&v1), RetentionMode::Compliance, now + day / 2).unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "shortening: {e}");
    let e = s.put_retention("packs/p1", Some(&v1), RetentionMode::Governance, now + day * 2).unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "weakening to GOVERNANCE: {e}");
    s.put_retention("packs/p1", Some(&v1), RetentionMode::Compliance, now + day * 3).unwrap();
    let r = s.retention("packs/p1", Some(&v1)).unwrap().unwrap();
    assert!(r.until > now + day * 2, "extended: {r:?}");
    assert!(s.read("packs/p1").unwrap() == b"pack one");

    // The storage's delete removes versions, so a locked object refuses it as a file would.
    let e = s.delete("packs/p1").unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "{e}");
    assert!(s.read("packs/p1").unwrap() == b"pack one");
    // A plain delete only hides it behind a delete marker; the locked version stays.
    s.delete_latest("packs/p1").unwrap();
    assert!(!s.exists("packs/p1").unwrap());
    let versions = s.list_versions("packs/").unwrap();
    assert!(versions.iter().any(|v| v.delete_marker && v.latest), "{versions:?}");
    assert!(versions.iter().any(|v| v.version_id == v1 && !v.delete_marker), "{versions:?}");
    let e = s.delete_version("packs/p1", &v1).unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "{e}");
    assert_eq!(s.retention("packs/p1", Some(&v1)).unwrap().map(|r| r.until), Some(r.until));

    // A version without retention goes for good, and so does a delete marker.
    s.put("packs/p2", b"pack two", true).unwrap();
    let v2 = s.list_versions("packs/p2").unwrap()[0].version_id.clone();
    s.delete_version("packs/p2", &v2).unwrap();
    assert!(s.list_versions("packs/p2").unwrap().is_empty());
    let marker = s.list_versions("packs/p1").unwrap().into_iter().find(|v| v.delete_marker).unwrap();
    s.delete_version("packs/p1", &marker.version_id).unwrap();
    assert!(s.read("packs/p1").unwrap() == b"pack one", "the locked version is current again");

    // Under a default retention, every new version is locked without asking.
    s.set_default_retention(Some((RetentionMode::Compliance, RetentionPeriod::Days(1)))).unwrap();
    s.put("packs/p3", b"pack three", true).unwrap();
    let v3 = s.list_versions("packs/p3").unwrap()[0].version_id.clone();
    let r3 = s.retention("packs/p3", Some(&v3)).unwrap().expect("the default retention");
    assert_eq!(r3.mode, RetentionMode::Compliance);
    assert!(r3.until > now + day - Duration::from_secs(60), "{r3:?}");
    let e = s.delete_version("packs/p3", &v3).unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "{e}");
}

fn blocks(seed: u64, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| random_bytes(BS, seed << 32 | i as u64)).collect()
}

#[test]
fn a_repository_in_packs_lives_in_a_bucket() {
    let Some(mut server) = S3Server::start() else { return };
    set_cache_dir();
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path());
    let bucket = unique("repo");
    let at: Location =
        format!("{}&credentials-file={}", server.location(&bucket, "backups"), file.display()).parse().unwrap();
    let packs = InitOptions { pack_size: Some(1 << 20), ..Default::default() };

    let e = Repository::init(&at, &packs).err().expect("no bucket yet");
    assert!(e.to_string().contains(&format!("there is no bucket {bucket}")), "{e}");
    storage(&server, &bucket, "").create_bucket(false).unwrap();
    let loose = InitOptions { layout: Layout::Loose, ..Default::default() };
    let e = Repository::init(&at, &loose).err().expect("one file per chunk needs a directory");
    assert!(e.to_string().contains("local directory"), "{e}");
    assert!(names(&storage(&server, &bucket, ""), "").is_empty(), "a refused init writes nothing");

    let repo = Repository::init(&at, &packs).unwrap();
    let a = blocks(1, 100);
    let m1 = backup(&repo, "a", &a);
    let packs_written = repo.storage().list("data/").unwrap().len();
    assert!((6..=8).contains(&packs_written), "{packs_written} packs for 100 blocks");
    // Another handle (another process) finds every chunk and stores nothing again.
    let other = Repository::open(&at, None).unwrap();
    let m2 = backup(&other, "a", &a);
    assert_eq!(other.storage().list("data/").unwrap().len(), packs_written);
    assert_restores(&other, &m1, &a);
    assert_restores(&repo, &m2, &a);
    let report = verify(&other, Selection::All, 2, &|_| {}).unwrap();
    assert!(report.ok && report.chunks_checked == 100, "{report:?}");

    // Forgetting and collecting frees the bucket.
    other.delete_point(&m1.id).unwrap();
    let gc = collect_garbage(&other, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 0, "m2 holds every chunk: {gc:?}");
    other.delete_point(&m2.id).unwrap();
    let gc = collect_garbage(&other, Duration::ZERO).unwrap();
    assert_eq!(gc.deleted_chunks, 100, "{gc:?}");
    assert_eq!(other.storage().list("data/").unwrap().len(), 0, "{gc:?}");

    // The server dies in the middle of a backup: the backup fails, naming the storage; once it
    // is back, the next backup of the same data succeeds, beside what was there.
    let kept = backup(&repo, "kept", &a[..30]);
    let b = blocks(2, 60);
    let mut w = repo.begin_point(spec("b", b.len(), None)).unwrap();
    write_blocks(&repo, &mut w, &b[..20]).unwrap();
    server.kill();
    let failed = write_blocks(&repo, &mut w, &b[20..]).and_then(|_| w.commit(PointStats::default()).map(drop));
    let e = failed.expect_err("a backup into a dead server");
    assert!(e.to_string().contains(&server.endpoint()), "{e}");
    server.restart();
    let again = Repository::open(&at, None).unwrap();
    let m3 = backup(&again, "b", &b);
    assert_restores(&again, &m3, &b);
    assert_restores(&again, &kept, &a[..30]);
    let m4 = backup(&repo, "b", &b);
    assert_restores(&repo, &m4, &b);
    assert!(verify(&again, Selection::All, 2, &|_| {}).unwrap().ok);
    let e = Repository::open(&at, None).map(drop);
    assert!(e.is_ok(), "{e:?}");
}

#[test]
fn an_immutable_repository_locks_its_points_in_the_bucket() {
    let Some(server) = S3Server::start() else { return };
    set_cache_dir();
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path());
    let at = |bucket: &str| -> Location {
        format!("{}&credentials-file={}", server.location(bucket, "backups"), file.display()).parse().unwrap()
    };
    let immutable = InitOptions { pack_size: Some(1 << 20), immutable_days: Some(1), ..Default::default() };

    // A bucket without Object Lock, or one that would lock every object by default, is refused
    // and left as it was.
    let plain = unique("plain");
    storage(&server, &plain, "").create_bucket(false).unwrap();
    let e = Repository::init(at(&plain), &immutable).err().expect("no Object Lock");
    assert!(e.to_string().contains(&format!("bucket {plain} has no Object Lock")), "{e}");
    assert!(names(&storage(&server, &plain, ""), "").is_empty());
    let bucket = unique("locked");
    let root = storage(&server, &bucket, "");
    root.create_bucket(true).unwrap();
    root.set_default_retention(Some((RetentionMode::Compliance, RetentionPeriod::Days(1)))).unwrap();
    let e = Repository::init(at(&bucket), &immutable).err().expect("a default retention");
    assert!(e.to_string().contains("default retention"), "{e}");
    assert!(names(&root, "").is_empty());
    root.set_default_retention(None).unwrap();

    let repo = Repository::init(at(&bucket), &immutable).unwrap();
    let s = storage(&server, &bucket, "backups");
    let day = chrono::Duration::days(1);
    let retention = |key: &str| -> chrono::DateTime<chrono::Utc> {
        let r = s.retention(key, None).unwrap().unwrap_or_else(|| panic!("{key} is not locked"));
        assert_eq!(r.mode, RetentionMode::Compliance, "{key}");
        r.until.into()
    };
    for key in ["config", "config.copy"] {
        assert!(retention(key) > chrono::Utc::now() + day, "{key}");
    }

    // Every object the point needs is locked until at least its time plus the period.
    let a = blocks(1, 40);
    let m1 = backup(&repo, "a", &a);
    let needed = m1.created + day;
    let packs: Vec<String> = names(&s, "data/").into_iter().map(|n| format!("data/{n}")).collect();
    let index: Vec<String> = names(&s, "index/").into_iter().map(|n| format!("index/{n}")).collect();
    assert!(packs.len() >= 2 && !index.is_empty(), "{packs:?} {index:?}");
    let mut point_objects = packs.clone();
    point_objects.extend(index.iter().cloned());
    point_objects.extend([m1.id.index_key(), m1.id.manifest_key()]);
    let dates: Vec<_> = point_objects.iter().map(|k| retention(k)).collect();
    for (k, until) in point_objects.iter().zip(&dates) {
        assert!(*until >= needed - chrono::Duration::seconds(1), "{k} locked until {until}, needed {needed}");
    }

    // The server holds the locks: no version deleted, no lock shortened, whoever asks.
    let version = s.list_versions(&packs[0]).unwrap().into_iter().find(|v| v.name.is_empty()).unwrap().version_id;
    let e = s.delete_version(&packs[0], &version).unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "{e}");
    let e = s.put_retention(&packs[0], None, RetentionMode::Compliance, SystemTime::now() + Duration::from_secs(60));
    assert!(ObjectLocked::find(&e.unwrap_err()).is_some());
    let e = repo.storage().delete(&m1.id.manifest_key()).unwrap_err();
    assert!(ObjectLocked::find(&e).is_some(), "{e}");

    // A second backup reusing those packs does not lock them again (they hold a generation
    // more than the period), and its own are locked.
    let b = blocks(2, 10);
    let both: Vec<Vec<u8>> = a.iter().chain(&b).cloned().collect();
    let m2 = backup(&Repository::open(at(&bucket), None).unwrap(), "a", &both);
    for (k, before) in point_objects.iter().zip(&dates) {
        assert_eq!(retention(k), *before, "{k} was locked again");
    }
    assert!(retention(&m2.id.manifest_key()) >= m2.created + day - chrono::Duration::seconds(1));

    // A forget is refused with the date; a collection keeps everything.
    let e = repo.delete_point(&m1.id).unwrap_err();
    assert!(e.to_string().contains("immutable until"), "{e}");
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    assert_eq!((gc.deleted_chunks, gc.deleted_packs), (0, 0), "{gc:?}");

    // Someone with the writer's credentials deletes a manifest and a pack the plain way: both
    // only go behind delete markers, and the next collection brings them back.
    s.delete_latest(&m1.id.manifest_key()).unwrap();
    s.delete_latest(&packs[0]).unwrap();
    assert_eq!(repo.catalog().unwrap().points.len(), 1);
    let gc = collect_garbage(&repo, Duration::ZERO).unwrap();
    let mut restored = gc.restored_objects.clone();
    restored.sort();
    let mut expected = vec![m1.id.manifest_key(), packs[0].clone()];
    expected.sort();
    assert_eq!(restored, expected, "{gc:?}");
    assert_eq!(repo.catalog().unwrap().points.len(), 2);
    let fresh = Repository::open(at(&bucket), None).unwrap();
    assert_restores(&fresh, &m1, &a);
    assert_restores(&fresh, &m2, &both);
    assert!(verify(&fresh, Selection::All, 2, &|_| {}).unwrap().ok);

    // A backup that died leaves packs that are not locked and an upload in parts never
    // finished; one of its packs locked by hand stands for a lock the collection must respect.
    let committed: Vec<String> = names(&s, "data/").into_iter().map(|n| format!("data/{n}")).collect();
    let c = blocks(3, 40);
    let mut w = repo.begin_point(spec("c", c.len(), None)).unwrap();
    write_blocks(&repo, &mut w, &c).unwrap();
    drop(w);
    // (Parts of 5 MiB, so 12 MiB start an upload in parts; a pack goes up whole.)
    let small_parts = S3Options { part_size: 5 << 20, ..Default::default() };
    let writer = storage_with(&server, &bucket, "backups", Credentials::new(KEY, SECRET, None), small_parts);
    let mut staged = writer.create("data/ff/unfinished").unwrap();
    staged.write_all(&random_bytes(12 << 20, 9)).unwrap();
    std::mem::forget(staged);
    assert_eq!(s.incomplete_uploads("").unwrap().len(), 1);
    let dead: Vec<String> =
        names(&s, "data/").into_iter().map(|n| format!("data/{n}")).filter(|k| !committed.contains(k)).collect();
    assert!(!dead.is_empty());
    let held = SystemTime::now() + Duration::from_secs(3600);
    s.put_retention(&dead[0], None, RetentionMode::Compliance, held).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let gc = collect_garbage(&Repository::open(at(&bucket), None).unwrap(), Duration::ZERO).unwrap();
    assert_eq!(gc.aborted_uploads, 1, "{gc:?}");
    assert!(s.incomplete_uploads("").unwrap().is_empty());
    assert!(gc.locked_kept >= 1, "{gc:?}");
    let until = gc.locked_until.as_deref().expect("the date the locked pack waits for");
    // (Index objects rewritten by the collection wait too, a generation longer.)
    let until: chrono::DateTime<chrono::Utc> = until.parse().unwrap();
    assert!(until >= chrono::DateTime::<chrono::Utc>::from(held) - chrono::Duration::seconds(1), "{until}");
    let left: Vec<String> = names(&s, "data/").into_iter().map(|n| format!("data/{n}")).collect();
    assert!(left.contains(&dead[0]), "the locked pack stays");
    assert!(dead[1..].iter().all(|k| !left.contains(k)), "the dead backup's other packs go: {left:?}");
    assert!(committed.iter().all(|k| left.contains(k)));
    assert_restores(&fresh, &m1, &a);
    assert_restores(&fresh, &m2, &both);

    // Nothing is left behind the repository's back: no delete marker, and no object with a
    // version besides its current one but the locked ones overwritten by nobody.
    let versions = s.list_versions("").unwrap();
    assert!(versions.iter().all(|v| !v.delete_marker), "{versions:?}");
    for v in &versions {
        assert_eq!(versions.iter().filter(|o| o.name == v.name).count(), 1, "{}: {versions:?}", v.name);
    }
}

#[test]
fn a_pack_altered_on_the_server_is_named_by_verify_and_healed_by_the_next_backup() {
    let Some(server) = S3Server::start() else { return };
    set_cache_dir();
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path());
    let bucket = unique("damage");
    storage(&server, &bucket, "").create_bucket(false).unwrap();
    let at: Location =
        format!("{}&credentials-file={}", server.location(&bucket, "r"), file.display()).parse().unwrap();
    let repo = Repository::init(&at, &InitOptions { pack_size: Some(1 << 20), ..Default::default() }).unwrap();
    let data = blocks(4, 40);
    let m = backup(&repo, "d", &data);
    let victim = repo.codec(Compression::None).digest(&data[17]);
    let copies = repo.chunk_copies(&victim).unwrap();
    assert_eq!(copies.len(), 1);
    let (key, offset, _) = copies[0].clone();

    // One byte of the chunk flipped on the server. SeaweedFS may serve an overwritten object's
    // old bytes for a moment: the check waits until it serves the new ones, steadily.
    let s = storage(&server, &bucket, "r");
    let mut bytes = s.read(&key).unwrap();
    bytes[offset as usize + 100] ^= 0x40;
    s.put(&key, &bytes, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut steady = 0;
    while steady < 5 {
        assert!(Instant::now() < deadline, "the server kept serving the old bytes of {key}");
        let mut range = Vec::new();
        s.read_range(&key, offset, 200, &mut range).unwrap();
        steady = if s.read(&key).unwrap() == bytes && range[..] == bytes[offset as usize..offset as usize + 200] {
            steady + 1
        } else {
            0
        };
        std::thread::sleep(Duration::from_millis(200));
    }

    let fresh = Repository::open(&at, None).unwrap();
    let report = verify(&fresh, Selection::All, 2, &|_| {}).unwrap();
    assert!(!report.ok, "{report:?}");
    let point = report.points.iter().find(|p| p.point == m.id.as_str()).expect("the point is named");
    let ranges = &point.damaged_ranges;
    assert_eq!((ranges.len(), ranges[0].first_block, ranges[0].last_block), (1, 17, 17), "{report:?}");
    // The next backup does not build on the damaged copy: it stores the chunk again.
    let again = Repository::open(&at, None).unwrap();
    let healed = backup(&again, "d", &data);
    assert_restores(&again, &healed, &data);
    assert_restores(&again, &m, &data);
    assert!(verify(&again, Selection::All, 2, &|_| {}).unwrap().ok);
}
