//! The REST API under `/api/v1` (described by `/api/v1/openapi.json`). Every call but login
//! carries `Authorization: Bearer TOKEN`; reads need any user, changes an admin. Bad input —
//! unknown fields, wrong types, absurd values, unknown names — gets a 4xx with a message and
//! changes nothing. Each handler's `#[utoipa::path]` is its entry in the document (see
//! `openapi`): the first line of its doc comment is the operation's summary.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bulwark_proto::domain::{SessionStatus, TaskStatus};
use bulwark_proto::pb::RepositoryInit;
use bulwark_proto::pki::{Ca, JoinToken, Role};
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::answers::{
    Deleted, GroupMembers, JobDetail, LoginToken, PasswordChanged, Readmitted, Removed, RepositoryDeleted,
    RestoreOutcome, Revoked, RpoRow, SecretSet, TokenCreated, UserCreated, Whoami,
};
use crate::backup_manager::BackupManager;
use crate::db::DbError;
use crate::health::HealthCheck;
use crate::model::{
    check_name, check_password, parse_lifetime, ApiTokenRequest, GroupInput, Job, Login, PasswordChange,
    RepositoryInput, RepositoryUpdate, RestoreInput, SecretInput, TokenRequest, UserInput,
};
use crate::openapi::{BadRequest, Conflict, Forbidden, Invalid, NodeFailed, NotFound, TooManyLogins, Unauthorized};
use crate::registration::Grant;
use crate::store::{self, GroupRow, NodeRow, PointRow, RepositoryRow, SecretRow, SessionRow, TokenRow, UserRow};
use crate::task_driver::NodeAddress;

pub struct AppState {
    pub core: Arc<BackupManager>,
    pub ca: Arc<Ca>,
    /// The server's own view of revoked certificates (its TLS checks them).
    pub revoked: bulwark_proto::tls::Revocations,
    /// Password checks in flight: argon2 is made to be costly, so few run at once.
    pub logins: tokio::sync::Semaphore,
    /// Failed logins per user and address, and the lockouts they earned.
    pub login_guard: crate::login_guard::LoginGuard,
    /// Whether each computer answered when last asked.
    pub presence: Presence,
    /// Each repository's size and room, as last measured.
    pub usage: Measured,
}

/// Answers of nodes kept by name for `FRESH_S` seconds: pages that show many of them (the
/// console's dashboard) read these instead of waiting on nodes that may not answer, and have
/// them asked again in the background, one round at a time, when they are old.
pub struct Seen<T, const FRESH_S: u64> {
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, T)>>,
    /// When the last round of asking started, while it runs.
    round: std::sync::Mutex<(bool, Option<std::time::Instant>)>,
}

/// Whether each computer answered when it was last asked.
pub type Presence = Seen<bool, 60>;
/// What each repository takes of its storage (listing a big repository takes a while).
pub type Measured = Seen<store::RepositoryUsage, 300>;

impl<T, const FRESH_S: u64> Default for Seen<T, FRESH_S> {
    fn default() -> Self {
        Seen { seen: Default::default(), round: Default::default() }
    }
}

impl<T: Clone, const FRESH_S: u64> Seen<T, FRESH_S> {
    fn record(&self, name: &str, answer: T) {
        self.seen.lock().expect("lock").insert(name.to_string(), (std::time::Instant::now(), answer));
    }

    /// The last answer of `name` while fresh; `None` when never asked or too long ago.
    fn get(&self, name: &str) -> Option<T> {
        let seen = self.seen.lock().expect("lock");
        let fresh = std::time::Duration::from_secs(FRESH_S);
        seen.get(name).filter(|(at, _)| at.elapsed() < fresh).map(|(_, answer)| answer.clone())
    }

    /// Claims a round of asking: refused while one runs, and for a while after the last began
    /// (a node that never answers is not asked on every page).
    fn start_round(&self) -> bool {
        let mut round = self.round.lock().expect("lock");
        let rested = round.1.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(FRESH_S / 5));
        if round.0 || !rested {
            return false;
        }
        *round = (true, Some(std::time::Instant::now()));
        true
    }

    fn end_round(&self) {
        self.round.lock().expect("lock").0 = false;
    }
}

type S = Arc<AppState>;

impl AppState {
    /// Refuses a password check for `user` from `ip` while either is locked out (logged).
    fn login_guard_check(&self, user: &str, ip: Option<std::net::IpAddr>, from: &str) -> Result<(), ApiError> {
        use crate::login_guard::Lockout;
        let Err(lock) = self.login_guard.check(user, ip) else { return Ok(()) };
        let secs = lock.remaining().as_secs().max(1);
        let who = match lock {
            Lockout::User(_) => format!("user {user}"),
            Lockout::Address(_) => format!("address {from}"),
        };
        tracing::warn!("password check of user {user} from {from} refused: {who} is locked out for {secs} s more");
        Err(ApiError(StatusCode::TOO_MANY_REQUESTS, format!("too many failed logins for {who}: try again in {secs} s")))
    }
}

/// An error for the caller: a status and a message (as [`ApiErrorBody`]).
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

/// What every error answer carries.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong, and what to do about it where the server knows.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiErrorBody { error: self.1 })).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if let DbError::Query(sqlx::Error::Database(d)) = &e {
            if d.is_unique_violation() {
                return ApiError(StatusCode::CONFLICT, "already exists".into());
            }
        }
        tracing::warn!("{e}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server's log)".into())
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
}

pub(crate) fn missing(what: &str, name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no {what} {name:?}"))
}

/// A handler's answer: `T` as JSON, or an error. `Value` where the answer is still assembled
/// as JSON (the jobs'; their attributes name the type describing it).
type ApiResult<T = Value> = Result<Json<T>, ApiError>;

/// A JSON body whose parse errors are answered like every other error.
pub struct Input<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for Input<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Input(v)),
            Err(r) => Err(ApiError(
                if matches!(r, JsonRejection::JsonDataError(_)) {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::BAD_REQUEST
                },
                r.body_text(),
            )),
        }
    }
}

/// The authenticated caller.
#[derive(Clone)]
pub struct Caller {
    pub name: String,
    pub role: String,
    pub user_id: String,
    /// The id of the token the call came with.
    pub token: String,
}

impl Caller {
    fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// Restoring a point, or reading its files, reads the protected computer's data: admins and
    /// restore operators may.
    pub(crate) fn may_restore(&self) -> Result<(), ApiError> {
        if matches!(self.role.as_str(), "admin" | "restore-operator") {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("user {} may not restore or read restore points' files", self.name),
            ))
        }
    }

    pub(crate) fn admin(&self) -> Result<(), ApiError> {
        if self.role == "admin" {
            Ok(())
        } else {
            Err(ApiError(StatusCode::FORBIDDEN, format!("user {} may only read", self.name)))
        }
    }
}

impl FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.into());
        let header = parts
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| unauthorized("no API token (Authorization: Bearer …)"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer TOKEN"))?;
        let holder = store::token_user(&state.core.db, token.trim())
            .await?
            .ok_or_else(|| unauthorized("unknown or revoked API token"))?;
        if let Some(at) = holder.expired {
            return Err(unauthorized(&format!("the API token expired at {at}: log in again or create another")));
        }
        Ok(Caller { name: holder.user, role: holder.role, user_id: holder.user_id, token: holder.token })
    }
}

