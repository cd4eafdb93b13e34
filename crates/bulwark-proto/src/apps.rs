//! Application-aware processing as a job names it: which applications to make consistent
//! around the snapshot and how to reach them (`postgres:host=H,port=P,user=U,password-file=F`),
//! and what a failure to do so means. Shared by the CLI, the server (which checks a job's
//! specs before storing them) and the agent (which does the work).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Which application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    Postgres,
    /// MySQL or MariaDB (the server says which).
    Mysql,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Postgres => "postgres",
            AppKind::Mysql => "mysql",
        }
    }

    /// The settings its spec may have.
    fn keys(self) -> &'static [&'static str] {
        match self {
            AppKind::Postgres => &["host", "port", "user", "password-file", "password-secret", "dbname"],
            AppKind::Mysql => &["socket", "host", "port", "user", "password-file", "password-secret", "lock"],
        }
    }
}

/// One application to process, as the operator wrote it:
/// `postgres:host=H,port=P,user=U,password-file=F` (every key optional). A `host` that starts
/// with `/` is the directory of the server's Unix socket.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub kind: AppKind,
    /// MySQL: the path of the server's Unix socket.
    pub socket: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// A file whose first line is the password (never the password itself on a command line).
    pub password_file: Option<PathBuf>,
    /// In a managed job: the server's sealed secret holding the password, handed to the task
    /// as the environment variable `BULWARK_SECRET_<NAME>`.
    pub password_secret: Option<String>,
    pub dbname: Option<String>,
    /// MySQL: how the snapshot is held; the server's best when not given.
    pub lock: Option<MysqlLock>,
}

/// How a MySQL or MariaDB server is held consistent for the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlLock {
    /// `BACKUP STAGE BLOCK_COMMIT` (MariaDB 10.4 and later; the default there): commits wait,
    /// reads and most writes go on.
    BackupStage,
    /// `FLUSH TABLES WITH READ LOCK` (the default elsewhere): every write waits.
    FlushTables,
}

impl MysqlLock {
    pub fn as_str(self) -> &'static str {
        match self {
            MysqlLock::BackupStage => "backup-stage",
            MysqlLock::FlushTables => "flush-tables",
        }
    }
}

// Written by hand so that nothing secret could ever be printed (there is only a file name).
impl fmt::Debug for AppSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for AppSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.kind.as_str())?;
        let mut parts = Vec::new();
        if let Some(s) = &self.socket {
            parts.push(format!("socket={}", s.display()));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host={h}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={u}"));
        }
        if let Some(p) = &self.password_file {
            parts.push(format!("password-file={}", p.display()));
        }
        if let Some(n) = &self.password_secret {
            parts.push(format!("password-secret={n}"));
        }
        if let Some(d) = &self.dbname {
            parts.push(format!("dbname={d}"));
        }
        if let Some(l) = self.lock {
            parts.push(format!("lock={}", l.as_str()));
        }
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for AppSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let kind = match kind.trim() {
            "postgres" | "postgresql" => AppKind::Postgres,
            "mysql" | "mariadb" => AppKind::Mysql,
            other => {
                // Named back only when it looks like a name (a spec without `:` is all kind).
                let named = other.len() <= 16 && other.chars().all(|c| c.is_ascii_alphanumeric());
                let name = if named { format!(" {other:?}") } else { String::new() };
                return Err(format!("unknown application{name}: postgres and mysql (or mariadb) are known"));
            }
        };
        let mut spec = AppSpec {
            kind,
            socket: None,
            host: None,
            port: None,
            user: None,
            password_file: None,
            password_secret: None,
            dbname: None,
            lock: None,
        };
        // No message repeats the spec or a value: a mistyped spec may hold a password.
        let mut seen = BTreeMap::new();
        for (i, part) in rest.split(',').map(str::trim).filter(|p| !p.is_empty()).enumerate() {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("setting {} is not KEY=VALUE", i + 1))?;
            let (k, v) = (k.trim(), v.trim());
            if v.is_empty() {
                return Err(format!("{k} has no value"));
            }
            if seen.insert(k.to_string(), ()).is_some() {
                return Err(format!("{k} is given twice"));
            }
            if k != "password" && !kind.keys().contains(&k) {
                return Err(format!(
                    "unknown setting {k:?}: {} are known for {}",
                    kind.keys().join(", "),
                    kind.as_str()
                ));
            }
            match k {
                "socket" => spec.socket = Some(v.into()),
                "host" => spec.host = Some(v.into()),
                "port" => spec.port = Some(v.parse().map_err(|_| format!("port {v:?} is not a port number"))?),
                "user" => spec.user = Some(v.into()),
                "password-file" => spec.password_file = Some(v.into()),
                "password-secret" => spec.password_secret = Some(v.into()),
                "dbname" => spec.dbname = Some(v.into()),
                "lock" => {
                    spec.lock = Some(match v {
                        "backup-stage" => MysqlLock::BackupStage,
                        "flush-tables" => MysqlLock::FlushTables,
                        _ => return Err("lock is backup-stage or flush-tables".into()),
                    })
                }
                "password" => {
                    return Err("a password is not given in the spec (others could read it): name a file holding \
                                it with password-file=FILE or, in a managed job, a secret of the server with \
                                password-secret=NAME"
                        .into())
                }
                _ => unreachable!("{k} is a known setting"),
            }
        }
        if kind == AppKind::Mysql {
            if spec.socket.is_some() && (spec.host.is_some() || spec.port.is_some()) {
                return Err("the spec names a socket and a host or port: a socket, or a host and port".into());
            }
            if spec.port.is_some() && spec.host.is_none() {
                return Err("the spec names a port but no host (without one, the socket is used)".into());
            }
        }
        Ok(spec)
    }
}

