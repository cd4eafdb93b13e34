//! PostgreSQL, two ways:
//! - **Volumes**: a checkpoint right before the snapshot of the volume holding the data
//!   directory, so that the server started on a restored copy has the least WAL to replay
//!   (Veeam's way for volume and computer backups).
//! - **File-level backups of a directory holding the data directory**: what `pg_basebackup`
//!   does, in one session. A temporary replication slot keeps the WAL from being recycled;
//!   `pg_backup_start` (a fast checkpoint); the copy (of a snapshot, or live); `pg_backup_stop`,
//!   whose backup label and tablespace map go into the point's data directory, with the WAL
//!   segments from the backup's start to its end read from the live `pg_wal` afterwards. The
//!   copy leaves out what `pg_basebackup` leaves out (the WAL it replaces, `postmaster.pid`,
//!   temporary and runtime files). The restored directory starts and recovers on its own.
//!
//! Authentication, as an administrator sets it up: a password file named in the spec, the
//! user's `.pgpass` entry (`PGPASSFILE` or `~/.pgpass`), or none: over the Unix socket the
//! connection is then made as the operating system user of the same name (peer
//! authentication, as `sudo -u postgres psql` does), which the agent can do as root.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use tokio_postgres::{Client, Config, NoTls};

use super::{
    as_os_user, os_uid, Addition, AdditionContent, AppSpec, ApplicationRecord, Finished, Held, Prepared, Released,
};

const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
const DEFAULT_PORT: u16 = 5432;
const DEFAULT_USER: &str = "postgres";

/// A session held from the checkpoint to the release.
struct Session {
    rt: tokio::runtime::Runtime,
    client: Client,
    record: ApplicationRecord,
}

pub(super) fn prepare(
    spec: &AppSpec,
    password: Option<String>,
    files: Option<&Path>,
    log: &mut dyn FnMut(String),
) -> Result<Box<dyn Prepared>, String> {
    if let Some(source) = files {
        return start_backup(spec, password, source, log).map(|s| Box::new(s) as Box<dyn Prepared>);
    }
    let (rt, target, client) = open(spec, password)?;
    let q = |sql: &'static str| {
        let client = &client;
        let target = &target;
        rt.block_on(async move { client.query_one(sql, &[]).await }).map_err(|e| failed(target, sql, &e))
    };
    let version: String = q("SHOW server_version")?.get(0);
    let server = format!("PostgreSQL {version} at {target}");
    log(format!("postgres: connected to {server} as {}", target.user));
    let started = std::time::Instant::now();
    rt.block_on(client.batch_execute("CHECKPOINT")).map_err(|e| failed(&target, "CHECKPOINT", &e))?;
    let row = q("SELECT checkpoint_lsn::text, redo_lsn::text, timeline_id::text FROM pg_control_checkpoint()")?;
    let mut record =
        ApplicationRecord { app: "postgres".into(), server, action: "checkpoint".into(), details: Default::default() };
    for (i, k) in ["checkpoint_lsn", "redo_lsn", "timeline"].into_iter().enumerate() {
        record.details.insert(k.into(), row.get::<_, String>(i));
    }
    log(format!(
        "postgres: checkpoint at {} in {:.0} ms",
        record.details["checkpoint_lsn"],
        started.elapsed().as_secs_f64() * 1000.0
    ));
    Ok(Box::new(Session { rt, client, record }))
}

impl Prepared for Session {
    fn release(self: Box<Self>, _log: &mut dyn FnMut(String)) -> Result<Released, String> {
        // Nothing is held past a checkpoint; the session ending is the release. Asking once
        // more tells a server that went away during the snapshot.
        let Session { rt, client, record } = *self;
        rt.block_on(client.simple_query("SELECT 1"))
            .map_err(|e| format!("postgres: {} went away during the snapshot: {}", record.server, reason(&e)))?;
        Ok(Released::Done(record))
    }
}

/// A file-level backup in progress: the session that began it, which alone can end it.
struct BackupSession {
    rt: tokio::runtime::Runtime,
    client: Client,
    target: Target,
    record: ApplicationRecord,
    /// The live data directory, and where it is in the backup's tree (`/`-separated, empty at
    /// the root).
    data_dir: PathBuf,
    rel: String,
    start_lsn: String,
    version_num: i32,
}

