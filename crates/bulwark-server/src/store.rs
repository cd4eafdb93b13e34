//! The config database's objects: reads and writes, one function each.

use serde_json::Value;
use sqlx::any::AnyRow;

use bulwark_proto::domain::{Failure, SessionKind, SessionStatus, TaskStatus};
use sqlx::Row;
use utoipa::ToSchema;

use crate::db::{int, now, opt_int, opt_text, stamp_in, text, Db, Result};
use crate::model::{Job, RepositoryInput, RepositoryUpdate};
use crate::registration::{admission, Grant, JoinedNode, Known, NodeStore};
use crate::resource_scheduler::Waiting;
use crate::secrets::Secrets;
use crate::task_driver::RestoreOrder;
use bulwark_proto::pki::Role;

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("random source");
    hex::encode(b)
}

// ---- users and API tokens ----

pub async fn user_count(db: &Db) -> Result<i64> {
    Ok(int(&sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&db.pool).await?, "n"))
}

pub async fn create_user(db: &Db, name: &str, password_hash: &str, role: &str) -> Result<String> {
    let id = random_hex(8);
    sqlx::query("INSERT INTO users (id, name, password_hash, role, created) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(name)
        .bind(password_hash)
        .bind(role)
        .bind(now())
        .execute(&db.pool)
        .await?;
    Ok(id)
}

/// (user id, password hash, role) of a user.
pub async fn user_by_name(db: &Db, name: &str) -> Result<Option<(String, String, String)>> {
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| (text(&r, "id"), text(&r, "password_hash"), text(&r, "role"))))
}

/// A token's id: the start of its hash, so that listing and revoking never need the secret.
fn token_id(hash: &str) -> String {
    hash[..16].to_string()
}

/// A new API token for a user, valid until `expires` ([`crate::db::stamp`]) or for good; only
/// its hash is stored. Its id and the token.
pub async fn create_api_token(db: &Db, user_id: &str, name: &str, expires: Option<String>) -> Result<(String, String)> {
    let token = format!("bwa1.{}", random_hex(24));
    let hash = sha256_hex(&token);
    sqlx::query("INSERT INTO api_tokens (hash, id, user_id, name, created, expires) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&hash)
        .bind(token_id(&hash))
        .bind(user_id)
        .bind(name)
        .bind(now())
        .bind(expires)
        .execute(&db.pool)
        .await?;
    Ok((token_id(&hash), token))
}

/// Who holds an API token.
#[derive(Debug, Clone)]
pub struct TokenHolder {
    pub user: String,
    pub user_id: String,
    pub role: String,
    /// The token's id.
    pub token: String,
    /// When it expired, if it has.
    pub expired: Option<String>,
}

/// The user behind an API token.
pub async fn token_user(db: &Db, token: &str) -> Result<Option<TokenHolder>> {
    let row = sqlx::query(
        "SELECT u.name AS name, u.id AS uid, u.role AS role, t.id AS id, t.expires AS expires \
         FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1",
    )
    .bind(sha256_hex(token))
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|r| TokenHolder {
        user: text(&r, "name"),
        user_id: text(&r, "uid"),
        role: text(&r, "role"),
        token: text(&r, "id"),
        expired: opt_text(&r, "expires").filter(|e| *e <= stamp_in(0)),
    }))
}

