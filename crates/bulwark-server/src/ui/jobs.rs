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
                            td {
                                @if let Some(sch) = &j.job.schedule { (schedule_text(sch)) } @else { "manual" }
                                @if !j.enabled { " " mark.status.disabled { "disabled" } }
                            }
                            td {
                                @if let Some(l) = &j.last_session {
                                    a href={ "/ui/sessions/" (l.id) } { (status_badge(l.status.as_str())) } " " (when(&l.started))
                                } @else { "never run" }
                            }
                            td { @if let Some(n) = &j.next_run { (when(n)) } @else { "—" } }
                            @if admin {
                                td.actions {
                                    @let last = j.last_session.as_ref().map(|l| l.status);
                                    @let running = last == Some(SessionStatus::Running);
                                    @let button = |verb: &str, label: &str| html! {
                                        form.inline method="post" action={ "/ui/jobs/" (j.job.name) "/" (verb) } {
                                            input type="hidden" name="csrf" value=(v.csrf());
                                            button type="submit" { (label) }
                                        }
                                        " "
                                    };
                                    @if running { (button("stop", "Stop")) }
                                    @else if j.enabled {
                                        (button("start", "Start"))
                                        @if last == Some(SessionStatus::Failed) { (button("retry", "Retry")) }
                                    }
                                    @if j.enabled { (button("disable", "Disable")) } @else { (button("enable", "Enable")) }
                                    a href={ "/ui/jobs/" (j.job.name) "/edit" } { "Edit" }
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

/// The wizard's keys: what it sets of a job. Editing keeps every other setting as it was.
const WIZARD_KEYS: [&str; 23] = [
    "mode",
    "computers",
    "groups",
    "repository",
    "sources",
    "exclude",
    "block_size",
    "compression",
    "snapshot",
    "cbt",
    "schedule",
    "window",
    "retention",
    "retries",
    "throttle_mbps",
    "pre_command",
    "post_command",
    "apps",
    "app_policy",
    "pre_freeze_script",
    "post_thaw_script",
    "lvm_snapshot_size",
    "name",
];

impl FormPairs {
    /// The job the answers describe, as the API takes it (its checks then apply): over `base`
    /// when editing, whose settings the wizard does not show stay. A number that is not one is
    /// refused here.
    fn job(&self, base: Option<&crate::model::Job>) -> Result<crate::model::Job, String> {
        use serde_json::{json, Map, Value};
        let mut j = match base.map(serde_json::to_value) {
            Some(Ok(Value::Object(m))) => m,
            _ => Map::new(),
        };
        for k in WIZARD_KEYS {
            j.remove(k);
        }
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                j.insert(k.into(), v);
            }
        };
        match base {
            Some(b) => put("name", json!(b.name)),
            None => put("name", json!(self.get("name").unwrap_or_default())),
        }
        put("mode", json!(self.get("mode")));
        put("computers", json!(self.all("computer")));
        put("groups", json!(self.all("group")));
        put("repository", json!(self.get("repository").unwrap_or_default()));
        put("sources", json!(self.lines("sources")));
        put("exclude", json!(self.lines("exclude")));
        for k in ["block_size", "snapshot", "compression", "cbt", "app_policy"] {
            put(k, json!(self.get(k)));
        }
        let schedule = self.schedule("schedule")?;
        put("schedule", schedule);
        if let (Some(start), Some(end)) = (self.get("window_start"), self.get("window_end")) {
            put("window", json!({"start": start, "end": end}));
        }
        let mut retention = Map::new();
        for (k, what) in [
            ("keep_last", "keep last"),
            ("keep_daily", "keep daily"),
            ("keep_weekly", "keep weekly"),
            ("keep_monthly", "keep monthly"),
        ] {
            if let Some(n) = self.number(k, what)? {
                retention.insert(k.into(), json!(n));
            }
        }
        put("retention", Value::Object(retention));
        let (tries, delay) = (self.number("tries", "tries")?, self.number("delay_minutes", "retry delay")?);
        if tries.is_some() || delay.is_some() {
            let d = crate::model::Retries::default();
            put(
                "retries",
                json!({"tries": tries.unwrap_or(d.tries.into()), "delay_minutes": delay.unwrap_or(d.delay_minutes.into())}),
            );
        }
        put("throttle_mbps", json!(self.number("throttle_mbps", "throttle")?));
        for k in ["pre_command", "post_command", "pre_freeze_script", "post_thaw_script", "lvm_snapshot_size"] {
            put(k, json!(self.get(k)));
        }
        put("apps", json!(self.lines("apps")));
        serde_json::from_value(Value::Object(j)).map_err(|e| format!("the job is not valid: {e}"))
    }

    /// A job's settings as the wizard's answers, to edit it.
    fn of_job(job: &crate::model::Job) -> FormPairs {
        use serde_json::Value;
        let v = serde_json::to_value(job).unwrap_or_default();
        let mut p: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, x: &Value| match x {
            Value::String(s) => p.push((k.into(), s.clone())),
            Value::Number(n) => p.push((k.into(), n.to_string())),
            _ => {}
        };
        for k in [
            "mode",
            "repository",
            "block_size",
            "snapshot",
            "compression",
            "cbt",
            "app_policy",
            "throttle_mbps",
            "pre_command",
            "post_command",
            "pre_freeze_script",
            "post_thaw_script",
            "lvm_snapshot_size",
        ] {
            add(k, &v[k]);
        }
        let each = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        for (key, form) in [("computers", "computer"), ("groups", "group")] {
            for x in &each(key) {
                add(form, x);
            }
        }
        for k in ["sources", "exclude", "apps"] {
            let lines: Vec<String> = each(k).iter().filter_map(|x| x.as_str().map(String::from)).collect();
            add(k, &Value::String(lines.join("\n")));
        }
        add("window_start", &v["window"]["start"]);
        add("window_end", &v["window"]["end"]);
        for k in ["keep_last", "keep_daily", "keep_weekly", "keep_monthly"] {
            add(k, &v["retention"][k]);
        }
        add("tries", &v["retries"]["tries"]);
        add("delay_minutes", &v["retries"]["delay_minutes"]);
        p.extend(FormPairs::of_schedule("schedule", "manual", job.schedule.as_ref()));
        FormPairs(p)
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
        (
            "schedule",
            &["schedule", "daily", "periodic", "monthly", "every", "window", "weekday", "time", "day", "after"],
        ),
        ("retention", &["keep", "retention", "tries", "retr", "delay"]),
        (
            "processing",
            &[
                "snapshot",
                "compression",
                "throttle",
                "command",
                "block",
                "cbt",
                "tracking",
                "app",
                "freeze",
                "thaw",
                "script",
            ],
        ),
    ];
    parts.iter().find(|(_, words)| words.iter().any(|w| e.contains(w))).map_or("top", |(p, _)| p)
}

