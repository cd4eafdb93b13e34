//! Application-aware processing of PostgreSQL 15, with a real server: its data directory on an
//! ext4 filesystem inside an image file on XFS (so the reflink snapshot applies, freezing the
//! ext4 for the instant of the clone), rows inserted continuously while `bulwark backup --app
//! postgres:…` runs. The agent connects over the server's socket by peer authentication (as
//! the `postgres` OS user, though it runs as root), checkpoints, and the point is
//! application-consistent; the restored image starts as a PostgreSQL server of its own, which
//! recovers, holds every row committed before the backup began, and passes `pg_amcheck` and
//! `pg_checksums`. Faults: a wrong password, a server that is down, each under both policies
//! (require: the backup fails and writes nothing; ignore: a point with a warning and exit 3);
//! the filesystem is writable after every one of them (the thaw always happens). Managed: a
//! job with the application (its password a sealed secret), pre-freeze and post-thaw scripts,
//! run through the server, a transport node and an agent; a viewer sees neither the scripts
//! nor their output.

mod applab;
mod cluster;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use applab::{must, Disk, Mounted};
use common::*;
use serde_json::Value;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Root, and PostgreSQL 15 installed: else the test says why and passes (as the other tests
/// needing root do); CI has both.
fn available() -> bool {
    if !bulwark_testkit::is_root() || !Path::new(BIN).join("postgres").exists() {
        // CI installs PostgreSQL and says so: there a missing server is a failure.
        assert!(std::env::var_os("BULWARK_REQUIRE_POSTGRES").is_none(), "needs root and PostgreSQL 15 ({BIN})");
        eprintln!("skipped: needs root and PostgreSQL 15 ({BIN})");
        return false;
    }
    true
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    c
}

/// A PostgreSQL server on a data directory, with its socket in a directory of its own.
struct Pg {
    data: PathBuf,
    socket: PathBuf,
    port: u16,
}

impl Pg {
    fn start(data: &Path, socket: &Path, port: u16) -> Pg {
        std::fs::create_dir_all(socket).unwrap();
        must(Command::new("chown").arg("postgres:postgres").arg(socket));
        let opts = format!("-k {} -p {port} -c listen_addresses=''", socket.display());
        let log = socket.join("server.log");
        let out = as_postgres("pg_ctl")
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .unwrap();
        let says = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "PostgreSQL did not start on {}:\n{says}", data.display());
        Pg { data: data.into(), socket: socket.into(), port }
    }
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = as_postgres("psql")
            .arg("-h")
            .arg(&self.socket)
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-XAtqc", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into())
        }
    }
    fn app(&self, extra: &str) -> String {
        format!("postgres:host={},port={}{extra}", self.socket.display(), self.port)
    }
    fn stop(&self) {
        must(as_postgres("pg_ctl").arg("-D").arg(&self.data).args(["-w", "-m", "fast", "stop"]));
    }
}

/// The set-up both tests share: XFS, an ext4 image on it with a fresh cluster, the server
/// running, a repository.
struct Lab {
    pg: Pg,
    disk: Disk,
}

impl std::ops::Deref for Lab {
    type Target = Disk;
    fn deref(&self) -> &Disk {
        &self.disk
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A test that failed half way leaves its server running on the filesystem.
        let _ = as_postgres("pg_ctl").arg("-D").arg(&self.pg.data).args(["-w", "-m", "immediate", "stop"]).output();
    }
}

impl Lab {
    fn new(port: u16) -> Lab {
        let disk = Disk::new("pg.img", 320 << 20);
        let data = disk.ext4.path().join("data");
        std::fs::create_dir(&data).unwrap();
        must(Command::new("chown").arg("postgres:postgres").arg(&data));
        must(as_postgres("initdb").arg("-D").arg(&data).args(["--data-checksums", "-A", "peer", "-U", "postgres"]));
        // The superuser by peer authentication; every other user by password.
        std::fs::write(data.join("pg_hba.conf"), "local all postgres peer\nlocal all all scram-sha-256\n").unwrap();
        let pg = Pg::start(&data, &disk.path("sock"), port);
        pg.psql("CREATE TABLE rows (id bigserial PRIMARY KEY, v int NOT NULL, pad text)").unwrap();
        pg.psql("CREATE ROLE backup LOGIN PASSWORD 'right-password' IN ROLE pg_checkpoint").unwrap();
        Lab { pg, disk }
    }
}

