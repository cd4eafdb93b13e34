//! Sessions: a job's run (one backup task per computer, retried by the job's policy) or one
//! restore. Opening one queues its tasks for the resource scheduler; it ends when its tasks
//! have, with the worst of its computers' last attempts, and then starts the jobs that follow
//! it. A backup window stops a session when it closes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::domain::{Failure, SessionKind, SessionStatus, TaskStatus};
use tracing::{info, warn};

use crate::backup_manager::{join_all, BackupManager};
use crate::schedule::Schedule;
use crate::store::{self, NewTask, TaskRow};
use crate::task_driver::RestoreOrder;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no job {0:?}")]
    NoJob(String),
    #[error("job {job} is already running (session {session})")]
    AlreadyRunning { job: String, session: String },
    #[error("job {0} is disabled: enable it to run it")]
    Disabled(String),
    /// Something the job or restore names is missing or not allowed now.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// Restores go before backups: someone is waiting for them.
const RESTORE_PRIORITY: i64 = 1000;

/// A new session's id: its start time, readable, and a random tail.
fn session_id() -> String {
    format!("{}-{}", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"), store::random_hex(3))
}

impl BackupManager {
    /// Opens a session of `job`: one waiting task per computer.
    pub async fn start_session(self: &Arc<Self>, job_name: &str) -> Result<String, StartError> {
        self.start_session_of(job_name, None).await
    }

    /// Opens a session of `job` for the computers in `only` (all of the job's when `None`;
    /// a retry names those that failed), as far as the job still names them.
    pub async fn start_session_of(
        self: &Arc<Self>,
        job_name: &str,
        only: Option<&[String]>,
    ) -> Result<String, StartError> {
        // One start at a time: the scheduler and an operator starting the same job at the same
        // moment make one session, not two (the database's unique index backs this up).
        let _one_start = self.start_lock.lock().await;
        let row = store::job(&self.db, job_name).await?.ok_or_else(|| StartError::NoJob(job_name.into()))?;
        if !row.enabled {
            return Err(StartError::Disabled(job_name.into()));
        }
        let job = row.job;
        if let Some(session) = store::running_session(&self.db, job_name).await? {
            return Err(StartError::AlreadyRunning { job: job_name.into(), session });
        }
        let mut computers: Vec<String> = job.computers.clone();
        for g in &job.groups {
            let members = store::group_members(&self.db, g)
                .await?
                .ok_or_else(|| StartError::Refused(format!("no group {g:?}")))?;
            computers.extend(members);
        }
        let mut seen = HashSet::new();
        computers.retain(|c| seen.insert(c.clone()) && only.is_none_or(|o| o.contains(c)));
        let mut usable = Vec::new();
        for c in computers {
            match store::node(&self.db, "agent", &c).await? {
                // A removed computer leaves its jobs, not stops them.
                Some(n) if n.revoked => warn!("job {job_name}: computer {c} was removed; skipped"),
                Some(_) => usable.push(c),
                None => warn!("job {job_name}: computer {c} has not joined; skipped"),
            }
        }
        if usable.is_empty() {
            return Err(StartError::Refused(format!(
                "job {job_name} has no computer to back up (none joined, or all removed)"
            )));
        }
        if store::repository(&self.db, &job.repository).await?.is_none()
            && store::scale_out(&self.db, &job.repository).await?.is_none()
        {
            return Err(StartError::Refused(format!("no repository {:?}", job.repository)));
        }
        let close = match &job.window {
            Some(w) => Some(w.closes_after(&job.time_zone(), self.clock.now()).ok_or_else(|| {
                StartError::Refused(format!("job {job_name} may run only between {} and {}", w.start, w.end))
            })?),
            None => None,
        };
        let id = session_id();
        store::insert_session(&self.db, &id, job_name, SessionKind::Backup).await.map_err(|e| match &e {
            crate::db::DbError::Query(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                StartError::AlreadyRunning { job: job_name.into(), session: "just started".into() }
            }
            _ => e.into(),
        })?;
        for c in &usable {
            self.queue_task(&id, c, &job.repository, job.priority, 1, None, None).await?;
        }
        info!("session {id} of job {job_name}: {} task(s)", usable.len());
        if let Some(close) = close {
            self.arm_window(&id, close);
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Opens a restore session: one task, which waits for a slot on the point's repository and
    /// the target computer like a backup (ahead of them). Returns the session and task ids.
    pub async fn start_restore(
        self: &Arc<Self>,
        computer: &str,
        repository: &str,
        order: RestoreOrder,
    ) -> Result<(String, String), StartError> {
        let id = session_id();
        store::insert_session(&self.db, &id, "", SessionKind::Restore).await?;
        let task = self.queue_task(&id, computer, repository, RESTORE_PRIORITY, 1, None, Some(&order)).await?;
        info!("session {id}: restore of {} to {computer}:{}", order.point, order.target);
        self.wake.notify_one();
        Ok((id, task))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn queue_task(
        &self,
        session: &str,
        computer: &str,
        repository: &str,
        priority: i64,
        attempt: i64,
        not_before: Option<String>,
        restore: Option<&RestoreOrder>,
    ) -> Result<String, crate::db::DbError> {
        let id = format!("{session}-{computer}-{attempt}");
        let task = NewTask {
            id: id.clone(),
            session,
            computer,
            repository,
            priority,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            attempt,
            not_before,
            restore,
        };
        store::insert_task(&self.db, &task).await?;
        Ok(id)
    }

    /// Stops the session at the end of its backup window.
    pub(crate) fn arm_window(self: &Arc<Self>, session: &str, close: jiff::Timestamp) {
        let (core, sid) = (self.clone(), session.to_string());
        let wait = Duration::from_secs((close.as_second() - self.clock.now().as_second()).max(0) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            core.stop_session(&sid, "stopped at the end of the backup window").await;
        });
    }

    /// Stops a session: waiting tasks are cancelled, running ones cancelled on their agents.
    pub async fn stop_session(self: &Arc<Self>, session: &str, reason: &str) {
        {
            // Under the grant lock: no task of this session is granted while it stops.
            let _no_grants = self.grant_lock.lock().await;
            if !store::end_session(&self.db, session, SessionStatus::Failed, Some(reason)).await.unwrap_or(false) {
                return;
            }
            if let Err(e) = store::cancel_waiting(&self.db, session).await {
                warn!("session {session}: cancelling its waiting tasks: {e}");
            }
        }
        warn!("session {session}: {reason}");
        let running = store::running_tasks(&self.db, Some(session)).await.unwrap_or_default();
        let cancels = running.iter().map(|t| async move {
            if let Ok(Some(n)) = store::node(&self.db, "agent", &t.computer).await {
                let _ = tokio::time::timeout(Duration::from_secs(10), self.manager.cancel(&n.address(), &t.id)).await;
            }
        });
        join_all(cancels).await;
    }

    /// Once a session's tasks have all ended: queue retries for computers whose last attempt
    /// failed in a way a retry can help (after the job's delay), or record the session's result
    /// and start the jobs that follow it.
    pub(crate) async fn settle_session(self: &Arc<Self>, session: &str) {
        // Two tasks of a session ending together settle it one after the other: the second
        // sees the first one's retries.
        let _one_settle = self.settle_lock.lock().await;
        if store::open_task_count(&self.db, session).await.map_or(true, |n| n > 0) {
            return;
        }
        let Ok(tasks) = store::tasks(&self.db, session, false).await else { return };
        let Ok(Some(s)) = store::session_with(&self.db, session, false).await else { return };
        let job = match s.kind {
            SessionKind::Backup => store::job(&self.db, &s.job).await.ok().flatten().map(|j| j.job),
            SessionKind::Restore => None,
        };
        let latest = latest_attempts(&tasks);
        if s.status == SessionStatus::Running {
            if let Some(job) = &job {
                let retry = retries(&latest, job.retries.tries);
                if !retry.is_empty() {
                    let at = self.clock.now() + jiff::SignedDuration::from_mins(job.retries.delay_minutes as i64);
                    for (c, attempt) in retry {
                        info!("session {session}: retrying {c} (attempt {attempt}) at {at}");
                        let queued = self
                            .queue_task(session, &c, &job.repository, job.priority, attempt, Some(at.to_string()), None)
                            .await;
                        if let Err(e) = queued {
                            warn!("session {session}: queueing the retry of {c}: {e}");
                        }
                    }
                    self.wake.notify_one();
                    return;
                }
            }
        }
        let status = session_status(latest.values().map(|t| t.status));
        if !store::end_session(&self.db, session, status, None).await.unwrap_or(false) {
            return;
        }
        info!(
            "session {session}{}: {status}",
            if s.job.is_empty() { String::new() } else { format!(" of job {}", s.job) }
        );
        if s.kind != SessionKind::Backup {
            return;
        }
        // Jobs scheduled to follow this one.
        if let Ok(all) = store::jobs(&self.db).await {
            for j in all {
                if j.enabled && matches!(&j.job.schedule, Some(Schedule::After { job }) if *job == s.job) {
                    if let Err(e) = self.start_session(&j.job.name).await {
                        warn!("job {} (after {}): {e}", j.job.name, s.job);
                    }
                }
            }
        }
    }
}

/// The latest attempt of each computer: it decides.
pub(crate) fn latest_attempts(tasks: &[TaskRow]) -> HashMap<String, &TaskRow> {
    let mut latest: HashMap<String, &TaskRow> = HashMap::new();
    for t in tasks {
        if latest.get(&t.computer).is_none_or(|l| l.attempt < t.attempt) {
            latest.insert(t.computer.clone(), t);
        }
    }
    latest
}

/// The computers to try again, with their next attempt's number: those whose last attempt
/// failed for a reason that may pass, while tries are left. A permanent failure is not retried.
fn retries(latest: &HashMap<String, &TaskRow>, tries: u32) -> Vec<(String, i64)> {
    let mut r: Vec<(String, i64)> = latest
        .iter()
        .filter(|(_, t)| {
            t.status == TaskStatus::Failed && t.failure != Some(Failure::Permanent) && t.attempt < i64::from(tries)
        })
        .map(|(c, t)| (c.clone(), t.attempt + 1))
        .collect();
    r.sort();
    r
}

/// A session's result from its computers' last attempts: failed if any did not succeed,
/// warning if any warned.
fn session_status(last: impl Iterator<Item = TaskStatus>) -> SessionStatus {
    let mut status = SessionStatus::Success;
    for t in last {
        match t {
            TaskStatus::Success => {}
            TaskStatus::Warning => status = SessionStatus::Warning,
            _ => return SessionStatus::Failed,
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(computer: &str, attempt: i64, status: TaskStatus, failure: Option<Failure>) -> TaskRow {
        TaskRow {
            id: format!("s-{computer}-{attempt}"),
            session: "s".into(),
            computer: computer.into(),
            repository: "r".into(),
            attempt,
            status,
            error: None,
            failure,
            queued: String::new(),
            not_before: None,
            started: None,
            ended: None,
            sent_bytes: 0,
            log: None,
            progress: None,
        }
    }

    #[test]
    fn only_failures_that_may_pass_are_retried_while_tries_are_left() {
        let tasks = [
            task("a", 1, TaskStatus::Failed, Some(Failure::Transient)),
            task("b", 1, TaskStatus::Failed, Some(Failure::Permanent)),
            task("c", 1, TaskStatus::Failed, Some(Failure::Transient)),
            task("c", 2, TaskStatus::Success, None),
            task("d", 3, TaskStatus::Failed, Some(Failure::Transient)),
            // Recorded before failures were classified: retried as before.
            task("e", 1, TaskStatus::Failed, None),
            task("f", 1, TaskStatus::Cancelled, None),
        ];
        assert_eq!(retries(&latest_attempts(&tasks), 3), [("a".to_string(), 2), ("e".to_string(), 2)]);
        assert!(retries(&latest_attempts(&tasks), 1).is_empty(), "one try: no retry");
    }

    #[test]
    fn a_session_is_as_good_as_its_worst_last_attempt() {
        use TaskStatus::*;
        assert_eq!(session_status([Success, Success].into_iter()), SessionStatus::Success);
        assert_eq!(session_status([Success, Warning].into_iter()), SessionStatus::Warning);
        assert_eq!(session_status([Warning, Failed, Success].into_iter()), SessionStatus::Failed);
        assert_eq!(session_status([Cancelled].into_iter()), SessionStatus::Failed);
    }
}
