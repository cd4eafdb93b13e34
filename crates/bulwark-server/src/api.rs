//! The REST API under `/api/v1` (described by `/api/v1/openapi.json`). Every call but login
//! carries `Authorization: Bearer TOKEN`; reads need any user, changes an admin. Bad input —
//! unknown fields, wrong types, absurd values, unknown names — gets a 4xx with a message and
//! changes nothing.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bulwark_proto::pb::RepositoryInit;
use bulwark_proto::pki::{Ca, JoinToken, Role};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::backup_manager::BackupManager;
use crate::db::DbError;
use crate::model::{
    check_name, check_password, parse_lifetime, ApiTokenRequest, GroupInput, Job, Login, PasswordChange,
    RepositoryInput, RepositoryUpdate, RestoreInput, SecretInput, TokenRequest, UserInput,
};
use crate::registration::Grant;
use crate::store;
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

/// An error for the caller: a status and a message (as `{"error": …}`).
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
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

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
}

fn missing(what: &str, name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no {what} {name:?}"))
}

type ApiResult = Result<Json<Value>, ApiError>;

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

    fn admin(&self) -> Result<(), ApiError> {
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

pub fn router(state: S) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/login", post(login))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", delete(delete_user))
        .route("/api/v1/users/{name}/password", put(change_password))
        .route("/api/v1/tokens", get(list_tokens).post(create_join_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/api-tokens", post(create_api_token))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/computers", get(|c: Caller, s: State<S>| list_nodes(c, s, "agent")))
        .route(
            "/api/v1/computers/{name}",
            get(show_computer).delete(|c: Caller, s: State<S>, n: Path<String>| remove_node(c, s, n, "agent")),
        )
        .route(
            "/api/v1/computers/{name}/readmit",
            post(|c: Caller, s: State<S>, n: Path<String>| readmit(c, s, n, "agent")),
        )
        .route("/api/v1/transports", get(|c: Caller, s: State<S>| list_nodes(c, s, "transport")))
        .route(
            "/api/v1/transports/{name}",
            delete(|c: Caller, s: State<S>, n: Path<String>| remove_node(c, s, n, "transport")),
        )
        .route(
            "/api/v1/transports/{name}/readmit",
            post(|c: Caller, s: State<S>, n: Path<String>| readmit(c, s, n, "transport")),
        )
        .route("/api/v1/repositories", get(list_repositories).post(create_repository))
        .route("/api/v1/repositories/{name}", get(show_repository).patch(update_repository).delete(delete_repository))
        .route("/api/v1/repositories/{name}/verify", post(verify_repository))
        .route("/api/v1/secrets", get(list_secrets))
        .route("/api/v1/secrets/{name}", put(set_secret).delete(delete_secret))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}", get(show_group).put(update_group).delete(delete_group))
        .route("/api/v1/jobs", get(list_jobs).post(create_job))
        .route("/api/v1/jobs/{name}", get(show_job).put(update_job).patch(change_job).delete(delete_job))
        .route("/api/v1/jobs/{name}/start", post(start_job))
        .route("/api/v1/jobs/{name}/stop", post(stop_job))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}", get(show_session))
        .route("/api/v1/points", get(list_points))
        .route("/api/v1/points/{id}", get(show_point))
        .route("/api/v1/points/{id}/restore", post(restore_point))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API path (see /api/v1/openapi.json)".into()) })
        .with_state(state)
}

/// The client's address, when the request came through our TLS listener.
fn client_ip(peer: &Option<axum::Extension<bulwark_proto::tls::PeerInfo>>) -> Option<std::net::IpAddr> {
    peer.as_ref().map(|p| p.remote.ip())
}

async fn login(
    State(s): State<S>,
    peer: Option<axum::Extension<bulwark_proto::tls::PeerInfo>>,
    Input(l): Input<Login>,
) -> ApiResult {
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
    Ok(Json(json!({ "token": token, "id": id, "expires": expires })))
}

