//! The configuration database: an SQLite file by default, PostgreSQL when asked. One schema,
//! written in the SQL both understand (TEXT, BIGINT; times as RFC 3339 text; nested settings
//! as JSON text), applied by numbered migrations at start.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::secrets::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("config database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("config database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("config database: migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    #[error("config database has schema version {found}; this server knows up to {known}: upgrade the server")]
    TooNew { found: i64, known: i64 },
}

pub type Result<T> = std::result::Result<T, DbError>;

/// The schema, one migration per entry. Never edit one that shipped: add another.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE users (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, password_hash TEXT, role TEXT NOT NULL,
        created TEXT NOT NULL);
     CREATE TABLE api_tokens (
        hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL);
     CREATE TABLE join_tokens (
        secret_hash TEXT PRIMARY KEY, role TEXT NOT NULL, created TEXT NOT NULL, used TEXT);
     CREATE TABLE nodes (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, address TEXT NOT NULL, serial TEXT NOT NULL,
        joined TEXT NOT NULL, inventory TEXT, revoked BIGINT NOT NULL DEFAULT 0);
     CREATE TABLE repositories (
        name TEXT PRIMARY KEY, transport TEXT NOT NULL, path TEXT NOT NULL, max_tasks BIGINT NOT NULL,
        password TEXT, created TEXT NOT NULL);
     CREATE TABLE groups (
        name TEXT PRIMARY KEY, computers TEXT NOT NULL, created TEXT NOT NULL);
     CREATE TABLE jobs (
        name TEXT PRIMARY KEY, spec TEXT NOT NULL, enabled BIGINT NOT NULL DEFAULT 1,
        created TEXT NOT NULL, last_check TEXT);
     CREATE TABLE sessions (
        id TEXT PRIMARY KEY, job TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
        started TEXT NOT NULL, ended TEXT);
     CREATE UNIQUE INDEX sessions_one_running ON sessions (job) WHERE status = 'running';
     CREATE TABLE revoked_certificates (serial TEXT PRIMARY KEY, node TEXT NOT NULL, revoked TEXT NOT NULL);
     CREATE TABLE tasks (
        id TEXT PRIMARY KEY, session_id TEXT NOT NULL, computer TEXT NOT NULL, repository TEXT NOT NULL,
        priority BIGINT NOT NULL, seq BIGINT NOT NULL, attempt BIGINT NOT NULL, status TEXT NOT NULL,
        error TEXT, log TEXT, queued TEXT NOT NULL, not_before TEXT, started TEXT, ended TEXT,
        sent_bytes BIGINT NOT NULL DEFAULT 0);
     CREATE INDEX tasks_by_status ON tasks (status, priority, seq);
     CREATE INDEX tasks_by_session ON tasks (session_id);
     CREATE TABLE points (
        id TEXT PRIMARY KEY, repository TEXT NOT NULL, task_id TEXT, computer TEXT NOT NULL,
        name TEXT NOT NULL, kind TEXT NOT NULL, created TEXT NOT NULL, manifest TEXT NOT NULL);",
    ),
    (
        2,
        // Backup chains: the server's identity for one source of one computer in one repository
        // (see store::chain_for).
        "CREATE TABLE chains (
        name TEXT PRIMARY KEY, job TEXT NOT NULL, computer TEXT NOT NULL, source TEXT NOT NULL,
        repository TEXT NOT NULL, created TEXT NOT NULL);
     CREATE UNIQUE INDEX chains_identity ON chains (computer, source, repository);
     ALTER TABLE repositories ADD COLUMN isolation TEXT NOT NULL DEFAULT 'shared';
     CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated TEXT NOT NULL);",
    ),
    // Credentials: tokens with an id (to list and revoke them by) and an expiry; join tokens
    // bound to a node name (NULL: any new name) and allowed, or not, to take back a removed
    // one; removed nodes an operator readmitted.
    (
        3,
        "ALTER TABLE api_tokens ADD COLUMN id TEXT;
     ALTER TABLE api_tokens ADD COLUMN expires TEXT;
     UPDATE api_tokens SET id = substr(hash, 1, 16);
     UPDATE api_tokens SET expires = '2000-01-01T00:00:00Z' WHERE name = 'login';
     ALTER TABLE join_tokens ADD COLUMN id TEXT;
     ALTER TABLE join_tokens ADD COLUMN name TEXT;
     ALTER TABLE join_tokens ADD COLUMN replace_removed BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE join_tokens ADD COLUMN expires TEXT;
     UPDATE join_tokens SET id = substr(secret_hash, 1, 16);
     ALTER TABLE nodes ADD COLUMN readmitted BIGINT NOT NULL DEFAULT 0",
    ),
    // Health of catalog points as the last health check of their repository found it ('ok',
    // 'damaged'; NULL: never checked) and what it found wrong; per repository, when the server
    // checks it on its own (a schedule as JSON), when the scheduler last looked, and the last
    // check's outcome (JSON).
    (
        4,
        "ALTER TABLE points ADD COLUMN health TEXT;
     ALTER TABLE points ADD COLUMN health_detail TEXT;
     ALTER TABLE points ADD COLUMN verified_at TEXT;
     ALTER TABLE repositories ADD COLUMN verify_schedule TEXT;
     ALTER TABLE repositories ADD COLUMN verify_last_check TEXT;
     ALTER TABLE repositories ADD COLUMN last_verify TEXT",
    ),
    // Why a failed task failed ('transient': retried by its job's policy; 'permanent': not);
    // restores as sessions of their own ('restore', job ''), whose one task holds what to
    // restore where (JSON) and takes a slot like a backup; one running session per job only
    // among backups.
    (
        5,
        "ALTER TABLE tasks ADD COLUMN failure TEXT;
     ALTER TABLE tasks ADD COLUMN restore TEXT;
     ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';
     DROP INDEX sessions_one_running;
     CREATE UNIQUE INDEX sessions_one_running ON sessions (job) WHERE status = 'running' AND kind = 'backup'",
    ),
    // Points published over NBD for instant recovery: where (the transport node serving it and
    // the address), until when, and who asked.
    (
        6,
        "CREATE TABLE exports (
       id TEXT PRIMARY KEY, point TEXT NOT NULL, volume BIGINT NOT NULL, transport TEXT NOT NULL,
       url TEXT NOT NULL, size BIGINT NOT NULL, writable BIGINT NOT NULL, allowed_ip TEXT,
       created TEXT NOT NULL, expires TEXT NOT NULL, created_by TEXT NOT NULL)",
    ),
    // Immutable repositories: the days each point is locked for, as the transport node reported
    // when the repository was created.
    (7, "ALTER TABLE repositories ADD COLUMN immutable_days BIGINT"),
    // Scale-out repositories: a name for several repositories (extents), how new chains are
    // placed among them, and which extent is in maintenance.
    (
        8,
        "CREATE TABLE scale_out (name TEXT PRIMARY KEY, policy TEXT NOT NULL, created TEXT NOT NULL);
     CREATE TABLE extents (repository TEXT PRIMARY KEY, scale_out TEXT NOT NULL,
       maintenance BIGINT NOT NULL DEFAULT 0, added TEXT NOT NULL)",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Seals the secrets the database holds (see [`crate::secrets`]).
    pub secrets: Secrets,
}