/// Every operation of the API. Each goes through `routes!`, which routes its handler and puts
/// its `#[utoipa::path]` in the document, so the two cannot part; a route added with a plain
/// `.route(…)` would be served undescribed, and `openapi`'s test, which lists the router's
/// routes, fails on it.
fn operations() -> OpenApiRouter<S> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(openapi))
        .routes(routes!(login))
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(change_password))
        .routes(routes!(list_tokens, create_join_token))
        .routes(routes!(revoke_token))
        .routes(routes!(create_api_token))
        .routes(routes!(whoami))
        .routes(routes!(list_computers))
        .routes(routes!(show_computer, remove_computer))
        .routes(routes!(readmit_computer))
        .routes(routes!(list_transports))
        .routes(routes!(remove_transport))
        .routes(routes!(readmit_transport))
        .routes(routes!(list_repositories, create_repository))
        .routes(routes!(show_repository, update_repository, delete_repository))
        .routes(routes!(verify_repository))
        .routes(routes!(crate::scale_out::list, crate::scale_out::create))
        .routes(routes!(crate::scale_out::show, crate::scale_out::update, crate::scale_out::delete))
        .routes(routes!(crate::scale_out::maintenance))
        .routes(routes!(crate::scale_out::evacuate))
        .routes(routes!(list_secrets))
        .routes(routes!(set_secret, delete_secret))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(show_group, update_group, delete_group))
        .routes(routes!(list_jobs, create_job))
        .routes(routes!(recovery_points))
        .routes(routes!(show_job, update_job, change_job, delete_job))
        .routes(routes!(start_job))
        .routes(routes!(retry_job))
        .routes(routes!(stop_job))
        .routes(routes!(enable_job))
        .routes(routes!(disable_job))
        .routes(routes!(list_sessions))
        .routes(routes!(show_session))
        .routes(routes!(list_points))
        .routes(routes!(show_point))
        .routes(routes!(restore_point))
        .routes(routes!(crate::point_files::point_volumes))
        .routes(routes!(crate::point_files::point_files))
        .routes(routes!(crate::point_files::point_file_content))
        .routes(routes!(crate::point_files::point_files_archive))
        .routes(routes!(crate::exports::publish_point))
        .routes(routes!(crate::exports::list_exports))
        .routes(routes!(crate::exports::unpublish))
}

/// The document as served: made once, with the router.
#[derive(Clone)]
struct Document(axum::body::Bytes);

pub fn router(state: S) -> Router {
    let (api, doc) = operations().split_for_parts();
    let doc = Document(doc.to_json().expect("the API's description serializes").into());
    Router::new()
        .nest(crate::openapi::BASE, api.layer(axum::Extension(doc)))
        .merge(crate::ui::router())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API path (see /api/v1/openapi.json)".into()) })
        .with_state(state)
}

/// The client's address, when the request came through our TLS listener.
fn client_ip(peer: &Option<axum::Extension<bulwark_proto::tls::PeerInfo>>) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|p| p.remote.ip())
}

/// Trade a user's password for an API token valid 12 hours.
///
/// Repeated failures lock the user and the address out for a while (429).
#[utoipa::path(post, path = "/login", security(()), request_body = Login, responses(
    (status = 200, description = "the token, its id and expiry", body = LoginToken),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 422, response = Invalid), (status = 429, response = TooManyLogins),
))]
pub(crate) async fn login(
    State(s): State<S>,
    peer: Option<axum::Extension<bulwark_proto::tls::PeerInfo>>,
    Input(l): Input<Login>,
) -> ApiResult<LoginToken> {
    use crate::login_guard::Lockout;
    let denied = || ApiError(StatusCode::UNAUTHORIZED, "wrong user name or password".into());
    let ip = client_ip(&peer);
    let from = ip.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    s.login_guard_check(&l.name, ip, &from)?;
    let user = store::user_by_name(&s.core.db, &l.name).await?;
    // An unknown user costs the same check as a known one: timing tells nothing.
    let hash = user.as_ref().map_or_else(|| crate::server::DUMMY_HASH.to_string(), |u| u.1.clone());
    let _permit = s.logins.acquire().await.map_err(|_| denied())?;
    // Again with the permit: guesses sent all at once waited here, and those behind the ones
    // that earned the lockout must not be checked.
    s.login_guard_check(&l.name, ip, &from)?;
    let ok =
        tokio::task::spawn_blocking(move || crate::server::verify_password(&l.password, &hash)).await.unwrap_or(false);
    let Some((id, _, _)) = user.filter(|_| ok) else {
        match s.login_guard.failed(&l.name, ip) {
            Some(Lockout::User(d)) => tracing::warn!(
                "failed login of user {} from {from}: the user is locked out for {} s",
                l.name,
                d.as_secs_f64()
            ),
            Some(Lockout::Address(d)) => tracing::warn!(
                "failed login of user {} from {from}: the address is locked out for {} s",
                l.name,
                d.as_secs_f64()
            ),
            None => tracing::warn!("failed login of user {} from {from}", l.name),
        }
        return Err(denied());
    };
    s.login_guard.succeeded(&l.name, ip);
    // Every login leaves a token: those that expired go now, so they do not pile up.
    store::purge_expired_tokens(&s.core.db).await?;
    let expires = crate::db::stamp_in(LOGIN_TOKEN_SECONDS);
    let (id, token) = store::create_api_token(&s.core.db, &id, "login", Some(expires.clone())).await?;
    Ok(Json(LoginToken { token, id, expires }))
}

/// How long a login's token lasts.
const LOGIN_TOKEN_SECONDS: i64 = 12 * 3600;
/// Default lifetimes of created tokens.
const API_TOKEN_DEFAULT: &str = "90d";
const JOIN_TOKEN_DEFAULT: &str = "7d";

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::server::hash_password(&password)).await.map_err(|e| bad(e.to_string()))
}

/// The caller: user name, role, id of the token used.
#[utoipa::path(get, path = "/whoami", responses(
    (status = 200, description = "the caller", body = Whoami), (status = 401, response = Unauthorized),
))]
async fn whoami(c: Caller) -> ApiResult<Whoami> {
    Ok(Json(Whoami { name: c.name, role: c.role, token: c.token }))
}

/// Users and their roles.
#[utoipa::path(get, path = "/users", responses(
    (status = 200, description = "users by name", body = Vec<UserRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
))]
pub(crate) async fn list_users(c: Caller, State(s): State<S>) -> ApiResult<Vec<UserRow>> {
    c.admin()?;
    Ok(Json(store::users(&s.core.db).await?))
}

/// Create a user.
#[utoipa::path(post, path = "/users", request_body = UserInput, responses(
    (status = 200, description = "the user", body = UserCreated),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 409, response = Conflict), (status = 422, response = Invalid),
))]
pub(crate) async fn create_user(c: Caller, State(s): State<S>, Input(u): Input<UserInput>) -> ApiResult<UserCreated> {
    c.admin()?;
    check_name("user", &u.name).map_err(bad)?;
    if !matches!(u.role.as_str(), "admin" | "restore-operator" | "viewer") {
        return Err(bad(format!("role {:?}: admin, restore-operator or viewer", u.role)));
    }
    check_password(&u.password).map_err(bad)?;
    store::create_user(&s.core.db, &u.name, &hash(u.password).await?, &u.role).await?;
    Ok(Json(UserCreated { name: u.name, role: u.role }))
}

/// Change a password: one's own (with the current one) or, as an admin, anyone's.
///
/// The user's other login tokens are revoked.
#[utoipa::path(put, path = "/users/{name}/password", params(("name" = String, Path)), request_body = PasswordChange,
    responses(
        (status = 200, description = "changed", body = PasswordChanged),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound), (status = 422, response = Invalid),
        (status = 429, response = TooManyLogins),
    )
)]
async fn change_password(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    peer: Option<axum::Extension<bulwark_proto::tls::PeerInfo>>,
    Input(p): Input<PasswordChange>,
) -> ApiResult<PasswordChanged> {
    let own = name == c.name;
    if !own {
        c.admin()?;
    }
    check_password(&p.password).map_err(bad)?;
    let (id, current_hash, _) = store::user_by_name(&s.core.db, &name).await?.ok_or_else(|| missing("user", &name))?;
    if own {
        let current = p.current.ok_or_else(|| bad("changing your own password needs the current one"))?;
        // A stolen token must not make this a way around the login's throttling.
        let ip = client_ip(&peer);
        let from = ip.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        let _permit = s.logins.acquire().await.map_err(|_| bad("the server is shutting down"))?;
        s.login_guard_check(&name, ip, &from)?;
        let ok = tokio::task::spawn_blocking(move || crate::server::verify_password(&current, &current_hash))
            .await
            .unwrap_or(false);
        if !ok {
            s.login_guard.failed(&name, ip);
            tracing::warn!("password change of user {name} refused: wrong current password");
            return Err(ApiError(StatusCode::FORBIDDEN, "the current password is wrong".into()));
        }
    }
    let keep = own.then_some(c.token.as_str());
    store::set_password(&s.core.db, &id, &hash(p.password).await?, keep).await?;
    tracing::info!("password of user {name} changed by {}", c.name);
    Ok(Json(PasswordChanged { name, changed: true }))
}