/// Forgets tokens that have expired (logins leave one each).
pub async fn purge_expired_tokens(db: &Db) -> Result<()> {
    let now = stamp_in(0);
    sqlx::query("DELETE FROM api_tokens WHERE expires IS NOT NULL AND expires <= $1")
        .bind(&now)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM join_tokens WHERE used IS NULL AND expires IS NOT NULL AND expires <= $1")
        .bind(&now)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A token as listed: never its secret, only what identifies it.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TokenRow {
    /// A user's API token (a login's is named `login`).
    Api { id: String, user: String, name: String, created: String, expires: Option<String> },
    /// An unused join token.
    Join {
        id: Option<String>,
        /// `agent` or `transport`.
        role: String,
        /// The node name it is for, or `(any new name)`.
        name: String,
        /// May take back the name of a removed node.
        replace: bool,
        created: String,
        expires: Option<String>,
    },
}

/// API tokens (of one user, or everyone's) and, with `join`, unused join tokens.
pub async fn tokens(db: &Db, user_id: Option<&str>, join: bool) -> Result<Vec<TokenRow>> {
    let rows = sqlx::query(
        "SELECT t.id AS id, t.name AS name, t.created AS created, t.expires AS expires, u.name AS uname, \
         u.id AS uid FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut out: Vec<TokenRow> = rows
        .iter()
        .filter(|r| user_id.is_none_or(|u| text(r, "uid") == u))
        .map(|r| TokenRow::Api {
            id: text(r, "id"),
            user: text(r, "uname"),
            name: text(r, "name"),
            created: text(r, "created"),
            expires: opt_text(r, "expires"),
        })
        .collect();
    if join {
        let rows =
            sqlx::query("SELECT * FROM join_tokens WHERE used IS NULL ORDER BY created").fetch_all(&db.pool).await?;
        out.extend(rows.iter().map(|r| TokenRow::Join {
            id: opt_text(r, "id"),
            role: text(r, "role"),
            name: opt_text(r, "name").unwrap_or_else(|| "(any new name)".into()),
            replace: int(r, "replace_removed") != 0,
            created: text(r, "created"),
            expires: opt_text(r, "expires"),
        }));
    }
    Ok(out)
}

/// Revokes the token `id`: an API token (only `user_id`'s, when given), or an unused join
/// token (when `join`). Whether there was one.
pub async fn revoke_token(db: &Db, id: &str, user_id: Option<&str>, join: bool) -> Result<bool> {
    let r = match user_id {
        Some(u) => sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2").bind(id).bind(u),
        None => sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(id),
    }
    .execute(&db.pool)
    .await?;
    if r.rows_affected() > 0 || !join {
        return Ok(r.rows_affected() > 0);
    }
    let r = sqlx::query("DELETE FROM join_tokens WHERE id = $1 AND used IS NULL").bind(id).execute(&db.pool).await?;
    Ok(r.rows_affected() > 0)
}

#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct UserRow {
    pub name: String,
    /// `admin` or `viewer`.
    pub role: String,
    pub created: String,
}

pub async fn users(db: &Db) -> Result<Vec<UserRow>> {
    let rows = sqlx::query("SELECT name, role, created FROM users ORDER BY name").fetch_all(&db.pool).await?;
    Ok(rows
        .iter()
        .map(|r| UserRow { name: text(r, "name"), role: text(r, "role"), created: text(r, "created") })
        .collect())
}

/// Sets a user's password; their login tokens but `keep` (the caller's) are revoked, so a
/// password believed stolen takes the sessions opened with it along.
pub async fn set_password(db: &Db, user_id: &str, password_hash: &str, keep: Option<&str>) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(password_hash)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    // Every token of the user but the caller's: a token minted with a stolen login token must
    // not outlive the password change either.
    sqlx::query("DELETE FROM api_tokens WHERE user_id = $1 AND id <> $2")
        .bind(user_id)
        .bind(keep.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Why a user was not deleted.
#[derive(Debug, PartialEq, Eq)]
pub enum UserDeletion {
    Deleted,
    NoSuchUser,
    LastAdmin,
}

/// Deletes a user and their tokens, unless they are the last admin.
pub async fn delete_user(db: &Db, name: &str) -> Result<UserDeletion> {
    let mut tx = db.pool.begin().await?;
    let Some(u) = sqlx::query("SELECT id, role FROM users WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?
    else {
        return Ok(UserDeletion::NoSuchUser);
    };
    if text(&u, "role") == "admin" {
        let admins = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin'").fetch_one(&mut *tx).await?;
        if int(&admins, "n") <= 1 {
            return Ok(UserDeletion::LastAdmin);
        }
    }
    sqlx::query("DELETE FROM api_tokens WHERE user_id = $1").bind(text(&u, "id")).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(text(&u, "id")).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(UserDeletion::Deleted)
}

// ---- join tokens and nodes ----

/// Records a join token for what `grant` allows, until `expires`; its id.
pub async fn create_join_token(db: &Db, secret: &str, grant: &Grant, expires: Option<String>) -> Result<String> {
    let hash = sha256_hex(secret);
    sqlx::query(
        "INSERT INTO join_tokens (secret_hash, id, role, name, replace_removed, created, expires) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&hash)
    .bind(token_id(&hash))
    .bind(grant.role.as_str())
    .bind(grant.name.clone())
    .bind(i64::from(grant.replace))
    .bind(now())
    .bind(expires)
    .execute(&db.pool)
    .await?;
    Ok(token_id(&hash))
}

/// A joined node: a computer's agent or a transport node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct NodeRow {
    pub name: String,
    pub role: String,
    /// host:port of its service.
    pub address: String,
    pub certificate_serial: String,
    pub joined: String,
    /// Removed: its certificate is revoked.
    pub revoked: bool,
    /// A computer's last known inventory (the agent's report: devices, filesystems).
    pub inventory: Option<Value>,
    /// Whether it answered just now (only where the API asked it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

impl NodeRow {
    /// Where the task driver reaches it.
    pub fn address(&self) -> crate::task_driver::NodeAddress {
        crate::task_driver::NodeAddress { name: self.name.clone(), address: self.address.clone() }
    }
}

fn node_row(r: &AnyRow) -> NodeRow {
    NodeRow {
        name: text(r, "name"),
        role: text(r, "role"),
        address: text(r, "address"),
        certificate_serial: text(r, "serial"),
        joined: text(r, "joined"),
        revoked: int(r, "revoked") != 0,
        inventory: opt_text(r, "inventory").and_then(|i| serde_json::from_str::<Value>(&i).ok()),
        online: None,
    }
}

pub async fn nodes(db: &Db, role: &str) -> Result<Vec<NodeRow>> {
    let rows = sqlx::query("SELECT * FROM nodes WHERE role = $1 ORDER BY name").bind(role).fetch_all(&db.pool).await?;
    Ok(rows.iter().map(node_row).collect())
}

pub async fn node(db: &Db, role: &str, name: &str) -> Result<Option<NodeRow>> {
    let row = sqlx::query("SELECT * FROM nodes WHERE role = $1 AND name = $2")
        .bind(role)
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(node_row))
}

pub async fn set_inventory(db: &Db, name: &str, inventory: &Value) -> Result<()> {
    sqlx::query("UPDATE nodes SET inventory = $1 WHERE name = $2")
        .bind(inventory.to_string())
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Marks a node removed and its certificate revoked for good (a later join of the same name
/// gets a new certificate; the old one stays revoked).
pub async fn revoke_node(db: &Db, role: &str, name: &str) -> Result<bool> {
    let Some(row) = sqlx::query("SELECT serial FROM nodes WHERE role = $1 AND name = $2")
        .bind(role)
        .bind(name)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(false);
    };
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE nodes SET revoked = 1 WHERE role = $1 AND name = $2")
        .bind(role)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM revoked_certificates WHERE serial = $1")
        .bind(text(&row, "serial"))
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO revoked_certificates (serial, node, revoked) VALUES ($1, $2, $3)")
        .bind(text(&row, "serial"))
        .bind(name)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Lets a removed node's name join again (with a token made for that name). `None` if there
/// is no such node, `Some(false)` if it was not removed.
pub async fn readmit_node(db: &Db, role: &str, name: &str) -> Result<Option<bool>> {
    let r = sqlx::query("UPDATE nodes SET readmitted = 1 WHERE role = $1 AND name = $2 AND revoked = 1")
        .bind(role)
        .bind(name)
        .execute(&db.pool)
        .await?;
    if r.rows_affected() == 1 {
        return Ok(Some(true));
    }
    Ok(node(db, role, name).await?.map(|_| false))
}

pub async fn revoked_serials(db: &Db) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT serial FROM revoked_certificates").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(|r| text(r, "serial")).collect())
}

/// Tasks not yet ended on a repository.
pub async fn open_tasks_on(db: &Db, repository: &str) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM tasks WHERE repository = $1 AND status IN ('waiting', 'running')")
        .bind(repository)
        .fetch_one(&db.pool)
        .await?;
    Ok(int(&r, "n"))
}

/// Join tokens and nodes in the config database.
pub struct DbNodes(pub Db);

impl DbNodes {
    /// [`NodeStore::admit`] within one transaction: the token is spent and the node recorded
    /// together, or neither.
    async fn admit_in(&self, secret: &str, role: Role, n: &JoinedNode) -> std::result::Result<(), Refusal> {
        let mut tx = self.0.pool.begin().await?;
        let hash = sha256_hex(secret);
        let token = sqlx::query("SELECT * FROM join_tokens WHERE secret_hash = $1 AND used IS NULL")
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Refusal::No("unknown or already used join token".into()))?;
        if let Some(e) = opt_text(&token, "expires").filter(|e| *e <= stamp_in(0)) {
            return Err(Refusal::No(format!("the join token expired at {e}; create another")));
        }
        let grant = Grant {
            role: text(&token, "role").parse().map_err(Refusal::No)?,
            name: opt_text(&token, "name"),
            replace: int(&token, "replace_removed") != 0,
        };
        let known = sqlx::query("SELECT role, revoked, readmitted FROM nodes WHERE name = $1")
            .bind(&n.name)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Known {
                role: text(&r, "role"),
                removed: int(&r, "revoked") != 0,
                readmitted: int(&r, "readmitted") != 0,
            });
        let referenced = grant.name.is_none() && known.is_none() && referenced(&mut tx, &n.name).await?;
        admission(&grant, role, &n.name, known.as_ref(), referenced).map_err(Refusal::No)?;
        let spent = sqlx::query("UPDATE join_tokens SET used = $1 WHERE secret_hash = $2 AND used IS NULL")
            .bind(now())
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        if spent.rows_affected() != 1 {
            return Err(Refusal::No("unknown or already used join token".into()));
        }
        let q = if known.is_some() {
            "UPDATE nodes SET address = $1, serial = $2, joined = $3, revoked = 0, readmitted = 0 WHERE name = $4"
        } else {
            "INSERT INTO nodes (address, serial, joined, name, role) VALUES ($1, $2, $3, $4, $5)"
        };
        let mut q = sqlx::query(q).bind(&n.address).bind(&n.serial).bind(now()).bind(&n.name);
        if known.is_none() {
            q = q.bind(&n.role);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Whether jobs, groups or catalog points name the computer `name`.
async fn referenced(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> std::result::Result<bool, sqlx::Error> {
    let points =
        sqlx::query("SELECT COUNT(*) AS n FROM points WHERE computer = $1").bind(name).fetch_one(&mut **tx).await?;
    if int(&points, "n") > 0 {
        return Ok(true);
    }
    let names = |json: &str| serde_json::from_str::<Vec<String>>(json).unwrap_or_default();
    let groups = sqlx::query("SELECT computers FROM groups").fetch_all(&mut **tx).await?;
    if groups.iter().any(|g| names(&text(g, "computers")).iter().any(|c| c == name)) {
        return Ok(true);
    }
    let jobs = sqlx::query("SELECT spec FROM jobs").fetch_all(&mut **tx).await?;
    Ok(jobs
        .iter()
        .filter_map(|j| serde_json::from_str::<Job>(&text(j, "spec")).ok())
        .any(|j| j.computers.iter().any(|c| c == name)))
}

/// Why a join was refused: the token does not allow it, or the database failed.
enum Refusal {
    No(String),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Db(e)
    }
}

#[tonic::async_trait]
impl NodeStore for DbNodes {
    async fn admit(&self, secret: &str, role: Role, node: JoinedNode) -> std::result::Result<(), String> {
        match self.admit_in(secret, role, &node).await {
            Ok(()) => Ok(()),
            Err(Refusal::No(why)) => Err(why),
            Err(Refusal::Db(e)) => {
                tracing::warn!("config database: recording {role} {}: {e}", node.name);
                Err("the server could not record the node (see its log); try again".into())
            }
        }
    }
}

// ---- repositories and groups ----

/// A repository as operators see it (never its password).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct RepositoryRow {
    pub name: String,
    pub transport: String,
    pub path: String,
    pub max_tasks: i64,
    pub encrypted: bool,
    pub created: String,
    pub isolation: String,
    /// Days each point is locked for (an immutable repository).
    pub immutable_days: Option<i64>,
    pub verify_schedule: Option<crate::schedule::Schedule>,
    /// The last health check's outcome: when (`at`), `ok`, and the counts of `points`,
    /// `damaged`, `missing` and `unknown` ones, or the `error` that kept it from running.
    pub last_verify: Option<Value>,
    /// What it takes of its storage and what is left, as last measured (null until measured:
    /// listings measure in the background every few minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RepositoryUsage>,
    /// After a create: whether the transport node made it (or found one there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_on_disk: Option<bool>,
}

/// A repository's size, its storage's room, and how much its points' sources shrank in it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct RepositoryUsage {
    /// Every object it holds (chunks, packs, indexes, manifests), as its storage counts them.
    pub stored_bytes: u64,
    pub objects: u64,
    /// The filesystem it is on (a directory); null for object stores, which report no capacity.
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// What its catalog points are copies of: each point's source size, summed.
    pub source_bytes: u64,
    /// `source_bytes` / `stored_bytes`: deduplication and compression together (null when
    /// nothing is stored).
    pub reduction: Option<f64>,
    pub measured_at: String,
}

fn repository_row(r: &AnyRow) -> RepositoryRow {
    RepositoryRow {
        name: text(r, "name"),
        transport: text(r, "transport"),
        path: text(r, "path"),
        max_tasks: int(r, "max_tasks"),
        encrypted: opt_text(r, "password").is_some(),
        created: text(r, "created"),
        isolation: text(r, "isolation"),
        immutable_days: opt_int(r, "immutable_days"),
        verify_schedule: opt_text(r, "verify_schedule").and_then(|s| serde_json::from_str(&s).ok()),
        last_verify: opt_text(r, "last_verify").and_then(|s| serde_json::from_str::<Value>(&s).ok()),
        usage: None,
        created_on_disk: None,
    }
}

/// What a repository's password is sealed for: its row.
fn password_row(repository: &str) -> String {
    format!("repository {repository} password")
}

/// Records a repository the transport node made or found; `immutable_days` as it reported.
pub async fn insert_repository(db: &Db, r: &RepositoryInput, immutable_days: Option<u32>) -> Result<()> {
    let created = now();
    sqlx::query("INSERT INTO repositories (name, transport, path, max_tasks, password, created, isolation, verify_schedule, verify_last_check, immutable_days) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(&r.name)
        .bind(&r.transport)
        .bind(&r.path)
        .bind(r.max_tasks)
        .bind(r.password.as_deref().map(|p| db.secrets.seal(&password_row(&r.name), p)))
        .bind(&created)
        .bind(r.isolation.as_deref().unwrap_or("shared"))
        .bind(r.verify_schedule.as_ref().map(|s| serde_json::to_string(s).expect("schedule")))
        .bind(&created)
        .bind(immutable_days.map(i64::from))
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn repositories(db: &Db) -> Result<Vec<RepositoryRow>> {
    let rows = sqlx::query("SELECT * FROM repositories ORDER BY name").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(repository_row).collect())
}

pub async fn repository(db: &Db, name: &str) -> Result<Option<RepositoryRow>> {
    let row = sqlx::query("SELECT * FROM repositories WHERE name = $1").bind(name).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().map(repository_row))
}

/// (transport, path, password) of a repository.
pub async fn repository_access(db: &Db, name: &str) -> Result<Option<(String, String, Option<String>)>> {
    let row = sqlx::query("SELECT transport, path, password FROM repositories WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let password = open_password(db, name, opt_text(&r, "password"))?;
    Ok(Some((text(&r, "transport"), text(&r, "path"), password)))
}

/// A repository's password as stored (`None`: unencrypted), unsealed.
fn open_password(
    db: &Db,
    repository: &str,
    sealed: Option<String>,
) -> std::result::Result<Option<String>, crate::secrets::SecretError> {
    sealed.map(|s| db.secrets.open(&password_row(repository), &s)).transpose()
}

/// Seals the passwords that servers before sealing stored in clear (once, at start).
pub async fn seal_clear_passwords(db: &Db) -> Result<()> {
    let rows =
        sqlx::query("SELECT name, password FROM repositories WHERE password IS NOT NULL").fetch_all(&db.pool).await?;
    for r in rows {
        let (name, stored) = (text(&r, "name"), text(&r, "password"));
        if !Secrets::is_sealed(&stored) {
            sqlx::query("UPDATE repositories SET password = $1 WHERE name = $2")
                .bind(db.secrets.seal(&password_row(&name), &stored))
                .bind(&name)
                .execute(&db.pool)
                .await?;
            tracing::info!("repository {name}: its password is now sealed in the config database");
        }
    }
    Ok(())
}

/// Changes what `u` gives; whether the repository exists.
pub async fn update_repository(db: &Db, name: &str, u: &RepositoryUpdate) -> Result<bool> {
    let mut tx = db.pool.begin().await?;
    let exists =
        sqlx::query("SELECT name FROM repositories WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?;
    if exists.is_none() {
        return Ok(false);
    }
    if let Some(max_tasks) = u.max_tasks {
        sqlx::query("UPDATE repositories SET max_tasks = $1 WHERE name = $2")
            .bind(max_tasks)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(schedule) = &u.verify_schedule {
        // Counted from now: runs the old schedule (or none) missed do not start a check at once.
        sqlx::query("UPDATE repositories SET verify_schedule = $1, verify_last_check = $2 WHERE name = $3")
            .bind(schedule.as_ref().map(|s| serde_json::to_string(s).expect("schedule")))
            .bind(now())
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A repository whose health the server checks on its own.
#[derive(Debug, Clone)]
pub struct VerifySchedule {
    pub repository: String,
    /// When the repository was recorded: periodic checks count from it.
    pub created: String,
    pub schedule: crate::schedule::Schedule,
    /// When the scheduler last looked.
    pub last_check: Option<String>,
}

/// Repositories with a scheduled health check (a schedule that no longer reads is skipped).
pub async fn verify_schedules(db: &Db) -> Result<Vec<VerifySchedule>> {
    let rows = sqlx::query(
        "SELECT name, created, verify_schedule, verify_last_check FROM repositories WHERE verify_schedule IS NOT NULL",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(VerifySchedule {
                repository: text(r, "name"),
                created: text(r, "created"),
                schedule: serde_json::from_str(&opt_text(r, "verify_schedule")?).ok()?,
                last_check: opt_text(r, "verify_last_check"),
            })
        })
        .collect())
}

pub async fn set_verify_last_check(db: &Db, repository: &str, at: &str) -> Result<()> {
    sqlx::query("UPDATE repositories SET verify_last_check = $1 WHERE name = $2")
        .bind(at)
        .bind(repository)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Records the outcome of a repository's latest health check.
pub async fn set_last_verify(db: &Db, repository: &str, outcome: &Value) -> Result<()> {
    sqlx::query("UPDATE repositories SET last_verify = $1 WHERE name = $2")
        .bind(outcome.to_string())
        .bind(repository)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn delete_row(db: &Db, table: &str, name: &str) -> Result<bool> {
    // `table` is one of ours, never input.
    let r = sqlx::query(&format!("DELETE FROM {table} WHERE name = $1")).bind(name).execute(&db.pool).await?;
    Ok(r.rows_affected() == 1)
}

pub async fn insert_group(db: &Db, name: &str, computers: &[String]) -> Result<()> {
    sqlx::query("INSERT INTO groups (name, computers, created) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(serde_json::to_string(computers).expect("json"))
        .bind(now())
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A protection group: computers a job names together.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct GroupRow {
    pub name: String,
    pub computers: Vec<String>,
    pub created: String,
}

pub async fn groups(db: &Db) -> Result<Vec<GroupRow>> {
    let rows = sqlx::query("SELECT * FROM groups ORDER BY name").fetch_all(&db.pool).await?;
    Ok(rows
        .iter()
        .map(|r| GroupRow {
            name: text(r, "name"),
            computers: serde_json::from_str(&text(r, "computers")).unwrap_or_default(),
            created: text(r, "created"),
        })
        .collect())
}

pub async fn group_members(db: &Db, name: &str) -> Result<Option<Vec<String>>> {
    let row = sqlx::query("SELECT computers FROM groups WHERE name = $1").bind(name).fetch_optional(&db.pool).await?;
    Ok(row.map(|r| serde_json::from_str(&text(&r, "computers")).unwrap_or_default()))
}

// ---- jobs ----

pub async fn insert_job(db: &Db, job: &Job) -> Result<()> {
    sqlx::query("INSERT INTO jobs (name, spec, enabled, created) VALUES ($1, $2, 1, $3)")
        .bind(&job.name)
        .bind(serde_json::to_string(job).expect("json"))
        .bind(now())
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn update_job(db: &Db, job: &Job) -> Result<bool> {
    let r = sqlx::query("UPDATE jobs SET spec = $1 WHERE name = $2")
        .bind(serde_json::to_string(job).expect("json"))
        .bind(&job.name)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Turn a job on or off (off: no scheduled or chained run, no start); false: no such job.
pub async fn set_job_enabled(db: &Db, name: &str, enabled: bool) -> Result<bool> {
    let r = sqlx::query("UPDATE jobs SET enabled = $1 WHERE name = $2")
        .bind(i64::from(enabled))
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// A job with its creation time, whether it is on, and when the scheduler last looked at it.
pub struct JobRow {
    pub job: Job,
    pub created: String,
    pub enabled: bool,
    pub last_check: Option<String>,
}

fn job_row(r: &AnyRow) -> Option<JobRow> {
    Some(JobRow {
        job: serde_json::from_str(&text(r, "spec")).ok()?,
        created: text(r, "created"),
        enabled: int(r, "enabled") != 0,
        last_check: opt_text(r, "last_check"),
    })
}

pub async fn jobs(db: &Db) -> Result<Vec<JobRow>> {
    let rows = sqlx::query("SELECT * FROM jobs ORDER BY name").fetch_all(&db.pool).await?;
    Ok(rows.iter().filter_map(job_row).collect())
}

pub async fn job(db: &Db, name: &str) -> Result<Option<JobRow>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE name = $1").bind(name).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().and_then(job_row))
}

/// When each computer's last good backup (success or warning) of each job ended:
/// (job, computer, ended).
pub async fn last_good_backups(db: &Db) -> Result<Vec<(String, String, String)>> {
    let rows = sqlx::query(
        "SELECT s.job AS job, t.computer AS computer, MAX(t.ended) AS ended FROM tasks t \
         JOIN sessions s ON s.id = t.session_id \
         WHERE s.kind = 'backup' AND t.status IN ('success', 'warning') AND t.ended IS NOT NULL \
         GROUP BY s.job, t.computer",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(|r| (text(r, "job"), text(r, "computer"), text(r, "ended"))).collect())
}

pub async fn set_last_check(db: &Db, name: &str, at: &str) -> Result<()> {
    sqlx::query("UPDATE jobs SET last_check = $1 WHERE name = $2").bind(at).bind(name).execute(&db.pool).await?;
    Ok(())
}

pub async fn jobs_using(db: &Db, field: &str, name: &str) -> Result<Vec<String>> {
    Ok(jobs(db)
        .await?
        .into_iter()
        .filter(|j| match field {
            "repository" => j.job.repository == name,
            "group" => j.job.groups.iter().any(|g| g == name),
            _ => false,
        })
        .map(|j| j.job.name)
        .collect())
}

// ---- secrets for commands ----

fn secret_row(name: &str) -> String {
    format!("secret {name}")
}

/// Stores (or replaces) a secret, sealed.
pub async fn set_secret(db: &Db, name: &str, value: &str) -> Result<()> {
    let sealed = db.secrets.seal(&secret_row(name), value);
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO secrets (name, value, updated) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(sealed)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A secret's name and when it was set: never its value.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct SecretRow {
    pub name: String,
    pub updated: String,
}

pub async fn secret_names(db: &Db) -> Result<Vec<SecretRow>> {
    let rows = sqlx::query("SELECT name, updated FROM secrets ORDER BY name").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(|r| SecretRow { name: text(r, "name"), updated: text(r, "updated") }).collect())
}

/// The values of `names`, unsealed, for a task's commands; `Ok(Err(name))` names one missing.
pub async fn secret_values(db: &Db, names: &[String]) -> Result<std::result::Result<Vec<(String, String)>, String>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let row = sqlx::query("SELECT value FROM secrets WHERE name = $1").bind(name).fetch_optional(&db.pool).await?;
        let Some(r) = row else { return Ok(Err(name.clone())) };
        out.push((name.clone(), db.secrets.open(&secret_row(name), &text(&r, "value"))?));
    }
    Ok(Ok(out))
}

// ---- backup chains ----

/// Whose backup chain a source of a computer in a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chain {
    /// The job's own: its restore points go under this name.
    Ours(String),
    /// Another job (named) backs this source up into the same repository.
    OtherJob(String),
}

/// The backup chain of `source` on `computer` in `repository`, for `job`: the one name under
/// which its restore points are written, found by the retention and as the previous point.
///
/// The name is an identity the server keeps, not a function of strings that two sources can
/// share (`db` + `/prod-data` and `db-prod` + `/data` once made the same name): a readable
/// prefix and a random suffix, unique in the catalog. A chain belongs to one job; another job
/// backing up the same source into the same repository is refused, since each would prune the
/// other's points. A chain whose job was deleted passes to the next job that backs it up. Points
/// written before chains existed keep their name when it is unambiguous: every point of that name
/// in the repository is of this computer and source.
pub async fn chain_for(db: &Db, job: &str, computer: &str, source: &str, repository: &str) -> Result<Chain> {
    let mut last_error = None;
    for attempt in 0..5 {
        let row = sqlx::query("SELECT name, job FROM chains WHERE computer = $1 AND source = $2 AND repository = $3")
            .bind(computer)
            .bind(source)
            .bind(repository)
            .fetch_optional(&db.pool)
            .await?;
        if let Some(r) = row {
            let (name, owner) = (text(&r, "name"), text(&r, "job"));
            if owner == job {
                return Ok(Chain::Ours(name));
            }
            if job_exists(db, &owner).await? {
                return Ok(Chain::OtherJob(owner));
            }
            sqlx::query("UPDATE chains SET job = $1 WHERE name = $2 AND job = $3")
                .bind(job)
                .bind(&name)
                .bind(&owner)
                .execute(&db.pool)
                .await?;
            continue;
        }
        let name = match attempt {
            0 => legacy_name(db, computer, source, repository).await?,
            _ => None,
        }
        .unwrap_or_else(|| {
            let mut readable = Job::point_name(computer, source);
            readable.truncate(120);
            format!("{readable}.{}", random_hex(3))
        });
        let inserted = sqlx::query(
            "INSERT INTO chains (name, job, computer, source, repository, created) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&name)
        .bind(job)
        .bind(computer)
        .bind(source)
        .bind(repository)
        .bind(now())
        .execute(&db.pool)
        .await;
        match inserted {
            Ok(_) => return Ok(Chain::Ours(name)),
            // The name was taken, or another task made this chain meanwhile: look again.
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("five failed inserts").into())
}

async fn job_exists(db: &Db, name: &str) -> Result<bool> {
    Ok(sqlx::query("SELECT name FROM jobs WHERE name = $1").bind(name).fetch_optional(&db.pool).await?.is_some())
}

/// The name points of this source had before chains, if it is unambiguously theirs.
async fn legacy_name(db: &Db, computer: &str, source: &str, repository: &str) -> Result<Option<String>> {
    let legacy = Job::point_name(computer, source);
    let taken = sqlx::query("SELECT name FROM chains WHERE name = $1").bind(&legacy).fetch_optional(&db.pool).await?;
    if taken.is_some() {
        return Ok(None);
    }
    let rows = sqlx::query("SELECT computer, manifest FROM points WHERE name = $1 AND repository = $2")
        .bind(&legacy)
        .bind(repository)
        .fetch_all(&db.pool)
        .await?;
    let theirs = |r: &AnyRow| {
        let m: Option<Value> = serde_json::from_str(&text(r, "manifest")).ok();
        text(r, "computer") == computer && m.is_some_and(|m| m["source"] == source)
    };
    Ok((!rows.is_empty() && rows.iter().all(theirs)).then_some(legacy))
}

/// Frees the chains of a deleted job: nobody's retention prunes them; the next job that backs
/// one of their sources up into the same repository takes it over.
pub async fn release_chains(db: &Db, job: &str) -> Result<()> {
    sqlx::query("UPDATE chains SET job = '' WHERE job = $1").bind(job).execute(&db.pool).await?;
    Ok(())
}

/// The names of a job's chains on one computer in one repository: what its retention prunes.
pub async fn chain_names(db: &Db, job: &str, computer: &str, repository: &str) -> Result<Vec<String>> {
    let rows =
        sqlx::query("SELECT name FROM chains WHERE job = $1 AND computer = $2 AND repository = $3 ORDER BY name")
            .bind(job)
            .bind(computer)
            .bind(repository)
            .fetch_all(&db.pool)
            .await?;
    Ok(rows.iter().map(|r| text(r, "name")).collect())
}

// ---- sessions and tasks ----

/// A session as operators see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct SessionRow {
    pub id: String,
    /// The job it runs ('' for a restore).
    pub job: String,
    #[schema(value_type = crate::openapi::SessionKind)]
    pub kind: SessionKind,
    #[schema(value_type = crate::openapi::SessionStatus)]
    pub status: SessionStatus,
    /// Why it ended as it did (stopped, a window closed).
    pub reason: Option<String>,
    pub started: String,
    pub ended: Option<String>,
    /// With [`session_with`], while a retry waits: when the first one is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    /// In listings: bytes its tasks sent, all attempts together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_bytes: Option<u64>,
    /// In listings: what went wrong or earned a warning (`null` when all is well).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Option<String>>,
    /// With [`session_with`]: its tasks, in queue order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskRow>>,
}

fn session_row(r: &AnyRow) -> SessionRow {
    SessionRow {
        id: text(r, "id"),
        job: text(r, "job"),
        kind: text(r, "kind").parse().unwrap_or(SessionKind::Backup),
        status: text(r, "status").parse().unwrap_or(SessionStatus::Failed),
        reason: opt_text(r, "reason"),
        started: text(r, "started"),
        ended: opt_text(r, "ended"),
        next_retry: None,
        sent_bytes: None,
        problem: None,
        tasks: None,
    }
}

/// A task as operators see it: one attempt of one computer in a session.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct TaskRow {
    pub id: String,
    pub session: String,
    pub computer: String,
    pub repository: String,
    pub attempt: i64,
    #[schema(value_type = crate::openapi::TaskStatus)]
    pub status: TaskStatus,
    pub error: Option<String>,
    /// Failed: whether its job's retries apply.
    #[schema(value_type = Option<crate::openapi::Failure>)]
    pub failure: Option<Failure>,
    pub queued: String,
    /// Waiting: not before this time (a retry's delay).
    pub not_before: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub sent_bytes: i64,
    /// Its log: `lines` and the agent's `reports` (absent from light reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<Value>,
    /// The latest progress report while it runs (filled in by the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<TaskProgress>,
}

/// How far a running task is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct TaskProgress {
    pub total_bytes: u64,
    pub read_bytes: u64,
    pub sent_bytes: u64,
    pub rate_bytes_per_s: u64,
}

fn task_row(r: &AnyRow, logs: bool) -> TaskRow {
    TaskRow {
        id: text(r, "id"),
        session: text(r, "session_id"),
        computer: text(r, "computer"),
        repository: text(r, "repository"),
        attempt: int(r, "attempt"),
        status: text(r, "status").parse().unwrap_or(TaskStatus::Failed),
        error: opt_text(r, "error"),
        failure: opt_text(r, "failure").and_then(|f| f.parse().ok()),
        queued: text(r, "queued"),
        not_before: opt_text(r, "not_before"),
        started: opt_text(r, "started"),
        ended: opt_text(r, "ended"),
        sent_bytes: int(r, "sent_bytes"),
        log: logs.then(|| opt_text(r, "log").and_then(|l| serde_json::from_str(&l).ok()).unwrap_or(Value::Null)),
        progress: None,
    }
}

pub async fn insert_session(db: &Db, id: &str, job: &str, kind: SessionKind) -> Result<()> {
    sqlx::query("INSERT INTO sessions (id, job, status, started, kind) VALUES ($1, $2, 'running', $3, $4)")
        .bind(id)
        .bind(job)
        .bind(now())
        .bind(kind.as_str())
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// The running backup session of a job.
pub async fn running_session(db: &Db, job: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT id FROM sessions WHERE job = $1 AND status = 'running' AND kind = 'backup'")
        .bind(job)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| text(&r, "id")))
}

/// Sessions still running (after a restart: to settle, and to re-arm their windows).
pub async fn running_sessions(db: &Db) -> Result<Vec<SessionRow>> {
    let rows = sqlx::query("SELECT * FROM sessions WHERE status = 'running'").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(session_row).collect())
}

/// Ends a running session; `false` if it had ended already.
pub async fn end_session(db: &Db, id: &str, status: SessionStatus, reason: Option<&str>) -> Result<bool> {
    let r =
        sqlx::query("UPDATE sessions SET status = $1, reason = $2, ended = $3 WHERE id = $4 AND status = 'running'")
            .bind(status.as_str())
            .bind(reason.map(str::to_string))
            .bind(now())
            .bind(id)
            .execute(&db.pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// Sessions, newest first (the API's order since the start); of one job when given, started at
/// or after `since` when given (a stamp as [`crate::db::stamp`] writes them), at most `limit`.
/// Which sessions a listing wants, newest first.
#[derive(Debug, Default)]
pub struct SessionSelect<'a> {
    pub job: Option<&'a str>,
    /// Started at or after.
    pub since: Option<&'a str>,
    pub status: Option<&'a str>,
    pub limit: Option<u32>,
    pub offset: u32,
}

pub async fn sessions(db: &Db, select: &SessionSelect<'_>) -> Result<Vec<SessionRow>> {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    for (column, value) in [("job = ", select.job), ("started >= ", select.since), ("status = ", select.status)] {
        if let Some(v) = value {
            values.push(v);
            conditions.push(format!("{column}${}", values.len()));
        }
    }
    let mut sql = String::from("SELECT * FROM sessions");
    if !conditions.is_empty() {
        sql = format!("{sql} WHERE {}", conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY started DESC, id DESC");
    sql.push_str(&limit_offset(select.limit, select.offset));
    let mut q = sqlx::query(&sql);
    for value in values {
        q = q.bind(value);
    }
    Ok(q.fetch_all(&db.pool).await?.iter().map(session_row).collect())
}

/// The latest session of a job.
pub async fn last_session(db: &Db, job: &str) -> Result<Option<SessionRow>> {
    let row = sqlx::query("SELECT * FROM sessions WHERE job = $1 ORDER BY started DESC, id DESC LIMIT 1")
        .bind(job)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(session_row))
}

/// A session and its tasks, with or without the tasks' logs (which can be long).
pub async fn session_with(db: &Db, id: &str, logs: bool) -> Result<Option<SessionRow>> {
    let Some(row) = sqlx::query("SELECT * FROM sessions WHERE id = $1").bind(id).fetch_optional(&db.pool).await? else {
        return Ok(None);
    };
    let mut s = session_row(&row);
    let tasks = tasks(db, id, logs).await?;
    s.next_retry = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Waiting)
        .filter_map(|t| t.not_before.as_deref()?.parse::<jiff::Timestamp>().ok())
        .min()
        .map(|t| t.to_string());
    s.tasks = Some(tasks);
    Ok(Some(s))
}

/// A session's tasks in queue order.
pub async fn tasks(db: &Db, session: &str, logs: bool) -> Result<Vec<TaskRow>> {
    let rows =
        sqlx::query("SELECT * FROM tasks WHERE session_id = $1 ORDER BY seq").bind(session).fetch_all(&db.pool).await?;
    Ok(rows.iter().map(|r| task_row(r, logs)).collect())
}

/// One task.
pub async fn task(db: &Db, id: &str) -> Result<Option<TaskRow>> {
    let row = sqlx::query("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().map(|r| task_row(r, true)))
}

/// A task to queue.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    pub id: String,
    pub session: &'a str,
    pub computer: &'a str,
    pub repository: &'a str,
    pub priority: i64,
    pub seq: i64,
    pub attempt: i64,
    pub not_before: Option<String>,
    /// A restore: what to restore where.
    pub restore: Option<&'a RestoreOrder>,
}

pub async fn insert_task(db: &Db, t: &NewTask<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (id, session_id, computer, repository, priority, seq, attempt, status, queued, not_before, restore)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'waiting', $8, $9, $10)",
    )
    .bind(&t.id)
    .bind(t.session)
    .bind(t.computer)
    .bind(t.repository)
    .bind(t.priority)
    .bind(t.seq)
    .bind(t.attempt)
    .bind(now())
    .bind(t.not_before.clone())
    .bind(t.restore.map(|r| serde_json::to_string(r).expect("restore order")))
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The highest queue position given so far.
pub async fn max_task_seq(db: &Db) -> Result<i64> {
    let max = sqlx::query("SELECT MAX(seq) AS m FROM tasks").fetch_one(&db.pool).await?;
    Ok(max.try_get::<Option<i64>, _>("m").ok().flatten().unwrap_or(0))
}

/// Cancels a session's waiting tasks.
pub async fn cancel_waiting(db: &Db, session: &str) -> Result<()> {
    sqlx::query("UPDATE tasks SET status = 'cancelled', ended = $1 WHERE session_id = $2 AND status = 'waiting'")
        .bind(now())
        .bind(session)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A running task: what holds a slot.
#[derive(Debug, Clone)]
pub struct RunningTask {
    pub id: String,
    pub session: String,
    pub computer: String,
    pub repository: String,
}

/// Running tasks, of one session or all.
pub async fn running_tasks(db: &Db, session: Option<&str>) -> Result<Vec<RunningTask>> {
    let rows = match session {
        Some(s) => {
            sqlx::query("SELECT * FROM tasks WHERE status = 'running' AND session_id = $1")
                .bind(s)
                .fetch_all(&db.pool)
                .await?
        }
        None => sqlx::query("SELECT * FROM tasks WHERE status = 'running'").fetch_all(&db.pool).await?,
    };
    Ok(rows
        .iter()
        .map(|r| RunningTask {
            id: text(r, "id"),
            session: text(r, "session_id"),
            computer: text(r, "computer"),
            repository: text(r, "repository"),
        })
        .collect())
}

/// Every repository's task maximum.
pub async fn repository_limits(db: &Db) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT name, max_tasks FROM repositories").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(|r| (text(r, "name"), int(r, "max_tasks"))).collect())
}

/// A page of the tasks waiting on a repository in running sessions, in grant order.
pub async fn waiting_tasks(db: &Db, repository: &str, offset: i64, limit: i64) -> Result<Vec<Waiting>> {
    let rows = sqlx::query(
        "SELECT id, computer, repository, priority, seq, not_before FROM tasks WHERE status = 'waiting' AND repository = $1
         AND session_id IN (SELECT id FROM sessions WHERE status = 'running')
         ORDER BY priority DESC, seq ASC LIMIT $2 OFFSET $3",
    )
    .bind(repository)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Waiting {
            id: text(r, "id"),
            computer: text(r, "computer"),
            repository: text(r, "repository"),
            priority: int(r, "priority"),
            seq: int(r, "seq"),
            not_before: opt_text(r, "not_before").and_then(|t| t.parse().ok()),
        })
        .collect())
}

/// Marks a granted task running; `false` if it was no longer waiting.
pub async fn mark_running(db: &Db, id: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE tasks SET status = 'running', started = $1 WHERE id = $2 AND status = 'waiting'")
        .bind(now())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How a task ended, as recorded.
#[derive(Debug, Clone)]
pub struct TaskEnd {
    pub status: TaskStatus,
    pub error: Option<String>,
    pub failure: Option<Failure>,
    pub log: Value,
    pub sent_bytes: i64,
}

pub async fn end_task(db: &Db, id: &str, end: &TaskEnd) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET status = $1, error = $2, failure = $3, log = $4, ended = $5, sent_bytes = $6 WHERE id = $7",
    )
    .bind(end.status.as_str())
    .bind(end.error.clone())
    .bind(end.failure.map(|f| f.as_str().to_string()))
    .bind(end.log.to_string())
    .bind(now())
    .bind(end.sent_bytes)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Ends a task that never got a slot, failed for good for `error`; returns its session, or
/// `None` if it was not waiting any more.
pub async fn fail_waiting(db: &Db, id: &str, error: &str) -> Result<Option<String>> {
    let done = sqlx::query(
        "UPDATE tasks SET status = $1, error = $2, failure = $3, log = $4, ended = $5 WHERE id = $6 AND status = 'waiting'",
    )
    .bind(TaskStatus::Failed.as_str())
    .bind(format!("{error} (not retried: this fails again until changed)"))
    .bind(Failure::Permanent.as_str())
    .bind(serde_json::json!({"lines": [error]}).to_string())
    .bind(now())
    .bind(id)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    Ok(task(db, id).await?.map(|t| t.session))
}

/// Tasks of a session still waiting or running.
pub async fn open_task_count(db: &Db, session: &str) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM tasks WHERE session_id = $1 AND status IN ('waiting', 'running')")
        .bind(session)
        .fetch_one(&db.pool)
        .await?;
    Ok(int(&r, "n"))
}

