//! The backup manager: the server's state shared by its parts, the dispatcher that runs what
//! the resource scheduler grants, and the task itself from grant to recorded end (the task
//! driver does the talking to nodes). Sessions, the job scheduler and reconciliation after a
//! restart live in modules of their own.
//!
//! All state lives in the config database: a task is `waiting`, `running` (it holds a slot) or
//! ended. Grants are made by one function under one lock, reading the database each time, so a
//! slot is never granted twice.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::domain::{Failure, JobMode, SessionKind, TaskStatus};
use bulwark_proto::pb::{Progress, Source, TaskSpec, Throttle};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::db::Db;
use crate::resource_scheduler::{placement, Extent, Policy, Slots};
use crate::schedule::Clock;
use crate::store::{self, Chain, TaskContext, TaskEnd};
use crate::task_driver::{Manager, NodeAddress, RestoreRequest, TaskOutcome, TaskRequest};

/// Runs futures concurrently to their ends (a handful of node calls).
pub(crate) async fn join_all<F: std::future::Future<Output = ()>>(fs: impl IntoIterator<Item = F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

pub struct BackupManager {
    pub db: Db,
    pub manager: Manager,
    pub clock: Arc<dyn Clock>,
    pub(crate) wake: Notify,
    pub(crate) grant_lock: tokio::sync::Mutex<()>,
    pub(crate) start_lock: tokio::sync::Mutex<()>,
    pub(crate) settle_lock: tokio::sync::Mutex<()>,
    pub(crate) seq: AtomicI64,
    /// The latest progress report of each running task.
    pub progress: Mutex<HashMap<String, Progress>>,
    /// Repositories whose health check is running.
    pub health: crate::health::Running,
}

/// A task the driver cannot even start: why, and whether a retry can help.
struct Refused(String, Failure);

fn permanent(reason: String) -> Refused {
    Refused(reason, Failure::Permanent)
}

impl BackupManager {
    pub async fn new(db: Db, manager: Manager, clock: Arc<dyn Clock>) -> Result<Arc<Self>, crate::db::DbError> {
        let seq = store::max_task_seq(&db).await?;
        Ok(Arc::new(BackupManager {
            db,
            manager,
            clock,
            wake: Notify::new(),
            grant_lock: tokio::sync::Mutex::new(()),
            start_lock: tokio::sync::Mutex::new(()),
            settle_lock: tokio::sync::Mutex::new(()),
            seq: AtomicI64::new(seq),
            progress: Mutex::new(HashMap::new()),
            health: Default::default(),
        }))
    }

    /// The resource scheduler's turn: grants waiting tasks a slot (see
    /// [`crate::resource_scheduler`]) and marks them running; returns their ids. Grants made
    /// before an error stand: they are returned and run, never left holding a slot with nothing
    /// running.
    pub(crate) async fn grant(self: &Arc<Self>) -> Vec<String> {
        let _one_at_a_time = self.grant_lock.lock().await;
        let mut granted = Vec::new();
        let mut refused = Vec::new();
        if let Err(e) = self.grant_into(&mut granted, &mut refused).await {
            warn!("resource scheduler: {e}");
        }
        for (id, reason) in refused {
            info!("task {id}: failed: {reason}");
            match store::fail_waiting(&self.db, &id, &reason).await {
                Ok(Some(session)) => self.settle_session(&session).await,
                Ok(None) => {}
                Err(e) => warn!("task {id}: recording that it cannot be placed: {e}"),
            }
        }
        granted
    }

    async fn grant_into(
        &self,
        granted: &mut Vec<String>,
        refused: &mut Vec<(String, String)>,
    ) -> Result<(), crate::db::DbError> {
        let mut slots = Slots::new(store::repository_limits(&self.db).await?);
        for t in store::running_tasks(&self.db, None).await? {
            slots.occupy(&t.computer, &t.repository);
        }
        let now = self.clock.now();
        // Per repository with room, its waiting tasks a page at a time until it is full: the
        // cost of a grant does not grow with the queue behind the slots.
        for repository in slots.with_room() {
            let mut offset = 0i64;
            while slots.has_room(&repository) {
                let page = store::waiting_tasks(&self.db, &repository, offset, 64).await?;
                if page.is_empty() {
                    break;
                }
                offset += page.len() as i64;
                for id in slots.grant(&page, now) {
                    let w = page.iter().find(|w| w.id == id).expect("granted from the page");
                    if store::mark_running(&self.db, &id).await? {
                        granted.push(id);
                        // A granted row left the waiting set: the next page starts one earlier.
                        offset -= 1;
                    } else {
                        slots.release(&w.computer, &w.repository);
                    }
                }
            }
        }
        // Tasks of scale-out repositories wait under its name and are placed on an extent as
        // they are granted, after the tasks waiting on a repository of their own (restores).
        for scale_out in store::scale_outs_waiting(&self.db).await? {
            let Some((policy, extents)) = store::scale_out_extents(&self.db, &scale_out).await? else { continue };
            let policy: Policy = policy.parse().unwrap_or(Policy::Locality);
            let names: Vec<String> = extents.iter().map(|(name, _)| name.clone()).collect();
            let mut extents: Vec<Extent> = extents
                .into_iter()
                .map(|(repository, maintenance)| Extent { repository, maintenance, stored_bytes: 0 })
                .collect();
            // What each extent holds is read from the catalog's manifests only when a new chain
            // is placed, once per round: a chain that has its extent needs none of it.
            let mut sized = false;
            let mut offset = 0i64;
            while names.iter().any(|e| slots.has_room(e)) {
                let page = store::waiting_tasks(&self.db, &scale_out, offset, 64).await?;
                if page.is_empty() {
                    break;
                }
                offset += page.len() as i64;
                for w in &page {
                    let job = store::task_job(&self.db, &w.id).await?;
                    let chain = store::chain_extent(&self.db, &job, &w.computer, &names).await?;
                    if chain.is_none() && !sized {
                        let stored = store::stored_bytes(&self.db, &names).await?;
                        for e in &mut extents {
                            e.stored_bytes = stored.get(&e.repository).copied().unwrap_or(0);
                        }
                        sized = true;
                    }
                    let order = match placement(&scale_out, policy, &extents, chain.as_deref(), &slots) {
                        Ok(order) => order,
                        // Failed once this round is over: until then it is still waiting, and
                        // still counts in the pages' offsets.
                        Err(reason) => {
                            refused.push((w.id.clone(), reason));
                            continue;
                        }
                    };
                    let Some(extent) = slots.grant_on(w, &order, now) else { continue };
                    if store::mark_running_on(&self.db, &w.id, &extent).await? {
                        info!("task {}: placed on extent {extent} of scale-out repository {scale_out}", w.id);
                        granted.push(w.id.clone());
                        offset -= 1;
                    } else {
                        slots.release(&w.computer, &extent);
                    }
                }
            }
        }
        Ok(())
    }

    /// Grants slots whenever something changes (and every second, for retry delays).
    pub async fn dispatcher(self: Arc<Self>) {
        loop {
            for id in self.grant().await {
                tokio::spawn(self.clone().run_task(id));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// A granted task, from its slot to its recorded end; then its session settles.
    async fn run_task(self: Arc<Self>, id: String) {
        let context = match store::task_context(&self.db, &id).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(Refused(format!("task {id} vanished from the config database"), Failure::Transient)),
            Err(e) => Err(Refused(format!("reading the task: {e}"), Failure::Transient)),
        };
        // The session to settle once the task's end is recorded, however far the task got.
        let session = match &context {
            Ok(c) => Some(c.session.clone()),
            Err(_) => store::task(&self.db, &id).await.ok().flatten().map(|t| t.session),
        };
        let driven = match &context {
            Ok(c) => self.drive(c).await,
            Err(Refused(e, failure)) => Err(Refused(e.clone(), *failure)),
        };
        let outcome = driven.unwrap_or_else(|Refused(e, failure)| TaskOutcome {
            task_id: id.clone(),
            error: Some(e),
            failure: Some(failure),
            ..Default::default()
        });
        if let Ok(c) = &context {
            for m in &outcome.points {
                if let Err(e) = store::insert_point(&self.db, &c.repository, &id, &c.computer, m).await {
                    warn!("task {id}: recording point {}: {e}", m.id);
                }
            }
            if outcome.status.succeeded() && c.kind == SessionKind::Backup {
                if let Err(e) = self.apply_retention(c).await {
                    warn!("task {id}: retention not applied: {e}");
                }
            }
        }
        let failure = (outcome.status == TaskStatus::Failed).then(|| outcome.failure.unwrap_or(Failure::Transient));
        let error = match (&outcome.error, failure) {
            (Some(e), Some(Failure::Permanent)) => Some(format!("{e} (not retried: this fails again until changed)")),
            (e, _) => e.clone(),
        };
        info!("task {id}: {}{}", outcome.status, error.as_ref().map(|e| format!(": {e}")).unwrap_or_default());
        let end = TaskEnd {
            status: outcome.status,
            error,
            failure,
            log: json!({"lines": outcome.log, "reports": outcome.reports}),
            sent_bytes: outcome.received_bytes as i64,
        };
        // The task's end must reach the database, or its slot stays taken: retried until it does.
        for attempt in 0u64.. {
            match store::end_task(&self.db, &id, &end).await {
                Ok(()) => break,
                Err(e) => {
                    warn!("task {id}: recording its end (try {}): {e}", attempt + 1);
                    tokio::time::sleep(Duration::from_secs(attempt.min(30) + 1)).await;
                }
            }
        }
        self.progress.lock().expect("lock").remove(&id);
        if let Some(session) = session {
            self.settle_session(&session).await;
        }
        self.wake.notify_one();
    }

    /// After a successful backup: the job's retention on the computer's backup names, on the
    /// repository's transport node; deleted points leave the catalog.
    async fn apply_retention(&self, c: &TaskContext) -> Result<(), String> {
        let Some(job) = &c.job else { return Ok(()) };
        let r = &job.retention;
        if r.keep_last.is_none() && r.keep_daily.is_none() && r.keep_weekly.is_none() && r.keep_monthly.is_none() {
            return Ok(());
        }
        let access = c.access.as_ref().ok_or("the repository is gone")?;
        let password = access.password.clone()?;
        let node = NodeAddress {
            name: access.transport.clone(),
            address: access.transport_address.clone().ok_or("its transport node is gone")?,
        };
        let req = bulwark_proto::pb::RetentionRequest {
            protocol: bulwark_proto::PROTOCOL,
            path: access.path.clone(),
            password: password.unwrap_or_default(),
            // Every chain of this job on this computer: also those of sources the job no longer
            // names and the disks of an entire computer (which the job's sources do not list).
            names: store::chain_names(&self.db, &job.name, &c.computer, &c.repository)
                .await
                .map_err(|e| e.to_string())?,
            keep_last: r.keep_last.unwrap_or(0),
            keep_daily: r.keep_daily.unwrap_or(0),
            keep_weekly: r.keep_weekly.unwrap_or(0),
            keep_monthly: r.keep_monthly.unwrap_or(0),
        };
        let mut client = self.manager.transport(&node).await.map_err(|e| e.to_string())?;
        let deleted = client.apply_retention(req).await.map_err(|s| s.message().to_string())?.into_inner().deleted;
        store::delete_points(&self.db, &deleted).await.map_err(|e| e.to_string())?;
        if !deleted.is_empty() {
            info!("task {}: retention removed {} point(s)", c.id, deleted.len());
        }
        Ok(())
    }

    /// Builds the task's request from its context and runs it through the task driver.
    async fn drive(&self, c: &TaskContext) -> Result<TaskOutcome, Refused> {
        let agent = NodeAddress {
            name: c.computer.clone(),
            address: c
                .agent_address
                .clone()
                .ok_or_else(|| permanent(format!("computer {} has not joined or was removed", c.computer)))?,
        };
        let access = c.access.as_ref().ok_or_else(|| permanent(format!("repository {} is gone", c.repository)))?;
        let password = access.password.clone().map_err(permanent)?;
        let transport = NodeAddress {
            name: access.transport.clone(),
            address: access
                .transport_address
                .clone()
                .ok_or_else(|| permanent(format!("transport node {} is gone", access.transport)))?,
        };
        if c.kind == SessionKind::Restore {
            let order =
                c.restore.as_ref().ok_or_else(|| permanent("the restore task says nothing to restore".into()))?;
            let req = RestoreRequest {
                task_id: c.id.clone(),
                agent,
                transport,
                repository: access.path.clone(),
                password: password.clone(),
                order: order.clone(),
            };
            return Ok(self.manager.run_restore(req).await);
        }
        let job = c.job.as_ref().ok_or_else(|| permanent("its job was deleted".into()))?;
        // An entire computer: its whole disks, as its agent reports them now.
        let sources = if job.mode == JobMode::Computer {
            let inventory =
                self.manager.inventory(&agent).await.map_err(|e| Refused(e.to_string(), Failure::Transient))?;
            let disks = crate::model::whole_disks(&inventory);
            if disks.is_empty() {
                return Err(permanent(format!("computer {} reports no disk to back up", c.computer)));
            }
            disks
        } else {
            job.sources.clone()
        };
        // A secret sealed under another key stays so; the database may come back.
        let db_err = |e: crate::db::DbError| match e {
            crate::db::DbError::Secret(_) => Refused(e.to_string(), Failure::Permanent),
            _ => Refused(e.to_string(), Failure::Transient),
        };
        let mut chained = Vec::with_capacity(sources.len());
        for path in sources {
            match store::chain_for(&self.db, &job.name, &c.computer, &path, &c.repository).await.map_err(db_err)? {
                Chain::Ours(name) => chained.push(Source { path, name }),
                Chain::OtherJob(other) => {
                    return Err(permanent(format!(
                        "job {other} already backs up {path} of computer {} into repository {}: two jobs on one \
                         source in one repository would prune each other's restore points; remove the source \
                         from one job or give it another repository",
                        c.computer, c.repository
                    )))
                }
            }
        }
        let env = match store::secret_values(&self.db, &job.task_secrets()).await.map_err(db_err)? {
            Ok(values) => values.into_iter().map(|(name, v)| (crate::model::secret_variable(&name), v)).collect(),
            Err(missing) => {
                return Err(permanent(format!(
                    "job {} uses secret {missing}, which is not set (bulwark secret set)",
                    job.name
                )))
            }
        };
        let mut spec = TaskSpec {
            sources: chained,
            env,
            exclude: job.exclude.clone(),
            block_size: job
                .block_size
                .as_deref()
                .and_then(|b| b.parse::<bulwark_repo::BlockSize>().ok())
                .map_or(0, |b| b.bytes()),
            filters: true,
            pre_command: job.pre_command.clone().unwrap_or_default(),
            post_command: job.post_command.clone().unwrap_or_default(),
            apps: job.apps.clone(),
            apps_ignore_failures: job.app_policy.as_deref() == Some("ignore"),
            pre_freeze: job.pre_freeze_script.clone().unwrap_or_default(),
            post_thaw: job.post_thaw_script.clone().unwrap_or_default(),
            freeze_limit_s: job.freeze_limit_s.unwrap_or(0),
            lvm_snapshot_size: job.lvm_snapshot_size.clone().unwrap_or_default(),
            script_timeout_s: job.script_timeout_s.unwrap_or(0),
            streams: job.streams,
            ..Default::default()
        };
        spec.set_kind(job.mode.task_kind().into());
        spec.set_compression(job.compression.unwrap_or_default().into());
        spec.set_snapshot(job.snapshot.unwrap_or_default().into());
        spec.set_cbt(job.cbt.unwrap_or_default().into());
        let req = TaskRequest {
            task_id: c.id.clone(),
            agent,
            transport,
            repository: access.path.clone(),
            password,
            throttle: Throttle { bytes_per_s: job.throttle_mbps.unwrap_or(0) * 1_000_000, ..Default::default() },
            spec,
        };
        let id = c.id.clone();
        Ok(self
            .manager
            .run_task(req, |p| {
                self.progress.lock().expect("lock").insert(id.clone(), *p);
            })
            .await)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::job_scheduler::tests::manager;

    /// Many tasks on few slots, through the config database: at every instant no repository
    /// runs more than its maximum and no computer two tasks; each round grants in the order
    /// promised — no task left waiting could have run (its computer was free and its repository
    /// had room), and none granted overtook a waiting task of its repository that comes first
    /// (higher priority, or the same and queued earlier) whose computer was free; and every
    /// task runs in the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_scheduler_under_contention() {
        let dir = tempfile::tempdir().unwrap();
        let core = manager(dir.path()).await;
        let limits = HashMap::from([("r1".to_string(), 2i64), ("r2".to_string(), 1i64)]);
        for (name, max) in &limits {
            let input = serde_json::json!({"name": name, "transport": "t", "path": "/x", "max_tasks": max});
            store::insert_repository(&core.db, &serde_json::from_value(input).unwrap(), None).await.unwrap();
        }
        // (repository, priority, seq) of every task.
        let mut tasks: HashMap<String, (String, i64, i64)> = HashMap::new();
        for i in 0..60i64 {
            let (repo, prio) = (if i % 4 == 0 { "r2" } else { "r1" }, if i % 5 == 0 { 5 } else { 0 });
            let session = format!("s{i}");
            store::insert_session(&core.db, &session, &format!("j{i}"), SessionKind::Backup).await.unwrap();
            let id = core.queue_task(&session, &format!("c{}", i % 7), repo, prio, 1, None, None).await.unwrap();
            tasks.insert(id, (repo.to_string(), prio, i));
        }
        let computer_of = |id: &str| id.split('-').nth(1).unwrap().to_string();
        let mut ran: HashSet<String> = HashSet::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..1000 {
            let before: HashSet<String> =
                store::running_tasks(&core.db, None).await.unwrap().into_iter().map(|t| t.id).collect();
            let granted = core.grant().await;
            let running = store::running_tasks(&core.db, None).await.unwrap();
            let mut per_repo: HashMap<String, i64> = HashMap::new();
            let mut busy = HashSet::new();
            for t in &running {
                *per_repo.entry(t.repository.clone()).or_default() += 1;
                assert!(busy.insert(t.computer.clone()), "round {round}: computer {} runs two tasks", t.computer);
            }
            for (repo, max) in &limits {
                assert!(per_repo.get(repo).copied().unwrap_or(0) <= *max, "round {round}: {repo} over its maximum");
            }
            let busy_before: HashSet<String> = before.iter().map(|id| computer_of(id)).collect();
            let waiting: Vec<&String> = tasks.keys().filter(|id| !ran.contains(*id) && !granted.contains(id)).collect();
            for w in &waiting {
                let (repo, prio, seq) = &tasks[*w];
                let full = per_repo.get(repo).copied().unwrap_or(0) >= limits[repo];
                assert!(full || busy.contains(&computer_of(w)), "round {round}: {w} could have run");
                for g in &granted {
                    let (grepo, gprio, gseq) = &tasks[g];
                    let first = (prio, std::cmp::Reverse(seq)) > (gprio, std::cmp::Reverse(gseq));
                    let free = !busy_before.contains(&computer_of(w))
                        && !granted.iter().any(|o| computer_of(o) == computer_of(w));
                    assert!(
                        !(grepo == repo && first && free),
                        "round {round}: {g} was granted before {w}, which comes first and could run"
                    );
                }
            }
            ran.extend(granted.iter().cloned());
            if running.is_empty() {
                break;
            }
            // Some running tasks end.
            for t in &running {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(3) {
                    let end = TaskEnd {
                        status: TaskStatus::Success,
                        error: None,
                        failure: None,
                        log: serde_json::Value::Null,
                        sent_bytes: 0,
                    };
                    store::end_task(&core.db, &t.id, &end).await.unwrap();
                }
            }
        }
        assert_eq!(ran.len(), 60, "every task ran (no starvation)");
    }
}