fn start_backup(
    spec: &AppSpec,
    password: Option<String>,
    source: &Path,
    log: &mut dyn FnMut(String),
) -> Result<BackupSession, String> {
    let (rt, target, client) = open(spec, password)?;
    let one = |sql: &'static str| -> Result<String, String> {
        rt.block_on(client.query_one(sql, &[])).map(|r| r.get::<_, String>(0)).map_err(|e| failed(&target, sql, &e))
    };
    let version = one("SHOW server_version")?;
    let version_num: i32 = one("SHOW server_version_num")?.parse().unwrap_or(0);
    let server = format!("PostgreSQL {version} at {target}");
    log(format!("postgres: connected to {server} as {}", target.user));
    // Where the data directory is in the backup: a copy of anything else would not start.
    let data_dir = PathBuf::from(one("SHOW data_directory")?);
    let inside = |p: &Path| -> Option<String> {
        let (p, root) = (p.canonicalize().ok()?, source.canonicalize().ok()?);
        Some(p.strip_prefix(root).ok()?.to_string_lossy().into_owned())
    };
    let rel = inside(&data_dir).ok_or_else(|| {
        format!(
            "postgres: the data directory of {server}, {}, is not inside the directory backed up, {}",
            data_dir.display(),
            source.display()
        )
    })?;
    let spaces = rt
        .block_on(client.query(
            "SELECT spcname::text, pg_tablespace_location(oid) FROM pg_tablespace WHERE pg_tablespace_location(oid) <> ''",
            &[],
        ))
        .map_err(|e| failed(&target, "listing tablespaces", &e))?;
    for row in &spaces {
        let (name, at): (String, String) = (row.get(0), row.get(1));
        if inside(Path::new(&at)).is_none() {
            return Err(format!(
                "postgres: tablespace {name} of {server} is at {at}, outside the directory backed up, {}",
                source.display()
            ));
        }
    }
    let mut record = ApplicationRecord {
        app: "postgres".into(),
        server,
        action: "backup mode (pg_backup_start to pg_backup_stop)".into(),
        details: Default::default(),
    };
    record.details.insert("data_directory".into(), data_dir.display().to_string());
    // The WAL from here on stays until this session ends, however long the copy takes. A
    // server that allows no slot still has its WAL kept by wal_keep_size, which may do.
    let slot = format!("bulwark_{}", crate::snapshot::owned_tag().replace('-', "_"));
    match rt.block_on(client.query_one("SELECT pg_create_physical_replication_slot($1, true, true)::text", &[&slot])) {
        Ok(_) => {
            record.details.insert("wal_reserved_by".into(), format!("temporary replication slot {slot}"));
        }
        Err(e) => {
            log(format!(
                "postgres: no temporary replication slot ({}): WAL written during a long copy may be recycled before it is read",
                reason(&e)
            ));
            record.details.insert("wal_reserved_by".into(), "none".into());
        }
    }
    let started = std::time::Instant::now();
    let sql = if version_num >= 150000 {
        "SELECT pg_backup_start('bulwark', true)::text"
    } else {
        "SELECT pg_start_backup('bulwark', true, false)::text"
    };
    let start_lsn: String = rt
        .block_on(client.query_one(sql, &[]))
        .map_err(|e| {
            let hint = " (the user needs to be a superuser or be granted EXECUTE on the backup functions)";
            format!("postgres: starting the backup at {target} failed: {}{hint}", reason(&e))
        })?
        .get(0);
    record.details.insert("start_lsn".into(), start_lsn.clone());
    log(format!(
        "postgres: backup started at {start_lsn} (checkpoint in {:.0} ms)",
        started.elapsed().as_secs_f64() * 1000.0
    ));
    Ok(BackupSession { rt, client, target, record, data_dir, rel, start_lsn, version_num })
}

impl Prepared for BackupSession {
    fn release(self: Box<Self>, _log: &mut dyn FnMut(String)) -> Result<Released, String> {
        // The backup goes on through the copy; only a server gone away ends it here.
        self.rt
            .block_on(self.client.simple_query("SELECT 1"))
            .map_err(|e| format!("postgres: {} went away during the snapshot: {}", self.record.server, reason(&e)))?;
        Ok(Released::Held(self))
    }
}

