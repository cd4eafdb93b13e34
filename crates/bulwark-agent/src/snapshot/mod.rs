//! Snapshots: a frozen, consistent view of a live volume for the backup to read.
//!
//! One trait, one provider per mechanism, chosen automatically for the source or named by the
//! operator. Creation is retried (3 tries by default) with a back-off, each try logged. A
//! snapshot is released whatever happens — success, failure, cancel (its `Drop`) — and one left
//! by a killed backup is found and removed at the next start ([`remove_stale`]).

mod btrfs;
mod lvm;
pub(crate) mod reflink;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::apps::{self, AppPolicy, AppSpec, ApplicationRecord};
use crate::scripts::{self, Script};

pub use btrfs::BtrfsProvider;
pub use lvm::{CowSize, LvmProvider};
pub use reflink::ReflinkProvider;

/// How trustworthy the data read from a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Every application the job names was made consistent (a PostgreSQL checkpoint, a MySQL
    /// read lock) right before a snapshot: restores start without recovery of their own.
    ApplicationConsistent,
    /// Every filesystem on the volume was frozen for the instant of the snapshot: as after a
    /// clean unmount.
    Frozen,
    /// A point-in-time snapshot without freezing: as after a power cut (journals replay).
    CrashConsistent,
    /// Read live: blocks may come from different instants.
    CrashInconsistent,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::ApplicationConsistent => "application-consistent",
            Consistency::Frozen => "frozen",
            Consistency::CrashConsistent => "crash-consistent",
            Consistency::CrashInconsistent => "crash-inconsistent",
        }
    }
}

/// A snapshot to read; released when dropped (unless kept as the base of change tracking).
pub struct Snapshot {
    /// What to read: a clone file, a snapshot device or directory, or the live source.
    pub path: PathBuf,
    pub provider: &'static str,
    pub consistency: Consistency,
    /// What the provider wants the operator to know (frozen mounts, no freeze possible…).
    pub notes: Vec<String>,
    /// An LVM thin snapshot: which, for change tracking in its pool.
    pub thin: Option<ThinSnapshot>,
    release: Option<Box<dyn FnOnce() -> Result<(), String> + Send>>,
    /// Whether the snapshot still holds the instant it was taken (a classic LVM snapshot
    /// whose copy-on-write space overflowed does not).
    check: Option<Box<dyn Fn() -> Result<(), String> + Send>>,
}

impl Snapshot {
    pub fn new(
        path: PathBuf,
        provider: &'static str,
        consistency: Consistency,
        release: Option<Box<dyn FnOnce() -> Result<(), String> + Send>>,
    ) -> Self {
        Snapshot { path, provider, consistency, notes: Vec::new(), thin: None, release, check: None }
    }

    /// The same snapshot, with a way of telling whether it is still valid ([`Snapshot::check`]).
    pub fn with_check(mut self, check: Box<dyn Fn() -> Result<(), String> + Send>) -> Self {
        self.check = Some(check);
        self
    }

    /// Whether what is read from the snapshot is still the instant it was taken: an error says
    /// why not. Asked after the read, before anything read is committed.
    pub fn check(&self) -> Result<(), String> {
        self.check.as_ref().map_or(Ok(()), |c| c())
    }

    /// Releases the snapshot now, reporting failure (drop releases silently).
    pub fn release(mut self) -> Result<(), String> {
        match self.release.take() {
            Some(r) => r(),
            None => Ok(()),
        }
    }

    /// Hands the snapshot over to the caller (who becomes responsible for it): used to keep a
    /// reflink clone as the base of the next backup's change tracking.
    pub fn keep(mut self) -> PathBuf {
        self.release = None;
        std::mem::take(&mut self.path)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            let _ = r();
        }
    }
}

/// An LVM thin snapshot, named as LVM names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinSnapshot {
    pub vg: String,
    pub pool: String,
    /// The logical volume it is a snapshot of.
    pub origin: String,
    /// The snapshot's own name.
    pub name: String,
}

/// A way of taking snapshots.
pub trait SnapshotProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Takes a snapshot of `source`; an error says why this try failed.
    fn create(&self, source: &Path) -> Result<Snapshot, String>;
    /// Removes snapshots of `source` left behind by backups that died.
    fn remove_stale(&self, source: &Path) -> Vec<String>;
}

/// The operator's choice (`--snapshot`), one of the job model's shared words.
pub use bulwark_proto::domain::SnapshotMode;

/// Reads the live source: no snapshot at all.
pub struct NoSnapshot;

