//! The API's OpenAPI 3.1 description, served at `/api/v1/openapi.json`.

use serde_json::{json, Value};

fn op(summary: &str, body: Option<&str>, admin: bool) -> Value {
    let mut o = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "done", "content": {"application/json": {"schema": {}}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"}
        }
    });
    if admin {
        o["responses"]["403"] = json!({"$ref": "#/components/responses/Error"});
    }
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
    }
    o
}

fn name_param() -> Value {
    json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}])
}

pub fn document() -> Value {
    let s = |t: &str| json!({"type": t});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    // Schedules by the calendar or the clock: jobs and repositories' health checks.
    let timed = [
        json!({"type": "object", "properties": {"kind": {"const": "daily"}, "at": s("string"), "weekdays": strings}, "required": ["kind", "at"]}),
        json!({"type": "object", "properties": {"kind": {"const": "monthly"}, "day": {"type": "integer", "minimum": 1, "maximum": 31}, "at": s("string")}, "required": ["kind", "day", "at"]}),
        json!({"type": "object", "properties": {"kind": {"const": "periodic"}, "every_minutes": {"type": "integer", "minimum": 1}}, "required": ["kind", "every_minutes"]}),
    ];
    let verify_schedule = json!({"oneOf": [timed[0], timed[1], timed[2], {"type": "null"}], "description": "When the server checks the repository's health on its own (server's time zone); null: never"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Bulwark backup server", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "paths": {
            "/login": {"post": {"summary": "Trade a user's password for an API token valid 12 hours (repeated failures lock the user and the address out for a while: 429)", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Login"}}}}, "responses": {"200": {"description": "token, its id and expiry"}, "401": {"$ref": "#/components/responses/Error"}, "429": {"$ref": "#/components/responses/Error"}}}},
            "/whoami": {"get": op("The caller: user name, role, id of the token used", None, false)},
            "/users": {"get": op("Users and their roles", None, true), "post": op("Create a user", Some("UserInput"), true)},
            "/users/{name}": {"parameters": name_param(), "delete": op("Delete a user and their tokens (never the last admin)", None, true)},
            "/users/{name}/password": {"parameters": name_param(), "put": op("Change a password: one's own (with the current one) or, as an admin, anyone's; the user's other login tokens are revoked", Some("PasswordChange"), false)},
            "/tokens": {"get": op("API tokens (the caller's; an admin's: everyone's and the unused join tokens), by id, never the secrets", None, false), "post": op("Create a one-time join token for an agent or transport node: for one name or any new one", Some("TokenRequest"), true)},
            "/tokens/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "delete": op("Revoke a token (users: their own API tokens; admins: any)", None, false)},
            "/api-tokens": {"post": op("Create an API token for the caller", Some("ApiTokenRequest"), false)},
            "/computers/{name}/readmit": {"parameters": name_param(), "post": op("Let a removed computer's name join again", None, true)},
            "/transports/{name}": {"parameters": name_param(), "delete": op("Remove a transport node (revokes its certificate)", None, true)},
            "/transports/{name}/readmit": {"parameters": name_param(), "post": op("Let a removed transport node's name join again", None, true)},
            "/computers": {"get": op("Joined agents", None, false)},
            "/computers/{name}": {"parameters": name_param(), "get": op("A computer and its inventory", None, false), "delete": op("Remove a computer (revokes its certificate)", None, true)},
            "/transports": {"get": op("Joined transport nodes", None, false)},
            "/repositories": {"get": op("Repositories, with the schedule and outcome of their health checks (last_verify)", None, false), "post": op("Create (or adopt) a repository on a transport node", Some("RepositoryInput"), true)},
            "/repositories/{name}": {"parameters": name_param(), "get": op("A repository", None, false), "patch": op("Change a repository's task maximum or the schedule of its health check", Some("RepositoryUpdate"), true), "delete": op("Forget a repository (its files stay)", None, true)},
            "/repositories/{name}/verify": {"parameters": name_param(), "post": op("Health check: the repository's transport node re-reads and re-hashes every chunk its points reference; the catalog records each point's health (ok or damaged, with what is lost). Reports points the repository holds that the catalog does not know and catalog points whose manifest is gone. Answers when the check has ended; ok is false when damage was found (409: a check of this repository is running; 502: the transport node failed)", None, true)},
            "/secrets": {"get": op("Names of the secrets jobs' commands may use (never their values)", None, true)},
            "/secrets/{name}": {"parameters": name_param(), "put": op("Set a secret (sealed at rest; commands read it as BULWARK_SECRET_<NAME>)", Some("SecretInput"), true), "delete": op("Delete a secret", None, true)},
            "/groups": {"get": op("Protection groups", None, false), "post": op("Create a protection group", Some("GroupInput"), true)},
            "/groups/{name}": {"parameters": name_param(), "get": op("A protection group", None, false), "put": op("Replace a group's computers", Some("GroupInput"), true), "delete": op("Delete a protection group", None, true)},
            "/jobs": {"get": op("Jobs, each with its last session and next run", None, false), "post": op("Create a job (answers with warnings about sources its computers' inventories lack)", Some("Job"), true)},
            "/jobs/{name}": {"parameters": name_param(), "get": op("A job, its last session and its next run", None, false), "put": op("Replace a job's settings whole (answers with warnings about sources its computers' inventories lack)", Some("Job"), true), "patch": op("Change the job's fields given and keep the others: null puts a field back to its default (no schedule, no window…), retention and retries merge field by field; name cannot change (answers with warnings as PUT does)", Some("JobChange"), true), "delete": op("Delete a job", None, true)},
            "/jobs/{name}/start": {"parameters": name_param(), "post": op("Start a session now", None, true)},
            "/jobs/{name}/stop": {"parameters": name_param(), "post": op("Stop the running session", None, true)},
            "/sessions": {"get": {"summary": "Sessions, newest first, each with the bytes its tasks sent (sent_bytes) and what failed or warned (problem)", "parameters": [{"name": "job", "in": "query", "schema": {"type": "string"}}], "security": [{"bearer": []}], "responses": {"200": {"description": "sessions"}}}},
            "/sessions/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "get": op("A session with its tasks, their progress and (unless ?logs=false) their logs", None, false)},
            "/points/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "get": op("A catalog point and its manifest", None, false)},
            "/points/{id}/restore": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "post": op("Restore a catalog point onto a computer (answers when it has ended)", Some("RestoreInput"), true)},
            "/points": {"get": {"summary": "Restore points in the catalog, oldest first, each with its consistency and snapshot, and its health as the last check of its repository found it (health: ok, damaged or null for never checked; health_detail; verified_at)", "parameters": [{"name": "computer", "in": "query", "schema": {"type": "string"}}], "security": [{"bearer": []}], "responses": {"200": {"description": "points"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "what went wrong", "content": {"application/json": {"schema": {"type": "object", "required": ["error"], "properties": {"error": s("string")}}}}}},
            "schemas": {
                "Login": {"type": "object", "additionalProperties": false, "required": ["name", "password"], "properties": {"name": s("string"), "password": s("string")}},
                "UserInput": {"type": "object", "additionalProperties": false, "required": ["name", "password", "role"], "properties": {"name": s("string"), "password": {"type": "string", "minLength": 10}, "role": {"enum": ["admin", "viewer"]}}},
                "RestoreInput": {"type": "object", "additionalProperties": false, "required": ["target"], "properties": {"computer": s("string"), "target": s("string"), "overwrite": s("boolean"), "paths": strings, "safe": s("boolean")}},
                "TokenRequest": {"type": "object", "additionalProperties": false, "required": ["role"], "properties": {"role": {"enum": ["agent", "transport"]}, "name": s("string"), "any_name": s("boolean"), "replace": s("boolean"), "expires": {"type": "string", "description": "30m, 12h, 7d (default) or never"}}},
                "ApiTokenRequest": {"type": "object", "additionalProperties": false, "properties": {"name": s("string"), "expires": {"type": "string", "description": "30m, 12h, 90d (default) or never"}}},
                "PasswordChange": {"type": "object", "additionalProperties": false, "required": ["password"], "properties": {"password": {"type": "string", "minLength": 10}, "current": s("string")}},
                "RepositoryInput": {"type": "object", "additionalProperties": false, "required": ["name", "transport", "path"], "properties": {"name": s("string"), "transport": s("string"), "path": s("string"), "max_tasks": {"type": "integer", "minimum": 1, "maximum": 256, "default": 4}, "password": {"type": "string", "minLength": 8}, "isolation": {"enum": ["shared", "computer"], "default": "shared"}, "verify_schedule": verify_schedule}},
                "RepositoryUpdate": {"type": "object", "additionalProperties": false, "minProperties": 1, "properties": {"max_tasks": {"type": "integer", "minimum": 1, "maximum": 256}, "verify_schedule": verify_schedule}},
                "GroupInput": {"type": "object", "additionalProperties": false, "required": ["name", "computers"], "properties": {"name": s("string"), "computers": strings}},
                "Job": {"type": "object", "additionalProperties": false, "required": ["name", "repository"], "properties": {
                    "name": s("string"), "mode": {"enum": ["computer", "volumes", "files"]}, "computers": strings, "groups": strings,
                    "repository": s("string"), "sources": strings, "exclude": strings,
                    "block_size": {"enum": ["256K", "512K", "1M", "4M"]}, "compression": {"enum": ["none", "dedupe-friendly", "optimal", "high", "extreme"]},
                    "snapshot": {"enum": ["auto", "reflink", "btrfs", "lvm", "none"]}, "cbt": {"enum": ["auto", "extents", "none"]},
                    "schedule": {"oneOf": [
                        timed[0], timed[1], timed[2],
                        {"type": "object", "properties": {"kind": {"const": "after"}, "job": s("string")}, "required": ["kind", "job"]}
                    ]},
                    "window": {"type": "object", "properties": {"start": s("string"), "end": s("string")}, "required": ["start", "end"]},
                    "timezone": s("string"),
                    "retention": {"type": "object", "properties": {"keep_last": s("integer"), "keep_daily": s("integer"), "keep_weekly": s("integer"), "keep_monthly": s("integer")}},
                    "retries": {"type": "object", "properties": {"tries": {"type": "integer", "minimum": 1, "maximum": 10}, "delay_minutes": {"type": "integer", "minimum": 0, "maximum": 1440}}},
                    "throttle_mbps": {"type": "integer", "minimum": 0}, "priority": {"type": "integer", "minimum": -100, "maximum": 100},
                    "streams": {"type": "integer", "minimum": 1, "maximum": 16}, "pre_command": s("string"), "post_command": s("string"),
                    "secrets": {"type": "array", "items": s("string")}
                }},
                "JobChange": {"type": "object", "minProperties": 1, "description": "Fields of Job except name; null: back to the default", "not": {"required": ["name"]}},
                "SecretInput": {"type": "object", "additionalProperties": false, "required": ["value"], "properties": {"value": s("string")}}
            }
        }
    })
}
