//! Scale-out repositories (after Veeam's SOBR): one name for several repositories, its
//! *extents*, each with its own transport node, location and task slots. A job writes to the
//! scale-out repository; the resource scheduler places each computer's task on one extent when
//! it grants a slot (see [`crate::resource_scheduler::placement`]): where the computer's backup
//! chain is, or for a new chain where the policy says (`locality`: the extent holding the least
//! data; `performance`: the one with the most free slots). A chain never spans extents: an
//! incremental needs its parent's chunks in the same repository.
//!
//! An extent put in *maintenance* takes no backups (the tasks of its chains fail, saying why);
//! *evacuating* it copies each of its chains, oldest point first, into another extent that one
//! transport node can open together with it (the same node's, or any node's when one side is
//! in an object store; `CopyPoints`: same point ids and times, so the next backup of the chain
//! is an incremental there), forgets them in the evacuated extent, and moves them in the
//! catalog. An emptied extent can then be removed and its repository deleted.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bulwark_proto::pb::PointCopy;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::api::{bad, missing, ApiError, AppState, Caller, Input};
use crate::model::check_name;
use crate::openapi::{Conflict, Forbidden, Invalid, NodeFailed, NotFound, Unauthorized};
use crate::resource_scheduler::Policy;
use crate::store::{self, ScaleOutRow};

type S = Arc<AppState>;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleOutInput {
    pub name: String,
    /// How new backup chains are placed: `locality` (default: the extent holding the least
    /// data) or `performance` (the extent with the most free task slots).
    #[serde(default)]
    pub policy: Option<String>,
    /// Its extents: repositories that exist, belong to no other scale-out repository and that
    /// no job writes to directly.
    pub extents: Vec<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleOutUpdate {
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub add_extents: Vec<String>,
    /// Extents to take out: they must hold no backup chain (evacuate them first) and run no
    /// task.
    #[serde(default)]
    pub remove_extents: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceInput {
    /// true: the extent takes no backups; false: it takes them again.
    pub on: bool,
}

/// What an evacuation did, chain by chain.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Evacuation {
    pub scale_out: String,
    pub extent: String,
    pub chains: Vec<EvacuatedChain>,
    /// Points moved into other extents (copied, or found there from an earlier try).
    pub moved_points: u64,
    /// Points left behind: why, point by point.
    pub errors: Vec<String>,
    /// Whether the extent holds no chain any more (it can be removed).
    pub empty: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EvacuatedChain {
    /// The chain's backup name.
    pub name: String,
    pub computer: String,
    /// The extent it went to (`None`: none could take it; see `errors`).
    pub to: Option<String>,
    pub points: u64,
    pub stored_bytes: u64,
}

fn policy(p: Option<&str>) -> Result<Policy, ApiError> {
    p.unwrap_or("locality").parse::<Policy>().map_err(bad)
}

/// Whether `repository` can become an extent.
async fn check_extent(s: &AppState, repository: &str) -> Result<(), ApiError> {
    if store::repository(&s.core.db, repository).await?.is_none() {
        return Err(bad(format!("no repository {repository:?} to make an extent")));
    }
    if let Some(so) = store::extent_of(&s.core.db, repository).await? {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("repository {repository} is already an extent of scale-out repository {so}"),
        ));
    }
    let users = store::jobs_using(&s.core.db, "repository", repository).await?;
    if !users.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "job(s) {} write to repository {repository} directly: point them at the scale-out repository first",
                users.join(", ")
            ),
        ));
    }
    Ok(())
}

async fn row(s: &AppState, name: &str) -> Result<ScaleOutRow, ApiError> {
    store::scale_out(&s.core.db, name).await?.ok_or_else(|| missing("scale-out repository", name))
}

/// The extent `extent` of `so`, or 404.
fn extent_of<'a>(so: &'a ScaleOutRow, extent: &str) -> Result<&'a store::ExtentRow, ApiError> {
    so.extents.iter().find(|x| x.repository == extent).ok_or_else(|| missing(&format!("extent of {}", so.name), extent))
}

/// Scale-out repositories with their extents.
#[utoipa::path(get, path = "/scale-out", responses(
    (status = 200, description = "scale-out repositories by name", body = Vec<ScaleOutRow>),
    (status = 401, response = Unauthorized),
))]
pub async fn list(_c: Caller, State(s): State<S>) -> Result<Json<Vec<ScaleOutRow>>, ApiError> {
    Ok(Json(store::scale_outs(&s.core.db).await?))
}

