//! Sessions and their tasks: the backup manager (one task per computer, run through the task
//! driver), the resource scheduler (slots on repositories), automatic retries, backup windows,
//! and the job scheduler's clock loop.
//!
//! All state lives in the config database: a task is `waiting`, `running` (it holds a slot) or
//! ended. Grants are made by one function under one lock, reading the database each time, so a
//! slot is never granted twice; at start, tasks the previous server left `running` are
//! cancelled on their agents and marked failed, so no slot leaks across a restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::pb::{Progress, Source, TaskSpec, Throttle};
use serde_json::json;
use sqlx::Row;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::db::{int, now, opt_text, text, Db};
use crate::manager::{Manager, NodeAddress, TaskRequest};
use crate::model::Job;
use crate::schedule::{Clock, Schedule};
use crate::store::{self, Chain};

/// Runs futures concurrently to their ends (a handful of node calls).
async fn futures_join_all<F: std::future::Future<Output = ()>>(fs: impl IntoIterator<Item = F>) {
    let handles: Vec<_> = fs.into_iter().collect();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
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

pub struct Core {
    pub db: Db,
    pub manager: Manager,
    pub clock: Arc<dyn Clock>,
    wake: Notify,
    grant_lock: tokio::sync::Mutex<()>,
    start_lock: tokio::sync::Mutex<()>,
    settle_lock: tokio::sync::Mutex<()>,
    seq: AtomicI64,
    /// The latest progress report of each running task.
    pub progress: Mutex<HashMap<String, Progress>>,
    /// Repositories whose health check is running.
    pub health: crate::health::Running,
}

#[derive(Debug, Clone)]
struct Grant {
    id: String,
    session: String,
    computer: String,
    repository: String,
}

fn parse_ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

impl Core {
    pub async fn new(db: Db, manager: Manager, clock: Arc<dyn Clock>) -> Result<Arc<Core>, crate::db::DbError> {
        let max = sqlx::query("SELECT MAX(seq) AS m FROM tasks").fetch_one(&db.pool).await?;
        let seq = max.try_get::<Option<i64>, _>("m").ok().flatten().unwrap_or(0);
        Ok(Arc::new(Core {
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

    /// Opens a session of `job`: one waiting task per computer. Errors are for the operator.
    pub async fn start_session(self: &Arc<Self>, job_name: &str) -> Result<String, String> {
        // One start at a time: the scheduler and an operator starting the same job at the same
        // moment make one session, not two (the database's unique index backs this up).
        let _one_start = self.start_lock.lock().await;
        let db_err = |e: crate::db::DbError| {
            warn!("{e}");
            "internal error (see the server's log)".to_string()
        };
        let row = store::job(&self.db, job_name).await.map_err(db_err)?.ok_or(format!("no job {job_name:?}"))?;
        let job = row.job;
        if let Some(id) = store::running_session(&self.db, job_name).await.map_err(db_err)? {
            return Err(format!("job {job_name} is already running (session {id})"));
        }
        let mut computers: Vec<String> = job.computers.clone();
        for g in &job.groups {
            let members = store::group_members(&self.db, g).await.map_err(db_err)?.ok_or(format!("no group {g:?}"))?;
            computers.extend(members);
        }
        let mut seen = HashSet::new();
        computers.retain(|c| seen.insert(c.clone()));
        let mut usable = Vec::new();
        for c in computers {
            match store::node(&self.db, "agent", &c).await.map_err(db_err)? {
                // A removed computer leaves its jobs, not stops them.
                Some(n) if n["revoked"] == true => warn!("job {job_name}: computer {c} was removed; skipped"),
                Some(_) => usable.push(c),
                None => warn!("job {job_name}: computer {c} has not joined; skipped"),
            }
        }
        if usable.is_empty() {
            return Err(format!("job {job_name} has no computer to back up (none joined, or all removed)"));
        }
        store::repository(&self.db, &job.repository)
            .await
            .map_err(db_err)?
            .ok_or(format!("no repository {:?}", job.repository))?;
        let tz = job.time_zone();
        let close = match &job.window {
            Some(w) => Some(
                w.closes_after(&tz, self.clock.now())
                    .ok_or(format!("job {job_name} may run only between {} and {}", w.start, w.end))?,
            ),
            None => None,
        };
        let id = format!("{}-{}", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"), store::random_hex(3));
        store::insert_session(&self.db, &id, job_name).await.map_err(|e| match &e {
            crate::db::DbError::Query(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                format!("job {job_name} is already running")
            }
            _ => db_err(e),
        })?;
        for c in &usable {
            self.queue_task(&id, c, &job, 1, None).await.map_err(db_err)?;
        }
        info!("session {id} of job {job_name}: {} task(s)", usable.len());
        if let Some(close) = close {
            self.arm_window(&id, close);
        }
        self.wake.notify_one();
        Ok(id)
    }

    async fn queue_task(
        &self,
        session: &str,
        computer: &str,
        job: &Job,
        attempt: i64,
        not_before: Option<String>,
    ) -> Result<(), crate::db::DbError> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query(
            "INSERT INTO tasks (id, session_id, computer, repository, priority, seq, attempt, status, queued, not_before)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'waiting', $8, $9)",
        )
        .bind(format!("{session}-{computer}-{attempt}"))
        .bind(session)
        .bind(computer)
        .bind(&job.repository)
        .bind(job.priority)
        .bind(seq)
        .bind(attempt)
        .bind(now())
        .bind(not_before)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    async fn cancel_waiting(&self, session: &str) {
        let _ = sqlx::query(
            "UPDATE tasks SET status = 'cancelled', ended = $1 WHERE session_id = $2 AND status = 'waiting'",
        )
        .bind(now())
        .bind(session)
        .execute(&self.db.pool)
        .await;
    }

    /// Stops a session: waiting tasks are cancelled, running ones cancelled on their agents.
    /// Stops the session at the end of its backup window.
    fn arm_window(self: &Arc<Self>, session: &str, close: jiff::Timestamp) {
        let (core, sid) = (self.clone(), session.to_string());
        let wait = Duration::from_secs((close.as_second() - self.clock.now().as_second()).max(0) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            core.stop_session(&sid, "stopped at the end of the backup window").await;
        });
    }

    pub async fn stop_session(self: &Arc<Self>, session: &str, reason: &str) {
        {
            // Under the grant lock: no task of this session is granted while it stops.
            let _no_grants = self.grant_lock.lock().await;
            if !store::end_session(&self.db, session, "failed", Some(reason)).await.unwrap_or(false) {
                return;
            }
            self.cancel_waiting(session).await;
        }
        warn!("session {session}: {reason}");
        let running = sqlx::query("SELECT id, computer FROM tasks WHERE session_id = $1 AND status = 'running'")
            .bind(session)
            .fetch_all(&self.db.pool)
            .await
            .unwrap_or_default();
        let cancels = running.iter().map(|t| async move {
            let (id, computer) = (text(t, "id"), text(t, "computer"));
            if let Ok(Some(n)) = store::node(&self.db, "agent", &computer).await {
                let node = NodeAddress { name: computer, address: n["address"].as_str().unwrap_or_default().into() };
                let _ = tokio::time::timeout(Duration::from_secs(10), self.manager.cancel(&node, &id)).await;
            }
        });
        futures_join_all(cancels).await;
    }

    /// The resource scheduler: grants waiting tasks a slot, highest priority first and first
    /// come first within a priority, never more running tasks on a repository than its
    /// maximum, never two on one computer. A task that cannot run yet does not hold back
    /// tasks behind it that can.
    async fn grant(&self) -> Vec<Grant> {
        let _one_at_a_time = self.grant_lock.lock().await;
        let mut granted = Vec::new();
        // Grants made before an error stand: they are returned and run, never left holding a
        // slot with nothing running.
        if let Err(e) = self.grant_into(&mut granted).await {
            warn!("resource scheduler: {e}");
        }
        granted
    }

    async fn grant_into(&self, granted: &mut Vec<Grant>) -> Result<(), crate::db::DbError> {
        let db = &self.db;
        let limits: HashMap<String, i64> = sqlx::query("SELECT name, max_tasks FROM repositories")
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| (text(r, "name"), int(r, "max_tasks")))
            .collect();
        let mut per_repo: HashMap<String, i64> = HashMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        for r in
            sqlx::query("SELECT computer, repository FROM tasks WHERE status = 'running'").fetch_all(&db.pool).await?
        {
            *per_repo.entry(text(&r, "repository")).or_default() += 1;
            busy.insert(text(&r, "computer"));
        }
        let now = self.clock.now();
        // Per repository with room, its waiting tasks a page at a time until it is full: the
        // cost of a grant does not grow with the queue behind the slots.
        let mut repos: Vec<(&String, &i64)> = limits.iter().collect();
        repos.sort();
        for (repository, max) in repos {
            let mut offset = 0i64;
            while per_repo.get(repository).copied().unwrap_or(0) < *max {
                let page = sqlx::query(
                    "SELECT id, session_id, computer, not_before FROM tasks WHERE status = 'waiting' AND repository = $1
                     AND session_id IN (SELECT id FROM sessions WHERE status = 'running')
                     ORDER BY priority DESC, seq ASC LIMIT 64 OFFSET $2",
                )
                .bind(repository)
                .bind(offset)
                .fetch_all(&db.pool)
                .await?;
                if page.is_empty() {
                    break;
                }
                offset += page.len() as i64;
                for r in &page {
                    let computer = text(r, "computer");
                    let later = opt_text(r, "not_before").and_then(|t| parse_ts(&t)).is_some_and(|t| t > now);
                    let running = per_repo.entry(repository.clone()).or_default();
                    if later || busy.contains(&computer) || *running >= *max {
                        continue;
                    }
                    let id = text(r, "id");
                    let done = sqlx::query(
                        "UPDATE tasks SET status = 'running', started = $1 WHERE id = $2 AND status = 'waiting'",
                    )
                    .bind(crate::db::now())
                    .bind(&id)
                    .execute(&db.pool)
                    .await?;
                    if done.rows_affected() == 1 {
                        *running += 1;
                        busy.insert(computer.clone());
                        granted.push(Grant {
                            id,
                            session: text(r, "session_id"),
                            computer,
                            repository: repository.clone(),
                        });
                        // A granted row left the waiting set: the next page starts one earlier.
                        offset -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Grants slots whenever something changes (and every second, for retry delays).
    pub async fn dispatcher(self: Arc<Self>) {
        loop {
            for g in self.grant().await {
                tokio::spawn(self.clone().run_task(g));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    async fn run_task(self: Arc<Self>, g: Grant) {
        let outcome = self.drive(&g).await;
        let (status, error, log, sent) = match outcome {
            Ok(o) => {
                for m in &o.points {
                    if let Err(e) = store::insert_point(&self.db, &g.repository, &g.id, &g.computer, m).await {
                        warn!("task {}: recording point {}: {e}", g.id, m.id);
                    }
                }
                let log = json!({"lines": o.log, "reports": o.reports});
                (o.status, o.error, log, o.received_bytes as i64)
            }
            Err(e) => ("failed".to_string(), Some(e), json!(null), 0),
        };
        info!("task {}: {status}{}", g.id, error.as_ref().map(|e| format!(": {e}")).unwrap_or_default());
        if status == "success" || status == "warning" {
            if let Err(e) = self.apply_retention(&g).await {
                warn!("task {}: retention not applied: {e}", g.id);
            }
        }
        // The task's end must reach the database, or its slot stays taken: retried until it does.
        for attempt in 0u64.. {
            let done = sqlx::query(
                "UPDATE tasks SET status = $1, error = $2, log = $3, ended = $4, sent_bytes = $5 WHERE id = $6",
            )
            .bind(&status)
            .bind(error.clone())
            .bind(log.to_string())
            .bind(now())
            .bind(sent)
            .bind(&g.id)
            .execute(&self.db.pool)
            .await;
            match done {
                Ok(_) => break,
                Err(e) => {
                    warn!("task {}: recording its end (try {}): {e}", g.id, attempt + 1);
                    tokio::time::sleep(Duration::from_secs(attempt.min(30) + 1)).await;
                }
            }
        }
        self.progress.lock().expect("lock").remove(&g.id);
        self.settle_session(&g.session).await;
        self.wake.notify_one();
    }

    /// After a successful task: the job's retention on the computer's backup names, on the
    /// repository's transport node; deleted points leave the catalog.
    async fn apply_retention(&self, g: &Grant) -> Result<(), String> {
        let db_err = |e: crate::db::DbError| e.to_string();
        let job_name = store::session_job(&self.db, &g.session).await.map_err(db_err)?.ok_or("session vanished")?;
        let Some(job) = store::job(&self.db, &job_name).await.map_err(db_err)?.map(|j| j.job) else { return Ok(()) };
        let r = &job.retention;
        if r.keep_last.is_none() && r.keep_daily.is_none() && r.keep_weekly.is_none() && r.keep_monthly.is_none() {
            return Ok(());
        }
        let (transport, path, password) =
            store::repository_access(&self.db, &g.repository).await.map_err(db_err)?.ok_or("repository vanished")?;
        let tnode =
            store::node(&self.db, "transport", &transport).await.map_err(db_err)?.ok_or("transport node vanished")?;
        let node = NodeAddress { name: transport, address: tnode["address"].as_str().unwrap_or_default().into() };
        let req = bulwark_proto::pb::RetentionRequest {
            protocol: bulwark_proto::PROTOCOL,
            path,
            password: password.unwrap_or_default(),
            // Every chain of this job on this computer: also those of sources the job no longer
            // names and the disks of an entire computer (which the job's sources do not list).
            names: store::chain_names(&self.db, &job.name, &g.computer, &g.repository).await.map_err(db_err)?,
            keep_last: r.keep_last.unwrap_or(0),
            keep_daily: r.keep_daily.unwrap_or(0),
            keep_weekly: r.keep_weekly.unwrap_or(0),
            keep_monthly: r.keep_monthly.unwrap_or(0),
        };
        let mut client = self.manager.transport(&node).await.map_err(|e| e.to_string())?;
        let deleted = client.apply_retention(req).await.map_err(|s| s.message().to_string())?.into_inner().deleted;
        for id in &deleted {
            sqlx::query("DELETE FROM points WHERE id = $1")
                .bind(id)
                .execute(&self.db.pool)
                .await
                .map_err(|e| e.to_string())?;
        }
        if !deleted.is_empty() {
            info!("task {}: retention removed {} point(s)", g.id, deleted.len());
        }
        Ok(())
    }

    /// Builds the task from the job and runs it through the task driver.
    async fn drive(&self, g: &Grant) -> Result<crate::manager::TaskOutcome, String> {
        let db_err = |e: crate::db::DbError| e.to_string();
        let job_name = store::session_job(&self.db, &g.session).await.map_err(db_err)?.ok_or("session vanished")?;
        let job =
            store::job(&self.db, &job_name).await.map_err(db_err)?.ok_or(format!("job {job_name} was deleted"))?.job;
        let agent = store::node(&self.db, "agent", &g.computer)
            .await
            .map_err(db_err)?
            .ok_or(format!("computer {} is gone", g.computer))?;
        let (transport, path, password) = store::repository_access(&self.db, &g.repository)
            .await
            .map_err(db_err)?
            .ok_or(format!("repository {} is gone", g.repository))?;
        let tnode = store::node(&self.db, "transport", &transport)
            .await
            .map_err(db_err)?
            .ok_or(format!("transport node {transport} is gone"))?;
        let addr = |n: &serde_json::Value| n["address"].as_str().unwrap_or_default().to_string();
        // An entire computer: its whole disks, as its agent reports them now.
        let sources = if job.mode == "computer" {
            let node = NodeAddress { name: g.computer.clone(), address: addr(&agent) };
            let inventory = self.manager.inventory(&node).await.map_err(|e| e.to_string())?;
            let disks = crate::model::whole_disks(&inventory);
            if disks.is_empty() {
                return Err(format!("computer {} reports no disk to back up", g.computer));
            }
            disks
        } else {
            job.sources.clone()
        };
        let mut chained = Vec::with_capacity(sources.len());
        for path in sources {
            match store::chain_for(&self.db, &job.name, &g.computer, &path, &g.repository).await.map_err(db_err)? {
                Chain::Ours(name) => chained.push(Source { path, name }),
                Chain::OtherJob(other) => {
                    return Err(format!(
                        "job {other} already backs up {path} of computer {} into repository {}: two jobs on one \
                         source in one repository would prune each other's restore points; remove the source \
                         from one job or give it another repository",
                        g.computer, g.repository
                    ))
                }
            }
        }
        let env = match store::secret_values(&self.db, &job.secrets).await.map_err(db_err)? {
            Ok(values) => values.into_iter().map(|(name, v)| (crate::model::secret_variable(&name), v)).collect(),
            Err(missing) => {
                return Err(format!("job {} uses secret {missing}, which is not set (bulwark secret set)", job.name))
            }
        };
        let spec = TaskSpec {
            kind: if job.mode == "files" { "files" } else { "volume" }.into(),
            sources: chained,
            env,
            exclude: job.exclude.clone(),
            block_size: job
                .block_size
                .as_deref()
                .and_then(|b| b.parse::<bulwark_repo::BlockSize>().ok())
                .map_or(0, |b| b.bytes()),
            compression: job.compression.clone().unwrap_or_default(),
            snapshot: job.snapshot.clone().unwrap_or_default(),
            cbt: job.cbt.clone().unwrap_or_default(),
            filters: true,
            pre_command: job.pre_command.clone().unwrap_or_default(),
            post_command: job.post_command.clone().unwrap_or_default(),
            streams: job.streams,
            ..Default::default()
        };
        let req = TaskRequest {
            task_id: g.id.clone(),
            agent: NodeAddress { name: g.computer.clone(), address: addr(&agent) },
            transport: NodeAddress { name: transport, address: addr(&tnode) },
            repository: path,
            password,
            throttle: Throttle { bytes_per_s: job.throttle_mbps.unwrap_or(0) * 1_000_000, ..Default::default() },
            spec,
        };
        let id = g.id.clone();
        Ok(self
            .manager
            .run_task(req, |p| {
                self.progress.lock().expect("lock").insert(id.clone(), *p);
            })
            .await)
    }

    /// Once a session's tasks have all ended: queue retries for failed computers (after the
    /// job's delay), or record the session's result and start the jobs that follow it.
    async fn settle_session(self: &Arc<Self>, session: &str) {
        // Two tasks of a session ending together settle it one after the other: the second
        // sees the first one's retries.
        let _one_settle = self.settle_lock.lock().await;
        let open =
            sqlx::query("SELECT COUNT(*) AS n FROM tasks WHERE session_id = $1 AND status IN ('waiting', 'running')")
                .bind(session)
                .fetch_one(&self.db.pool)
                .await;
        if open.map_or(true, |r| int(&r, "n") > 0) {
            return;
        }
        let Ok(tasks) = store::tasks(&self.db, session).await else { return };
        let Ok(Some(s)) = store::session(&self.db, session).await else { return };
        let job_name = s["job"].as_str().unwrap_or_default().to_string();
        let job = store::job(&self.db, &job_name).await.ok().flatten().map(|j| j.job);
        // The latest attempt per computer decides.
        let mut latest: HashMap<String, &serde_json::Value> = HashMap::new();
        for t in &tasks {
            let c = t["computer"].as_str().unwrap_or_default().to_string();
            if latest.get(&c).is_none_or(|l| l["attempt"].as_i64() < t["attempt"].as_i64()) {
                latest.insert(c, t);
            }
        }
        if s["status"] == "running" {
            if let Some(job) = &job {
                let retry: Vec<(String, i64)> = latest
                    .iter()
                    .filter(|(_, t)| {
                        t["status"] == "failed" && t["attempt"].as_i64().unwrap_or(1) < job.retries.tries as i64
                    })
                    .map(|(c, t)| (c.clone(), t["attempt"].as_i64().unwrap_or(1) + 1))
                    .collect();
                if !retry.is_empty() {
                    let at = self.clock.now() + jiff::SignedDuration::from_mins(job.retries.delay_minutes as i64);
                    for (c, attempt) in retry {
                        info!("session {session}: retrying {c} (attempt {attempt}) at {at}");
                        let _ = self.queue_task(session, &c, job, attempt, Some(at.to_string())).await;
                    }
                    self.wake.notify_one();
                    return;
                }
            }
        }
        let statuses: Vec<&str> = latest.values().map(|t| t["status"].as_str().unwrap_or("failed")).collect();
        let status = if statuses.iter().any(|s| *s != "success" && *s != "warning") {
            "failed"
        } else if statuses.contains(&"warning") {
            "warning"
        } else {
            "success"
        };
        if !store::end_session(&self.db, session, status, None).await.unwrap_or(false) {
            return;
        }
        info!("session {session} of job {job_name}: {status}");
        // Jobs scheduled to follow this one.
        if let Ok(all) = store::jobs(&self.db).await {
            for j in all {
                if matches!(&j.job.schedule, Some(Schedule::After { job }) if *job == job_name) {
                    if let Err(e) = self.start_session(&j.job.name).await {
                        warn!("job {} (after {job_name}): {e}", j.job.name);
                    }
                }
            }
        }
    }

    /// After a restart: tasks the previous server left running are cancelled on their agents
    /// and marked failed (their slots free again); sessions whose tasks all ended are settled.
    pub async fn reconcile(self: &Arc<Self>) {
        let rows = sqlx::query("SELECT id, computer FROM tasks WHERE status = 'running'")
            .fetch_all(&self.db.pool)
            .await
            .unwrap_or_default();
        let cancels = rows.iter().map(|r| async move {
            let (id, computer) = (text(r, "id"), text(r, "computer"));
            if let Ok(Some(n)) = store::node(&self.db, "agent", &computer).await {
                let node =
                    NodeAddress { name: computer.clone(), address: n["address"].as_str().unwrap_or_default().into() };
                // Until the agent no longer knows the task (it cleans up its snapshot first), so
                // that a retry finds the computer free; an agent that does not answer has none.
                let wait = async {
                    while let Ok(Ok(true)) =
                        tokio::time::timeout(Duration::from_secs(5), self.manager.cancel(&node, &id)).await
                    {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(120), wait).await;
            }
            warn!("task {id}: the server restarted while it ran; cancelled");
            let _ = sqlx::query("UPDATE tasks SET status = 'failed', error = $1, ended = $2 WHERE id = $3")
                .bind("the server restarted while the task ran")
                .bind(now())
                .bind(&id)
                .execute(&self.db.pool)
                .await;
        });
        futures_join_all(cancels).await;
        for (id, job) in store::running_sessions(&self.db).await.unwrap_or_default() {
            // Windows outlive a restart.
            if let Ok(Some(j)) = store::job(&self.db, &job).await {
                if let Some(w) = &j.job.window {
                    match w.closes_after(&j.job.time_zone(), self.clock.now()) {
                        Some(close) => self.arm_window(&id, close),
                        None => self.stop_session(&id, "stopped at the end of the backup window").await,
                    }
                }
            }
            self.settle_session(&id).await;
        }
        self.wake.notify_one();
    }

    /// The job scheduler: every `tick`, starts each job whose schedule came due since it last
    /// looked (once, however many runs a downtime missed).
    pub async fn scheduler(self: Arc<Self>, tick: Duration) {
        loop {
            let now = self.clock.now();
            for j in store::jobs(&self.db).await.unwrap_or_default() {
                let Some(schedule) = &j.job.schedule else { continue };
                if matches!(schedule, Schedule::After { .. }) {
                    continue;
                }
                let anchor = parse_ts(&j.created).unwrap_or(now);
                let last = j.last_check.as_deref().and_then(parse_ts).unwrap_or(anchor);
                let due = schedule.due(&j.job.time_zone(), anchor, last, now);
                let _ = store::set_last_check(&self.db, &j.job.name, &now.to_string()).await;
                if let Some(at) = due {
                    info!("job {}: scheduled run of {at} is due", j.job.name);
                    if let Err(e) = self.start_session(&j.job.name).await {
                        warn!("job {}: {e}", j.job.name);
                    }
                }
            }
            for repository in self.due_health_checks(now).await {
                let core = self.clone();
                tokio::spawn(async move {
                    // The check logs what it found and records it on the repository.
                    if let Err(e) = crate::health::check(&core, &repository).await {
                        warn!("repository {repository}: scheduled health check: {e}");
                    }
                });
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// The repositories whose scheduled health check came due since the scheduler last looked
    /// (once, however many runs a downtime missed), in the server's time zone. A repository
    /// whose check is still running skips the turn.
    async fn due_health_checks(&self, now: jiff::Timestamp) -> Vec<String> {
        let tz = jiff::tz::TimeZone::system();
        let mut due = Vec::new();
        let schedules = store::verify_schedules(&self.db).await.unwrap_or_else(|e| {
            warn!("scheduled health checks: {e}");
            Vec::new()
        });
        for v in schedules {
            let anchor = parse_ts(&v.created).unwrap_or(now);
            let last = v.last_check.as_deref().and_then(parse_ts).unwrap_or(anchor);
            let _ = store::set_verify_last_check(&self.db, &v.repository, &now.to_string()).await;
            let Some(at) = v.schedule.due(&tz, anchor, last, now) else { continue };
            if self.health.contains(&v.repository) {
                info!("repository {}: scheduled health check of {at} skipped: a check is still running", v.repository);
            } else {
                info!("repository {}: scheduled health check of {at} is due", v.repository);
                due.push(v.repository);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::pki::{Ca, Role};
    use bulwark_proto::tls::{client_config, Revocations, TlsIdentity};

    async fn core(dir: &std::path::Path) -> Arc<Core> {
        let url = format!("sqlite://{}", dir.join("config.db").display());
        let db = Db::open(&url, crate::secrets::Secrets::ephemeral()).await.unwrap();
        let ca = Ca::load_or_create(dir).unwrap();
        let id = TlsIdentity::new(&ca.issue(Role::Server, "main").unwrap()).unwrap();
        let manager = Manager::new(client_config(Some(&id), None, &Revocations::default()).unwrap());
        Core::new(db, manager, Arc::new(crate::schedule::SystemClock)).await.unwrap()
    }

    /// A scheduled health check comes due once per run, once for all the runs a downtime
    /// missed, never while the repository's check is running, never without a schedule.
    #[tokio::test]
    async fn scheduled_health_checks_come_due_once() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path()).await;
        let t0 = jiff::Timestamp::now();
        for (name, schedule) in [("hourly", json!({"kind": "periodic", "every_minutes": 60})), ("never", json!(null))] {
            let input = json!({"name": name, "transport": "t", "path": "/x", "verify_schedule": schedule});
            store::insert_repository(&core.db, &serde_json::from_value(input).unwrap()).await.unwrap();
        }
        let at = |minutes: i64| t0 + jiff::SignedDuration::from_mins(minutes);
        assert!(core.due_health_checks(at(30)).await.is_empty());
        assert_eq!(core.due_health_checks(at(61)).await, ["hourly"]);
        assert!(core.due_health_checks(at(62)).await.is_empty(), "one check per run");
        assert_eq!(core.due_health_checks(at(600)).await, ["hourly"], "one check for the runs missed");
        let running = core.health.start("hourly").unwrap();
        assert!(core.due_health_checks(at(700)).await.is_empty(), "a check is running");
        drop(running);
        assert!(core.due_health_checks(at(710)).await.is_empty(), "the skipped turn is not made up");
        assert_eq!(core.due_health_checks(at(721)).await, ["hourly"]);
    }

    fn job(repository: &str, priority: i64) -> Job {
        serde_json::from_value(json!({
            "name": "j", "computers": ["c"], "repository": repository, "sources": ["/dev/vda"], "priority": priority
        }))
        .unwrap()
    }

    /// Many tasks on few slots: at every instant no repository runs more than its maximum and
    /// no computer runs two tasks; higher priorities go first, first come first within one; and
    /// every task runs in the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_scheduler_under_contention() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path()).await;
        for (name, max) in [("r1", 2), ("r2", 1)] {
            sqlx::query("INSERT INTO repositories (name, transport, path, max_tasks, created) VALUES ($1, 't', '/x', $2, 'now')")
                .bind(name)
                .bind(max)
                .execute(&core.db.pool)
                .await
                .unwrap();
        }
        let mut order = Vec::new();
        for i in 0..60 {
            let (repo, prio) = (if i % 4 == 0 { "r2" } else { "r1" }, if i % 5 == 0 { 5 } else { 0 });
            let j = job(repo, prio);
            store::insert_session(&core.db, &format!("s{i}"), &format!("j{i}")).await.unwrap();
            core.queue_task(&format!("s{i}"), &format!("c{}", i % 7), &j, 1, None).await.unwrap();
            order.push((format!("s{i}-c{}-1", i % 7), repo, prio));
        }
        let mut ran: Vec<String> = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..1000 {
            for g in core.grant().await {
                ran.push(g.id.clone());
            }
            let running =
                sqlx::query("SELECT id, computer, repository, priority, seq FROM tasks WHERE status = 'running'")
                    .fetch_all(&core.db.pool)
                    .await
                    .unwrap();
            let mut per_repo: HashMap<String, i64> = HashMap::new();
            let mut computers = HashSet::new();
            for r in &running {
                *per_repo.entry(text(r, "repository")).or_default() += 1;
                assert!(computers.insert(text(r, "computer")), "round {round}: a computer runs two tasks");
            }
            assert!(per_repo.get("r1").copied().unwrap_or(0) <= 2 && per_repo.get("r2").copied().unwrap_or(0) <= 1);
            if running.is_empty() {
                break;
            }
            // Some running tasks end.
            for r in &running {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(3) {
                    sqlx::query("UPDATE tasks SET status = 'success' WHERE id = $1")
                        .bind(text(r, "id"))
                        .execute(&core.db.pool)
                        .await
                        .unwrap();
                }
            }
        }
        assert_eq!(ran.len(), 60, "every task ran (no starvation)");
        // Within a repository and a priority, tasks of distinct computers started in queue order
        // unless their computer was busy: check the priority rule, the one without exceptions
        // here: the first five grants of r2 (one slot) include its high-priority tasks first.
        let r2_high: Vec<&String> =
            order.iter().filter(|(_, r, p)| *r == "r2" && *p == 5).map(|(id, _, _)| id).collect();
        let r2_first: Vec<&String> =
            ran.iter().filter(|id| order.iter().any(|(o, r, _)| o == *id && *r == "r2")).take(r2_high.len()).collect();
        assert_eq!(r2_first, r2_high, "high priority first on the one-slot repository");
    }
}
