//! `bulwark server`: the config database, the CA, the REST API and node registration on one
//! HTTPS port, the resource scheduler's dispatcher and the job scheduler.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::pki::{Ca, Role};
use bulwark_proto::tls::{self, Revocations, TlsIdentity, SERVER_NODE};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::transport::server::Connected;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::backup_manager::BackupManager;
use crate::db::Db;
use crate::registration::Registrar;
use crate::schedule::{Clock, SystemClock};
use crate::secrets::Secrets;
use crate::store::{self, DbNodes};
use crate::task_driver::Manager;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://…`; default an SQLite file in the data directory.
    pub db_url: Option<String>,
    /// How often the job scheduler looks at the clock.
    pub tick: Duration,
    /// Extra names (DNS or IP) the server's certificate carries, for clients dialling those.
    pub tls_names: Vec<String>,
    /// Lockouts after failed logins.
    pub login_policy: crate::login_guard::LoginPolicy,
    /// Handshake, idle and per-address bounds of the HTTPS port.
    pub limits: tls::Limits,
}

/// What the server says once it listens.
pub struct Ready {
    pub address: SocketAddr,
    /// The first admin's credentials, when this start created them (shown once).
    pub first_admin: Option<(String, String)>,
}

/// A well-formed hash no password is known to match, checked for unknown users so that they
/// cost the same time as known ones.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9mTTGlT5I3RTA2HdeyN3eY/DjxDYKlkHhBzRxbVNI0A";

pub fn hash_password(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).expect("random source");
    let salt = SaltString::encode_b64(&salt).expect("salt");
    argon2::Argon2::default().hash_password(pw.as_bytes(), &salt).expect("argon2id").to_string()
}

pub fn verify_password(pw: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
}

/// Creates the SQLite file 0600 before SQLite does (its WAL and shared-memory files take the
/// database file's mode), and takes back any wider mode an older server left.
fn private_db_files(db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(db)?;
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        match std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn setup(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ServerError + '_ {
    move |e| ServerError::Setup(format!("{what}: {e}"))
}

/// Creates the first admin (user `admin`) on an empty database; its API token goes to
/// `DATA_DIR/initial-admin-token` and its password to `DATA_DIR/initial-admin-password` (both
/// 0600), where only the server's user reads them, unlike a log.
async fn first_admin(db: &Db, dir: &Path) -> Result<Option<(String, String)>, ServerError> {
    if store::user_count(db).await? > 0 {
        return Ok(None);
    }
    let password = store::random_hex(12);
    let hash = {
        let pw = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&pw)).await.map_err(|e| setup("hashing")(&e))?
    };
    let id = store::create_user(db, "admin", &hash, "admin").await?;
    // It does not expire: it is how the operator gets in at all. Revoke it once other admins
    // exist (`bulwark token revoke`).
    let (_, token) = store::create_api_token(db, &id, "initial", None).await?;
    bulwark_proto::pki::write_private(&dir.join("initial-admin-token"), format!("{token}\n").as_bytes())
        .map_err(|e| setup("writing the initial admin token")(&e))?;
    bulwark_proto::pki::write_private(&dir.join("initial-admin-password"), format!("{password}\n").as_bytes())
        .map_err(|e| setup("writing the initial admin password")(&e))?;
    Ok(Some((password, token)))
}

/// Runs the server until the process ends. `ready` is called once it listens.
pub async fn run(opts: ServerOptions, ready: impl FnOnce(Ready)) -> Result<(), ServerError> {
    run_with_clock(opts, Arc::new(SystemClock), ready).await
}