impl Held for BackupSession {
    fn exclude(&self) -> Vec<String> {
        let at = if self.rel.is_empty() { "/".to_string() } else { format!("/{}/", self.rel) };
        // What pg_basebackup leaves out: the WAL (the segments the backup needs are added),
        // files a restored server must not find, and what the server recreates.
        [
            "pg_wal/*",
            "backup_label",
            "tablespace_map",
            "backup_manifest",
            "postmaster.pid",
            "postmaster.opts",
            "postgresql.auto.conf.tmp",
            "current_logfiles.tmp",
            "pg_replslot/*",
            "pg_dynshmem/*",
            "pg_notify/*",
            "pg_serial/*",
            "pg_snapshots/*",
            "pg_stat_tmp/*",
            "pg_subtrans/*",
            "**/pgsql_tmp*",
            "**/pg_internal.init",
        ]
        .iter()
        .map(|p| format!("{at}{p}"))
        .collect()
    }

    fn finish(self: Box<Self>, log: &mut dyn FnMut(String)) -> Result<Finished, String> {
        let BackupSession { rt, client, target, mut record, data_dir, rel, start_lsn, version_num } = *self;
        let sql = if version_num >= 150000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        // Not waiting for archiving: the WAL the backup needs is read here, not from an archive.
        let row = rt.block_on(client.query_one(sql, &[])).map_err(|e| {
            format!(
                "postgres: ending the backup at {target} failed: {} (did the server restart during the copy?)",
                reason(&e)
            )
        })?;
        let (stop_lsn, label, map): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        let names = rt
            .block_on(client.query_one(
                "SELECT pg_walfile_name($1::text::pg_lsn), pg_walfile_name($2::text::pg_lsn), \
                 (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')",
                &[&start_lsn, &stop_lsn],
            ))
            .map_err(|e| failed(&target, "naming the WAL segments", &e))?;
        let (first, last, seg_size): (String, String, i64) = (names.get(0), names.get(1), names.get(2));
        let wal_dir = data_dir.join("pg_wal");
        let segments = wal_segments(&wal_dir, &first, &last, seg_size as u64)?;
        let at = |name: &str| -> Vec<u8> {
            if rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                format!("{rel}/{name}").into_bytes()
            }
        };
        let mut additions = vec![Addition {
            rel: at("backup_label"),
            content: AdditionContent::Bytes { data: label.into_bytes(), like: data_dir.clone() },
        }];
        if let Some(map) = map.filter(|m| !m.is_empty()) {
            additions.push(Addition {
                rel: at("tablespace_map"),
                content: AdditionContent::Bytes { data: map.into_bytes(), like: data_dir.clone() },
            });
        }
        for name in &segments {
            additions.push(Addition {
                rel: at(&format!("pg_wal/{name}")),
                content: AdditionContent::File(wal_dir.join(name)),
            });
        }
        let wal = segments.iter().filter(|n| !n.ends_with(".history")).count();
        record.details.insert("stop_lsn".into(), stop_lsn.clone());
        record.details.insert("wal_segments".into(), format!("{first} to {last} ({wal})"));
        log(format!("postgres: backup ended at {stop_lsn}; {wal} WAL segments from {first} to {last} added"));
        Ok(Finished { record, additions, keep: Box::new((rt, client)) })
    }
}

/// The WAL segment files from `first` to `last` in `dir` (names as `pg_walfile_name` gives
/// them), and the timeline history files; an error names the first one missing.
fn wal_segments(dir: &Path, first: &str, last: &str, seg_size: u64) -> Result<Vec<String>, String> {
    let parse = |n: &str| -> Option<(u32, u64)> {
        let h = |r: std::ops::Range<usize>| u64::from_str_radix(n.get(r)?, 16).ok();
        Some((h(0..8)? as u32, h(8..16)? * (0x1_0000_0000 / seg_size.max(1)) + h(16..24)?))
    };
    let ((tli, from), (tli_end, to)) = match (parse(first), parse(last)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(format!("postgres: unexpected WAL segment names {first} and {last}")),
    };
    if tli != tli_end {
        return Err(format!("postgres: the timeline changed during the backup ({first} to {last}): run it again"));
    }
    let per_log = 0x1_0000_0000 / seg_size.max(1);
    let mut out: Vec<String> =
        (from..=to).map(|s| format!("{tli:08X}{:08X}{:08X}", s / per_log, s % per_log)).collect();
    for name in &out {
        if !dir.join(name).is_file() {
            return Err(format!(
                "postgres: WAL segment {name} was recycled before the backup could read it (allow the backup user a \
                 replication slot, or raise wal_keep_size)"
            ));
        }
    }
    let listed = std::fs::read_dir(dir).map_err(|e| format!("postgres: cannot list {}: {e}", dir.display()))?;
    out.extend(listed.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.ends_with(".history")));
    Ok(out)
}

