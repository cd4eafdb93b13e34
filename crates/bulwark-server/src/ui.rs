//! The web console, served by `bulwark server` beside the REST API on the same HTTPS port.
//!
//! Pages are rendered on the server (maud, which escapes everything spliced in) and updated in
//! place with htmx; both assets are vendored and embedded (`assets/vendor`). The console is a
//! client of the REST API's own handlers: every page calls the handler the API route calls,
//! with the same [`Caller`], so validation and authorization are the API's and nothing reaches
//! the config database another way.
//!
//! Sessions: logging in trades the password for the same 12-hour token `POST /login` gives
//! (with its lockouts), kept in a cookie that scripts cannot read (`HttpOnly`), that goes over
//! HTTPS only (`Secure`) and never with a request another site started (`SameSite=Strict`).
//! Every form that changes something carries a token derived from the session's (checked in
//! constant time): a forged form is refused even where a browser ignores `SameSite`. Logging
//! out revokes the token. Every page forbids inline scripts and framing (CSP).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use maud::{html, Markup, DOCTYPE};
use sha2::Digest;

use crate::api::{self, ApiError, AppState, Caller};
use crate::store::{SessionRow, TaskRow};
use bulwark_proto::domain::{SessionStatus, TaskStatus};
use bulwark_proto::human_bytes;

type S = Arc<AppState>;

const COOKIE: &str = "bulwark_session";
/// Every console response: only our own scripts, styles and forms; never in a frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(dashboard))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/new", get(new_job_page).post(new_job))
        .route("/ui/jobs/{name}/start", post(start_job))
        .route("/ui/jobs/{name}/stop", post(stop_job))
        .route("/ui/jobs/{name}/delete", get(delete_job_page).post(delete_job))
        .route("/ui/users", post(create_user))
        .route("/ui/users/{name}/delete", post(delete_user))
        .route("/ui/computers", get(computers))
        .route("/ui/repositories", get(repositories))
        .route("/ui/access", get(access).post(create_join_token))
        .route("/ui/points", get(points))
        .route("/ui/points/{id}/restore", get(restore_page).post(restore))
        .route("/ui/points/{id}/files", get(files_page).post(restore_files))
        .route("/ui/points/{id}/download", get(download))
        .route("/ui/sessions", get(sessions))
        .route("/ui/sessions/{id}", get(session))
        .route("/ui/sessions/{id}/live", get(session_live))
        .route("/ui/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(secure_headers))
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

/// The embedded assets, each with its type; cached for good (a new build renames nothing, so a
/// day, not forever).
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx.min.js" => (include_bytes!("../assets/vendor/htmx.min.js"), "text/javascript"),
        "pico.min.css" => (include_bytes!("../assets/vendor/pico.min.css"), "text/css"),
        "console.js" => (include_bytes!("../assets/console.js"), "text/javascript"),
        "console.css" => (include_bytes!("../assets/console.css"), "text/css"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=86400")], body).into_response()
}

/// The caller of a console page: the user its session cookie names, as the API sees it.
pub struct Viewer {
    caller: Caller,
    /// The session's token (what the cookie holds), for the forms' CSRF token.
    secret: String,
}

impl Viewer {
    fn csrf(&self) -> String {
        csrf_for(&self.secret)
    }

    fn is_admin(&self) -> bool {
        self.caller.role == "admin"
    }

    /// Checks a form's CSRF token.
    fn check(&self, token: &str) -> Result<(), Page> {
        let want = self.csrf();
        // Compared in constant time: the answer's timing says nothing of the token.
        let same = want.len() == token.len() && want.bytes().zip(token.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        if same {
            Ok(())
        } else {
            Err(Page::error(StatusCode::FORBIDDEN, "the form's security token is missing or wrong: reload the page"))
        }
    }
}

fn csrf_for(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(format!("bulwark console form:{secret}")))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE && !v.is_empty()).then(|| v.to_string())
    })
}