pub async fn run_with_clock(
    opts: ServerOptions,
    clock: Arc<dyn Clock>,
    ready: impl FnOnce(Ready),
) -> Result<(), ServerError> {
    let dir = &opts.data_dir;
    // The data directory holds the CA key, the secret key and (by default) the database: only
    // the server's user may enter it, and its files are its user's alone.
    bulwark_proto::pki::private_dir(dir).map_err(|e| setup("data directory")(&e))?;
    let url = match &opts.db_url {
        Some(url) => url.clone(),
        None => {
            let file = dir.join("config.db");
            private_db_files(&file).map_err(|e| setup(&format!("securing {}", file.display()))(&e))?;
            format!("sqlite://{}", file.display())
        }
    };
    let secrets = Secrets::load_or_create(dir).map_err(|e| setup("secret key")(&e))?;
    let db = Db::open(&url, secrets).await?;
    let ca = Arc::new(Ca::load_or_create(dir).map_err(|e| setup("certificate authority")(&e))?);
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| setup(&format!("listening on {}", opts.listen))(&e))?;
    let address = listener.local_addr().map_err(|e| setup("listening")(&e))?;

    // The server's own certificate, renewed at each start, for every name clients may dial.
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    if !host.is_empty() {
        names.push(host);
    }
    if !address.ip().is_unspecified() {
        names.push(address.ip().to_string());
    }
    names.extend(opts.tls_names.iter().cloned());
    let identity =
        ca.issue_with_names(Role::Server, SERVER_NODE, &names).map_err(|e| setup("server certificate")(&e))?;
    let tls_id = TlsIdentity::new(&identity).map_err(|e| setup("server certificate")(&e))?;
    let revoked = Revocations::default();
    revoked.update(store::revoked_serials(&db).await?).map_err(|e| setup("revocations")(&e))?;
    let mut web =
        (*tls::server_config(&tls_id, tls::ClientAuth::Optional, &revoked).map_err(|e| setup("TLS")(&e))?).clone();
    web.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client = tls::client_config(Some(&tls_id), None, &revoked).map_err(|e| setup("TLS")(&e))?;

    let core = BackupManager::new(db.clone(), Manager::new(client), clock).await?;
    let first_admin = first_admin(&db, dir).await?;
    // Reconciling may wait on agents; the API serves meanwhile, slots are granted after.
    let (starting, tick) = (core.clone(), opts.tick);
    tokio::spawn(async move {
        starting.reconcile().await;
        tokio::spawn(starting.clone().scheduler(tick));
        starting.dispatcher().await;
    });

    let registrar = Registrar::new(ca.clone(), Arc::new(DbNodes(db.clone())));
    let state = AppState {
        core,
        ca,
        revoked: revoked.clone(),
        logins: tokio::sync::Semaphore::new(2),
        login_guard: crate::login_guard::LoginGuard::new(opts.login_policy.clone()),
        presence: Default::default(),
        usage: Default::default(),
    };
    let app = api::router(Arc::new(state)).route_service("/bulwark.v1.Registration/{*method}", registrar.into_server());
    ready(Ready { address, first_admin });
    info!("server listening on {address}");

    let limits = opts.limits.clone();
    let mut incoming = tls::incoming(listener, Arc::new(web), limits.clone());
    while let Some(conn) = tokio_stream::StreamExt::next(&mut incoming).await {
        let Ok(conn) = conn else { continue };
        let info = tonic::transport::server::Connected::connect_info(&conn);
        let busy = Arc::new(AtomicUsize::new(0));
        let counter = busy.clone();
        let svc = app
            .clone()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                req
            })
            .map_future(move |answer| {
                let call = Busy::enter(&counter);
                async move {
                    let r = answer.await;
                    drop(call);
                    r
                }
            });
        tokio::spawn(serve_connection(conn, svc, busy, limits.idle_timeout));
    }
    Ok(())
}

/// Counts a call in progress on a connection until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(counter: &Arc<AtomicUsize>) -> Busy {
        counter.fetch_add(1, Ordering::Relaxed);
        Busy(counter.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one API connection. One with no call in progress (`busy`) that sends nothing for
/// `idle` is shut down, gracefully first, then for good if the peer does not go, so idle
/// peers cannot hold descriptors; a call in progress is never cut (a restore's answer can take
/// hours). HTTP/1 requests must also arrive within `idle` once begun.
async fn serve_connection<Svc>(conn: tls::TlsConn, svc: Svc, busy: Arc<AtomicUsize>, idle: Duration)
where
    Svc: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
{
    let clock = conn.idle_for();
    let remote = conn.connect_info().remote;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let served = builder.serve_connection(TokioIo::new(conn), svc);
    tokio::pin!(served);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    warn!("connection from {remote} ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep(idle / 4) => {
                if busy.load(Ordering::Relaxed) > 0 || clock.idle() < idle {
                    continue;
                }
                if shutting_down {
                    tracing::debug!("dropping the connection from {remote}: it did not close when asked");
                    return;
                }
                tracing::debug!("closing the connection from {remote}: idle for {} s", clock.idle().as_secs());
                served.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// Prints what an operator needs once, when the server first starts. The first admin's
/// credentials are shown only to a person at a terminal: stderr that is not one is a log (a
/// file, the journal), kept and read by others long after; they are in 0600 files anyway.
pub fn announce(r: &Ready, dir: &Path) {
    use std::io::IsTerminal;
    println!("{}", serde_json::json!({ "listening": r.address, "ca": dir.join("ca.pem") }));
    if let Some((password, token)) = &r.first_admin {
        let (password_file, token_file) = (dir.join("initial-admin-password"), dir.join("initial-admin-token"));
        let mut e = std::io::stderr().lock();
        if e.is_terminal() {
            let _ = writeln!(e, "first start: created user admin with password {password}");
            let _ = writeln!(e, "its API token (also in {}): {token}", token_file.display());
        } else {
            let _ = writeln!(
                e,
                "first start: created user admin; its password is in {} and its API token in {} (not written \
                 to this log)",
                password_file.display(),
                token_file.display()
            );
        }
    }
    let _ = std::io::stdout().flush();
}