/// A server stopped when the test ends however it ends.
struct Stopped(Pg);

impl std::ops::Deref for Stopped {
    type Target = Pg;
    fn deref(&self) -> &Pg {
        &self.0
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl").arg("-D").arg(&self.0.data).args(["-w", "-m", "fast", "stop"]).output();
    }
}

/// Inserts rows in small transactions until stopped; counts the rows committed.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(pg: &Pg) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (socket, port) = (pg.socket.clone(), pg.port);
        let (s, c) = (stop.clone(), committed.clone());
        let thread = std::thread::spawn(move || {
            let pg = Pg { data: PathBuf::new(), socket, port };
            while !s.load(Ordering::Relaxed) {
                let sql = "INSERT INTO rows (v, pad) SELECT g, repeat('x', 200) FROM generate_series(1, 200) g";
                if pg.psql(sql).is_ok() {
                    c.fetch_add(200, Ordering::SeqCst);
                }
            }
        });
        Writer { stop, committed, thread: Some(thread) }
    }
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.committed()
    }
}

fn assert_passed(tool: &str, out: &std::process::Output) {
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool}: {said}");
}

#[test]
fn a_postgres_volume_restores_to_a_server_that_recovers_every_committed_row() {
    if !available() {
        return;
    }
    let lab = Lab::new(55431);
    let writer = Writer::start(&lab.pg);
    while writer.committed() < 20_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = writer.committed();
    let r = lab.backup(&["--app", &lab.pg.app("")]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let after = writer.stop();
    assert!(after > before, "the writer did not write during the backup");
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "application-consistent", "{report:#}");
    let app = &report["applications"][0];
    assert_eq!(app["app"], "postgres", "{report:#}");
    assert_eq!(app["action"], "checkpoint", "{report:#}");
    assert!(app["server"].as_str().unwrap().starts_with("PostgreSQL 15"), "{report:#}");
    assert!(app["details"]["checkpoint_lsn"].as_str().unwrap().contains('/'), "{report:#}");
    let frozen = report["freeze_seconds"].as_f64().unwrap();
    assert!(frozen > 0.0 && frozen < 60.0, "{report:#}");
    // The point says so too.
    let points = lab.points();
    assert_eq!(points[0]["consistency"], "application-consistent", "{points:#?}");
    lab.pg.stop();

    // Restored, the image is a data directory a server starts on and recovers.
    let restored = lab.path("restored.img");
    ok(bulwark()
        .arg("restore")
        .arg(report["point"].as_str().unwrap())
        .arg("--repo")
        .arg(lab.path("repo"))
        .arg("--to")
        .arg(&restored));
    let mounted = Mounted::new(&restored, &lab.path("restored"));
    let mnt = mounted.at.clone();
    // The lock file names the live server's pid, which on this machine may still be a zombie
    // (the test's processes are not reaped by an init): on another machine, as a real restore
    // would be, it names nobody.
    std::fs::remove_file(mnt.join("data/postmaster.pid")).unwrap();
    let copy = Pg::start(&mnt.join("data"), &lab.path("sock-restored"), 55432);
    let copy = Stopped(copy);
    let rows: u64 = copy.psql("SELECT count(*) FROM rows").unwrap().parse().unwrap();
    let checked = as_postgres("pg_amcheck")
        .arg("-h")
        .arg(&copy.socket)
        .args(["-p", "55432", "-d", "postgres", "--install-missing", "--heapallindexed"])
        .output()
        .unwrap();
    drop(copy);
    let sums = as_postgres("pg_checksums").arg("--check").arg("-D").arg(mnt.join("data")).output().unwrap();
    let log = std::fs::read_to_string(lab.path("sock-restored/server.log")).unwrap_or_default();
    drop(mounted);
    assert!(rows >= before, "{rows} rows restored, {before} committed before the backup began\n{log}");
    assert!(rows <= after, "{rows} rows restored, only {after} ever committed");
    assert!(log.contains("database system was not properly shut down") || log.contains("redo"), "{log}");
    assert_passed("pg_amcheck", &checked);
    assert_passed("pg_checksums", &sums);
}

