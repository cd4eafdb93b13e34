//! The job scheduler: the clock loop that starts jobs whose schedule came due and the
//! repositories' scheduled health checks.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::backup_manager::BackupManager;
use crate::schedule::Schedule;
use crate::store;

fn parse_ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

impl BackupManager {
    /// Every `tick`, starts each job whose schedule came due since it last looked (once,
    /// however many runs a downtime missed), and each due health check.
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
                // A disabled job's runs pass unmade (the check above moves on all the same):
                // enabling it does not make them up.
                if !j.enabled {
                    continue;
                }
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
    pub(crate) async fn due_health_checks(&self, now: jiff::Timestamp) -> Vec<String> {
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
pub(crate) mod tests {
    use super::*;
    use crate::db::Db;
    use crate::task_driver::Manager;
    use bulwark_proto::pki::{Ca, Role};
    use bulwark_proto::tls::{client_config, Revocations, TlsIdentity};
    use serde_json::json;

    pub(crate) async fn manager(dir: &std::path::Path) -> Arc<BackupManager> {
        let url = format!("sqlite://{}", dir.join("config.db").display());
        let db = Db::open(&url, crate::secrets::Secrets::ephemeral()).await.unwrap();
        let ca = Ca::load_or_create(dir).unwrap();
        let id = TlsIdentity::new(&ca.issue(Role::Server, "main").unwrap()).unwrap();
        let manager = Manager::new(client_config(Some(&id), None, &Revocations::default()).unwrap());
        BackupManager::new(db, manager, Arc::new(crate::schedule::SystemClock)).await.unwrap()
    }

    /// A scheduled health check comes due once per run, once for all the runs a downtime
    /// missed, never while the repository's check is running, never without a schedule.
    #[tokio::test]
    async fn scheduled_health_checks_come_due_once() {
        let dir = tempfile::tempdir().unwrap();
        let core = manager(dir.path()).await;
        let t0 = jiff::Timestamp::now();
        for (name, schedule) in [("hourly", json!({"kind": "periodic", "every_minutes": 60})), ("never", json!(null))] {
            let input = json!({"name": name, "transport": "t", "path": "/x", "verify_schedule": schedule});
            store::insert_repository(&core.db, &serde_json::from_value(input).unwrap(), None).await.unwrap();
        }
        let at = |minutes: i64| t0 + jiff::SignedDuration::from_mins(minutes);
        assert!(core.due_health_checks(at(30)).await.is_empty());
        assert_eq!(core.due_health_checks(at(61)).await, ["hourly"]);
        assert!(core.due_health_checks(at(62)).await.is_empty(), "one check per run");
        assert_eq!(core.due_health_checks(at(600)).await, ["hourly"], "one check for the runs missed");
        let running = core.health.start("hourly", "a health check").unwrap();
        assert!(core.due_health_checks(at(700)).await.is_empty(), "a check is running");
        drop(running);
        assert!(core.due_health_checks(at(710)).await.is_empty(), "the skipped turn is not made up");
        assert_eq!(core.due_health_checks(at(721)).await, ["hourly"]);
    }
}