/// What happens when an application cannot be prepared or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppPolicy {
    /// The snapshot try fails (and is retried; the task fails when every try did).
    #[default]
    Require,
    /// The backup goes on without it: the point is crash-consistent for that application and
    /// the task ends with a warning saying why.
    Ignore,
}

impl FromStr for AppPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "require" => Ok(AppPolicy::Require),
            "ignore" | "try" => Ok(AppPolicy::Ignore),
            other => Err(format!("unknown processing policy {other:?}: require or ignore")),
        }
    }
}

impl AppPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AppPolicy::Require => "require",
            AppPolicy::Ignore => "ignore",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_what_they_should() {
        let s: AppSpec =
            "postgres:host=/var/run/postgresql,port=5433,user=backup,password-file=/etc/pw".parse().unwrap();
        assert_eq!(s.kind, AppKind::Postgres);
        assert_eq!(s.host.as_deref(), Some("/var/run/postgresql"));
        assert_eq!(s.port, Some(5433));
        assert_eq!(s.to_string(), "postgres:host=/var/run/postgresql,port=5433,user=backup,password-file=/etc/pw");
        assert_eq!("postgres".parse::<AppSpec>().unwrap().host, None);
        let m: AppSpec = "mysql:socket=/run/mysqld/mysqld.sock,user=backup,password-file=/etc/pw".parse().unwrap();
        assert_eq!(m.kind, AppKind::Mysql);
        assert_eq!(m.socket.as_deref(), Some(std::path::Path::new("/run/mysqld/mysqld.sock")));
        assert_eq!(m.to_string(), "mysql:socket=/run/mysqld/mysqld.sock,user=backup,password-file=/etc/pw");
        let m: AppSpec = "mariadb:host=db1,port=3307".parse().unwrap();
        assert_eq!((m.kind, m.host.as_deref(), m.port, m.socket), (AppKind::Mysql, Some("db1"), Some(3307), None));
        assert_eq!("mysql".parse::<AppSpec>().unwrap().to_string(), "mysql:");
        let m: AppSpec = "mysql:lock=flush-tables".parse().unwrap();
        assert_eq!((m.lock, m.to_string().as_str()), (Some(MysqlLock::FlushTables), "mysql:lock=flush-tables"));
        for (bad, why) in [
            ("oracle:host=x", "postgres and mysql (or mariadb) are known"),
            ("postgres:socket=/s", "unknown setting"),
            ("mysql:password=hunter2", "not given in the spec"),
            ("mariadb:dbname=x", "socket, host, port, user, password-file, password-secret, lock are known for mysql"),
            ("mysql:lock=table", "lock is backup-stage or flush-tables"),
            ("postgres:lock=flush-tables", "unknown setting"),
            ("mysql:socket=/s,host=h", "a socket, or a host and port"),
            ("mysql:port=3306", "names a port but no host"),
            ("postgres:port=99999", "not a port number"),
            ("postgres:password=hunter2", "not given in the spec"),
            ("postgres:pasword=hunter2", "unknown setting"),
            ("postgres:hunter2", "setting 1 is not KEY=VALUE"),
            ("postgres:host=a,host=b", "given twice"),
            ("postgres:hots=a", "unknown setting"),
            ("postgres:host", "not KEY=VALUE"),
            ("postgres:user=", "has no value"),
        ] {
            let e = bad.parse::<AppSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