#[test]
fn a_live_file_level_copy_in_backup_mode_restores_to_a_server_that_recovers_on_its_own() {
    if !available() {
        return;
    }
    let lab = Lab::new(55434);
    // The directory backed up holds the data directory one level down, and a file of its own.
    let source = lab.ext4.path().to_path_buf();
    std::fs::write(source.join("notes.txt"), "beside the cluster\n").unwrap();
    let file_backup = |extra: &[&str]| {
        run(bulwark()
            .arg("backup")
            .arg(&source)
            .arg("--repo")
            .arg(lab.path("repo"))
            .args(["--name", "pgfiles", "--snapshot", "none", "--json"])
            .args(extra))
    };
    let writer = Writer::start(&lab.pg);
    while writer.committed() < 20_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    // WAL segments switched during the copy too: the restored server needs the ones written
    // between the backup's start and its end, which the copy of pg_wal alone would miss.
    let switcher = {
        let pg = Pg { data: PathBuf::new(), socket: lab.pg.socket.clone(), port: lab.pg.port };
        std::thread::spawn(move || {
            // A few: the filesystem is small, and the backup's slot keeps every segment.
            for _ in 0..5 {
                let _ = pg.psql("SELECT pg_switch_wal()");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let before = writer.committed();
    let r = file_backup(&["--app", &lab.pg.app("")]);
    switcher.join().unwrap();
    let after = writer.stop();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "application-consistent", "{report:#}");
    let app = &report["applications"][0];
    assert_eq!(app["action"], "backup mode (pg_backup_start to pg_backup_stop)", "{report:#}");
    for k in ["start_lsn", "stop_lsn", "wal_segments"] {
        assert!(app["details"][k].is_string(), "{k}: {report:#}");
    }
    assert!(app["details"]["wal_reserved_by"].as_str().unwrap().starts_with("temporary replication slot"));
    // The slot went with the session.
    let slots = lab.pg.psql("SELECT count(*) FROM pg_replication_slots");
    let says = std::fs::read_to_string(lab.path("sock/server.log")).unwrap_or_default();
    assert_eq!(slots.as_deref(), Ok("0"), "{says}\n{}", r.stderr);
    assert_eq!(lab.points()[0]["consistency"], "application-consistent");

    lab.pg.stop();
    let to = lab.path("restored");
    ok(bulwark()
        .arg("restore")
        .arg(report["point"].as_str().unwrap())
        .arg("--repo")
        .arg(lab.path("repo"))
        .arg("--to")
        .arg(&to));
    let data = to.join("data");
    assert_eq!(std::fs::read_to_string(to.join("notes.txt")).unwrap(), "beside the cluster\n");
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(label.contains("LABEL: bulwark") && label.contains("BACKUP METHOD: streamed"), "{label}");
    assert!(!data.join("postmaster.pid").exists(), "the live server's lock file was copied");
    let wal: Vec<String> = std::fs::read_dir(data.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    assert!(wal.len() >= 2, "{wal:?}");
    must(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&data));
    let copy = Stopped(Pg::start(&data, &lab.path("sock-files"), 55435));
    let rows: u64 = copy.psql("SELECT count(*) FROM rows").unwrap().parse().unwrap();
    let checked = as_postgres("pg_amcheck")
        .arg("-h")
        .arg(&copy.socket)
        .args(["-p", "55435", "-d", "postgres", "--install-missing", "--heapallindexed"])
        .output()
        .unwrap();
    drop(copy);
    let log = std::fs::read_to_string(lab.path("sock-files/server.log")).unwrap_or_default();
    let sums = as_postgres("pg_checksums").arg("--check").arg("-D").arg(&data).output().unwrap();
    assert!(rows >= before, "{rows} rows restored, {before} committed before the backup began\n{log}");
    assert!(rows <= after, "{rows} rows restored, only {after} ever committed");
    assert!(log.contains("starting backup recovery") || log.contains("backup_label"), "{log}");
    assert!(log.contains("consistent recovery state reached"), "{log}");
    assert_passed("pg_amcheck", &checked);
    assert_passed("pg_checksums", &sums);
}

#[test]
fn a_data_directory_outside_the_directory_backed_up_is_refused_or_left_by_policy() {
    if !available() {
        return;
    }
    let lab = Lab::new(55436);
    let elsewhere = lab.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("f"), "x").unwrap();
    let backup = |extra: &[&str]| {
        run(bulwark()
            .arg("backup")
            .arg(&elsewhere)
            .arg("--repo")
            .arg(lab.path("repo"))
            .args([
                "--name",
                "other",
                "--snapshot",
                "none",
                "--snapshot-tries",
                "1",
                "--json",
                "--app",
                &lab.pg.app(""),
            ])
            .args(extra))
    };
    let r = backup(&[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("is not inside the directory backed up"), "{}", r.stderr);
    assert!(lab.points().is_empty());
    // Under ignore the files are backed up, and the point says it is not consistent.
    let r = backup(&["--app-policy", "ignore"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "crash-inconsistent", "{report:#}");
    assert_eq!(lab.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name = 'bulwark'").unwrap(), "0");
    assert_eq!(lab.points().len(), 1);
}

#[test]
fn wrong_password_or_server_down_fail_or_warn_by_policy_and_always_thaw() {
    if !available() {
        return;
    }
    let lab = Lab::new(55433);
    let wrong = lab.path("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let right = lab.path("right");
    std::fs::write(&right, "right-password\n").unwrap();
    let bad = lab.pg.app(&format!(",user=backup,password-file={}", wrong.display()));

    // require: every try fails, the backup fails naming why, no point.
    let r = lab.backup(&["--app", &bad, "--snapshot-tries", "2"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("refused user backup") && r.stderr.contains("password authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not-the-password"), "{}", r.stderr);
    assert!(lab.points().is_empty());
    lab.assert_writable();

    // ignore: a point, not application-consistent, with the reason; exit 3.
    let r = lab.backup(&["--app", &bad, "--app-policy", "ignore"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "frozen", "{report:#}");
    assert!(report["warnings"][0].as_str().unwrap().contains("password authentication failed"), "{report:#}");
    assert_eq!(lab.points().len(), 1);
    lab.assert_writable();

    // The password user with the right password: application-consistent.
    let good = lab.pg.app(&format!(",user=backup,password-file={}", right.display()));
    let r = lab.backup(&["--app", &good]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(serde_json::from_str::<Value>(&r.stdout).unwrap()["consistency"], "application-consistent");

    // The server down: named, and the same two outcomes.
    lab.pg.stop();
    let r = lab.backup(&["--app", &lab.pg.app(""), "--snapshot-tries", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot connect to") && r.stderr.contains("is the server running"), "{}", r.stderr);
    assert_eq!(lab.points().len(), 2);
    lab.assert_writable();
    let r = lab.backup(&["--app", &lab.pg.app(""), "--app-policy", "ignore"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(lab.points().len(), 3);
    lab.assert_writable();
}

#[test]
fn a_managed_job_processes_postgres_with_a_sealed_password_and_freeze_scripts() {
    if !available() {
        return;
    }
    use cluster::server::{cli, cli_as, start_node, start_server};
    let lab = Lab::new(55435);
    let server = start_server(&lab.path("server"), None);
    let repos = lab.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let _transport =
        start_node(&server, "transport", "store-1", lab.disk.dir.path(), &["--root", repos.to_str().unwrap()], None);
    let _agent = start_node(&server, "agent", "db-1", lab.disk.dir.path(), &[], None);
    let create = ["repository", "create", "main", "--transport", "store-1", "--path"];
    cli(&server, &[&create[..], &[repos.join("main").to_str().unwrap()]].concat()).unwrap();
    let value = lab.path("pgpass-value");
    std::fs::write(&value, "right-password\n").unwrap();
    cli(&server, &["secret", "set", "pgpass", "--value-file", value.to_str().unwrap()]).unwrap();

    // Refused before anything is stored: a spec with a typo, a password on the command line.
    let job = ["job", "create", "db", "--computer", "db-1", "--repository", "main", "--snapshot", "reflink"];
    let job = [&job[..], &["--source", lab.image.to_str().unwrap(), "--tries", "1"]].concat();
    let e = cli(&server, &[&job[..], &["--app", "postgres:hots=x"]].concat()).unwrap_err();
    assert!(e.contains("unknown setting \"hots\""), "{e}");
    let e = cli(&server, &[&job[..], &["--app", "postgres:password=right-password"]].concat()).unwrap_err();
    assert!(e.contains("not given in the spec") && !e.contains("right-password"), "{e}");
    // Through the API too, without the spec in the answer.
    let http = cluster::server::Http::new(&server);
    let body = serde_json::json!({"name": "db", "computers": ["db-1"], "repository": "main",
        "sources": ["/x"], "apps": ["postgres:password=right-password"]});
    let (st, v) = http.call("POST", "/jobs", Some(&cluster::server::admin_token(&server)), Some(&body.to_string()));
    assert_eq!(st, 422, "{v}");
    assert!(v.to_string().contains("application 1 of the job") && !v.to_string().contains("right-password"), "{v}");
    assert_eq!(cli(&server, &["job", "list"]).unwrap().as_array().unwrap().len(), 0);

    let steps = lab.path("steps");
    let app = lab.pg.app(",user=backup,password-secret=pgpass");
    let pre = format!("echo frozen-by-script; echo freeze >> {}", steps.display());
    let post = format!("echo thaw >> {}", steps.display());
    let extra = ["--app", &app, "--pre-freeze-script", &pre, "--post-thaw-script", &post, "--freeze-limit", "30"];
    cli(&server, &[&job[..], &extra[..]].concat()).unwrap();
    let shown = cli(&server, &["job", "show", "db"]).unwrap();
    assert_eq!(shown["apps"][0], app.as_str(), "{shown:#}");
    assert_eq!(shown["freeze_limit_s"], 30, "{shown:#}");

    let session = cli(&server, &["job", "start", "db", "--wait"]).unwrap();
    assert_eq!(session["status"], "success", "{session:#}");
    assert_eq!(std::fs::read_to_string(&steps).unwrap(), "freeze\nthaw\n");
    let points = cli(&server, &["point", "list"]).unwrap();
    let id = points[0]["id"].as_str().unwrap();
    let point = cli(&server, &["point", "show", id]).unwrap();
    assert_eq!(point["manifest"]["consistency"], "application-consistent", "{point:#}");
    assert_eq!(point["manifest"]["stats"]["applications"][0]["action"], "checkpoint", "{point:#}");
    let text = format!("{session}{point}");
    assert!(!text.contains("right-password"), "the password shows: {text}");

    // A viewer sees the job without its scripts, and the task's log without their output.
    let viewer = cluster::server::viewer_token(&server);
    let seen = cli_as(&server, &viewer, &["job", "show", "db"]).unwrap();
    assert!(!seen.to_string().contains("frozen-by-script") && seen["pre_freeze_script"] == "(hidden)", "{seen:#}");
    let log = cli_as(&server, &viewer, &["session", "show", session["id"].as_str().unwrap()]).unwrap();
    assert!(!log.to_string().contains("frozen-by-script"), "{log:#}");
    let log = cli(&server, &["session", "show", session["id"].as_str().unwrap()]).unwrap();
    assert!(log.to_string().contains("frozen-by-script"), "the admin sees the script's output: {log:#}");

    // The secret gone: the task fails, naming it.
    cli(&server, &["secret", "delete", "pgpass"]).unwrap();
    let e = cli(&server, &["job", "start", "db", "--wait"]).unwrap_err();
    assert!(e.contains("pgpass"), "{e}");
    lab.assert_writable();
}
