//! Application-aware processing: before a snapshot the agent makes the applications on the
//! computer consistent, and releases them right after it (step 6 of the job flow).
//!
//! Each application is reached through one database session that lives from its preparation to
//! its release: a PostgreSQL backup or a MySQL read lock belongs to the session that started it,
//! so two separate scripts cannot do this (see the research notes, section 5).
//!
//! The order around each snapshot try (see [`crate::snapshot::create_with_retries`]):
//! application preparation → pre-freeze script → snapshot → post-thaw script → application
//! release. What to do when an application cannot be prepared is the job's [`AppPolicy`].

mod mysql;
mod postgres;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use bulwark_repo::ApplicationRecord;

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
            AppKind::Postgres => &["host", "port", "user", "password-file", "dbname"],
            AppKind::Mysql => &["socket", "host", "port", "user", "password-file"],
        }
    }
}

/// One application to process, as the operator wrote it (every key optional):
/// `postgres:host=H,port=P,user=U,password-file=F,dbname=D`, where a `host` that starts with
/// `/` is the directory of the server's Unix socket; `mysql:socket=S` or
/// `mysql:host=H,port=P`, with `user=U,password-file=F` (`mariadb:` is the same).
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
    pub dbname: Option<String>,
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
        if let Some(d) = &self.dbname {
            parts.push(format!("dbname={d}"));
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
            other => return Err(format!("unknown application {other:?}: postgres and mysql (or mariadb) are known")),
        };
        let mut spec =
            AppSpec { kind, socket: None, host: None, port: None, user: None, password_file: None, dbname: None };
        let mut seen = BTreeMap::new();
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} in {s:?} is not KEY=VALUE"))?;
            let (k, v) = (k.trim(), v.trim());
            if v.is_empty() {
                return Err(format!("{k} in {s:?} has no value"));
            }
            if seen.insert(k.to_string(), ()).is_some() {
                return Err(format!("{k} is given twice in {s:?}"));
            }
            if k != "password" && !kind.keys().contains(&k) {
                return Err(format!(
                    "unknown setting {k:?} in {s:?}: {} are known for {}",
                    kind.keys().join(", "),
                    kind.as_str()
                ));
            }
            match k {
                "socket" => spec.socket = Some(v.into()),
                "host" => spec.host = Some(v.into()),
                "port" => spec.port = Some(v.parse().map_err(|_| format!("port {v:?} in {s:?} is not a port number"))?),
                "user" => spec.user = Some(v.into()),
                "password-file" => spec.password_file = Some(v.into()),
                "dbname" => spec.dbname = Some(v.into()),
                "password" => {
                    return Err("a password is not given on the command line (others could read it): put it \
                                in a file and name it with password-file=FILE"
                        .into())
                }
                _ => unreachable!("{k} is a known setting"),
            }
        }
        if kind == AppKind::Mysql {
            if spec.socket.is_some() && (spec.host.is_some() || spec.port.is_some()) {
                return Err(format!("{s:?} names a socket and a host or port: a socket, or a host and port"));
            }
            if spec.port.is_some() && spec.host.is_none() {
                return Err(format!("{s:?} names a port but no host (without one, the socket is used)"));
            }
        }
        Ok(spec)
    }
}

impl AppSpec {
    /// The password from `password-file`, if one is named: its first line.
    pub(crate) fn password(&self) -> Result<Option<String>, String> {
        let Some(f) = &self.password_file else { return Ok(None) };
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read the password file {} of {}: {e}", f.display(), self.kind.as_str()))?;
        Ok(Some(text.lines().next().unwrap_or("").to_string()))
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

/// An application held consistent for the snapshot; [`Prepared::release`] lets it go.
pub trait Prepared: Send {
    /// Ends what preparation began (in the same session) and says what was done.
    fn release(self: Box<Self>, log: &mut dyn FnMut(String)) -> Result<ApplicationRecord, String>;
}

/// Prepares `spec`'s application for a snapshot of a volume: connects, and does what makes its
/// files on disk consistent (PostgreSQL: a checkpoint; MySQL: a read lock held until the
/// release). `limit` is the longest the freeze may last: no wait for a lock is longer.
pub fn prepare(spec: &AppSpec, limit: Duration, log: &mut dyn FnMut(String)) -> Result<Box<dyn Prepared>, String> {
    match spec.kind {
        AppKind::Postgres => postgres::prepare(spec, log),
        AppKind::Mysql => mysql::prepare(spec, limit, log),
    }
}

/// The uid of OS user `name`, when it differs from ours and we may take it (as root).
fn os_uid(name: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let uid: u32 = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    (euid == 0 && uid != euid).then_some(uid)
}

/// Runs `f` as OS user `uid` (the effective uid), for connecting to a Unix socket whose server
/// reads the connecting thread's credentials (SO_PEERCRED) to authenticate it.
fn as_os_user<T: Send>(uid: u32, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    // A thread of its own, which ends right after: the raw setresuid system call changes the
    // credentials of the calling thread only (unlike libc's setresuid, which changes every
    // thread's), so no other thread of the agent ever runs as that user, and nothing needs to
    // be changed back.
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: a system call on integers only; it changes this thread's effective uid
            // (the real and saved ones, -1, stay root), which this thread uses for `f` alone.
            let r = unsafe {
                libc::syscall(libc::SYS_setresuid, -1 as libc::c_long, uid as libc::c_long, -1 as libc::c_long)
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the connecting thread panicked"))?
    })
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
        for (bad, why) in [
            ("oracle:host=x", "postgres and mysql (or mariadb) are known"),
            ("postgres:port=99999", "not a port number"),
            ("postgres:password=secret", "not given on the command line"),
            ("postgres:host=a,host=b", "given twice"),
            ("postgres:hots=a", "unknown setting"),
            ("postgres:host", "not KEY=VALUE"),
            ("postgres:user=", "has no value"),
            ("postgres:socket=/s", "unknown setting"),
            ("mysql:password=secret", "not given on the command line"),
            ("mariadb:dbname=x", "socket, host, port, user, password-file are known for mysql"),
            ("mysql:socket=/s,host=h", "a socket, or a host and port"),
            ("mysql:port=3306", "names a port but no host"),
        ] {
            let e = bad.parse::<AppSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
