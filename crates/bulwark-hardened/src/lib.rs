//! The immutability service of a hardened local repository, after Veeam's hardened Linux
//! repository.
//!
//! A hardened repository's files are written by an unprivileged data mover, whose user lacks
//! `CAP_LINUX_IMMUTABLE`. Once a restore point is committed, this separate root service sets
//! the immutable attribute (`FS_IMMUTABLE_FL`, what `chattr +i` sets) on its files for a number
//! of days and records the date in a ledger outside the repository; until that date nobody
//! without the capability can delete, rename, truncate or change them, not even the data
//! mover's user who owns them, and so neither can ransomware or an intruder holding that
//! account, or the backup server giving it orders. The service clears the attribute only after
//! the date ([`Service::sweep`], every minute). Root still can, which the threat model accepts:
//! a hardened host keeps root out of reach (no remote root login, no shared credentials).
//!
//! The pieces: [`Service`] (lock, status, sweep; the safety argument is in its module),
//! [`Ledger`] (the dates, one file per repository), the socket [`protocol`] with its server
//! ([`start`]) and [`HardenedClient`].
//!
//! Deliberately not here: which files a point consists of and how long to lock them (the
//! repository and the transport node decide and ask), and deleting anything: the service only
//! ever sets and clears an attribute. It knows nothing of the repository format beyond "keys
//! are relative paths of regular files".

mod client;
mod error;
mod files;
pub mod ledger;
pub mod protocol;
mod server;
mod service;

pub use client::HardenedClient;
pub use error::{ErrorKind, HardenedError, Result};
pub use ledger::{Ledger, LockChange};
pub use server::{check_privileges, group_id, start, RunningServer, ServerConfig, SWEEP_EVERY};
pub use service::{
    KeyLock, KeyStatus, LockReport, Service, ServiceConfig, SweepReport, SweptKey, DEFAULT_MAX_LOCK_DAYS,
};