/// Delete a user and their tokens (never the last admin).
#[utoipa::path(delete, path = "/users/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "deleted", body = Deleted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
pub(crate) async fn delete_user(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<Deleted> {
    c.admin()?;
    match store::delete_user(&s.core.db, &name).await? {
        store::UserDeletion::Deleted => {
            tracing::info!("user {name} deleted by {}", c.name);
            Ok(Json(Deleted { deleted: name }))
        }
        store::UserDeletion::NoSuchUser => Err(missing("user", &name)),
        store::UserDeletion::LastAdmin => Err(ApiError(
            StatusCode::CONFLICT,
            format!("user {name} is the last admin: create another admin before deleting it"),
        )),
    }
}

fn lifetime(text: Option<&str>, default: &str) -> Result<Option<String>, ApiError> {
    Ok(parse_lifetime(text.unwrap_or(default)).map_err(bad)?.map(crate::db::stamp_in))
}

/// Create an API token for the caller.
#[utoipa::path(post, path = "/api-tokens", request_body = ApiTokenRequest, responses(
    (status = 200, description = "the token (its secret shown this once)", body = TokenCreated),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized), (status = 422, response = Invalid),
))]
pub(crate) async fn create_api_token(
    c: Caller,
    State(s): State<S>,
    Input(t): Input<ApiTokenRequest>,
) -> ApiResult<TokenCreated> {
    let name = t.name.unwrap_or_else(|| "created".into());
    check_name("token", &name).map_err(bad)?;
    let expires = lifetime(t.expires.as_deref(), API_TOKEN_DEFAULT)?;
    let (id, token) = store::create_api_token(&s.core.db, &c.user_id, &name, expires.clone()).await?;
    tracing::info!("API token {id} ({name}) created for user {}", c.name);
    Ok(Json(TokenCreated::Api { token, id, user: c.name, name, expires }))
}

/// Create a one-time join token for an agent or transport node: for one name or any new one.
#[utoipa::path(post, path = "/tokens", request_body = TokenRequest, responses(
    (status = 200, description = "the token (its secret shown this once)", body = TokenCreated),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 422, response = Invalid),
))]
pub(crate) async fn create_join_token(
    c: Caller,
    State(s): State<S>,
    Input(t): Input<TokenRequest>,
) -> ApiResult<TokenCreated> {
    c.admin()?;
    let role = match t.role.as_str() {
        "agent" => Role::Agent,
        "transport" => Role::Transport,
        other => return Err(bad(format!("role {other:?}: agent or transport"))),
    };
    match (&t.name, t.any_name) {
        (Some(n), false) => bulwark_proto::pki::validate_node_name(n).map_err(bad)?,
        (None, true) if !t.replace => {}
        (None, true) => return Err(bad("--replace takes back one removed name: give it with --name")),
        _ => return Err(bad("a join token is for one node name (name) or for any new name (any_name), not both")),
    }
    let expires = lifetime(t.expires.as_deref(), JOIN_TOKEN_DEFAULT)?;
    let grant = Grant { role, name: t.name.clone(), replace: t.replace };
    let token = JoinToken::generate(&s.ca.fingerprint());
    let id = store::create_join_token(&s.core.db, &token.secret, &grant, expires.clone()).await?;
    Ok(Json(TokenCreated::Join {
        token: token.to_string(),
        id,
        role: t.role,
        name: t.name,
        replace: t.replace,
        expires,
    }))
}

/// API tokens: the caller's; an admin's listing has everyone's and the unused join tokens.
///
/// Listed by id, never with their secrets.
#[utoipa::path(get, path = "/tokens", responses(
    (status = 200, description = "tokens, oldest first", body = Vec<TokenRow>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_tokens(c: Caller, State(s): State<S>) -> ApiResult<Vec<TokenRow>> {
    let mine = (!c.is_admin()).then_some(c.user_id.as_str());
    Ok(Json(store::tokens(&s.core.db, mine, c.is_admin()).await?))
}

/// Revoke a token by its id: users their own API tokens, admins any token.
#[utoipa::path(delete, path = "/tokens/{id}", params(("id" = String, Path)), responses(
    (status = 200, description = "revoked", body = Revoked),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub(crate) async fn revoke_token(c: Caller, State(s): State<S>, Path(id): Path<String>) -> ApiResult<Revoked> {
    let mine = (!c.is_admin()).then_some(c.user_id.as_str());
    if !store::revoke_token(&s.core.db, &id, mine, c.is_admin()).await? {
        return Err(missing("token", &id));
    }
    tracing::info!("token {id} revoked by {}", c.name);
    Ok(Json(Revoked { revoked: id }))
}

/// Joined nodes; computers with whether they answer now (asked all at once, as `computer show`
/// asks one), so that both say the same.
async fn list_nodes(_c: Caller, State(s): State<S>, role: &str) -> ApiResult<Vec<NodeRow>> {
    let mut nodes = store::nodes(&s.core.db, role).await?;
    if role == "agent" {
        let mut asks = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate().filter(|(_, n)| !n.revoked) {
            let (s, node) = (s.clone(), n.address());
            asks.spawn(async move { (i, refresh_inventory(&s, &node).await) });
        }
        while let Some(Ok((i, inventory))) = asks.join_next().await {
            nodes[i].online = Some(inventory?.is_some());
            s.presence.record(&nodes[i].name, nodes[i].online == Some(true));
        }
        for n in nodes.iter_mut().filter(|n| n.revoked) {
            n.online = Some(false);
        }
    }
    Ok(Json(nodes))
}

/// Joined computers with whether they answered when last asked (`online` is `None` when not
/// asked lately); computers not asked lately are asked in the background, one round at a time,
/// so the answer never waits for them.
pub(crate) async fn computers_seen(c: Caller, s: &S) -> ApiResult<Vec<NodeRow>> {
    let mut nodes = store::nodes(&s.core.db, "agent").await?;
    let mut stale = false;
    for n in &mut nodes {
        n.online = if n.revoked { Some(false) } else { s.presence.get(&n.name) };
        stale |= n.online.is_none();
    }
    if stale && s.presence.start_round() {
        let s = s.clone();
        tokio::spawn(async move {
            let _ = list_nodes(c, State(s.clone()), "agent").await;
            s.presence.end_round();
        });
    }
    Ok(Json(nodes))
}

/// The computer's inventory, asked afresh and stored; `None` when it does not answer soon.
async fn refresh_inventory(s: &AppState, node: &NodeAddress) -> Result<Option<Value>, ApiError> {
    let ask = tokio::time::timeout(std::time::Duration::from_secs(5), s.core.manager.inventory(node)).await;
    let Ok(Ok(inventory)) = ask else { return Ok(None) };
    store::set_inventory(&s.core.db, &node.name, &inventory).await?;
    Ok(Some(inventory))
}

/// Joined computers (their agents), removed ones too.
#[utoipa::path(get, path = "/computers", responses(
    (status = 200, description = "computers by name", body = Vec<NodeRow>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_computers(c: Caller, s: State<S>) -> ApiResult<Vec<NodeRow>> {
    list_nodes(c, s, "agent").await
}

/// Joined transport nodes, removed ones too.
#[utoipa::path(get, path = "/transports", responses(
    (status = 200, description = "transport nodes by name", body = Vec<NodeRow>),
    (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_transports(c: Caller, s: State<S>) -> ApiResult<Vec<NodeRow>> {
    list_nodes(c, s, "transport").await
}

/// A computer and its inventory (fresh when its agent answers within 5 s).
#[utoipa::path(get, path = "/computers/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "the computer", body = NodeRow),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
async fn show_computer(_c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<NodeRow> {
    let mut n = store::node(&s.core.db, "agent", &name).await?.ok_or_else(|| missing("computer", &name))?;
    // Fresh inventory when the agent answers; the last one known otherwise.
    // A removed computer's certificate is revoked: it could not answer.
    let fresh = if n.revoked { None } else { refresh_inventory(&s, &n.address()).await? };
    n.online = Some(fresh.is_some());
    if let Some(inventory) = fresh {
        n.inventory = Some(inventory);
    }
    Ok(Json(n))
}

fn node_noun(role: &str) -> &'static str {
    if role == "agent" {
        "computer"
    } else {
        "transport node"
    }
}

/// A removed node's name may join again, with a token made for that name.
async fn readmit(c: Caller, State(s): State<S>, Path(name): Path<String>, role: &str) -> ApiResult<Readmitted> {
    c.admin()?;
    match store::readmit_node(&s.core.db, role, &name).await? {
        Some(true) => {
            tracing::info!("{role} {name} readmitted by {}", c.name);
            Ok(Json(Readmitted { readmitted: name, role: role.into() }))
        }
        Some(false) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("{} {name} has not been removed: nothing to readmit", node_noun(role)),
        )),
        None => Err(missing(node_noun(role), &name)),
    }
}

/// Let a removed computer's name join again.
#[utoipa::path(post, path = "/computers/{name}/readmit", params(("name" = String, Path)), responses(
    (status = 200, description = "readmitted", body = Readmitted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
async fn readmit_computer(c: Caller, s: State<S>, name: Path<String>) -> ApiResult<Readmitted> {
    readmit(c, s, name, "agent").await
}

/// Let a removed transport node's name join again.
#[utoipa::path(post, path = "/transports/{name}/readmit", params(("name" = String, Path)), responses(
    (status = 200, description = "readmitted", body = Readmitted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
async fn readmit_transport(c: Caller, s: State<S>, name: Path<String>) -> ApiResult<Readmitted> {
    readmit(c, s, name, "transport").await
}

/// Remove a computer: its certificate is revoked everywhere; its restore points stay.
#[utoipa::path(delete, path = "/computers/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "removed", body = Removed),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound),
))]
async fn remove_computer(c: Caller, s: State<S>, name: Path<String>) -> ApiResult<Removed> {
    remove_node(c, s, name, "agent").await
}