/// A scale-out repository: its policy and each extent's state, points, stored bytes, chains
/// and open tasks.
#[utoipa::path(get, path = "/scale-out/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "the scale-out repository", body = ScaleOutRow),
    (status = 401, response = Unauthorized), (status = 404, response = NotFound),
))]
pub async fn show(_c: Caller, State(s): State<S>, Path(name): Path<String>) -> Result<Json<ScaleOutRow>, ApiError> {
    Ok(Json(row(&s, &name).await?))
}

/// Create a scale-out repository from existing repositories.
///
/// Jobs then name it as their repository.
#[utoipa::path(post, path = "/scale-out", request_body = ScaleOutInput, responses(
    (status = 200, description = "the scale-out repository", body = ScaleOutRow),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 409, response = Conflict), (status = 422, response = Invalid),
))]
pub async fn create(
    c: Caller,
    State(s): State<S>,
    Input(i): Input<ScaleOutInput>,
) -> Result<Json<ScaleOutRow>, ApiError> {
    c.admin()?;
    check_name("scale-out repository", &i.name).map_err(bad)?;
    let policy = policy(i.policy.as_deref())?;
    if i.extents.is_empty() {
        return Err(bad("a scale-out repository needs at least one extent"));
    }
    if store::scale_out(&s.core.db, &i.name).await?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("scale-out repository {} already exists", i.name)));
    }
    if store::repository(&s.core.db, &i.name).await?.is_some() {
        return Err(ApiError(StatusCode::CONFLICT, format!("{} is the name of a repository", i.name)));
    }
    let mut extents = i.extents.clone();
    extents.sort();
    extents.dedup();
    for e in &extents {
        check_extent(&s, e).await?;
    }
    store::insert_scale_out(&s.core.db, &i.name, policy.name(), &extents).await?;
    info!("scale-out repository {} created with extents {}", i.name, extents.join(", "));
    Ok(Json(row(&s, &i.name).await?))
}

/// Change the placement policy, add extents or remove empty ones.
#[utoipa::path(patch, path = "/scale-out/{name}", params(("name" = String, Path)), request_body = ScaleOutUpdate,
    responses(
        (status = 200, description = "the scale-out repository", body = ScaleOutRow),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 409, response = Conflict), (status = 422, response = Invalid),
    )
)]
pub async fn update(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
    Input(u): Input<ScaleOutUpdate>,
) -> Result<Json<ScaleOutRow>, ApiError> {
    c.admin()?;
    let current = row(&s, &name).await?;
    let policy = u.policy.as_deref().map(|p| policy(Some(p))).transpose()?;
    for e in &u.add_extents {
        check_extent(&s, e).await?;
    }
    for e in &u.remove_extents {
        let Some(x) = current.extents.iter().find(|x| &x.repository == e) else {
            return Err(bad(format!("repository {e} is not an extent of {name}")));
        };
        if x.chains > 0 || x.points > 0 {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "extent {e} holds {} backup chain(s) and {} point(s): put it in maintenance and evacuate it \
                     first (`bulwark scale-out maintenance {name} {e} on`, `bulwark scale-out evacuate {name} {e}`)",
                    x.chains, x.points
                ),
            ));
        }
        if x.open_tasks > 0 {
            return Err(ApiError(StatusCode::CONFLICT, format!("extent {e} has tasks queued or running")));
        }
    }
    let left = current.extents.len() + u.add_extents.len() - u.remove_extents.len();
    if left == 0 {
        return Err(bad(format!("{name} would have no extent left: delete it instead")));
    }
    if let Some(p) = policy {
        store::set_scale_out_policy(&s.core.db, &name, p.name()).await?;
    }
    for e in &u.add_extents {
        store::add_extent(&s.core.db, &name, e).await?;
    }
    for e in &u.remove_extents {
        store::remove_extent(&s.core.db, e).await?;
    }
    Ok(Json(row(&s, &name).await?))
}

/// Forget a scale-out repository; its extents stay as repositories of their own.
#[utoipa::path(delete, path = "/scale-out/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "forgotten", body = crate::answers::Deleted),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 409, response = Conflict),
))]
pub async fn delete(
    c: Caller,
    State(s): State<S>,
    Path(name): Path<String>,
) -> Result<Json<crate::answers::Deleted>, ApiError> {
    c.admin()?;
    let users = store::jobs_using(&s.core.db, "repository", &name).await?;
    if !users.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("scale-out repository {name} is used by job(s) {}", users.join(", ")),
        ));
    }
    if store::open_tasks_on(&s.core.db, &name).await? > 0 {
        return Err(ApiError(StatusCode::CONFLICT, format!("scale-out repository {name} has tasks queued")));
    }
    if !store::delete_scale_out(&s.core.db, &name).await? {
        return Err(missing("scale-out repository", &name));
    }
    Ok(Json(crate::answers::Deleted { deleted: name }))
}