/// A session of its own on a current-thread runtime, which the agent's threads do not share.
fn open(spec: &AppSpec, password: Option<String>) -> Result<(tokio::runtime::Runtime, Target, Client), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("postgres: cannot start a runtime: {e}"))?;
    let target = Target::of(spec);
    let client = rt.block_on(connect(spec, password, &target))?;
    Ok((rt, target, client))
}

/// Where the server is, for connecting and for messages.
struct Target {
    /// The socket directory, or a host name for TCP.
    host: String,
    socket: bool,
    port: u16,
    user: String,
}

impl Target {
    fn of(spec: &AppSpec) -> Target {
        let host = spec.host.clone().unwrap_or_else(|| DEFAULT_SOCKET_DIR.into());
        Target {
            socket: host.starts_with('/'),
            host,
            port: spec.port.unwrap_or(DEFAULT_PORT),
            user: spec.user.clone().unwrap_or_else(|| DEFAULT_USER.into()),
        }
    }
    fn socket_path(&self) -> PathBuf {
        Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

async fn connect(spec: &AppSpec, password: Option<String>, t: &Target) -> Result<Client, String> {
    let mut config = Config::new();
    let db = spec.dbname.clone().unwrap_or_else(|| "postgres".into());
    config.user(&t.user).dbname(&db).application_name("bulwark");
    config.connect_timeout(std::time::Duration::from_secs(10));
    let password = password.or_else(|| pgpass(t, &db));
    if let Some(p) = &password {
        config.password(p);
    }
    let refused = |e: tokio_postgres::Error| format!("postgres: {t} refused user {}: {}", t.user, reason(&e));
    let client = if t.socket {
        let path = t.socket_path();
        // Without a password, peer authentication: connect as the OS user of that name.
        let as_uid = if password.is_none() { os_uid(&t.user) } else { None };
        let stream = connect_socket_as(&path, as_uid).map_err(|e| {
            format!(
                "postgres: cannot connect to {} ({e}): is the server running, and is this its socket directory and port?",
                path.display()
            )
        })?;
        stream.set_nonblocking(true).map_err(|e| format!("postgres: {e}"))?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| format!("postgres: {e}"))?;
        let (client, connection) = config.connect_raw(stream, NoTls).await.map_err(refused)?;
        tokio::spawn(connection);
        client
    } else {
        config.host(&t.host).port(t.port);
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            if e.as_db_error().is_some() {
                refused(e)
            } else {
                format!("postgres: cannot connect to {t} ({}): is the server running and listening there?", reason(&e))
            }
        })?;
        tokio::spawn(connection);
        client
    };
    Ok(client)
}

/// The server's own words when it answered, else the client's.
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

fn failed(t: &Target, what: &str, e: &tokio_postgres::Error) -> String {
    let hint = if what == "CHECKPOINT" {
        " (the user needs to be a superuser or, from PostgreSQL 15, have the pg_checkpoint role)"
    } else {
        ""
    };
    format!("postgres: {what} at {t} failed: {}{hint}", reason(e))
}

/// Connects to a Unix socket, as `uid` when given: the server reads the connecting thread's
/// credentials (SO_PEERCRED) for peer authentication.
fn connect_socket_as(path: &Path, uid: Option<u32>) -> io::Result<UnixStream> {
    match uid {
        Some(uid) => as_os_user(uid, || UnixStream::connect(path)),
        None => UnixStream::connect(path),
    }
}

/// The password in the user's `.pgpass` for this server, user and database, as libpq finds it.
fn pgpass(t: &Target, db: &str) -> Option<String> {
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(file).ok()?;
    // libpq names a socket connection's host "localhost" in .pgpass.
    let host = if t.socket { "localhost" } else { t.host.as_str() };
    let port = t.port.to_string();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields = split_pgpass(line);
        let [h, p, d, u, pw] = fields.as_slice() else { return None };
        let m = |f: &str, v: &str| f == "*" || f == v;
        (m(h, host) && m(p, &port) && m(d, db) && m(u, &t.user)).then(|| pw.clone())
    })
}

/// The fields of a `.pgpass` line: `:` separates, `\` escapes.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("one").extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(
            split_pgpass(r"localhost:5432:*:backup:pa\:ss\\w"),
            ["localhost", "5432", "*", "backup", r"pa:ss\w"]
        );
    }
}
