//! The transport service: on a repository host, starts one data mover process per task when
//! the backup server asks, and reports what each did. A data mover is a process of its own so
//! that one task crashing cannot take the others down; it dies with the service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::domain::{Failure, MoverStatus};
use bulwark_proto::pb::transport_server::{Transport, TransportServer};
use bulwark_proto::pb::{
    BrowseReply, BrowseRequest, CopiedPointReport, Empty, FileData, MoverRef, MoverReport, MoverSpec, MoverStarted,
    PointAccess, PointCopy, PointCopyReport, PublishRequest, Published, ReadFileRequest, RepositoryInfo,
    RepositoryInit, RetentionReport, RetentionRequest, Revocations as RevocationList, UnpublishRequest, UsageReply,
    UsageRequest, VerifyReply, VerifyRequest,
};
use bulwark_proto::pki::Role;
use bulwark_proto::tls::{self, Revocations};
use bulwark_repo::storage::Location;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::browse::{self, PointViews, ViewError};
use crate::data_mover::{MoverConfig, MoverOutcome};
use crate::throttle::ThrottleRule;

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Repositories in directories must lie under one of these.
    pub roots: Vec<PathBuf>,
    /// S3 buckets whose repositories this node serves (its credentials come from its own
    /// environment or credentials file, never from the server).
    pub s3_buckets: Vec<String>,
    /// The host agents reach this machine's data movers at.
    pub advertise_host: String,
    /// The address data movers listen on (this node's listening address, or all).
    pub bind_host: String,
    /// The program to run as a data mover (`bulwark`, which has a `data-mover` command).
    pub mover_program: PathBuf,
    /// Whether files of XFS, btrfs and other filesystems only the kernel reads may be browsed by
    /// mounting points' images (as root); off keeps other computers' images from this kernel.
    pub kernel_mounts: bool,
}

struct Mover {
    task_id: String,
    pid: u32,
    outcome: watch::Receiver<Option<MoverOutcome>>,
}

pub struct TransportService {
    cfg: TransportConfig,
    revoked: Revocations,
    movers: Mutex<HashMap<String, Mover>>,
    views: Arc<PointViews>,
    /// Published points (instant recovery) by export id: dropping the sender ends the export.
    exports: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>>,
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("random source");
    hex::encode(b)
}

impl TransportService {
    pub fn new(cfg: TransportConfig, revoked: Revocations) -> Self {
        let cfg_kernel_mounts = cfg.kernel_mounts;
        TransportService {
            cfg,
            revoked,
            movers: Mutex::new(HashMap::new()),
            views: Arc::new(PointViews::new(cfg_kernel_mounts)),
            exports: Arc::default(),
        }
    }

    pub fn into_server(self) -> TransportServer<Self> {
        TransportServer::new(self)
    }

