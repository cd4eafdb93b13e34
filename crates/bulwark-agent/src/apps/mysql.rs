//! MySQL and MariaDB: a read lock held in one session from right before the snapshot of the
//! volume holding the data directory to right after it, and the binary log position at which
//! the data was held, recorded in the point (where a point-in-time recovery from the binary log
//! would start).
//!
//! MariaDB 10.4 and later: `BACKUP STAGE START`, `FLUSH`, `BLOCK_DDL`, `BLOCK_COMMIT` (what
//! mariabackup does: MyISAM and Aria tables flushed and closed, no commit to any table and no
//! write to the binary log until `BACKUP STAGE END`). MySQL (and older MariaDB):
//! `FLUSH TABLES WITH READ LOCK` until `UNLOCK TABLES`. Every wait for a lock is bounded by the
//! freeze limit (`lock_wait_timeout`), so a long query or transaction in the way fails the try
//! instead of holding the server's writers for ever.
//!
//! Authentication, as an administrator sets it up: a password file named in the spec, or none:
//! over the Unix socket the `unix_socket` plugin then knows the connecting OS user, which is the
//! agent's (root, as Debian's MariaDB sets `root@localhost` up) or, for another `user=`, the OS
//! user of that name, which the agent can connect as, being root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow, MySqlSslMode};
use sqlx::{Connection, Executor, Row};

use super::{as_os_user, os_uid, AppSpec, ApplicationRecord, Prepared, Released};
use bulwark_proto::apps::MysqlLock;

const DEFAULT_SOCKET: &str = "/run/mysqld/mysqld.sock";
const DEFAULT_PORT: u16 = 3306;
const DEFAULT_USER: &str = "root";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A session holding its lock from the preparation to the release.
struct Session {
    // Dropped first: the connection closing releases whatever it still holds.
    conn: MySqlConnection,
    rt: tokio::runtime::Runtime,
    target: Target,
    /// How long one statement may take (the server is told a little less).
    timeout: Duration,
    /// What ends the lock: `BACKUP STAGE END` or `UNLOCK TABLES`.
    unlock: &'static str,
    locked: Instant,
    record: ApplicationRecord,
}

/// What the server is, from `SELECT VERSION()`.
struct Server {
    mariadb: bool,
    /// Major, minor.
    release: (u32, u32),
}

impl Server {
    fn of(version: &str) -> Server {
        let mut nums = version.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse().unwrap_or(0));
        let release = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        Server { mariadb: version.contains("MariaDB"), release }
    }
    fn product(&self) -> &'static str {
        if self.mariadb {
            "MariaDB"
        } else {
            "MySQL"
        }
    }
    /// MariaDB 10.4 brought `BACKUP STAGE`.
    fn backup_stages(&self) -> bool {
        self.mariadb && self.release >= (10, 4)
    }
    /// MySQL 8.4 dropped `SHOW MASTER STATUS` for `SHOW BINARY LOG STATUS`.
    fn binlog_status(&self) -> &'static str {
        if !self.mariadb && self.release >= (8, 4) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }
}

pub(super) fn prepare(
    spec: &AppSpec,
    password: Option<String>,
    limit: Duration,
    log: &mut dyn FnMut(String),
) -> Result<Box<dyn Prepared>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("mysql: cannot start a runtime: {e}"))?;
    let target = Target::of(spec);
    let conn = connect(&rt, password, &target)?;
    // The server gives up waiting for a lock at the freeze limit; the client a little later (a
    // server that no longer answers).
    let wait = limit.as_secs().max(1);
    let mut s = Session {
        conn,
        rt,
        timeout: Duration::from_secs(wait + 5),
        target,
        unlock: "",
        locked: Instant::now(),
        record: ApplicationRecord {
            app: "mysql".into(),
            server: String::new(),
            action: "read lock".into(),
            details: Default::default(),
        },
    };
    let version: String = s.query_one("SELECT VERSION()")?.try_get(0).map_err(|e| s.failed("SELECT VERSION()", &e))?;
    let server = Server::of(&version);
    s.record.server = format!("{} {} at {}", server.product(), short(&version), s.target);
    s.record.details.insert("version".into(), version.clone());
    log(format!("mysql: connected to {} as {}", s.record.server, s.target.user));
    s.execute(&format!("SET SESSION lock_wait_timeout = {wait}"))?;

    let stages = match spec.lock {
        None => server.backup_stages(),
        Some(MysqlLock::FlushTables) => false,
        Some(MysqlLock::BackupStage) if server.backup_stages() => true,
        Some(MysqlLock::BackupStage) => {
            return Err(format!(
                "mysql: {} has no BACKUP STAGE (MariaDB 10.4 and later have): use lock=flush-tables",
                s.record.server
            ))
        }
    };
    let started = Instant::now();
    let lock = if stages {
        // A stage that fails ends the backup with the session, which is dropped (a server
        // that no longer answers is not waited for a second time).
        for stage in ["START", "FLUSH", "BLOCK_DDL", "BLOCK_COMMIT"] {
            s.execute(&format!("BACKUP STAGE {stage}"))?;
        }
        s.unlock = "BACKUP STAGE END";
        "BACKUP STAGE BLOCK_COMMIT"
    } else {
        // Tables flushed first without the lock, so that the lock waits the least for the
        // flush (as xtrabackup does).
        s.execute("FLUSH NO_WRITE_TO_BINLOG TABLES")?;
        s.execute("FLUSH TABLES WITH READ LOCK")?;
        s.unlock = "UNLOCK TABLES";
        "FLUSH TABLES WITH READ LOCK"
    };
    s.locked = Instant::now();
    s.record.details.insert("lock".into(), lock.into());
    // The binary log position of the data held: nothing commits past it until the release.
    match s.binlog(&server) {
        Ok(pos) => s.record.details.extend(pos),
        Err(e) => {
            // Not worth losing the consistency for: the lock holds all the same.
            log(format!("mysql: the binary log position at {} is unknown: {e}", s.target));
            s.record.details.insert("binlog".into(), format!("unknown: {e}"));
        }
    }
    log(format!(
        "mysql: {lock} held in {:.0} ms, binary log {}",
        started.elapsed().as_secs_f64() * 1000.0,
        match (s.record.details.get("binlog_file"), s.record.details.get("binlog_position")) {
            (Some(f), Some(p)) => format!("at {f}:{p}"),
            _ => s.record.details.get("binlog").cloned().unwrap_or_default(),
        }
    ));
    Ok(Box::new(s))
}