/// Where a repository is and how to open it.
#[derive(Debug, Clone)]
pub struct RepositoryAccess {
    pub transport: String,
    /// The transport node's address; `None` if it has gone.
    pub transport_address: Option<String>,
    pub path: String,
    /// Unsealed: the password (`None`: unencrypted), or why it cannot be unsealed (a database
    /// moved without the server's secret key): the task fails for that reason, not the read.
    pub password: std::result::Result<Option<String>, String>,
}

/// Everything the task driver needs of a granted task, read at once.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub id: String,
    pub session: String,
    pub kind: SessionKind,
    pub computer: String,
    pub repository: String,
    /// A backup's job (`None` if it was deleted meanwhile).
    pub job: Option<Job>,
    /// The computer's agent address; `None` if it never joined or was removed.
    pub agent_address: Option<String>,
    /// `None` if the repository was forgotten meanwhile.
    pub access: Option<RepositoryAccess>,
    pub restore: Option<RestoreOrder>,
}

pub async fn task_context(db: &Db, id: &str) -> Result<Option<TaskContext>> {
    let row = sqlx::query(
        "SELECT t.id, t.session_id, t.computer, t.repository, t.restore, s.kind, j.spec,
                a.address AS agent_address, a.revoked AS agent_revoked,
                r.transport, r.path, r.password, n.address AS transport_address
         FROM tasks t JOIN sessions s ON s.id = t.session_id
         LEFT JOIN jobs j ON j.name = s.job
         LEFT JOIN nodes a ON a.role = 'agent' AND a.name = t.computer
         LEFT JOIN repositories r ON r.name = t.repository
         LEFT JOIN nodes n ON n.role = 'transport' AND n.name = r.transport
         WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let repository = text(&r, "repository");
    let access = opt_text(&r, "path").map(|path| RepositoryAccess {
        transport: text(&r, "transport"),
        transport_address: opt_text(&r, "transport_address"),
        path,
        password: open_password(db, &repository, opt_text(&r, "password")).map_err(|e| e.to_string()),
    });

    let revoked = r.try_get::<Option<i64>, _>("agent_revoked").ok().flatten().unwrap_or(0) != 0;
    Ok(Some(TaskContext {
        id: text(&r, "id"),
        session: text(&r, "session_id"),
        kind: text(&r, "kind").parse().unwrap_or(SessionKind::Backup),
        computer: text(&r, "computer"),
        repository,
        job: opt_text(&r, "spec").and_then(|s| serde_json::from_str(&s).ok()),
        agent_address: opt_text(&r, "agent_address").filter(|_| !revoked),
        access,
        restore: opt_text(&r, "restore").and_then(|s| serde_json::from_str(&s).ok()),
    }))
}

/// Removes points from the catalog (retention deleted them from their repository).
pub async fn delete_points(db: &Db, ids: &[String]) -> Result<()> {
    for id in ids {
        sqlx::query("DELETE FROM points WHERE id = $1").bind(id).execute(&db.pool).await?;
    }
    Ok(())
}

// ---- points ----

pub async fn insert_point(
    db: &Db,
    repository: &str,
    task: &str,
    computer: &str,
    m: &bulwark_repo::Manifest,
) -> Result<()> {
    sqlx::query("INSERT INTO points (id, repository, task_id, computer, name, kind, created, manifest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(m.id.as_str())
        .bind(repository)
        .bind(task)
        .bind(computer)
        .bind(&m.name)
        .bind(format!("{:?}", m.kind).to_lowercase())
        .bind(m.created.to_rfc3339())
        .bind(serde_json::to_string(m).expect("manifest"))
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A restore point in the catalog.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct PointRow {
    pub id: String,
    pub repository: String,
    pub computer: String,
    /// Its backup name (chain).
    pub name: String,
    pub kind: String,
    pub created: String,
    /// The task that wrote it.
    pub task: Option<String>,
    /// As the last health check of its repository found it: ok, damaged or `None` (never checked).
    pub health: Option<String>,
    pub health_detail: Option<String>,
    pub verified_at: Option<String>,
    /// From its manifest: what it is a backup of and its statistics (in listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Value>,
    /// In listings: how consistent its data is (`crash-consistent`, …) and the snapshot taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Value>,
    /// The whole manifest (one point's detail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Value>,
}

fn point_row(r: &AnyRow, whole: bool) -> PointRow {
    let m: Value = serde_json::from_str(&text(r, "manifest")).unwrap_or_default();
    PointRow {
        id: text(r, "id"),
        repository: text(r, "repository"),
        computer: text(r, "computer"),
        name: text(r, "name"),
        kind: text(r, "kind"),
        created: text(r, "created"),
        task: opt_text(r, "task_id"),
        health: opt_text(r, "health"),
        health_detail: opt_text(r, "health_detail"),
        verified_at: opt_text(r, "verified_at"),
        source: (!whole).then(|| m.get("source").cloned().unwrap_or_default()),
        stats: (!whole).then(|| m.get("stats").cloned().unwrap_or_default()),
        consistency: (!whole).then(|| m.get("consistency").cloned().unwrap_or_default()),
        snapshot: (!whole).then(|| m.get("snapshot").cloned().unwrap_or_default()),
        manifest: whole.then_some(m),
    }
}

/// A catalog point with its whole manifest.
pub async fn point_detail(db: &Db, id: &str) -> Result<Option<PointRow>> {
    let row = sqlx::query("SELECT * FROM points WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().map(|r| point_row(r, true)))
}

pub async fn update_group(db: &Db, name: &str, computers: &[String]) -> Result<bool> {
    let r = sqlx::query("UPDATE groups SET computers = $1 WHERE name = $2")
        .bind(serde_json::to_string(computers).expect("json"))
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// A repository's catalog points, oldest first.
pub async fn repository_points(db: &Db, repository: &str) -> Result<Vec<PointRow>> {
    let rows = sqlx::query("SELECT * FROM points WHERE repository = $1 ORDER BY created")
        .bind(repository)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(|r| point_row(r, false)).collect())
}

/// The job owning each chain of a repository (chains of deleted jobs have none).
pub async fn chain_owners(db: &Db, repository: &str) -> Result<std::collections::HashMap<String, String>> {
    let rows = sqlx::query("SELECT name, job FROM chains WHERE repository = $1 AND job <> ''")
        .bind(repository)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(|r| (text(r, "name"), text(r, "job"))).collect())
}

/// Records what a health check found of points: (id, health, detail), all at once.
pub async fn set_point_health(db: &Db, points: &[(&str, &str, Option<&str>)], verified_at: &str) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    for (id, health, detail) in points {
        sqlx::query("UPDATE points SET health = $1, health_detail = $2, verified_at = $3 WHERE id = $4")
            .bind(*health)
            .bind(detail.map(str::to_string))
            .bind(verified_at)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// (repository, computer, backup name) of a point in the catalog.
pub async fn point(db: &Db, id: &str) -> Result<Option<(String, String, String)>> {
    let row = sqlx::query("SELECT repository, computer, name FROM points WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| (text(&r, "repository"), text(&r, "computer"), text(&r, "name"))))
}

/// Catalog points, oldest first; of one computer when given.
/// A page of a listing: at most `limit` rows after skipping `offset`, newest first or oldest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub newest_first: bool,
    pub limit: Option<u32>,
    pub offset: u32,
}

impl Window {
    /// The ORDER BY … LIMIT … OFFSET of a query on `created` (numbers, written in as such).
    fn sql(&self) -> String {
        let order = format!(" ORDER BY created {dir}, id {dir}", dir = if self.newest_first { "DESC" } else { "ASC" });
        order + &limit_offset(self.limit, self.offset)
    }
}

/// A page of a listing: ` LIMIT … OFFSET …` (numbers, written into the query as such), or
/// nothing for all of it.
fn limit_offset(limit: Option<u32>, offset: u32) -> String {
    match (limit, offset) {
        (Some(n), offset) => format!(" LIMIT {n} OFFSET {offset}"),
        (None, 0) => String::new(),
        // Every engine takes LIMIT with OFFSET; this one is past any catalog.
        (None, offset) => format!(" LIMIT {} OFFSET {offset}", i64::MAX),
    }
}

/// Points, of one computer when given, in the window asked for (all, oldest first, by default).
pub async fn points(db: &Db, computer: Option<&str>, w: Window) -> Result<Vec<PointRow>> {
    let filter = if computer.is_some() { " WHERE computer = $1" } else { "" };
    let sql = format!("SELECT * FROM points{filter}{}", w.sql());
    let mut q = sqlx::query(&sql);
    if let Some(c) = computer {
        q = q.bind(c);
    }
    Ok(q.fetch_all(&db.pool).await?.iter().map(|r| point_row(r, false)).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;

    async fn db(dir: &std::path::Path) -> Db {
        let url = format!("sqlite://{}", dir.join("config.db").display());
        Db::open(&url, Secrets::ephemeral()).await.unwrap()
    }

    fn job(name: &str, sources: &[&str]) -> Job {
        serde_json::from_value(json!({
            "name": name, "computers": ["db"], "repository": "r", "sources": sources
        }))
        .unwrap()
    }

    async fn ours(db: &Db, job: &str, computer: &str, source: &str, repository: &str) -> String {
        match chain_for(db, job, computer, source, repository).await.unwrap() {
            Chain::Ours(name) => {
                bulwark_repo::point::validate_name(&name).unwrap();
                name
            }
            other => panic!("{job} {computer}:{source} in {repository}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn sessions_are_filtered_by_job_and_time_and_limited_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        for (id, job, started) in [
            ("s1", "a", "2026-01-01T00:00:00Z"),
            ("s2", "b", "2026-01-02T00:00:00Z"),
            ("s3", "a", "2026-01-03T00:00:00Z"),
            ("s4", "a", "2026-01-04T00:00:00Z"),
        ] {
            insert_session(&db, id, job, SessionKind::Backup).await.unwrap();
            // One session of a job runs at a time.
            end_session(&db, id, SessionStatus::Success, None).await.unwrap();
            sqlx::query("UPDATE sessions SET started = $1 WHERE id = $2")
                .bind(started)
                .bind(id)
                .execute(&db.pool)
                .await
                .unwrap();
        }
        let ids = |v: Vec<SessionRow>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        let list = |select: SessionSelect<'static>| {
            let db = &db;
            async move { ids(sessions(db, &select).await.unwrap()) }
        };
        let day2 = Some("2026-01-02T00:00:00Z");
        assert_eq!(list(SessionSelect::default()).await, ["s4", "s3", "s2", "s1"]);
        assert_eq!(list(SessionSelect { job: Some("a"), ..Default::default() }).await, ["s4", "s3", "s1"]);
        assert_eq!(list(SessionSelect { since: day2, ..Default::default() }).await, ["s4", "s3", "s2"]);
        assert_eq!(
            list(SessionSelect { job: Some("a"), since: day2, limit: Some(1), ..Default::default() }).await,
            ["s4"]
        );
        assert!(list(SessionSelect { job: Some("c"), limit: Some(5), ..Default::default() }).await.is_empty());
        // Pages, with and without a limit; by result.
        assert_eq!(list(SessionSelect { limit: Some(2), offset: 1, ..Default::default() }).await, ["s3", "s2"]);
        assert_eq!(list(SessionSelect { offset: 3, ..Default::default() }).await, ["s1"]);
        sqlx::query("UPDATE sessions SET status = 'failed' WHERE id = 's3'").execute(&db.pool).await.unwrap();
        assert_eq!(list(SessionSelect { status: Some("failed"), ..Default::default() }).await, ["s3"]);
        assert_eq!(
            list(SessionSelect { job: Some("a"), status: Some("success"), ..Default::default() }).await,
            ["s4", "s1"]
        );
    }

    #[tokio::test]
    async fn points_come_in_windows_newest_or_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        for i in 1..=5 {
            sqlx::query("INSERT INTO points (id, repository, computer, name, kind, created, manifest) VALUES ($1, 'r', $2, 'n', 'volume', $3, '{}')")
                .bind(format!("p{i}"))
                .bind(if i % 2 == 0 { "even" } else { "odd" })
                .bind(format!("2026-11-0{i}T00:00:00Z"))
                .execute(&db.pool)
                .await
                .unwrap();
        }
        let ids = |v: Vec<PointRow>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        let all = Window::default();
        assert_eq!(ids(points(&db, None, all).await.unwrap()), ["p1", "p2", "p3", "p4", "p5"]);
        let page = |offset| Window { newest_first: true, limit: Some(2), offset };
        assert_eq!(ids(points(&db, None, page(0)).await.unwrap()), ["p5", "p4"]);
        assert_eq!(ids(points(&db, None, page(4)).await.unwrap()), ["p1"]);
        assert_eq!(ids(points(&db, Some("odd"), page(1)).await.unwrap()), ["p3", "p1"]);
        let skip = Window { offset: 3, ..Window::default() };
        assert_eq!(ids(points(&db, None, skip).await.unwrap()), ["p4", "p5"]);
    }

    #[tokio::test]
    async fn sources_whose_readable_names_collide_get_chains_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        insert_job(&db, &job("j1", &[])).await.unwrap();
        let a = ours(&db, "j1", "db", "/prod-data", "r").await;
        let b = ours(&db, "j1", "db-prod", "/data", "r").await;
        let c = ours(&db, "j1", "db", "/srv/a-b", "r").await;
        let d = ours(&db, "j1", "db", "/srv/a/b", "r").await;
        let names: HashSet<_> = [&a, &b, &c, &d].into_iter().collect();
        assert_eq!(names.len(), 4, "{a} {b} {c} {d}");
        assert!(a.starts_with("db-prod-data.") && c.starts_with("db-srv-a-b."), "{a} {c}");
        // The identity is kept: the next task of the same source finds the same chain.
        assert_eq!(ours(&db, "j1", "db", "/prod-data", "r").await, a);
        // Another repository is another chain.
        assert_ne!(ours(&db, "j1", "db", "/prod-data", "r2").await, a);
        // Retention sees every chain of the job on that computer, whatever the job's sources say
        // (a job of mode computer names none).
        let mut mine = chain_names(&db, "j1", "db", "r").await.unwrap();
        mine.sort();
        let mut want = vec![a.clone(), c, d];
        want.sort();
        assert_eq!(mine, want);
        assert_eq!(chain_names(&db, "j1", "db-prod", "r").await.unwrap(), vec![b]);

        // A second job on the same source and repository is refused while the first exists...
        insert_job(&db, &job("j2", &["/prod-data"])).await.unwrap();
        assert_eq!(chain_for(&db, "j2", "db", "/prod-data", "r").await.unwrap(), Chain::OtherJob("j1".into()));
        // ...and takes the chain over once it is deleted; a new job of the old name prunes none.
        delete_row(&db, "jobs", "j1").await.unwrap();
        release_chains(&db, "j1").await.unwrap();
        insert_job(&db, &job("j1", &[])).await.unwrap();
        assert!(chain_names(&db, "j1", "db", "r").await.unwrap().is_empty());
        assert_eq!(ours(&db, "j2", "db", "/prod-data", "r").await, a);
        assert_eq!(chain_names(&db, "j2", "db", "r").await.unwrap(), vec![a]);
    }

    #[tokio::test]
    async fn points_from_before_chains_keep_their_name_only_when_it_is_unambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path()).await;
        let point = |id: &str, computer: &str, name: &str, source: &str| {
            let manifest = json!({ "source": source }).to_string();
            let (id, computer, name) = (id.to_string(), computer.to_string(), name.to_string());
            let db = db.clone();
            async move {
                sqlx::query("INSERT INTO points (id, repository, computer, name, kind, created, manifest) VALUES ($1, 'r', $2, $3, 'volume', 'now', $4)")
                    .bind(id).bind(computer).bind(name).bind(manifest).execute(&db.pool).await.unwrap();
            }
        };
        point("p1", "web", "web-dev-vdb", "/dev/vdb").await;
        point("p2", "web", "web-dev-vdb", "/dev/vdb").await;
        assert_eq!(ours(&db, "j", "web", "/dev/vdb", "r").await, "web-dev-vdb");
        // Two sources wrote under one name: neither inherits it.
        point("p3", "db", "db-prod-data", "/prod-data").await;
        point("p4", "db-prod", "db-prod-data", "/data").await;
        assert_ne!(ours(&db, "j", "db", "/prod-data", "r").await, "db-prod-data");
        assert_ne!(ours(&db, "j", "db-prod", "/data", "r").await, "db-prod-data");
    }
}

// ---- instant-recovery exports ----

/// A point published over NBD.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct ExportRow {
    pub id: String,
    pub point: String,
    pub volume: u32,
    /// The transport node serving it.
    pub transport: String,
    /// `nbd://HOST:PORT/NAME`; the name is random: it is what lets a client in.
    pub url: String,
    pub size: u64,
    /// Writes go to a scratch overlay on the transport node (never the repository) and are
    /// lost when the export ends.
    pub writable: bool,
    /// Only this client address may connect (absent: any that knows the URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ip: Option<String>,
    pub created: String,
    pub expires: String,
    pub created_by: String,
}

