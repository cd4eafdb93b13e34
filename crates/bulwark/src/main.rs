//! The `bulwark` command: argument parsing and wiring only; the work lives in the library crates.

mod admin;
mod browse;
mod demo;
mod hardened;
mod jobs;
mod nodes;
mod scale_out;
mod serve;
mod standalone;
mod ui;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::sync::LazyLock;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Bulwark: backup and restore of Linux volumes into a deduplicated, verifiable repository.
///
/// Standalone commands work straight against a repository directory, as an agent working
/// without a server does. Encrypted repositories take their password from --password-file or the
/// BULWARK_PASSWORD environment variable.
///
/// Exit status: 0 success; 1 failure (the message says what and where); 2 bad usage;
/// 3 `verify` or `repository verify` found damage; 130 interrupted by SIGINT or SIGTERM (a
/// backup or restore cancelled, or `job start --wait` no longer waiting).
#[derive(Parser)]
#[command(name = "bulwark", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent service: this computer's inventory and its backup tasks, on the server's
    /// orders.
    ///
    /// The first start joins the server with a one-time token made for this node's name
    /// (`--server URL --join-token-file F`): the agent generates its key, gets a certificate
    /// from the server's CA and keeps both in --data-dir (mode 0600). Later starts need only
    /// --data-dir. Every connection is mutual TLS 1.3; only the server may call the agent. A
    /// snapshot left by a task that was running when the agent died is removed at the next
    /// start. Prints one JSON line with the address once listening; logs to stderr. SIGTERM or
    /// SIGINT stops it.
    Agent(nodes::NodeArgs),
    /// Run the transport service of a repository host: one data mover process per task.
    ///
    /// Joins like `bulwark agent`. Repositories it serves must lie under a --root. For each task
    /// the server asks for, it starts a data mover bound to a one-time ticket: it accepts one
    /// connection from the one agent the ticket was issued to, stores what it sends, and commits
    /// the restore point; a data mover dies with the service.
    Transport(nodes::TransportArgs),
    /// (internal) A data mover, started by the transport service.
    #[command(hide = true)]
    DataMover,
    /// Run the immutability service of hardened repositories: the files of committed restore
    /// points cannot be deleted or changed until a date, not even by their owner.
    ///
    /// For repositories on a local filesystem (ext4, XFS, btrfs) that an unprivileged
    /// transport node writes. The transport node names the files of a point over the Unix
    /// socket, with a date; the service sets their immutable attribute (as `chattr +i` does)
    /// and records the date in the repository's ledger in --state. Until then nobody lacking
    /// CAP_LINUX_IMMUTABLE can delete, rename, truncate or write them: not the transport node's
    /// user who owns them, nor whoever takes over that account or the backup server. A date
    /// is only ever moved later. At start and every minute, expired files get their attribute
    /// back off and leave the ledger; the repository may then delete them.
    ///
    /// Only repositories under a --root are served. A file name that is absolute, holds `..`,
    /// passes through a symbolic link or names anything but a regular file with a single link
    /// refuses the whole request, and nothing is touched. The socket admits root and members of
    /// --group; each request is logged to stderr with the caller's uid and pid as the kernel
    /// reports them. Must run as root with CAP_LINUX_IMMUTABLE; root can always clear the
    /// attribute, so keep root out of reach of the backup network. Prints one JSON line with
    /// the socket once listening. SIGTERM or SIGINT stops it; locks stay in force, and the next
    /// start keeps their dates.
    HardenedService(hardened::HardenedServiceArgs),
    /// Run the backup server: config database, REST API, job scheduler, backup manager,
    /// resource scheduler, certificate authority, restore point catalog.
    ///
    /// The config database is an SQLite file in --data-dir unless --db names a PostgreSQL
    /// database (postgres://USER:PASSWORD@HOST/DB); its schema is brought up to date at start.
    /// The first start creates the CA (DATA_DIR/ca.pem) and the first admin, whose API token
    /// it writes to DATA_DIR/initial-admin-token and password to DATA_DIR/initial-admin-password
    /// (both 0600; shown too when stderr is a terminal). Agents and transport nodes join on the
    /// same HTTPS port with tokens from `bulwark token create`. Prints one JSON line with the
    /// address once listening.
    Server(nodes::ServerArgs),
    /// Tokens: join tokens for agents and transport nodes, API tokens; list, revoke.
    Token(admin::Admin<admin::TokenCmd>),
    /// Users of the server's API: create, change passwords, delete.
    User(admin::Admin<admin::UserCmd>),
    /// Repositories the server knows, and their health checks (through the server).
    Repository(admin::Admin<admin::RepositoryCmd>),
    /// Scale-out repositories: several repositories (extents) under one name, placement of
    /// backup chains among them, maintenance and evacuation of an extent (through the server).
    ScaleOut(admin::Admin<scale_out::ScaleOutCmd>),
    /// Secrets for jobs' pre and post commands, sealed on the server (through the server).
    Secret(admin::Admin<admin::SecretCmd>),
    /// Protected computers (joined agents): list, show, remove, readmit.
    Computer(admin::Admin<admin::ComputerCmd>),
    /// Transport nodes (joined repository hosts): list, remove, readmit.
    TransportNode(admin::Admin<admin::TransportNodeCmd>),
    /// Protection groups: computers a job names all at once.
    Group(admin::Admin<admin::GroupCmd>),
    /// Backup jobs: create, change, start (--wait follows the session), stop, retry.
    Job(admin::Admin<jobs::JobCmd>),
    /// Job sessions and their tasks.
    Session(admin::Admin<admin::SessionCmd>),
    /// Restore points in the server's catalog.
    Point(admin::Admin<admin::PointCmd>),
    /// Create a repository or change its password.
    #[command(subcommand)]
    Repo(standalone::RepoCommand),
    /// Back up a block device, an image file or a directory as a new restore point.
    ///
    /// A volume (block device or image file) is read front to back: zero blocks and blocks
    /// unchanged since the previous point of the same --name are skipped, and only what the
    /// repository lacks is compressed and stored. A directory is backed up file by file with
    /// its metadata (owners, modes, nanosecond times, xattrs and ACLs, links, holes); files
    /// unchanged since the previous point (inode, size, ctime, mtime) are not read again. The
    /// point appears only when complete: an interrupted backup leaves nothing visible.
    Backup(standalone::BackupArgs),
    /// Restore a point: a volume onto a block device or into an image file, a directory
    /// (file-level point) into a directory, whole or only some of its paths.
    ///
    /// With --repo, straight from that repository on this computer; POINT is a point id or
    /// NAME:latest. Without --repo, through the backup server (BULWARK_SERVER, BULWARK_TOKEN,
    /// BULWARK_CA_CERT): POINT is an id from `bulwark point list`, and the restore runs on
    /// --computer (the point's own by default) from a data mover serving only that point.
    ///
    /// Volume points: a block device must be unmounted, not in use, at least as large as the
    /// volume and empty (no filesystem, partition table or any data at its start or end) unless
    /// --overwrite is given; it is refused before anything is written otherwise. A file is
    /// created (or replaced with --overwrite) and appears only once completely restored.
    ///
    /// File-level points: the target directory is created, or must be empty unless --overwrite
    /// is given (entries of the same name are then replaced). --path restores only some paths
    /// (each must be in the point, or nothing is written); --safe restores files of a computer
    /// that is not trusted (no device nodes, set-id bits, owners or privileged attributes). The
    /// restore goes on past an entry it cannot restore (damaged content, a full disk): that
    /// entry is left out (a file appears only once whole), the report and --json list every
    /// such entry with the reason, and the exit status is 1. Nothing is ever created outside
    /// the target directory, whatever the point's tree holds.
    Restore(standalone::RestoreArgs),
    /// Serve a volume point over NBD: boot a VM from it, attach it as a disk, copy it, without
    /// restoring it first.
    ///
    /// Prints the nbd:// URL and a qemu command line, then serves until SIGINT or SIGTERM.
    /// Blocks are read from the repository as clients ask for them. Read-only unless
    /// --writable, which keeps clients' writes in a copy-on-write overlay on this computer
    /// (discarded at stop); the repository is never written. Clients asking for another export
    /// name are refused. NBD has no authentication: listen on loopback unless the network is
    /// trusted.
    Serve(serve::ServeArgs),
    /// Write a volume point (or one of its partitions) to an image file: raw (sparse), qcow2 or
    /// vmdk (through qemu-img).
    ///
    /// The file appears only when complete; an existing file is replaced only with --overwrite.
    Export(serve::ExportArgs),
    /// List the files of a point: of a file-level point all of them (or those under PATH); of
    /// a volume point one directory (PATH, default /) of one volume's filesystem, or the volumes
    /// of a disk with several.
    Ls(standalone::LsArgs),
    /// List restore points, oldest first, with their size, health and consistency.
    Points(standalone::PointsArgs),
    /// Health check: re-read and re-hash every chunk the points reference.
    ///
    /// Names every damaged point with the block ranges (volume points) or files (file-level
    /// points) a restore would lose, and points whose manifest is damaged or lost. Chunks found
    /// whole are marked checked, so backups build on them without reading them again; chunks
    /// found damaged are moved aside (as `NAME.damaged`), so the next backup that has their data
    /// stores them again, and the damaged points are whole again. On a repository this user
    /// may only read, nothing is marked or moved. Exits with status 3 when anything is damaged.
    Verify(standalone::VerifyArgs),
    /// Delete the points of a backup name that a retention policy does not keep, or given points.
    ///
    /// With --name: keeps the newest --keep-last points, plus the newest point of each of the
    /// last D days, W ISO weeks, M months and Y years (UTC); damaged points are never deleted by
    /// a policy. With --point: deletes exactly those points, readable, damaged (a manifest that
    /// no longer reads) or orphaned (an index whose manifest is lost), as `bulwark verify` names
    /// them. Space is freed by `bulwark gc`.
    Forget(standalone::ForgetArgs),
    /// Remove chunks that no restore point references. Safe while backups run.
    Gc(standalone::GcArgs),
    /// Run the quick start: a backup server (SQLite), a transport node and an agent on
    /// loopback, joined automatically; a job over a generated disk image run full, then
    /// incremental after 1% changed; sessions and points shown; the incremental restored and
    /// compared. The daemons keep running; the command prints the address, the admin token
    /// and how to stop them. With --standalone: the same data path straight against a
    /// repository, no server.
    Demo(demo::DemoArgs),
}

