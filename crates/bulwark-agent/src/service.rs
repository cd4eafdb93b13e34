//! The agent service: the daemon on a protected computer. The backup server calls it (mutual
//! TLS, server role only) for the computer's inventory and to run tasks; a task runs the same
//! pipelines as `bulwark backup`, streaming to the data mover the task names.
//!
//! One task at a time per computer. A task in progress is recorded in the data directory, so
//! that after a crash the next start removes the snapshots it left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_proto::domain::{Failure, TaskKind, TaskStatus};
use bulwark_proto::pb::agent_server::{Agent, AgentServer};
use bulwark_proto::pb::{
    task_event, CancelReply, Empty, Finished, InventoryReply, InventoryRequest, Progress, RestoreSpec,
    Revocations as RevocationList, SourceDone, TaskEvent, TaskRef, TaskSpec,
};
use bulwark_proto::pki::Role;
use bulwark_proto::tls::{self, Revocations};
use bulwark_repo::{BlockSize, Compression};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::apps::AppPolicy;
use crate::change_tracking::CbtMode;
use crate::files::FileBackupOptions;
use crate::filter::FilterOptions;
use crate::pipeline::{BackupSettings, RestoreDone, RestoreSettings};
use crate::remote::{MoverEndpoint, RemoteTarget};
use crate::scripts::{self, Script, JOB_SCRIPT_TIMEOUT};
use crate::snapshot::{provider_for, Freeze, SnapshotMode, FREEZE_LIMIT};
use crate::{AgentError, BackupOptions};

pub struct AgentService {
    data_dir: PathBuf,
    client_tls: Arc<bulwark_proto::rustls::ClientConfig>,
    revoked: Revocations,
    running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    volume_files: Option<Arc<dyn crate::pipeline::VolumeFiles>>,
}

/// A task in progress, as recorded on disk.
#[derive(Serialize, Deserialize)]
struct Marker {
    kind: TaskKind,
    snapshot: SnapshotMode,
    sources: Vec<PathBuf>,
}

type Events = mpsc::Sender<Result<TaskEvent, Status>>;

fn event(e: task_event::Event) -> Result<TaskEvent, Status> {
    Ok(TaskEvent { event: Some(e) })
}

/// What a task asks for, checked before anything starts.
struct Plan {
    kind: TaskKind,
    sources: Vec<(PathBuf, String)>,
    settings: BackupSettings,
    endpoint: MoverEndpoint,
    /// The job scripts, before anything and after everything.
    pre: Option<Script>,
    post: Option<Script>,
    /// Secrets the scripts and applications read from their environment (never logged).
    env: Vec<(String, String)>,
}

