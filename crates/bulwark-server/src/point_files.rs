//! Restore anything from any point, through the API: a point's volumes, one directory of its
//! files at a time, one file's bytes (with HTTP ranges). The transport node that holds the
//! repository reads them (it has the chunks); the server checks who asks and where the point is.
//!
//! Reading a point's files is reading the protected computer's data, so it needs the same right
//! as restoring it: an admin or a restore operator.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_proto::pb::transport_client::TransportClient;
use bulwark_proto::pb::{BrowseRequest, PointAccess, ReadFileRequest};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::api::{ApiError, AppState, Caller};
use crate::openapi::{Forbidden, Invalid, NodeFailed, NotFound, RangeNotSatisfiable, Unauthorized};
use crate::store;

type S = Arc<AppState>;

/// A volume of a point: the whole image (0) or a partition of a disk.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeRow {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// `whole`, `mbr` or `gpt`.
    pub table: String,
    pub partition_type: String,
    pub label: String,
    /// What the volume holds: `ext4`, `xfs`, `swap`, … (empty: unknown).
    pub content: String,
}

impl From<bulwark_repo::volumes::Volume> for VolumeRow {
    fn from(v: bulwark_repo::volumes::Volume) -> Self {
        VolumeRow {
            number: v.number,
            start: v.start,
            size: v.size,
            table: v.table,
            partition_type: v.partition_type,
            label: v.label,
            content: v.content,
        }
    }
}

/// One entry of a directory inside a point.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileRow {
    pub name: String,
    /// `file`, `dir`, `symlink`, `char-device`, `block-device`, `fifo`, `socket`.
    pub kind: String,
    pub size: u64,
    /// Permission bits (octal in listings).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One page of a directory.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FilesPage {
    pub point: String,
    pub volume: u32,
    pub path: String,
    pub entries: Vec<FileRow>,
    /// The cursor of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// The volume (0: the whole image; a partition's number on a disk).
    #[serde(default)]
    pub volume: u32,
    /// The directory (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// At most this many entries (default 500, at most 10000).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContentQuery {
    #[serde(default)]
    pub volume: u32,
    /// The file.
    pub path: String,
}

/// The transport node holding point `id`'s repository (a client of it, and its name), and how
/// it opens the point.
pub(crate) async fn access(
    s: &S,
    id: &str,
    volume: u32,
) -> Result<(TransportClient<Channel>, PointAccess, String), ApiError> {
    let (repository, _, _) = store::point(&s.core.db, id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no restore point {id:?}")))?;
    let (transport, path, password) = store::repository_access(&s.core.db, &repository)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no repository {repository:?}")))?;
    let node = store::node(&s.core.db, "transport", &transport)
        .await?
        .ok_or_else(|| ApiError(StatusCode::BAD_GATEWAY, format!("transport node {transport} is gone")))?;
    let client = s
        .core
        .manager
        .transport(&node.address())
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let access = PointAccess {
        protocol: bulwark_proto::PROTOCOL,
        repository: path,
        password: password.unwrap_or_default(),
        point: id.to_string(),
        volume,
    };
    Ok((client, access, transport))
}

/// The node's refusal in the caller's terms.
pub(crate) fn node_refused(s: tonic::Status) -> ApiError {
    use tonic::Code;
    let code = match s.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::FailedPrecondition | Code::Unimplemented => StatusCode::UNPROCESSABLE_ENTITY,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError(code, s.message().to_string())
}

/// A point's volumes: the whole image first, then a disk's partitions.
#[utoipa::path(get, path = "/points/{id}/volumes", params(("id" = String, Path)), responses(
    (status = 200, description = "the volumes", body = Vec<VolumeRow>),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 422, response = Invalid), (status = 502, response = NodeFailed),
))]
pub async fn point_volumes(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
) -> Result<Json<Vec<VolumeRow>>, ApiError> {
    c.may_restore()?;
    let (mut client, point, _) = access(&s, &id, 0).await?;
    let reply = client
        .browse_point(BrowseRequest { point: Some(point), volumes: true, ..Default::default() })
        .await
        .map_err(node_refused)?
        .into_inner();
    Ok(Json(
        reply
            .volumes
            .into_iter()
            .map(|v| VolumeRow {
                number: v.number,
                start: v.start,
                size: v.size,
                table: v.table,
                partition_type: v.partition_type,
                label: v.label,
                content: v.content,
            })
            .collect(),
    ))
}

