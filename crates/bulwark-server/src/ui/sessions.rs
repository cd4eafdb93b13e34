//! Sessions: the list, one session followed live with its tasks and logs.

use super::*;

#[derive(serde::Deserialize, Default)]
pub(super) struct SessionsQuery {
    #[serde(default)]
    job: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    page: u32,
}

pub(super) async fn sessions(v: Viewer, State(s): State<S>, Query(q): Query<SessionsQuery>) -> Result<Page, Page> {
    use super::points::PER_PAGE;
    let some = |x: &str| Some(x.to_string()).filter(|x| !x.is_empty());
    // One more than a page: whether there is a next one.
    let page = api::SessionFilter {
        job: some(&q.job),
        status: some(&q.status),
        limit: Some(PER_PAGE + 1),
        offset: q.page.saturating_mul(PER_PAGE),
        ..Default::default()
    };
    let Json(mut list) = api::list_sessions(v.caller.clone(), State(s.clone()), Query(page)).await?;
    let more = list.len() > PER_PAGE as usize;
    list.truncate(PER_PAGE as usize);
    let link = |page: u32| {
        format!("/ui/sessions?{}", url_query(&[("job", &q.job), ("status", &q.status), ("page", &page.to_string())]))
    };
    let Json(jobs) = api::list_jobs(v.caller.clone(), State(s)).await?;
    Ok(ok(layout(
        "Sessions",
        Some(&v),
        html! {
            form.filters method="get" action="/ui/sessions" {
                div.grid {
                    label { "Job" select name="job" {
                        option value="" { "every job" }
                        @for j in &jobs { option value=(j.job.name) selected[q.job == j.job.name] { (j.job.name) } }
                    } }
                    label { "Result" select name="status" {
                        option value="" { "any" }
                        @for st in SessionStatus::ALL { option value=(st.as_str()) selected[q.status == st.as_str()] { (st.as_str()) } }
                    } }
                    button type="submit" { "Show" }
                }
            }
            @if list.is_empty() { p { "No session here." } }
            table {
                thead { tr { th { "Started" } th { "Job" } th { "Kind" } th { "Result" } th { "Sent" } th { "Problem" } } }
                tbody {
                    @for x in &list {
                        tr {
                            td { a href={ "/ui/sessions/" (x.id) } { (when(&x.started)) } }
                            td { (x.job) } td { (x.kind.as_str()) } td { (status_badge(x.status.as_str())) }
                            td { (human_bytes(x.sent_bytes.unwrap_or(0))) }
                            td { @if let Some(Some(p)) = &x.problem { (p) } }
                        }
                    }
                }
            }
            p.pages {
                @if q.page > 0 { a href=(link(q.page - 1)) { "← Newer" } " " }
                @if more { a href=(link(q.page + 1)) { "Older →" } }
            }
        },
    )))
}

/// One session with its tasks' progress and logs, as the API's session answer has them (and
/// as it hides steps from viewers).
pub(super) async fn session_detail(v: &Viewer, s: &S, id: &str) -> Result<SessionRow, ApiError> {
    let view = api::SessionView { logs: true };
    let Json(d) = api::show_session(v.caller.clone(), State(s.clone()), Path(id.to_string()), Query(view)).await?;
    Ok(d)
}

pub(super) async fn session(v: Viewer, State(s): State<S>, Path(id): Path<String>) -> Result<Page, Page> {
    let d = session_detail(&v, &s, &id).await?;
    let title = if d.job.is_empty() { "Restore".to_string() } else { format!("Session of {}", d.job) };
    let stoppable = v.is_admin() && d.status == SessionStatus::Running && !d.job.is_empty();
    Ok(ok(layout(
        &title,
        Some(&v),
        html! {
            @if stoppable {
                form.inline method="post" action={ "/ui/jobs/" (d.job) "/stop" } {
                    input type="hidden" name="csrf" value=(v.csrf());
                    button.secondary type="submit" { "Stop the session" }
                }
            }
            (session_live_part(&d))
        },
    )))
}

/// What changes while a session runs, polled every second until it ends.
pub(super) async fn session_live(v: Viewer, State(s): State<S>, Path(id): Path<String>) -> Result<Page, Page> {
    Ok(ok(session_live_part(&session_detail(&v, &s, &id).await?)))
}

pub(super) fn session_live_part(d: &SessionRow) -> Markup {
    let running = d.status == SessionStatus::Running;
    let tasks: &[TaskRow] = d.tasks.as_deref().unwrap_or(&[]);
    html! {
        div.session id={ "session-" (d.id) } data-status=(d.status.as_str())
            hx-get=[running.then(|| format!("/ui/sessions/{}/live", d.id))]
            hx-trigger=[running.then_some("every 1s")] hx-swap="outerHTML" {
            p { (d.kind.as_str()) " · " (status_badge(d.status.as_str())) " · started " (when(&d.started))
                @if let Some(e) = &d.ended { " · ended " (when(e)) }
                @if let Some(r) = &d.reason { " · " (r) } }
            table {
                thead { tr { th { "Computer" } th { "Repository" } th { "State" } th { "Progress" } th { "Read" } th { "Sent" } th { "Speed" } th { "Time left" } } }
                tbody {
                    @for t in tasks {
                        @let p = t.progress.as_ref();
                        @let pct = task_percent(t);
                        tr.task data-computer=(t.computer) data-status=(t.status.as_str()) {
                            td { (t.computer) }
                            td { (t.repository) }
                            td { (status_badge(t.status.as_str())) @if let Some(e) = &t.error { " " small { (e) } } }
                            td { progress value=(pct) max="100" {} " " span.percent { (pct) "%" } }
                            td { @if let Some(p) = p { (human_bytes(p.read_bytes)) } @else { "—" } }
                            td { (human_bytes(p.map_or(t.sent_bytes.max(0) as u64, |p| p.sent_bytes))) }
                            td { @if let Some(p) = p { (human_bytes(p.rate_bytes_per_s)) "/s" } }
                            td { @if let Some(eta) = p.and_then(eta) { (eta) } }
                        }
                    }
                }
            }
            @for t in tasks { (task_log(t)) }
        }
    }
}

/// The last lines of a task's log (its own and the agent's notes), newest last.
pub(super) fn task_log(t: &TaskRow) -> Markup {
    let Some(log) = &t.log else { return html! {} };
    let mut lines: Vec<&str> = log["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
    for report in log["reports"].as_array().into_iter().flatten() {
        lines.extend(report["notes"].as_array().into_iter().flatten().filter_map(|l| l.as_str()));
    }
    let shown = &lines[lines.len().saturating_sub(50)..];
    html! {
        @if !shown.is_empty() {
            details.log open[t.status == TaskStatus::Running] {
                summary { "Log of " (t.computer) " (" (lines.len()) " lines)" }
                pre { @for l in shown { (l) "\n" } }
            }
        }
    }
}

pub(super) fn task_percent(t: &TaskRow) -> u64 {
    match t.status {
        TaskStatus::Success | TaskStatus::Warning => 100,
        _ => t.progress.as_ref().and_then(|p| (p.read_bytes * 100).checked_div(p.total_bytes)).unwrap_or(0).min(100),
    }
}

pub(super) fn eta(p: &crate::store::TaskProgress) -> Option<String> {
    let left = p.total_bytes.checked_sub(p.read_bytes)?;
    let secs = left.checked_div(p.rate_bytes_per_s)?;
    Some(if secs >= 3600 {
        format!("{} h {} min", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{secs} s")
    })
}
