//! The API's OpenAPI 3.1 description, served at `/api/v1/openapi.json`. Nobody writes it: each
//! handler in `api` carries its method, path, parameters, body and answers in `#[utoipa::path]`,
//! and `api::router` registers every handler through utoipa-axum's `routes!`, which routes it
//! and adds its operation (and the schemas of the types it names) to the document — one list
//! for both, so the document cannot leave out a route or describe one that is not there. The
//! test below holds the served router against the served document.
//!
//! This module adds what is the same for every operation (the title, the base path, bearer
//! authentication, the error answers) and the schemas of the job model's words, whose types
//! live in crates that know nothing of HTTP.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use crate::api::ApiErrorBody;

/// Where the API is served; the document's paths are relative to it.
pub const BASE: &str = "/api/v1";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulwark backup server",
        description = "Users, tokens, computers and transport nodes, repositories, protection groups, \
                       jobs, their sessions and restore points. Every call but login (and this \
                       document) carries `Authorization: Bearer TOKEN`; reads need any user, changes \
                       an admin."
    ),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    components(
        schemas(ApiErrorBody),
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Invalid, TooManyLogins, NodeFailed,
            RangeNotSatisfiable
        )
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A token from POST /login (12 hours) or POST /api-tokens"))
            .build();
        doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// Error answers, shared by the operations that can give them: a status and `ApiErrorBody`.
macro_rules! error_answers {
    ($($name:ident = $description:literal;)+) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let body = ContentBuilder::new().schema(Some(Ref::from_schema_name(ApiErrorBody::name()))).build();
                let answer = ResponseBuilder::new().description($description).content("application/json", body);
                (stringify!($name), answer.build().into())
            }
        }
    )+};
}

error_answers! {
    BadRequest = "The body is not JSON, or not of the expected shape";
    Unauthorized = "No API token, or one that is unknown, revoked or expired";
    Forbidden = "The caller may only read (a viewer), may not read points' files (not a restore operator), or \
                 may not act on another user";
    NotFound = "No object of that name or id";
    Conflict = "The object exists already, is in use, or is not in a state that allows this";
    Invalid = "A value is refused (the message says which and why)";
    TooManyLogins = "Too many failed logins for the user or the address: try again later";
    NodeFailed = "The transport node or agent the call needed failed or did not answer";
    RangeNotSatisfiable = "The Range header asks for bytes the file does not have, or for several ranges";
}

/// Schemas of the job model's words. Their types live in bulwark-proto and bulwark-repo, which
/// should not depend on an API description library, so these stand-ins take the spellings from
/// the types themselves (`ALL`): a new variant is in the document without anyone editing it.
/// Fields of those types name them with `#[schema(value_type = …)]`.
macro_rules! spelled {
    ($($name:ident = $spellings:expr, $description:literal;)+) => {$(
        #[doc = $description]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let spellings: Vec<&str> = $spellings.collect();
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(spellings))
                    .description(Some($description))
                    .into()
            }
        }

        impl ToSchema for $name {}
    )+};
}

use bulwark_proto::domain;