/// How long a login's token lasts.
const LOGIN_TOKEN_SECONDS: i64 = 12 * 3600;
/// Default lifetimes of created tokens.
const API_TOKEN_DEFAULT: &str = "90d";
const JOIN_TOKEN_DEFAULT: &str = "7d";

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::server::hash_password(&password)).await.map_err(|e| bad(e.to_string()))
}

async fn whoami(c: Caller) -> ApiResult {
    Ok(Json(json!({ "name": c.name, "role": c.role, "token": c.token })))
}

async fn list_users(c: Caller, State(s): State<S>) -> ApiResult {
    c.admin()?;
    Ok(Json(Value::Array(store::users(&s.core.db).await?)))
}

async fn create_user(c: Caller, State(s): State<S>, Input(u): Input<UserInput>) -> ApiResult {
    c.admin()?;
    check_name("user", &u.name).map_err(bad)?;
    if !matches!(u.role.as_str(), "admin" | "viewer") {
        return Err(bad(format!("role {:?}: admin or viewer", u.role)));
    }
    check_password(&u.password).map_err(bad)?;
    store::create_user(&s.core.db, &u.name, &hash(u.password).await?, &u.role).await?;
    Ok(Json(json!({ "name": u.name, "role": u.role })))
}

/// Users change their own password (giving the current one); admins anyone's. The user's
/// other login tokens are revoked.
async fn change_password(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    peer: Option<axum::Extension<bulwark_proto::tls::PeerInfo>>,
    Input(p): Input<PasswordChange>,
) -> ApiResult {
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
    Ok(Json(json!({ "name": name, "changed": true })))
}

async fn delete_user(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    c.admin()?;
    match store::delete_user(&s.core.db, &name).await? {
        store::UserDeletion::Deleted => {
            tracing::info!("user {name} deleted by {}", c.name);
            Ok(Json(json!({ "deleted": name })))
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

async fn create_api_token(c: Caller, State(s): State<S>, Input(t): Input<ApiTokenRequest>) -> ApiResult {
    let name = t.name.unwrap_or_else(|| "created".into());
    check_name("token", &name).map_err(bad)?;
    let expires = lifetime(t.expires.as_deref(), API_TOKEN_DEFAULT)?;
    let (id, token) = store::create_api_token(&s.core.db, &c.user_id, &name, expires.clone()).await?;
    tracing::info!("API token {id} ({name}) created for user {}", c.name);
    Ok(Json(json!({ "token": token, "id": id, "kind": "api", "user": c.name, "name": name, "expires": expires })))
}

async fn create_join_token(c: Caller, State(s): State<S>, Input(t): Input<TokenRequest>) -> ApiResult {
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
    Ok(Json(json!({
        "token": token.to_string(), "id": id, "kind": "join", "role": t.role, "name": t.name,
        "replace": t.replace, "expires": expires,
    })))
}

/// API tokens (an admin's listing has everyone's and the unused join tokens).
async fn list_tokens(c: Caller, State(s): State<S>) -> ApiResult {
    let mine = (!c.is_admin()).then_some(c.user_id.as_str());
    Ok(Json(Value::Array(store::tokens(&s.core.db, mine, c.is_admin()).await?)))
}

/// Revokes a token by its id: users their own API tokens, admins any token.
async fn revoke_token(c: Caller, State(s): State<S>, Path(id): Path<String>) -> ApiResult {
    let mine = (!c.is_admin()).then_some(c.user_id.as_str());
    if !store::revoke_token(&s.core.db, &id, mine, c.is_admin()).await? {
        return Err(missing("token", &id));
    }
    tracing::info!("token {id} revoked by {}", c.name);
    Ok(Json(json!({ "revoked": id })))
}

/// Joined nodes; computers with whether they answer now (asked all at once, as `computer show`
/// asks one), so that both say the same.
async fn list_nodes(_c: Caller, State(s): State<S>, role: &str) -> ApiResult {
    let mut nodes = store::nodes(&s.core.db, role).await?;
    if role == "agent" {
        let mut asks = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate().filter(|(_, n)| !n.revoked) {
            let (s, node) = (s.clone(), n.address());
            asks.spawn(async move { (i, refresh_inventory(&s, &node).await) });
        }
        while let Some(Ok((i, inventory))) = asks.join_next().await {
            nodes[i].online = Some(inventory?.is_some());
        }
        for n in nodes.iter_mut().filter(|n| n.revoked) {
            n.online = Some(false);
        }
    }
    Ok(Json(json!(nodes)))
}

/// The computer's inventory, asked afresh and stored; `None` when it does not answer soon.
async fn refresh_inventory(s: &AppState, node: &NodeAddress) -> Result<Option<Value>, ApiError> {
    let ask = tokio::time::timeout(std::time::Duration::from_secs(5), s.core.manager.inventory(node)).await;
    let Ok(Ok(inventory)) = ask else { return Ok(None) };
    store::set_inventory(&s.core.db, &node.name, &inventory).await?;
    Ok(Some(inventory))
}

async fn show_computer(_c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    let mut n = store::node(&s.core.db, "agent", &name).await?.ok_or_else(|| missing("computer", &name))?;
    // Fresh inventory when the agent answers; the last one known otherwise.
    // A removed computer's certificate is revoked: it could not answer.
    let fresh = if n.revoked { None } else { refresh_inventory(&s, &n.address()).await? };
    n.online = Some(fresh.is_some());
    if let Some(inventory) = fresh {
        n.inventory = Some(inventory);
    }
    Ok(Json(json!(n)))
}

fn node_noun(role: &str) -> &'static str {
    if role == "agent" {
        "computer"
    } else {
        "transport node"
    }
}

/// A removed node's name may join again, with a token made for that name.
async fn readmit(c: Caller, State(s): State<S>, Path(name): Path<String>, role: &str) -> ApiResult {
    c.admin()?;
    match store::readmit_node(&s.core.db, role, &name).await? {
        Some(true) => {
            tracing::info!("{role} {name} readmitted by {}", c.name);
            Ok(Json(json!({ "readmitted": name, "role": role })))
        }
        Some(false) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("{} {name} has not been removed: nothing to readmit", node_noun(role)),
        )),
        None => Err(missing(node_noun(role), &name)),
    }
}

