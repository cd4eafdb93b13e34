//! The dashboard: the last day's sessions, what runs now, computers, repositories.

use super::*;

pub(super) fn session_counts(sessions: &[SessionRow], since: &str) -> Vec<(SessionStatus, usize)> {
    let recent = || sessions.iter().filter(|s| s.started.as_str() >= since);
    SessionStatus::ALL.iter().map(|&st| (st, recent().filter(|s| s.status == st).count())).collect()
}

pub(super) async fn dashboard(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    let since = crate::db::stamp_in(-24 * 3600);
    let recent = api::SessionFilter { since: Some(since.clone()), ..Default::default() };
    let Json(sessions) = api::list_sessions(v.caller.clone(), State(s.clone()), Query(recent)).await?;
    let Json(repos) = api::list_repositories(v.caller.clone(), State(s.clone())).await?;
    let Json(computers) = api::computers_seen(v.caller.clone(), &s).await?;
    let Json(rpo) = api::recovery_points(v.caller.clone(), State(s.clone())).await?;
    let missed: Vec<_> = rpo.iter().filter(|r| r.missed).collect();
    let unhealthy: Vec<_> = repos.iter().filter(|r| check_failed(r.last_verify.as_ref())).collect();
    let counts = session_counts(&sessions, &since);
    let running: Vec<&SessionRow> = sessions.iter().filter(|s| s.status == SessionStatus::Running).collect();
    let mut running_tasks = Vec::new();
    for r in &running {
        running_tasks.push(super::sessions::session_detail(&v, &s, &r.id).await?);
    }
    let count = |state: Option<bool>| computers.iter().filter(|c| c.online == state).count();
    let (online, offline, unknown) = (count(Some(true)), count(Some(false)), count(None));
    Ok(ok(layout(
        "Dashboard",
        Some(&v),
        html! {
            section.grid {
                article {
                    header { "Sessions, last 24 hours" }
                    @for (st, n) in counts { p { (status_badge(st.as_str())) " " strong { (n) } } }
                }
                article {
                    header { "Computers" }
                    p { strong { (online) } " online, " strong { (offline) } " offline"
                        @if unknown > 0 { ", " strong { (unknown) } " being asked" } }
                    ul {
                        @for c in computers.iter().take(20) {
                            li { (c.name) " " (status_badge(match c.online { Some(true) => "online", Some(false) => "offline", None => "unknown" })) }
                        }
                    }
                    @if computers.len() > 20 { p { a href="/ui/computers" { "All " (computers.len()) " computers" } } }
                }
                article.rpo {
                    header { "Recovery points" }
                    @if rpo.is_empty() { p { "No scheduled job yet." } }
                    @else if missed.is_empty() { p { mark.status.success { "met" } " All " (rpo.len()) " scheduled computers are within their job's schedule." } }
                    @else {
                        p { mark.status.failed { "missed" } " " strong { (missed.len()) } " of " (rpo.len()) " missed their job's schedule:" }
                        ul {
                            @for r in missed.iter().take(20) {
                                li.missed data-computer=(r.computer) {
                                    (r.computer) " · " a href={ "/ui/sessions?job=" (r.job) } { (r.job) } " · last good point "
                                    @if let Some(t) = &r.last_good { (when(t)) } @else { "never" }
                                }
                            }
                        }
                    }
                }
                article.health {
                    header { "Health checks" }
                    @if unhealthy.is_empty() { p { mark.status.success { "sound" } " No health check failed or found damage." } }
                    @else {
                        ul { @for r in &unhealthy { li { a href="/ui/repositories" { (r.name) } ": " (verify_summary(r.last_verify.as_ref())) } } }
                    }
                }
            }
            section {
                h2 { "Running now" }
                @if running.is_empty() { p { "No session is running." } }
                @for d in &running_tasks {
                    article {
                        header { a href={ "/ui/sessions/" (d.id) } { (d.job) " · " (d.kind.as_str()) } }
                        (super::sessions::session_live_part(d))
                    }
                }
            }
            section {
                h2 { "Repositories" }
                table {
                    thead { tr { th { "Name" } th { "Transport node" } th { "Stored" } th { "Free" } th { "Reduction" } th { "Encrypted" } th { "Immutable" } th { "Last health check" } } }
                    tbody {
                        @for r in &repos {
                            tr.repository data-name=(r.name) {
                                td { (r.name) } td { (r.transport) } (usage_cells(r.usage.as_ref()))
                                td { (if r.encrypted { "yes" } else { "no" }) }
                                td { @if let Some(d) = r.immutable_days { (d) " days" } @else { "no" } }
                                td { (verify_summary(r.last_verify.as_ref())) }
                            }
                        }
                    }
                }
            }
        },
    )))
}

/// A repository's stored bytes, its storage's room (a bar of what is used), and how much its
/// points' sources shrank in it; dashes until it has been measured.
pub(super) fn usage_cells(u: Option<&crate::store::RepositoryUsage>) -> Markup {
    let Some(u) = u else {
        return html! { td.stored { "—" } td.free { "measuring…" } td.reduction { "—" } };
    };
    html! {
        td.stored { (human_bytes(u.stored_bytes)) }
        td.free {
            @if let (Some(total), Some(free)) = (u.total_bytes, u.free_bytes) {
                progress value=(total.saturating_sub(free)) max=(total.max(1)) {}
                " " (human_bytes(free)) " of " (human_bytes(total))
            } @else { "no limit reported" }
        }
        td.reduction { @if let Some(x) = u.reduction { (format!("{x:.1}×")) } @else { "—" } }
    }
}

/// Whether a repository's last health check failed to run or found damage.
fn check_failed(v: Option<&serde_json::Value>) -> bool {
    v.is_some_and(|v| v["error"].is_string() || damaged(v) > 0)
}

/// Points a health check found damaged or missing.
fn damaged(v: &serde_json::Value) -> u64 {
    v["damaged"].as_u64().unwrap_or(0) + v["missing"].as_u64().unwrap_or(0)
}

pub(super) fn verify_summary(v: Option<&serde_json::Value>) -> Markup {
    match v {
        None => html! { "never" },
        Some(v) => {
            let at = v["at"].as_str().unwrap_or("");
            if let Some(e) = v["error"].as_str() {
                return html! { (status_badge("failed")) " " (e) " " (when(at)) };
            }
            let damaged = damaged(v);
            html! {
                @if damaged > 0 { (status_badge("failed")) " " (damaged) " points damaged or missing " }
                @else { (status_badge("success")) " " (v["points"].as_u64().unwrap_or(0)) " points sound " }
                (when(at))
            }
        }
    }
}
