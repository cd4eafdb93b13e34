//! The standalone commands: `bulwark repo|backup|restore|ls|points|verify|forget|gc`, straight
//! against a repository directory on this computer, as an agent without a server works. (A
//! restore without --repo goes through the server: [`crate::admin::restore`].)

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bulwark_agent::apps::{AppPolicy, AppSpec};
use bulwark_agent::change_tracking::CbtMode;
use bulwark_agent::filter::FilterOptions;
use bulwark_agent::scripts::Script;
use bulwark_agent::snapshot::{CowSize, Freeze, RetryPolicy, SnapshotMode};
use bulwark_agent::{BackupDone, BackupSettings, RestoreDone, RestoreSettings, TaskKind};
use bulwark_repo::retention::Policy;
use bulwark_repo::storage::Location;
use bulwark_repo::{BlockSize, Compression, InitOptions, Layout, Repository};
use clap::{Args, Subcommand, ValueEnum};

use crate::{ui, CANCEL};

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create a new repository in an empty or absent directory.
    Init(InitArgs),
    /// Change the password of an encrypted repository (the data is not re-encrypted).
    Passwd {
        #[command(flatten)]
        repo: RepoArgs,
        /// File whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        new_password_file: PathBuf,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Bring a repository of an older format to this version's: adds integrity digests to the
    /// manifests of an unencrypted repository and to the key file of an encrypted one (so a
    /// damaged key file is told from a wrong password). Refuses while a manifest is damaged.
    /// Safe to interrupt and run again; builds older than this one cannot read the result.
    Upgrade {
        #[command(flatten)]
        repo: RepoArgs,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct InitArgs {
    /// Where the new repository goes: a directory (`/srv/backup`, `file:///srv/backup`) or an
    /// S3 bucket and prefix (`s3://bucket/prefix?endpoint=https://host:port&region=R`; keys
    /// from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or `credentials-file=FILE`).
    repo: Location,
    /// Encrypt the repository's data and metadata with a key sealed by the password.
    #[arg(long, value_enum, default_value_t = Encryption::None)]
    encryption: Encryption,
    /// File whose first line is the password (else BULWARK_PASSWORD).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Whom agents writing it through data movers are trusted with: `shared` (one key; a
    /// block two computers hold is stored once; every agent can read all) or `computer` (a
    /// key per computer, derived from the master key: an agent reads and dedupes only its
    /// own computer's data). `computer` needs encryption; chosen at creation for good.
    #[arg(long, default_value = "shared", value_parser = ["shared", "computer"])]
    isolation: String,
    /// Chunks are written into pack files closed at about this many MiB (1 to 1024): larger
    /// packs mean fewer objects (and S3 requests), smaller ones less to rewrite when garbage
    /// collection repacks.
    #[arg(long, value_name = "MIB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pack_size: u64,
    /// Lock every point for this many days after its time, so it cannot be deleted or
    /// altered before then, not even by this user (ransomware that holds the backup
    /// credentials): in a local directory through the immutability service (`bulwark
    /// hardened-service`, at BULWARK_HARDENED_SOCKET or /run/bulwark/hardened.sock), which must
    /// serve the directory; in an S3 bucket by Object Lock (COMPLIANCE mode), which the bucket
    /// must have enabled, without a default retention. `forget` refuses such points until their
    /// date, and gc leaves what they need.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
    immutable_days: Option<u32>,
    /// One file per chunk instead of packs, as repositories of format version 3 and older
    /// kept them (local directories only): for filesystems that deduplicate files themselves.
    #[arg(long, conflicts_with = "pack_size")]
    loose: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Encryption {
    /// Not encrypted.
    None,
    /// AES-256-GCM, the key derived from the password.
    Aes256gcm,
}

/// Which repository, and its password.
#[derive(Args)]
pub struct RepoArgs {
    /// The repository: a directory, or `s3://bucket/prefix?endpoint=…&region=…`.
    #[arg(long = "repo", id = "repo", value_name = "REPO")]
    path: Location,
    /// File whose first line is the repository password (else BULWARK_PASSWORD).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

impl RepoArgs {
    pub(crate) fn open(&self) -> Result<Repository> {
        let pw = read_password(self.password_file.as_deref())?;
        Ok(Repository::open(&self.path, pw.as_deref())?)
    }
}

#[derive(Args)]
pub struct BackupArgs {
    /// Block device (/dev/sdb, /dev/vg/lv), disk image file, or directory.
    source: PathBuf,
    #[command(flatten)]
    repo: RepoArgs,
    /// Name of the backup series (points of one name are compared for incrementals and
    /// kept together by `forget`).
    #[arg(long)]
    name: String,
    /// Volumes: unit of change detection and deduplication (256K, 512K, 1M or 4M).
    #[arg(long, default_value = "1M", value_parser = parse_block_size)]
    block_size: BlockSize,
    /// Compression: none, dedupe-friendly (lz4), optimal (zstd 1), high (zstd 6),
    /// extreme (zstd 15).
    #[arg(long, default_value = "optimal")]
    compression: Compression,
    /// How to get a consistent view of a live source: reflink (image files on XFS/btrfs,
    /// freezing filesystems this host mounted from the image), lvm (logical volumes),
    /// btrfs, none (read live: crash-inconsistent), or auto.
    #[arg(long, default_value = "auto")]
    snapshot: SnapshotMode,
    /// Tries at creating the snapshot before giving up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    snapshot_tries: u32,
    /// Seconds to wait before the second try (doubled before each further one).
    #[arg(long, default_value_t = 2, value_name = "SECONDS")]
    snapshot_retry_wait: u64,
    /// Copy-on-write space of a classic LVM snapshot: a share of the volume (20%) or a size
    /// (512M, 2G). It holds what is written to the volume while the backup reads; when it
    /// overflows the kernel invalidates the snapshot, the attempt fails and the next one gets
    /// twice the space. Never more than the volume, nor than its volume group has free.
    #[arg(long, default_value = "20%", value_name = "SIZE")]
    lvm_snapshot_size: CowSize,
    /// Command run (by /bin/sh) right before each snapshot try, to make applications
    /// consistent: flush and hold writes. A failure fails the try. Its output goes to the
    /// backup's notes; BULWARK_SOURCE names the source.
    #[arg(long, value_name = "COMMAND")]
    pre_freeze_script: Option<String>,
    /// Command run right after each snapshot try, whatever happened since the pre-freeze
    /// script started: releases what it held. A failure fails the try.
    #[arg(long, value_name = "COMMAND")]
    post_thaw_script: Option<String>,
    /// Longest time from the pre-freeze script's start to the post-thaw script's end; a try
    /// that takes longer is dropped and counts as failed (scripts past it are killed).
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    freeze_limit: u64,
    /// An application to make consistent right before each snapshot try, in one database
    /// session held until right after it: `postgres:host=H,port=P,user=U,password-file=F,
    /// dbname=D` (every key optional; a host starting with / is the socket directory, by
    /// default /var/run/postgresql; without a password file, .pgpass or peer authentication
    /// as the OS user of that name), or `mysql:socket=S` or `mysql:host=H,port=P` with
    /// `user=U,password-file=F` (`mariadb:` too; every key optional: the socket by default
    /// /run/mysqld/mysqld.sock, port 3306, user root; without a password file, unix_socket
    /// authentication as the OS user of that name). PostgreSQL: a checkpoint; for a directory
    /// holding its data directory (a file-level backup), pg_backup_start before the snapshot
    /// and pg_backup_stop after the copy, the backup label and the WAL in between added, so
    /// the restored directory starts on its own (even with --snapshot none). MySQL: a read
    /// lock (MariaDB: BACKUP STAGE BLOCK_COMMIT; MySQL: FLUSH TABLES WITH READ LOCK; or choose
    /// with lock=backup-stage or lock=flush-tables) held through the snapshot, no wait for it
    /// longer than --freeze-limit, and the binary log position recorded. Repeatable. With
    /// every application done, the point is application-consistent.
    #[arg(long = "app", value_name = "SPEC")]
    apps: Vec<String>,
    /// When an application cannot be prepared: require (the snapshot try fails; the backup
    /// fails once every try did) or ignore (the backup goes on, the point is not
    /// application-consistent, and the command exits 3 after saying why).
    #[arg(long, default_value = "require", value_name = "POLICY")]
    app_policy: AppPolicy,
    /// Volumes: changed block tracking: extents (what the storage records: the extents of
    /// reflink snapshots of image files, the mappings of LVM thin snapshots in their pool's
    /// metadata), none (read everything, compare digests), or auto (extents where there is a
    /// reflink or thin snapshot).
    #[arg(long, default_value = "auto")]
    cbt: CbtMode,
    /// Volumes: where change tracking keeps, between backups, what it needs for block devices
    /// (LVM thin volumes: which kept snapshot became which point). Image files keep theirs
    /// beside the image.
    #[arg(long, value_name = "DIR", default_value = bulwark_agent::backup::STATE_DIR)]
    state_dir: PathBuf,
    /// Volumes: a file or folder (from the root of each filesystem on the volume) whose data
    /// is not stored; restored as zero-filled files of the same size. Directories: a glob
    /// (`*.tmp`, `/var/cache`, `home/**/.cache`) of entries not backed up at all. Repeatable.
    #[arg(long, value_name = "PATH|GLOB")]
    exclude: Vec<String>,
    /// Volumes: store blocks the filesystems mark unused (dropped by default).
    #[arg(long)]
    keep_unused: bool,
    /// Volumes: store swap areas and swap files (dropped by default, their header kept).
    #[arg(long)]
    keep_swap: bool,
    /// Directories: read every file again instead of reusing unchanged files from the
    /// previous point (stores again anything the repository lost).
    #[arg(long)]
    full: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The point: an id or NAME:latest (with --repo), an id from `bulwark point list` (through
    /// the server).
    point: String,
    /// Repository directory (standalone restore); absent: through the server.
    #[arg(long = "repo", value_name = "REPO")]
    repo: Option<Location>,
    /// With --repo: file whose first line is the repository password (else BULWARK_PASSWORD).
    #[arg(long, value_name = "FILE", requires = "repo")]
    password_file: Option<PathBuf>,
    /// Through the server: the computer to restore on (default: the point's own).
    #[arg(long, conflicts_with = "repo")]
    computer: Option<String>,
    /// Where to restore: a block device or an image file (volume points), a directory
    /// (file-level points; created if absent).
    #[arg(long, value_name = "PATH")]
    to: PathBuf,
    /// Write over a target that holds data: replace an existing non-empty file, write over a
    /// block device that holds a filesystem, a partition table or any data, or restore into a
    /// non-empty directory (replacing entries of the same name). Without it such a target is
    /// refused before anything is written.
    #[arg(long)]
    overwrite: bool,
    /// Restore only this path of the point (and what is under it), at the same place under the
    /// target directory. Repeatable. Every path must be in the point, or nothing is written.
    /// On a volume point, the files are read out of the volume's filesystem (ext2/3/4) into
    /// the directory --to; without --path a volume point is restored whole.
    #[arg(long, value_name = "PATH")]
    path: Vec<String>,
    /// Volume points with --path: the volume whose files to restore (0: the whole image; N:
    /// partition N of a disk). By default the whole image (through the server), or a disk's
    /// only partition that holds files (with --repo).
    #[arg(long, value_name = "N", requires = "path")]
    volume: Option<u32>,
    /// File-level points: restore files of a computer that is not trusted onto this one.
    /// Device nodes and fifos are skipped (with a warning); set-user-id and set-group-id
    /// bits, and the sticky bit of files, are cleared; owners are not applied (everything
    /// belongs to the user running the restore); extended attributes that grant
    /// privileges or steer the kernel (`security.*`, such as file capabilities and
    /// SELinux labels, and `trusted.*`) are not restored. Modes, times, ACLs and `user.*`
    /// attributes are.
    #[arg(long)]
    safe: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: crate::admin::Conn,
}

#[derive(Args)]
pub struct LsArgs {
    /// The point: an id or NAME:latest.
    point: String,
    /// File-level points: only this path and what is under it. Volume points: the directory
    /// to list (default /).
    path: Option<String>,
    #[command(flatten)]
    repo: RepoArgs,
    /// Volume points: the volume whose files to list (0: the whole image; N: partition N of a
    /// disk). Without it, a disk with several filesystems shows its volumes.
    #[arg(long, value_name = "N")]
    volume: Option<u32>,
    /// Volume points: list at most N entries.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Volume points: list the entries whose names sort after NAME (the next page).
    #[arg(long, value_name = "NAME")]
    after: Option<String>,
    /// Print the entries as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PointsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only points of this backup name.
    #[arg(long)]
    name: Option<String>,
    /// Print the points as JSON (damaged ones with `status: damaged` and the problem).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Check only this point (id or NAME:latest); all points otherwise.
    point: Option<String>,
    #[command(flatten)]
    repo: RepoArgs,
    /// Store damaged and missing chunks again from the data in --from, then check the
    /// damaged points again and say which are whole.
    #[arg(long, requires = "from")]
    repair: bool,
    /// With --repair: where the data still is. A block device or image file (the blocks of
    /// damaged volume points are read at their offsets) or a directory (the damaged files
    /// of file-level points are read at their paths under it). Repeatable.
    #[arg(long, value_name = "SOURCE")]
    from: Vec<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["name", "point"])))]
pub struct ForgetArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The backup name whose points the policy thins out (with --keep-last and the other
    /// --keep-… options).
    #[arg(long, conflicts_with = "point", requires = "keep_last")]
    name: Option<String>,
    /// Delete this point (an id); repeatable.
    #[arg(long, value_name = "ID")]
    point: Vec<String>,
    /// With --name: keep the newest N points.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// With --name: also keep the newest point of each of the last N days (UTC).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "name")]
    keep_daily: u32,
    /// With --name: also keep the newest point of each of the last N ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "name")]
    keep_weekly: u32,
    /// With --name: also keep the newest point of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "name")]
    keep_monthly: u32,
    /// With --name: also keep the newest point of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "name")]
    keep_yearly: u32,
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print what was kept and deleted as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_block_size(s: &str) -> Result<BlockSize, String> {
    let b: BlockSize = s.parse()?;
    if BlockSize::OFFERED.contains(&b.bytes()) {
        Ok(b)
    } else {
        Err(format!("{s} is not offered; choose 256K, 512K, 1M or 4M"))
    }
}

/// [`Repository::resolve`], warning when `NAME:latest` may not be the newest point of NAME:
/// points whose manifest is damaged have no name to compare.
pub(crate) fn resolve_noting_damage(r: &Repository, spec: &str) -> Result<bulwark_repo::Manifest> {
    let Some(name) = spec.strip_suffix(":latest") else { return Ok(r.resolve(spec)?) };
    // One listing serves both the answer and the warning.
    let c = r.catalog()?;
    let Some(m) = c.latest(name) else { return Ok(r.resolve(spec)?) };
    let unknown = c.damaged.iter().map(|d| &d.id).chain(&c.orphans).filter(|id| **id > m.id).count();
    if unknown > 0 {
        eprintln!(
            "warning: {unknown} newer points are damaged (their names cannot be read): {} is the newest readable one \
             of its name; `bulwark verify` tells more",
            m.id
        );
    }
    Ok(m.clone())
}

fn read_password(file: Option<&Path>) -> Result<Option<Vec<u8>>> {
    if let Some(f) = file {
        let text = std::fs::read(f).with_context(|| format!("cannot read password file {}", f.display()))?;
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(Some(line.to_vec()));
    }
    Ok(std::env::var_os("BULWARK_PASSWORD").filter(|p| !p.is_empty()).map(|p| p.into_encoded_bytes()))
}

/// `bulwark repo init|passwd|upgrade`.
pub fn repo(cmd: RepoCommand) -> Result<ExitCode> {
    match cmd {
        RepoCommand::Init(a) => init(a)?,
        RepoCommand::Upgrade { repo, json } => {
            let pw = read_password(repo.password_file.as_deref())?;
            let sealed = Repository::upgrade(&repo.path, pw.as_deref())?;
            if json {
                ui::print_json(
                    &serde_json::json!({"repository": repo.path.to_string(), "format_version": bulwark_repo::FORMAT_VERSION,
                    "sealed_manifests": sealed}),
                );
            } else {
                println!(
                    "{} is at format version {}{}",
                    repo.path,
                    bulwark_repo::FORMAT_VERSION,
                    if sealed > 0 {
                        format!(" ({sealed} manifests sealed with integrity digests)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        RepoCommand::Passwd { repo, new_password_file, json } => {
            let old = read_password(repo.password_file.as_deref())?
                .context("give the current password with --password-file or BULWARK_PASSWORD")?;
            let new = read_password(Some(&new_password_file))?.expect("a file was given");
            Repository::change_password(&repo.path, &old, &new, Default::default())?;
            if json {
                ui::print_json(&serde_json::json!({"repository": repo.path.to_string(), "password_changed": true}));
            } else {
                println!("password of {} changed", repo.path);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init(a: InitArgs) -> Result<()> {
    let password = match a.encryption {
        Encryption::None => None,
        Encryption::Aes256gcm => Some(
            read_password(a.password_file.as_deref())?
                .context("an encrypted repository needs a password: give --password-file or set BULWARK_PASSWORD")?,
        ),
    };
    let encrypted = password.is_some();
    let isolation = a.isolation.parse().map_err(anyhow::Error::msg)?;
    let (layout, pack_size) = if a.loose { (Layout::Loose, None) } else { (Layout::Packs, Some(a.pack_size << 20)) };
    let immutable_days = a.immutable_days;
    Repository::init(
        &a.repo,
        &InitOptions { password, isolation, layout, pack_size, immutable_days, ..Default::default() },
    )?;
    if a.json {
        ui::print_json(&serde_json::json!({"repository": a.repo.to_string(),
            "encryption": if encrypted {"aes256gcm"} else {"none"}, "isolation": isolation.name()}));
    } else {
        println!(
            "created repository {} ({})",
            a.repo,
            if encrypted { "encrypted, AES-256-GCM" } else { "not encrypted" }
        );
        if encrypted {
            println!("keep the password safe: without it the backups cannot be restored");
        }
    }
    Ok(())
}

/// `bulwark backup`: a volume or a directory (as [`bulwark_agent::kind_of`] tells) into a new point.
pub fn backup(a: BackupArgs) -> Result<ExitCode> {
    let r = a.repo.open()?;
    let retry = RetryPolicy { tries: a.snapshot_tries, backoff: std::time::Duration::from_secs(a.snapshot_retry_wait) };
    // Not repeated in the message: a mistyped spec may hold a password.
    let apps = (a.apps.iter().enumerate())
        .map(|(i, spec)| spec.parse::<AppSpec>().map_err(|e| anyhow::anyhow!("--app number {}: {e}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    let limit = std::time::Duration::from_secs(a.freeze_limit);
    let script = |command: &Option<String>| command.clone().map(|command| Script { command, timeout: limit });
    let freeze = Freeze {
        pre_freeze: script(&a.pre_freeze_script),
        post_thaw: script(&a.post_thaw_script),
        limit,
        env: vec![("BULWARK_SOURCE".into(), a.source.display().to_string())],
        apps,
        app_policy: a.app_policy,
        ..Freeze::default()
    };
    let mut settings = BackupSettings::new(&a.name);
    (settings.volume.freeze, settings.files.freeze) = (freeze.clone(), freeze);
    let v = &mut settings.volume;
    (v.block_size, v.compression, v.snapshot, v.retry, v.cbt) = (a.block_size, a.compression, a.snapshot, retry, a.cbt);
    (v.lvm_cow, v.state_dir) = (a.lvm_snapshot_size, a.state_dir);
    v.filters = FilterOptions { unused: !a.keep_unused, swap: !a.keep_swap, exclude: a.exclude.clone() };
    let f = &mut settings.files;
    (f.compression, f.exclude, f.snapshot, f.retry, f.full) = (a.compression, a.exclude, a.snapshot, retry, a.full);
    let kind = bulwark_agent::kind_of(&a.source);
    let bar = match kind {
        TaskKind::Files => ui::spinner_bytes("backup", a.json),
        TaskKind::Volume => ui::bar(bulwark_agent::source::open_source(&a.source)?.size, "backup", a.json),
    };
    let done = bulwark_agent::pipeline::backup(&r, &a.source, kind, &settings, &|n| bar.inc(n), &CANCEL)?;
    bar.finish_and_clear();
    let warned = match &done {
        BackupDone::Volume(r) => !r.warnings.is_empty(),
        // Unreadable files have always exited 0 with the summary saying so; an application
        // not made consistent is new, and exits 3.
        BackupDone::Files(r) => !r.warnings.is_empty(),
    };
    match &done {
        _ if a.json => ui::print_json(&done),
        BackupDone::Volume(report) => ui::backup_summary(report),
        BackupDone::Files(report) => ui::file_backup_summary(report),
    }
    Ok(if warned { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// `bulwark restore`: from --repo on this computer, or through the server without it.
pub fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let Some(repo) = a.repo else {
        let ask = crate::admin::RestoreAsk {
            to: a.to,
            overwrite: a.overwrite,
            paths: a.path,
            computer: a.computer,
            safe: a.safe,
            volume: a.volume.unwrap_or(0),
        };
        return crate::admin::restore(&a.conn, a.json, &a.point, ask);
    };
    let r = RepoArgs { path: repo, password_file: a.password_file }.open()?;
    let m = resolve_noting_damage(&r, &a.point)?;
    if m.kind == bulwark_repo::PointKind::Volume && !a.path.is_empty() {
        return crate::browse::restore(&r, &m, &a.to, &a.path, a.volume, a.overwrite, a.safe, a.json);
    }
    let bar = match m.kind {
        bulwark_repo::PointKind::Files => ui::spinner_bytes("restore", a.json),
        bulwark_repo::PointKind::Volume => ui::bar(m.volume_size, "restore", a.json),
    };
    let settings = RestoreSettings { overwrite: a.overwrite, paths: a.path, safe: a.safe, volume: 0 };
    let done = bulwark_agent::pipeline::restore(&r, &m, &a.to, &settings, &|n| bar.inc(n), &CANCEL)?;
    bar.finish_and_clear();
    match &done {
        _ if a.json => ui::print_json(&done),
        RestoreDone::Volume(report) => ui::restore_summary(report),
        RestoreDone::Files(report) => ui::file_restore_summary(report),
    }
    if let RestoreDone::Files(report) = &done {
        if !report.complete {
            bail!("restore into {} is incomplete: {}", a.to.display(), report.incomplete_summary());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulwark ls`: the entries of a file-level point.
pub fn ls(a: LsArgs) -> Result<ExitCode> {
    let r = a.repo.open()?;
    let m = resolve_noting_damage(&r, &a.point)?;
    if m.kind == bulwark_repo::PointKind::Volume {
        let (path, after) = (a.path.as_deref(), a.after.as_deref());
        return crate::browse::ls(&r, &m, path, a.volume, after, a.limit, a.json);
    }
    if a.volume.is_some() || a.limit.is_some() || a.after.is_some() {
        bail!("{} is a file-level point: --volume, --limit and --after are for volume points", m.id);
    }
    let mut rows = Vec::new();
    bulwark_agent::files::list_tree(&r, &m, a.path.as_deref(), |e| rows.push(ui::ls_row(e)))?;
    if a.path.is_some() && rows.is_empty() {
        bail!("point {} has no path {:?}", m.id, a.path.unwrap_or_default());
    }
    if a.json {
        ui::print_json(&rows);
    } else {
        ui::ls_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulwark points`: the repository's points, oldest first, in the table `point list` uses.
pub fn points(a: PointsArgs) -> Result<ExitCode> {
    let r = a.repo.open()?;
    let catalog = r.catalog()?;
    let points: Vec<_> = catalog.points.iter().filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n)).collect();
    if !a.json {
        let mut rows: Vec<ui::PointRow> = points.iter().map(|m| ui::PointRow::of_manifest(m)).collect();
        rows.extend(ui::damaged_point_rows(&catalog));
        ui::points_table(&rows);
        return Ok(ExitCode::SUCCESS);
    }
    // Damaged points have no name to filter by: they are always listed.
    let mut rows: Vec<serde_json::Value> = points
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).expect("manifests serialize");
            v["status"] = "ok".into();
            v
        })
        .collect();
    rows.extend(
        catalog.damaged.iter().map(|d| serde_json::json!({"id": d.id, "status": "damaged", "problem": d.reason})),
    );
    rows.extend(
        catalog
            .orphans
            .iter()
            .map(|id| serde_json::json!({"id": id, "status": "damaged", "problem": "its manifest is lost"})),
    );
    ui::print_json(&rows);
    Ok(ExitCode::SUCCESS)
}

/// `bulwark verify`: exit status 3 when anything is damaged.
pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let r = a.repo.open()?;
    let which = || match &a.point {
        Some(p) => bulwark_repo::verify::Selection::One(p),
        None => bulwark_repo::verify::Selection::All,
    };
    let threads = bulwark_agent::default_threads();
    let bar = ui::spinner_bytes("verify", a.json);
    let mut report = bulwark_repo::verify::verify(&r, which(), threads, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let mut repaired = None;
    if a.repair && !report.ok {
        let bar = ui::spinner_bytes("repair", a.json);
        let rep = bulwark_agent::repair::repair(&r, &report, &a.from, &|n| bar.inc(n))?;
        bar.finish_and_clear();
        if rep.stored_chunks > 0 {
            let bar = ui::spinner_bytes("verify", a.json);
            report = bulwark_repo::verify::verify(&r, which(), threads, &|n| bar.inc(n))?;
            bar.finish_and_clear();
        }
        repaired = Some(rep);
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(rep) = &repaired {
            v["repair"] = serde_json::to_value(rep)?;
        }
        ui::print_json(&v);
    } else {
        if let Some(rep) = &repaired {
            ui::repair_summary(rep);
        }
        ui::verify_summary(&r.label(), &report);
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `bulwark forget`: given points, or what a retention policy does not keep.
pub fn forget(a: ForgetArgs) -> Result<ExitCode> {
    let r = a.repo.open()?;
    let Some(name) = a.name else {
        let ids = a
            .point
            .iter()
            .map(|p| p.parse::<bulwark_repo::RestorePointId>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        for id in &ids {
            r.delete_point(id)?;
        }
        if a.json {
            ui::print_json(&serde_json::json!({"deleted": ids}));
        } else {
            for id in &ids {
                println!("deleted {id}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let policy = Policy {
        last: a.keep_last.expect("clap requires it with --name"),
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
    };
    if !r.list_points()?.iter().any(|m| m.name == name) {
        bail!("repository {}: no points named {name:?}", r.label());
    }
    let rows: Vec<serde_json::Value> = bulwark_repo::retention::forget(&r, &name, &policy, a.dry_run)?
        .into_iter()
        .map(|d| serde_json::json!({"point": d.point, "created": d.created, "kept": d.kept, "reasons": d.reasons}))
        .collect();
    if a.json {
        ui::print_json(&serde_json::json!({"name": name, "dry_run": a.dry_run, "points": rows}));
    } else {
        ui::forget_summary(&rows, a.dry_run);
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulwark gc`.
pub fn gc(a: GcArgs) -> Result<ExitCode> {
    let r = a.repo.open()?;
    let report = bulwark_repo::gc::collect_garbage(&r, bulwark_repo::gc::DEFAULT_GRACE)?;
    if a.json {
        ui::print_json(&report);
    } else {
        ui::gc_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}
