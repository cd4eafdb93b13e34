//! Application-aware processing of MariaDB 10.11, with a real server: its data directory (with
//! the binary log) on an ext4 filesystem inside an image file on XFS, so the reflink snapshot
//! applies, and an InnoDB and a MyISAM table taking rows continuously while `bulwark backup
//! --app mysql:socket=…` runs. The agent connects over the server's socket as root by the
//! unix_socket plugin (as Debian sets MariaDB up), holds `BACKUP STAGE BLOCK_COMMIT` through the
//! snapshot and records the binary log position. What the lock guarantees is checked exactly on
//! the restored copy: its binary log ends at the recorded position, and each table holds as many
//! rows as the inserts that log has up to there (nothing committed during the lock, nothing
//! committed before it lost); the server started on it passes CHECK TABLE on every table,
//! without repairing any MyISAM table. Faults: a wrong password, a lock that cannot be had within
//! the freeze limit, a server that is down, under both policies (require: the backup fails and
//! writes nothing; ignore: a point with a warning and exit 3); the filesystem is writable after
//! every one of them (the thaw always happens).

mod applab;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use applab::{must, open_up, Disk, Mounted};
use common::*;
use serde_json::Value;

const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Rows each insert statement adds.
const BATCH: u64 = 10;

/// Root, and MariaDB installed: else the test says why and passes (as the other tests needing
/// root do); CI has both.
fn available() -> bool {
    if !bulwark_testkit::is_root() || !Path::new(MARIADBD).exists() {
        eprintln!("skipped: needs root and MariaDB ({MARIADBD})");
        return false;
    }
    true
}

/// `mariadb` as root (unix_socket authentication) on `socket`, without the machine's settings.
fn client(socket: &Path) -> Command {
    let mut c = Command::new("mariadb");
    c.arg("--no-defaults").arg("-S").arg(socket).args(["-u", "root", "-N", "-B"]);
    c
}

fn sql(socket: &Path, sql: &str) -> Result<String, String> {
    let out = client(socket).arg("-e").arg(sql).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into())
    }
}

/// A MariaDB server run directly on a data directory, its socket, pid file and log in a
/// directory of its own; killed when dropped unless stopped.
struct Maria {
    run: PathBuf,
    child: Option<Child>,
}

