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
    /// The snapshot stopped holding its instant while it was read (an LVM snapshot whose
    /// copy-on-write space overflowed): what was read is not committed.
    #[error("snapshot of {source_path} became invalid during the backup: {reason}; nothing was committed")]
    SnapshotInvalid { source_path: PathBuf, reason: String },
    /// An application's backup that spans the copy could not be ended (or its files read):
    /// the copy alone would not restore, so nothing is committed.
    #[error("backup of {source_path}: {reason}; nothing was committed")]
    Application { source_path: PathBuf, reason: String },
    /// The file tree spooled while an application's additions were pending.
    #[error("writing the file tree to a temporary file: {0}")]
    Spool(#[source] io::Error),
    /// A path a restore selects that the point does not hold.
    #[error("point {point} has no path {path:?} (`bulwark ls` lists a point's paths); nothing was written")]
    NoSuchPath { point: String, path: String },
    /// An option the point or source at hand does not take (`--path` for a volume point).
    #[error("{reason}")]
    Unsupported { reason: String },
    #[error("cancelled")]
    Cancelled,
}

impl AgentError {
    /// Whether a retry can help (see [`bulwark_repo::RepoError::is_permanent`]): a source or
    /// target that does not exist, is not what the task says or may not be touched fails every
    /// time; a snapshot that could not be made now, a lost connection or a read error may not.
    pub fn failure(&self) -> bulwark_proto::domain::Failure {
        use bulwark_proto::domain::Failure;
        let permanent = match self {
            AgentError::Repo(e) => e.is_permanent(),
            AgentError::Source { source, .. } | AgentError::Target { source, .. } => is_permanent_io(source),
            AgentError::BadSource { .. }
            | AgentError::BadTarget { .. }
            | AgentError::NoSuchPath { .. }
            | AgentError::Unsupported { .. } => true,
            AgentError::RestoreFailed { cause, .. } => return cause.failure(),
            AgentError::Snapshot { .. }
            | AgentError::SnapshotInvalid { .. }
            | AgentError::Application { .. }
            | AgentError::Spool(_)
            | AgentError::Cancelled => false,
        };
        if permanent {
            Failure::Permanent
        } else {
            Failure::Transient
        }
    }
}

/// Errors of a path that stay until someone changes the path.
fn is_permanent_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::InvalidInput
    )
}