/// Removing a computer or transport node revokes its certificate everywhere; restore points
/// stay.
async fn remove_node(c: Caller, State(s): State<S>, Path(name): Path<String>, role: &str) -> ApiResult {
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
    Ok(Json(json!({ "removed": name })))
}

/// Secrets for jobs' commands: admins set and delete them, nobody reads a value back.
async fn list_secrets(c: Caller, State(s): State<S>) -> ApiResult {
    c.admin()?;
    Ok(Json(Value::Array(store::secret_names(&s.core.db).await?)))
}

async fn set_secret(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(v): Input<SecretInput>,
) -> ApiResult {
    c.admin()?;
    crate::model::check_secret_name(&name).map_err(bad)?;
    if v.value.is_empty() || v.value.len() > 65_536 {
        return Err(bad("a secret's value holds 1 to 65536 bytes"));
    }
    store::set_secret(&s.core.db, &name, &v.value).await?;
    Ok(Json(json!({"name": name, "variable": crate::model::secret_variable(&name)})))
}

async fn delete_secret(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    c.admin()?;
    if !store::delete_row(&s.core.db, "secrets", &name).await? {
        return Err(missing("secret", &name));
    }
    Ok(Json(json!({"deleted": name})))
}

async fn list_repositories(_c: Caller, State(s): State<S>) -> ApiResult {
    Ok(Json(json!(store::repositories(&s.core.db).await?)))
}

async fn show_repository(_c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(json!(store::repository(&s.core.db, &name).await?.ok_or_else(|| missing("repository", &name))?)))
}