impl Prepared for Session {
    fn release(mut self: Box<Self>, log: &mut dyn FnMut(String)) -> Result<Released, String> {
        let unlock = self.unlock;
        let unlocked = self.execute(unlock);
        let held = self.locked.elapsed();
        let Session { conn, rt, mut record, .. } = *self;
        // The lock went with a server that went away: the snapshot may not have been held.
        unlocked.map_err(|e| format!("{e} (did the server go away during the snapshot?)"))?;
        let _ = rt.block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await });
        record.details.insert("lock_held_seconds".into(), format!("{:.3}", held.as_secs_f64()));
        log(format!("mysql: {} released after {:.0} ms", record.details["lock"], held.as_secs_f64() * 1000.0));
        Ok(Released::Done(record))
    }
}

impl Session {
    fn run(&mut self, sql: &str) -> Result<Vec<MySqlRow>, String> {
        let timeout = self.timeout;
        let (conn, rt) = (&mut self.conn, &self.rt);
        // The text protocol (a plain string, no arguments): BACKUP STAGE cannot be prepared.
        match rt.block_on(async { tokio::time::timeout(timeout, conn.fetch_all(sql)).await }) {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(self.failed(sql, &e)),
            Err(_) => Err(format!(
                "mysql: {sql} at {} had no answer in {} s (is the server hung?)",
                self.target,
                timeout.as_secs()
            )),
        }
    }

    fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.run(sql).map(drop)
    }

    fn query_one(&mut self, sql: &str) -> Result<MySqlRow, String> {
        self.run(sql)?.into_iter().next().ok_or_else(|| format!("mysql: {sql} at {} returned no row", self.target))
    }

    /// The binary log's file and position, or that it is off; the GTID position with them.
    fn binlog(&mut self, server: &Server) -> Result<Vec<(String, String)>, String> {
        let sql = server.binlog_status();
        let rows = self.run(sql)?;
        let Some(row) = rows.first() else {
            return Ok(vec![("binlog".into(), "binary logging off".into())]);
        };
        // The text protocol: every value comes as text, whatever the column's type.
        let text = |i: usize| row.try_get_unchecked::<Option<String>, _>(i).map(Option::unwrap_or_default);
        let file = text(0).map_err(|e| self.failed(sql, &e))?;
        let position = text(1).map_err(|e| self.failed(sql, &e))?;
        let mut details = vec![("binlog_file".into(), file), ("binlog_position".into(), position)];
        // MySQL says its GTID set in the fifth column; MariaDB has a variable for its own.
        let gtid = if server.mariadb {
            let row = self.query_one("SELECT @@global.gtid_binlog_pos")?;
            row.try_get_unchecked::<Option<String>, _>(0).ok().flatten().map(|g| ("gtid_binlog_pos", g))
        } else {
            row.try_get_unchecked::<Option<String>, _>(4).ok().flatten().map(|g| ("gtid_executed", g))
        };
        if let Some((k, g)) = gtid.filter(|(_, g)| !g.is_empty()) {
            details.push((k.into(), g));
        }
        Ok(details)
    }

    fn failed(&self, sql: &str, e: &sqlx::Error) -> String {
        let hint = if is_denied(e) {
            " (the user needs the RELOAD privilege for the lock, and BINLOG MONITOR on MariaDB or \
             REPLICATION CLIENT on MySQL to read the binary log position)"
        } else if is_lock_timeout(e) {
            " (a long query, transaction or table lock was in the way for longer than the freeze may last)"
        } else {
            ""
        };
        format!("mysql: {sql} at {} as {} failed: {}{hint}", self.target, self.target.user, reason(e))
    }
}