fn export_row(r: &AnyRow) -> ExportRow {
    ExportRow {
        id: text(r, "id"),
        point: text(r, "point"),
        volume: int(r, "volume") as u32,
        transport: text(r, "transport"),
        url: text(r, "url"),
        size: int(r, "size") as u64,
        writable: int(r, "writable") != 0,
        allowed_ip: opt_text(r, "allowed_ip"),
        created: text(r, "created"),
        expires: text(r, "expires"),
        created_by: text(r, "created_by"),
    }
}

pub async fn add_export(db: &Db, e: &ExportRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO exports (id, point, volume, transport, url, size, writable, allowed_ip, created, expires, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&e.id)
    .bind(&e.point)
    .bind(e.volume as i64)
    .bind(&e.transport)
    .bind(&e.url)
    .bind(e.size as i64)
    .bind(e.writable as i64)
    .bind(&e.allowed_ip)
    .bind(&e.created)
    .bind(&e.expires)
    .bind(&e.created_by)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Exports that have not expired, newest first (expired ones are forgotten on the way).
pub async fn exports(db: &Db) -> Result<Vec<ExportRow>> {
    sqlx::query("DELETE FROM exports WHERE expires <= $1").bind(now()).execute(&db.pool).await?;
    let rows = sqlx::query("SELECT * FROM exports ORDER BY created DESC").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(export_row).collect())
}

