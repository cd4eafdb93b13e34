//! The agent's data path: reading a volume, deciding which blocks changed, dropping what a
//! restore does not need, compressing, and writing a restore point; and the way back (restore).
//!
//! `bulwark backup` and `bulwark restore` call this crate directly against a repository; the
//! managed agent will call the same pipeline with a data mover at the other end. This crate
//! does not parse arguments or draw progress bars: callers pass a progress callback.

pub mod apps;
pub mod backup;
pub mod change_tracking;
mod device_guard;
mod error;
pub mod files;
pub mod filter;
pub mod inventory;
pub mod partition_table;
pub mod pipeline;
pub mod remote;
pub mod repair;
pub mod restore;
pub mod scripts;
pub mod service;
pub mod snapshot;
pub mod source;
pub mod target;

pub use backup::{backup_volume, backup_volume_with, BackupOptions, BackupReport};
pub use error::{AgentError, Result};
pub use pipeline::{kind_of, BackupDone, BackupSettings, RestoreDone, RestoreSettings, TaskKind};
pub use restore::{restore_volume, RestoreOptions, RestoreReport};
pub use target::{BackupTarget, PointSink};

/// Receives the number of bytes just processed; called from worker threads.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Threads for the hashing and compression stages: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}
