//! Wiring of the daemons: `bulwark agent`, `bulwark transport` and the data mover process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulwark_proto::pki::{Identity, Role};
use bulwark_proto::tls::{self, Revocations, TlsIdentity};
use clap::Args;

/// How a node finds the server and who it is.
#[derive(Args)]
pub struct NodeArgs {
    /// The backup server to join (https://HOST:PORT); needed only the first time.
    #[arg(long, env = "BULWARK_SERVER")]
    server: Option<String>,
    /// One-time join token from `bulwark token create`; needed only the first time.
    ///
    /// A token given here is visible to every user of this computer in the process list
    /// while the node joins: prefer --join-token-file or the BULWARK_JOIN_TOKEN environment
    /// variable. Once joined, the node starts itself again without this argument.
    #[arg(long, env = "BULWARK_JOIN_TOKEN", hide_env_values = true, conflicts_with = "join_token_file")]
    join_token: Option<String>,
    /// A file whose first line is the join token (keep it mode 0600 and delete it once the
    /// node has joined); needed only the first time.
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// This node's name (lowercase letters, digits, hyphens); defaults to the host name.
    #[arg(long)]
    name: Option<String>,
    /// Where the node keeps its certificate and key (0600) and its state.
    #[arg(long, default_value = "/var/lib/bulwark")]
    data_dir: PathBuf,
    /// Address to listen on for the server's calls.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address the server should call (when it differs from --listen, behind NAT say).
    #[arg(long)]
    advertise: Option<String>,
}

#[derive(Args)]
pub struct TransportArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// A directory holding repositories this node serves. Repeatable.
    #[arg(long = "root", value_name = "DIR", required_unless_present = "s3_buckets")]
    roots: Vec<PathBuf>,
    /// An S3 bucket whose repositories this node serves (`s3://BUCKET/…` locations). Repeatable.
    /// Its credentials come from this node's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or
    /// the location's credentials-file; the server never sees them.
    #[arg(long = "s3-bucket", value_name = "BUCKET")]
    s3_buckets: Vec<String>,
    /// Never mount a point's image to read its files: XFS, btrfs and other filesystems only the
    /// kernel reads are then not browsed here (ext2/3/4 still are, in user space), so an image
    /// made by a compromised computer never reaches this node's kernel. Their files can still
    /// be restored onto the point's own computer.
    #[arg(long)]
    no_kernel_mounts: bool,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Where the server keeps its CA, its keys and (by default) its config database.
    #[arg(long, default_value = "/var/lib/bulwark-server")]
    data_dir: PathBuf,
    /// Address to listen on for the REST API and for nodes joining.
    #[arg(long, default_value = "0.0.0.0:9440")]
    listen: SocketAddr,
    /// PostgreSQL URL; default an SQLite file in --data-dir.
    #[arg(long, env = "BULWARK_DB", hide_env_values = true, value_name = "URL")]
    db: Option<String>,
    /// Seconds between the job scheduler's looks at the clock.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    tick_seconds: u64,
    /// Another name (DNS or IP) clients use to reach the server, for its certificate. Repeatable.
    #[arg(long, value_name = "NAME")]
    tls_name: Vec<String>,
}

/// Raises this process's soft limit on open files to its hard limit: a daemon serving many
/// peers should run out of patience with idle ones (`tls::Limits`) long before it runs out of
/// descriptors.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only into the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: setrlimit only reads the struct we pass; any process may raise its soft limit
    // up to its hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::warn!("cannot raise the open files limit to {}: {}", lim.rlim_max, std::io::Error::last_os_error());
    }
}

/// Logging to stderr, and the open files limit raised, for a daemon.
fn init_daemon() {
    init_logging();
    raise_open_files_limit();
}

pub fn init_logging() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_lowercase()
}

/// Binds the listener, then loads the node's identity or joins the server to get one.
async fn start_node(
    args: &NodeArgs,
    role: Role,
    default_port: u16,
) -> Result<(tokio::net::TcpListener, TlsIdentity, Revocations, String)> {
    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => format!("{}:{}", hostname(), bound.port()),
        None => bound.to_string(),
    };
    // Its private key, revocation list and task markers are nobody else's business.
    bulwark_proto::pki::private_dir(&args.data_dir)?;
    let identity = match Identity::load(&args.data_dir)? {
        Some(id) => id,
        None => {
            let (Some(server), Some(token)) = (&args.server, join_token(args)?) else {
                bail!(
                    "{} holds no identity: join a server first with --server URL and --join-token-file FILE \
                     (or BULWARK_JOIN_TOKEN)",
                    args.data_dir.display()
                );
            };
            let name = args.name.clone().unwrap_or_else(hostname);
            let id =
                bulwark_proto::node::join(server, &token, role, &name, &advertise).await.map_err(anyhow::Error::msg)?;
            id.save(&args.data_dir)?;
            tracing::info!("joined {server} as {role} {name}");
            if token_in_arguments() {
                return Err(restart_without_token(bound));
            }
            id
        }
    };
    let tls_id = TlsIdentity::new(&identity)?;
    if tls_id.peer.role != role {
        bail!("{} holds the identity of {}, not of a {role}", args.data_dir.display(), tls_id.peer);
    }
    if let Some(n) = &args.name {
        if *n != tls_id.peer.name {
            bail!("{} holds the identity of {}, not of {n}", args.data_dir.display(), tls_id.peer);
        }
    }
    let revoked = Revocations::persistent(&args.data_dir.join("revoked"))?;
    Ok((listener, tls_id, revoked, advertise))
}

