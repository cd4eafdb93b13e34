//! Restore points: a manifest (what, when, how) and the block index it authenticates.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunk::Compression;
use crate::index::BlockSize;

/// A restore point's identity: creation time (UTC) and a random suffix, so two backups started
/// in the same second on different computers never collide. It sorts by time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RestorePointId(String);

impl RestorePointId {
    pub fn generate(at: DateTime<Utc>) -> Self {
        let r: [u8; 3] = crate::crypto::random_bytes();
        RestorePointId(format!("{}-{}", at.format("%Y%m%dT%H%M%SZ"), hex::encode(r)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the point's manifest is stored in the repository.
    pub fn manifest_key(&self) -> String {
        format!("points/{}.manifest", self.0)
    }

    /// Where the point's block index (or file tree) is stored in the repository.
    pub fn index_key(&self) -> String {
        format!("points/{}.index", self.0)
    }

    /// Written before a forget deletes anything, removed after: marks an interrupted forget.
    pub(crate) fn tombstone_key(&self) -> String {
        format!("points/{}.forgotten", self.0)
    }
}

impl FromStr for RestorePointId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(RestorePointId(s.to_string()))
        } else {
            Err(format!("{s:?} is not a restore point id (ids look like 20261125T093000Z-3f2a9c)"))
        }
    }
}

impl TryFrom<String> for RestorePointId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<RestorePointId> for String {
    fn from(id: RestorePointId) -> String {
        id.0
    }
}

impl fmt::Display for RestorePointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a backup name (the series a point belongs to, like a job's computer or volume).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid backup name: use letters, digits, '.', '_' and '-' (at most 128)"))
    }
}

/// What a backup did, as the summary and `--json` report it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointStats {
    /// Size of the source volume.
    pub source_bytes: u64,
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Bytes in zero blocks (stored as nothing).
    pub zero_bytes: u64,
    /// Bytes in blocks unchanged since the previous point (neither compressed nor stored).
    pub unchanged_bytes: u64,
    /// Uncompressed bytes not already in the repository.
    pub new_bytes: u64,
    /// Bytes written to the repository (chunks after compression and encryption, plus metadata).
    pub stored_bytes: u64,
    pub duration_s: f64,
    /// The applications made consistent for the snapshot (application-aware processing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<ApplicationRecord>,
    /// Set by a backup that learned at its end that the point is less consistent than it began
    /// as (an application's backup that could not be ended, under the policy `ignore`): the
    /// manifest's `consistency` then; never kept in the stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

/// What application-aware processing did to one application for a point: what it was, what was
/// done, and what a restore needs to know (a PostgreSQL checkpoint's position, a MySQL binary
/// log position).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationRecord {
    /// `postgres`, `mysql`.
    pub app: String,
    /// Where it was reached and what answered: `PostgreSQL 15.8 at /var/run/postgresql:5432`.
    pub server: String,
    /// What was done: `checkpoint`, `read lock`.
    pub action: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    Volume,
    /// A file tree: the block index lists the pieces of the tree stream (see [`crate::tree`]).
    Files,
}

/// What a file-level backup saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSummary {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    /// Files whose content was taken from the previous point unread.
    pub unchanged_files: u64,
    /// `ok`, or `warning` when something could not be read or changed while read.
    pub status: String,
    /// The first warnings (files that could not be read, changed while read, skipped sockets).
    pub warnings: Vec<String>,
    pub warnings_total: u64,
}

/// The manifest of a restore point. Written last: a point exists exactly when its manifest does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: RestorePointId,
    pub name: String,
    pub kind: PointKind,
    pub created: DateTime<Utc>,
    pub host: String,
    pub source: String,
    pub volume_size: u64,
    pub block_size: BlockSize,
    pub compression: Compression,
    /// Authenticator of the block index (hex); binds the index to this manifest.
    pub index_auth: String,
    /// The point this one was compared against, if any (informational: points do not depend on
    /// each other).
    pub parent: Option<RestorePointId>,
    /// How the source was captured: snapshot provider and consistency (`frozen`,
    /// `crash-consistent`, `crash-inconsistent`).
    #[serde(default)]
    pub snapshot: String,
    #[serde(default)]
    pub consistency: String,
    /// In a repository whose computers are isolated: the computer whose keys wrote this
    /// point's index and chunks (see [`crate::Repository::for_point`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_scope: Option<String>,
    pub stats: PointStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileSummary>,
}

impl Manifest {
    pub fn index_auth_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(&self.index_auth).ok()?.try_into().ok()
    }
}
