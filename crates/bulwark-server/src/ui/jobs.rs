//! Jobs: the list, the wizard, start, stop and delete.

use super::*;

pub(super) fn schedule_text(s: &crate::schedule::Schedule) -> String {
    use crate::schedule::Schedule;
    match s {
        Schedule::Daily { at, weekdays } if weekdays.is_empty() => format!("daily at {at}"),
        Schedule::Daily { at, weekdays } => format!("{} at {at}", weekdays.join(", ")),
        Schedule::Monthly { day, at } => format!("monthly on day {day} at {at}"),
        Schedule::Periodic { every_minutes } => format!("every {every_minutes} min"),
        Schedule::After { job } => format!("after {job}"),
    }
}

pub(super) async fn jobs(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    let Json(jobs) = api::list_jobs(v.caller.clone(), State(s)).await?;
    let admin = v.is_admin();
    Ok(ok(layout(
        "Jobs",
        Some(&v),
        html! {
            @if admin { p { a role="button" href="/ui/jobs/new" { "New job" } } }
            @if jobs.is_empty() { p { "No job yet." } }
            table {
                thead { tr { th { "Name" } th { "Computers" } th { "Repository" } th { "Schedule" } th { "Last result" } th { "Next run" } @if admin { th { "" } } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { (j.job.name) }
                            td { (j.job.computers.iter().chain(&j.job.groups).cloned().collect::<Vec<_>>().join(", ")) }
                            td { (j.job.repository) }
                            td { @if let Some(sch) = &j.job.schedule { (schedule_text(sch)) } @else { "manual" } }
                            td {
                                @if let Some(l) = &j.last_session {
                                    a href={ "/ui/sessions/" (l.id) } { (status_badge(l.status.as_str())) } " " (when(&l.started))
                                } @else { "never run" }
                            }
                            td { @if let Some(n) = &j.next_run { (when(n)) } @else { "—" } }
                            @if admin {
                                td {
                                    @let running = j.last_session.as_ref().is_some_and(|l| l.status == SessionStatus::Running);
                                    @let (verb, label) = if running { ("stop", "Stop") } else { ("start", "Start") };
                                    form.inline method="post" action={ "/ui/jobs/" (j.job.name) "/" (verb) } {
                                        input type="hidden" name="csrf" value=(v.csrf());
                                        button type="submit" name="job" value=(j.job.name) { (label) }
                                    }
                                    " "
                                    a.secondary href={ "/ui/jobs/" (j.job.name) "/delete" } { "Delete…" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )))
}

impl FormPairs {
    /// The job the answers describe, as the API takes it (its checks then apply); a number that
    /// is not one is refused here.
    fn job(&self) -> Result<crate::model::Job, String> {
        use serde_json::{json, Map, Value};
        let mut j = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                j.insert(k.into(), v);
            }
        };
        put("name", json!(self.get("name").unwrap_or_default()));
        put("mode", json!(self.get("mode")));
        put("computers", json!(self.all("computer")));
        put("groups", json!(self.all("group")));
        put("repository", json!(self.get("repository").unwrap_or_default()));
        put("sources", json!(self.lines("sources")));
        put("exclude", json!(self.lines("exclude")));
        put("snapshot", json!(self.get("snapshot")));
        put("compression", json!(self.get("compression")));
        let schedule = match self.get("schedule") {
            Some("daily") => {
                json!({"kind": "daily", "at": self.get("at").unwrap_or_default(), "weekdays": self.all("weekday")})
            }
            Some("periodic") => {
                json!({"kind": "periodic", "every_minutes": self.number("every_minutes", "every")?.unwrap_or(0)})
            }
            _ => Value::Null,
        };
        put("schedule", schedule);
        if let (Some(start), Some(end)) = (self.get("window_start"), self.get("window_end")) {
            put("window", json!({"start": start, "end": end}));
        }
        put("retention", json!({"keep_last": self.number("keep_last", "keep last")?}));
        put("throttle_mbps", json!(self.number("throttle_mbps", "throttle")?));
        put("pre_command", json!(self.get("pre_command")));
        put("post_command", json!(self.get("post_command")));
        serde_json::from_value(Value::Object(j)).map_err(|e| format!("the job is not valid: {e}"))
    }
}

/// Which part of the wizard an error is about, by the words the API uses.
pub(super) fn error_part(e: &str) -> &'static str {
    let e = e.to_lowercase();
    let parts: [(&str, &[&str]); 7] = [
        ("name", &["job name", "name \""]),
        ("computers", &["computer", "group"]),
        ("sources", &["source", "mode", "exclude"]),
        ("repository", &["repository"]),
        ("schedule", &["schedule", "daily", "periodic", "every", "window", "weekday", "time"]),
        ("retention", &["keep", "retention"]),
        ("processing", &["snapshot", "compression", "throttle", "command"]),
    ];
    parts.iter().find(|(_, words)| words.iter().any(|w| e.contains(w))).map_or("top", |(p, _)| p)
}

pub(super) async fn job_wizard(v: &Viewer, s: &S, f: &FormPairs, error: Option<&str>) -> Result<Markup, Page> {
    let Json(computers) = api::list_computers(v.caller.clone(), State(s.clone())).await?;
    let Json(groups) = api::list_groups(v.caller.clone(), State(s.clone())).await?;
    let Json(repos) = api::list_repositories(v.caller.clone(), State(s.clone())).await?;
    let part = error.map(error_part);
    let says = |p: &str| -> Markup {
        html! { @if let (Some(e), true) = (error, part == Some(p)) { p.error role="alert" { (e) } } }
    };
    let value = |k: &str| f.get(k).unwrap_or_default().to_string();
    let mode = f.get("mode").unwrap_or("volumes");
    let schedule = f.get("schedule").unwrap_or("manual");
    let snapshot = f.get("snapshot").unwrap_or("auto");
    let compression = f.get("compression").unwrap_or("optimal");
    Ok(layout(
        "New job",
        Some(v),
        html! {
            form method="post" action="/ui/jobs/new" {
                input type="hidden" name="csrf" value=(v.csrf());
                (says("top"))
                fieldset {
                    legend { strong { "1. Name" } }
                    (says("name"))
                    input name="name" required placeholder="nightly" value=(value("name"));
                }
                fieldset {
                    legend { strong { "2. Computers and protection groups" } }
                    (says("computers"))
                    @for c in &computers {
                        label { input type="checkbox" name="computer" value=(c.name) checked[f.checked("computer", &c.name)]; " " (c.name) }
                    }
                    @for g in &groups {
                        label { input type="checkbox" name="group" value=(g.name) checked[f.checked("group", &g.name)]; " group " (g.name) }
                    }
                    @if computers.is_empty() && groups.is_empty() { p { "No computer has joined yet." } }
                }
                fieldset {
                    legend { strong { "3. What to back up" } }
                    (says("sources"))
                    @for (m, label) in [("computer", "The entire computer (every whole disk)"), ("volumes", "Volumes: block devices or disk images"), ("files", "Files: directories")] {
                        label { input type="radio" name="mode" value=(m) checked[mode == m]; " " (label) }
                    }
                    label { "Sources, one per line" textarea name="sources" rows="3" placeholder="/dev/vdb" { (value("sources")) } }
                    label { "Exclusions (files), one per line" textarea name="exclude" rows="2" placeholder="*.tmp" { (value("exclude")) } }
                }
                fieldset {
                    legend { strong { "4. Repository" } }
                    (says("repository"))
                    select name="repository" required {
                        @for r in &repos { option value=(r.name) selected[f.get("repository") == Some(r.name.as_str())] { (r.name) " (" (r.transport) ")" } }
                    }
                }
                fieldset {
                    legend { strong { "5. Schedule and window" } }
                    (says("schedule"))
                    @for (k, label) in [("manual", "Manual (started by hand or after another job)"), ("daily", "Daily"), ("periodic", "Every few minutes")] {
                        label { input type="radio" name="schedule" value=(k) checked[schedule == k]; " " (label) }
                    }
                    div.grid {
                        label { "Daily at" input name="at" placeholder="22:00" value=(value("at")); }
                        label { "Every (minutes)" input name="every_minutes" inputmode="numeric" value=(value("every_minutes")); }
                    }
                    p { "On: " @for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
                        label.inline { input type="checkbox" name="weekday" value=(d) checked[f.checked("weekday", d)]; " " (d) " " }
                    } }
                    div.grid {
                        label { "Window from" input name="window_start" placeholder="21:00" value=(value("window_start")); }
                        label { "to" input name="window_end" placeholder="06:00" value=(value("window_end")); }
                    }
                }
                fieldset {
                    legend { strong { "6. Retention" } }
                    (says("retention"))
                    label { "Restore points to keep" input name="keep_last" inputmode="numeric" placeholder="14" value=(value("keep_last")); }
                }
                fieldset {
                    legend { strong { "7. Processing" } }
                    (says("processing"))
                    div.grid {
                        label { "Snapshot" select name="snapshot" {
                            @for m in ["auto", "reflink", "btrfs", "lvm", "none"] { option value=(m) selected[snapshot == m] { (m) } }
                        } }
                        label { "Compression" select name="compression" {
                            @for c in ["none", "dedupe-friendly", "optimal", "high", "extreme"] { option value=(c) selected[compression == c] { (c) } }
                        } }
                        label { "Throttle (MB/s per task)" input name="throttle_mbps" inputmode="numeric" value=(value("throttle_mbps")); }
                    }
                    label { "Pre-job command" input name="pre_command" value=(value("pre_command")); }
                    label { "Post-job command" input name="post_command" value=(value("post_command")); }
                }
                button type="submit" { "Create the job" }
            }
        },
    ))
}

pub(super) async fn new_job_page(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    v.caller.admin()?;
    Ok(ok(job_wizard(&v, &s, &FormPairs(Vec::new()), None).await?))
}

pub(super) async fn new_job(
    v: Viewer,
    State(s): State<S>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = FormPairs(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let refused = |e: ApiError| -> Result<(StatusCode, String), Page> {
        if refuses_input(&e) {
            Ok((e.0, e.1))
        } else {
            Err(e.into())
        }
    };
    let outcome = match f.job() {
        Ok(job) => match api::create_job(v.caller.clone(), State(s.clone()), api::Input(job)).await {
            Ok(_) => return Ok(Redirect::to("/ui/jobs").into_response()),
            Err(e) => refused(e)?,
        },
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    Ok(Page(outcome.0, job_wizard(&v, &s, &f, Some(&outcome.1)).await?).into_response())
}

pub(super) async fn start_job(
    v: Viewer,
    s: State<S>,
    name: Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(started) = api::start_job(v.caller, s, name).await?;
    Ok(to_session(started))
}

pub(super) async fn stop_job(
    v: Viewer,
    s: State<S>,
    name: Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(stopped) = api::stop_job(v.caller, s, name).await?;
    Ok(to_session(stopped))
}

/// Deleting a job asks first, saying what stays (its points).
pub(super) async fn delete_job_page(v: Viewer, State(s): State<S>, Path(name): Path<String>) -> Result<Page, Page> {
    v.caller.admin()?;
    let Json(job) = api::show_job(v.caller.clone(), State(s), Path(name.clone())).await?;
    Ok(ok(layout(
        "Delete a job",
        Some(&v),
        html! {
            article {
                p { "Delete job " strong { (job.job.name) } "? It will not run again. Its restore points stay, and retention no longer removes them." }
                form method="post" action={ "/ui/jobs/" (job.job.name) "/delete" } {
                    input type="hidden" name="csrf" value=(v.csrf());
                    button.contrast type="submit" { "Delete " (job.job.name) }
                    " " a href="/ui/jobs" { "Keep it" }
                }
            }
        },
    )))
}

pub(super) async fn delete_job(
    v: Viewer,
    s: State<S>,
    name: Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(_deleted) = api::delete_job(v.caller, s, name).await?;
    Ok(Redirect::to("/ui/jobs").into_response())
}

/// After starting or stopping a job: its session's page, or the jobs if there is none.
pub(super) fn to_session(session: Option<SessionRow>) -> Response {
    match session {
        Some(session) => Redirect::to(&format!("/ui/sessions/{}", session.id)).into_response(),
        None => Redirect::to("/ui/jobs").into_response(),
    }
}