/// Creates the repository on its transport node (or checks the one there), then records it.
async fn create_repository(c: Caller, State(s): State<S>, Input(r): Input<RepositoryInput>) -> ApiResult {
    c.admin()?;
    r.validate().map_err(bad)?;
    if store::repository(&s.core.db, &r.name).await?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("repository {} already exists", r.name)));
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
    store::insert_repository(&s.core.db, &r).await?;
    let mut v = store::repository(&s.core.db, &r.name).await?.ok_or_else(|| missing("repository", &r.name))?;
    v.created_on_disk = Some(info.created);
    Ok(Json(json!(v)))
}

async fn update_repository(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(u): Input<RepositoryUpdate>,
) -> ApiResult {
    c.admin()?;
    u.validate().map_err(bad)?;
    if !store::update_repository(&s.core.db, &name, &u).await? {
        return Err(missing("repository", &name));
    }
    show_repository(c, State(s), Path(name)).await
}

async fn delete_repository(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
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
    if !store::delete_row(&s.core.db, "repositories", &name).await? {
        return Err(missing("repository", &name));
    }
    Ok(Json(json!({ "deleted": name, "note": "the repository's files stay on its transport node" })))
}

/// The repository's health check, on its transport node; the catalog records each point's
/// health. Answers when the check has ended (`ok: false` when damage was found).
async fn verify_repository(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
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
        Ok(h) => Ok(Json(serde_json::to_value(h).unwrap_or_default())),
        Err(e @ HealthError::NoRepository(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ HealthError::Running(_)) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e @ HealthError::NoTransport(_)) => Err(bad(e.to_string())),
        Err(e @ (HealthError::Node { .. } | HealthError::Report { .. })) => {
            Err(ApiError(StatusCode::BAD_GATEWAY, e.to_string()))
        }
        Err(HealthError::Db(e)) => Err(e.into()),
    }
}

async fn list_groups(_c: Caller, State(s): State<S>) -> ApiResult {
    Ok(Json(Value::Array(store::groups(&s.core.db).await?)))
}

async fn create_group(c: Caller, State(s): State<S>, Input(g): Input<GroupInput>) -> ApiResult {
    c.admin()?;
    check_name("group", &g.name).map_err(bad)?;
    if g.computers.is_empty() {
        return Err(bad("a group needs at least one computer"));
    }
    for m in &g.computers {
        bulwark_proto::pki::validate_node_name(m).map_err(bad)?;
    }
    store::insert_group(&s.core.db, &g.name, &g.computers).await?;
    Ok(Json(json!({ "name": g.name, "computers": g.computers })))
}

async fn show_group(_c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    let members = store::group_members(&s.core.db, &name).await?.ok_or_else(|| missing("group", &name))?;
    Ok(Json(json!({ "name": name, "computers": members })))
}

async fn update_group(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(g): Input<GroupInput>,
) -> ApiResult {
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
    Ok(Json(json!({ "name": name, "computers": g.computers })))
}

async fn delete_group(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    c.admin()?;
    let users = store::jobs_using(&s.core.db, "group", &name).await?;
    if !users.is_empty() {
        return Err(ApiError(StatusCode::CONFLICT, format!("group {name} is used by job(s) {}", users.join(", "))));
    }
    if !store::delete_row(&s.core.db, "groups", &name).await? {
        return Err(missing("group", &name));
    }
    Ok(Json(json!({ "deleted": name })))
}

