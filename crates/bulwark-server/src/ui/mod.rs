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

mod access;
mod dashboard;
mod jobs;
mod points;
mod sessions;

type S = Arc<AppState>;

const COOKIE: &str = "bulwark_session";

/// Every console response: only our own scripts, styles and forms; never in a frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(dashboard::dashboard))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/jobs", get(jobs::jobs))
        .route("/ui/jobs/new", get(jobs::new_job_page).post(jobs::new_job))
        .route("/ui/jobs/{name}/edit", get(jobs::edit_job_page).post(jobs::edit_job))
        .route("/ui/jobs/{name}/{action}", post(jobs::job_action))
        .route("/ui/jobs/{name}/delete", get(jobs::delete_job_page).post(jobs::delete_job))
        .route("/ui/users", post(access::create_user))
        .route("/ui/users/{name}/delete", post(access::delete_user))
        .route("/ui/computers", get(access::computers))
        .route("/ui/groups", post(access::create_group))
        .route("/ui/groups/{name}", get(access::group_page).post(access::update_group))
        .route("/ui/groups/{name}/delete", post(access::delete_group))
        .route("/ui/api-tokens", post(access::create_api_token))
        .route("/ui/tokens/{id}/revoke", post(access::revoke_token))
        .route("/ui/repositories", get(access::repositories).post(access::create_repository))
        .route("/ui/repositories/{name}", get(access::repository_page).post(access::update_repository))
        .route("/ui/repositories/{name}/verify", post(access::verify_repository))
        .route("/ui/access", get(access::access).post(access::create_join_token))
        .route("/ui/points", get(points::points))
        .route("/ui/points/{id}/restore", get(points::restore_page).post(points::restore))
        .route("/ui/points/{id}/files", get(points::files_page).post(points::restore_files))
        .route("/ui/points/{id}/download", get(points::download))
        .route("/ui/sessions", get(sessions::sessions))
        .route("/ui/sessions/{id}", get(sessions::session))
        .route("/ui/sessions/{id}/live", get(sessions::session_live))
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
        "htmx.min.js" => (include_bytes!("../../assets/vendor/htmx.min.js"), "text/javascript"),
        "pico.min.css" => (include_bytes!("../../assets/vendor/pico.min.css"), "text/css"),
        "console.js" => (include_bytes!("../../assets/console.js"), "text/javascript"),
        "console.css" => (include_bytes!("../../assets/console.css"), "text/css"),
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

/// Whether the API refused what a form sent (said next to the form, which is shown again),
/// rather than failing otherwise (an error page).
fn refuses_input(e: &ApiError) -> bool {
    matches!(e.0, StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST | StatusCode::CONFLICT)
}

/// The API's refusal of what a form sent, to say next to it; anything else is the page's error.
fn refused(e: ApiError) -> Result<(StatusCode, String), Page> {
    if refuses_input(&e) {
        Ok((e.0, e.1))
    } else {
        Err(e.into())
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

/// The job wizard's answers, as the form sends them (a key per checked box).
struct FormPairs(Vec<(String, String)>);

impl FormPairs {
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

    /// The schedule whose kind is answered under `kind` (daily, monthly, periodic, after;
    /// anything else: none), as the API takes it: its checks then say what is wrong.
    fn schedule(&self, kind: &str) -> Result<serde_json::Value, String> {
        use serde_json::json;
        let at = || self.get("at").unwrap_or_default();
        Ok(match self.get(kind) {
            Some("daily") => json!({"kind": "daily", "at": at(), "weekdays": self.all("weekday")}),
            Some("monthly") => {
                json!({"kind": "monthly", "day": self.number("day", "day of the month")?.unwrap_or(0), "at": at()})
            }
            Some("periodic") => {
                json!({"kind": "periodic", "every_minutes": self.number("every_minutes", "every")?.unwrap_or(0)})
            }
            Some("after") => json!({"kind": "after", "job": self.get("after_job").unwrap_or_default()}),
            _ => serde_json::Value::Null,
        })
    }

    /// A schedule as the answers [`FormPairs::schedule`] reads, its kind under `kind` (`none`
    /// when there is no schedule).
    fn of_schedule(kind: &str, none: &str, schedule: Option<&crate::schedule::Schedule>) -> Vec<(String, String)> {
        use crate::schedule::Schedule;
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        match schedule {
            None => vec![pair(kind, none)],
            Some(Schedule::Daily { at, weekdays }) => {
                let mut p = vec![pair(kind, "daily"), pair("at", at)];
                p.extend(weekdays.iter().map(|d| pair("weekday", d)));
                p
            }
            Some(Schedule::Monthly { day, at }) => {
                vec![pair(kind, "monthly"), pair("at", at), pair("day", &day.to_string())]
            }
            Some(Schedule::Periodic { every_minutes }) => {
                vec![pair(kind, "periodic"), pair("every_minutes", &every_minutes.to_string())]
            }
            Some(Schedule::After { job }) => vec![pair(kind, "after"), pair("after_job", job)],
        }
    }
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