    /// The node's roots, for messages.
    fn roots_text(&self) -> String {
        self.cfg.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Whether `real` (symlinks resolved) lies under one of the roots.
    fn under_roots(&self, real: &Path) -> bool {
        self.cfg.roots.iter().filter_map(|r| r.canonicalize().ok()).any(|r| real.starts_with(r))
    }

    /// The repository at `p`: a path under one of the roots (symlinks resolved), or an S3
    /// location in one of the node's buckets.
    fn repository_location(&self, p: &str) -> Result<Location, Status> {
        match self.s3_location(p)? {
            Some(l) => Ok(l),
            None => self.resolve(Path::new(p), p).map(Location::Local),
        }
    }

    /// `p` parsed when it names an S3 location this node serves; `None` for a path.
    fn s3_location(&self, p: &str) -> Result<Option<Location>, Status> {
        let loc: Location = p.parse().map_err(|e: String| Status::invalid_argument(format!("repository {p}: {e}")))?;
        match &loc {
            Location::Local(_) => Ok(None),
            Location::S3(s3) if self.cfg.s3_buckets.contains(&s3.bucket) => Ok(Some(loc)),
            Location::S3(s3) => Err(Status::permission_denied(format!(
                "repository {p}: bucket {:?} is not one this transport node serves ({}): start it with --s3-bucket {}",
                s3.bucket,
                if self.cfg.s3_buckets.is_empty() { "none".to_string() } else { self.cfg.s3_buckets.join(", ") },
                s3.bucket
            ))),
            Location::Memory(_) => Err(Status::invalid_argument(format!("repository {p}: not a place a node stores"))),
        }
    }

    /// `path` with symlinks resolved, if it lies under one of the roots; errors speak of the
    /// repository `p` (`path` may be its parent).
    fn resolve(&self, path: &Path, p: &str) -> Result<PathBuf, Status> {
        let not_under = || {
            Status::permission_denied(format!(
                "repository {p} is not under any of this transport node's roots ({}): choose a path under one of them",
                self.roots_text()
            ))
        };
        let real = match path.canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Say first whether the path could ever be served: a path outside the roots is
                // the mistake to name, not the directory missing on the way to it.
                let lexically = self.cfg.roots.iter().any(|r| path.starts_with(r));
                let existing = path.ancestors().skip(1).find_map(|a| a.canonicalize().ok());
                if !lexically && !existing.is_some_and(|a| self.under_roots(&a)) {
                    return Err(not_under());
                }
                return Err(Status::not_found(format!("repository {p}: there is no such directory on this node")));
            }
            Err(e) => return Err(Status::invalid_argument(format!("repository {p}: {e}"))),
        };
        if !self.under_roots(&real) {
            return Err(not_under());
        }
        Ok(real)
    }

    /// A location for a new repository: a path whose parent exists under one of the roots, or
    /// an S3 location in one of the node's buckets.
    fn new_repository_location(&self, p: &str) -> Result<Location, Status> {
        if let Some(l) = self.s3_location(p)? {
            return Ok(l);
        }
        let path = Path::new(p);
        if path.exists() {
            return self.repository_location(p);
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Status::invalid_argument(format!("{p} is not a repository path")));
        };
        let parent = self.resolve(parent, p).map_err(|e| match e.code() {
            tonic::Code::NotFound => Status::not_found(format!(
                "repository {p}: its directory {} does not exist on this node: create it first",
                parent.display()
            )),
            _ => e,
        })?;
        Ok(Location::Local(parent.join(name)))
    }

    /// The point a request names, opened (or still open) on a blocking thread.
    async fn view(&self, a: Option<PointAccess>) -> Result<(Arc<browse::View>, u32), Status> {
        let a = a.ok_or_else(|| Status::invalid_argument("the request names no point"))?;
        bulwark_proto::check_protocol(a.protocol, "server")?;
        let path = self.repository_location(&a.repository)?;
        let password = (!a.password.is_empty()).then(|| a.password.into_bytes());
        let views = self.views.clone();
        let view = tokio::task::spawn_blocking(move || views.open(&path, password.as_deref(), &a.point))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| e.status())?;
        Ok((view, a.volume))
    }

    async fn outcome_of(&self, id: &str) -> Result<MoverOutcome, Status> {
        let mut rx = {
            let movers = self.movers.lock().expect("lock");
            movers.get(id).ok_or_else(|| Status::not_found(format!("no data mover {id}")))?.outcome.clone()
        };
        let outcome = loop {
            if let Some(o) = rx.borrow().clone() {
                break o;
            }
            if rx.changed().await.is_err() {
                break MoverOutcome {
                    status: MoverStatus::Failed,
                    failure: Some(Failure::Transient),
                    error: Some("data mover vanished".into()),
                    ..Default::default()
                };
            }
        };
        Ok(outcome)
    }
}

fn report(o: MoverOutcome) -> MoverReport {
    let mut r = MoverReport {
        error: o.error.unwrap_or_default(),
        manifests_json: o.manifests.iter().map(|m| serde_json::to_string(m).expect("manifest")).collect(),
        received_bytes: o.received_bytes,
        peak_rss_bytes: o.peak_rss_bytes,
        ..Default::default()
    };
    r.set_status(o.status.into());
    if let Some(f) = o.failure {
        r.set_failure(f.into());
    }
    r
}

