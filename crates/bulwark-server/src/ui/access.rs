//! Computers, repositories and transport nodes; users and tokens (admins).

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
}

pub(super) async fn create_user(v: Viewer, State(s): State<S>, Form(f): Form<UserForm>) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let input = crate::model::UserInput { name: f.name.trim().to_string(), password: f.password, role: f.role };
    match api::create_user(v.caller.clone(), State(s.clone()), api::Input(input)).await {
        Ok(_) => Ok(Redirect::to("/ui/access").into_response()),
        Err(e) if refuses_input(&e) => {
            Ok(Page(e.0, access_page(&v, &s, Said { user: Some(&e.1), ..Said::default() }).await?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn delete_user(
    v: Viewer,
    s: State<S>,
    name: Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(_deleted) = api::delete_user(v.caller, s, name).await?;
    Ok(Redirect::to("/ui/access").into_response())
}

pub(super) async fn computers(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    Ok(ok(computers_page(&v, &s, None).await?))
}

/// A protection group made of the computers checked, through the API's create.
pub(super) async fn create_group(
    v: Viewer,
    State(s): State<S>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = FormPairs(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let input =
        crate::model::GroupInput { name: f.get("name").unwrap_or_default().to_string(), computers: f.all("computer") };
    match api::create_group(v.caller.clone(), State(s.clone()), api::Input(input)).await {
        Ok(_) => Ok(Redirect::to("/ui/computers").into_response()),
        Err(e) if refuses_input(&e) => Ok(Page(e.0, computers_page(&v, &s, Some(&e.1)).await?).into_response()),
        Err(e) => Err(e.into()),
    }
}

async fn computers_page(v: &Viewer, s: &S, error: Option<&str>) -> Result<Markup, Page> {
    let Json(list) = api::computers_seen(v.caller.clone(), s).await?;
    let Json(groups) = api::list_groups(v.caller.clone(), State(s.clone())).await?;
    Ok(layout(
        "Computers",
        Some(v),
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
                thead { tr { th { "Group" } th { "Computers" } @if v.is_admin() { th { "" } } } }
                tbody { @for g in &groups { tr.group data-name=(g.name) {
                    td { (g.name) } td { (g.computers.join(", ")) }
                    @if v.is_admin() { td { a href={ "/ui/groups/" (g.name) } { "Change" } } }
                } } }
            }
            @if v.is_admin() {
                form method="post" action="/ui/groups" {
                    input type="hidden" name="csrf" value=(v.csrf());
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    label { "New group" input name="name" required placeholder="web-servers"; }
                    p { @for c in list.iter().filter(|c| !c.revoked) {
                        label.inline { input type="checkbox" name="computer" value=(c.name); " " (c.name) " " }
                    } }
                    button type="submit" { "Create the group" }
                }
            }
        },
    ))
}

/// One protection group: its computers changed, or the group deleted (refused while a job
/// names it), through the API's update and delete.
pub(super) async fn group_page(v: Viewer, State(s): State<S>, Path(name): Path<String>) -> Result<Page, Page> {
    v.caller.admin()?;
    let Json(g) = api::show_group(v.caller.clone(), State(s.clone()), Path(name)).await?;
    Ok(ok(group_form(&v, &s, &g.name, &g.computers, None).await?))
}

async fn group_form(v: &Viewer, s: &S, name: &str, members: &[String], error: Option<&str>) -> Result<Markup, Page> {
    let Json(list) = api::computers_seen(v.caller.clone(), s).await?;
    // The members first, joined or not (a group may name a computer before it joins), then
    // the other computers that could join it.
    let mut names: Vec<&str> = members.iter().map(String::as_str).collect();
    names.extend(list.iter().filter(|c| !c.revoked && !members.contains(&c.name)).map(|c| c.name.as_str()));
    Ok(layout(
        &format!("Group {name}"),
        Some(v),
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action={ "/ui/groups/" (name) } {
                input type="hidden" name="csrf" value=(v.csrf());
                p { "Its computers (every job naming the group backs up those checked from its next session):" }
                p { @for c in &names {
                    label.inline { input type="checkbox" name="computer" value=(c) checked[members.iter().any(|m| m == c)]; " " (c) " " }
                } }
                button type="submit" { "Save the group" }
            }
            form method="post" action={ "/ui/groups/" (name) "/delete" } {
                input type="hidden" name="csrf" value=(v.csrf());
                button.secondary.outline type="submit" { "Delete the group " (name) }
            }
            p { a href="/ui/computers" { "Back to the computers" } }
        },
    ))
}

pub(super) async fn update_group(
    v: Viewer,
    State(s): State<S>,
    Path(name): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = FormPairs(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let input = crate::model::GroupInput { name: name.clone(), computers: f.all("computer") };
    match api::update_group(v.caller.clone(), State(s.clone()), Path(name.clone()), api::Input(input)).await {
        Ok(_) => Ok(Redirect::to("/ui/computers").into_response()),
        Err(e) if refuses_input(&e) => {
            Ok(Page(e.0, group_form(&v, &s, &name, &f.all("computer"), Some(&e.1)).await?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn delete_group(
    v: Viewer,
    State(s): State<S>,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    match api::delete_group(v.caller.clone(), State(s.clone()), Path(name.clone())).await {
        Ok(_) => Ok(Redirect::to("/ui/computers").into_response()),
        // Still named by a job: said on the group's page, which stays as it was.
        Err(e) if e.0 == StatusCode::CONFLICT => {
            let Json(g) = api::show_group(v.caller.clone(), State(s.clone()), Path(name)).await?;
            Ok(Page(e.0, group_form(&v, &s, &g.name, &g.computers, Some(&e.1)).await?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// One repository's settings: tasks at once and when the server checks its health on its own,
/// changed through the API's update; and a health check started now.
pub(super) async fn repository_page(v: Viewer, State(s): State<S>, Path(name): Path<String>) -> Result<Page, Page> {
    v.caller.admin()?;
    let Json(r) = api::show_repository(v.caller.clone(), State(s.clone()), Path(name)).await?;
    Ok(ok(repository_settings(&v, &r, &FormPairs::of_repository(&r), None, None)))
}

impl FormPairs {
    fn of_repository(r: &crate::store::RepositoryRow) -> FormPairs {
        let mut p = vec![("max_tasks".to_string(), r.max_tasks.to_string())];
        p.extend(FormPairs::of_schedule("verify", "none", r.verify_schedule.as_ref()));
        FormPairs(p)
    }
}

fn repository_settings(
    v: &Viewer,
    r: &crate::store::RepositoryRow,
    f: &FormPairs,
    error: Option<&str>,
    checked: Option<&crate::health::HealthCheck>,
) -> Markup {
    let value = |k: &str| f.get(k).unwrap_or_default().to_string();
    let verify = f.get("verify").unwrap_or("none");
    layout(
        &format!("Repository {}", r.name),
        Some(v),
        html! {
            p { "On transport node " strong { (r.transport) } " at " code { (r.path) } ". "
                (super::dashboard::verify_summary(r.last_verify.as_ref())) }
            @if let Some(h) = checked {
                article.checked {
                    @if h.ok { (status_badge("success")) " Sound: " (h.points.len()) " points, " (h.chunks_checked) " chunks read again." }
                    @else { (status_badge("failed")) " " (h.damaged().count() + h.missing.len()) " points damaged or missing: see the repository's points." }
                }
            }
            form method="post" action={ "/ui/repositories/" (r.name) } {
                input type="hidden" name="csrf" value=(v.csrf());
                @if let Some(e) = error { p.error role="alert" { (e) } }
                label { "Tasks at once" input name="max_tasks" inputmode="numeric" value=(value("max_tasks")); }
                fieldset {
                    legend { "The server checks its health on its own" }
                    @for (k, label) in [("none", "Never (by hand only)"), ("daily", "Daily"), ("monthly", "Monthly"), ("periodic", "Every few minutes")] {
                        label { input type="radio" name="verify" value=(k) checked[verify == k]; " " (label) }
                    }
                    div.grid {
                        label { "At" input name="at" placeholder="03:00" value=(value("at")); }
                        label { "Day of the month" input name="day" inputmode="numeric" value=(value("day")); }
                        label { "Every (minutes)" input name="every_minutes" inputmode="numeric" value=(value("every_minutes")); }
                    }
                    p { "On: " @for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
                        label.inline { input type="checkbox" name="weekday" value=(d) checked[f.checked("weekday", d)]; " " (d) " " }
                    } }
                }
                button type="submit" { "Save the settings" }
            }
            form method="post" action={ "/ui/repositories/" (r.name) "/verify" } {
                input type="hidden" name="csrf" value=(v.csrf());
                button.secondary type="submit" { "Check its health now" }
                small { " Reads every chunk its points use again: a large repository takes a while." }
            }
        },
    )
}

pub(super) async fn update_repository(
    v: Viewer,
    State(s): State<S>,
    Path(name): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    use serde_json::json;
    let f = FormPairs(pairs);
    v.check(f.get("csrf").unwrap_or_default())?;
    let Json(current) = api::show_repository(v.caller.clone(), State(s.clone()), Path(name.clone())).await?;
    let update = (|| -> Result<crate::model::RepositoryUpdate, String> {
        let body =
            json!({"max_tasks": f.number("max_tasks", "tasks at once")?, "verify_schedule": f.schedule("verify")?});
        serde_json::from_value(body).map_err(|e| format!("the settings are not valid: {e}"))
    })();
    let outcome = match update {
        Ok(u) => match api::update_repository(v.caller.clone(), State(s.clone()), Path(name), api::Input(u)).await {
            Ok(_) => return Ok(Redirect::to("/ui/repositories").into_response()),
            Err(e) => refused(e)?,
        },
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    Ok(Page(outcome.0, repository_settings(&v, &current, &f, Some(&outcome.1), None)).into_response())
}

/// A health check run now through the API's own (it answers when the check has ended).
pub(super) async fn verify_repository(
    v: Viewer,
    State(s): State<S>,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Page, Page> {
    v.check(&f.csrf)?;
    let outcome = api::verify_repository(v.caller.clone(), State(s.clone()), Path(name.clone())).await;
    let Json(r) = api::show_repository(v.caller.clone(), State(s.clone()), Path(name)).await?;
    let answers = FormPairs::of_repository(&r);
    match outcome {
        Ok(Json(h)) => Ok(ok(repository_settings(&v, &r, &answers, None, Some(&h)))),
        Err(e) if e.0 != StatusCode::FORBIDDEN && e.0 != StatusCode::NOT_FOUND => {
            Ok(Page(e.0, repository_settings(&v, &r, &answers, Some(&e.1), None)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn repositories(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    Ok(ok(repositories_page(&v, &s, &RepositoryForm::default(), None).await?))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct RepositoryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    transport: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    max_tasks: String,
    #[serde(default)]
    password: String,
}

/// A repository added through the API's own create (the node makes it, or finds one there);
/// a refusal is said above the form, which keeps what was typed (not the password).
pub(super) async fn create_repository(
    v: Viewer,
    State(s): State<S>,
    Form(f): Form<RepositoryForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let max_tasks = match f.max_tasks.trim() {
        "" => 4,
        n => match n.parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                let e = format!("tasks at once {n:?} is not a whole number");
                return Ok(Page(StatusCode::UNPROCESSABLE_ENTITY, repositories_page(&v, &s, &f, Some(&e)).await?)
                    .into_response());
            }
        },
    };
    let input = serde_json::json!({
        "name": f.name.trim(),
        "transport": f.transport,
        "path": f.path.trim(),
        "max_tasks": max_tasks,
        "password": Some(f.password.clone()).filter(|p| !p.is_empty()),
    });
    let input: crate::model::RepositoryInput = match serde_json::from_value(input) {
        Ok(i) => i,
        Err(e) => return Err(Page::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())),
    };
    match api::create_repository(v.caller.clone(), State(s.clone()), api::Input(input)).await {
        Ok(_) => Ok(Redirect::to("/ui/repositories").into_response()),
        Err(e) if refuses_input(&e) => Ok(Page(e.0, repositories_page(&v, &s, &f, Some(&e.1)).await?).into_response()),
        Err(e) => Err(e.into()),
    }
}

async fn repositories_page(v: &Viewer, s: &S, f: &RepositoryForm, error: Option<&str>) -> Result<Markup, Page> {
    let Json(repos) = api::list_repositories(v.caller.clone(), State(s.clone())).await?;
    let Json(nodes) = api::list_transports(v.caller.clone(), State(s.clone())).await?;
    Ok(layout(
        "Repositories",
        Some(v),
        html! {
            table {
                thead { tr { th { "Name" } th { "Transport node" } th { "Where" } th { "Stored" } th { "Free" } th { "Reduction" } th { "Tasks at once" } th { "Encrypted" } th { "Immutable" } th { "Last health check" } @if v.is_admin() { th { "" } } } }
                tbody {
                    @for r in &repos {
                        tr.repository data-name=(r.name) {
                            td { (r.name) } td { (r.transport) } td { code { (r.path) } }
                            (super::dashboard::usage_cells(r.usage.as_ref())) td { (r.max_tasks) }
                            td { (if r.encrypted { "yes" } else { "no" }) @if r.isolation == "computer" { " (a key per computer)" } }
                            td { @if let Some(d) = r.immutable_days { (d) " days" } @else { "no" } }
                            td { (super::dashboard::verify_summary(r.last_verify.as_ref())) }
                            @if v.is_admin() { td { a href={ "/ui/repositories/" (r.name) } { "Settings" } } }
                        }
                    }
                }
            }
            @if v.is_admin() {
                form method="post" action="/ui/repositories" {
                    input type="hidden" name="csrf" value=(v.csrf());
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    div.grid {
                        label { "New repository" input name="name" required placeholder="main" value=(f.name); }
                        label { "On transport node" select name="transport" {
                            @for n in nodes.iter().filter(|n| !n.revoked) { option value=(n.name) selected[f.transport == n.name] { (n.name) } }
                        } }
                    }
                    div.grid {
                        label { "Where, as the node sees it (a directory, or s3://bucket/prefix)" input name="path" required placeholder="/srv/backup/main" value=(f.path); }
                        label { "Tasks at once" input name="max_tasks" inputmode="numeric" placeholder="4" value=(f.max_tasks); }
                        label { "Password (encrypts it; empty: not encrypted)" input type="password" name="password" autocomplete="new-password"; }
                    }
                    button type="submit" { "Add the repository" }
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
    ))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct JoinTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
}

/// What the Access page says besides its lists: a token just made (what it is, its secret),
/// shown this once with a button that copies it, and a form's refusal next to that form.
#[derive(Default)]
pub(super) struct Said<'a> {
    created: Option<(&'a str, &'a str)>,
    user: Option<&'a str>,
    join: Option<&'a str>,
    api: Option<&'a str>,
}

/// Users, API tokens and join tokens (admins).
pub(super) async fn access_page(v: &Viewer, s: &S, said: Said<'_>) -> Result<Markup, Page> {
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
                @if let Some(e) = said.user { p.error role="alert" { (e) } }
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
            h2 { "Tokens" }
            @if let Some((what, t)) = said.created {
                article.new-token {
                    p { "The new " (what) ", shown this once:" }
                    p { code id="new-token" { (t) } " " button.outline type="button" data-copy="new-token" { "Copy" } }
                }
            }
            form method="post" action="/ui/access" {
                input type="hidden" name="csrf" value=(v.csrf());
                @if let Some(e) = said.join { p.error role="alert" { (e) } }
                div.grid {
                    label { "Join token for" select name="role" { option value="agent" { "a computer (agent)" } option value="transport" { "a transport node" } } }
                    label { "Its name (empty: any new name)" input name="name" placeholder="web-1"; }
                    label { "Valid for" input name="expires" value="7d"; }
                }
                button type="submit" { "Create a join token" }
            }
            form method="post" action="/ui/api-tokens" {
                input type="hidden" name="csrf" value=(v.csrf());
                @if let Some(e) = said.api { p.error role="alert" { (e) } }
                div.grid {
                    label { "API token (yours) named" input name="name" required placeholder="monitoring"; }
                    label { "Valid for (30m, 12h, 90d or never)" input name="expires" value="90d"; }
                }
                button type="submit" { "Create an API token" }
            }
            table {
                thead { tr { th { "Kind" } th { "For" } th { "Created" } th { "Expires" } th { "" } } }
                tbody {
                    @for t in &tokens {
                        @let (kind, whom, created, expires, id) = match t {
                            TokenRow::Join { role, name, created, expires, id, .. } => (format!("join ({role})"), name.clone(), created, expires, id.as_deref()),
                            TokenRow::Api { user, name, created, expires, id } => ("API".to_string(), format!("{user} · {name}"), created, expires, Some(id.as_str())),
                        };
                        tr.token data-id=[id] {
                            td { (kind) } td { (whom) } td { (when(created)) }
                            td { @if let Some(e) = expires { (when(e)) } @else { "never" } }
                            td { @if let Some(id) = id {
                                form.inline method="post" action={ "/ui/tokens/" (id) "/revoke" } {
                                    input type="hidden" name="csrf" value=(v.csrf());
                                    button.secondary.outline type="submit" { "Revoke" }
                                }
                            } }
                        }
                    }
                }
            }
        },
    ))
}

pub(super) async fn access(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    v.caller.admin()?;
    Ok(ok(access_page(&v, &s, Said::default()).await?))
}

pub(super) async fn create_join_token(
    v: Viewer,
    State(s): State<S>,
    Form(f): Form<JoinTokenForm>,
) -> Result<Page, Page> {
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
        )) => Ok(ok(access_page(&v, &s, Said { created: Some(("join token", &token)), ..Said::default() }).await?)),
        Err(e) if e.0 == StatusCode::UNPROCESSABLE_ENTITY || e.0 == StatusCode::BAD_REQUEST => {
            Ok(Page(e.0, access_page(&v, &s, Said { join: Some(&e.1), ..Said::default() }).await?))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ApiTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
}

/// An API token of the user logged in, through the API's create; its secret shown this once.
pub(super) async fn create_api_token(v: Viewer, State(s): State<S>, Form(f): Form<ApiTokenForm>) -> Result<Page, Page> {
    v.check(&f.csrf)?;
    let request = crate::model::ApiTokenRequest {
        name: Some(f.name.trim().to_string()),
        expires: Some(f.expires.trim().to_string()).filter(|e| !e.is_empty()),
    };
    match api::create_api_token(v.caller.clone(), State(s.clone()), api::Input(request)).await {
        Ok(Json(
            crate::answers::TokenCreated::Api { token, .. } | crate::answers::TokenCreated::Join { token, .. },
        )) => Ok(ok(access_page(&v, &s, Said { created: Some(("API token", &token)), ..Said::default() }).await?)),
        Err(e) if refuses_input(&e) => {
            Ok(Page(e.0, access_page(&v, &s, Said { api: Some(&e.1), ..Said::default() }).await?))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn revoke_token(
    v: Viewer,
    s: State<S>,
    id: Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    v.check(&f.csrf)?;
    let Json(_revoked) = api::revoke_token(v.caller, s, id).await?;
    Ok(Redirect::to("/ui/access").into_response())
}
