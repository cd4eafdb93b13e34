//! What the REST API answers when the answer is not a row of the config database (those are
//! `store`'s types): one type per shape, so the OpenAPI document describes the JSON that is
//! sent. Scripts read these fields by name: a field is added, never renamed or removed.

use bulwark_proto::domain::{Failure, TaskStatus};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::model::Job;
use crate::store::SessionRow;

/// A login's token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginToken {
    /// The secret to send as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Its id, to list and revoke it by.
    pub id: String,
    pub expires: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    pub name: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// The id of the token the call came with.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserCreated {
    pub name: String,
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordChanged {
    pub name: String,
    pub changed: bool,
}

/// A token made for the caller (`kind: api`) or for a node to join (`kind: join`). The secret
/// is shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TokenCreated {
    Api {
        token: String,
        id: String,
        user: String,
        name: String,
        /// None: never.
        expires: Option<String>,
    },
    Join {
        token: String,
        id: String,
        /// `agent` or `transport`.
        role: String,
        /// The node name it is for; None: any new name.
        name: Option<String>,
        /// May take back the name of a removed node.
        replace: bool,
        expires: Option<String>,
    },
}

/// The name of what was deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryDeleted {
    pub deleted: String,
    /// That the repository's files stay on its transport node.
    pub note: String,
}

/// The id of the token revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: String,
}

/// The node removed: its certificate is revoked everywhere.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    pub removed: String,
}

/// A removed node whose name may join again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readmitted {
    pub readmitted: String,
    /// `agent` or `transport`.
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretSet {
    pub name: String,
    /// The environment variable commands read it from.
    pub variable: String,
}

/// A protection group's computers.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupMembers {
    pub name: String,
    pub computers: Vec<String>,
}

/// A job as readers see it: its settings (commands hidden from viewers), when it was created,
/// its last session (null if it never ran) and when it next starts on its own (null: by hand, after
/// another job, or disabled); after a change, warnings about sources its computers lack.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    pub created: String,
    /// False: the job neither runs on its schedule nor after another, nor starts by hand.
    pub enabled: bool,
    pub last_session: Option<SessionRow>,
    pub next_run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// A computer's recovery point as its job's schedule promises it.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct RpoRow {
    pub job: String,
    pub computer: String,
    /// When its last good backup (success or warning) of this job ended; null: never.
    pub last_good: Option<String>,
    /// Until when that point meets the schedule: its next run after the point, plus the time a
    /// run may take (the schedule's period, at most 6 hours).
    pub protected_until: String,
    /// `protected_until` has passed: the recovery point objective is missed.
    pub missed: bool,
}

/// How a restore ended.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct RestoreOutcome {
    pub session: String,
    pub task: String,
    pub point: String,
    pub computer: String,
    pub target: String,
    #[schema(value_type = crate::openapi::TaskStatus)]
    pub status: TaskStatus,
    pub error: Option<String>,
    #[schema(value_type = Option<crate::openapi::Failure>)]
    pub failure: Option<Failure>,
    /// The agent's report of the restore.
    pub report: Option<Value>,
}
