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

use std::io;
use std::time::Duration;

pub use bulwark_proto::apps::{AppKind, AppPolicy, AppSpec};
pub use bulwark_repo::ApplicationRecord;

/// The password of `spec`: its `password-secret` from `env` (the task's `BULWARK_SECRET_<NAME>`
/// variables), or the first line of its `password-file`, or none.
pub(crate) fn password(spec: &AppSpec, env: &[(String, String)]) -> Result<Option<String>, String> {
    if let Some(name) = &spec.password_secret {
        let var = format!("BULWARK_SECRET_{}", name.to_ascii_uppercase());
        return match env.iter().find(|(k, _)| *k == var) {
            Some((_, v)) => Ok(Some(v.clone())),
            None => Err(format!(
                "{}: the password secret {name} was not handed to this task (name it in the job's secrets)",
                spec.kind.as_str()
            )),
        };
    }
    let Some(f) = &spec.password_file else { return Ok(None) };
    let text = std::fs::read_to_string(f)
        .map_err(|e| format!("cannot read the password file {} of {}: {e}", f.display(), spec.kind.as_str()))?;
    Ok(Some(text.lines().next().unwrap_or("").to_string()))
}

/// An application held consistent for the snapshot; [`Prepared::release`] lets it go.
pub trait Prepared: Send {
    /// Ends what preparation began (in the same session) and says what was done, or, for an
    /// application whose backup ends only after the copy, hands the session on.
    fn release(self: Box<Self>, log: &mut dyn FnMut(String)) -> Result<Released, String>;
}

pub enum Released {
    Done(ApplicationRecord),
    /// Still in backup mode: ended by [`Held::finish`] once every file is copied.
    Held(Box<dyn Held>),
}

/// An application whose backup spans the copy of its files (PostgreSQL's `pg_backup_start`
/// … `pg_backup_stop` in a file-level backup), held in its session until the copy is done.
pub trait Held: Send {
    /// `--exclude` patterns of what the copy must leave out (what the application's own
    /// additions replace, and what a restore must not have).
    fn exclude(&self) -> Vec<String>;
    /// Ends the backup in the same session: what was done and what the point must hold besides
    /// the copy.
    fn finish(self: Box<Self>, log: &mut dyn FnMut(String)) -> Result<Finished, String>;
}

pub struct Finished {
    pub record: ApplicationRecord,
    pub additions: Vec<Addition>,
    /// Kept until the additions are read (PostgreSQL: the session whose temporary replication
    /// slot keeps the WAL from being recycled).
    pub keep: Box<dyn Send>,
}

/// A file the point holds that the copy did not take: its path relative to the backup's root
/// (`/`-separated), and where its content comes from.
pub struct Addition {
    pub rel: Vec<u8>,
    pub content: AdditionContent,
}

pub enum AdditionContent {
    /// Written by the application (a backup label): given the metadata of `like`'s directory.
    Bytes { data: Vec<u8>, like: std::path::PathBuf },
    /// A file of the live system, read as it is now (WAL written until the backup's end).
    File(std::path::PathBuf),
}

/// Prepares `spec`'s application for a snapshot: connects (with the password `env` or a file
/// gives, if any), and does what makes its files on disk consistent. For a volume, PostgreSQL
/// takes a checkpoint, MySQL a read lock held until the release; `limit` is the longest the
/// freeze may last (no wait for a lock is longer). For a file-level backup of the directory
/// `files`, PostgreSQL enters backup mode, held until the copy is done (see [`Held`]).
pub fn prepare(
    spec: &AppSpec,
    env: &[(String, String)],
    limit: Duration,
    files: Option<&std::path::Path>,
    log: &mut dyn FnMut(String),
) -> Result<Box<dyn Prepared>, String> {
    let password = password(spec, env)?;
    match spec.kind {
        AppKind::Postgres => postgres::prepare(spec, password, files, log),
        AppKind::Mysql => mysql::prepare(spec, password, limit, log),
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