/// Now, as the database stores times.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// A time to the second, in one fixed width, so that the database compares such times as text
/// (expiries).
pub fn stamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// [`stamp`] of now plus `seconds`.
pub fn stamp_in(seconds: i64) -> String {
    stamp(jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(seconds)).unwrap_or(jiff::Timestamp::MAX))
}

impl Db {
    /// Opens `url` (`sqlite:///path/file.db` or `postgres://…`) and brings its schema up to date;
    /// `secrets` seals what it stores of passwords.
    pub async fn open(url: &str, secrets: Secrets) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") { Backend::Postgres } else { Backend::Sqlite };
        let url_full =
            if backend == Backend::Sqlite && !url.contains('?') { format!("{url}?mode=rwc") } else { url.into() };
        // SQLite serialises writers anyway; one connection avoids "database is locked".
        let max = if backend == Backend::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url_full)
            .await
            .map_err(|source| DbError::Open { url: redact(url), source })?;
        let db = Db { pool, backend, secrets };
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&db.pool).await?;
            sqlx::query("PRAGMA synchronous = FULL").execute(&db.pool).await?;
        }
        db.migrate().await?;
        crate::store::seal_clear_passwords(&db).await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&self.pool).await?;
        let current: Option<i64> =
            sqlx::query("SELECT MAX(version) AS v FROM schema_version").fetch_one(&self.pool).await?.try_get("v").ok();
        let current = current.unwrap_or(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(DbError::TooNew { found: current, known });
        }
        for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let mut tx = self.pool.begin().await?;
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await.map_err(|source| DbError::Migration { version, source })?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(version).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Text column helpers: the Any driver hands back what the backend has.
pub fn text(row: &AnyRow, col: &str) -> String {
    row.try_get::<String, _>(col).unwrap_or_default()
}

pub fn opt_text(row: &AnyRow, col: &str) -> Option<String> {
    row.try_get::<Option<String>, _>(col).ok().flatten()
}

pub fn int(row: &AnyRow, col: &str) -> i64 {
    row.try_get::<i64, _>(col).unwrap_or_default()
}

pub fn opt_int(row: &AnyRow, col: &str) -> Option<i64> {
    row.try_get::<Option<i64>, _>(col).ok().flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_their_passwords_in_messages() {
        assert_eq!(super::redact("postgres://bw:s3cret@localhost/bulwark"), "postgres://bw:***@localhost/bulwark");
        assert_eq!(super::redact("sqlite:///var/lib/bulwark/config.db"), "sqlite:///var/lib/bulwark/config.db");
    }
}