/// Set by SIGINT or SIGTERM: the running backup or restore stops at the next block and cleans
/// up; `job start --wait` stops waiting.
static CANCEL: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Daemons (and the NBD server inside `serve` and `export`) keep SIGPIPE ignored: a peer that
    // resets a connection must cost that connection, not the process. Commands get the default
    // back, so `bulwark ls | head` ends quietly.
    if !matches!(
        cli.command,
        Command::Agent(_)
            | Command::Transport(_)
            | Command::DataMover
            | Command::HardenedService(_)
            | Command::Server(_)
            | Command::Serve(_)
            | Command::Export(_)
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
    match run(cli.command) {
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

/// Each command to the function that does it.
fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Server(a) => nodes::run_server(a),
        Command::Agent(a) => nodes::run_agent(a),
        Command::Transport(a) => nodes::run_transport(a),
        Command::DataMover => nodes::run_data_mover(),
        Command::HardenedService(a) => hardened::run(a),
        Command::Token(a) => admin::token(a),
        Command::User(a) => admin::user(a),
        Command::Repository(a) => admin::repository(a),
        Command::ScaleOut(a) => scale_out::scale_out(a),
        Command::Secret(a) => admin::secret(a),
        Command::Computer(a) => admin::computer(a),
        Command::TransportNode(a) => admin::transport_node(a),
        Command::Group(a) => admin::group(a),
        Command::Job(a) => jobs::job(a),
        Command::Session(a) => admin::session(a),
        Command::Point(a) => admin::point(a),
        Command::Repo(c) => standalone::repo(c),
        Command::Backup(a) => standalone::backup(a),
        Command::Restore(a) => standalone::restore(a),
        Command::Serve(a) => serve::serve(a),
        Command::Export(a) => serve::export(a),
        Command::Ls(a) => standalone::ls(a),
        Command::Points(a) => standalone::points(a),
        Command::Verify(a) => standalone::verify(a),
        Command::Forget(a) => standalone::forget(a),
        Command::Gc(a) => standalone::gc(a),
        Command::Demo(a) => demo::run(a, &CANCEL),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// What a command's `--help` lacks: subcommands and options without a description, and
    /// optional options its usage line shows as required. `path` is the command's words.
    fn help_gaps(cmd: &clap::Command, path: &str, gaps: &mut Vec<String>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if arg.get_help().is_none() && !builtin {
                gaps.push(format!(
                    "{path} {}: no description",
                    arg.get_long().map_or(arg.get_id().to_string(), |l| format!("--{l}"))
                ));
            }
        }
        let usage = cmd.clone().render_usage().to_string();
        let mut depth = 0i32;
        for (i, c) in usage.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                '-' if depth == 0 && usage[i..].starts_with("--") && !usage[..i].ends_with('-') => {
                    let long: String =
                        usage[i + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                    let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str())) else { continue };
                    let in_required_group =
                        cmd.get_groups().any(|g| g.is_required_set() && g.get_args().any(|id| id == arg.get_id()));
                    if !arg.is_required_set() && !in_required_group {
                        gaps.push(format!("{path}: usage `{}` shows the optional --{long} as required", usage.trim()));
                    }
                }
                _ => {}
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                gaps.push(format!("{sub_path}: no description"));
            }
            help_gaps(sub, &sub_path, gaps);
        }
    }

    /// Every subcommand and option says what it is for, and no usage line shows an optional
    /// option as required: the help is what an operator reads first.
    #[test]
    fn every_command_and_option_is_described() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut gaps = Vec::new();
        help_gaps(&cmd, "bulwark", &mut gaps);
        assert!(gaps.is_empty(), "the help is incomplete:\n{}", gaps.join("\n"));
    }

    /// Standalone commands and daemons show only their own options; admin commands the
    /// connection to the server and --json, on every level.
    #[test]
    fn connection_options_belong_to_the_commands_that_use_them() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let longs = |path: &[&str]| {
            let c = path.iter().fold(&cmd, |c, p| c.find_subcommand(p).unwrap());
            c.get_arguments().filter_map(|a| a.get_long().map(String::from)).collect::<Vec<_>>()
        };
        for own in [&["backup"][..], &["agent"], &["points"], &["verify"], &["repo", "init"], &["demo"]] {
            let l = longs(own);
            assert!(!l.iter().any(|l| l == "token" || l == "ca-cert"), "{own:?} shows {l:?}");
        }
        for admin in
            [&["job", "create"][..], &["job"], &["point", "list"], &["token", "create"], &["transport-node", "list"]]
        {
            let l = longs(admin);
            for want in ["server", "token", "ca-cert", "json"] {
                assert!(l.iter().any(|l| l == want), "{admin:?} lacks --{want}: {l:?}");
            }
        }
        for json in
            [&["backup"][..], &["restore"], &["points"], &["ls"], &["verify"], &["forget"], &["gc"], &["repo", "init"]]
        {
            assert!(longs(json).iter().any(|l| l == "json"), "{json:?} lacks --json");
        }
    }
}