/// A job refers to objects that exist.
async fn check_job(s: &AppState, j: &Job) -> Result<(), ApiError> {
    j.validate().map_err(bad)?;
    if store::repository(&s.core.db, &j.repository).await?.is_none() {
        return Err(bad(format!("no repository {:?}", j.repository)));
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
fn job_for(c: &Caller, job: &Job) -> Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    if !c.is_admin() {
        for k in ["pre_command", "post_command"] {
            if !v[k].is_null() {
                v[k] = json!("(hidden)");
            }
        }
    }
    v
}

/// A task's log without the lines of its pre and post steps, for viewers (see [`job_for`]).
fn hide_steps(c: &Caller, log: &mut Value) {
    if c.is_admin() {
        return;
    }
    if let Some(lines) = log["lines"].as_array_mut() {
        lines.retain(|l| !l.as_str().is_some_and(|l| l.starts_with("pre-step") || l.starts_with("post-step")));
    }
}

/// A job as readers see it: its settings, when it was created, its last session (null if it
/// never ran) and when it next starts on its own (null: by hand or after another job).
fn job_view(c: &Caller, row: &store::JobRow, last_session: Option<store::SessionRow>, now: jiff::Timestamp) -> Value {
    let mut v = job_for(c, &row.job);
    v["created"] = json!(row.created);
    v["last_session"] = json!(last_session);
    v["next_run"] = crate::views::next_run(&row.job, &row.created, now);
    v
}

async fn list_jobs(c: Caller, State(s): State<S>) -> ApiResult {
    let jobs = store::jobs(&s.core.db).await?;
    // Newest first: the first of each job is its last.
    let sessions = store::sessions(&s.core.db, None).await?;
    let now = s.core.clock.now();
    let last = |name: &str| sessions.iter().find(|x| x.job == name).cloned();
    Ok(Json(Value::Array(jobs.iter().map(|j| job_view(&c, j, last(&j.job.name), now)).collect())))
}

async fn show_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(job_answer(&c, &s, &name, None).await?))
}

/// A job as [`job_view`] has it, with `warnings` about its sources when given.
async fn job_answer(c: &Caller, s: &AppState, name: &str, warnings: Option<Vec<String>>) -> Result<Value, ApiError> {
    let j = store::job(&s.core.db, name).await?.ok_or_else(|| missing("job", name))?;
    let last = store::last_session(&s.core.db, name).await?;
    let mut v = job_view(c, &j, last, s.core.clock.now());
    if let Some(w) = warnings {
        v["warnings"] = json!(w);
    }
    Ok(v)
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

async fn create_job(c: Caller, State(s): State<S>, Input(j): Input<Job>) -> ApiResult {
    c.admin()?;
    check_job(&s, &j).await?;
    store::insert_job(&s.core.db, &j).await?;
    let warnings = source_warnings(&s, &j).await?;
    Ok(Json(job_answer(&c, &s, &j.name, Some(warnings)).await?))
}

/// Replaces a job's settings whole (PATCH changes only some).
async fn update_job(c: Caller, State(s): State<S>, Path(name): Path<String>, Input(j): Input<Job>) -> ApiResult {
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

/// Changes the settings the body names and keeps the others ([`crate::job_update`]).
async fn change_job(c: Caller, State(s): State<S>, Path(name): Path<String>, Input(change): Input<Value>) -> ApiResult {
    c.admin()?;
    let current = store::job(&s.core.db, &name).await?.ok_or_else(|| missing("job", &name))?.job;
    let j = crate::job_update::JobUpdate::parse(change, &current).and_then(|u| u.apply(&current)).map_err(bad)?;
    check_job(&s, &j).await?;
    if !store::update_job(&s.core.db, &j).await? {
        return Err(missing("job", &name));
    }
    let warnings = source_warnings(&s, &j).await?;
    Ok(Json(job_answer(&c, &s, &j.name, Some(warnings)).await?))
}

async fn delete_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    c.admin()?;
    if let Some(id) = store::running_session(&s.core.db, &name).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("job {name} is running (session {id}); stop it first")));
    }
    if !store::delete_row(&s.core.db, "jobs", &name).await? {
        return Err(missing("job", &name));
    }
    // Its chains (and their points) stay; a new job of the same name must not prune them.
    store::release_chains(&s.core.db, &name).await?;
    Ok(Json(json!({ "deleted": name })))
}

async fn start_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    c.admin()?;
    if store::job(&s.core.db, &name).await?.is_none() {
        return Err(missing("job", &name));
    }
    use crate::session::StartError;
    match s.core.start_session(&name).await {
        Ok(id) => Ok(Json(json!(store::session_with(&s.core.db, &id, true).await?))),
        Err(e @ StartError::AlreadyRunning { .. }) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e @ StartError::NoJob(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ StartError::Refused(_)) => Err(bad(e.to_string())),
        Err(StartError::Db(e)) => Err(e.into()),
    }
}