/// Remove a transport node: its certificate is revoked everywhere.
#[utoipa::path(delete, path = "/transports/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "removed", body = Removed),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound),
))]
async fn remove_transport(c: Caller, s: State<S>, name: Path<String>) -> ApiResult<Removed> {
    remove_node(c, s, name, "transport").await
}

/// Removing a computer or transport node revokes its certificate everywhere; restore points
/// stay.
async fn remove_node(c: Caller, State(s): State<S>, Path(name): Path<String>, role: &str) -> ApiResult<Removed> {
    c.admin()?;
    if !store::revoke_node(&s.core.db, role, &name).await? {
        return Err(missing(node_noun(role), &name));
    }
    tracing::info!("{role} {name} removed by {}: its certificate is revoked", c.name);
    let serials = store::revoked_serials(&s.core.db).await?;
    if let Err(e) = s.revoked.update(serials.clone()) {
        tracing::warn!("revocation list: {e}");
    }
    // Every node at once, none waited on for long: an offline node gets the list when it is
    // next told (the list is always sent whole).
    let mut pushes = tokio::task::JoinSet::new();
    for role in ["transport", "agent"] {
        for n in store::nodes(&s.core.db, role).await?.into_iter().filter(|n| !n.revoked) {
            let node = n.address();
            let r = if role == "agent" { Role::Agent } else { Role::Transport };
            let (manager, serials) = (s.core.manager.clone(), serials.clone());
            pushes.spawn(async move {
                let push = manager.push_revocations(r, &node, serials);
                match tokio::time::timeout(std::time::Duration::from_secs(5), push).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("revocation list not delivered: {e}"),
                    Err(_) => tracing::warn!("revocation list not delivered to {r} {}: no answer", node.name),
                }
            });
        }
    }
    while pushes.join_next().await.is_some() {}
    Ok(Json(Removed { removed: name }))
}

/// Names of the secrets jobs' commands may use, never their values.
///
/// Admins set and delete secrets; nobody reads a value back.
#[utoipa::path(get, path = "/secrets", responses(
    (status = 200, description = "secrets by name", body = Vec<SecretRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
))]
async fn list_secrets(c: Caller, State(s): State<S>) -> ApiResult<Vec<SecretRow>> {
    c.admin()?;
    Ok(Json(store::secret_names(&s.core.db).await?))
}

/// Set a secret (sealed at rest; commands read it as `BULWARK_SECRET_<NAME>`).
#[utoipa::path(put, path = "/secrets/{name}", params(("name" = String, Path)), request_body = SecretInput,
    responses(
        (status = 200, description = "set", body = SecretSet),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 422, response = Invalid),
    )
)]
async fn set_secret(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(v): Input<SecretInput>,
) -> ApiResult<SecretSet> {
    c.admin()?;
    crate::model::check_secret_name(&name).map_err(bad)?;
    if v.value.is_empty() || v.value.len() > 65_536 {
        return Err(bad("a secret's value holds 1 to 65536 bytes"));
    }
    store::set_secret(&s.core.db, &name, &v.value).await?;
    Ok(Json(SecretSet { variable: crate::model::secret_variable(&name), name }))
}

/// Delete a secret.
#[utoipa::path(delete, path = "/secrets/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "deleted", body = Deleted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound),
))]
async fn delete_secret(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<Deleted> {
    c.admin()?;
    if !store::delete_row(&s.core.db, "secrets", &name).await? {
        return Err(missing("secret", &name));
    }
    Ok(Json(Deleted { deleted: name }))
}

/// Repositories, with the schedule and outcome of their health checks (`last_verify`).
#[utoipa::path(get, path = "/repositories", responses(
    (status = 200, description = "repositories by name", body = Vec<RepositoryRow>),
    (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_repositories(_c: Caller, State(s): State<S>) -> ApiResult<Vec<RepositoryRow>> {
    let mut rows = store::repositories(&s.core.db).await?;
    let mut stale = false;
    for r in &mut rows {
        r.usage = s.usage.get(&r.name);
        stale |= r.usage.is_none();
    }
    if stale && s.usage.start_round() {
        let s = s.clone();
        tokio::spawn(async move {
            measure_repositories(&s).await;
            s.usage.end_round();
        });
    }
    Ok(Json(rows))
}

/// Measures every repository through its transport node and keeps what it found; one whose
/// node does not answer keeps its last measure, and says why in the log.
async fn measure_repositories(s: &AppState) {
    let Ok(repositories) = store::repositories(&s.core.db).await else { return };
    for r in repositories {
        match measure_repository(s, &r).await {
            Ok(usage) => s.usage.record(&r.name, usage),
            Err(e) => tracing::warn!("repository {}: measuring its size: {e}", r.name),
        }
    }
}

async fn measure_repository(s: &AppState, r: &RepositoryRow) -> Result<store::RepositoryUsage, String> {
    let node = store::node(&s.core.db, "transport", &r.transport)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no transport node {:?}", r.transport))?
        .address();
    let mut client = s.core.manager.transport(&node).await.map_err(|e| e.to_string())?;
    let req = bulwark_proto::pb::UsageRequest { protocol: bulwark_proto::PROTOCOL, path: r.path.clone() };
    let u = tokio::time::timeout(std::time::Duration::from_secs(120), client.repository_usage(req))
        .await
        .map_err(|_| format!("transport node {} did not answer within 120 s", r.transport))?
        .map_err(|e| format!("transport node {}: {}", r.transport, e.message()))?
        .into_inner();
    let points = store::repository_points(&s.core.db, &r.name).await.map_err(|e| e.to_string())?;
    let source_bytes = points.iter().filter_map(|p| p.stats.as_ref()?["source_bytes"].as_u64()).sum();
    Ok(store::RepositoryUsage {
        stored_bytes: u.stored_bytes,
        objects: u.objects,
        total_bytes: u.has_capacity.then_some(u.total_bytes),
        free_bytes: u.has_capacity.then_some(u.free_bytes),
        source_bytes,
        reduction: (u.stored_bytes > 0).then(|| source_bytes as f64 / u.stored_bytes as f64),
        measured_at: crate::db::stamp_in(0),
    })
}

/// A repository.
#[utoipa::path(get, path = "/repositories/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "the repository", body = RepositoryRow),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub(crate) async fn show_repository(
    _c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
) -> ApiResult<RepositoryRow> {
    let mut r = store::repository(&s.core.db, &name).await?.ok_or_else(|| missing("repository", &name))?;
    r.usage = s.usage.get(&r.name);
    Ok(Json(r))
}

/// Create (or adopt) a repository on a transport node.
///
/// The transport node creates it, or checks the one at that path; then the server records it.
#[utoipa::path(post, path = "/repositories", request_body = RepositoryInput, responses(
    (status = 200, description = "the repository (created_on_disk: whether the node made it)", body = RepositoryRow),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 409, response = Conflict),
    (status = 422, response = Invalid), (status = 502, response = NodeFailed),
))]
pub(crate) async fn create_repository(
    c: Caller,
    State(s): State<S>,
    Input(r): Input<RepositoryInput>,
) -> ApiResult<RepositoryRow> {
    c.admin()?;
    r.validate().map_err(bad)?;
    if store::repository(&s.core.db, &r.name).await?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("repository {} already exists", r.name)));
    }
    if store::scale_out(&s.core.db, &r.name).await?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("{} is the name of a scale-out repository", r.name)));
    }
    let t = store::node(&s.core.db, "transport", &r.transport)
        .await?
        .ok_or_else(|| bad(format!("no transport node {:?} has joined", r.transport)))?;
    let node = t.address();
    let mut client =
        s.core.manager.transport(&node).await.map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let init = RepositoryInit {
        protocol: bulwark_proto::PROTOCOL,
        path: r.path.clone(),
        password: r.password.clone().unwrap_or_default(),
        isolation: r.isolation.clone().unwrap_or_default(),
        pack_size_mib: r.pack_size_mib.unwrap_or(0),
        immutable_days: r.immutable_days.unwrap_or(0),
    };
    let info = client
        .init_repository(init)
        .await
        .map_err(|st| bad(format!("transport {}: {}", r.transport, st.message())))?
        .into_inner();
    if info.encrypted != r.password.is_some() {
        return Err(bad(format!(
            "repository {} on {} is {}encrypted, but {} password was given",
            r.path,
            r.transport,
            if info.encrypted { "" } else { "not " },
            if r.password.is_some() { "a" } else { "no" }
        )));
    }
    let immutable_days = (info.immutable_days > 0).then_some(info.immutable_days);
    store::insert_repository(&s.core.db, &r, immutable_days).await?;
    let mut v = store::repository(&s.core.db, &r.name).await?.ok_or_else(|| missing("repository", &r.name))?;
    v.created_on_disk = Some(info.created);
    Ok(Json(v))
}