/// What the wizard makes: a new job, or changes to the one named.
pub(super) enum Wizard<'a> {
    New,
    Edit(&'a crate::model::Job),
}

pub(super) async fn job_wizard(
    v: &Viewer,
    s: &S,
    for_: Wizard<'_>,
    f: &FormPairs,
    error: Option<&str>,
) -> Result<Markup, Page> {
    let Json(computers) = api::list_computers(v.caller.clone(), State(s.clone())).await?;
    let Json(groups) = api::list_groups(v.caller.clone(), State(s.clone())).await?;
    let Json(repos) = api::list_repositories(v.caller.clone(), State(s.clone())).await?;
    let Json(jobs) = api::list_jobs(v.caller.clone(), State(s.clone())).await?;
    let part = error.map(error_part);
    let says = |p: &str| -> Markup {
        html! { @if let (Some(e), true) = (error, part == Some(p)) { p.error role="alert" { (e) } } }
    };
    let value = |k: &str| f.get(k).unwrap_or_default().to_string();
    let mode = f.get("mode").unwrap_or("volumes");
    let schedule = f.get("schedule").unwrap_or("manual");
    let snapshot = f.get("snapshot").unwrap_or("auto");
    let compression = f.get("compression").unwrap_or("optimal");
    let cbt = f.get("cbt").unwrap_or("auto");
    let block_size = f.get("block_size").unwrap_or("1M");
    let app_policy = f.get("app_policy").unwrap_or("require");
    let (title, action, submit, editing) = match &for_ {
        Wizard::New => ("New job".to_string(), "/ui/jobs/new".to_string(), "Create the job", None),
        Wizard::Edit(j) => {
            (format!("Job {}", j.name), format!("/ui/jobs/{}/edit", j.name), "Save the job", Some(j.name.as_str()))
        }
    };
    Ok(layout(
        &title,
        Some(v),
        html! {
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(v.csrf());
                (says("top"))
                fieldset {
                    legend { strong { "1. Name" } }
                    (says("name"))
                    @if let Some(name) = editing {
                        input name="name" value=(name) readonly aria-describedby="name-fixed";
                        small id="name-fixed" { "A job's name cannot change: its restore points are found by it." }
                    } @else {
                        input name="name" required placeholder="nightly" value=(value("name"));
                    }
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
                    @for (k, label) in [("manual", "Manual (started by hand)"), ("daily", "Daily"), ("periodic", "Every few minutes"), ("monthly", "Monthly"), ("after", "After another job")] {
                        label { input type="radio" name="schedule" value=(k) checked[schedule == k]; " " (label) }
                    }
                    div.grid {
                        label { "At (daily, monthly)" input name="at" placeholder="22:00" value=(value("at")); }
                        label { "Every (minutes)" input name="every_minutes" inputmode="numeric" value=(value("every_minutes")); }
                        label { "Day of the month" input name="day" inputmode="numeric" placeholder="1" value=(value("day")); }
                    }
                    p { "On: " @for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
                        label.inline { input type="checkbox" name="weekday" value=(d) checked[f.checked("weekday", d)]; " " (d) " " }
                    } }
                    label { "After the job" select name="after_job" {
                        option value="" { "—" }
                        @for j in jobs.iter().filter(|j| Some(j.job.name.as_str()) != editing) {
                            option value=(j.job.name) selected[f.get("after_job") == Some(j.job.name.as_str())] { (j.job.name) }
                        }
                    } }
                    div.grid {
                        label { "Window from" input name="window_start" placeholder="21:00" value=(value("window_start")); }
                        label { "to" input name="window_end" placeholder="06:00" value=(value("window_end")); }
                    }
                }
                fieldset {
                    legend { strong { "6. Retention and retries" } }
                    (says("retention"))
                    div.grid {
                        label { "Restore points to keep" input name="keep_last" inputmode="numeric" placeholder="14" value=(value("keep_last")); }
                        label { "Daily" input name="keep_daily" inputmode="numeric" value=(value("keep_daily")); }
                        label { "Weekly" input name="keep_weekly" inputmode="numeric" value=(value("keep_weekly")); }
                        label { "Monthly" input name="keep_monthly" inputmode="numeric" value=(value("keep_monthly")); }
                    }
                    div.grid {
                        label { "Tries per computer" input name="tries" inputmode="numeric" placeholder="3" value=(value("tries")); }
                        label { "Minutes between tries" input name="delay_minutes" inputmode="numeric" placeholder="10" value=(value("delay_minutes")); }
                    }
                }
                fieldset {
                    legend { strong { "7. Processing" } }
                    (says("processing"))
                    div.grid {
                        label { "Snapshot" select name="snapshot" {
                            @for m in ["auto", "reflink", "btrfs", "lvm", "none"] { option value=(m) selected[snapshot == m] { (m) } }
                        } }
                        label { "Changed block tracking" select name="cbt" {
                            @for m in ["auto", "extents", "none"] { option value=(m) selected[cbt == m] { (m) } }
                        } }
                        label { "Block size" select name="block_size" {
                            @for b in ["256K", "512K", "1M", "4M"] { option value=(b) selected[block_size == b] { (b) } }
                        } }
                    }
                    div.grid {
                        label { "Compression" select name="compression" {
                            @for c in ["none", "dedupe-friendly", "optimal", "high", "extreme"] { option value=(c) selected[compression == c] { (c) } }
                        } }
                        label { "LVM snapshot space (classic volumes)" input name="lvm_snapshot_size" placeholder="20%" value=(value("lvm_snapshot_size")); }
                        label { "Throttle (MB/s per task)" input name="throttle_mbps" inputmode="numeric" value=(value("throttle_mbps")); }
                    }
                    label { "Pre-job command" input name="pre_command" value=(value("pre_command")); }
                    label { "Post-job command" input name="post_command" value=(value("post_command")); }
                    label { "Applications made consistent, one per line" textarea name="apps" rows="2" placeholder="postgres:host=/run/postgresql,user=postgres" { (value("apps")) } }
                    label { "If an application cannot be prepared" select name="app_policy" {
                        option value="require" selected[app_policy == "require"] { "fail the snapshot try (require)" }
                        option value="ignore" selected[app_policy == "ignore"] { "go on crash-consistent, with a warning (ignore)" }
                    } }
                    div.grid {
                        label { "Pre-freeze script" input name="pre_freeze_script" value=(value("pre_freeze_script")); }
                        label { "Post-thaw script" input name="post_thaw_script" value=(value("post_thaw_script")); }
                    }
                }
                button type="submit" { (submit) }
            }
        },
    ))
}

