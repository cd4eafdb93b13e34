use std::io;

use crate::ChunkId;

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// Everything that can go wrong with a repository, phrased for the operator who reads it.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: not a Bulwark repository (no config file); create one with `bulwark repo init`")]
    NotARepository { path: String },
    #[error("{path}: not a Bulwark repository (config says format {found:?})")]
    ForeignFormat { path: String, found: String },
    #[error(
        "{path}: repository format version {found} is newer than this Bulwark understands \
         (up to {supported}); upgrade Bulwark"
    )]
    NewerFormat { path: String, found: u32, supported: u32 },
    #[error("{path}: a repository already exists here")]
    AlreadyExists { path: String },
    #[error("repository {path} is encrypted: give the password with --password-file or BULWARK_PASSWORD")]
    PasswordRequired { path: String },
    #[error("repository {path}: wrong password")]
    WrongPassword { path: String },
    /// The key file predates integrity digests: a damaged one looks like a wrong password.
    #[error(
        "repository {path}: wrong password, or a damaged key file (keys/default predates integrity \
         digests, so the two cannot be told apart; `bulwark repo upgrade` adds them)"
    )]
    WrongPasswordOrDamagedKey { path: String },
    /// One of the repository's own objects (config, key file) is damaged.
    #[error("repository {repo}: {object} is damaged: {reason}; {remedy}")]
    DamagedObject { repo: String, object: String, reason: String, remedy: String },
    #[error("repository {repo}: {what}: {source}")]
    Io {
        repo: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("repository {repo}: chunk {id} is damaged ({reason}); run `bulwark verify`")]
    DamagedChunk { repo: String, id: ChunkId, reason: String },
    #[error("repository {repo}: chunk {id} is missing; run `bulwark verify`")]
    MissingChunk { repo: String, id: ChunkId },
    #[error("repository {repo}: restore point {point} is damaged: {reason}")]
    DamagedPoint { repo: String, point: String, reason: String },
    #[error("repository {repo}: point {point} is the base of a running backup ({writer}); it can be deleted when that backup ends")]
    PointInUse { repo: String, point: String, writer: String },
    #[error("repository {repo}: point {point} is immutable until {until}; it can be forgotten after that")]
    Immutable { repo: String, point: String, until: String },
    #[error("repository {repo}: {holder} is at work on it; try again when it is done")]
    Busy { repo: String, holder: String },
    #[error("repository {repo}: no restore point {point}")]
    NoSuchPoint { repo: String, point: String },
    #[error("repository {repo}: invalid argument: {reason}")]
    Invalid { repo: String, reason: String },
    /// The repository is across the network (a data mover) and the exchange failed.
    #[error("{repo}: {reason}")]
    Remote { repo: String, reason: String },
}

impl RepoError {
    /// Whether the same operation fails the same way until someone changes something: a path
    /// that is no repository, a wrong or missing password, a damaged key or point, a name that
    /// does not exist. Input/output errors and a peer across the network may recover.
    pub fn is_permanent(&self) -> bool {
        match self {
            RepoError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ),
            RepoError::Remote { .. } | RepoError::PointInUse { .. } | RepoError::Busy { .. } => false,
            _ => true,
        }
    }
}
