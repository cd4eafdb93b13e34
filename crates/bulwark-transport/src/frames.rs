//! What an agent may ask of a data mover, decoded and checked before anything acts on it.
//! Everything the network delivers passes through [`decode`]; it is what `fuzz/` exercises.

use bulwark_proto::pb::{agent_frame::Frame, AgentFrame};
use bulwark_repo::{BlockRef, ChunkId, FileSummary, PointSpec, PointStats, RestorePointId};
use prost::Message;

/// One checked request.
#[derive(Debug)]
pub enum Request {
    Open { protocol: u32, ticket: String, stream: u32 },
    Latest(String),
    FetchIndex(RestorePointId),
    FetchChunk(ChunkId),
    Query(Vec<ChunkId>),
    Put { id: ChunkId, data: Vec<u8> },
    Begin(Box<PointSpec>),
    Blocks(Vec<BlockRef>),
    Commit(Box<Commit>),
    Flush,
    Point(RestorePointId),
}

#[derive(Debug)]
pub struct Commit {
    pub stats: PointStats,
    /// For a file point: its tree's pieces, length and summary.
    pub files: Option<(Vec<ChunkId>, u64, FileSummary)>,
}

/// The most chunk ids one query may carry.
pub const MAX_QUERY: usize = 65_536;

fn ids(bytes: &[u8], what: &str) -> Result<Vec<ChunkId>, String> {
    if !bytes.len().is_multiple_of(32) {
        return Err(format!("{what}: {} bytes is not a whole number of 32-byte chunk ids", bytes.len()));
    }
    Ok(bytes.chunks_exact(32).map(|c| ChunkId(c.try_into().expect("32 bytes"))).collect())
}

fn id(bytes: &[u8], what: &str) -> Result<ChunkId, String> {
    let v = ids(bytes, what)?;
    match v.as_slice() {
        [one] => Ok(*one),
        _ => Err(format!("{what}: expected one 32-byte chunk id, got {} bytes", bytes.len())),
    }
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(s).map_err(|e| format!("{what}: {e}"))
}

impl TryFrom<AgentFrame> for Request {
    type Error = String;
    fn try_from(f: AgentFrame) -> Result<Request, String> {
        Ok(match f.frame.ok_or("empty frame")? {
            Frame::Open(o) => Request::Open { protocol: o.protocol, ticket: o.ticket, stream: o.stream },
            Frame::Latest(name) => {
                bulwark_repo::point::validate_name(&name).map_err(|e| format!("latest: {e}"))?;
                Request::Latest(name)
            }
            Frame::FetchIndex(p) => Request::FetchIndex(p.parse().map_err(|e| format!("fetch index: {e}"))?),
            Frame::FetchChunk(b) => Request::FetchChunk(id(&b, "fetch chunk")?),
            Frame::Query(q) => {
                let v = ids(&q.ids, "query")?;
                if v.len() > MAX_QUERY {
                    return Err(format!("query of {} ids (at most {MAX_QUERY})", v.len()));
                }
                Request::Query(v)
            }
            Frame::Put(p) => {
                let len = p.data.len();
                if (len as u64) < bulwark_repo::chunk::MIN_STORED_LEN || len > bulwark_proto::tls::MAX_MESSAGE {
                    return Err(format!("put: a stored chunk of {len} bytes is impossible"));
                }
                Request::Put { id: id(&p.id, "put")?, data: p.data }
            }
            Frame::Begin(spec) => {
                let spec: PointSpec = json(&spec, "begin")?;
                bulwark_repo::point::validate_name(&spec.name).map_err(|e| format!("begin: {e}"))?;
                Request::Begin(Box::new(spec))
            }
            Frame::Blocks(b) => {
                if !b.len().is_multiple_of(32) {
                    return Err(format!("blocks: {} bytes is not a whole number of entries", b.len()));
                }
                Request::Blocks(b.chunks_exact(32).map(|c| BlockRef::from_entry(c.try_into().expect("32"))).collect())
            }
            Frame::Commit(c) => {
                let stats: PointStats = json(&c.stats_json, "commit stats")?;
                let files = if c.files {
                    let summary: FileSummary = json(&c.summary_json, "commit summary")?;
                    Some((ids(&c.pieces, "commit pieces")?, c.tree_len, summary))
                } else {
                    None
                };
                Request::Commit(Box::new(Commit { stats, files }))
            }
            Frame::Flush(_) => Request::Flush,
            Frame::Point(p) => Request::Point(p.parse().map_err(|e| format!("point: {e}"))?),
        })
    }
}

/// Decodes one frame as it arrives off the wire (protobuf), then checks it.
pub fn decode(bytes: &[u8]) -> Result<Request, String> {
    let f = AgentFrame::decode(bytes).map_err(|e| format!("undecodable frame: {e}"))?;
    Request::try_from(f)
}