impl SnapshotProvider for NoSnapshot {
    fn name(&self) -> &'static str {
        "none"
    }
    fn create(&self, source: &Path) -> Result<Snapshot, String> {
        // A block device nothing has mounted or claimed (a computer's disk read from a
        // recovery environment, a volume not in use), held exclusively while it is read: the
        // kernel refuses to mount it meanwhile, so it does not change under the read.
        if let Some(held) = claim_idle_device(source) {
            let release = Box::new(move || {
                drop(held);
                Ok(())
            });
            let mut s = Snapshot::new(source.to_path_buf(), "none", Consistency::CrashConsistent, Some(release));
            s.notes.push(format!(
                "no snapshot: {} is not in use, and was held exclusively while read (nothing could mount it), so \
                 the point is consistent",
                source.display()
            ));
            return Ok(s);
        }
        let mut s = Snapshot::new(source.to_path_buf(), "none", Consistency::CrashInconsistent, None);
        s.notes.push("no snapshot: the live source was read, so the point is crash-inconsistent".into());
        Ok(s)
    }
    fn remove_stale(&self, _: &Path) -> Vec<String> {
        Vec::new()
    }
}

/// `source` opened exclusively, if it is a block device that nothing has mounted or claimed
/// (the kernel refuses `O_EXCL` then; a partition in use makes its whole disk in use too).
fn claim_idle_device(source: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if !std::fs::metadata(source).ok()?.file_type().is_block_device() {
        return None;
    }
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(source).ok()
}

/// The provider for `mode` and `source`; `Auto` picks what the source supports. `cow` sizes a
/// classic LVM snapshot.
pub fn provider_for(mode: SnapshotMode, source: &Path, cow: CowSize) -> Box<dyn SnapshotProvider> {
    match mode {
        SnapshotMode::Reflink => Box::new(ReflinkProvider),
        SnapshotMode::Btrfs => Box::new(BtrfsProvider),
        SnapshotMode::Lvm => Box::new(LvmProvider::new(cow)),
        SnapshotMode::None => Box::new(NoSnapshot),
        SnapshotMode::Auto => {
            if ReflinkProvider::supports(source) {
                Box::new(ReflinkProvider)
            } else if LvmProvider::supports(source) {
                Box::new(LvmProvider::new(cow))
            } else {
                Box::new(NoSnapshot)
            }
        }
    }
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub tries: u32,
    /// Wait before the second try; doubled before each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { tries: 3, backoff: Duration::from_secs(2) }
    }
}

/// What runs around each snapshot try: the operator's pre-freeze and post-thaw scripts, and
/// the limit on the time from the freeze to the thaw.
#[derive(Debug, Clone)]
pub struct Freeze {
    pub pre_freeze: Option<Script>,
    pub post_thaw: Option<Script>,
    /// A try whose freeze lasts longer fails (the application was held too long): the snapshot
    /// is dropped and the try counts as failed.
    pub limit: Duration,
    /// Added to the scripts' environment (`BULWARK_TASK_ID`, the operator's secrets).
    pub env: Vec<(String, String)>,
    /// Applications prepared before the pre-freeze script and released after the post-thaw
    /// script, each in one session of its own.
    pub apps: Vec<AppSpec>,
    pub app_policy: AppPolicy,
    /// A file-level backup of the source directory: applications that can hold their backup
    /// through the copy do so (see [`apps::Held`]).
    pub file_level: bool,
}

/// Longest freeze by default: as long as Windows' VSS holds writers.
pub const FREEZE_LIMIT: Duration = Duration::from_secs(60);

impl Default for Freeze {
    fn default() -> Self {
        Freeze {
            pre_freeze: None,
            post_thaw: None,
            limit: FREEZE_LIMIT,
            env: Vec::new(),
            apps: Vec::new(),
            app_policy: AppPolicy::Require,
            file_level: false,
        }
    }
}

/// A snapshot taken, and how long the freeze around it lasted (from the pre-freeze script's
/// start to the post-thaw script's end; the snapshot's own creation when there are none).
pub struct Taken {
    pub snapshot: Snapshot,
    pub frozen: Duration,
    /// What was done to each application prepared.
    pub applications: Vec<ApplicationRecord>,
    /// Applications that could not be prepared or released, under the policy `ignore`: the
    /// task ends with a warning saying so.
    pub warnings: Vec<String>,
    /// Applications in backup mode until the copy is done (a file-level backup).
    pub held: Vec<Box<dyn apps::Held>>,
}