/// The join token from --join-token-file, --join-token or BULWARK_JOIN_TOKEN.
fn join_token(args: &NodeArgs) -> Result<Option<String>> {
    let Some(file) = &args.join_token_file else { return Ok(args.join_token.clone()) };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read join token file {}", file.display()))?;
    match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => Ok(Some(t.to_string())),
        None => bail!("join token file {} is empty: put the token from `bulwark token create` in it", file.display()),
    }
}

fn token_in_arguments() -> bool {
    std::env::args_os().any(|a| a.to_str().is_some_and(|a| a == "--join-token" || a.starts_with("--join-token=")))
}

/// Replaces this process with the same program and arguments, less the join token (spent now,
/// and readable by any user in the process list for as long as it stays there), listening on
/// the port the server has just recorded. Returns only if that fails.
fn restart_without_token(bound: SocketAddr) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let mut kept = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--join-token" | "--listen") => {
                args.next();
            }
            Some(s) if s.starts_with("--join-token=") || s.starts_with("--listen=") => {}
            _ => kept.push(a),
        }
    }
    kept.push("--listen".into());
    kept.push(bound.to_string().into());
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow::anyhow!("joined, but cannot find this program to restart without the token: {e}"),
    };
    let err = std::process::Command::new(&exe).args(kept).env_remove("BULWARK_JOIN_TOKEN").exec();
    anyhow::anyhow!(
        "joined, but restarting {} without the token failed: {err}; start it again with --data-dir only",
        exe.display()
    )
}

/// Scripts and tests wait for this line on stdout.
fn announce(role: Role, name: &str, address: &str, bound: SocketAddr) {
    println!("{}", serde_json::json!({ "role": role.as_str(), "name": name, "address": address, "listening": bound }));
    tracing::info!("{role} {name} listening on {bound} (reachable as {address})");
}

/// Ends the daemon on SIGINT or SIGTERM.
async fn until_stopped() {
    while !crate::CANCEL.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn run_agent(args: NodeArgs) -> Result<ExitCode> {
    init_daemon();
    runtime()?.block_on(async {
        let (listener, id, revoked, advertise) = start_node(&args, Role::Agent, 9441).await?;
        let bound = listener.local_addr()?;
        let service = bulwark_agent::service::AgentService::new(&args.data_dir, &id, revoked.clone())
            .map_err(anyhow::Error::msg)?
            .with_volume_files(std::sync::Arc::new(bulwark_browse::VolumeFilesRestore));
        let server_cfg = tls::server_config(&id, tls::ClientAuth::Required, &revoked)?;
        announce(Role::Agent, &id.peer.name, &advertise, bound);
        let limits = tls::Limits::from_env();
        let serve = tls::server_builder(&limits).add_service(service.into_server()).serve_with_incoming(tls::incoming(
            listener,
            server_cfg,
            limits.clone(),
        ));
        tokio::select! {
            r = serve => r.context("agent service")?,
            () = until_stopped() => tracing::info!("agent stopping"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_transport(a: TransportArgs) -> Result<ExitCode> {
    let (args, roots, s3_buckets, no_kernel_mounts) = (a.node, a.roots, a.s3_buckets, a.no_kernel_mounts);
    init_daemon();
    if roots.is_empty() && s3_buckets.is_empty() {
        bail!("a transport node needs at least one --root or --s3-bucket for its repositories");
    }
    for r in &roots {
        if !r.is_dir() {
            bail!("repository root {} is not a directory", r.display());
        }
    }
    runtime()?.block_on(async {
        let (listener, id, revoked, advertise) = start_node(&args, Role::Transport, 9442).await?;
        let bound = listener.local_addr()?;
        let host = advertise.rsplit_once(':').map_or(advertise.as_str(), |(h, _)| h).to_string();
        let cfg = bulwark_transport::TransportConfig {
            name: id.peer.name.clone(),
            data_dir: args.data_dir.clone(),
            roots,
            s3_buckets,
            advertise_host: host,
            bind_host: bound.ip().to_string(),
            mover_program: std::env::current_exe().context("finding this program")?,
            kernel_mounts: !no_kernel_mounts,
        };
        let service = bulwark_transport::TransportService::new(cfg, revoked.clone());
        let server_cfg = tls::server_config(&id, tls::ClientAuth::Required, &revoked)?;
        announce(Role::Transport, &id.peer.name, &advertise, bound);
        tokio::select! {
            r = bulwark_transport::service::serve(service, listener, server_cfg) => r.context("transport service")?,
            () = until_stopped() => tracing::info!("transport service stopping"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_server(a: ServerArgs) -> Result<ExitCode> {
    let ServerArgs { data_dir, listen, db, tick_seconds, tls_name: tls_names } = a;
    init_daemon();
    runtime()?.block_on(async {
        let opts = bulwark_server::server::ServerOptions {
            data_dir: data_dir.clone(),
            listen,
            db_url: db,
            tick: Duration::from_secs(tick_seconds.max(1)),
            tls_names,
            login_policy: bulwark_server::login_guard::LoginPolicy::from_env(),
            limits: tls::Limits::from_env(),
        };
        let serve = bulwark_server::server::run(opts, |r| bulwark_server::server::announce(&r, &data_dir));
        tokio::select! {
            r = serve => r.context("backup server")?,
            () = until_stopped() => tracing::info!("server stopping"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The data mover process: its configuration on stdin, its report on stdout.
pub fn run_data_mover() -> Result<ExitCode> {
    init_daemon();
    let cfg: bulwark_transport::MoverConfig =
        serde_json::from_reader(std::io::stdin().lock()).context("reading the data mover's configuration")?;
    let code = bulwark_transport::data_mover::run(cfg, &mut std::io::stdout().lock());
    Ok(ExitCode::from(code as u8))
}
