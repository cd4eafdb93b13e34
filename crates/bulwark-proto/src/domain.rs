//! The job model's words, once: statuses, modes and settings as types shared by the server, the
//! agent, the transport node and the wire. Each has one spelling (what the config database, the
//! REST API and the command line say) and a protocol enum it converts to and from, so no status
//! or setting crosses a process boundary as free text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pb;

/// An enum with one lower-case spelling per variant: `as_str`, `Display`, `FromStr` (whose error
/// lists the choices), serde by the same spellings, and `ALL`.
macro_rules! spelled {
    ($(#[$meta:meta])* pub enum $name:ident ($what:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let choices: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown {} {s:?}; choose {}", $what, choices.join(", "))
                })
            }
        }
    };
}

spelled! {
    /// Where a task is: waiting for a slot, running (holding one), or how it ended.
    pub enum TaskStatus ("task status") {
        Waiting = "waiting",
        Running = "running",
        Success = "success",
        /// Done, with something the operator should read (files skipped, a post-job script
        /// failed).
        Warning = "warning",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl TaskStatus {
    /// Still holds or waits for a slot.
    pub fn is_open(self) -> bool {
        matches!(self, TaskStatus::Waiting | TaskStatus::Running)
    }

    /// Ended with what it was for done.
    pub fn succeeded(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Warning)
    }
}

spelled! {
    /// A session: running, or how it ended (the worst of its computers' last attempts).
    pub enum SessionStatus ("session status") {
        Running = "running",
        Success = "success",
        Warning = "warning",
        Failed = "failed",
    }
}

spelled! {
    /// What a session does.
    pub enum SessionKind ("session kind") {
        /// A job's run: one backup task per computer.
        Backup = "backup",
        /// One restore of one point onto one computer.
        Restore = "restore",
    }
}

spelled! {
    /// Whether a failure can go away by itself. Transient ones (a node that does not answer, a
    /// lost connection, a snapshot that could not be made now) are retried by the job's policy;
    /// permanent ones (a source that does not exist, a wrong password, a setting the agent
    /// cannot honour) fail the same way every time until an operator changes something, so they
    /// are not retried.
    pub enum Failure ("failure kind") {
        Transient = "transient",
        Permanent = "permanent",
    }
}

spelled! {
    /// How a data mover ended.
    #[derive(Default)]
    pub enum MoverStatus ("data mover status") {
        /// A backup's points are committed; a restore's point was served.
        Committed = "committed",
        #[default]
        Failed = "failed",
    }
}

spelled! {
    /// What a job backs up.
    pub enum JobMode ("mode") {
        /// Every whole disk the agent reports.
        Computer = "computer",
        /// Block devices or disk images.
        Volumes = "volumes",
        /// Directories, file by file.
        Files = "files",
    }
}

impl JobMode {
    /// The agent's task kind for this mode.
    pub fn task_kind(self) -> TaskKind {
        match self {
            JobMode::Files => TaskKind::Files,
            JobMode::Computer | JobMode::Volumes => TaskKind::Volume,
        }
    }
}

spelled! {
    /// What one task of the agent reads.
    pub enum TaskKind ("task kind") {
        Volume = "volume",
        Files = "files",
    }
}

spelled! {
    /// The operator's choice of snapshot (`--snapshot`).
    #[derive(Default)]
    pub enum SnapshotMode ("snapshot mode") {
        #[default]
        Auto = "auto",
        Reflink = "reflink",
        Btrfs = "btrfs",
        Lvm = "lvm",
        None = "none",
    }
}

spelled! {
    /// The operator's choice of changed block tracking (`--cbt`).
    #[derive(Default)]
    pub enum CbtMode ("change tracking") {
        #[default]
        Auto = "auto",
        Extents = "extents",
        None = "none",
    }
}

/// How much copy-on-write space a classic LVM snapshot gets (`--lvm-snapshot-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowSize {
    /// A share of the origin's size, in percent (1 to 100).
    PercentOfOrigin(u32),
    /// A fixed size in bytes.
    Bytes(u64),
}