/// One directory of a point, a page at a time (never a walk of the whole tree).
///
/// Volume points: the files of the filesystem on `volume`; file-level points: the backed-up
/// tree. Entries are sorted by name; pass `next` back as `cursor` for the following page.
#[utoipa::path(get, path = "/points/{id}/files", params(("id" = String, Path), FilesQuery), responses(
    (status = 200, description = "one page of the directory", body = FilesPage),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 422, response = Invalid), (status = 502, response = NodeFailed),
))]
pub async fn point_files(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<FilesQuery>,
) -> Result<Json<FilesPage>, ApiError> {
    c.may_restore()?;
    let path = q.path.unwrap_or_else(|| "/".into());
    let (mut client, point, _) = access(&s, &id, q.volume).await?;
    let req = BrowseRequest {
        point: Some(point),
        volumes: false,
        path: path.clone(),
        cursor: q.cursor.unwrap_or_default(),
        limit: q.limit.unwrap_or(500).clamp(1, 10_000),
    };
    let reply = client.browse_point(req).await.map_err(node_refused)?.into_inner();
    Ok(Json(FilesPage {
        point: id,
        volume: q.volume,
        path,
        entries: reply
            .entries
            .into_iter()
            .map(|e| FileRow {
                name: e.name,
                kind: e.kind,
                size: e.size,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                target: (!e.target.is_empty()).then_some(e.target),
            })
            .collect(),
        next: (!reply.next.is_empty()).then_some(reply.next),
    }))
}

/// The byte range a `Range: bytes=…` header asks for, of a file of `size` bytes: `None` for
/// the whole file, an error for a range it cannot satisfy.
fn range(headers: &HeaderMap, size: Option<u64>) -> Result<Option<(u64, Option<u64>)>, ApiError> {
    let Some(v) = headers.get(header::RANGE) else { return Ok(None) };
    let unsatisfiable =
        || ApiError(StatusCode::RANGE_NOT_SATISFIABLE, "the Range header asks for bytes this file lacks".into());
    let spec = v.to_str().ok().and_then(|s| s.strip_prefix("bytes=")).ok_or_else(unsatisfiable)?;
    if spec.contains(',') {
        return Err(ApiError(StatusCode::RANGE_NOT_SATISFIABLE, "one range at a time".into()));
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let parse = |t: &str| t.trim().parse::<u64>().map_err(|_| unsatisfiable());
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, true) => Ok(Some((parse(a)?, None))),
        (false, false) => {
            let (first, last) = (parse(a)?, parse(b)?);
            if last < first {
                return Err(unsatisfiable());
            }
            Ok(Some((first, Some(last - first + 1))))
        }
        // The last N bytes: needs the size, which only the node knows; asked again below.
        (true, false) => {
            let n = parse(b)?;
            let size = size.ok_or_else(unsatisfiable)?;
            Ok(Some((size.saturating_sub(n), None)))
        }
        (true, true) => Err(unsatisfiable()),
    }
}

/// A file's bytes, as an answer describes them.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FileBytes(pub Vec<u8>);

