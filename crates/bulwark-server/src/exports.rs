//! Instant recovery through the API: a volume point published as an NBD export by the transport
//! node that holds it, for a lifetime, so a hypervisor boots from it (or `nbdcopy` reads it)
//! while the real restore runs. Writes, when allowed, go to a scratch overlay on that node and
//! never into the repository.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bulwark_proto::pb::{PublishRequest, UnpublishRequest};
use serde::Deserialize;

use crate::api::{ApiError, AppState, Caller, Input};
use crate::openapi::{Forbidden, Invalid, NodeFailed, NotFound, Unauthorized};
use crate::point_files::{access, node_refused, transport_client};
use crate::store::{self, ExportRow};

type S = Arc<AppState>;

/// How long an export lives unless asked otherwise, and at most.
const DEFAULT_HOURS: u32 = 8;
const MAX_HOURS: u32 = 24 * 14;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportInput {
    /// The volume (0: the whole image; a partition's number on a disk).
    #[serde(default)]
    pub volume: u32,
    /// Accept writes into a scratch overlay (a VM booting from the point writes); they are
    /// lost when the export ends. The repository is never written.
    #[serde(default)]
    pub writable: bool,
    /// Hours until the export ends on its own (default 8, at most 336).
    #[serde(default)]
    pub hours: Option<u32>,
    /// Only this client address may connect.
    #[serde(default)]
    pub allowed_ip: Option<String>,
}

/// Publish a volume point over NBD (instant recovery).
///
/// The answer's `url` (`nbd://HOST:PORT/NAME`) is what a client opens: `qemu-system-x86_64
/// -drive file=URL,format=raw,snapshot=on`, `nbdcopy URL disk.img`, `nbdinfo URL`. NBD has no
/// passwords: the random export name and `allowed_ip` are what keep others out, so treat the URL
/// as a secret and keep the transport node's network trusted.
#[utoipa::path(post, path = "/points/{id}/exports", params(("id" = String, Path)), request_body = ExportInput,
    responses(
        (status = 200, description = "the export", body = ExportRow),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 422, response = Invalid), (status = 502, response = NodeFailed),
    )
)]
pub async fn publish_point(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Input(e): Input<ExportInput>,
) -> Result<Json<ExportRow>, ApiError> {
    c.may_restore()?;
    let hours = e.hours.unwrap_or(DEFAULT_HOURS);
    if hours == 0 || hours > MAX_HOURS {
        return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("hours {hours}: from 1 to {MAX_HOURS}")));
    }
    if let Some(ip) = &e.allowed_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| {
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("allowed_ip {ip:?} is not an IP address"))
        })?;
    }
    let (mut client, point, transport) = access(&s, &id, e.volume).await?;
    let created = jiff::Timestamp::now();
    let expires = jiff::Timestamp::from_second(created.as_second() + hours as i64 * 3600)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let req = PublishRequest {
        point: Some(point),
        writable: e.writable,
        expires_unix: expires.as_second() as u64,
        allowed_ip: e.allowed_ip.clone().unwrap_or_default(),
    };
    let published = client.publish_point(req).await.map_err(node_refused)?.into_inner();
    let row = ExportRow {
        id: published.export_id,
        point: id.clone(),
        volume: e.volume,
        transport,
        url: published.url,
        size: published.size,
        writable: e.writable,
        allowed_ip: e.allowed_ip,
        created: created.to_string(),
        expires: expires.to_string(),
        created_by: c.name.clone(),
    };
    if let Err(e) = store::add_export(&s.core.db, &row).await {
        // Unrecorded, it could not be ended through the API: end it now.
        let req = UnpublishRequest { protocol: bulwark_proto::PROTOCOL, export_id: row.id.clone() };
        let _ = client.unpublish_point(req).await;
        return Err(e.into());
    }
    // Not the URL: its export name is what lets a client in.
    tracing::info!(
        "point {id} volume {} published as export {} until {} by {}",
        row.volume,
        row.id,
        row.expires,
        c.name
    );
    Ok(Json(row))
}

/// Exports that have not ended, newest first.
#[utoipa::path(get, path = "/exports", responses(
    (status = 200, description = "the exports", body = Vec<ExportRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
))]
pub async fn list_exports(c: Caller, State(s): State<S>) -> Result<Json<Vec<ExportRow>>, ApiError> {
    // The URLs let a client read the points: for those who may restore.
    c.may_restore()?;
    Ok(Json(store::exports(&s.core.db).await?))
}

/// End an export now (its overlay, and what was written to it, goes).
#[utoipa::path(delete, path = "/exports/{id}", params(("id" = String, Path)), responses(
    (status = 200, description = "the export that ended", body = ExportRow),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 502, response = NodeFailed),
))]
pub async fn unpublish(c: Caller, State(s): State<S>, Path(id): Path<String>) -> Result<Json<ExportRow>, ApiError> {
    c.may_restore()?;
    let row = store::export(&s.core.db, &id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no export {id:?}")))?;
    if let Some(mut client) = transport_client(&s, &row.transport).await? {
        let req = UnpublishRequest { protocol: bulwark_proto::PROTOCOL, export_id: id.clone() };
        match client.unpublish_point(req).await {
            // Already gone on the node (it restarted, or the export expired there): the record goes too.
            Err(st) if st.code() == tonic::Code::NotFound => {}
            Err(st) => return Err(node_refused(st)),
            Ok(_) => {}
        }
    }
    store::delete_export(&s.core.db, &id).await?;
    tracing::info!("export {id} of point {} ended by {}", row.point, c.name);
    Ok(Json(row))
}