pub async fn export(db: &Db, id: &str) -> Result<Option<ExportRow>> {
    let row = sqlx::query("SELECT * FROM exports WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    Ok(row.as_ref().map(export_row))
}

pub async fn delete_export(db: &Db, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM exports WHERE id = $1").bind(id).execute(&db.pool).await?;
    Ok(())
}

// ---- scale-out repositories ----

/// A scale-out repository as the catalog keeps it.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct ScaleOutRow {
    pub name: String,
    /// How new backup chains are placed: `locality` or `performance`.
    pub policy: String,
    pub created: String,
    pub extents: Vec<ExtentRow>,
}

/// One extent of a scale-out repository (a repository of its own).
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct ExtentRow {
    pub repository: String,
    /// Takes no backups while in maintenance (its chains' tasks fail, saying so).
    pub maintenance: bool,
    pub added: String,
    /// From the catalog: its points, the bytes they stored, its backup chains, its tasks
    /// waiting or running.
    pub points: i64,
    pub stored_bytes: i64,
    pub chains: i64,
    pub open_tasks: i64,
}

/// Records a scale-out repository and its extents, all or nothing.
pub async fn insert_scale_out(db: &Db, name: &str, policy: &str, extents: &[String]) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    let created = now();
    sqlx::query("INSERT INTO scale_out (name, policy, created) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(policy)
        .bind(&created)
        .execute(&mut *tx)
        .await?;
    for e in extents {
        sqlx::query("INSERT INTO extents (repository, scale_out, maintenance, added) VALUES ($1, $2, 0, $3)")
            .bind(e)
            .bind(name)
            .bind(&created)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn add_extent(db: &Db, scale_out: &str, repository: &str) -> Result<()> {
    sqlx::query("INSERT INTO extents (repository, scale_out, maintenance, added) VALUES ($1, $2, 0, $3)")
        .bind(repository)
        .bind(scale_out)
        .bind(now())
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn remove_extent(db: &Db, repository: &str) -> Result<()> {
    sqlx::query("DELETE FROM extents WHERE repository = $1").bind(repository).execute(&db.pool).await?;
    Ok(())
}

pub async fn set_scale_out_policy(db: &Db, name: &str, policy: &str) -> Result<()> {
    sqlx::query("UPDATE scale_out SET policy = $1 WHERE name = $2").bind(policy).bind(name).execute(&db.pool).await?;
    Ok(())
}

pub async fn set_maintenance(db: &Db, repository: &str, on: bool) -> Result<()> {
    sqlx::query("UPDATE extents SET maintenance = $1 WHERE repository = $2")
        .bind(on as i64)
        .bind(repository)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Forgets a scale-out repository; its extents become plain repositories again.
pub async fn delete_scale_out(db: &Db, name: &str) -> Result<bool> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM extents WHERE scale_out = $1").bind(name).execute(&mut *tx).await?;
    let r = sqlx::query("DELETE FROM scale_out WHERE name = $1").bind(name).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// The scale-out repository `repository` is an extent of.
pub async fn extent_of(db: &Db, repository: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT scale_out FROM extents WHERE repository = $1")
        .bind(repository)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| text(&r, "scale_out")))
}

pub async fn scale_outs(db: &Db) -> Result<Vec<ScaleOutRow>> {
    let rows = sqlx::query("SELECT name FROM scale_out ORDER BY name").fetch_all(&db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if let Some(s) = scale_out(db, &text(&r, "name")).await? {
            out.push(s);
        }
    }
    Ok(out)
}

pub async fn scale_out(db: &Db, name: &str) -> Result<Option<ScaleOutRow>> {
    let Some(row) = sqlx::query("SELECT * FROM scale_out WHERE name = $1").bind(name).fetch_optional(&db.pool).await?
    else {
        return Ok(None);
    };
    let extents = sqlx::query("SELECT * FROM extents WHERE scale_out = $1 ORDER BY repository")
        .bind(name)
        .fetch_all(&db.pool)
        .await?;
    let names: Vec<String> = extents.iter().map(|e| text(e, "repository")).collect();
    let stored = stored_bytes(db, &names).await?;
    let mut rows = Vec::with_capacity(extents.len());
    for e in &extents {
        let repository = text(e, "repository");
        let count = |sql: &'static str| {
            let repository = repository.clone();
            async move {
                let r = sqlx::query(sql).bind(repository).fetch_one(&db.pool).await?;
                Ok::<i64, crate::db::DbError>(int(&r, "n"))
            }
        };
        rows.push(ExtentRow {
            points: count("SELECT COUNT(*) AS n FROM points WHERE repository = $1").await?,
            chains: count("SELECT COUNT(*) AS n FROM chains WHERE repository = $1").await?,
            open_tasks: open_tasks_on(db, &repository).await?,
            stored_bytes: stored.get(&repository).copied().unwrap_or(0),
            maintenance: int(e, "maintenance") != 0,
            added: text(e, "added"),
            repository,
        });
    }
    Ok(Some(ScaleOutRow {
        name: text(&row, "name"),
        policy: text(&row, "policy"),
        created: text(&row, "created"),
        extents: rows,
    }))
}

/// A scale-out repository's policy and its extents (name, in maintenance), without the
/// catalog's counts [`scale_out`] adds: what the resource scheduler reads at every grant.
pub async fn scale_out_extents(db: &Db, name: &str) -> Result<Option<(String, Vec<(String, bool)>)>> {
    let Some(row) =
        sqlx::query("SELECT policy FROM scale_out WHERE name = $1").bind(name).fetch_optional(&db.pool).await?
    else {
        return Ok(None);
    };
    let extents = sqlx::query("SELECT repository, maintenance FROM extents WHERE scale_out = $1 ORDER BY repository")
        .bind(name)
        .fetch_all(&db.pool)
        .await?;
    Ok(Some((
        text(&row, "policy"),
        extents.iter().map(|e| (text(e, "repository"), int(e, "maintenance") != 0)).collect(),
    )))
}

/// What the catalog's points of each of `repositories` stored (from their manifests).
pub async fn stored_bytes(db: &Db, repositories: &[String]) -> Result<std::collections::HashMap<String, i64>> {
    let mut out = std::collections::HashMap::new();
    for repository in repositories {
        let rows = sqlx::query("SELECT manifest FROM points WHERE repository = $1")
            .bind(repository)
            .fetch_all(&db.pool)
            .await?;
        let sum: i64 = rows
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&text(r, "manifest")).ok())
            .filter_map(|m| m["stats"]["stored_bytes"].as_i64())
            .sum();
        out.insert(repository.clone(), sum);
    }
    Ok(out)
}