async fn stop_job(c: Caller, State(s): State<S>, Path(name): Path<String>) -> ApiResult {
    c.admin()?;
    let id = store::running_session(&s.core.db, &name)
        .await?
        .ok_or_else(|| ApiError(StatusCode::CONFLICT, format!("job {name} is not running")))?;
    s.core.stop_session(&id, &format!("stopped by {}", c.name)).await;
    Ok(Json(json!(store::session_with(&s.core.db, &id, true).await?)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFilter {
    job: Option<String>,
}

/// Sessions, newest first, each with the bytes its tasks sent and what went wrong or warned.
async fn list_sessions(_c: Caller, State(s): State<S>, Query(f): Query<SessionFilter>) -> ApiResult {
    let mut sessions = store::sessions(&s.core.db, f.job.as_deref()).await?;
    for session in &mut sessions {
        let tasks = store::tasks(&s.core.db, &session.id, true).await?;
        session.sent_bytes = Some(crate::views::sent_bytes(&tasks));
        session.problem = Some(crate::views::session_problem(session, &tasks));
    }
    Ok(Json(json!(sessions)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionView {
    /// Include each task's log and reports (`?logs=false` for a light poll).
    #[serde(default = "yes")]
    logs: bool,
}

fn yes() -> bool {
    true
}

async fn show_session(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<SessionView>,
) -> ApiResult {
    let mut v = store::session_with(&s.core.db, &id, q.logs).await?.ok_or_else(|| missing("session", &id))?;
    let progress = s.core.progress.lock().expect("lock").clone();
    for t in v.tasks.iter_mut().flatten() {
        if let Some(log) = &mut t.log {
            hide_steps(&c, log);
        }
        if let Some(p) = progress.get(&t.id) {
            t.progress = Some(json!({
                "total_bytes": p.total_bytes, "read_bytes": p.read_bytes,
                "sent_bytes": p.sent_bytes, "rate_bytes_per_s": p.rate_bytes_per_s,
            }));
        }
    }
    Ok(Json(json!(v)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PointFilter {
    computer: Option<String>,
}

/// Catalog points, oldest first, each with how consistent its data is (from its manifest).
async fn list_points(_c: Caller, State(s): State<S>, Query(f): Query<PointFilter>) -> ApiResult {
    Ok(Json(json!(store::points(&s.core.db, f.computer.as_deref()).await?)))
}

async fn show_point(_c: Caller, State(s): State<S>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(store::point_detail(&s.core.db, &id).await?.ok_or_else(|| missing("restore point", &id))?)))
}

/// Restores a catalog point onto a computer (its own by default), through a data mover that
/// serves only that point. Answers when the restore has ended.
async fn restore_point(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Input(r): Input<RestoreInput>,
) -> ApiResult {
    c.admin()?;
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
    };
    // The restore waits for a slot on the repository and the computer like a backup (ahead of
    // them); the caller hears when it has ended. One who hangs up does not stop it.
    let (session, task) = s.core.start_restore(&computer, &repository, order).await.map_err(|e| match e {
        crate::session::StartError::Db(e) => e.into(),
        e => bad(e.to_string()),
    })?;
    let ended = loop {
        match store::task(&s.core.db, &task).await? {
            Some(t) if !t.status.is_open() => break t,
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            None => return Err(missing("restore task", &task)),
        }
    };
    tracing::info!("restore of {id} to {computer}:{}: {}", r.target, ended.status);
    let report = ended.log.as_ref().and_then(|l| l["reports"].get(0).cloned());
    Ok(Json(json!({
        "session": session, "task": task, "point": id, "computer": computer, "target": r.target,
        "status": ended.status, "error": ended.error, "failure": ended.failure, "report": report,
    })))
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}
