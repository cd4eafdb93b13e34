//! The two pipelines behind one door. A backup is either of a volume (a block device or an
//! image file, read block by block) or of a directory (read file by file); a restore follows the
//! kind of its point. Which pipeline runs, and which options make sense for which kind, is decided
//! here once, so `bulwark backup`/`bulwark restore` and the agent service cannot drift apart.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use bulwark_repo::{Manifest, PointKind};
use serde::Serialize;

use crate::files::{FileBackupOptions, FileBackupReport, FileRestoreOptions, FileRestoreReport};
use crate::{AgentError, BackupOptions, BackupReport, BackupTarget, Progress, RestoreOptions, RestoreReport, Result};

/// Which pipeline a source takes: the job model's task kind.
pub use bulwark_proto::domain::TaskKind;

/// What a source on this computer is: a directory is backed up file by file, anything else (a
/// block device, an image file, or a path that is not there, which the volume pipeline then
/// names) as a volume.
pub fn kind_of(source: &Path) -> TaskKind {
    if source.is_dir() {
        TaskKind::Files
    } else {
        TaskKind::Volume
    }
}

/// The options of both pipelines; the one that runs takes its own.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub volume: BackupOptions,
    pub files: FileBackupOptions,
}

impl BackupSettings {
    /// Defaults of both pipelines for the backup name `name`.
    pub fn new(name: &str) -> Self {
        BackupSettings { volume: BackupOptions::new(name), files: FileBackupOptions::new(name) }
    }

    /// The same settings for another backup name.
    pub fn named(&self, name: &str) -> Self {
        BackupSettings {
            volume: BackupOptions { name: name.into(), ..self.volume.clone() },
            files: FileBackupOptions { name: name.into(), ..self.files.clone() },
        }
    }
}

/// What a backup of either kind reports.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BackupDone {
    Volume(BackupReport),
    Files(FileBackupReport),
}

impl BackupDone {
    /// Whether the point was made with something the operator should look at (files that could
    /// not be read, an application not made consistent).
    pub fn has_warnings(&self) -> bool {
        match self {
            BackupDone::Volume(r) => !r.warnings.is_empty(),
            BackupDone::Files(r) => r.summary.status != "ok" || !r.warnings.is_empty(),
        }
    }
}

/// Backs `source` up with the pipeline of `kind`.
pub fn backup(
    target: &dyn BackupTarget,
    source: &Path,
    kind: TaskKind,
    settings: &BackupSettings,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<BackupDone> {
    match kind {
        TaskKind::Volume => {
            crate::backup_volume(target, source, &settings.volume, progress, cancel).map(BackupDone::Volume)
        }
        TaskKind::Files => {
            crate::files::backup_files(target, source, &settings.files, progress, cancel).map(BackupDone::Files)
        }
    }
}

/// What a restore asks for, whatever the point's kind.
#[derive(Debug, Clone, Default)]
pub struct RestoreSettings {
    /// Write over a target that holds data.
    pub overwrite: bool,
    /// Only these paths: of a file-level point, or of the filesystem on `volume` of a volume
    /// point (restored by a [`VolumeFiles`]).
    pub paths: Vec<String>,
    /// Files of a computer that is not trusted (see [`FileRestoreOptions`]).
    pub safe: bool,
    /// Volume points restored by paths: the volume the files are on.
    pub volume: u32,
}

/// Restores files out of a volume point. The filesystem reader is `bulwark-browse`'s, which
/// builds on this crate's file writer, so whoever runs restores hands one in.
pub trait VolumeFiles: Send + Sync {
    /// Restores `settings.paths` of the filesystem on `settings.volume` of `image` (point `m`)
    /// into the directory `to`, by the rules of a file-level restore.
    fn restore(
        &self,
        image: bulwark_repo::PointImage,
        m: &Manifest,
        to: &Path,
        settings: &RestoreSettings,
        progress: Progress,
        cancel: &std::sync::Arc<AtomicBool>,
    ) -> Result<FileRestoreReport>;
}

/// What a restore of either kind reports.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RestoreDone {
    Volume(RestoreReport),
    Files(FileRestoreReport),
}

/// Restores the point `m` to `to` with the pipeline of its kind. Options that only file-level
/// points take are refused for a volume point before anything is written.
pub fn restore(
    target: &dyn BackupTarget,
    m: &Manifest,
    to: &Path,
    settings: &RestoreSettings,
    progress: Progress,
    cancel: &AtomicBool,
) -> Result<RestoreDone> {
    match m.kind {
        PointKind::Files => {
            let opts = FileRestoreOptions {
                overwrite: settings.overwrite,
                paths: settings.paths.clone(),
                safe: settings.safe,
            };
            crate::files::restore_files(target, m, to, &opts, progress, cancel).map(RestoreDone::Files)
        }
        PointKind::Volume => {
            let volume_only = |what: &str| AgentError::Unsupported {
                reason: format!(
                    "{what} is for file-level points; {} is a volume point, restored whole onto a device or file",
                    m.id
                ),
            };
            if !settings.paths.is_empty() {
                return Err(volume_only("selecting paths (--path)"));
            }
            if settings.safe {
                return Err(volume_only("a safe restore (--safe)"));
            }
            let opts = RestoreOptions { overwrite: settings.overwrite, ..Default::default() };
            crate::restore_volume(target, m, to, &opts, progress, cancel).map(RestoreDone::Volume)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_backed_up_as_files_anything_else_as_a_volume() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, b"").unwrap();
        assert_eq!(kind_of(dir.path()), TaskKind::Files);
        assert_eq!(kind_of(&image), TaskKind::Volume);
        assert_eq!(kind_of(&dir.path().join("absent")), TaskKind::Volume);
    }
}