impl FromRequestParts<S> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let to_login = |parts: &Parts| {
            // htmx follows a redirect inside the fragment; it is told to load the page instead.
            if parts.headers.contains_key("hx-request") {
                ([("hx-redirect", "/ui/login")], StatusCode::UNAUTHORIZED).into_response()
            } else {
                Redirect::to("/ui/login").into_response()
            }
        };
        let Some(secret) = session_cookie(&parts.headers) else { return Err(to_login(parts)) };
        // The API's own check of a token: the same expiry and revocation.
        let bearer = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| to_login(parts))?;
        parts.headers.insert(header::AUTHORIZATION, bearer);
        match Caller::from_request_parts(parts, state).await {
            Ok(caller) => Ok(Viewer { caller, secret }),
            Err(ApiError(StatusCode::UNAUTHORIZED, _)) => Err(to_login(parts)),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A page answered with a status.
struct Page(StatusCode, Markup);

impl Page {
    fn error(status: StatusCode, message: &str) -> Page {
        Page(
            status,
            layout(
                "Error",
                None,
                html! { article.error { p { (message) } p { a href="/ui/" { "Back to the dashboard" } } } },
            ),
        )
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (self.0, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], self.1.into_string()).into_response()
    }
}

impl From<ApiError> for Page {
    fn from(e: ApiError) -> Page {
        Page::error(e.0, &e.1)
    }
}

fn ok(m: Markup) -> Page {
    Page(StatusCode::OK, m)
}

