//! After a restart: tasks the previous server left running are cancelled on their agents and
//! marked failed (their slots free again, and a retry may follow); sessions whose tasks all
//! ended are settled; backup windows are armed again.

use std::sync::Arc;
use std::time::Duration;

use bulwark_proto::domain::{Failure, SessionKind, TaskStatus};
use serde_json::Value;
use tracing::warn;

use crate::backup_manager::{join_all, BackupManager};
use crate::store::{self, TaskEnd};

impl BackupManager {
    pub async fn reconcile(self: &Arc<Self>) {
        let running = store::running_tasks(&self.db, None).await.unwrap_or_default();
        let cancels = running.iter().map(|t| async move {
            if let Ok(Some(n)) = store::node(&self.db, "agent", &t.computer).await {
                let node = n.address();
                // Until the agent no longer knows the task (it cleans up its snapshot first), so
                // that a retry finds the computer free; an agent that does not answer has none.
                let wait = async {
                    while let Ok(Ok(true)) =
                        tokio::time::timeout(Duration::from_secs(5), self.manager.cancel(&node, &t.id)).await
                    {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(120), wait).await;
            }
            warn!("task {}: the server restarted while it ran; cancelled", t.id);
            let end = TaskEnd {
                status: TaskStatus::Failed,
                error: Some("the server restarted while the task ran".into()),
                failure: Some(Failure::Transient),
                log: Value::Null,
                sent_bytes: 0,
            };
            if let Err(e) = store::end_task(&self.db, &t.id, &end).await {
                warn!("task {}: recording its end: {e}", t.id);
            }
        });
        join_all(cancels).await;
        for s in store::running_sessions(&self.db).await.unwrap_or_default() {
            // Windows outlive a restart.
            if s.kind == SessionKind::Backup {
                if let Ok(Some(j)) = store::job(&self.db, &s.job).await {
                    if let Some(w) = &j.job.window {
                        match w.closes_after(&j.job.time_zone(), self.clock.now()) {
                            Some(close) => self.arm_window(&s.id, close),
                            None => self.stop_session(&s.id, "stopped at the end of the backup window").await,
                        }
                    }
                }
            }
            self.settle_session(&s.id).await;
        }
        self.wake.notify_one();
    }
}