/// One file's content, streamed.
///
/// `Range: bytes=FIRST-LAST` (or `FIRST-`, or `-LAST_N`) is answered with 206 Partial Content
/// and that range; one range at a time.
#[utoipa::path(get, path = "/points/{id}/files/content", params(("id" = String, Path), ContentQuery), responses(
    (status = 200, description = "the file's bytes", body = FileBytes, content_type = "application/octet-stream"),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 416, response = RangeNotSatisfiable),
    (status = 422, response = Invalid), (status = 502, response = NodeFailed),
))]
pub async fn point_file_content(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    c.may_restore()?;
    let (mut client, point, _) = access(&s, &id, q.volume).await?;
    // A suffix range (`bytes=-N`) needs the size: learn it from an empty first read.
    let size_hint =
        if headers.get(header::RANGE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("bytes=-")) {
            let req = ReadFileRequest { point: Some(point.clone()), path: q.path.clone(), offset: 0, length: 1 };
            let mut st = client.read_point_file(req).await.map_err(node_refused)?.into_inner();
            st.next().await.transpose().map_err(node_refused)?.map(|d| d.size)
        } else {
            None
        };
    let wanted = range(&headers, size_hint)?;
    let (offset, length) = wanted.map_or((0, None), |(o, l)| (o, l));
    let req = ReadFileRequest { point: Some(point), path: q.path.clone(), offset, length: length.unwrap_or(0) };
    let mut stream = client.read_point_file(req).await.map_err(node_refused)?.into_inner();
    let first = stream.next().await.transpose().map_err(node_refused)?;
    let size = first.as_ref().map_or(0, |d| d.size);
    if wanted.is_some() && offset >= size && size > 0 {
        return Err(ApiError(StatusCode::RANGE_NOT_SATISFIABLE, format!("the file has {size} bytes")));
    }
    let end = length.map_or(size, |l| offset.saturating_add(l).min(size));
    let name = q.path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("file").replace(['"', '\\', '\r', '\n'], "_");
    let body =
        Body::from_stream(tokio_stream::iter(first.into_iter().map(Ok::<_, tonic::Status>)).chain(stream).map(|r| {
            r.map(|d| axum::body::Bytes::from(d.data)).map_err(|s| std::io::Error::other(s.message().to_string()))
        }));
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end.saturating_sub(offset))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""));
    if wanted.is_some() {
        resp = resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {offset}-{}/{size}", end.saturating_sub(1)));
    }
    Ok(resp.body(body).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?.into_response())
}

/// A directory of a point and everything under it (or one file) as a tar stream.
///
/// Names are relative to the point's root (`/etc` → `etc/…`); regular files, directories and
/// symbolic links with their modes, owners and times; devices, fifos and sockets are left out.
#[utoipa::path(get, path = "/points/{id}/files/archive", params(("id" = String, Path), ContentQuery), responses(
    (status = 200, description = "a tar stream", body = FileBytes, content_type = "application/x-tar"),
    (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
    (status = 404, response = NotFound), (status = 422, response = Invalid), (status = 502, response = NodeFailed),
))]
pub async fn point_files_archive(
    c: Caller,
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> Result<Response, ApiError> {
    c.may_restore()?;
    let (mut client, point, _) = access(&s, &id, q.volume).await?;
    let req = ReadFileRequest { point: Some(point), path: q.path.clone(), offset: 0, length: 0 };
    let stream = client.read_point_archive(req).await.map_err(node_refused)?.into_inner();
    let name = q.path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("root").replace(['"', '\\', '\r', '\n'], "_");
    let body = Body::from_stream(stream.map(|r| {
        r.map(|d| axum::body::Bytes::from(d.data)).map_err(|s| std::io::Error::other(s.message().to_string()))
    }));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.tar\""))
        .body(body)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::RANGE, v.parse().unwrap());
        m
    }

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        assert_eq!(range(&HeaderMap::new(), None).unwrap(), None);
        assert_eq!(range(&h("bytes=0-99"), None).unwrap(), Some((0, Some(100))));
        assert_eq!(range(&h("bytes=100-"), None).unwrap(), Some((100, None)));
        assert_eq!(range(&h("bytes=-10"), Some(50)).unwrap(), Some((40, None)));
        assert!(range(&h("bytes=9-3"), None).is_err());
        assert!(range(&h("bytes=0-1,5-6"), None).is_err());
        assert!(range(&h("lines=1-2"), None).is_err());
    }
}