/// The frame of every page: the assets, the navigation (with the user and a logout form).
fn layout(title: &str, v: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // htmx's own indicator styles would be an inline style, which the CSP forbids.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false}"#;
                title { (title) " · Bulwark" }
                link rel="stylesheet" href="/ui/assets/pico.min.css";
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/htmx.min.js" defer {}
                script src="/ui/assets/console.js" defer {}
            }
            body {
                header.container {
                    nav {
                        ul { li { a href="/ui/" { strong { "Bulwark" } } } }
                        @if let Some(v) = v {
                            ul {
                                li { a href="/ui/" { "Dashboard" } }
                                li { a href="/ui/jobs" { "Jobs" } }
                                li { a href="/ui/sessions" { "Sessions" } }
                                li { a href="/ui/points" { "Restore points" } }
                                li { a href="/ui/computers" { "Computers" } }
                                li { a href="/ui/repositories" { "Repositories" } }
                                @if v.is_admin() { li { a href="/ui/access" { "Access" } } }
                                li {
                                    form.inline method="post" action="/ui/logout" {
                                        input type="hidden" name="csrf" value=(v.csrf());
                                        button.secondary.outline type="submit" title={ "Log out " (v.caller.name) } {
                                            (v.caller.name) " (" (v.caller.role) ") · Log out"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                main.container { h1 { (title) } (body) }
            }
        }
    }
}

/// A time as the server stamps it, shown in the browser's zone by `console.js`.
fn when(stamp: &str) -> Markup {
    html! { time datetime=(stamp) { (stamp) } }
}

fn status_badge(s: &str) -> Markup {
    html! { mark class={ "status " (s) } { (s) } }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn login_form(error: Option<&str>, name: &str) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            article {
                form method="post" action="/ui/login" {
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    label { "User" input name="name" autocomplete="username" required value=(name); }
                    label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

async fn login_page() -> Page {
    ok(login_form(None, ""))
}

async fn login(
    State(s): State<S>,
    peer: Option<axum::Extension<bulwark_proto::tls::PeerInfo>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let login = crate::model::Login { name: f.name.clone(), password: f.password };
    match api::login(State(s), peer, api::Input(login)).await {
        Ok(Json(t)) => {
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=43200", t.token);
            ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response()
        }
        Err(e) => Page(e.0, login_form(Some(&e.1), &f.name)).into_response(),
    }
}

async fn logout(v: Viewer, State(s): State<S>, Form(f): Form<CsrfForm>) -> Response {
    if let Err(p) = v.check(&f.csrf) {
        return p.into_response();
    }
    if let Err(e) = crate::store::revoke_token(&s.core.db, &v.caller.token, Some(&v.caller.user_id), false).await {
        return Page::from(ApiError::from(e)).into_response();
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, clear)], Redirect::to("/ui/login")).into_response()
}

fn session_counts(sessions: &[SessionRow], since: &str) -> Vec<(SessionStatus, usize)> {
    let recent = || sessions.iter().filter(|s| s.started.as_str() >= since);
    SessionStatus::ALL.iter().map(|&st| (st, recent().filter(|s| s.status == st).count())).collect()
}

fn schedule_text(s: &crate::schedule::Schedule) -> String {
    use crate::schedule::Schedule;
    match s {
        Schedule::Daily { at, weekdays } if weekdays.is_empty() => format!("daily at {at}"),
        Schedule::Daily { at, weekdays } => format!("{} at {at}", weekdays.join(", ")),
        Schedule::Monthly { day, at } => format!("monthly on day {day} at {at}"),
        Schedule::Periodic { every_minutes } => format!("every {every_minutes} min"),
        Schedule::After { job } => format!("after {job}"),
    }
}

async fn dashboard(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    let since = crate::db::stamp_in(-24 * 3600);
    let recent = api::SessionFilter { job: None, since: Some(since.clone()), limit: None };
    let Json(sessions) = api::list_sessions(v.caller.clone(), State(s.clone()), Query(recent)).await?;
    let Json(repos) = api::list_repositories(v.caller.clone(), State(s.clone())).await?;
    let Json(computers) = api::computers_seen(v.caller.clone(), &s).await?;
    let counts = session_counts(&sessions, &since);
    let running: Vec<&SessionRow> = sessions.iter().filter(|s| s.status == SessionStatus::Running).collect();
    let mut running_tasks = Vec::new();
    for r in &running {
        running_tasks.push(session_detail(&v, &s, &r.id).await?);
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
            }
            section {
                h2 { "Running now" }
                @if running.is_empty() { p { "No session is running." } }
                @for d in &running_tasks {
                    article {
                        header { a href={ "/ui/sessions/" (d.id) } { (d.job) " · " (d.kind.as_str()) } }
                        (session_live_part(d))
                    }
                }
            }
            section {
                h2 { "Repositories" }
                table {
                    thead { tr { th { "Name" } th { "Transport node" } th { "Encrypted" } th { "Immutable" } th { "Last health check" } } }
                    tbody {
                        @for r in &repos {
                            tr {
                                td { (r.name) } td { (r.transport) } td { (if r.encrypted { "yes" } else { "no" }) }
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

fn verify_summary(v: Option<&serde_json::Value>) -> Markup {
    match v {
        None => html! { "never" },
        Some(v) => {
            let at = v["at"].as_str().unwrap_or("");
            if let Some(e) = v["error"].as_str() {
                return html! { (status_badge("failed")) " " (e) " " (when(at)) };
            }
            let damaged = v["damaged"].as_u64().unwrap_or(0) + v["missing"].as_u64().unwrap_or(0);
            html! {
                @if damaged > 0 { (status_badge("failed")) " " (damaged) " points damaged or missing " }
                @else { (status_badge("success")) " " (v["points"].as_u64().unwrap_or(0)) " points sound " }
                (when(at))
            }
        }
    }
}

async fn jobs(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
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

/// The job wizard's answers, as the form sends them (a key per checked box).
struct JobForm(Vec<(String, String)>);

impl JobForm {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }
    fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
    }
    fn lines(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }
    fn number(&self, key: &str, what: &str) -> Result<Option<u64>, String> {
        self.get(key).map(|v| v.parse::<u64>().map_err(|_| format!("{what} {v:?} is not a whole number"))).transpose()
    }
    fn checked(&self, key: &str, value: &str) -> bool {
        self.0.iter().any(|(k, v)| k == key && v == value)
    }

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
fn error_part(e: &str) -> &'static str {
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

async fn job_wizard(v: &Viewer, s: &S, f: &JobForm, error: Option<&str>) -> Result<Markup, Page> {
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

async fn new_job_page(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    v.caller.admin()?;
    Ok(ok(job_wizard(&v, &s, &JobForm(Vec::new()), None).await?))
}

async fn new_job(v: Viewer, State(s): State<S>, Form(pairs): Form<Vec<(String, String)>>) -> Result<Response, Page> {
    let f = JobForm(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let refused = |e: ApiError| -> Result<(StatusCode, String), Page> {
        match e.0 {
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST | StatusCode::CONFLICT => Ok((e.0, e.1)),
            _ => Err(e.into()),
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

async fn start_job(v: Viewer, s: State<S>, name: Path<String>, Form(f): Form<CsrfForm>) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(started) = api::start_job(v.caller, s, name).await?;
    Ok(to_session(started))
}

async fn stop_job(v: Viewer, s: State<S>, name: Path<String>, Form(f): Form<CsrfForm>) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(stopped) = api::stop_job(v.caller, s, name).await?;
    Ok(to_session(stopped))
}

/// Deleting a job asks first, saying what stays (its points).
async fn delete_job_page(v: Viewer, State(s): State<S>, Path(name): Path<String>) -> Result<Page, Page> {
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

async fn delete_job(v: Viewer, s: State<S>, name: Path<String>, Form(f): Form<CsrfForm>) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(_deleted) = api::delete_job(v.caller, s, name).await?;
    Ok(Redirect::to("/ui/jobs").into_response())
}

#[derive(serde::Deserialize)]
struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
}

async fn create_user(v: Viewer, State(s): State<S>, Form(f): Form<UserForm>) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let input = crate::model::UserInput { name: f.name.trim().to_string(), password: f.password, role: f.role };
    match api::create_user(v.caller.clone(), State(s.clone()), api::Input(input)).await {
        Ok(_) => Ok(Redirect::to("/ui/access").into_response()),
        Err(e) if matches!(e.0, StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST | StatusCode::CONFLICT) => {
            Ok(Page(e.0, access_page(&v, &s, None, None, Some(&e.1)).await?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete_user(v: Viewer, s: State<S>, name: Path<String>, Form(f): Form<CsrfForm>) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(_deleted) = api::delete_user(v.caller, s, name).await?;
    Ok(Redirect::to("/ui/access").into_response())
}

/// After starting or stopping a job: its session's page, or the jobs if there is none.
fn to_session(session: Option<SessionRow>) -> Response {
    match session {
        Some(session) => Redirect::to(&format!("/ui/sessions/{}", session.id)).into_response(),
        None => Redirect::to("/ui/jobs").into_response(),
    }
}

async fn computers(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    let Json(list) = api::computers_seen(v.caller.clone(), &s).await?;
    let Json(groups) = api::list_groups(v.caller.clone(), State(s)).await?;
    Ok(ok(layout(
        "Computers",
        Some(&v),
        html! {
            @if list.is_empty() { p { "No computer has joined yet: create a join token under Access, then start the agent with it." } }
            table {
                thead { tr { th { "Name" } th { "Presence" } th { "Address" } th { "Joined" } th { "Restore points" } } }
                tbody {
                    @for c in &list {
                        tr.computer {
                            td { (c.name) }
                            td { @if c.revoked { (status_badge("cancelled")) " removed" }
                                 @else { (status_badge(match c.online { Some(true) => "online", Some(false) => "offline", None => "unknown" })) } }
                            td { code { (c.address) } }
                            td { (when(&c.joined)) }
                            td { a href={ "/ui/points?computer=" (c.name) } { "Points" } }
                        }
                    }
                }
            }
            h2 { "Protection groups" }
            @if groups.is_empty() { p { "No group." } }
            table {
                thead { tr { th { "Group" } th { "Computers" } } }
                tbody { @for g in &groups { tr { td { (g.name) } td { (g.computers.join(", ")) } } } }
            }
        },
    )))
}

async fn repositories(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    let Json(repos) = api::list_repositories(v.caller.clone(), State(s.clone())).await?;
    let Json(nodes) = api::list_transports(v.caller.clone(), State(s)).await?;
    Ok(ok(layout(
        "Repositories",
        Some(&v),
        html! {
            table {
                thead { tr { th { "Name" } th { "Transport node" } th { "Where" } th { "Tasks at once" } th { "Encrypted" } th { "Immutable" } th { "Last health check" } } }
                tbody {
                    @for r in &repos {
                        tr {
                            td { (r.name) } td { (r.transport) } td { code { (r.path) } } td { (r.max_tasks) }
                            td { (if r.encrypted { "yes" } else { "no" }) @if r.isolation == "computer" { " (a key per computer)" } }
                            td { @if let Some(d) = r.immutable_days { (d) " days" } @else { "no" } }
                            td { (verify_summary(r.last_verify.as_ref())) }
                        }
                    }
                }
            }
            h2 { "Transport nodes" }
            table {
                thead { tr { th { "Name" } th { "Address" } th { "Joined" } th { "" } } }
                tbody {
                    @for n in &nodes {
                        tr { td { (n.name) } td { code { (n.address) } } td { (when(&n.joined)) } td { @if n.revoked { "removed" } } }
                    }
                }
            }
        },
    )))
}

#[derive(serde::Deserialize, Default)]
struct JoinTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
}

/// Users, API tokens and join tokens (admins); `created` is a join token just made, shown this
/// once with a button that copies it.
async fn access_page(
    v: &Viewer,
    s: &S,
    created: Option<&str>,
    error: Option<&str>,
    user_error: Option<&str>,
) -> Result<Markup, Page> {
    let Json(users) = api::list_users(v.caller.clone(), State(s.clone())).await?;
    let Json(tokens) = api::list_tokens(v.caller.clone(), State(s.clone())).await?;
    use crate::store::TokenRow;
    Ok(layout(
        "Access",
        Some(v),
        html! {
            h2 { "Users" }
            table {
                thead { tr { th { "User" } th { "Role" } th { "Created" } th { "" } } }
                tbody {
                    @for u in &users {
                        tr.user data-name=(u.name) {
                            td { (u.name) } td { (u.role) } td { (when(&u.created)) }
                            td { @if u.name != v.caller.name {
                                form.inline method="post" action={ "/ui/users/" (u.name) "/delete" } {
                                    input type="hidden" name="csrf" value=(v.csrf());
                                    button.secondary.outline type="submit" { "Delete" }
                                }
                            } }
                        }
                    }
                }
            }
            form method="post" action="/ui/users" {
                input type="hidden" name="csrf" value=(v.csrf());
                @if let Some(e) = user_error { p.error role="alert" { (e) } }
                div.grid {
                    label { "New user" input name="name" required autocomplete="off"; }
                    label { "Password (10 characters or more)" input type="password" name="password" required autocomplete="new-password"; }
                    label { "Role" select name="role" {
                        option value="viewer" { "viewer (reads only)" }
                        option value="restore-operator" { "restore operator" }
                        option value="admin" { "admin" }
                    } }
                }
                button type="submit" { "Create the user" }
            }
            h2 { "Join tokens" }
            @if let Some(t) = created {
                article.new-token {
                    p { "The new join token, shown this once:" }
                    p { code id="new-token" { (t) } " " button.outline type="button" data-copy="new-token" { "Copy" } }
                }
            }
            form method="post" action="/ui/access" {
                input type="hidden" name="csrf" value=(v.csrf());
                @if let Some(e) = error { p.error role="alert" { (e) } }
                div.grid {
                    label { "For" select name="role" { option value="agent" { "a computer (agent)" } option value="transport" { "a transport node" } } }
                    label { "Its name (empty: any new name)" input name="name" placeholder="web-1"; }
                    label { "Valid for" input name="expires" value="7d"; }
                }
                button type="submit" { "Create a join token" }
            }
            table {
                thead { tr { th { "Kind" } th { "For" } th { "Created" } th { "Expires" } } }
                tbody {
                    @for t in &tokens {
                        @match t {
                            TokenRow::Join { role, name, created, expires, .. } => tr { td { "join (" (role) ")" } td { (name) } td { (when(created)) } td { @if let Some(e) = expires { (when(e)) } @else { "never" } } },
                            TokenRow::Api { user, name, created, expires, .. } => tr { td { "API" } td { (user) " · " (name) } td { (when(created)) } td { @if let Some(e) = expires { (when(e)) } @else { "never" } } },
                        }
                    }
                }
            }
        },
    ))
}

async fn access(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    v.caller.admin()?;
    Ok(ok(access_page(&v, &s, None, None, None).await?))
}

async fn create_join_token(v: Viewer, State(s): State<S>, Form(f): Form<JoinTokenForm>) -> Result<Page, Page> {
    v.check(&f.csrf)?;
    let name = Some(f.name.trim().to_string()).filter(|n| !n.is_empty());
    let request = crate::model::TokenRequest {
        role: f.role.clone(),
        any_name: name.is_none(),
        name,
        replace: false,
        expires: Some(f.expires.trim().to_string()).filter(|e| !e.is_empty()),
    };
    match api::create_join_token(v.caller.clone(), State(s.clone()), api::Input(request)).await {
        Ok(Json(
            crate::answers::TokenCreated::Join { token, .. } | crate::answers::TokenCreated::Api { token, .. },
        )) => Ok(ok(access_page(&v, &s, Some(&token), None, None).await?)),
        Err(e) if e.0 == StatusCode::UNPROCESSABLE_ENTITY || e.0 == StatusCode::BAD_REQUEST => {
            Ok(Page(e.0, access_page(&v, &s, None, Some(&e.1), None).await?))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
struct PointsQuery {
    computer: Option<String>,
    #[serde(default)]
    page: u32,
}

/// Rows per page of a long table.
const PER_PAGE: u32 = 100;

async fn points(v: Viewer, State(s): State<S>, Query(q): Query<PointsQuery>) -> Result<Page, Page> {
    let computer = q.computer.filter(|c| !c.is_empty());
    // One more than a page: whether there is a next one.
    let filter = api::PointFilter {
        computer: computer.clone(),
        newest_first: true,
        limit: Some(PER_PAGE + 1),
        offset: q.page.saturating_mul(PER_PAGE),
    };
    let Json(mut list) = api::list_points(v.caller.clone(), State(s), Query(filter)).await?;
    let more = list.len() > PER_PAGE as usize;
    list.truncate(PER_PAGE as usize);
    let link = |page: u32| match &computer {
        Some(c) => format!("/ui/points?computer={c}&page={page}"),
        None => format!("/ui/points?page={page}"),
    };
    let may_restore = v.caller.may_restore().is_ok();
    Ok(ok(layout(
        "Restore points",
        Some(&v),
        html! {
            @if list.is_empty() { p { "No restore point here." } }
            @if let Some(c) = &computer { p { "Of " strong { (c) } " · " a href="/ui/points" { "all computers" } } }
            table {
                thead { tr { th { "Created" } th { "Computer" } th { "Backup" } th { "Kind" } th { "Size" } th { "Consistency" } th { "Health" } @if may_restore { th { "" } } } }
                tbody {
                    @for p in &list {
                        tr.point data-id=(p.id) {
                            td { (when(&p.created)) }
                            td { a href={ "/ui/points?computer=" (p.computer) } { (p.computer) } }
                            td { (p.name) } td { (p.kind) }
                            td { (p.stats.as_ref().and_then(|s| s["source_bytes"].as_u64()).map(human_bytes).unwrap_or_default()) }
                            td { (p.consistency.as_ref().and_then(|c| c.as_str()).unwrap_or("")) }
                            td { (status_badge(match p.health.as_deref() { Some("ok") => "success", Some(_) => "failed", None => "unknown" }))
                                 @if let Some(d) = &p.health_detail { " " small { (d) } } }
                            @if may_restore {
                                td {
                                    a role="button" href={ "/ui/points/" (p.id) "/restore" } { "Restore" } " "
                                    a.secondary role="button" href={ "/ui/points/" (p.id) "/files" } { "Files" }
                                }
                            }
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

#[derive(serde::Deserialize)]
struct FilesAt {
    #[serde(default)]
    volume: Option<u32>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `/ui/points/ID/files?…` for a volume and a path inside it.
fn files_link(id: &str, volume: u32, path: &str) -> String {
    let q: String = url_query(&[("volume", &volume.to_string()), ("path", path)]);
    format!("/ui/points/{id}/files?{q}")
}

fn url_query(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
}

/// The file browser of a point: its volumes first (a volume point holding several), then one
/// directory at a time, read from the point by the transport node as the API reads it. Files
/// download; checked entries restore onto a computer.
async fn files_page(
    v: Viewer,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(at): Query<FilesAt>,
) -> Result<Page, Page> {
    v.caller.may_restore()?;
    let Json(point) = api::show_point(v.caller.clone(), State(s.clone()), Path(id.clone())).await?;
    let volume = match (at.volume, point.kind.as_str()) {
        (Some(n), _) => n,
        (None, "files") => 0,
        (None, _) => {
            let Json(volumes) =
                crate::point_files::point_volumes(v.caller.clone(), State(s.clone()), Path(id.clone())).await?;
            let readable: Vec<_> = volumes.iter().filter(|x| !x.content.is_empty() && x.content != "swap").collect();
            if readable.len() == 1 {
                readable[0].number
            } else {
                return Ok(ok(layout(
                    "Files: choose a volume",
                    Some(&v),
                    html! {
                        p { "Point " code { (id) } " of " strong { (point.computer) } " holds these volumes:" }
                        table {
                            thead { tr { th { "Volume" } th { "Holds" } th { "Size" } th { "Label" } } }
                            tbody {
                                @for x in &volumes {
                                    tr {
                                        td { a href=(files_link(&id, x.number, "/")) { (x.number) " (" (x.table) ")" } }
                                        td { (if x.content.is_empty() { "unknown" } else { &x.content }) }
                                        td { (human_bytes(x.size)) } td { (x.label) }
                                    }
                                }
                            }
                        }
                    },
                )));
            }
        }
    };
    let path = at.path.unwrap_or_else(|| "/".into());
    let query =
        crate::point_files::FilesQuery { volume, path: Some(path.clone()), cursor: at.cursor, limit: Some(200) };
    let Json(dir) =
        crate::point_files::point_files(v.caller.clone(), State(s.clone()), Path(id.clone()), Query(query)).await?;
    let Json(computers) = api::computers_seen(v.caller.clone(), &s).await?;
    let child = |name: &str| if path.ends_with('/') { format!("{path}{name}") } else { format!("{path}/{name}") };
    // The way back up, one link per directory.
    let mut crumbs = vec![("/".to_string(), "/".to_string())];
    let mut so_far = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        so_far = format!("{so_far}/{part}");
        crumbs.push((so_far.clone(), part.to_string()));
    }
    Ok(ok(layout(
        "Files",
        Some(&v),
        html! {
            p { "Point " code { (id) } " of " strong { (point.computer) } @if point.kind != "files" { ", volume " (volume) } ", made " (when(&point.created)) "." }
            p.crumbs aria-label="path" {
                "In "
                @for (i, (p, name)) in crumbs.iter().enumerate() {
                    @if i > 1 { " / " } @else if i == 1 { " " }
                    a href=(files_link(&id, volume, p)) { (name) }
                }
            }
            form method="post" action={ "/ui/points/" (id) "/files" } {
                input type="hidden" name="csrf" value=(v.csrf());
                input type="hidden" name="volume" value=(volume);
                table {
                    thead { tr { th { "" } th { "Name" } th { "Size" } th { "Changed" } th { "" } } }
                    tbody {
                        @for e in &dir.entries {
                            @let p = child(&e.name);
                            tr.entry data-name=(e.name) data-kind=(e.kind) {
                                td { input type="checkbox" name="path" value=(p) aria-label={ "Select " (e.name) }; }
                                td { @if e.kind == "dir" { a href=(files_link(&id, volume, &p)) { (e.name) "/" } } @else { (e.name) }
                                     @if let Some(t) = &e.target { " → " (t) } }
                                td { @if e.kind == "file" { (human_bytes(e.size)) } }
                                td { (jiff::Timestamp::from_second(e.mtime).map(crate::db::stamp).map(|t| when(&t)).unwrap_or_default()) }
                                td {
                                    @if e.kind == "file" { a.download href={ "/ui/points/" (id) "/download?" (url_query(&[("volume", &volume.to_string()), ("path", &p)])) } { "Download" } }
                                    @if e.kind == "dir" { a href={ "/ui/points/" (id) "/download?" (url_query(&[("volume", &volume.to_string()), ("path", &p), ("tar", "1")])) } { "Download .tar" } }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = &dir.next {
                    p { a href={ "/ui/points/" (id) "/files?" (url_query(&[("volume", &volume.to_string()), ("path", &path), ("cursor", next)])) } { "More…" } }
                }
                fieldset {
                    legend { strong { "Restore what is checked" } }
                    div.grid {
                        label { "Onto computer" select name="computer" {
                            @for c in &computers { option value=(c.name) selected[c.name == point.computer] { (c.name) } }
                        } }
                        label { "Into the directory" input name="target" required placeholder="/srv/restored"; }
                    }
                    button type="submit" { "Restore the checked files" }
                }
            }
        },
    )))
}

async fn restore_files(
    v: Viewer,
    State(s): State<S>,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = JobForm(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let paths = f.all("path");
    if paths.is_empty() {
        return Err(Page::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing was checked: check the files and directories to restore",
        ));
    }
    let input = crate::model::RestoreInput {
        computer: f.get("computer").map(str::to_string),
        target: f.get("target").unwrap_or_default().to_string(),
        overwrite: false,
        paths,
        safe: false,
        volume: f.get("volume").and_then(|v| v.parse().ok()).unwrap_or(0),
    };
    let started = api::begin_restore(&v.caller, &s, &id, input).await?;
    Ok(Redirect::to(&format!("/ui/sessions/{}", started.session)).into_response())
}

#[derive(serde::Deserialize)]
struct DownloadQuery {
    #[serde(default)]
    volume: u32,
    path: String,
    #[serde(default)]
    tar: Option<String>,
}

/// A file of a point (or a directory as a tar stream), as the API serves it.
async fn download(
    v: Viewer,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, Page> {
    let query = crate::point_files::ContentQuery { volume: q.volume, path: q.path };
    let mut r = match q.tar {
        Some(_) => crate::point_files::point_files_archive(v.caller, State(s), Path(id), Query(query)).await?,
        None => crate::point_files::point_file_content(v.caller, State(s), Path(id), Query(query), headers).await?,
    };
    // Saved as a file, not shown by the browser.
    let name = r.headers().get("content-disposition").is_none();
    if name {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    Ok(r)
}

#[derive(serde::Deserialize, Default)]
struct RestoreForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    computer: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    overwrite: Option<String>,
}

/// The restore wizard for a whole point: onto which computer, where, and whether what is there
/// may be overwritten; `error` is the API's refusal of the last try, shown by its field.
async fn restore_form(v: &Viewer, s: &S, id: &str, f: &RestoreForm, error: Option<&str>) -> Result<Markup, Page> {
    let Json(point) = api::show_point(v.caller.clone(), State(s.clone()), Path(id.to_string())).await?;
    let Json(computers) = api::list_computers(v.caller.clone(), State(s.clone())).await?;
    let chosen = if f.computer.is_empty() { point.computer.clone() } else { f.computer.clone() };
    let on_target = error.is_some_and(|e| e.contains("target") || e.contains("path"));
    Ok(layout(
        "Restore",
        Some(v),
        html! {
            p { "Point " code { (point.id) } " of " strong { (point.computer) } " (" (point.name) ", " (point.kind) "), made " (when(&point.created)) "." }
            p { a href={ "/ui/points/" (point.id) "/files" } { "Or browse its files and restore some of them…" } }
            form method="post" action={ "/ui/points/" (point.id) "/restore" } {
                input type="hidden" name="csrf" value=(v.csrf());
                @if let Some(e) = error.filter(|_| !on_target) { p.error role="alert" { (e) } }
                label { "Onto computer"
                    select name="computer" {
                        @for c in &computers { option value=(c.name) selected[c.name == chosen] { (c.name) } }
                    }
                }
                label { "Target: a block device or image file (a volume point), a directory (a file-level point)"
                    input name="target" required placeholder="/dev/vdc" value=(f.target) aria-invalid=[on_target.then_some("true")];
                    @if let Some(e) = error.filter(|_| on_target) { small.error role="alert" { (e) } }
                }
                label { input type="checkbox" name="overwrite" value="yes" checked[f.overwrite.is_some()]; " Overwrite what is there" }
                button type="submit" { "Restore" }
            }
        },
    ))
}

async fn restore_page(v: Viewer, State(s): State<S>, Path(id): Path<String>) -> Result<Page, Page> {
    v.caller.may_restore()?;
    Ok(ok(restore_form(&v, &s, &id, &RestoreForm::default(), None).await?))
}

async fn restore(
    v: Viewer,
    State(s): State<S>,
    Path(id): Path<String>,
    Form(f): Form<RestoreForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let input = crate::model::RestoreInput {
        computer: Some(f.computer.clone()).filter(|c| !c.is_empty()),
        target: f.target.trim().to_string(),
        overwrite: f.overwrite.is_some(),
        paths: Vec::new(),
        safe: false,
        volume: 0,
    };
    match api::begin_restore(&v.caller, &s, &id, input).await {
        Ok(r) => Ok(Redirect::to(&format!("/ui/sessions/{}", r.session)).into_response()),
        Err(e) if e.0 == StatusCode::UNPROCESSABLE_ENTITY || e.0 == StatusCode::BAD_REQUEST => {
            Ok(Page(e.0, restore_form(&v, &s, &id, &f, Some(&e.1)).await?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize, Default)]
struct SessionsQuery {
    #[serde(default)]
    job: String,
    #[serde(default)]
    status: String,
}

async fn sessions(v: Viewer, State(s): State<S>, Query(q): Query<SessionsQuery>) -> Result<Page, Page> {
    let job = Some(q.job.clone()).filter(|j| !j.is_empty());
    let newest = api::SessionFilter { job, since: None, limit: Some(200) };
    let Json(mut list) = api::list_sessions(v.caller.clone(), State(s.clone()), Query(newest)).await?;
    if !q.status.is_empty() {
        list.retain(|x| x.status.as_str() == q.status);
    }
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
        },
    )))
}

/// One session with its tasks' progress and logs, as the API's session answer has them (and
/// as it hides steps from viewers).
async fn session_detail(v: &Viewer, s: &S, id: &str) -> Result<SessionRow, ApiError> {
    let view = api::SessionView { logs: true };
    let Json(d) = api::show_session(v.caller.clone(), State(s.clone()), Path(id.to_string()), Query(view)).await?;
    Ok(d)
}

async fn session(v: Viewer, State(s): State<S>, Path(id): Path<String>) -> Result<Page, Page> {
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
async fn session_live(v: Viewer, State(s): State<S>, Path(id): Path<String>) -> Result<Page, Page> {
    Ok(ok(session_live_part(&session_detail(&v, &s, &id).await?)))
}

fn session_live_part(d: &SessionRow) -> Markup {
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
fn task_log(t: &TaskRow) -> Markup {
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

fn task_percent(t: &TaskRow) -> u64 {
    match t.status {
        TaskStatus::Success | TaskStatus::Warning => 100,
        _ => t.progress.as_ref().and_then(|p| (p.read_bytes * 100).checked_div(p.total_bytes)).unwrap_or(0).min(100),
    }
}

fn eta(p: &crate::store::TaskProgress) -> Option<String> {
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
