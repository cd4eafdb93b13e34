use std::io;
use std::path::PathBuf;

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Repo(#[from] bulwark_repo::RepoError),
    #[error("source {path}: {what}: {source}")]
    Source {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("source {path}: {reason}")]
    BadSource { path: PathBuf, reason: String },
    #[error("target {path}: {what}: {source}")]
    Target {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("target {path}: {reason}")]
    BadTarget { path: PathBuf, reason: String },
    #[error("restore of point {point} failed at block {block} (offset {offset}): {cause}{note}")]
    RestoreFailed { point: String, block: u64, offset: u64, cause: Box<AgentError>, note: &'static str },
    #[error("cannot snapshot {source_path}: {reason}")]
    Snapshot { source_path: PathBuf, reason: String },
    /// A path a restore selects that the point does not hold.
    #[error("point {point} has no path {path:?} (`bulwark ls` lists a point's paths); nothing was written")]
    NoSuchPath { point: String, path: String },
    /// An option the point or source at hand does not take (`--path` for a volume point).
    #[error("{reason}")]
    Unsupported { reason: String },
    #[error("cancelled")]
    Cancelled,
}