/// Change a repository's task maximum or the schedule of its health check.
#[utoipa::path(patch, path = "/repositories/{name}", params(("name" = String, Path)), request_body = RepositoryUpdate,
    responses(
        (status = 200, description = "the repository", body = RepositoryRow),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound), (status = 422, response = Invalid),
    )
)]
pub(crate) async fn update_repository(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(u): Input<RepositoryUpdate>,
) -> ApiResult<RepositoryRow> {
    c.admin()?;
    u.validate().map_err(bad)?;
    if !store::update_repository(&s.core.db, &name, &u).await? {
        return Err(missing("repository", &name));
    }
    show_repository(c, State(s), Path(name)).await
}

/// Forget a repository (its files stay on its transport node).
#[utoipa::path(delete, path = "/repositories/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "forgotten", body = RepositoryDeleted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
async fn delete_repository(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<RepositoryDeleted> {
    c.admin()?;
    let users = store::jobs_using(&s.core.db, "repository", &name).await?;
    if !users.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("repository {name} is used by job(s) {}", users.join(", ")),
        ));
    }
    if store::open_tasks_on(&s.core.db, &name).await? > 0 {
        return Err(ApiError(StatusCode::CONFLICT, format!("repository {name} has tasks queued or running")));
    }
    if let Some(so) = store::extent_of(&s.core.db, &name).await? {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("repository {name} is an extent of scale-out repository {so}: remove it from there first"),
        ));
    }
    if !store::delete_row(&s.core.db, "repositories", &name).await? {
        return Err(missing("repository", &name));
    }
    Ok(Json(RepositoryDeleted { deleted: name, note: "the repository's files stay on its transport node".into() }))
}

/// Health check: the repository's transport node re-reads and re-hashes every chunk its points
/// reference.
///
/// The catalog records each point's health (ok or damaged, with what is lost). Reports points
/// the repository holds that the catalog does not know and catalog points whose manifest is
/// gone. Answers when the check has ended; `ok` is false when damage was found (409: a check of
/// this repository is running; 502: the transport node failed).
#[utoipa::path(post, path = "/repositories/{name}/verify", params(("name" = String, Path)), responses(
    (status = 200, description = "the check's outcome", body = HealthCheck),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
    (status = 422, response = Invalid), (status = 502, response = NodeFailed),
))]
pub(crate) async fn verify_repository(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
) -> ApiResult<HealthCheck> {
    use crate::health::HealthError;
    c.admin()?;
    let core = s.core.clone();
    // A caller who hangs up does not stop the check: the catalog still learns its outcome.
    let check = tokio::spawn(async move { crate::health::check(&core, &name).await });
    let outcome = check.await.map_err(|e| {
        tracing::warn!("health check: {e}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server's log)".into())
    })?;
    match outcome {
        Ok(h) => Ok(Json(h)),
        Err(e @ HealthError::NoRepository(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ HealthError::Running { .. }) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e @ HealthError::NoTransport(_)) => Err(bad(e.to_string())),
        Err(e @ (HealthError::Node { .. } | HealthError::Report { .. })) => {
            Err(ApiError(StatusCode::BAD_GATEWAY, e.to_string()))
        }
        Err(HealthError::Db(e)) => Err(e.into()),
    }
}

/// Protection groups: computers jobs name together.
#[utoipa::path(get, path = "/groups", responses(
    (status = 200, description = "groups by name", body = Vec<GroupRow>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_groups(_c: Caller, State(s): State<S>) -> ApiResult<Vec<GroupRow>> {
    Ok(Json(store::groups(&s.core.db).await?))
}

/// Create a protection group.
#[utoipa::path(post, path = "/groups", request_body = GroupInput, responses(
    (status = 200, description = "the group", body = GroupMembers),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 409, response = Conflict), (status = 422, response = Invalid),
))]
pub(crate) async fn create_group(
    c: Caller,
    State(s): State<S>,
    Input(g): Input<GroupInput>,
) -> ApiResult<GroupMembers> {
    c.admin()?;
    check_name("group", &g.name).map_err(bad)?;
    if g.computers.is_empty() {
        return Err(bad("a group needs at least one computer"));
    }
    for m in &g.computers {
        bulwark_proto::pki::validate_node_name(m).map_err(bad)?;
    }
    store::insert_group(&s.core.db, &g.name, &g.computers).await?;
    Ok(Json(GroupMembers { name: g.name, computers: g.computers }))
}

/// A protection group.
#[utoipa::path(get, path = "/groups/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "the group", body = GroupMembers),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub(crate) async fn show_group(_c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<GroupMembers> {
    let members = store::group_members(&s.core.db, &name).await?.ok_or_else(|| missing("group", &name))?;
    Ok(Json(GroupMembers { name, computers: members }))
}

/// Replace a group's computers.
#[utoipa::path(put, path = "/groups/{name}", params(("name" = String, Path)), request_body = GroupInput,
    responses(
        (status = 200, description = "the group", body = GroupMembers),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound), (status = 422, response = Invalid),
    )
)]
pub(crate) async fn update_group(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(g): Input<GroupInput>,
) -> ApiResult<GroupMembers> {
    c.admin()?;
    if g.name != name {
        return Err(bad(format!("the body names group {:?}, the path {name:?}", g.name)));
    }
    if g.computers.is_empty() {
        return Err(bad("a group needs at least one computer"));
    }
    for m in &g.computers {
        bulwark_proto::pki::validate_node_name(m).map_err(bad)?;
    }
    if !store::update_group(&s.core.db, &name, &g.computers).await? {
        return Err(missing("group", &name));
    }
    Ok(Json(GroupMembers { name, computers: g.computers }))
}