impl Default for CowSize {
    /// A fifth of the origin: a volume rewriting more than that during one backup's read is
    /// rare, and the next try doubles it.
    fn default() -> Self {
        CowSize::PercentOfOrigin(20)
    }
}

impl FromStr for CowSize {
    type Err = String;

    /// `20%` (of the origin) or a size: `512M`, `2G`, `1048576` (binary units, `K` to `T`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected a share of the origin (20%) or a size (512M, 2G)");
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p @ 1..=100) => Ok(CowSize::PercentOfOrigin(p)),
                _ => Err(bad()),
            };
        }
        let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches(['i']);
        let (num, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(bad()),
                };
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        let n: u64 = num.trim().parse().map_err(|_| bad())?;
        n.checked_shl(shift).filter(|b| *b > 0 && b >> shift == n).map(CowSize::Bytes).ok_or_else(bad)
    }
}

impl CowSize {
    /// The bytes wanted for an origin of `origin` bytes, before the caps.
    pub fn wanted(self, origin: u64) -> u64 {
        match self {
            CowSize::PercentOfOrigin(p) => origin / 100 * u64::from(p) + origin % 100 * u64::from(p) / 100,
            CowSize::Bytes(b) => b,
        }
    }
}

/// Conversions between a domain type and its protocol enum. The protocol's zero value means
/// "not set" and reads as the domain's default, or as an error where there is none.
macro_rules! wire {
    ($name:ident <=> $pb:ident { $($variant:ident),+ $(,)? }) => {
        impl From<$name> for pb::$pb {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => pb::$pb::$variant),+
                }
            }
        }

        impl TryFrom<pb::$pb> for $name {
            type Error = String;
            fn try_from(v: pb::$pb) -> Result<Self, String> {
                match v {
                    $(pb::$pb::$variant => Ok($name::$variant),)+
                    #[allow(unreachable_patterns)]
                    _ => Err(format!("{} not set", stringify!($name))),
                }
            }
        }
    };
}

wire!(TaskStatus <=> TaskStatus { Waiting, Running, Success, Warning, Failed, Cancelled });
wire!(Failure <=> Failure { Transient, Permanent });
wire!(MoverStatus <=> MoverStatus { Committed, Failed });
wire!(TaskKind <=> TaskKind { Volume, Files });
wire!(SnapshotMode <=> SnapshotMode { Auto, Reflink, Btrfs, Lvm, None });
wire!(CbtMode <=> CbtMode { Auto, Extents, None });

/// Compression levels are the repository's own type; this is their spelling on the wire.
pub use bulwark_repo::Compression;
wire!(Compression <=> Compression { None, DedupeFriendly, Optimal, High, Extreme });

// What a point holds, as the transport node tells the server.

impl From<bulwark_repo::volumes::Volume> for pb::VolumeInfo {
    fn from(v: bulwark_repo::volumes::Volume) -> Self {
        pb::VolumeInfo {
            number: v.number,
            start: v.start,
            size: v.size,
            table: v.table,
            partition_type: v.partition_type,
            label: v.label,
            content: v.content,
            problem: v.problem,
        }
    }
}

impl From<bulwark_repo::browse::FileEntry> for pb::FileEntry {
    fn from(e: bulwark_repo::browse::FileEntry) -> Self {
        pb::FileEntry {
            name: e.name,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            target: e.target.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_reads_back_and_serializes_as_itself() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
            assert_eq!(TaskStatus::try_from(pb::TaskStatus::from(*s)).unwrap(), *s);
        }
        for m in SnapshotMode::ALL {
            assert_eq!(serde_json::from_value::<SnapshotMode>(serde_json::json!(m.as_str())).unwrap(), *m);
        }
        let e = "sometimes".parse::<SnapshotMode>().unwrap_err();
        assert!(e.contains("auto, reflink, btrfs, lvm, none"), "{e}");
        assert!(TaskStatus::try_from(pb::TaskStatus::Unspecified).is_err());
    }
}
