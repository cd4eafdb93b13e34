//! What the API's listings add to the stored rows so that a reader need not ask again: a
//! session's size and what went wrong in it, a job's next run. Pure functions of the rows; the
//! handlers in `api.rs` fetch them.

use bulwark_proto::domain::TaskStatus;
use jiff::Timestamp;
use serde_json::Value;

use crate::model::Job;
use crate::store::{SessionRow, TaskRow};

/// Bytes a session's tasks sent, all attempts together.
pub fn sent_bytes(tasks: &[TaskRow]) -> u64 {
    tasks.iter().map(|t| t.sent_bytes.max(0) as u64).sum()
}

/// What a reader of a session list should know went wrong, or earned a warning: the session's
/// own reason (stopped, say), else the last attempt of each computer that did not simply succeed,
/// with its error or, for a backup that only warned, its first warning. `None` when all is well.
pub fn session_problem(session: &SessionRow, tasks: &[TaskRow]) -> Option<String> {
    if let Some(reason) = session.reason.as_deref().filter(|r| !r.is_empty()) {
        return Some(reason.to_string());
    }
    let mut latest: Vec<&TaskRow> = crate::session::latest_attempts(tasks).into_values().collect();
    latest.sort_by(|a, b| a.computer.cmp(&b.computer));
    let problems: Vec<String> = latest
        .iter()
        .filter(|t| !matches!(t.status, TaskStatus::Success | TaskStatus::Waiting | TaskStatus::Running))
        .map(|t| {
            let (computer, status) = (&t.computer, t.status);
            match t.error.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => format!("{computer}: {status}: {e}"),
                None => match t.log.as_ref().and_then(|l| first_warning(&l["reports"])) {
                    Some((n, w)) if n > 1 => format!("{computer}: {n} warnings, first: {w}"),
                    Some((_, w)) => format!("{computer}: warning: {w}"),
                    None => format!("{computer}: {status}"),
                },
            }
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// How many warnings a task's reports hold, and the first (file backups list unreadable files).
fn first_warning(reports: &Value) -> Option<(u64, String)> {
    let mut total = 0;
    let mut first = None;
    for r in reports.as_array().into_iter().flatten() {
        let s = &r["summary"];
        total += s["warnings_total"].as_u64().unwrap_or(0);
        if first.is_none() {
            first = s["warnings"].as_array().and_then(|w| w.first()).and_then(Value::as_str).map(String::from);
        }
    }
    first.map(|w| (total.max(1), w))
}

/// When a job next starts on its own (RFC 3339), as its schedule, window and time zone have it;
/// null when it runs only by hand or after another job. `created` anchors periodic schedules.
pub fn next_run(job: &Job, created: &str, now: Timestamp) -> Option<String> {
    let schedule = job.schedule.as_ref()?;
    let anchor = created.parse().unwrap_or(now);
    schedule.next_run(&job.time_zone(), anchor, now, job.window.as_ref()).map(|t| t.to_string())
}

/// The longest a scheduled run has to bring a good point before its computer counts as having
/// missed the job's recovery point objective (shorter for schedules whose runs come sooner).
const RPO_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_hours(6);

/// Until when a computer's last good point (or, without one, the job's creation) meets the
/// job's schedule: the first run after it that the window lets start, plus the time a run may
/// take (the schedule's period, at most six hours). `None` for jobs run by hand or after
/// another, which promise no recovery point.
pub fn protected_until(job: &Job, created: &str, last_good: Option<&str>, now: Timestamp) -> Option<Timestamp> {
    let schedule = job.schedule.as_ref()?;
    let (tz, window) = (job.time_zone(), job.window.as_ref());
    let anchor = created.parse().unwrap_or(now);
    let from = last_good.and_then(|t| t.parse().ok()).unwrap_or(anchor);
    let due = schedule.next_run(&tz, anchor, from, window)?;
    let period = schedule.next_run(&tz, anchor, due, window).map(|next| next.duration_since(due));
    Some(due + period.map_or(RPO_GRACE, |p| p.min(RPO_GRACE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(computer: &str, attempt: i64, status: TaskStatus, error: Option<&str>) -> TaskRow {
        serde_json::from_value(json!({"id": format!("s-{computer}-{attempt}"), "session": "s", "computer": computer,
            "repository": "r", "attempt": attempt, "status": status, "error": error, "failure": null,
            "queued": "", "not_before": null, "started": null, "ended": null, "sent_bytes": 10, "log": null}))
        .unwrap()
    }

    fn session(reason: Option<&str>) -> SessionRow {
        serde_json::from_value(json!({"id": "s", "job": "j", "kind": "backup", "status": "failed",
            "reason": reason, "started": "", "ended": null}))
        .unwrap()
    }

    #[test]
    fn a_warning_session_says_what_it_warned_about() {
        let mut warned = task("pc-1", 1, TaskStatus::Warning, None);
        warned.log = Some(json!({"reports": [{"summary": {"status": "warning", "warnings_total": 3,
            "warnings": ["/etc/shadow: Permission denied"]}}]}));
        let s = session(None);
        let p = session_problem(&s, &[warned, task("pc-2", 1, TaskStatus::Success, None)]).unwrap();
        assert_eq!(p, "pc-1: 3 warnings, first: /etc/shadow: Permission denied");
        let post = task("pc-1", 1, TaskStatus::Warning, Some("post-job script failed (exit status: 1)"));
        assert_eq!(session_problem(&s, &[post]).unwrap(), "pc-1: warning: post-job script failed (exit status: 1)");
    }

    #[test]
    fn only_the_last_attempt_of_each_computer_counts() {
        let s = session(None);
        let tasks =
            [task("pc-1", 1, TaskStatus::Failed, Some("no route to host")), task("pc-1", 2, TaskStatus::Success, None)];
        assert_eq!(session_problem(&s, &tasks), None);
        assert_eq!(sent_bytes(&tasks), 20);
        let failed =
            [task("pc-1", 1, TaskStatus::Success, None), task("pc-2", 2, TaskStatus::Failed, Some("disk full"))];
        assert_eq!(session_problem(&s, &failed).unwrap(), "pc-2: failed: disk full");
        assert_eq!(session_problem(&session(Some("stopped by admin")), &failed).unwrap(), "stopped by admin");
    }

    #[test]
    fn next_run_follows_the_schedule_window_and_zone() {
        let job: Job = serde_json::from_value(json!({"name": "j", "computers": ["pc"], "repository": "r",
            "sources": ["/dev/vdb"], "schedule": {"kind": "periodic", "every_minutes": 60},
            "window": {"start": "22:00", "end": "06:00"}, "timezone": "UTC"}))
        .unwrap();
        let now: Timestamp = "2026-06-01T12:10:00Z".parse().unwrap();
        assert_eq!(next_run(&job, "2026-06-01T00:00:00Z", now).as_deref(), Some("2026-06-01T22:00:00Z"));
        let by_hand = Job { schedule: None, ..job.clone() };
        assert_eq!(next_run(&by_hand, "2026-06-01T00:00:00Z", now), None);
    }

    #[test]
    fn a_computer_misses_its_recovery_point_when_a_run_and_its_grace_pass_without_a_good_point() {
        let daily: Job = serde_json::from_value(json!({"name": "j", "computers": ["pc"], "repository": "r",
            "sources": ["/dev/vdb"], "schedule": {"kind": "daily", "at": "22:00"}, "timezone": "UTC"}))
        .unwrap();
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let created = "2026-06-01T08:00:00Z";
        // Good at 22:40 on the 1st: the next run is the 2nd at 22:00, and a daily run has 6 hours.
        let until = protected_until(&daily, created, Some("2026-06-01T22:40:00Z"), t("2026-06-02T12:00:00Z"));
        assert_eq!(until, Some(t("2026-06-03T04:00:00Z")));
        // Never backed up: counted from the job's creation.
        assert_eq!(protected_until(&daily, created, None, t(created)), Some(t("2026-06-02T04:00:00Z")));
        // Every 30 minutes: a run has 30 minutes, not 6 hours.
        let often = Job {
            schedule: serde_json::from_value(json!({"kind": "periodic", "every_minutes": 30})).unwrap(),
            ..daily.clone()
        };
        assert_eq!(
            protected_until(&often, created, Some("2026-06-01T09:05:00Z"), t(created)),
            Some(t("2026-06-01T10:00:00Z"))
        );
        // By hand or after another job: no promise.
        assert_eq!(protected_until(&Job { schedule: None, ..daily.clone() }, created, None, t(created)), None);
        let after = Job { schedule: serde_json::from_value(json!({"kind": "after", "job": "k"})).unwrap(), ..daily };
        assert_eq!(protected_until(&after, created, None, t(created)), None);
    }
}