/// Where the server is, for connecting and for messages.
struct Target {
    socket: Option<PathBuf>,
    host: String,
    port: u16,
    user: String,
}

impl Target {
    fn of(spec: &AppSpec) -> Target {
        let socket = match &spec.host {
            Some(_) => None,
            None => Some(spec.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into())),
        };
        Target {
            socket,
            host: spec.host.clone().unwrap_or_default(),
            port: spec.port.unwrap_or(DEFAULT_PORT),
            user: spec.user.clone().unwrap_or_else(|| DEFAULT_USER.into()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.socket {
            Some(s) => write!(f, "{}", s.display()),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

fn connect(rt: &tokio::runtime::Runtime, password: Option<String>, t: &Target) -> Result<MySqlConnection, String> {
    // Nothing of the session is changed but the character set: no SQL mode, no time zone.
    let mut options = MySqlConnectOptions::new()
        .username(&t.user)
        .pipes_as_concat(false)
        .no_engine_substitution(false)
        .timezone(None)
        .statement_cache_capacity(0);
    if let Some(p) = &password {
        options = options.password(p);
    }
    options = match &t.socket {
        Some(s) => options.socket(s).ssl_mode(MySqlSslMode::Disabled),
        None => options.host(&t.host).port(t.port),
    };
    let attempt =
        || rt.block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options)).await });
    // Without a password, over the socket, unix_socket authentication: connect as the OS user
    // of that name (the connect is made, and the server reads who made it, on that thread).
    let as_uid = if password.is_none() && t.socket.is_some() { os_uid(&t.user) } else { None };
    let result = match as_uid {
        Some(uid) => as_os_user(uid, || Ok(attempt()))
            .map_err(|e| format!("mysql: cannot connect as OS user {}: {e}", t.user))?,
        None => attempt(),
    };
    match result {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) if e.as_database_error().is_some() => {
            Err(format!("mysql: {t} refused user {}: {}", t.user, reason(&e)))
        }
        Ok(Err(e)) => Err(format!(
            "mysql: cannot connect to {t} ({}): is the server running, and is this its {}?",
            reason(&e),
            if t.socket.is_some() { "socket" } else { "host and port" }
        )),
        Err(_) => Err(format!(
            "mysql: cannot connect to {t}: no answer in {} s (is the server hung?)",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The server's own words when it answered, else the client's.
fn reason(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let more = inner.to_string();
                if !s.contains(&more) {
                    s = format!("{s}: {more}");
                }
                src = inner.source();
            }
            s
        }
    }
}

/// The server's error number.
fn errno(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()?.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|d| d.number())
}

/// ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR.
fn is_denied(e: &sqlx::Error) -> bool {
    matches!(errno(e), Some(1227 | 1044 | 1045))
}

/// ER_LOCK_WAIT_TIMEOUT.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    errno(e) == Some(1205)
}

/// `10.11.6` of `10.11.6-MariaDB-0+deb12u1-log`.
fn short(version: &str) -> &str {
    version.split('-').next().unwrap_or(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_told_apart_by_their_version() {
        let m = Server::of("10.11.6-MariaDB-0+deb12u1-log");
        assert!(m.mariadb && m.backup_stages());
        assert_eq!(m.binlog_status(), "SHOW MASTER STATUS");
        assert_eq!(short("10.11.6-MariaDB-0+deb12u1-log"), "10.11.6");
        assert!(!Server::of("10.3.39-MariaDB").backup_stages());
        let my = Server::of("8.0.36");
        assert!(!my.mariadb && !my.backup_stages());
        assert_eq!(my.binlog_status(), "SHOW MASTER STATUS");
        assert_eq!(Server::of("8.4.0").binlog_status(), "SHOW BINARY LOG STATUS");
        assert_eq!(Server::of("9.1.0-commercial").binlog_status(), "SHOW BINARY LOG STATUS");
    }

    #[test]
    fn targets_default_to_the_debian_socket_and_root() {
        let t = Target::of(&"mysql".parse().unwrap());
        assert_eq!(t.to_string(), DEFAULT_SOCKET);
        assert_eq!(t.user, "root");
        let t = Target::of(&"mariadb:host=db1,port=3307,user=backup".parse().unwrap());
        assert_eq!((t.to_string().as_str(), t.user.as_str()), ("db1:3307", "backup"));
        assert_eq!(Target::of(&"mysql:host=db1".parse().unwrap()).to_string(), "db1:3306");
    }
}
