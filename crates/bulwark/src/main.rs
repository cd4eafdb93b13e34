//! The `bulwark` command: argument parsing and wiring only; the work lives in the library crates.

mod admin;
mod demo;
mod nodes;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::sync::LazyLock;

use anyhow::{bail, Context, Result};
use bulwark_agent::change_tracking::CbtMode;
use bulwark_agent::files::{FileBackupOptions, FileRestoreOptions};
use bulwark_agent::filter::FilterOptions;
use bulwark_agent::snapshot::{RetryPolicy, SnapshotMode};
use bulwark_agent::{BackupOptions, RestoreOptions};
use bulwark_repo::retention::Policy;
use bulwark_repo::{BlockSize, Compression, InitOptions, PointKind, Repository};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Bulwark: backup and restore of Linux volumes into a deduplicated, verifiable repository.
///
/// Standalone commands work straight against a repository directory, as an agent working
/// without a server does. Encrypted repositories take their password from --password-file or the
/// BULWARK_PASSWORD environment variable.
///
/// Exit status: 0 success; 1 failure (the message says what and where); 2 bad usage;
/// 3 `verify` or `repository verify` found damage.
#[derive(Parser)]
#[command(name = "bulwark", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: admin::Conn,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent service: this computer's inventory and its backup tasks, on the server's
    /// orders.
    ///
    /// The first start joins the server with a one-time token made for this node's name
    /// (`--server URL --join-token-file F`): the agent generates its key, gets a certificate
    /// from the server's CA and keeps both in --data-dir (mode 0600). Later starts need only --data-dir. Every connection is mutual
    /// TLS 1.3; only the server may call the agent. A snapshot left by a task that was running
    /// when the agent died is removed at the next start. Prints one JSON line with the address
    /// once listening; logs to stderr. SIGTERM or SIGINT stops it.
    Agent {
        #[command(flatten)]
        node: nodes::NodeArgs,
    },
    /// Run the transport service of a repository host: one data mover process per task.
    ///
    /// Joins like `bulwark agent`. Repositories it serves must lie under a --root. For each task
    /// the server asks for, it starts a data mover bound to a one-time ticket: it accepts one
    /// connection from the one agent the ticket was issued to, stores what it sends, and commits
    /// the restore point; a data mover dies with the service.
    Transport {
        #[command(flatten)]
        node: nodes::NodeArgs,
        /// A directory holding repositories this node serves. Repeatable.
        #[arg(long = "root", required = true)]
        roots: Vec<PathBuf>,
    },
    /// (internal) A data mover, started by the transport service.
    #[command(hide = true)]
    DataMover,
    /// Run the backup server: config database, REST API, job scheduler, backup manager,
    /// resource scheduler, certificate authority, restore point catalog.
    ///
    /// The config database is an SQLite file in --data-dir unless --db names a PostgreSQL
    /// database (postgres://USER:PASSWORD@HOST/DB); its schema is brought up to date at start.
    /// The first start creates the CA (DATA_DIR/ca.pem) and the first admin, whose API token
    /// it writes once to DATA_DIR/initial-admin-token (0600). Agents and transport nodes join
    /// on the same HTTPS port with tokens from `bulwark token create`. Prints one JSON line with
    /// the address once listening.
    Server {
        #[arg(long, default_value = "/var/lib/bulwark-server")]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:9440")]
        listen: std::net::SocketAddr,
        /// PostgreSQL URL; default an SQLite file in --data-dir.
        #[arg(long, env = "BULWARK_DB", hide_env_values = true)]
        db: Option<String>,
        /// Seconds between the job scheduler's looks at the clock.
        #[arg(long, default_value_t = 15)]
        tick_seconds: u64,
        /// Another name (DNS or IP) clients use to reach the server. Repeatable.
        #[arg(long)]
        tls_name: Vec<String>,
    },
    /// Tokens: join tokens for agents and transport nodes, API tokens; list, revoke.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Users of the server's API: create, change passwords, delete.
    #[command(subcommand)]
    User(admin::UserCmd),
    /// Repositories the server knows, and their health checks (through the server).
    #[command(subcommand)]
    Repository(admin::RepositoryCmd),
    /// Secrets for jobs' pre and post commands, sealed on the server (through the server).
    #[command(subcommand)]
    Secret(admin::SecretCmd),
    /// Protected computers (joined agents): list, show, remove, readmit.
    #[command(subcommand)]
    Computer(admin::ComputerCmd),
    /// Transport nodes (joined repository hosts): list, remove, readmit.
    #[command(subcommand)]
    TransportNode(admin::TransportNodeCmd),
    /// Protection groups.
    #[command(subcommand)]
    Group(admin::GroupCmd),
    /// Backup jobs: create, start (--wait follows the session), stop, retry.
    #[command(subcommand)]
    Job(admin::JobCmd),
    /// Job sessions and their tasks.
    #[command(subcommand)]
    Session(admin::SessionCmd),
    /// Restore points in the server's catalog.
    #[command(subcommand)]
    Point(admin::PointCmd),
    /// Create a repository or change its password.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Back up a block device, an image file or a directory as a new restore point.
    ///
    /// A volume (block device or image file) is read front to back: zero blocks and blocks
    /// unchanged since the previous point of the same --name are skipped, and only what the
    /// repository lacks is compressed and stored. A directory is backed up file by file with
    /// its metadata (owners, modes, nanosecond times, xattrs and ACLs, links, holes); files
    /// unchanged since the previous point (inode, size, ctime, mtime) are not read again. The
    /// point appears only when complete: an interrupted backup leaves nothing visible.
    Backup {
        /// Block device (/dev/sdb, /dev/vg/lv), disk image file, or directory.
        source: PathBuf,
        #[command(flatten)]
        repo: RepoArgs,
        /// Name of the backup series (points of one name are compared for incrementals and
        /// kept together by `forget`).
        #[arg(long)]
        name: String,
        /// Unit of change detection and deduplication.
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
        #[arg(long, default_value_t = 2)]
        snapshot_retry_wait: u64,
        /// Changed block tracking: extents (compare the extents of reflink snapshots; needs
        /// --snapshot reflink), none (read everything, compare digests), or auto.
        #[arg(long, default_value = "auto")]
        cbt: CbtMode,
        /// Volumes: a file or folder (from the root of each filesystem on the volume) whose data
        /// is not stored; restored as zero-filled files of the same size. Directories: a glob
        /// (`*.tmp`, `/var/cache`, `home/**/.cache`) of entries not backed up at all. Repeatable.
        #[arg(long, value_name = "PATH|GLOB")]
        exclude: Vec<String>,
        /// Store blocks the filesystems mark unused (dropped by default).
        #[arg(long)]
        keep_unused: bool,
        /// Store swap areas and swap files (dropped by default, their header kept).
        #[arg(long)]
        keep_swap: bool,
        /// Directories: read every file again instead of reusing unchanged files from the
        /// previous point (stores again anything the repository lost).
        #[arg(long)]
        full: bool,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Restore a point onto a block device, into an image file, or (file-level) a directory.
    ///
    /// With --repo, straight from that repository on this computer; POINT is a point id or
    /// NAME:latest. Without --repo, through the backup server (BULWARK_SERVER, BULWARK_TOKEN,
    /// BULWARK_CA_CERT): POINT is an id from `bulwark point list`, and the restore runs on
    /// --computer (the point's own by default) from a data mover serving only that point.
    /// A block device must be unmounted, not in use, at least as large as the volume and empty
    /// (no filesystem, partition table or any data at its start or end) unless --overwrite is
    /// given; it is refused before anything is written otherwise. A file is created (or
    /// replaced with --overwrite) and appears only once completely restored.
    ///
    /// A file-level restore goes on past an entry it cannot restore (damaged content, a full
    /// disk): that entry is left out (a file appears only once whole), the report and --json
    /// list every such entry with the reason, and the exit status is 1. Nothing is ever
    /// created outside the target directory, whatever the point's tree holds.
    Restore {
        point: String,
        /// Repository directory (standalone restore); absent: through the server.
        #[arg(long = "repo", value_name = "REPO")]
        repo: Option<PathBuf>,
        /// File whose first line is the repository password (else BULWARK_PASSWORD).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Through the server: the computer to restore on (default: the point's own).
        #[arg(long)]
        computer: Option<String>,
        /// Block device or file to restore to.
        #[arg(long)]
        to: PathBuf,
        /// Replace an existing non-empty target file, write over a block device that holds
        /// data (a filesystem, a partition table, anything), or restore into a non-empty
        /// directory.
        #[arg(long)]
        overwrite: bool,
        /// File-level points: restore only this path (and what is under it). Repeatable.
        #[arg(long, value_name = "PATH")]
        path: Vec<String>,
        /// File-level points: restore files of a computer that is not trusted onto this one.
        /// Device nodes and fifos are skipped (with a warning); set-user-id and set-group-id
        /// bits, and the sticky bit of files, are cleared; owners are not applied (everything
        /// belongs to the user running the restore); extended attributes that grant
        /// privileges or steer the kernel (`security.*`, such as file capabilities and
        /// SELinux labels, and `trusted.*`) are not restored. Modes, times, ACLs and `user.*`
        /// attributes are.
        #[arg(long)]
        safe: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the files of a file-level point (all, or under PATH).
    Ls {
        point: String,
        /// Only this path and what is under it.
        path: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        json: bool,
    },
    /// List restore points, oldest first.
    Points {
        #[command(flatten)]
        repo: RepoArgs,
        /// Only points of this backup name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Health check: re-read and re-hash every chunk the points reference.
    ///
    /// Names every damaged point with the block ranges (volume points) or files (file-level
    /// points) a restore would lose, and points whose manifest is damaged or lost. Chunks found
    /// whole are marked checked, so backups build on them without reading them again; chunks
    /// found damaged are moved aside (as `NAME.damaged`), so the next backup that has their data
    /// stores them again, and the damaged points are whole again. On a repository this user
    /// may only read, nothing is marked or moved. Exits with status 3 when anything is damaged.
    Verify {
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
        #[arg(long)]
        json: bool,
    },
    /// Delete the points of a backup name that a retention policy does not keep, or given points.
    ///
    /// With --name: keeps the newest --keep-last points, plus the newest point of each of the
    /// last D days, W ISO weeks, M months and Y years (UTC); damaged points are never deleted by
    /// a policy. With --point: deletes exactly those points, readable, damaged (a manifest that
    /// no longer reads) or orphaned (an index whose manifest is lost), as `bulwark verify` names
    /// them. Space is freed by `bulwark gc`.
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long, required_unless_present = "point", conflicts_with = "point", requires = "keep_last")]
        name: Option<String>,
        /// Delete this point (an id); repeatable.
        #[arg(long, value_name = "ID")]
        point: Vec<String>,
        #[arg(long)]
        keep_last: Option<u32>,
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        #[arg(long, default_value_t = 0)]
        keep_yearly: u32,
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove chunks that no restore point references. Safe while backups run.
    Gc {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        json: bool,
    },
    /// Run the quick start: a backup server (SQLite), a transport node and an agent on
    /// loopback, joined automatically; a job over a generated disk image run full, then
    /// incremental after 1% changed; sessions and points shown; the incremental restored and
    /// compared. The daemons keep running; the command prints the address, the admin token
    /// and how to stop them. With --standalone: the same data path straight against a
    /// repository, no server.
    Demo {
        /// Working directory (created; an earlier demo's is cleared and its daemons stopped).
        #[arg(long, default_value = "bulwark-demo")]
        dir: PathBuf,
        /// Size of the generated disk image in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Without a server: back up, restore and verify straight against a repository.
        #[arg(long)]
        standalone: bool,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Create a new repository in an empty or absent directory.
    Init {
        /// Directory of the new repository.
        repo: PathBuf,
        #[arg(long, value_enum, default_value_t = Encryption::None)]
        encryption: Encryption,
        /// File whose first line is the password (else BULWARK_PASSWORD).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Whom agents writing it through data movers are trusted with: `shared` (one key; a
        /// block two computers hold is stored once; every agent can read all) or `computer` (a
        /// key per computer, derived from the master key: an agent reads and dedupes only its
        /// own computer's data). `computer` needs encryption; chosen at creation for good.
        #[arg(long, default_value = "shared", value_parser = ["shared", "computer"])]
        isolation: String,
        #[arg(long)]
        json: bool,
    },
    /// Change the password of an encrypted repository (the data is not re-encrypted).
    Passwd {
        #[command(flatten)]
        repo: RepoArgs,
        /// File holding the new password.
        #[arg(long)]
        new_password_file: PathBuf,
    },
    /// Bring a repository of an older format to this version's: adds integrity digests to the
    /// manifests of an unencrypted repository and to the key file of an encrypted one (so a
    /// damaged key file is told from a wrong password). Refuses while a manifest is damaged.
    /// Safe to interrupt and run again; builds older than this one cannot read the result.
    Upgrade {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Encryption {
    None,
    Aes256gcm,
}

#[derive(Args)]
struct RepoArgs {
    /// Repository directory.
    #[arg(long = "repo", id = "repo", value_name = "REPO")]
    path: PathBuf,
    /// File whose first line is the repository password (else BULWARK_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
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
fn resolve_noting_damage(r: &Repository, spec: &str) -> Result<bulwark_repo::Manifest> {
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

impl RepoArgs {
    fn open(&self) -> Result<Repository> {
        let pw = read_password(self.password_file.as_deref())?;
        Ok(Repository::open(&self.path, pw.as_deref())?)
    }
}

/// Set by SIGINT or SIGTERM: the running backup or restore stops at the next block and cleans up.
static CANCEL: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Daemons keep SIGPIPE ignored: a peer that resets a connection must cost that connection,
    // not the process. Commands get the default back, so `bulwark ls | head` ends quietly.
    if !matches!(
        cli.command,
        Command::Agent { .. } | Command::Transport { .. } | Command::DataMover | Command::Server { .. }
    ) {
        // SAFETY: changing a signal disposition before any thread starts; no memory involved.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while cancelling ends the process at once, as an operator expects.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&CANCEL));
        let _ = signal_hook::flag::register(sig, Arc::clone(&CANCEL));
    }
    match run(cli.command, cli.conn) {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<bulwark_agent::AgentError>()
                .is_some_and(|e| matches!(e, bulwark_agent::AgentError::Cancelled)) =>
        {
            eprintln!("bulwark: cancelled; nothing was committed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("bulwark: error: {e}");
            for c in e.chain().skip(1) {
                // The library errors already name their causes; print only what adds to it.
                let text = c.to_string();
                if !e.to_string().contains(&text) {
                    eprintln!("  caused by: {text}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, conn: admin::Conn) -> Result<ExitCode> {
    match command {
        Command::Server { data_dir, listen, db, tick_seconds, tls_name } => {
            nodes::run_server(data_dir, listen, db, tick_seconds, tls_name)?
        }
        Command::Token(c) => admin::token(conn, c)?,
        Command::Repository(c) => return admin::repository(conn, c),
        Command::Secret(c) => admin::secret(conn, c)?,
        Command::Computer(c) => admin::computer(conn, c)?,
        Command::TransportNode(c) => admin::transport_node(conn, c)?,
        Command::User(c) => admin::user(conn, c)?,
        Command::Group(c) => admin::group(conn, c)?,
        Command::Job(c) => admin::job(conn, c)?,
        Command::Session(c) => admin::session(conn, c)?,
        Command::Point(c) => admin::point(conn, c)?,
        Command::Agent { node } => nodes::run_agent(node)?,
        Command::Transport { node, roots } => nodes::run_transport(node, roots)?,
        Command::DataMover => return nodes::run_data_mover(),
        Command::Repo(RepoCommand::Init { repo, encryption, password_file, isolation, json }) => {
            let password = match encryption {
                Encryption::None => None,
                Encryption::Aes256gcm => Some(read_password(password_file.as_deref())?.context(
                    "an encrypted repository needs a password: give --password-file or set BULWARK_PASSWORD",
                )?),
            };
            let encrypted = password.is_some();
            let isolation = isolation.parse().map_err(anyhow::Error::msg)?;
            Repository::init(&repo, &InitOptions { password, isolation, ..Default::default() })?;
            if json {
                ui::print_json(&serde_json::json!({"repository": repo,
                    "encryption": if encrypted {"aes256gcm"} else {"none"}, "isolation": isolation.name()}));
            } else {
                println!(
                    "created repository {} ({})",
                    repo.display(),
                    if encrypted { "encrypted, AES-256-GCM" } else { "not encrypted" }
                );
                if encrypted {
                    println!("keep the password safe: without it the backups cannot be restored");
                }
            }
        }
        Command::Repo(RepoCommand::Upgrade { repo }) => {
            let pw = read_password(repo.password_file.as_deref())?;
            let sealed = Repository::upgrade(&repo.path, pw.as_deref())?;
            println!(
                "{} is at format version {}{}",
                repo.path.display(),
                bulwark_repo::FORMAT_VERSION,
                if sealed > 0 { format!(" ({sealed} manifests sealed with integrity digests)") } else { String::new() }
            );
        }
        Command::Repo(RepoCommand::Passwd { repo, new_password_file }) => {
            let old = read_password(repo.password_file.as_deref())?
                .context("give the current password with --password-file or BULWARK_PASSWORD")?;
            let new = read_password(Some(&new_password_file))?.expect("a file was given");
            Repository::change_password(&repo.path, &old, &new, Default::default())?;
            println!("password of {} changed", repo.path.display());
        }
        Command::Backup {
            source,
            repo,
            name,
            block_size,
            compression,
            snapshot,
            snapshot_tries,
            snapshot_retry_wait,
            cbt,
            exclude,
            keep_unused,
            keep_swap,
            full,
            json,
        } => {
            let r = repo.open()?;
            if source.is_dir() {
                let opts = FileBackupOptions {
                    name,
                    compression,
                    exclude,
                    snapshot,
                    retry: RetryPolicy {
                        tries: snapshot_tries,
                        backoff: std::time::Duration::from_secs(snapshot_retry_wait),
                    },
                    full,
                    ..FileBackupOptions::new("")
                };
                let bar = ui::spinner_bytes("backup", json);
                let report = bulwark_agent::files::backup_files(&r, &source, &opts, &|n| bar.inc(n), &CANCEL)?;
                bar.finish_and_clear();
                if json {
                    ui::print_json(&report);
                } else {
                    ui::file_backup_summary(&report);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let size = bulwark_agent::source::open_source(&source)?.size;
            let bar = ui::bar(size, "backup", json);
            let opts = BackupOptions {
                name,
                block_size,
                compression,
                snapshot,
                retry: RetryPolicy {
                    tries: snapshot_tries,
                    backoff: std::time::Duration::from_secs(snapshot_retry_wait),
                },
                cbt,
                filters: FilterOptions { unused: !keep_unused, swap: !keep_swap, exclude },
                ..BackupOptions::new("")
            };
            let report = bulwark_agent::backup_volume(&r, &source, &opts, &|n| bar.inc(n), &CANCEL)?;
            bar.finish_and_clear();
            if json {
                ui::print_json(&report);
            } else {
                ui::backup_summary(&report);
            }
        }
        Command::Restore { point, repo: None, to, overwrite, path, safe, json, computer, .. } => {
            let conn = admin::Conn { json, ..conn };
            admin::restore(conn, &point, admin::RestoreAsk { to, overwrite, paths: path, computer, safe })?
        }
        Command::Restore { point, repo: Some(repo), password_file, to, overwrite, path, safe, json, .. } => {
            let r = RepoArgs { path: repo, password_file }.open()?;
            let m = resolve_noting_damage(&r, &point)?;
            if m.kind == PointKind::Files {
                let bar = ui::spinner_bytes("restore", json);
                let opts = FileRestoreOptions { overwrite, paths: path, safe };
                let report = bulwark_agent::files::restore_files(&r, &m, &to, &opts, &|n| bar.inc(n), &CANCEL)?;
                bar.finish_and_clear();
                if json {
                    ui::print_json(&report);
                } else {
                    ui::file_restore_summary(&report);
                }
                if !report.complete {
                    bail!("restore into {} is incomplete: {}", to.display(), report.incomplete_summary());
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !path.is_empty() {
                bail!("--path selects files of a file-level point; {} is a volume point", m.id);
            }
            if safe {
                bail!("--safe is for file-level points; {} is a volume point", m.id);
            }
            let bar = ui::bar(m.volume_size, "restore", json);
            let opts = RestoreOptions { overwrite, ..Default::default() };
            let report = bulwark_agent::restore_volume(&r, &m, &to, &opts, &|n| bar.inc(n), &CANCEL)?;
            bar.finish_and_clear();
            if json {
                ui::print_json(&report);
            } else {
                ui::restore_summary(&report);
            }
        }
        Command::Ls { point, path, repo, json } => {
            let r = repo.open()?;
            let m = resolve_noting_damage(&r, &point)?;
            if m.kind != PointKind::Files {
                bail!("{} is a volume point; `bulwark ls` lists file-level points", m.id);
            }
            let mut rows = Vec::new();
            bulwark_agent::files::list_tree(&r, &m, path.as_deref(), |e| rows.push(ui::ls_row(e)))?;
            if path.is_some() && rows.is_empty() {
                bail!("point {} has no path {:?}", m.id, path.unwrap_or_default());
            }
            if json {
                ui::print_json(&rows);
            } else {
                ui::ls_table(&rows);
            }
        }
        Command::Points { repo, name, json } => {
            let r = repo.open()?;
            let catalog = r.catalog()?;
            let points: Vec<_> = catalog.points.iter().filter(|m| name.as_ref().is_none_or(|n| &m.name == n)).collect();
            if json {
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
                    catalog
                        .damaged
                        .iter()
                        .map(|d| serde_json::json!({"id": d.id, "status": "damaged", "problem": d.reason})),
                );
                rows.extend(
                    catalog.orphans.iter().map(
                        |id| serde_json::json!({"id": id, "status": "damaged", "problem": "its manifest is lost"}),
                    ),
                );
                ui::print_json(&rows);
            } else {
                ui::points_table(&points, &catalog);
            }
        }
        Command::Verify { point, repo, repair, from, json } => {
            let r = repo.open()?;
            let which = || match &point {
                Some(p) => bulwark_repo::verify::Selection::One(p),
                None => bulwark_repo::verify::Selection::All,
            };
            let threads = bulwark_agent::default_threads();
            let bar = ui::spinner_bytes("verify", json);
            let mut report = bulwark_repo::verify::verify(&r, which(), threads, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            let mut repaired = None;
            if repair && !report.ok {
                let bar = ui::spinner_bytes("repair", json);
                let rep = bulwark_agent::repair::repair(&r, &report, &from, &|n| bar.inc(n))?;
                bar.finish_and_clear();
                if rep.stored_chunks > 0 {
                    let bar = ui::spinner_bytes("verify", json);
                    report = bulwark_repo::verify::verify(&r, which(), threads, &|n| bar.inc(n))?;
                    bar.finish_and_clear();
                }
                repaired = Some(rep);
            }
            if json {
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
            if !report.ok {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Forget {
            repo,
            name,
            point,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
            json,
        } => {
            let policy =
                Policy { last: 0, daily: keep_daily, weekly: keep_weekly, monthly: keep_monthly, yearly: keep_yearly };
            let r = repo.open()?;
            if !point.is_empty() {
                let ids = point
                    .iter()
                    .map(|p| p.parse::<bulwark_repo::RestorePointId>().map_err(anyhow::Error::msg))
                    .collect::<Result<Vec<_>>>()?;
                for id in &ids {
                    r.delete_point(id)?;
                }
                if json {
                    ui::print_json(&serde_json::json!({"deleted": ids}));
                } else {
                    for id in &ids {
                        println!("deleted {id}");
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let (name, keep_last) = (name.expect("clap requires it"), keep_last.expect("clap requires it"));
            let policy = Policy { last: keep_last, ..policy };
            if !r.list_points()?.iter().any(|m| m.name == name) {
                bail!("repository {}: no points named {name:?}", r.label());
            }
            let rows: Vec<serde_json::Value> = bulwark_repo::retention::forget(&r, &name, &policy, dry_run)?
                .into_iter()
                .map(|d| serde_json::json!({"point": d.point, "created": d.created, "kept": d.kept, "reasons": d.reasons}))
                .collect();
            if json {
                ui::print_json(&serde_json::json!({"name": name, "dry_run": dry_run, "points": rows}));
            } else {
                ui::forget_summary(&rows, dry_run);
            }
        }
        Command::Gc { repo, json } => {
            let r = repo.open()?;
            let report = bulwark_repo::gc::collect_garbage(&r, bulwark_repo::gc::DEFAULT_GRACE)?;
            if json {
                ui::print_json(&report);
            } else {
                ui::gc_summary(&report);
            }
        }
        Command::Demo { dir, size_mib, standalone: true } => demo::run(&dir, size_mib, &CANCEL)?,
        Command::Demo { dir, size_mib, standalone: false } => demo::run_managed(&dir, size_mib)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