/// Takes a snapshot, retrying per `policy`, each try inside the freeze steps: pre-freeze script,
/// snapshot, post-thaw script (always run once the pre-freeze script started, whatever failed).
/// A try fails when a script fails or the freeze outlasts its limit; every failed try is passed
/// to `log`, and so is each script's output.
pub fn create_with_retries(
    provider: &dyn SnapshotProvider,
    source: &Path,
    policy: RetryPolicy,
    freeze: &Freeze,
    log: &mut dyn FnMut(String),
) -> Result<Taken, String> {
    let mut wait = policy.backoff;
    let tries = policy.tries.max(1);
    let mut last = String::new();
    for attempt in 1..=tries {
        match try_frozen(provider, source, freeze, log) {
            Ok(taken) => {
                if attempt > 1 {
                    log(format!(
                        "{} snapshot of {} succeeded on try {attempt} of {tries}",
                        provider.name(),
                        source.display()
                    ));
                }
                return Ok(taken);
            }
            Err(e) => {
                log(format!(
                    "{} snapshot of {} failed (try {attempt} of {tries}): {e}",
                    provider.name(),
                    source.display()
                ));
                last = e;
                if attempt < tries {
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
    }
    Err(format!("{} snapshot of {} failed {tries} times; last error: {last}", provider.name(), source.display()))
}

/// One try: applications prepared, pre-freeze script, snapshot, post-thaw script, applications
/// released. The freeze is timed from the first step's start to the last one's end.
fn try_frozen(
    provider: &dyn SnapshotProvider,
    source: &Path,
    freeze: &Freeze,
    log: &mut dyn FnMut(String),
) -> Result<Taken, String> {
    let started = Instant::now();
    let mut warnings = Vec::new();
    let mut held = Vec::new();
    let mut prepared = Ok(());
    for spec in &freeze.apps {
        match apps::prepare(spec, &freeze.env, freeze.limit, freeze.file_level.then_some(source), log) {
            Ok(h) => held.push(h),
            Err(e) if freeze.app_policy == AppPolicy::Ignore => {
                log(format!("{e}; the backup goes on without it (processing policy: ignore)"));
                warnings.push(e);
            }
            Err(e) => {
                prepared = Err(e);
                break;
            }
        }
    }
    // A freeze script may not use more than the whole freeze may last.
    let bounded = |s: &Script| Script { command: s.command.clone(), timeout: s.timeout.min(freeze.limit) };
    let mut thawed = Ok(());
    let created = prepared.and_then(|()| {
        let pre = match &freeze.pre_freeze {
            Some(s) => scripts::run("pre-freeze script", &bounded(s), &freeze.env, log).map(drop),
            None => Ok(()),
        };
        let created = pre.and_then(|()| provider.create(source));
        // The thaw runs whatever happened since the freeze script began: a failed pre-freeze
        // script may have frozen part of what it meant to.
        if let Some(s) = &freeze.post_thaw {
            thawed = scripts::run("post-thaw script", &bounded(s), &freeze.env, log).map(drop);
        }
        created
    });
    let mut applications = Vec::new();
    let mut through_copy = Vec::new();
    let mut released = Ok(());
    for h in held {
        match h.release(log) {
            Ok(apps::Released::Done(r)) => applications.push(r),
            Ok(apps::Released::Held(h)) => through_copy.push(h),
            Err(e) if freeze.app_policy == AppPolicy::Ignore => {
                log(format!("{e}; the point is not application-consistent for it (processing policy: ignore)"));
                warnings.push(e);
            }
            Err(e) => released = released.and(Err(e)),
        }
    }
    let frozen = started.elapsed();
    let mut snapshot = created?;
    thawed?;
    released?;
    if frozen > freeze.limit {
        drop(snapshot);
        return Err(format!(
            "the freeze lasted {}, longer than its limit of {}: the snapshot was dropped",
            scripts::human(frozen),
            scripts::human(freeze.limit)
        ));
    }
    // A snapshot of a moment when every application was consistent; a live read is not one,
    // unless every application holds its backup through the copy (and ends it well, which the
    // backup checks at its end).
    let all = !freeze.apps.is_empty() && warnings.is_empty();
    let all_held = through_copy.len() == freeze.apps.len();
    if all && (snapshot.consistency != Consistency::CrashInconsistent || all_held) {
        snapshot.consistency = Consistency::ApplicationConsistent;
    } else if !freeze.apps.is_empty() && snapshot.consistency == Consistency::CrashInconsistent && !all_held {
        warnings.push(
            "the source was read live (no snapshot): the applications' preparation cannot make it consistent".into(),
        );
    }
    Ok(Taken { snapshot, frozen, applications, warnings, held: through_copy })
}

/// `PID-RANDOM`: names what this process creates, unique, and tells a later start whether its
/// maker is still alive.
pub(crate) fn owned_tag() -> String {
    let r: [u8; 4] = bulwark_repo::crypto::random_bytes();
    format!("{}-{}", std::process::id(), r.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Whether process `pid` is alive (stale snapshots carry the pid of the backup that made them).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn run_tool(cmd: &mut std::process::Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