/// Delete a protection group (not while a job names it).
#[utoipa::path(delete, path = "/groups/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "deleted", body = Deleted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
pub(crate) async fn delete_group(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<Deleted> {
    c.admin()?;
    let users = store::jobs_using(&s.core.db, "group", &name).await?;
    if !users.is_empty() {
        return Err(ApiError(StatusCode::CONFLICT, format!("group {name} is used by job(s) {}", users.join(", "))));
    }
    if !store::delete_row(&s.core.db, "groups", &name).await? {
        return Err(missing("group", &name));
    }
    Ok(Json(Deleted { deleted: name }))
}

/// A job refers to objects that exist.
async fn check_job(s: &AppState, j: &Job) -> Result<(), ApiError> {
    j.validate().map_err(bad)?;
    match store::repository(&s.core.db, &j.repository).await? {
        None if store::scale_out(&s.core.db, &j.repository).await?.is_none() => {
            return Err(bad(format!("no repository {:?} (nor a scale-out repository of that name)", j.repository)))
        }
        Some(_) => {
            if let Some(so) = store::extent_of(&s.core.db, &j.repository).await? {
                return Err(bad(format!(
                    "repository {} is an extent of scale-out repository {so}: let the job write to {so}, which \
                     places each computer's chain on an extent",
                    j.repository
                )));
            }
        }
        None => {}
    }
    for c in &j.computers {
        if store::node(&s.core.db, "agent", c).await?.is_none() {
            return Err(bad(format!("no computer {c:?} has joined")));
        }
    }
    for g in &j.groups {
        if store::group_members(&s.core.db, g).await?.is_none() {
            return Err(bad(format!("no group {g:?}")));
        }
    }
    // A job that follows another: that one exists, and following never comes back here.
    if let Some(crate::schedule::Schedule::After { job }) = &j.schedule {
        check_name("followed job", job).map_err(bad)?;
        let mut next = job.clone();
        for _ in 0..64 {
            if next == j.name {
                return Err(bad(format!("job {} would follow itself (through {job})", j.name)));
            }
            let Some(row) = store::job(&s.core.db, &next).await? else {
                if next == *job {
                    return Err(bad(format!("no job {job:?} to follow")));
                }
                break;
            };
            match row.job.schedule {
                Some(crate::schedule::Schedule::After { job }) => next = job,
                _ => break,
            }
        }
    }
    Ok(())
}

/// Pre and post commands, and what they print, often hold credentials (a database password
/// for a dump, say): only admins see them.
fn job_for(c: &Caller, job: &Job) -> Job {
    let mut job = job.clone();
    if !c.is_admin() {
        let scripts =
            [&mut job.pre_command, &mut job.post_command, &mut job.pre_freeze_script, &mut job.post_thaw_script];
        for command in scripts.into_iter().flatten() {
            *command = "(hidden)".into();
        }
    }
    job
}

/// What the lines of the operator's scripts in a task's log start with.
const SCRIPTS: [&str; 4] = ["pre-job script", "post-job script", "pre-freeze script", "post-thaw script"];

/// Whether a line of a task's log is a script's (its command or its output).
fn script(line: &str) -> bool {
    SCRIPTS.iter().any(|s| line.starts_with(s))
}

/// A task's log without the lines of its scripts, for viewers (see [`job_for`]).
fn hide_steps(c: &Caller, log: &mut Value) {
    if c.is_admin() {
        return;
    }
    if let Some(lines) = log["lines"].as_array_mut() {
        lines.retain(|l| !l.as_str().is_some_and(script));
    }
    // The freeze scripts run inside the backup, which reports them with its notes.
    for report in log["reports"].as_array_mut().into_iter().flatten() {
        if let Some(notes) = report["notes"].as_array_mut() {
            notes.retain(|l| !l.as_str().is_some_and(script));
        }
    }
}

/// A job as readers see it ([`JobDetail`]).
fn job_view(c: &Caller, row: &store::JobRow, last_session: Option<SessionRow>, now: jiff::Timestamp) -> JobDetail {
    JobDetail {
        job: job_for(c, &row.job),
        created: row.created.clone(),
        enabled: row.enabled,
        last_session,
        next_run: if row.enabled { crate::views::next_run(&row.job, &row.created, now) } else { None },
        warnings: None,
    }
}

/// Jobs by name, each with its last session and next run (commands hidden from viewers).
#[utoipa::path(get, path = "/jobs", responses(
    (status = 200, description = "jobs by name", body = Vec<JobDetail>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_jobs(c: Caller, State(s): State<S>) -> ApiResult<Vec<JobDetail>> {
    let jobs = store::jobs(&s.core.db).await?;
    // Newest first: the first of each job is its last.
    let sessions = store::sessions(&s.core.db, &store::SessionSelect::default()).await?;
    let now = s.core.clock.now();
    let last = |name: &str| sessions.iter().find(|x| x.job == name).cloned();
    Ok(Json(jobs.iter().map(|j| job_view(&c, j, last(&j.job.name), now)).collect()))
}

/// Each computer of each enabled, scheduled job: its last good backup, and whether it still
/// meets the schedule (recovery point objective) or missed it. Jobs run by hand or after
/// another promise none and are left out. Missed ones first, then by job and computer.
#[utoipa::path(get, path = "/rpo", responses(
    (status = 200, description = "computers by job", body = Vec<RpoRow>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn recovery_points(_c: Caller, State(s): State<S>) -> ApiResult<Vec<RpoRow>> {
    let now = s.core.clock.now();
    let good = store::last_good_backups(&s.core.db).await?;
    let mut out = Vec::new();
    for j in store::jobs(&s.core.db).await?.into_iter().filter(|j| j.enabled) {
        let mut computers = j.job.computers.clone();
        for g in &j.job.groups {
            computers.extend(store::group_members(&s.core.db, g).await?.unwrap_or_default());
        }
        let mut seen = std::collections::HashSet::new();
        computers.retain(|c| seen.insert(c.clone()));
        for computer in computers {
            let last_good = good.iter().find(|(job, c, _)| *job == j.job.name && *c == computer).map(|g| g.2.clone());
            // None comes of the job alone (no time schedule, or a window no run falls into).
            let Some(until) = crate::views::protected_until(&j.job, &j.created, last_good.as_deref(), now) else {
                break;
            };
            let row = RpoRow {
                job: j.job.name.clone(),
                computer,
                last_good,
                protected_until: until.to_string(),
                missed: until < now,
            };
            out.push(row);
        }
    }
    out.sort_by(|a, b| (!a.missed, &a.job, &a.computer).cmp(&(!b.missed, &b.job, &b.computer)));
    Ok(Json(out))
}

/// A job and its last session.
#[utoipa::path(get, path = "/jobs/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "the job", body = JobDetail),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub(crate) async fn show_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<JobDetail> {
    Ok(Json(job_answer(&c, &s, &name, None).await?))
}

/// A job as [`job_view`] has it, with `warnings` about its sources when given.
async fn job_answer(
    c: &Caller,
    s: &AppState,
    name: &str,
    warnings: Option<Vec<String>>,
) -> Result<JobDetail, ApiError> {
    let j = store::job(&s.core.db, name).await?.ok_or_else(|| missing("job", name))?;
    let last = store::last_session(&s.core.db, name).await?;
    Ok(JobDetail { warnings, ..job_view(c, &j, last, s.core.clock.now()) })
}

/// What the computers of a job, as far as their last known inventories tell, do not hold of
/// its sources ([`crate::job_sources`]). Logged too: whoever reads the log of a failed night
/// sees it was said.
async fn source_warnings(s: &AppState, j: &Job) -> Result<Vec<String>, ApiError> {
    let mut computers = j.computers.clone();
    for g in &j.groups {
        computers.extend(store::group_members(&s.core.db, g).await?.unwrap_or_default());
    }
    let mut seen = std::collections::HashSet::new();
    computers.retain(|c| seen.insert(c.clone()));
    let mut out = Vec::new();
    for c in computers {
        let Some(node) = store::node(&s.core.db, "agent", &c).await? else { continue };
        if let Some(inventory) = &node.inventory {
            out.extend(crate::job_sources::warnings(j, &c, inventory));
        }
    }
    for w in &out {
        tracing::warn!("job {}: {w}", j.name);
    }
    Ok(out)
}

/// Create a job.
#[utoipa::path(post, path = "/jobs", request_body = Job, responses(
    (status = 200, description = "the job, with warnings about sources its computers lack", body = JobDetail),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 409, response = Conflict), (status = 422, response = Invalid),
))]
pub(crate) async fn create_job(c: Caller, State(s): State<S>, Input(j): Input<Job>) -> ApiResult<JobDetail> {
    c.admin()?;
    check_job(&s, &j).await?;
    store::insert_job(&s.core.db, &j).await?;
    let warnings = source_warnings(&s, &j).await?;
    Ok(Json(job_answer(&c, &s, &j.name, Some(warnings)).await?))
}