/// Put an extent in maintenance (it takes no backups) or take it out.
#[utoipa::path(post, path = "/scale-out/{name}/extents/{extent}/maintenance",
    params(("name" = String, Path), ("extent" = String, Path)), request_body = MaintenanceInput,
    responses(
        (status = 200, description = "the scale-out repository", body = ScaleOutRow),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 422, response = Invalid),
    )
)]
pub async fn maintenance(
    c: Caller,
    State(s): State<S>,
    Path((name, extent)): Path<(String, String)>,
    Input(m): Input<MaintenanceInput>,
) -> Result<Json<ScaleOutRow>, ApiError> {
    c.admin()?;
    extent_of(&row(&s, &name).await?, &extent)?;
    store::set_maintenance(&s.core.db, &extent, m.on).await?;
    info!("extent {extent} of {name}: maintenance {}", if m.on { "on" } else { "off" });
    Ok(Json(row(&s, &name).await?))
}

/// Evacuate an extent in maintenance: every backup chain on it is copied into another extent
/// (the policy picks which), forgotten on it, and moved in the catalog. A copy runs on one
/// transport node: the targets are the extents of the same node, and those of other nodes when
/// one side is in an object store (which any node opens).
///
/// Answers when done. Safe to repeat after an interruption: points already copied are found,
/// not copied again. A point that cannot be forgotten yet (an immutable repository's) is moved
/// in the catalog and reported; its copy in the extent goes when its lock ends.
#[utoipa::path(post, path = "/scale-out/{name}/extents/{extent}/evacuate",
    params(("name" = String, Path), ("extent" = String, Path)),
    responses(
        (status = 200, description = "what moved where", body = Evacuation),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 409, response = Conflict),
        (status = 422, response = Invalid), (status = 502, response = NodeFailed),
    )
)]
pub async fn evacuate(
    c: Caller,
    State(s): State<S>,
    Path((name, extent)): Path<(String, String)>,
) -> Result<Json<Evacuation>, ApiError> {
    c.admin()?;
    let current = row(&s, &name).await?;
    let from = extent_of(&current, &extent)?;
    if !from.maintenance {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("put extent {extent} in maintenance first (`bulwark scale-out maintenance {name} {extent} on`)"),
        ));
    }
    if from.open_tasks > 0 {
        return Err(ApiError(StatusCode::CONFLICT, format!("extent {extent} still has tasks queued or running")));
    }
    // One evacuation at a time, and no health check beside it (points vanish as they move).
    let _busy =
        s.core.health.start(&extent, "an evacuation").map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    let db = &s.core.db;
    let access =
        |r: String| async move { store::repository_access(db, &r).await?.ok_or_else(|| missing("repository", &r)) };
    let (node, from_path, from_password) = access(extent.clone()).await?;
    // A copy runs on one node, which opens both locations: a node opens a local location only
    // if it serves it, and an object store's from anywhere. So a target is an extent of the
    // same node, or of another node when one side of the copy is in an object store.
    let mut targets = Vec::new();
    let mut unreachable = Vec::new();
    for x in current.extents.iter().filter(|x| x.repository != extent && !x.maintenance) {
        let (n, path, password) = access(x.repository.clone()).await?;
        let runner = if n == node {
            Some(node.clone())
        } else if anywhere(&from_path) {
            Some(n.clone())
        } else if anywhere(&path) {
            Some(node.clone())
        } else {
            None
        };
        match runner {
            Some(runner) => targets.push((x.repository.clone(), path, password, x.stored_bytes, x.open_tasks, runner)),
            None => unreachable.push(format!("{} (local to node {n})", x.repository)),
        }
    }
    if targets.is_empty() {
        let why = if unreachable.is_empty() {
            String::new()
        } else {
            format!(
                "; {} cannot take points from {extent}, local to node {node}, as no node opens both",
                unreachable.join(", ")
            )
        };
        return Err(bad(format!(
            "no other extent of {name} outside maintenance can take the points of {extent}{why}: add one on node {node} \
             or in an object store (`bulwark scale-out update {name} --add-extent REPOSITORY`)"
        )));
    }
    let mut clients = HashMap::new();
    let mut report = Evacuation { scale_out: name.clone(), extent: extent.clone(), ..Default::default() };
    let chains = store::chains_on(db, &extent).await?;
    let points = store::points_on(db, &extent).await?;
    // Points group by backup name: a chain's, or a name from before chains.
    let mut names: Vec<(String, String, Option<String>)> =
        chains.iter().map(|c| (c.name.clone(), c.computer.clone(), Some(c.source.clone()))).collect();
    for (_, n, computer) in &points {
        if !names.iter().any(|(name, _, _)| name == n) {
            names.push((n.clone(), computer.clone(), None));
        }
    }
    let policy: Policy = current.policy.parse().unwrap_or(Policy::Locality);
    for (chain, computer, source) in names {
        let ids: Vec<String> = points.iter().filter(|(_, n, _)| *n == chain).map(|(id, _, _)| id.clone()).collect();
        // Where to: an extent without a chain of this source (a source has one chain per
        // scale-out repository), by the policy.
        let mut candidates = Vec::new();
        for t in &targets {
            let taken = match &source {
                Some(src) => store::has_chain(db, &computer, src, &t.0).await?,
                None => false,
            };
            if !taken {
                candidates.push(t);
            }
        }
        match policy {
            Policy::Locality => candidates.sort_by_key(|t| (t.3, t.0.clone())),
            Policy::Performance => candidates.sort_by_key(|t| (t.4, t.3, t.0.clone())),
        }
        let Some(target) = candidates.first() else {
            report.errors.push(format!(
                "chain {chain} of {computer}: every extent that can take it already holds a chain of the same source"
            ));
            report.chains.push(EvacuatedChain { name: chain, computer, to: None, points: 0, stored_bytes: 0 });
            continue;
        };
        let mut moved = EvacuatedChain {
            name: chain.clone(),
            computer: computer.clone(),
            to: Some(target.0.clone()),
            points: 0,
            stored_bytes: 0,
        };
        let copied = if ids.is_empty() {
            Vec::new()
        } else {
            let req = PointCopy {
                protocol: bulwark_proto::PROTOCOL,
                from: from_path.clone(),
                from_password: from_password.clone().unwrap_or_default(),
                to: target.1.clone(),
                to_password: target.2.clone().unwrap_or_default(),
                points: ids.clone(),
                remove: true,
            };
            let runner = &target.5;
            if !clients.contains_key(runner) {
                let transport = store::node(db, "transport", runner)
                    .await?
                    .ok_or_else(|| bad(format!("transport node {runner} is gone")))?;
                let client = s
                    .core
                    .manager
                    .transport(&transport.address())
                    .await
                    .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
                clients.insert(runner.clone(), client);
            }
            let client = clients.get_mut(runner).expect("inserted above");
            client
                .copy_points(req)
                .await
                .map_err(|st| ApiError(StatusCode::BAD_GATEWAY, format!("transport {runner}: {}", st.message())))?
                .into_inner()
                .points
        };
        let mut all_moved = true;
        for id in &ids {
            let Some(p) = copied.iter().find(|p| &p.id == id) else {
                all_moved = false;
                report.errors.push(format!("point {id}: the node did not report it"));
                continue;
            };
            if p.present {
                store::move_point(db, id, &target.0).await?;
                moved.points += 1;
                moved.stored_bytes += p.stored_bytes;
                report.moved_points += 1;
            } else {
                all_moved = false;
            }
            if !p.error.is_empty() {
                report.errors.push(format!("point {id}: {}", p.error));
            }
        }
        if all_moved && source.is_some() {
            store::move_chain(db, &chain, &target.0).await?;
        }
        info!(
            "extent {extent} of {name}: chain {chain} of {computer}: {} point(s) moved to {}",
            moved.points, target.0
        );
        report.chains.push(moved);
    }
    report.empty = store::chains_on(db, &extent).await?.is_empty() && store::points_on(db, &extent).await?.is_empty();
    if !report.errors.is_empty() {
        warn!("evacuation of extent {extent} of {name}: {}", report.errors.join("; "));
    }
    Ok(Json(report))
}

/// Whether any transport node opens this location (an object store), not only the node serving it.
fn anywhere(location: &str) -> bool {
    matches!(location.parse::<bulwark_repo::storage::Location>(), Ok(bulwark_repo::storage::Location::S3(_)))
}