/// Scale-out repositories with tasks waiting for a slot in running sessions.
pub async fn scale_outs_waiting(db: &Db) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT DISTINCT t.repository FROM tasks t JOIN scale_out s ON s.name = t.repository
         WHERE t.status = 'waiting' AND t.session_id IN (SELECT id FROM sessions WHERE status = 'running')",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(|r| text(r, "repository")).collect())
}

/// The job a task runs ('' for a restore).
pub async fn task_job(db: &Db, task: &str) -> Result<String> {
    let row = sqlx::query("SELECT s.job FROM tasks t JOIN sessions s ON s.id = t.session_id WHERE t.id = $1")
        .bind(task)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.map(|r| text(&r, "job")).unwrap_or_default())
}

/// The repository among `extents` holding a backup chain of `job` on `computer`.
pub async fn chain_extent(db: &Db, job: &str, computer: &str, extents: &[String]) -> Result<Option<String>> {
    let rows = sqlx::query("SELECT repository FROM chains WHERE job = $1 AND computer = $2 ORDER BY created")
        .bind(job)
        .bind(computer)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(|r| text(r, "repository")).find(|r| extents.contains(r)))
}

/// Marks a granted task of a scale-out repository running on the extent it was placed on;
/// `false` if it was no longer waiting.
pub async fn mark_running_on(db: &Db, id: &str, extent: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET status = 'running', started = $1, repository = $2 WHERE id = $3 AND status = 'waiting'",
    )
    .bind(now())
    .bind(extent)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A backup chain as evacuation moves it.
