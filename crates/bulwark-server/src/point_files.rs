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
    /// Volume 0 of a disk whose partition table is damaged: what is wrong with it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

impl From<bulwark_proto::pb::VolumeInfo> for VolumeRow {
    fn from(v: bulwark_proto::pb::VolumeInfo) -> Self {
        VolumeRow {
            number: v.number,
            start: v.start,
            size: v.size,
            table: v.table,
            partition_type: v.partition_type,
            label: v.label,
            content: v.content,
            problem: v.problem,
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

/// A connection to transport node `name`; `None` if no such node has joined.
pub(crate) async fn transport_client(s: &S, name: &str) -> Result<Option<TransportClient<Channel>>, ApiError> {
    let Some(node) = store::node(&s.core.db, "transport", name).await? else { return Ok(None) };
    let client = s
        .core
        .manager
        .transport(&node.address())
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Some(client))
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
    let client = transport_client(s, &transport)
        .await?
        .ok_or_else(|| ApiError(StatusCode::BAD_GATEWAY, format!("transport node {transport} is gone")))?;
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
    Ok(Json(reply.volumes.into_iter().map(Into::into).collect()))
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

/// What a `Range: bytes=…` header asks for (one range; RFC 9110).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// No Range header: the whole file, 200.
    Whole,
    /// `FIRST-` or `FIRST-LAST` (LAST inclusive).
    From(u64, Option<u64>),
    /// `-N`: the last N bytes.
    Suffix(u64),
}

fn unsatisfiable(size: Option<u64>) -> ApiError {
    let what =
        size.map_or_else(|| "the Range header cannot be read".to_string(), |s| format!("the file has {s} bytes"));
    ApiError(StatusCode::RANGE_NOT_SATISFIABLE, format!("{what}: one range, bytes=FIRST-LAST, FIRST- or -N"))
}

fn wanted(headers: &HeaderMap) -> Result<Wanted, ApiError> {
    let Some(v) = headers.get(header::RANGE) else { return Ok(Wanted::Whole) };
    let spec = v.to_str().ok().and_then(|s| s.strip_prefix("bytes=")).ok_or_else(|| unsatisfiable(None))?;
    let (a, b) = spec.split_once('-').filter(|_| !spec.contains(',')).ok_or_else(|| unsatisfiable(None))?;
    let parse = |t: &str| t.trim().parse::<u64>().map_err(|_| unsatisfiable(None));
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, true) => Ok(Wanted::From(parse(a)?, None)),
        (false, false) => {
            let (first, last) = (parse(a)?, parse(b)?);
            if last < first {
                return Err(unsatisfiable(None));
            }
            Ok(Wanted::From(first, Some(last)))
        }
        (true, false) => Ok(Wanted::Suffix(parse(b)?)),
        (true, true) => Err(unsatisfiable(None)),
    }
}

/// The bytes `[first, end)` of a file of `size` bytes that `w` asks for, or why none.
fn span(w: Wanted, size: u64) -> Result<(u64, u64), ApiError> {
    let (first, end) = match w {
        Wanted::Whole => return Ok((0, size)),
        Wanted::From(first, last) => (first, last.map_or(size, |l| l.saturating_add(1).min(size))),
        Wanted::Suffix(n) => (size.saturating_sub(n), size),
    };
    if first >= size || first >= end {
        return Err(unsatisfiable(Some(size)));
    }
    Ok((first, end))
}

/// `Content-Disposition` for a download named `name` (any bytes a file name may hold): an ASCII
/// stand-in for old clients and the exact name percent-encoded (RFC 6266).
fn disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' { c } else { '_' })
        .collect();
    let exact: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}")
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
    let w = wanted(&headers)?;
    // Where to start: a suffix range needs the size, which a first read of nothing learns.
    let (offset, length) = match w {
        Wanted::Whole => (0, 0),
        Wanted::From(first, last) => (first, last.map_or(0, |l| (l - first).saturating_add(1))),
        Wanted::Suffix(_) => {
            let req = ReadFileRequest { point: Some(point.clone()), path: q.path.clone(), offset: 0, length: 1 };
            let mut st = client.read_point_file(req).await.map_err(node_refused)?.into_inner();
            let size = st.next().await.transpose().map_err(node_refused)?.map_or(0, |d| d.size);
            (span(w, size)?.0, 0)
        }
    };
    let req = ReadFileRequest { point: Some(point), path: q.path.clone(), offset, length };
    let mut stream = client.read_point_file(req).await.map_err(node_refused)?.into_inner();
    let first = stream.next().await.transpose().map_err(node_refused)?;
    let size = first.as_ref().map_or(0, |d| d.size);
    let (offset, end) = span(w, size)?;
    let name = q.path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("file");
    let body =
        Body::from_stream(tokio_stream::iter(first.into_iter().map(Ok::<_, tonic::Status>)).chain(stream).map(|r| {
            r.map(|d| axum::body::Bytes::from(d.data)).map_err(|s| std::io::Error::other(s.message().to_string()))
        }));
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end.saturating_sub(offset))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_DISPOSITION, disposition(name));
    if w != Wanted::Whole {
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
    let name = format!("{}.tar", q.path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("root"));
    let body = Body::from_stream(stream.map(|r| {
        r.map(|d| axum::body::Bytes::from(d.data)).map_err(|s| std::io::Error::other(s.message().to_string()))
    }));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_DISPOSITION, disposition(&name))
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
    fn download_names_are_safe_in_a_header() {
        assert_eq!(disposition("a b.txt"), "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt");
        let odd = disposition("caf\u{e9}\n\"x\u{1}");
        assert!(odd.starts_with("attachment; filename=\"caf___x_\""), "{odd}");
        assert!(odd.parse::<axum::http::HeaderValue>().is_ok(), "{odd}");
    }

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        assert_eq!(wanted(&HeaderMap::new()).unwrap(), Wanted::Whole);
        assert_eq!(span(wanted(&h("bytes=0-99")).unwrap(), 1000).unwrap(), (0, 100));
        assert_eq!(span(wanted(&h("bytes=100-")).unwrap(), 1000).unwrap(), (100, 1000));
        assert_eq!(span(wanted(&h("bytes=-10")).unwrap(), 50).unwrap(), (40, 50));
        assert_eq!(span(wanted(&h("bytes=-100")).unwrap(), 50).unwrap(), (0, 50));
        assert_eq!(span(wanted(&h("bytes=0-18446744073709551615")).unwrap(), 7).unwrap(), (0, 7));
        assert_eq!(span(Wanted::Whole, 0).unwrap(), (0, 0), "an empty file whole is fine");
        for bad in ["bytes=0-", "bytes=-5", "bytes=5-"] {
            assert!(span(wanted(&h(bad)).unwrap(), 0).is_err(), "{bad} of an empty file");
        }
        assert!(span(wanted(&h("bytes=1000-")).unwrap(), 1000).is_err());
        assert!(span(wanted(&h("bytes=-0")).unwrap(), 1000).is_err());
        assert!(wanted(&h("bytes=9-3")).is_err());
        assert!(wanted(&h("bytes=0-1,5-6")).is_err());
        assert!(wanted(&h("lines=1-2")).is_err());
    }
}
