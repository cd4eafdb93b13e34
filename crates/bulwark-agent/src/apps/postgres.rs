//! PostgreSQL: a checkpoint right before the snapshot of the volume holding the data directory,
//! so that the server started on a restored copy has the least WAL to replay (Veeam's way for
//! volume and computer backups).
//!
//! Authentication, as an administrator sets it up: a password file named in the spec, the
//! user's `.pgpass` entry (`PGPASSFILE` or `~/.pgpass`), or none: over the Unix socket the
//! connection is then made as the operating system user of the same name (peer
//! authentication, as `sudo -u postgres psql` does), which the agent can do as root.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use tokio_postgres::{Client, Config, NoTls};

use super::{as_os_user, os_uid, AppSpec, ApplicationRecord, Prepared};

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
    log: &mut dyn FnMut(String),
) -> Result<Box<dyn Prepared>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("postgres: cannot start a runtime: {e}"))?;
    let target = Target::of(spec);
    let client = rt.block_on(connect(spec, password, &target))?;
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
    fn release(self: Box<Self>, _log: &mut dyn FnMut(String)) -> Result<ApplicationRecord, String> {
        // Nothing is held past a checkpoint; the session ending is the release. Asking once
        // more tells a server that went away during the snapshot.
        let Session { rt, client, record } = *self;
        rt.block_on(client.simple_query("SELECT 1"))
            .map_err(|e| format!("postgres: {} went away during the snapshot: {}", record.server, reason(&e)))?;
        Ok(record)
    }
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