/// Replace a job's settings whole (PATCH changes only some).
#[utoipa::path(put, path = "/jobs/{name}", params(("name" = String, Path)), request_body = Job, responses(
    (status = 200, description = "the job, with warnings about sources its computers lack", body = JobDetail),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 404, response = NotFound), (status = 422, response = Invalid),
))]
pub(crate) async fn update_job(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(j): Input<Job>,
) -> ApiResult<JobDetail> {
    c.admin()?;
    if j.name != name {
        return Err(bad(format!("the body names job {:?}, the path {name:?}", j.name)));
    }
    check_job(&s, &j).await?;
    if !store::update_job(&s.core.db, &j).await? {
        return Err(missing("job", &name));
    }
    let warnings = source_warnings(&s, &j).await?;
    Ok(Json(job_answer(&c, &s, &j.name, Some(warnings)).await?))
}

/// Change the settings the body names and keep the others.
///
/// `null` puts a setting back to its default (no schedule, no window…); retention and retries
/// merge field by field; the name cannot change ([`crate::job_update`]).
#[utoipa::path(patch, path = "/jobs/{name}", params(("name" = String, Path)), request_body = crate::job_update::JobChange, responses(
    (status = 200, description = "the job, with warnings about sources its computers lack", body = JobDetail),
    (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden), (status = 404, response = NotFound), (status = 422, response = Invalid),
))]
async fn change_job(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(change): Input<crate::job_update::JobChange>,
) -> ApiResult<JobDetail> {
    c.admin()?;
    let current = store::job(&s.core.db, &name).await?.ok_or_else(|| missing("job", &name))?.job;
    let j = crate::job_update::JobUpdate::parse(Value::Object(change.0), &current)
        .and_then(|u| u.apply(&current))
        .map_err(bad)?;
    check_job(&s, &j).await?;
    if !store::update_job(&s.core.db, &j).await? {
        return Err(missing("job", &name));
    }
    let warnings = source_warnings(&s, &j).await?;
    Ok(Json(job_answer(&c, &s, &j.name, Some(warnings)).await?))
}

/// Delete a job (not while it runs); its restore points stay.
#[utoipa::path(delete, path = "/jobs/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "deleted", body = Deleted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
pub(crate) async fn delete_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<Deleted> {
    c.admin()?;
    if let Some(id) = store::running_session(&s.core.db, &name).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("job {name} is running (session {id}); stop it first")));
    }
    if !store::delete_row(&s.core.db, "jobs", &name).await? {
        return Err(missing("job", &name));
    }
    // Its chains (and their points) stay; a new job of the same name must not prune them.
    store::release_chains(&s.core.db, &name).await?;
    Ok(Json(Deleted { deleted: name }))
}

/// Start a session of the job now.
#[utoipa::path(post, path = "/jobs/{name}/start", params(("name" = String, Path)), responses(
    (status = 200, description = "the session with its tasks", body = Option<SessionRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict), (status = 422, response = Invalid),
))]
pub(crate) async fn start_job(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
) -> ApiResult<Option<SessionRow>> {
    c.admin()?;
    if store::job(&s.core.db, &name).await?.is_none() {
        return Err(missing("job", &name));
    }
    started(&s, s.core.start_session(&name).await).await
}

/// A session just opened, as an answer; or why it was not.
async fn started(s: &AppState, opened: Result<String, crate::session::StartError>) -> ApiResult<Option<SessionRow>> {
    use crate::session::StartError;
    match opened {
        Ok(id) => Ok(Json(store::session_with(&s.core.db, &id, true).await?)),
        Err(e @ (StartError::AlreadyRunning { .. } | StartError::Disabled(_))) => {
            Err(ApiError(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e @ StartError::NoJob(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ StartError::Refused(_)) => Err(bad(e.to_string())),
        Err(StartError::Db(e)) => Err(e.into()),
    }
}

/// Run the job again for the computers its last session did not back up (failed, stopped or
/// cancelled), each with a first try of its own; 409 when the last session left none.
#[utoipa::path(post, path = "/jobs/{name}/retry", params(("name" = String, Path)), responses(
    (status = 200, description = "the session with its tasks", body = Option<SessionRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict), (status = 422, response = Invalid),
))]
pub(crate) async fn retry_job(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
) -> ApiResult<Option<SessionRow>> {
    c.admin()?;
    if store::job(&s.core.db, &name).await?.is_none() {
        return Err(missing("job", &name));
    }
    let nothing = |why: String| ApiError(StatusCode::CONFLICT, why);
    let last = store::last_session(&s.core.db, &name)
        .await?
        .ok_or_else(|| nothing(format!("job {name} never ran: start it instead")))?;
    if last.status == SessionStatus::Running {
        return Err(nothing(format!("job {name} is running (session {})", last.id)));
    }
    let tasks = store::tasks(&s.core.db, &last.id, false).await?;
    let mut failed: Vec<String> = crate::session::latest_attempts(&tasks)
        .into_iter()
        .filter(|(_, t)| !matches!(t.status, TaskStatus::Success | TaskStatus::Warning))
        .map(|(c, _)| c)
        .collect();
    failed.sort();
    if failed.is_empty() {
        return Err(nothing(format!("the last session of job {name} ({}) left no computer to retry", last.id)));
    }
    tracing::info!("job {name}: retry of {} asked by {}", failed.join(", "), c.name);
    started(&s, s.core.start_session_of(&name, Some(&failed)).await).await
}

/// Turn the job on: it runs on its schedule again, from its next run (the runs it missed while
/// off are not made up).
#[utoipa::path(post, path = "/jobs/{name}/enable", params(("name" = String, Path)), responses(
    (status = 200, description = "the job", body = JobDetail),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound),
))]
pub(crate) async fn enable_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<JobDetail> {
    set_enabled(c, &s, &name, true).await
}

/// Turn the job off: it no longer runs on its schedule or after another job, and cannot be
/// started; a session running now goes on (stop it to end it). Its points stay.
#[utoipa::path(post, path = "/jobs/{name}/disable", params(("name" = String, Path)), responses(
    (status = 200, description = "the job", body = JobDetail),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 404, response = NotFound),
))]
pub(crate) async fn disable_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<JobDetail> {
    set_enabled(c, &s, &name, false).await
}

async fn set_enabled(c: Caller, s: &AppState, name: &str, on: bool) -> ApiResult<JobDetail> {
    c.admin()?;
    if !store::set_job_enabled(&s.core.db, name, on).await? {
        return Err(missing("job", name));
    }
    tracing::info!("job {name} {} by {}", if on { "enabled" } else { "disabled" }, c.name);
    Ok(Json(job_answer(&c, s, name, None).await?))
}