pub(super) async fn new_job_page(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    v.caller.admin()?;
    Ok(ok(job_wizard(&v, &s, Wizard::New, &FormPairs(Vec::new()), None).await?))
}

pub(super) async fn new_job(
    v: Viewer,
    State(s): State<S>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = FormPairs(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let outcome = match f.job(None) {
        Ok(job) => match api::create_job(v.caller.clone(), State(s.clone()), api::Input(job)).await {
            Ok(_) => return Ok(Redirect::to("/ui/jobs").into_response()),
            Err(e) => refused(e)?,
        },
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    Ok(Page(outcome.0, job_wizard(&v, &s, Wizard::New, &f, Some(&outcome.1)).await?).into_response())
}

/// The wizard again, filled with the job's settings.
pub(super) async fn edit_job_page(v: Viewer, State(s): State<S>, Path(name): Path<String>) -> Result<Page, Page> {
    v.caller.admin()?;
    let Json(job) = api::show_job(v.caller.clone(), State(s.clone()), Path(name)).await?;
    Ok(ok(job_wizard(&v, &s, Wizard::Edit(&job.job), &FormPairs::of_job(&job.job), None).await?))
}

/// Saves the job the edited wizard describes, through the API's whole replacement (settings
/// the wizard does not show are carried over from the job as it is).
pub(super) async fn edit_job(
    v: Viewer,
    State(s): State<S>,
    Path(name): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = FormPairs(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let Json(current) = api::show_job(v.caller.clone(), State(s.clone()), Path(name.clone())).await?;
    let outcome = match f.job(Some(&current.job)) {
        Ok(job) => match api::update_job(v.caller.clone(), State(s.clone()), Path(name), api::Input(job)).await {
            Ok(_) => return Ok(Redirect::to("/ui/jobs").into_response()),
            Err(e) => refused(e)?,
        },
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    Ok(Page(outcome.0, job_wizard(&v, &s, Wizard::Edit(&current.job), &f, Some(&outcome.1)).await?).into_response())
}

/// What the jobs page's buttons do, each through the API's handler of the same name.
pub(super) async fn job_action(
    v: Viewer,
    State(s): State<S>,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let (c, st, n) = (v.caller, State(s), Path(name));
    Ok(match action.as_str() {
        "start" => to_session(api::start_job(c, st, n).await?.0),
        "retry" => to_session(api::retry_job(c, st, n).await?.0),
        "stop" => to_session(api::stop_job(c, st, n).await?.0),
        "enable" => api::enable_job(c, st, n).await.map(|_| Redirect::to("/ui/jobs").into_response())?,
        "disable" => api::disable_job(c, st, n).await.map(|_| Redirect::to("/ui/jobs").into_response())?,
        _ => return Err(ApiError(StatusCode::NOT_FOUND, format!("no job action {action:?}")).into()),
    })
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