impl Maria {
    fn start(data: &Path, run: &Path, extra: &[&str]) -> Maria {
        std::fs::create_dir_all(run).unwrap();
        open_up(run);
        let opt = |k: &str, p: &Path| format!("--{k}={}", p.display());
        let child = Command::new(MARIADBD)
            .arg("--no-defaults")
            .arg(opt("datadir", data))
            .arg(opt("socket", &run.join("mysqld.sock")))
            .arg(opt("pid-file", &run.join("mysqld.pid")))
            .arg(opt("log-error", &run.join("server.log")))
            // Its own temporary tables, apart from the other tests' servers.
            .arg(opt("tmpdir", run))
            .args(["--skip-networking", "--user=root", "--server-id=1"])
            // The binary log in the data directory, so it is on the snapshot; statements, so
            // that its inserts can be counted.
            .args(["--log-bin=mariadb-bin", "--binlog-format=STATEMENT"])
            .args(["--innodb-buffer-pool-size=64M", "--skip-name-resolve"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut m = Maria { run: run.into(), child: Some(child) };
        let started = Instant::now();
        loop {
            if sql(&m.socket(), "SELECT 1").is_ok() {
                return m;
            }
            let exited = m.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || started.elapsed() > Duration::from_secs(60) {
                panic!("MariaDB did not start on {} ({exited:?}):\n{}", data.display(), m.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn socket(&self) -> PathBuf {
        self.run.join("mysqld.sock")
    }
    fn sql(&self, q: &str) -> String {
        sql(&self.socket(), q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("server.log")).unwrap_or_default()
    }
    fn app(&self, extra: &str) -> String {
        format!("mysql:socket={}{extra}", self.socket().display())
    }
    /// A clean shutdown.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        must(Command::new("mariadb-admin").arg("--no-defaults").arg("-S").arg(self.socket()).arg("shutdown"));
        child.wait().unwrap();
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        // A test that failed half way leaves its server running on the filesystem.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The set-up both tests share: XFS, an ext4 image on it with a fresh data directory, the
/// server running with an InnoDB and a MyISAM table, a repository.
struct Lab {
    // Dropped first: the server killed before its filesystem goes.
    db: Maria,
    disk: Disk,
}

impl std::ops::Deref for Lab {
    type Target = Disk;
    fn deref(&self) -> &Disk {
        &self.disk
    }
}

/// A new MariaDB data directory. Its bootstrap server gets a temporary directory of its own:
/// CI once saw one fail because a temporary table it had made in the shared `/tmp` was gone
/// ("Could not remove temporary table", then "Unknown table 'mysql.tmp_user_sys'") while three
/// tests set theirs up at once. Should it fail anyway, what it said is printed and the
/// installation made once more in a clean directory.
fn install_db(data: &Path) {
    let tmp = data.with_file_name("install-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let install = || {
        Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--skip-test-db"])
            .env("TMPDIR", &tmp)
            .output()
            .unwrap()
    };
    let first = install();
    if first.status.success() {
        return;
    }
    eprintln!(
        "mariadb-install-db failed: {}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    std::fs::remove_dir_all(data).unwrap();
    let again = install();
    assert!(again.status.success(), "mariadb-install-db failed twice: {}", String::from_utf8_lossy(&again.stderr));
}

impl Lab {
    fn new() -> Lab {
        let disk = Disk::new("db.img", 512 << 20);
        let data = disk.ext4.path().join("data");
        install_db(&data);
        let db = Maria::start(&data, &disk.path("run"), &[]);
        db.sql(
            "CREATE DATABASE app; \
             CREATE TABLE app.inno (id bigint AUTO_INCREMENT PRIMARY KEY, v int NOT NULL, pad varchar(255)) \
             ENGINE=InnoDB; \
             CREATE TABLE app.myi (id bigint AUTO_INCREMENT PRIMARY KEY, v int NOT NULL, pad varchar(255)) \
             ENGINE=MyISAM; \
             CREATE USER backup@localhost IDENTIFIED BY 'right-password'; \
             GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@localhost",
        );
        Lab { db, disk }
    }
}

/// Inserts rows into both tables, a statement of [`BATCH`] rows into each per round, until
/// stopped; counts the rows committed into each table.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &Maria) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let socket = db.socket();
        let (s, c) = (stop.clone(), committed.clone());
        let thread = std::thread::spawn(move || {
            let rows: Vec<String> = (0..BATCH).map(|i| format!("({i}, repeat('x', 200))")).collect();
            let rows = rows.join(", ");
            let round =
                format!("INSERT INTO app.inno (v, pad) VALUES {rows}; INSERT INTO app.myi (v, pad) VALUES {rows};");
            while !s.load(Ordering::Relaxed) {
                if sql(&socket, &round).is_ok() {
                    c.fetch_add(BATCH, Ordering::SeqCst);
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

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The statements inserting into `table` in the binary log up to `position` of its last file.
fn inserts_logged(data: &Path, files: &[String], position: u64, table: &str) -> u64 {
    let out = must(
        Command::new("mariadb-binlog")
            .arg("--no-defaults")
            .arg(format!("--stop-position={position}"))
            .args(files.iter().map(|f| data.join(f))),
    );
    let start = format!("INSERT INTO app.{table} ");
    out.lines().filter(|l| l.starts_with(&start)).count() as u64
}

#[test]
fn a_mariadb_volume_restores_to_exactly_the_recorded_binary_log_position() {
    restores_to_exactly_the_recorded_position("", "BACKUP STAGE BLOCK_COMMIT");
}

/// The lock MySQL servers get (and MariaDB before 10.4), here on MariaDB by choice: no MySQL
/// server is packaged where the tests run.
#[test]
fn flush_tables_with_read_lock_restores_to_exactly_the_recorded_binary_log_position() {
    restores_to_exactly_the_recorded_position(",lock=flush-tables", "FLUSH TABLES WITH READ LOCK");
}

fn restores_to_exactly_the_recorded_position(spec: &str, lock: &str) {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    let writer = Writer::start(&lab.db);
    while writer.committed() < 3_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = writer.committed();
    let r = lab.backup(&["--app", &lab.db.app(spec)]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let after = writer.stop();
    assert!(after > before, "the writer did not write during the backup");
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "application-consistent", "{report:#}");
    let app = &report["applications"][0];
    assert_eq!(app["app"], "mysql", "{report:#}");
    assert_eq!(app["action"], "read lock", "{report:#}");
    assert!(app["server"].as_str().unwrap().starts_with("MariaDB 10.11"), "{report:#}");
    let details = &app["details"];
    assert_eq!(details["lock"], lock, "{report:#}");
    assert!(details["version"].as_str().unwrap().contains("MariaDB"), "{report:#}");
    let file = details["binlog_file"].as_str().unwrap().to_string();
    assert!(file.starts_with("mariadb-bin."), "{report:#}");
    let position: u64 = details["binlog_position"].as_str().unwrap().parse().unwrap();
    assert!(position > 0, "{report:#}");
    let frozen = report["freeze_seconds"].as_f64().unwrap();
    assert!(frozen > 0.0 && frozen < 60.0, "{report:#}");
    // The point says so too, and keeps the record.
    let points = lab.points();
    assert_eq!(points[0]["consistency"], "application-consistent", "{points:#?}");
    lab.db.stop();

    // Restored, the image is a data directory whose binary log ends where the point says.
    let restored = lab.path("restored.img");
    ok(bulwark()
        .arg("restore")
        .arg(report["point"].as_str().unwrap())
        .arg("--repo")
        .arg(lab.path("repo"))
        .arg("--to")
        .arg(&restored));
    let mounted = Mounted::new(&restored, &lab.path("restored"));
    let data = mounted.at.join("data");
    let index = std::fs::read_to_string(data.join("mariadb-bin.index")).unwrap();
    let files: Vec<String> =
        index.lines().map(|l| l.trim_start_matches("./").to_string()).filter(|l| !l.is_empty()).collect();
    assert_eq!(files.last(), Some(&file), "{index}");
    let logged = std::fs::metadata(data.join(&file)).unwrap().len();
    assert_eq!(logged, position, "the binary log in the copy goes on past the recorded position");
    let inno_logged = BATCH * inserts_logged(&data, &files, position, "inno");
    let myi_logged = BATCH * inserts_logged(&data, &files, position, "myi");

    // It starts (recovering), MyISAM repairs off so that a table needing one shows.
    let copy = Maria::start(&data, &lab.path("run-restored"), &["--myisam-recover-options=OFF"]);
    let inno: u64 = copy.sql("SELECT count(*) FROM app.inno").parse().unwrap();
    let myi: u64 = copy.sql("SELECT count(*) FROM app.myi").parse().unwrap();
    let checked = Command::new("mariadb-check")
        .arg("--no-defaults")
        .arg("-S")
        .arg(copy.socket())
        .args(["--all-databases", "--extended"])
        .output()
        .unwrap();
    let myisam_check = copy.sql("CHECK TABLE app.myi EXTENDED");
    let log = copy.log();
    drop(copy);
    drop(mounted);
    eprintln!(
        "{file}:{position}: {inno} InnoDB and {myi} MyISAM rows restored, {inno_logged} and {myi_logged} logged; \
         {before} committed before the backup, {after} by its end; frozen {frozen:.3} s"
    );
    // Exactly what the lock guarantees: every row committed before it is there, and nothing
    // committed while it was held (the log has none past the position).
    assert_eq!(inno, inno_logged, "InnoDB rows against the inserts logged up to {file}:{position}\n{log}");
    assert_eq!(myi, myi_logged, "MyISAM rows against the inserts logged up to {file}:{position}\n{log}");
    assert!(inno >= before && myi >= before, "{inno}/{myi} rows restored, {before} committed before the backup began");
    assert!(inno <= after && myi <= after, "{inno}/{myi} rows restored, only {after} ever committed");
    let checked_out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "mariadb-check: {checked_out}{}", String::from_utf8_lossy(&checked.stderr));
    let tables: Vec<&str> = checked_out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(tables.iter().any(|l| l.starts_with("app.inno")) && tables.iter().any(|l| l.starts_with("app.myi")));
    for line in &tables {
        // `app.myi    OK`; a warning or error comes on lines of its own.
        assert!(line.split_whitespace().count() == 2 && line.ends_with(" OK"), "CHECK TABLE: {line}\n{checked_out}");
    }
    assert_eq!(myisam_check, "app.myi\tcheck\tstatus\tOK", "the MyISAM table was not closed properly");
    assert!(!log.contains("crashed") && !log.contains("repair"), "{log}");
}

#[test]
fn wrong_password_lock_timeout_or_server_down_fail_or_warn_by_policy_and_always_thaw() {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    let wrong = lab.path("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let right = lab.path("right");
    std::fs::write(&right, "right-password\n").unwrap();
    let bad = lab.db.app(&format!(",user=backup,password-file={}", wrong.display()));

    // require: every try fails, the backup fails naming why, no point.
    let r = lab.backup(&["--app", &bad, "--snapshot-tries", "2"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("refused user backup") && r.stderr.contains("Access denied"), "{}", r.stderr);
    assert!(!r.stderr.contains("not-the-password"), "{}", r.stderr);
    assert!(lab.points().is_empty());
    lab.assert_writable();

    // ignore: a point, not application-consistent, with the reason; exit 3.
    let r = lab.backup(&["--app", &bad, "--app-policy", "ignore"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "frozen", "{report:#}");
    assert!(report["warnings"][0].as_str().unwrap().contains("Access denied"), "{report:#}");
    assert!(!r.stdout.contains("not-the-password") && !r.stderr.contains("not-the-password"));
    assert_eq!(lab.points().len(), 1);
    lab.assert_writable();

    // The password user with the right password: application-consistent.
    let good = lab.db.app(&format!(",user=backup,password-file={}", right.display()));
    let r = lab.backup(&["--app", &good]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "application-consistent", "{report:#}");
    assert!(report["applications"][0]["details"]["binlog_position"].is_string(), "{report:#}");
    assert_eq!(lab.points().len(), 2);

    // A user of unix_socket authentication other than root: the agent connects as that OS user.
    let os_user_known = Command::new("id").arg("mysql").output().unwrap().status.success();
    if os_user_known {
        lab.db.sql("CREATE USER mysql@localhost IDENTIFIED VIA unix_socket; GRANT RELOAD, BINLOG MONITOR ON *.* TO mysql@localhost");
        let r = lab.backup(&["--app", &lab.db.app(",user=mysql")]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let report: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(report["consistency"], "application-consistent", "{report:#}");
        assert_eq!(lab.points().len(), 3);
    }
    let mut points = lab.points().len();

    // A statement writing to a MyISAM table for longer than the freeze may last: the lock is
    // not had within the limit, and the try fails instead of waiting for it.
    let mut long = client(&lab.db.socket())
        .arg("-e")
        .arg("INSERT INTO app.myi (v) SELECT SLEEP(20)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let r = lab.backup(&["--app", &lab.db.app(""), "--freeze-limit", "2", "--snapshot-tries", "1"]);
    let took = started.elapsed();
    let _ = long.kill();
    let _ = long.wait();
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Lock wait timeout exceeded") && r.stderr.contains("BACKUP STAGE"), "{}", r.stderr);
    assert!(took < Duration::from_secs(15), "the backup waited {took:?} for the lock");
    assert_eq!(lab.points().len(), points);
    lab.assert_writable();

    // The server down: named, and the same two outcomes.
    lab.db.stop();
    let r = lab.backup(&["--app", &lab.db.app(""), "--snapshot-tries", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot connect to") && r.stderr.contains("is the server running"), "{}", r.stderr);
    assert_eq!(lab.points().len(), points);
    lab.assert_writable();
    let r = lab.backup(&["--app", &lab.db.app(""), "--app-policy", "ignore"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "frozen", "{report:#}");
    assert!(report["warnings"][0].as_str().unwrap().contains("cannot connect to"), "{report:#}");
    points += 1;
    assert_eq!(lab.points().len(), points);
    lab.assert_writable();

    // Started again without the binary log: the lock all the same, and the record says so.
    lab.db = Maria::start(&lab.ext4.path().join("data"), &lab.path("run"), &["--skip-log-bin"]);
    let r = lab.backup(&["--app", &lab.db.app("")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["consistency"], "application-consistent", "{report:#}");
    let details = &report["applications"][0]["details"];
    assert_eq!(details["binlog"], "binary logging off", "{report:#}");
    assert!(details.get("binlog_position").is_none(), "{report:#}");
}