/// Stop the job's running session.
#[utoipa::path(post, path = "/jobs/{name}/stop", params(("name" = String, Path)), responses(
    (status = 200, description = "the session with its tasks", body = Option<SessionRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden), (status = 409, response = Conflict),
))]
pub(crate) async fn stop_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult<Option<SessionRow>> {
    c.admin()?;
    let id = store::running_session(&s.core.db, &name)
        .await?
        .ok_or_else(|| ApiError(StatusCode::CONFLICT, format!("job {name} is not running")))?;
    s.core.stop_session(&id, &format!("stopped by {}", c.name)).await;
    Ok(Json(store::session_with(&s.core.db, &id, true).await?))
}

#[derive(serde::Deserialize, utoipa::IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionFilter {
    /// Only this job's sessions.
    pub(crate) job: Option<String>,
    /// Only sessions started at or after this time (RFC 3339).
    pub(crate) since: Option<String>,
    /// Only sessions with this result: running, success, warning or failed.
    pub(crate) status: Option<String>,
    /// At most this many (the newest).
    pub(crate) limit: Option<u32>,
    /// Skip this many of the newest first (pages of `limit`).
    #[serde(default)]
    pub(crate) offset: u32,
}

/// Sessions, newest first, each with the bytes its tasks sent (sent_bytes) and what failed or
/// warned (problem).
#[utoipa::path(get, path = "/sessions", params(SessionFilter), responses(
    (status = 200, description = "sessions", body = Vec<SessionRow>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_sessions(
    _c: Caller,
    State(s): State<S>,
    Query(f): Query<SessionFilter>,
) -> ApiResult<Vec<SessionRow>> {
    let since = match &f.since {
        Some(t) => Some(crate::db::stamp(
            t.parse::<jiff::Timestamp>().map_err(|e| bad(format!("since {t:?} is not a time (RFC 3339): {e}")))?,
        )),
        None => None,
    };
    let status = match &f.status {
        Some(st) => Some(st.parse::<SessionStatus>().map_err(bad)?),
        None => None,
    };
    let select = store::SessionSelect {
        job: f.job.as_deref(),
        since: since.as_deref(),
        status: status.map(SessionStatus::as_str),
        limit: f.limit,
        offset: f.offset,
    };
    let mut sessions = store::sessions(&s.core.db, &select).await?;
    for session in &mut sessions {
        let tasks = store::tasks(&s.core.db, &session.id, true).await?;
        session.sent_bytes = Some(crate::views::sent_bytes(&tasks));
        session.problem = Some(crate::views::session_problem(session, &tasks));
    }
    Ok(Json(sessions))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionView {
    /// Include each task's log and reports (`?logs=false` for a light poll).
    #[serde(default = "yes")]
    pub(crate) logs: bool,
}

fn yes() -> bool {
    true
}

/// A session with its tasks, their progress and (unless `?logs=false`) their logs.
#[utoipa::path(get, path = "/sessions/{id}", params(("id" = String, Path), SessionView), responses(
    (status = 200, description = "the session", body = SessionRow),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub(crate) async fn show_session(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<SessionView>,
) -> ApiResult<SessionRow> {
    let mut v = store::session_with(&s.core.db, &id, q.logs).await?.ok_or_else(|| missing("session", &id))?;
    let progress = s.core.progress.lock().expect("lock").clone();
    for t in v.tasks.iter_mut().flatten() {
        if let Some(log) = &mut t.log {
            hide_steps(&c, log);
        }
        if let Some(p) = progress.get(&t.id) {
            t.progress = Some(store::TaskProgress {
                total_bytes: p.total_bytes,
                read_bytes: p.read_bytes,
                sent_bytes: p.sent_bytes,
                rate_bytes_per_s: p.rate_bytes_per_s,
            });
        }
    }
    Ok(Json(v))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PointFilter {
    /// Only this computer's points.
    pub(crate) computer: Option<String>,
    /// Newest first (oldest first when absent).
    #[serde(default)]
    pub(crate) newest_first: bool,
    /// At most this many.
    pub(crate) limit: Option<u32>,
    /// After skipping this many.
    #[serde(default)]
    pub(crate) offset: u32,
}

/// Restore points in the catalog, oldest first, each with its consistency and snapshot, and its
/// health as the last check of its repository found it.
///
/// `health`: ok, damaged or null (never checked); `health_detail`; `verified_at`.
#[utoipa::path(get, path = "/points", params(PointFilter), responses(
    (status = 200, description = "points", body = Vec<PointRow>), (status = 401, response = Unauthorized),
))]
pub(crate) async fn list_points(
    _c: Caller,
    State(s): State<S>,
    Query(f): Query<PointFilter>,
) -> ApiResult<Vec<PointRow>> {
    let window = store::Window { newest_first: f.newest_first, limit: f.limit, offset: f.offset };
    Ok(Json(store::points(&s.core.db, f.computer.as_deref(), window).await?))
}

/// A catalog point and its manifest.
#[utoipa::path(get, path = "/points/{id}", params(("id" = String, Path)), responses(
    (status = 200, description = "the point", body = PointRow),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub(crate) async fn show_point(_c: Caller, State(s): State<S>, Path(id): Path<String>) -> ApiResult<PointRow> {
    Ok(Json(store::point_detail(&s.core.db, &id).await?.ok_or_else(|| missing("restore point", &id))?))
}

/// Restore a catalog point onto a computer (its own by default).
///
/// Through a data mover that serves only that point; the restore waits for a slot like a
/// backup. Answers when the restore has ended.
#[utoipa::path(post, path = "/points/{id}/restore", params(("id" = String, Path)), request_body = RestoreInput,
    responses(
        (status = 200, description = "how the restore ended", body = RestoreOutcome),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = NotFound), (status = 422, response = Invalid),
    )
)]
async fn restore_point(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Input(r): Input<RestoreInput>,
) -> ApiResult<RestoreOutcome> {
    let started = begin_restore(&c, &s, &id, r).await?;
    let StartedRestore { session, task, computer, target } = started;
    let ended = loop {
        match store::task(&s.core.db, &task).await? {
            Some(t) if !t.status.is_open() => break t,
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            None => return Err(missing("restore task", &task)),
        }
    };
    tracing::info!("restore of {id} to {computer}:{target}: {}", ended.status);
    let report = ended.log.as_ref().and_then(|l| l["reports"].get(0).cloned());
    Ok(Json(RestoreOutcome {
        session,
        task,
        point: id,
        computer,
        target,
        status: ended.status,
        error: ended.error,
        failure: ended.failure,
        report,
    }))
}

/// A restore begun: its session and task, where it goes.
pub(crate) struct StartedRestore {
    pub session: String,
    pub task: String,
    pub computer: String,
    pub target: String,
}

/// Checks a restore order and queues it (the API then waits for its end; the console follows
/// its session).
pub(crate) async fn begin_restore(
    c: &Caller,
    s: &AppState,
    id: &str,
    r: RestoreInput,
) -> Result<StartedRestore, ApiError> {
    c.may_restore()?;
    let id = id.to_string();
    let (repository, computer, name) =
        store::point(&s.core.db, &id).await?.ok_or_else(|| missing("restore point", &id))?;
    let computer = r.computer.unwrap_or(computer);
    if !r.target.starts_with('/') {
        return Err(bad(format!("restore target {:?} must be an absolute path", r.target)));
    }
    match store::node(&s.core.db, "agent", &computer).await? {
        None => return Err(bad(format!("no computer {computer:?} has joined"))),
        Some(n) if n.revoked => return Err(bad(format!("computer {computer} was removed"))),
        Some(_) => {}
    }
    let order = crate::task_driver::RestoreOrder {
        point: id.clone(),
        name,
        target: r.target.clone(),
        overwrite: r.overwrite,
        paths: r.paths,
        safe: r.safe,
        volume: r.volume,
    };
    // The restore waits for a slot on the repository and the computer like a backup (ahead of
    // them); the caller hears when it has ended. One who hangs up does not stop it.
    let (session, task) = s.core.start_restore(&computer, &repository, order).await.map_err(|e| match e {
        crate::session::StartError::Db(e) => e.into(),
        e => bad(e.to_string()),
    })?;
    Ok(StartedRestore { session, task, computer, target: r.target })
}

/// This document: the API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", security(()), responses(
    (status = 200, description = "the document", body = Object),
))]
async fn openapi(axum::Extension(Document(doc)): axum::Extension<Document>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc)
}
