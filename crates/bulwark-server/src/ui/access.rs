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
            Ok(Page(e.0, access_page(&v, &s, None, None, Some(&e.1)).await?).into_response())
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
                thead { tr { th { "Group" } th { "Computers" } } }
                tbody { @for g in &groups { tr.group { td { (g.name) } td { (g.computers.join(", ")) } } } }
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
                thead { tr { th { "Name" } th { "Transport node" } th { "Where" } th { "Tasks at once" } th { "Encrypted" } th { "Immutable" } th { "Last health check" } } }
                tbody {
                    @for r in &repos {
                        tr {
                            td { (r.name) } td { (r.transport) } td { code { (r.path) } } td { (r.max_tasks) }
                            td { (if r.encrypted { "yes" } else { "no" }) @if r.isolation == "computer" { " (a key per computer)" } }
                            td { @if let Some(d) = r.immutable_days { (d) " days" } @else { "no" } }
                            td { (super::dashboard::verify_summary(r.last_verify.as_ref())) }
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

/// Users, API tokens and join tokens (admins); `created` is a join token just made, shown this
/// once with a button that copies it.
pub(super) async fn access_page(
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

pub(super) async fn access(v: Viewer, State(s): State<S>) -> Result<Page, Page> {
    v.caller.admin()?;
    Ok(ok(access_page(&v, &s, None, None, None).await?))
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
        )) => Ok(ok(access_page(&v, &s, Some(&token), None, None).await?)),
        Err(e) if e.0 == StatusCode::UNPROCESSABLE_ENTITY || e.0 == StatusCode::BAD_REQUEST => {
            Ok(Page(e.0, access_page(&v, &s, None, Some(&e.1), None).await?))
        }
        Err(e) => Err(e.into()),
    }
}