#[tonic::async_trait]
impl Transport for TransportService {
    async fn start_mover(&self, req: Request<MoverSpec>) -> Result<Response<MoverStarted>, Status> {
        tls::require_peer(&req, &[Role::Server], "start a data mover")?;
        let spec = req.into_inner();
        bulwark_proto::check_protocol(spec.protocol, "server")?;
        let repository = self.repository_location(&spec.repository)?;
        let t = spec.throttle.unwrap_or_default();
        let throttle = ThrottleRule::parse(t.bytes_per_s, &t.window_start, &t.window_end)
            .map_err(|e| Status::invalid_argument(format!("throttle: {e}")))?;
        bulwark_proto::pki::validate_node_name(&spec.agent).map_err(Status::invalid_argument)?;
        let ticket = random_hex::<32>();
        let cfg = MoverConfig {
            task_id: spec.task_id.clone(),
            repository,
            password: (!spec.password.is_empty()).then_some(spec.password),
            agent: spec.agent,
            ticket: ticket.clone(),
            names: spec.names,
            restore_point: (!spec.restore_point.is_empty()).then_some(spec.restore_point),
            throttle,
            max_streams: spec.max_streams.clamp(1, 16),
            connect_timeout_s: if spec.connect_timeout_s == 0 { 300 } else { spec.connect_timeout_s.into() },
            listen: if self.cfg.bind_host.contains(':') {
                format!("[{}]:0", self.cfg.bind_host)
            } else {
                format!("{}:0", self.cfg.bind_host)
            },
            data_dir: self.cfg.data_dir.clone(),
        };
        let mut child = tokio::process::Command::new(&self.cfg.mover_program)
            .arg("data-mover")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| Status::internal(format!("cannot start a data mover: {e}")))?;
        let pid = child.id().unwrap_or_default();
        let mut stdin = child.stdin.take().expect("piped");
        let json = serde_json::to_vec(&cfg).expect("config");
        stdin.write_all(&json).await.map_err(|e| Status::internal(format!("data mover: {e}")))?;
        drop(stdin);
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        let port = match first {
            Ok(Ok(Some(line))) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(p) = v.get("port").and_then(|p| p.as_u64()) {
                    p
                } else {
                    let _ = child.wait().await;
                    let e = v.get("error").and_then(|e| e.as_str()).unwrap_or(&line).to_string();
                    let e = format!("data mover for task {}: {e}", cfg.task_id);
                    // The code carries whether a retry can help (see the server's task driver).
                    return Err(match v.get("failure").and_then(|f| f.as_str()) {
                        Some("permanent") => Status::failed_precondition(e),
                        _ => Status::unavailable(e),
                    });
                }
            }
            _ => {
                let _ = child.kill().await;
                return Err(Status::internal("the data mover did not start"));
            }
        };
        let (tx, rx) = watch::channel(None);
        let task_id = cfg.task_id.clone();
        tokio::spawn(async move {
            let mut last = None;
            while let Ok(Some(line)) = lines.next_line().await {
                last = serde_json::from_str::<MoverOutcome>(&line).ok().or(last);
            }
            let status = child.wait().await;
            let outcome = last.unwrap_or_else(|| MoverOutcome {
                status: MoverStatus::Failed,
                failure: Some(Failure::Transient),
                error: Some(format!(
                    "the data mover ended without a report ({})",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                )),
                ..Default::default()
            });
            let _ = tx.send(Some(outcome));
        });
        let mover_id = random_hex::<8>();
        info!("task {task_id}: data mover {mover_id} (pid {pid}) listening on port {port}");
        self.movers.lock().expect("lock").insert(mover_id.clone(), Mover { task_id, pid, outcome: rx });
        Ok(Response::new(MoverStarted { mover_id, address: format!("{}:{port}", self.cfg.advertise_host), ticket }))
    }

    async fn wait_mover(&self, req: Request<MoverRef>) -> Result<Response<MoverReport>, Status> {
        tls::require_peer(&req, &[Role::Server], "follow a data mover")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let outcome = self.outcome_of(&r.mover_id).await?;
        self.movers.lock().expect("lock").remove(&r.mover_id);
        Ok(Response::new(report(outcome)))
    }

    async fn stop_mover(&self, req: Request<MoverRef>) -> Result<Response<MoverReport>, Status> {
        tls::require_peer(&req, &[Role::Server], "stop a data mover")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let (pid, task, ended) = {
            let movers = self.movers.lock().expect("lock");
            let m =
                movers.get(&r.mover_id).ok_or_else(|| Status::not_found(format!("no data mover {}", r.mover_id)))?;
            let ended = m.outcome.borrow().is_some();
            (m.pid, m.task_id.clone(), ended)
        };
        // A mover that already ended was reaped: its pid may belong to another process now.
        if !ended {
            warn!("task {task}: stopping data mover {} on the server's request", r.mover_id);
        }
        if let (false, Ok(pid)) = (ended, i32::try_from(pid)) {
            // SAFETY: kill(2) with a pid this service spawned and still tracks; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let outcome = self.outcome_of(&r.mover_id).await?;
        self.movers.lock().expect("lock").remove(&r.mover_id);
        Ok(Response::new(report(outcome)))
    }

    async fn init_repository(&self, req: Request<RepositoryInit>) -> Result<Response<RepositoryInfo>, Status> {
        tls::require_peer(&req, &[Role::Server], "create a repository")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let path = self.new_repository_location(&r.path)?;
        let password = (!r.password.is_empty()).then(|| r.password.into_bytes());
        let isolation: bulwark_repo::Isolation = r.isolation.parse().map_err(Status::invalid_argument)?;
        let pack_size = (r.pack_size_mib > 0).then_some(u64::from(r.pack_size_mib) << 20);
        let immutable_days = (r.immutable_days > 0).then_some(r.immutable_days);
        let info = tokio::task::spawn_blocking(move || -> Result<RepositoryInfo, bulwark_repo::RepoError> {
            let existing = match bulwark_repo::Repository::open(&path, password.as_deref()) {
                Ok(repo) => Some(repo),
                Err(bulwark_repo::RepoError::NotARepository { .. }) => None,
                Err(e) => return Err(e),
            };
            if let Some(repo) = existing {
                if repo.isolation() != isolation {
                    return Err(bulwark_repo::RepoError::Invalid {
                        repo: path.to_string(),
                        reason: format!(
                            "it exists with isolation {}, not {}; the isolation of a repository is chosen when it \
                             is created",
                            repo.isolation().name(),
                            isolation.name()
                        ),
                    });
                }
                // A password for a repository that has none would be reported as encryption
                // that does not exist: backups would go on in clear.
                if password.is_some() && !repo.is_encrypted() {
                    return Err(bulwark_repo::RepoError::Invalid {
                        repo: path.to_string(),
                        reason: "it exists and is not encrypted, but a password was given: add it without a \
                                 password, or give an encrypted repository another path"
                            .into(),
                    });
                }
                if immutable_days.is_some() && repo.immutable_days() != immutable_days {
                    return Err(bulwark_repo::RepoError::Invalid {
                        repo: path.to_string(),
                        reason: format!(
                            "it exists and locks points for {}, not {} days; immutability is chosen when a \
                             repository is created",
                            repo.immutable_days().map_or("no days".into(), |d| format!("{d} days")),
                            immutable_days.unwrap_or_default()
                        ),
                    });
                }
                return Ok(RepositoryInfo {
                    created: false,
                    encrypted: repo.is_encrypted(),
                    isolation: repo.isolation().name().into(),
                    immutable_days: repo.immutable_days().unwrap_or(0),
                });
            }
            let opts =
                bulwark_repo::InitOptions { password, isolation, pack_size, immutable_days, ..Default::default() };
            let repo = bulwark_repo::Repository::init(&path, &opts)?;
            Ok(RepositoryInfo {
                created: true,
                encrypted: repo.is_encrypted(),
                isolation: isolation.name().into(),
                immutable_days: repo.immutable_days().unwrap_or(0),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        info!("repository {} {}", r.path, if info.created { "created" } else { "checked" });
        Ok(Response::new(info))
    }

    async fn apply_retention(&self, req: Request<RetentionRequest>) -> Result<Response<RetentionReport>, Status> {
        tls::require_peer(&req, &[Role::Server], "apply retention")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let path = self.repository_location(&r.path)?;
        let policy = bulwark_repo::retention::Policy {
            last: r.keep_last,
            daily: r.keep_daily,
            weekly: r.keep_weekly,
            monthly: r.keep_monthly,
            yearly: 0,
        };
        let password = (!r.password.is_empty()).then(|| r.password.into_bytes());
        let names = r.names;
        let deleted = tokio::task::spawn_blocking(move || -> Result<Vec<String>, bulwark_repo::RepoError> {
            let repo = bulwark_repo::Repository::open(&path, password.as_deref())?;
            let mut deleted = Vec::new();
            for n in &names {
                let decisions = bulwark_repo::retention::forget(&repo, n, &policy, false)?;
                deleted.extend(decisions.into_iter().filter(|d| !d.kept).map(|d| d.point.to_string()));
            }
            Ok(deleted)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        if !deleted.is_empty() {
            info!("retention deleted {} point(s): {}", deleted.len(), deleted.join(", "));
        }
        Ok(Response::new(RetentionReport { deleted }))
    }

    async fn copy_points(&self, req: Request<PointCopy>) -> Result<Response<PointCopyReport>, Status> {
        tls::require_peer(&req, &[Role::Server], "copy restore points")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let from = self.repository_location(&r.from)?;
        let to = self.repository_location(&r.to)?;
        let from_password = (!r.from_password.is_empty()).then(|| r.from_password.into_bytes());
        let to_password = (!r.to_password.is_empty()).then(|| r.to_password.into_bytes());
        let (from_name, to_name, remove) = (r.from.clone(), r.to.clone(), r.remove);
        info!(
            "copying {} point(s) from {} to {}{}",
            r.points.len(),
            r.from,
            r.to,
            if remove { ", removing" } else { "" }
        );
        let points = tokio::task::spawn_blocking(move || {
            let open = |loc: &Location, password: Option<Vec<u8>>, name: &str, role: &str| {
                bulwark_repo::Repository::open(loc, password.as_deref()).map_err(|e| {
                    Status::failed_precondition(format!("the {role} repository {name} cannot be opened: {e}"))
                })
            };
            let from = open(&from, from_password, &from_name, "source")?;
            let to = open(&to, to_password, &to_name, "target")?;
            if from.repository_id() == to.repository_id() {
                return Err(Status::failed_precondition(format!(
                    "{from_name} and {to_name} are the same repository: points are copied to another one"
                )));
            }
            Ok(copy_each(&from, &to, &r.points, remove))
        })
        .await
        .map_err(|e| Status::internal(format!("copying points: {e}")))??;
        for p in &points {
            let what = match (p.copied, p.removed) {
                (true, true) => "copied and removed",
                (true, false) => "copied",
                (false, true) => "present, removed",
                (false, false) if p.error.is_empty() => "already present",
                (false, false) => "not copied",
            };
            let why = if p.error.is_empty() { String::new() } else { format!(": {}", p.error) };
            info!("point {} {what} ({} bytes stored in {}){why}", p.id, p.stored_bytes, r.to);
        }
        Ok(Response::new(PointCopyReport { points }))
    }

    async fn verify_repository(&self, req: Request<VerifyRequest>) -> Result<Response<VerifyReply>, Status> {
        tls::require_peer(&req, &[Role::Server], "check a repository's health")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let path = self.repository_location(&r.path)?;
        let password = (!r.password.is_empty()).then(|| r.password.into_bytes());
        info!("repository {}: health check started", r.path);
        let (report, (manifests, indexes_only)) = tokio::task::spawn_blocking(move || {
            let repo = bulwark_repo::Repository::open(&path, password.as_deref())?;
            let report = health_check(&repo)?;
            Ok::<_, bulwark_repo::RepoError>((report, point_ids(&repo)?))
        })
        .await
        .map_err(|e| Status::internal(format!("health check: {e}")))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let damaged = report.points.iter().filter(|p| !p.ok).count();
        info!(
            "repository {}: health check of {} point(s), {} chunk(s): {}",
            r.path,
            report.points.len(),
            report.chunks_checked,
            if damaged == 0 { "healthy".to_string() } else { format!("{damaged} point(s) damaged") }
        );
        let report_json =
            serde_json::to_string(&report).map_err(|e| Status::internal(format!("health check report: {e}")))?;
        Ok(Response::new(VerifyReply { report_json, manifests, indexes_only }))
    }

    async fn repository_usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageReply>, Status> {
        tls::require_peer(&req, &[Role::Server], "measure a repository")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let location = self.repository_location(&r.path)?;
        let usage = tokio::task::spawn_blocking(move || bulwark_repo::storage::usage(&location))
            .await
            .map_err(|e| Status::internal(format!("measuring a repository: {e}")))?
            .map_err(|e| Status::failed_precondition(format!("repository {}: {e}", r.path)))?;
        let (has_capacity, total_bytes, free_bytes) =
            usage.capacity.map_or((false, 0, 0), |c| (true, c.total_bytes, c.free_bytes));
        Ok(Response::new(UsageReply {
            stored_bytes: usage.stored_bytes,
            objects: usage.objects,
            has_capacity,
            total_bytes,
            free_bytes,
        }))
    }

    async fn update_revocations(&self, req: Request<RevocationList>) -> Result<Response<Empty>, Status> {
        tls::serve_revocations(&self.revoked, req)
    }

    async fn browse_point(&self, req: Request<BrowseRequest>) -> Result<Response<BrowseReply>, Status> {
        tls::require_peer(&req, &[Role::Server], "browse a point")?;
        let r = req.into_inner();
        let (view, volume) = self.view(r.point).await?;
        let reply = tokio::task::spawn_blocking(move || -> Result<BrowseReply, ViewError> {
            if r.volumes {
                let volumes = browse::volumes_of(&view)?.into_iter().map(Into::into).collect();
                return Ok(BrowseReply { volumes, ..Default::default() });
            }
            let limit = (r.limit as usize).clamp(1, 10_000);
            let cursor = (!r.cursor.is_empty()).then_some(r.cursor.as_str());
            let page = browse::list(&view, volume, &r.path, cursor, limit)?;
            Ok(BrowseReply {
                volumes: Vec::new(),
                entries: page.entries.into_iter().map(Into::into).collect(),
                next: page.next.unwrap_or_default(),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| e.status())?;
        Ok(Response::new(reply))
    }

    type ReadPointFileStream = tokio_stream::wrappers::ReceiverStream<Result<FileData, Status>>;

    async fn read_point_file(
        &self,
        req: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadPointFileStream>, Status> {
        tls::require_peer(&req, &[Role::Server], "read a file of a point")?;
        let r = req.into_inner();
        let (view, volume) = self.view(r.point).await?;
        // The file is opened (and its first piece read) before answering, so a missing file is
        // this call's error; then the same open file serves every piece.
        const PIECE: usize = 1 << 20;
        let first_len = if r.length == 0 { PIECE } else { (r.length as usize).min(PIECE) };
        let path = r.path.clone();
        let (mut file, first) = tokio::task::spawn_blocking(move || {
            let mut file = browse::open_file(&view, volume, &path)?;
            let first = file.read(r.offset, first_len)?;
            Ok::<_, ViewError>((file, first))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| e.status())?;
        let size = file.size();
        let end = if r.length == 0 { size } else { r.offset.saturating_add(r.length).min(size) };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut at = r.offset + first.len() as u64;
            let mut piece = Ok(FileData { size, data: first });
            loop {
                let done = piece.is_err();
                if tx.blocking_send(piece).is_err() || done || at >= end {
                    return;
                }
                let want = ((end - at) as usize).min(PIECE);
                piece = match file.read(at, want) {
                    Ok(data) if data.is_empty() => return,
                    Ok(data) => {
                        at += data.len() as u64;
                        Ok(FileData { size, data })
                    }
                    Err(e) => Err(e.status()),
                };
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    type ReadPointArchiveStream = tokio_stream::wrappers::ReceiverStream<Result<FileData, Status>>;

    async fn read_point_archive(
        &self,
        req: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadPointArchiveStream>, Status> {
        tls::require_peer(&req, &[Role::Server], "read files of a point")?;
        let r = req.into_inner();
        let (view, volume) = self.view(r.point).await?;
        // What is asked for must be there before the answer starts: a wrong path is this call's
        // error, not a broken stream.
        let (v, path) = (view.clone(), r.path.clone());
        tokio::task::spawn_blocking(move || browse::stat(&v, volume, &path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| e.status())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(ChannelWriter::PIECE) };
            let done = browse::archive(&view, volume, &r.path, &mut out)
                .and_then(|_| out.send().map_err(|e| ViewError::Io(e.to_string())));
            if let Err(e) = done {
                warn!("archive of {} of point {}: {e}", r.path, view.manifest().id);
                let _ = tx.blocking_send(Err(e.status()));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn publish_point(&self, req: Request<PublishRequest>) -> Result<Response<Published>, Status> {
        tls::require_peer(&req, &[Role::Server], "publish a point")?;
        let r = req.into_inner();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let lifetime = Duration::from_secs(r.expires_unix.saturating_sub(now));
        if lifetime.is_zero() {
            return Err(Status::invalid_argument("the export would end before it starts"));
        }
        let allowed_peers = match r.allowed_ip.as_str() {
            "" => None,
            ip => Some(vec![ip
                .parse::<std::net::IpAddr>()
                .map_err(|_| Status::invalid_argument(format!("{ip:?} is not an IP address")))?]),
        };
        let (view, volume) = self.view(r.point).await?;
        let browse::View::Volume { image, manifest, .. } = view.as_ref() else {
            return Err(Status::invalid_argument(format!(
                "point {} is a file-level point: only volume points are served as disks",
                view.manifest().id
            )));
        };
        let image = image.clone();
        let image = tokio::task::spawn_blocking(move || bulwark_repo::volumes::open_volume(&image, volume))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Status::not_found(e.to_string()),
                std::io::ErrorKind::InvalidData => Status::invalid_argument(e.to_string()),
                _ => Status::unavailable(e.to_string()),
            })?;
        // The random part of the name is what lets a client in: NBD has no passwords, and the
        // server neither lists its exports nor names them to a client that asks wrongly.
        let (id, name) = (random_hex::<8>(), format!("{}-{}", manifest.id, random_hex::<16>()));
        let scratch = self.cfg.data_dir.join("exports");
        std::fs::create_dir_all(&scratch).map_err(|e| Status::internal(format!("{}: {e}", scratch.display())))?;
        let size = image.size();
        let export = bulwark_nbd::Export {
            name: name.clone(),
            description: format!("{} volume {volume}", image.describe()),
            image,
            writable: r.writable,
        };
        let opts =
            bulwark_nbd::Options { scratch_dir: scratch, secret_names: true, allowed_peers, ..Default::default() };
        let server = bulwark_nbd::Server::new(vec![export], opts).map_err(|e| Status::internal(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind((self.cfg.bind_host.as_str(), 0))
            .await
            .map_err(|e| Status::internal(format!("listening for the export: {e}")))?;
        let port = listener.local_addr().map_err(|e| Status::internal(e.to_string()))?.port();
        let host = &self.cfg.advertise_host;
        let url = if host.contains(':') {
            format!("nbd://[{host}]:{port}/{name}")
        } else {
            format!("nbd://{host}:{port}/{name}")
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        self.exports.lock().expect("lock").insert(id.clone(), stop_tx);
        let (exports, export_id, point) = (self.exports.clone(), id.clone(), manifest.id.to_string());
        info!("point {point} volume {volume} published as export {id} on port {port} for {} s", lifetime.as_secs());
        tokio::spawn(async move {
            // Ends when unpublished (the sender dropped or used) or when its time is up.
            let stop = async {
                tokio::select! {
                    _ = stop_rx => {}
                    () = tokio::time::sleep(lifetime) => {}
                }
            };
            if let Err(e) = server.serve(listener, stop).await {
                warn!("export {export_id} of point {point}: {e}");
            }
            exports.lock().expect("lock").remove(&export_id);
            info!("export {export_id} of point {point} ended ({} bytes read)", server.bytes_read());
        });
        Ok(Response::new(Published { export_id: id, url, size }))
    }

    async fn unpublish_point(&self, req: Request<UnpublishRequest>) -> Result<Response<Empty>, Status> {
        tls::require_peer(&req, &[Role::Server], "unpublish a point")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let stop = self.exports.lock().expect("lock").remove(&r.export_id);
        match stop {
            Some(stop) => {
                let _ = stop.send(());
                Ok(Response::new(Empty {}))
            }
            None => Err(Status::not_found(format!("export {} is not served by this node", r.export_id))),
        }
    }
}

/// The bytes of a stream answer, sent a piece at a time; a caller that hung up ends the writing.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<FileData, Status>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    const PIECE: usize = 1 << 20;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        self.tx
            .blocking_send(Ok(FileData { size: 0, data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader hung up"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= Self::PIECE {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The health check of a whole repository, on every core. The one call into the repository's
/// verify: its options change here alone.
fn health_check(repo: &bulwark_repo::Repository) -> bulwark_repo::Result<bulwark_repo::verify::VerifyReport> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    bulwark_repo::verify::verify(repo, bulwark_repo::verify::Selection::All, threads, &|_| {})
}

/// Copies `points` (parents first) from `from` to `to`, one by one; with `remove`, forgets each
/// in `from` once `to` holds it. What befalls one point is in its report, never an error for the
/// others.
fn copy_each(
    from: &bulwark_repo::Repository,
    to: &bulwark_repo::Repository,
    points: &[String],
    remove: bool,
) -> Vec<CopiedPointReport> {
    points
        .iter()
        .map(|p| {
            let mut report = CopiedPointReport { id: p.clone(), ..Default::default() };
            let id: bulwark_repo::RestorePointId = match p.parse() {
                Ok(id) => id,
                Err(e) => {
                    report.error = e;
                    return report;
                }
            };
            match bulwark_repo::copy_point(from, to, &id, &|_| {}) {
                Ok(c) => {
                    report.copied = c.copied;
                    report.present = true;
                    report.stored_bytes = c.stored_bytes;
                }
                Err(e) => {
                    report.error = e.to_string();
                    return report;
                }
            }
            if remove {
                match from.delete_point(&id) {
                    // Gone already (an evacuation resumed after the forget): `from` does not
                    // hold it, which is what was asked.
                    Ok(()) | Err(bulwark_repo::RepoError::NoSuchPoint { .. }) => report.removed = true,
                    Err(e) => report.error = e.to_string(),
                }
            }
            report
        })
        .collect()
}

/// The ids of the points the repository holds now: those with a manifest (readable or not), and
/// indexes whose manifest is lost (the catalog's orphans: not forgotten, no backup writing them).
fn point_ids(repo: &bulwark_repo::Repository) -> bulwark_repo::Result<(Vec<String>, Vec<String>)> {
    let c = repo.catalog()?;
    let manifests = c.points.iter().map(|m| &m.id).chain(c.damaged.iter().map(|d| &d.id)).map(|id| id.to_string());
    Ok((manifests.collect(), c.orphans.iter().map(|id| id.to_string()).collect()))
}

/// Serves the transport service on `listener` until the process ends.
pub async fn serve(
    service: TransportService,
    listener: tokio::net::TcpListener,
    tls_cfg: Arc<bulwark_proto::rustls::ServerConfig>,
) -> Result<(), tonic::transport::Error> {
    let views = service.views.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let v = views.clone();
            let _ = tokio::task::spawn_blocking(move || v.sweep()).await;
        }
    });
    let limits = tls::Limits::from_env();
    let incoming = tls::incoming(listener, tls_cfg, limits.clone());
    tls::server_builder(&limits).add_service(service.into_server()).serve_with_incoming(incoming).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(root: &Path) -> TransportService {
        let cfg = TransportConfig {
            name: "store".into(),
            data_dir: root.join("data"),
            roots: vec![root.join("repos")],
            s3_buckets: vec!["served".into()],
            advertise_host: "localhost".into(),
            bind_host: "127.0.0.1".into(),
            mover_program: "/bin/false".into(),
            kernel_mounts: false,
        };
        TransportService::new(cfg, Revocations::default())
    }

    #[test]
    fn a_repository_path_outside_the_roots_is_named_with_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repos")).unwrap();
        let t = service(dir.path());
        let roots = dir.path().join("repos").display().to_string();
        for outside in ["/nonexistent/dir/repo".to_string(), dir.path().join("elsewhere").display().to_string()] {
            let e = t.new_repository_location(&outside).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{outside}: {e:?}");
            assert!(e.message().contains(&outside) && e.message().contains(&roots), "{}", e.message());
            assert!(e.message().contains("not under any of this transport node's roots"), "{}", e.message());
        }
        let missing = dir.path().join("repos/missing/repo").display().to_string();
        let e = t.new_repository_location(&missing).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        assert!(e.message().contains("does not exist") && e.message().contains("create it first"), "{}", e.message());
        let fine = dir.path().join("repos/new");
        assert_eq!(
            t.new_repository_location(&fine.display().to_string()).unwrap(),
            Location::Local(fine.canonicalize().unwrap_or(fine))
        );
    }

    fn from_the(role: Role, msg: PointCopy) -> Request<PointCopy> {
        let mut req = Request::new(msg);
        let identity = bulwark_proto::pki::PeerIdentity { role, name: "peer".into(), serial: "01".into() };
        let info = tls::PeerInfo { remote: "127.0.0.1:1".parse().unwrap(), identity: Some(identity), connection: 1 };
        req.extensions_mut().insert(info);
        req
    }

    /// A volume point of `blocks` blocks of 4 KiB, each from `seed`.
    fn backup(repo: &bulwark_repo::Repository, seed: u8, blocks: u8) -> bulwark_repo::Manifest {
        use bulwark_repo::{BlockRef, BlockSize, Compression, PointKind, PointSpec, PointStats};
        let spec = PointSpec {
            kind: PointKind::Volume,
            name: "vol".into(),
            source: "test".into(),
            volume_size: u64::from(blocks) * 4096,
            block_size: BlockSize::new(4096).unwrap(),
            compression: Compression::None,
            parent: None,
            snapshot: String::new(),
            consistency: String::new(),
            key_scope: None,
        };
        let mut w = repo.begin_point(spec).unwrap();
        let mut codec = repo.codec(Compression::None);
        for i in 0..blocks {
            let b = vec![seed ^ i; 4096];
            let id = codec.digest(&b);
            if !repo.reuse_chunk(&id).unwrap() {
                repo.put_chunk(&id, &codec.encode(&id, &b)).unwrap();
            }
            w.push_block(&BlockRef::Chunk(id)).unwrap();
        }
        w.commit(PointStats::default()).unwrap()
    }

    #[tokio::test]
    async fn points_are_copied_and_removed_one_by_one() {
        use bulwark_repo::{InitOptions, Repository};
        let dir = tempfile::tempdir().unwrap();
        let t = service(dir.path());
        let (a, b) = (dir.path().join("repos/a"), dir.path().join("repos/b"));
        let opts = InitOptions {
            password: Some(b"pw".to_vec()),
            kdf: bulwark_repo::crypto::KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            ..Default::default()
        };
        let from = Repository::init(&a, &InitOptions::default()).unwrap();
        Repository::init(&b, &opts).unwrap();
        let (p1, p2) = (backup(&from, 1, 8), backup(&from, 2, 8));
        let msg = |points: Vec<String>, remove: bool| PointCopy {
            protocol: bulwark_proto::PROTOCOL,
            from: a.display().to_string(),
            from_password: String::new(),
            to: b.display().to_string(),
            to_password: "pw".into(),
            points,
            remove,
        };
        let ids = vec![p1.id.to_string(), "not an id".into(), p2.id.to_string()];

        let e = t.copy_points(from_the(Role::Agent, msg(ids.clone(), true))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let mut wrong = msg(ids.clone(), true);
        wrong.to_password = "nope".into();
        let e = t.copy_points(from_the(Role::Server, wrong)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("target repository") && e.message().contains(&b.display().to_string()), "{e:?}");
        let mut same = msg(ids.clone(), true);
        same.to = dir.path().join("repos/./a").display().to_string();
        same.to_password = String::new();
        let e = t.copy_points(from_the(Role::Server, same)).await.unwrap_err();
        assert!(e.message().contains("the same repository"), "{e:?}");
        assert_eq!(from.list_points().unwrap().len(), 2);

        // Copied, then removed; the bad id is reported and the next point still copied.
        let report = t.copy_points(from_the(Role::Server, msg(ids.clone(), true))).await.unwrap().into_inner();
        let got: Vec<_> = report.points.iter().map(|p| (p.copied, p.removed, p.error.is_empty())).collect();
        assert_eq!(got, [(true, true, true), (false, false, false), (true, true, true)], "{report:?}");
        assert!(report.points[0].stored_bytes > 8 * 4096, "{report:?}");
        assert!(from.list_points().unwrap().is_empty());
        let to = Repository::open(&b, Some(b"pw")).unwrap();
        let held: Vec<_> = to.list_points().unwrap().into_iter().map(|m| (m.id, m.created)).collect();
        assert_eq!(held, [(p1.id.clone(), p1.created), (p2.id.clone(), p2.created)]);
        assert!(bulwark_repo::verify::verify(&to, bulwark_repo::verify::Selection::All, 1, &|_| {}).unwrap().ok);

        // Again (an evacuation resumed): nothing to copy, nothing left to remove.
        let report = t.copy_points(from_the(Role::Server, msg(ids, true))).await.unwrap().into_inner();
        let got: Vec<_> = report.points.iter().map(|p| (p.copied, p.removed, p.stored_bytes)).collect();
        assert_eq!(got, [(false, true, 0), (false, false, 0), (false, true, 0)], "{report:?}");
    }

    #[test]
    fn only_the_nodes_own_buckets_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let t = service(dir.path());
        let ok = "s3://served/repo?endpoint=http://127.0.0.1:8333";
        assert!(matches!(t.new_repository_location(ok).unwrap(), Location::S3(_)));
        let e = t.repository_location("s3://someone-elses/repo").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("--s3-bucket someone-elses") && e.message().contains("served"), "{}", e.message());
        assert_eq!(t.repository_location("memory://x").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
