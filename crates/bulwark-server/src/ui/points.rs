//! Restore points: the list, the restore wizard, the file browser and downloads.

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct PointsQuery {
    computer: Option<String>,
    #[serde(default)]
    page: u32,
}

/// Rows per page of a long table.
pub(super) const PER_PAGE: u32 = 100;

pub(super) async fn points(v: Viewer, State(s): State<S>, Query(q): Query<PointsQuery>) -> Result<Page, Page> {
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
pub(super) struct FilesAt {
    #[serde(default)]
    volume: Option<u32>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `/ui/points/ID/files?…` for a volume and a path inside it.
pub(super) fn files_link(id: &str, volume: u32, path: &str) -> String {
    let q: String = url_query(&[("volume", &volume.to_string()), ("path", path)]);
    format!("/ui/points/{id}/files?{q}")
}

/// The file browser of a point: its volumes first (a volume point holding several), then one
/// directory at a time, read from the point by the transport node as the API reads it. Files
/// download; checked entries restore onto a computer.
pub(super) async fn files_page(
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

pub(super) async fn restore_files(
    v: Viewer,
    State(s): State<S>,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Page> {
    let f = FormPairs(pairs);
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
pub(super) struct DownloadQuery {
    #[serde(default)]
    volume: u32,
    path: String,
    #[serde(default)]
    tar: Option<String>,
}

/// A file of a point (or a directory as a tar stream), as the API serves it.
pub(super) async fn download(
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
pub(super) struct RestoreForm {
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
pub(super) async fn restore_form(
    v: &Viewer,
    s: &S,
    id: &str,
    f: &RestoreForm,
    error: Option<&str>,
) -> Result<Markup, Page> {
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

pub(super) async fn restore_page(v: Viewer, State(s): State<S>, Path(id): Path<String>) -> Result<Page, Page> {
    v.caller.may_restore()?;
    Ok(ok(restore_form(&v, &s, &id, &RestoreForm::default(), None).await?))
}

pub(super) async fn restore(
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