#[derive(Debug, Clone)]
pub struct ChainOn {
    pub name: String,
    pub computer: String,
    pub source: String,
}

/// The backup chains the catalog places in `repository`.
pub async fn chains_on(db: &Db, repository: &str) -> Result<Vec<ChainOn>> {
    let rows = sqlx::query("SELECT name, computer, source FROM chains WHERE repository = $1 ORDER BY name")
        .bind(repository)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| ChainOn { name: text(r, "name"), computer: text(r, "computer"), source: text(r, "source") })
        .collect())
}

/// Whether a chain of `source` on `computer` is in `repository`.
pub async fn has_chain(db: &Db, computer: &str, source: &str, repository: &str) -> Result<bool> {
    let row = sqlx::query("SELECT name FROM chains WHERE computer = $1 AND source = $2 AND repository = $3")
        .bind(computer)
        .bind(source)
        .bind(repository)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

/// The catalog's points in `repository`: (id, backup name, computer), oldest first.
pub async fn points_on(db: &Db, repository: &str) -> Result<Vec<(String, String, String)>> {
    let rows = sqlx::query("SELECT id, name, computer FROM points WHERE repository = $1 ORDER BY created, id")
        .bind(repository)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(|r| (text(r, "id"), text(r, "name"), text(r, "computer"))).collect())
}

/// Records that points (and, once all of it moved, a chain) now live in another repository.
pub async fn move_point(db: &Db, id: &str, to: &str) -> Result<()> {
    sqlx::query("UPDATE points SET repository = $1 WHERE id = $2").bind(to).bind(id).execute(&db.pool).await?;
    Ok(())
}

pub async fn move_chain(db: &Db, name: &str, to: &str) -> Result<()> {
    sqlx::query("UPDATE chains SET repository = $1 WHERE name = $2").bind(to).bind(name).execute(&db.pool).await?;
    Ok(())
}