spelled! {
    TaskStatus = domain::TaskStatus::ALL.iter().map(|v| v.as_str()),
        "Where a task is: waiting for a slot, running (holding one), or how it ended (warning: done, \
         with something the operator should read)";
    SessionStatus = domain::SessionStatus::ALL.iter().map(|v| v.as_str()),
        "A session: running, or how it ended (the worst of its computers' last attempts)";
    SessionKind = domain::SessionKind::ALL.iter().map(|v| v.as_str()),
        "What a session does: a job's backup (a task per computer) or one restore";
    Failure = domain::Failure::ALL.iter().map(|v| v.as_str()),
        "Whether a failure can go away by itself (transient: the job's retries apply) or fails the \
         same way until an operator changes something (permanent: not retried)";
    JobMode = domain::JobMode::ALL.iter().map(|v| v.as_str()),
        "What a job backs up: every whole disk (computer), block devices or images (volumes), \
         directories file by file (files)";
    SnapshotMode = domain::SnapshotMode::ALL.iter().map(|v| v.as_str()),
        "The snapshot the agent takes before reading";
    CbtMode = domain::CbtMode::ALL.iter().map(|v| v.as_str()),
        "Changed block tracking: how an incremental finds what changed";
    Compression = domain::Compression::ALL.iter().map(|v| v.name()),
        "Compression level of the repository's chunks";
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::{json, Value};
    use tower::ServiceExt;

    use super::*;
    use crate::api::{router, AppState};
    use crate::store;

    #[test]
    fn the_job_models_words_are_spelled_as_their_types_serialize() {
        fn spellings<T: ToSchema>() -> Value {
            serde_json::to_value(T::schema()).unwrap()["enum"].clone()
        }
        fn serialized<T: serde::Serialize>(all: &[T]) -> Value {
            serde_json::to_value(all).unwrap()
        }
        assert_eq!(spellings::<TaskStatus>(), serialized(domain::TaskStatus::ALL));
        assert_eq!(spellings::<SessionStatus>(), serialized(domain::SessionStatus::ALL));
        assert_eq!(spellings::<SessionKind>(), serialized(domain::SessionKind::ALL));
        assert_eq!(spellings::<Failure>(), serialized(domain::Failure::ALL));
        assert_eq!(spellings::<JobMode>(), serialized(domain::JobMode::ALL));
        assert_eq!(spellings::<SnapshotMode>(), serialized(domain::SnapshotMode::ALL));
        assert_eq!(spellings::<CbtMode>(), serialized(domain::CbtMode::ALL));
        assert_eq!(spellings::<Compression>(), serialized(&domain::Compression::ALL));
    }

    /// The methods a route can have (HEAD comes with GET, and is no operation of its own).
    const METHODS: [Method; 7] =
        [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS, Method::TRACE];

    /// The paths an axum router routes. axum has no public listing, but its `Debug` shows the
    /// path of every route however it was added (`routes!`, a plain `.route`, a merge or a
    /// nest), and the test asserts that the documented paths are among those found, so a
    /// change of that output fails the test instead of hiding routes.
    fn routed_paths(router: &axum::Router) -> BTreeSet<String> {
        let text = format!("{router:?}");
        text.split('"').skip(1).step_by(2).filter(|s| s.starts_with(BASE)).map(String::from).collect()
    }

    /// A path of the router with its parameters filled in.
    fn concrete(path: &str) -> String {
        path.split('/').map(|part| if part.starts_with('{') { "x" } else { part }).collect::<Vec<_>>().join("/")
    }

    async fn call(app: &axum::Router, method: &Method, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(concrete(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let answer = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = answer.status();
        let bytes = axum::body::to_bytes(answer.into_body(), 1 << 24).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A schema that says something: a reference, a type, or a composition.
    /// Whether an answer's content has a schema: JSON, or bytes (a file's content, an archive).
    fn has_schema(content: &Value) -> bool {
        ["application/json", "application/octet-stream", "application/x-tar"].iter().any(|t| {
            let schema = &content[*t]["schema"];
            ["$ref", "type", "allOf", "oneOf", "anyOf"].iter().any(|k| !schema[k].is_null())
        })
    }

    /// Holds the router the server runs against the document it serves, from the outside:
    /// - every path and method the router answers (anything but 405, found by trying each method
    ///   on each routed path) is an operation of the document, and every operation is routed: a
    ///   route added with a plain `.route(…)` instead of `routes!` fails here;
    /// - every operation has a 200 answer with a schema (JSON, or bytes for a file's content);
    /// - an operation that reads a JSON body (tried with an admin's token and no body: the body
    ///   extractor refuses it before the handler runs) has a request body schema, and one that
    ///   does not, none;
    /// - an operation refused without a token says so (bearer security), and one that is not,
    ///   does not.
    #[tokio::test]
    async fn the_document_describes_every_route_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let core = crate::job_scheduler::tests::manager(dir.path()).await;
        let admin = store::create_user(&core.db, "root", "not a hash", "admin").await.unwrap();
        let (_, token) = store::create_api_token(&core.db, &admin, "test", None).await.unwrap();
        let state = AppState {
            core,
            ca: Arc::new(bulwark_proto::pki::Ca::load_or_create(dir.path()).unwrap()),
            revoked: Default::default(),
            logins: tokio::sync::Semaphore::new(2),
            login_guard: crate::login_guard::LoginGuard::new(Default::default()),
            presence: Default::default(),
            usage: Default::default(),
        };
        let app = router(Arc::new(state));

        let (status, doc) = call(&app, &Method::GET, &format!("{BASE}/openapi.json"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["servers"][0]["url"], BASE);
        let mut documented: HashMap<(String, Method), &Value> = HashMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                documented.insert((format!("{BASE}{path}"), method), op);
            }
        }

        let paths = routed_paths(&app);
        for (path, _) in documented.keys() {
            assert!(paths.contains(path), "documented {path} is not routed (routed: {paths:?})");
        }
        let mut routed = BTreeSet::new();
        for path in &paths {
            for method in &METHODS {
                if call(&app, method, path, None).await.0 != StatusCode::METHOD_NOT_ALLOWED {
                    routed.insert((path.clone(), method.clone()));
                }
            }
        }
        let described: BTreeSet<_> = documented.keys().cloned().collect();
        let undocumented: Vec<_> = routed.difference(&described).collect();
        assert!(undocumented.is_empty(), "routed but not in the document: {undocumented:?}");
        let unrouted: Vec<_> = described.difference(&routed).collect();
        assert!(unrouted.is_empty(), "in the document but not routed: {unrouted:?}");

        for ((path, method), op) in &documented {
            let what = format!("{method} {path}");
            let ok = &op["responses"]["200"];
            assert!(has_schema(&ok["content"]), "{what}: no schema for its answer: {ok}");
            assert!(ok["description"].as_str().is_some_and(|d| !d.is_empty()), "{what}: 200 undescribed");
            for (status, answer) in op["responses"].as_object().unwrap() {
                if status != "200" {
                    let name = answer["$ref"].as_str().unwrap_or_default();
                    let shared =
                        name.strip_prefix("#/components/responses/").map(|n| &doc["components"]["responses"][n]);
                    let schema = shared.map(|r| &r["content"]["application/json"]["schema"]["$ref"]);
                    assert_eq!(schema, Some(&json!("#/components/schemas/ApiErrorBody")), "{what}: {status}: {answer}");
                }
            }

            let (status, answer) = call(&app, method, path, Some(&token)).await;
            let reads_body = status == StatusCode::BAD_REQUEST
                && answer["error"].as_str().is_some_and(|e| e.contains("Content-Type: application/json"));
            let body = &op["requestBody"];
            assert_eq!(reads_body, !body.is_null(), "{what}: reads a body? {answer}; documented: {body}");
            if reads_body {
                assert!(has_schema(&body["content"]), "{what}: no schema for its body: {body}");
                assert_eq!(body["required"], true, "{what}");
            }

            let refused = call(&app, method, path, None).await.0 == StatusCode::UNAUTHORIZED;
            let security = op.get("security").unwrap_or(&doc["security"]);
            let bearer = security.as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            assert_eq!(refused, bearer, "{what}: refused without a token? documented security: {security}");
            if refused {
                assert!(op["responses"]["401"].is_object(), "{what}: 401 undocumented");
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"],
            json!({
                "type": "http", "scheme": "bearer", "description": "A token from POST /login (12 hours) or POST /api-tokens"
            })
        );
    }
}