fn plan(spec: &TaskSpec) -> Result<Plan, String> {
    if spec.sources.is_empty() {
        return Err("the task has no sources".into());
    }
    let mover = spec.mover.as_ref().ok_or("the task names no data mover")?;
    let compression = Compression::try_from(spec.compression())?;
    let snapshot = SnapshotMode::try_from(spec.snapshot())?;
    let cbt = CbtMode::try_from(spec.cbt())?;
    let block_size = if spec.block_size == 0 { BlockSize::DEFAULT } else { BlockSize::new(spec.block_size)? };
    let mut volume = BackupOptions::new("");
    volume.block_size = block_size;
    volume.compression = compression;
    volume.snapshot = snapshot;
    volume.cbt = cbt;
    if !spec.lvm_snapshot_size.is_empty() {
        volume.lvm_cow = spec.lvm_snapshot_size.parse().map_err(|e| format!("LVM snapshot size {e}"))?;
    }
    volume.filters = FilterOptions { unused: spec.filters, swap: spec.filters, exclude: spec.exclude.clone() };
    let mut files = FileBackupOptions::new("");
    files.compression = compression;
    files.snapshot = snapshot;
    files.exclude = spec.exclude.clone();
    files.full = spec.full;
    let kind = TaskKind::try_from(spec.kind())?;
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("BULWARK_SECRET_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("BULWARK_TASK_ID".into(), spec.task_id.clone()));
    let limit = if spec.freeze_limit_s == 0 { FREEZE_LIMIT } else { Duration::from_secs(spec.freeze_limit_s.into()) };
    let freeze_script =
        |command: &str| (!command.is_empty()).then(|| Script { command: command.into(), timeout: limit });
    let freeze = Freeze {
        pre_freeze: freeze_script(&spec.pre_freeze),
        post_thaw: freeze_script(&spec.post_thaw),
        limit,
        env: env.clone(),
        apps: spec.apps.iter().map(|a| a.parse()).collect::<Result<_, String>>()?,
        app_policy: if spec.apps_ignore_failures { AppPolicy::Ignore } else { AppPolicy::Require },
        ..Freeze::default()
    };
    volume.freeze = freeze.clone();
    files.freeze = freeze;
    let mut sources = Vec::new();
    for s in &spec.sources {
        bulwark_repo::point::validate_name(&s.name)?;
        sources.push((PathBuf::from(&s.path), s.name.clone()));
    }
    Ok(Plan {
        kind,
        sources,
        settings: BackupSettings { volume, files },
        endpoint: MoverEndpoint {
            address: mover.address.clone(),
            node: mover.node.clone(),
            ticket: mover.ticket.clone(),
            streams: spec.streams.clamp(1, 16),
        },
        pre: job_script(&spec.pre_command, spec.script_timeout_s),
        post: job_script(&spec.post_command, spec.script_timeout_s),
        env,
    })
}

fn job_script(command: &str, timeout_s: u32) -> Option<Script> {
    let timeout = if timeout_s == 0 { JOB_SCRIPT_TIMEOUT } else { Duration::from_secs(timeout_s.into()) };
    (!command.is_empty()).then(|| Script { command: command.into(), timeout })
}

/// Runs a job script, if there is one; its output goes to the task's log.
fn run_step(what: &str, script: &Option<Script>, env: &[(String, String)], log: &dyn Fn(String)) -> Result<(), String> {
    match script {
        Some(s) => scripts::run(what, s, env, &mut |m| log(m)).map(drop),
        None => Ok(()),
    }
}

impl AgentService {
    /// The service for a node whose identity and data are in `data_dir`. Snapshots left by a
    /// task that was running when the agent died are removed now.
    pub fn new(data_dir: &Path, identity: &tls::TlsIdentity, revoked: Revocations) -> Result<Self, String> {
        let client_tls = tls::client_config(Some(identity), None, &revoked).map_err(|e| e.to_string())?;
        let svc = AgentService {
            data_dir: data_dir.to_path_buf(),
            client_tls,
            revoked,
            running: Arc::default(),
            volume_files: None,
        };
        svc.clean_up_after_crash();
        Ok(svc)
    }

    /// Restores of files out of volume points go through `v` (without one they are refused).
    pub fn with_volume_files(mut self, v: Arc<dyn crate::pipeline::VolumeFiles>) -> Self {
        self.volume_files = Some(v);
        self
    }

    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self)
    }

    fn markers(&self) -> PathBuf {
        self.data_dir.join("running")
    }

    fn clean_up_after_crash(&self) {
        let Ok(dir) = std::fs::read_dir(self.markers()) else { return };
        for e in dir.flatten() {
            if let Ok(m) = std::fs::read(e.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Marker>(&b).map_err(|e| e.to_string()))
            {
                for src in &m.sources {
                    let provider: Box<dyn crate::snapshot::SnapshotProvider> = match m.kind {
                        TaskKind::Files => Box::new(crate::snapshot::BtrfsProvider),
                        TaskKind::Volume => provider_for(m.snapshot, src, Default::default()),
                    };
                    for s in provider.remove_stale(src) {
                        warn!("removed snapshot {s} left by an interrupted task");
                    }
                }
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Runs one task on a thread of its own (the pipelines block), reporting on `events`.
fn run_task(
    spec: TaskSpec,
    plan: Plan,
    events: Events,
    cancel: Arc<AtomicBool>,
    client_tls: Arc<bulwark_proto::rustls::ClientConfig>,
    marker: PathBuf,
    rt: tokio::runtime::Handle,
) {
    let task = spec.task_id.clone();
    let log = |m: String| {
        info!("task {task}: {m}");
        let _ = events.blocking_send(event(task_event::Event::Log(m)));
    };
    let total: u64 = plan.sources.iter().map(|(p, _)| crate::source::open_source(p).map(|s| s.size).unwrap_or(0)).sum();
    let read = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let ticking = Arc::new(AtomicBool::new(true));
    {
        let (read, sent, ticking, events) = (read.clone(), sent.clone(), ticking.clone(), events.clone());
        rt.spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            while ticking.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (r, s) = (read.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
                let dt = last.0.elapsed().as_secs_f64().max(1e-3);
                let rate = ((s - last.1.min(s)) as f64 / dt) as u64;
                last = (Instant::now(), s);
                let p = Progress { total_bytes: total, read_bytes: r, sent_bytes: s, rate_bytes_per_s: rate };
                if events.send(event(task_event::Event::Progress(p))).await.is_err() {
                    return;
                }
                let _ = started;
            }
        });
    }
    let outcome = (|| -> Result<bool, (String, Failure)> {
        // An operator's step that fails may work next time (a database that was restarting).
        run_step("pre-job script", &plan.pre, &plan.env, &log).map_err(|e| (e, Failure::Transient))?;
        let target = rt.block_on(RemoteTarget::connect(&plan.endpoint, client_tls)).map_err(|e| failed(&e))?;
        let target_sent = target.sent();
        let mut warned = false;
        for (path, name) in &plan.sources {
            if cancel.load(Ordering::Relaxed) {
                return Err(("cancelled".into(), Failure::Transient));
            }
            let progress = |n: u64| {
                read.fetch_add(n, Ordering::Relaxed);
                sent.store(target_sent.load(Ordering::Relaxed), Ordering::Relaxed);
            };
            log(format!("backing up {} as {name}", path.display()));
            let done =
                crate::pipeline::backup(&target, path, plan.kind, &plan.settings.named(name), &progress, &cancel)
                    .map_err(|e| (format!("{}: {e}", path.display()), e.failure()))?;
            warned |= done.has_warnings();
            let report = serde_json::to_string(&done).expect("report");
            sent.store(target_sent.load(Ordering::Relaxed), Ordering::Relaxed);
            let _ = events.blocking_send(event(task_event::Event::SourceDone(SourceDone { report_json: report })));
        }
        Ok(warned)
    })();
    let post = run_step("post-job script", &plan.post, &plan.env, &log);
    ticking.store(false, Ordering::Relaxed);
    let (status, error, failure) = match (outcome, post) {
        (Err((e, _)), _) if cancel.load(Ordering::Relaxed) => (TaskStatus::Cancelled, e, Failure::Transient),
        (Err((e, failure)), _) => (TaskStatus::Failed, e, failure),
        (Ok(_), Err(e)) => (TaskStatus::Warning, e, Failure::Transient),
        (Ok(true), Ok(())) => (TaskStatus::Warning, String::new(), Failure::Transient),
        (Ok(false), Ok(())) => (TaskStatus::Success, String::new(), Failure::Transient),
    };
    if !error.is_empty() {
        warn!("task {task}: {status}: {error}");
    } else {
        info!("task {task}: {status}");
    }
    let _ = std::fs::remove_file(&marker);
    let _ = events.blocking_send(finished(status, error, failure));
}

/// Restores a point from the data mover onto this computer, on a thread of its own.
fn run_restore(
    spec: RestoreSpec,
    events: Events,
    cancel: Arc<AtomicBool>,
    client_tls: Arc<bulwark_proto::rustls::ClientConfig>,
    rt: tokio::runtime::Handle,
    volume_files: Option<Arc<dyn crate::pipeline::VolumeFiles>>,
) {
    let task = spec.task_id.clone();
    let outcome = (|| -> Result<String, (String, Failure)> {
        let permanent = |e: String| (e, Failure::Permanent);
        let mover = spec.mover.as_ref().ok_or_else(|| permanent("the restore names no data mover".into()))?;
        let endpoint = MoverEndpoint {
            address: mover.address.clone(),
            node: mover.node.clone(),
            ticket: mover.ticket.clone(),
            streams: spec.streams.clamp(1, 16),
        };
        let target: Arc<RemoteTarget> =
            Arc::new(rt.block_on(RemoteTarget::connect(&endpoint, client_tls)).map_err(|e| failed(&e))?);
        let m = target.point(&spec.point).map_err(|e| failed(&e))?;
        let to = PathBuf::from(&spec.target);
        info!("task {task}: restoring {} ({}) to {}", m.id, m.name, to.display());
        let done = AtomicU64::new(0);
        let progress = |n: u64| {
            done.fetch_add(n, Ordering::Relaxed);
        };
        let settings = RestoreSettings {
            overwrite: spec.overwrite,
            paths: spec.paths.clone(),
            safe: spec.safe,
            volume: spec.volume,
        };
        let fail = |e: AgentError| (format!("{}: {e}", to.display()), e.failure());
        if settings.volume != 0 && (m.kind != bulwark_repo::PointKind::Volume || settings.paths.is_empty()) {
            return Err(permanent(format!(
                "volume {} was chosen, but a volume is chosen only to restore files out of a volume point \
                 (with paths); {} is restored whole",
                settings.volume, m.id
            )));
        }
        let done = if m.kind == bulwark_repo::PointKind::Volume && !settings.paths.is_empty() {
            let files = volume_files.as_ref().ok_or_else(|| {
                permanent("this agent cannot restore files out of volume points; restore the volume whole".into())
            })?;
            let image = crate::target::point_image(target.clone(), &m).map_err(|e| failed(&e))?;
            RestoreDone::Files(files.restore(image, &m, &to, &settings, &progress, &cancel).map_err(fail)?)
        } else {
            crate::pipeline::restore(target.as_ref(), &m, &to, &settings, &progress, &cancel).map_err(fail)?
        };
        let json = serde_json::to_string(&done).expect("report");
        if let RestoreDone::Files(report) = &done {
            if !report.complete {
                // The report still reaches the server: it lists what is missing.
                let _ = events.blocking_send(event(task_event::Event::SourceDone(SourceDone { report_json: json })));
                // What could not be restored now will not be next time either.
                return Err(permanent(format!("{}: {}", to.display(), report.incomplete_summary())));
            }
        }
        Ok(json)
    })();
    let (status, error, failure) = match outcome {
        Ok(report) => {
            let _ = events.blocking_send(event(task_event::Event::SourceDone(SourceDone { report_json: report })));
            (TaskStatus::Success, String::new(), Failure::Transient)
        }
        Err((e, _)) if cancel.load(Ordering::Relaxed) => (TaskStatus::Cancelled, e, Failure::Transient),
        Err((e, failure)) => (TaskStatus::Failed, e, failure),
    };
    if error.is_empty() {
        info!("task {task}: restore {status}");
    } else {
        warn!("task {task}: restore {status}: {error}");
    }
    let _ = events.blocking_send(finished(status, error, failure));
}

/// An error of the repository (here, the data mover's) with whether a retry can help.
fn failed(e: &bulwark_repo::RepoError) -> (String, Failure) {
    (e.to_string(), if e.is_permanent() { Failure::Permanent } else { Failure::Transient })
}

fn finished(status: TaskStatus, error: String, failure: Failure) -> Result<TaskEvent, Status> {
    let mut f = Finished { error, ..Default::default() };
    f.set_status(status.into());
    if status == TaskStatus::Failed {
        f.set_failure(failure.into());
    }
    event(task_event::Event::Finished(f))
}

#[tonic::async_trait]
impl Agent for AgentService {
    type RunRestoreStream = ReceiverStream<Result<TaskEvent, Status>>;

    async fn run_restore(&self, req: Request<RestoreSpec>) -> Result<Response<Self::RunRestoreStream>, Status> {
        tls::require_peer(&req, &[Role::Server], "run a restore")?;
        let spec = req.into_inner();
        bulwark_proto::check_protocol(spec.protocol, "server")?;
        if !spec.target.starts_with('/') {
            return Err(Status::invalid_argument(format!("restore target {:?} must be an absolute path", spec.target)));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut running = self.running.lock().expect("lock");
            if let Some(other) = running.keys().next() {
                // Busy, not broken: the server tries again later.
                return Err(Status::unavailable(format!("task {other} is already running on this computer")));
            }
            running.insert(spec.task_id.clone(), cancel.clone());
        }
        let (tx, rx) = mpsc::channel(64);
        let (client_tls, running, rt) =
            (self.client_tls.clone(), self.running.clone(), tokio::runtime::Handle::current());
        let volume_files = self.volume_files.clone();
        std::thread::Builder::new()
            .name(format!("restore-{}", spec.task_id))
            .spawn(move || {
                let id = spec.task_id.clone();
                run_restore(spec, tx, cancel, client_tls, rt, volume_files);
                running.lock().expect("lock").remove(&id);
            })
            .map_err(|e| Status::internal(format!("starting the restore: {e}")))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn inventory(&self, req: Request<InventoryRequest>) -> Result<Response<InventoryReply>, Status> {
        tls::require_peer(&req, &[Role::Server], "read the inventory")?;
        bulwark_proto::check_protocol(req.get_ref().protocol, "server")?;
        let inv = tokio::task::spawn_blocking(crate::inventory::collect)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("reading the inventory: {e}")))?;
        Ok(Response::new(InventoryReply {
            inventory_json: serde_json::to_string(&inv).expect("inventory"),
            software: bulwark_proto::SOFTWARE.into(),
        }))
    }

    type RunTaskStream = ReceiverStream<Result<TaskEvent, Status>>;

    async fn run_task(&self, req: Request<TaskSpec>) -> Result<Response<Self::RunTaskStream>, Status> {
        tls::require_peer(&req, &[Role::Server], "run a task")?;
        let spec = req.into_inner();
        bulwark_proto::check_protocol(spec.protocol, "server")?;
        let mut plan = plan(&spec).map_err(|e| Status::invalid_argument(format!("task {}: {e}", spec.task_id)))?;
        plan.settings.volume.state_dir = self.data_dir.join("tracking");
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut running = self.running.lock().expect("lock");
            if let Some(other) = running.keys().next() {
                // Busy, not broken: the server tries again later.
                return Err(Status::unavailable(format!("task {other} is already running on this computer")));
            }
            running.insert(spec.task_id.clone(), cancel.clone());
        }
        let marker = self.markers().join(format!("{}.json", hex_name(&spec.task_id)));
        let m = Marker {
            kind: plan.kind,
            snapshot: plan.settings.volume.snapshot,
            sources: plan.sources.iter().map(|(p, _)| p.clone()).collect(),
        };
        let _ = std::fs::create_dir_all(self.markers());
        if let Err(e) = std::fs::write(&marker, serde_json::to_vec(&m).expect("marker")) {
            self.running.lock().expect("lock").remove(&spec.task_id);
            return Err(Status::internal(format!("recording the task: {e}")));
        }
        let (tx, rx) = mpsc::channel(64);
        let (client_tls, running, rt) =
            (self.client_tls.clone(), self.running.clone(), tokio::runtime::Handle::current());
        info!("task {}: {} of {} source(s)", spec.task_id, plan.kind.as_str(), plan.sources.len());
        std::thread::Builder::new()
            .name(format!("task-{}", spec.task_id))
            .spawn(move || {
                let id = spec.task_id.clone();
                run_task(spec, plan, tx, cancel, client_tls, marker, rt);
                running.lock().expect("lock").remove(&id);
            })
            .map_err(|e| Status::internal(format!("starting the task: {e}")))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_task(&self, req: Request<TaskRef>) -> Result<Response<CancelReply>, Status> {
        tls::require_peer(&req, &[Role::Server], "cancel a task")?;
        let r = req.into_inner();
        bulwark_proto::check_protocol(r.protocol, "server")?;
        let found = match self.running.lock().expect("lock").get(&r.task_id) {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                warn!("task {}: cancelled by the server", r.task_id);
                true
            }
            None => false,
        };
        Ok(Response::new(CancelReply { found }))
    }

    async fn update_revocations(&self, req: Request<RevocationList>) -> Result<Response<Empty>, Status> {
        tls::serve_revocations(&self.revoked, req)
    }
}

/// A task id as a file name, whatever characters it holds.
fn hex_name(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}
