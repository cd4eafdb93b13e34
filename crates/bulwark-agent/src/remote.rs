//! A [`BackupTarget`] across the network: the data mover the transport service started for
//! this task. The pipelines' worker threads call it synchronously; each call is one frame on a
//! gRPC stream, answered in order.
//!
//! Stream 0 carries the conversation (previous point, its index, begin, block entries,
//! commit); streams 1.. carry chunk queries and uploads, one worker at a time each. Uploads need
//! no answer: before the commit, every stream is flushed, so the commit never overtakes a chunk.

use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::pb::data_mover_client::DataMoverClient;
use bulwark_proto::pb::{agent_frame, mover_frame, AgentFrame, Commit, Empty, MoverFrame, Open, Put, Query};
use bulwark_proto::tls;
use bulwark_repo::crypto::Keys;
use bulwark_repo::index::BlockIndexReader;
use bulwark_repo::{
    BlockRef, ChunkCodec, ChunkId, Compression, FileSummary, Manifest, PointSpec, PointStats, RepoError,
    RestorePointId, Result, TreeCursor,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::target::{Answer, BackupTarget, PointSink};

/// Where the data mover is and how to prove the task is ours.
#[derive(Debug, Clone)]
pub struct MoverEndpoint {
    pub address: String,
    /// The transport node's name, checked against its certificate.
    pub node: String,
    pub ticket: String,
    pub streams: u32,
}

/// Stream 0: one request at a time, its answer read by the caller.
struct Stream {
    tx: mpsc::Sender<AgentFrame>,
    rx: Streaming<MoverFrame>,
}

type Waiter = tokio::sync::oneshot::Sender<std::result::Result<mover_frame::Frame, String>>;

/// A data stream: requests from any worker, answers (in order) matched to their waiters by a
/// reader task, so several queries can be in flight and a worker need not wait for its own.
struct DataStream {
    /// Held while a request is registered and sent, so waiters queue in the order of sending.
    send: Mutex<mpsc::Sender<AgentFrame>>,
    waiters: Arc<Mutex<std::collections::VecDeque<Waiter>>>,
    /// Why the stream ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
}

struct Inner {
    rt: Handle,
    label: String,
    keys: Keys,
    primary: Mutex<Stream>,
    data: Vec<DataStream>,
    next: AtomicUsize,
    /// Bytes handed to the network (chunks and index entries).
    sent: Arc<AtomicU64>,
    /// The first reason the data mover gave for ending the session, from any stream.
    failure: Arc<Mutex<Option<String>>>,
}

/// A connected data mover session. Cheap to clone.
#[derive(Clone)]
pub struct RemoteTarget(Arc<Inner>);

fn frame(f: agent_frame::Frame) -> AgentFrame {
    AgentFrame { frame: Some(f) }
}

impl Inner {
    fn err(&self, reason: impl Into<String>) -> RepoError {
        RepoError::Remote { repo: self.label.clone(), reason: reason.into() }
    }

    /// Sends a frame; if the mover has closed the stream, its last word (an error frame) is
    /// the reason given.
    fn send(&self, s: &mut Stream, f: AgentFrame) -> Result<()> {
        if s.tx.blocking_send(f).is_ok() {
            return Ok(());
        }
        Err(self.last_word(s))
    }

    /// The error to report for a stream that ended: the data mover's own reason if it gave one
    /// on any stream.
    fn ended(&self, fallback: String) -> RepoError {
        self.err(self.failure.lock().expect("lock").clone().unwrap_or(fallback))
    }

    /// Registers a waiter (if `answer`) and sends `f` on a data stream.
    fn data_send(
        &self,
        d: &DataStream,
        f: AgentFrame,
        answer: bool,
    ) -> Result<Option<tokio::sync::oneshot::Receiver<std::result::Result<mover_frame::Frame, String>>>> {
        let tx = d.send.lock().expect("stream lock");
        let rx = {
            // Checked and registered under the waiters' lock, which the reader holds while it
            // marks the stream ended and fails the waiters: no waiter is ever left behind.
            let mut waiters = d.waiters.lock().expect("lock");
            if let Some(e) = d.ended.lock().expect("lock").clone() {
                return Err(self.ended(e));
            }
            answer.then(|| {
                let (w, rx) = tokio::sync::oneshot::channel();
                waiters.push_back(w);
                rx
            })
        };
        if tx.blocking_send(f).is_err() {
            return Err(self.ended("the data mover closed the stream".into()));
        }
        Ok(rx)
    }

    fn data_wait(
        &self,
        rx: tokio::sync::oneshot::Receiver<std::result::Result<mover_frame::Frame, String>>,
    ) -> Result<mover_frame::Frame> {
        match rx.blocking_recv() {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(self.ended(e)),
            Err(_) => Err(self.ended("the data mover closed the stream".into())),
        }
    }

    fn last_word(&self, s: &mut Stream) -> RepoError {
        let got = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), s.rx.message()).await });
        match got {
            Ok(Ok(Some(MoverFrame { frame: Some(mover_frame::Frame::Error(e)) }))) => {
                self.err(format!("data mover: {e}"))
            }
            Ok(Err(status)) => self.err(format!("connection to the data mover lost: {}", status.message())),
            _ => self.err("the data mover closed the stream"),
        }
    }

    fn recv(&self, s: &mut Stream) -> Result<mover_frame::Frame> {
        match self.rt.block_on(s.rx.message()) {
            Ok(Some(MoverFrame { frame: Some(mover_frame::Frame::Error(e)) })) => {
                Err(self.err(format!("data mover: {e}")))
            }
            Ok(Some(MoverFrame { frame: Some(f) })) => Ok(f),
            Ok(Some(MoverFrame { frame: None })) => Err(self.err("empty frame from the data mover")),
            Ok(None) => Err(self.ended("the data mover closed the stream".into())),
            Err(status) => Err(self.ended(format!("connection to the data mover lost: {}", status.message()))),
        }
    }

    fn ask(&self, s: &mut Stream, f: agent_frame::Frame) -> Result<mover_frame::Frame> {
        self.send(s, frame(f))?;
        self.recv(s)
    }

    fn unexpected(&self, what: &str, f: &mover_frame::Frame) -> RepoError {
        self.err(format!("unexpected answer to {what}: {f:?}"))
    }

    /// A stream for one query or upload: round robin over the data streams.
    fn data_stream(&self) -> Option<&DataStream> {
        if self.data.is_empty() {
            return None;
        }
        Some(&self.data[self.next.fetch_add(1, Ordering::Relaxed) % self.data.len()])
    }
}

impl RemoteTarget {
    /// Connects to the data mover, opening `streams` streams on one connection.
    pub async fn connect(
        endpoint: &MoverEndpoint,
        tls_cfg: Arc<bulwark_proto::rustls::ClientConfig>,
    ) -> Result<RemoteTarget> {
        let label = format!("data mover at {}", endpoint.address);
        let err = |reason: String| RepoError::Remote { repo: label.clone(), reason };
        let expect = bulwark_proto::pki::identity_name(bulwark_proto::pki::Role::Transport, &endpoint.node);
        let channel = tls::connect(&endpoint.address, &expect, tls_cfg).await.map_err(|e| err(e.to_string()))?;
        let mut client = DataMoverClient::new(channel)
            .max_decoding_message_size(tls::MAX_MESSAGE)
            .max_encoding_message_size(tls::MAX_MESSAGE);
        let mut streams = Vec::new();
        let mut keys = Keys::none();
        for n in 0..endpoint.streams.max(1) {
            let (tx, rx) = mpsc::channel(8);
            let open = Open { protocol: bulwark_proto::PROTOCOL, ticket: endpoint.ticket.clone(), stream: n };
            tx.send(frame(agent_frame::Frame::Open(open))).await.expect("receiver alive");
            let mut rx = client
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| err(format!("refused: {}", s.message())))?
                .into_inner();
            match rx.message().await {
                Ok(Some(MoverFrame { frame: Some(mover_frame::Frame::Opened(o)) })) => {
                    keys = match o.master_key.len() {
                        0 => Keys::none(),
                        64 => Keys::from_master(&o.master_key.try_into().expect("64 bytes")),
                        n => return Err(err(format!("a master key of {n} bytes"))),
                    };
                }
                Ok(Some(MoverFrame { frame: Some(mover_frame::Frame::Error(e)) })) => return Err(err(e)),
                Ok(_) => return Err(err("no answer to open".into())),
                Err(s) => return Err(err(format!("refused: {}", s.message()))),
            }
            streams.push(Stream { tx, rx });
        }
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let mut data = Vec::new();
        for Stream { tx, mut rx } in streams.drain(1..) {
            let d = DataStream { send: Mutex::new(tx), waiters: Arc::default(), ended: Arc::default() };
            let (waiters, ended, failure) = (d.waiters.clone(), d.ended.clone(), failure.clone());
            tokio::spawn(async move {
                let reason = loop {
                    match rx.message().await {
                        Ok(Some(MoverFrame { frame: Some(mover_frame::Frame::Error(e)) })) => {
                            let e = format!("data mover: {e}");
                            failure.lock().expect("lock").get_or_insert(e.clone());
                            break e;
                        }
                        Ok(Some(MoverFrame { frame: Some(f) })) => {
                            if let Some(w) = waiters.lock().expect("lock").pop_front() {
                                let _ = w.send(Ok(f));
                            }
                        }
                        Ok(Some(MoverFrame { frame: None })) => {}
                        Ok(None) => break "the data mover closed the stream".to_string(),
                        Err(s) => break format!("connection to the data mover lost: {}", s.message()),
                    }
                };
                let mut waiters = waiters.lock().expect("lock");
                *ended.lock().expect("lock") = Some(reason.clone());
                for w in waiters.drain(..) {
                    let _ = w.send(Err(reason.clone()));
                }
            });
            data.push(d);
        }
        let primary = Mutex::new(streams.remove(0));
        Ok(RemoteTarget(Arc::new(Inner {
            rt: Handle::current(),
            label,
            keys,
            primary,
            data,
            next: AtomicUsize::new(0),
            sent: Arc::new(AtomicU64::new(0)),
            failure,
        })))
    }

    /// A restore point the data mover serves for a restore (its manifest).
    pub fn point(&self, id: &str) -> Result<Manifest> {
        let inner = &self.0;
        let mut s = inner.primary.lock().expect("stream lock");
        match inner.ask(&mut s, agent_frame::Frame::Point(id.to_string()))? {
            mover_frame::Frame::Manifest(j) if !j.is_empty() => {
                serde_json::from_str(&j).map_err(|e| inner.err(format!("unreadable manifest: {e}")))
            }
            f => Err(inner.unexpected("point", &f)),
        }
    }

    /// Bytes sent so far (for progress reports).
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.0.sent.clone()
    }
}

impl BackupTarget for RemoteTarget {
    fn label(&self) -> String {
        self.0.label.clone()
    }

    fn codec(&self, compression: Compression) -> ChunkCodec {
        ChunkCodec::new(self.0.keys.clone(), compression)
    }

    fn latest(&self, name: &str) -> Result<Option<Manifest>> {
        let inner = &self.0;
        let mut s = inner.primary.lock().expect("stream lock");
        match inner.ask(&mut s, agent_frame::Frame::Latest(name.to_string()))? {
            mover_frame::Frame::Manifest(j) if j.is_empty() => Ok(None),
            mover_frame::Frame::Manifest(j) => {
                serde_json::from_str(&j).map(Some).map_err(|e| inner.err(format!("unreadable manifest: {e}")))
            }
            f => Err(inner.unexpected("latest", &f)),
        }
    }

    fn open_index(&self, m: &Manifest) -> Result<BlockIndexReader> {
        let inner = &self.0;
        let io = |e: std::io::Error| inner.err(format!("keeping the previous index: {e}"));
        // The index goes to an unnamed temporary file: the agent authenticates and then reads
        // its own copy, which nobody else can change in between.
        let mut file = tempfile::tempfile().map_err(io)?;
        {
            let mut s = inner.primary.lock().expect("stream lock");
            inner.send(&mut s, frame(agent_frame::Frame::FetchIndex(m.id.to_string())))?;
            loop {
                match inner.recv(&mut s)? {
                    mover_frame::Frame::IndexData(d) => file.write_all(&d).map_err(io)?,
                    mover_frame::Frame::IndexEnd(_) => break,
                    f => return Err(inner.unexpected("fetch index", &f)),
                }
            }
        }
        let damaged =
            |reason: String| RepoError::DamagedPoint { repo: inner.label.clone(), point: m.id.to_string(), reason };
        let auth =
            m.index_auth_bytes().ok_or_else(|| damaged("manifest has a malformed index authenticator".into()))?;
        let open = || -> std::io::Result<Box<dyn std::io::Read + Send>> {
            let mut f = file.try_clone()?;
            f.seek(SeekFrom::Start(0))?;
            Ok(Box::new(f))
        };
        let reader = BlockIndexReader::open_with(&open, &inner.keys, &auth).map_err(damaged)?;
        let h = reader.header();
        if h.volume_size != m.volume_size || h.block_size != m.block_size {
            return Err(damaged("index does not match its manifest".into()));
        }
        Ok(reader)
    }

    fn tree_cursor(&self, m: &Manifest) -> Result<TreeCursor> {
        let index = self.open_index(m)?;
        let (target, mut codec) = (self.clone(), self.codec(Compression::None));
        let fetch = Box::new(move |id: &ChunkId| {
            let (mut stored, mut piece) = (Vec::new(), Vec::new());
            BackupTarget::read_chunk_into(&target, &mut codec, id, &mut stored, &mut piece)?;
            Ok(piece)
        });
        Ok(TreeCursor::new(self.label(), m, index, fetch))
    }

    fn have_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.query_chunks(ids)?.wait()
    }

    fn query_chunks(&self, ids: &[ChunkId]) -> Result<Answer> {
        if ids.is_empty() {
            return Ok(Answer::Ready(Vec::new()));
        }
        let inner = &self.0;
        let packed: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        let query = agent_frame::Frame::Query(Query { ids: packed });
        let check = {
            let (inner, n) = (self.0.clone(), ids.len());
            move |f: mover_frame::Frame| match f {
                mover_frame::Frame::Have(h) if h.len() == n => Ok(h.iter().map(|&b| b == 1).collect()),
                f => Err(inner.unexpected("query", &f)),
            }
        };
        let Some(d) = inner.data_stream() else {
            let mut s = inner.primary.lock().expect("stream lock");
            return Ok(Answer::Ready(check(inner.ask(&mut s, query)?)?));
        };
        let rx = inner.data_send(d, frame(query), true)?.expect("a waiter");
        let waiting = self.0.clone();
        Ok(Answer::Later(Box::new(move || check(waiting.data_wait(rx)?))))
    }

    fn put_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<()> {
        let inner = &self.0;
        let put = frame(agent_frame::Frame::Put(Put { id: id.0.to_vec(), data: stored.to_vec() }));
        match inner.data_stream() {
            Some(d) => {
                inner.data_send(d, put, false)?;
            }
            None => inner.send(&mut inner.primary.lock().expect("stream lock"), put)?,
        }
        inner.sent.fetch_add(stored.len() as u64 + 32, Ordering::Relaxed);
        Ok(())
    }

    fn read_chunk_into(
        &self,
        codec: &mut ChunkCodec,
        id: &ChunkId,
        stored: &mut Vec<u8>,
        block: &mut Vec<u8>,
    ) -> Result<()> {
        let inner = &self.0;
        let ask = frame(agent_frame::Frame::FetchChunk(id.0.to_vec()));
        let answer = match inner.data_stream() {
            Some(d) => {
                let rx = inner.data_send(d, ask, true)?.expect("a waiter");
                inner.data_wait(rx)?
            }
            None => {
                let mut s = inner.primary.lock().expect("stream lock");
                inner.send(&mut s, ask)?;
                inner.recv(&mut s)?
            }
        };
        let mover_frame::Frame::ChunkData(data) = answer else {
            return Err(inner.unexpected("fetch chunk", &answer));
        };
        *stored = data;
        codec.decode_into(id, stored, block).map_err(|e| RepoError::DamagedChunk {
            repo: inner.label.clone(),
            id: *id,
            reason: e.to_string(),
        })
    }

    fn begin_point(&self, spec: PointSpec) -> Result<Box<dyn PointSink + '_>> {
        let inner = &self.0;
        let json = serde_json::to_string(&spec).expect("spec");
        let mut s = inner.primary.lock().expect("stream lock");
        match inner.ask(&mut s, agent_frame::Frame::Begin(json))? {
            mover_frame::Frame::Begun(j) => {
                #[derive(serde::Deserialize)]
                struct Begun {
                    parent: Option<RestorePointId>,
                }
                let b: Begun = serde_json::from_str(&j).map_err(|e| inner.err(format!("begin: {e}")))?;
                Ok(Box::new(RemoteSink { target: self.clone(), parent: b.parent, pending: Vec::new() }))
            }
            f => Err(inner.unexpected("begin", &f)),
        }
    }
}

/// Block entries are sent in frames of this many.
const ENTRIES_PER_FRAME: usize = 4096;

struct RemoteSink {
    target: RemoteTarget,
    parent: Option<RestorePointId>,
    pending: Vec<u8>,
}

impl RemoteSink {
    fn send_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let inner = &self.target.0;
        let entries = std::mem::take(&mut self.pending);
        inner.sent.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let mut s = inner.primary.lock().expect("stream lock");
        inner.send(&mut s, frame(agent_frame::Frame::Blocks(entries)))
    }

    /// Every upload stored, then the commit.
    fn finish(mut self, commit: Commit) -> Result<Manifest> {
        self.send_pending()?;
        let inner = &self.target.0;
        for d in &inner.data {
            let rx = inner.data_send(d, frame(agent_frame::Frame::Flush(Empty {})), true)?.expect("a waiter");
            match inner.data_wait(rx)? {
                mover_frame::Frame::Flushed(_) => {}
                f => return Err(inner.unexpected("flush", &f)),
            }
        }
        let mut s = inner.primary.lock().expect("stream lock");
        match inner.ask(&mut s, agent_frame::Frame::Commit(commit))? {
            mover_frame::Frame::Committed(j) => {
                serde_json::from_str(&j).map_err(|e| inner.err(format!("unreadable manifest: {e}")))
            }
            f => Err(inner.unexpected("commit", &f)),
        }
    }
}

impl PointSink for RemoteSink {
    fn parent(&self) -> Option<&RestorePointId> {
        self.parent.as_ref()
    }

    fn push_block(&mut self, r: &BlockRef) -> Result<()> {
        self.pending.extend_from_slice(&r.entry());
        if self.pending.len() >= ENTRIES_PER_FRAME * 32 {
            self.send_pending()?;
        }
        Ok(())
    }

    fn commit(self: Box<Self>, stats: PointStats) -> Result<Manifest> {
        let stats_json = serde_json::to_string(&stats).expect("stats");
        self.finish(Commit { stats_json, ..Default::default() })
    }

    fn commit_files(
        self: Box<Self>,
        pieces: &[ChunkId],
        tree_len: u64,
        stats: PointStats,
        summary: FileSummary,
    ) -> Result<Manifest> {
        self.finish(Commit {
            stats_json: serde_json::to_string(&stats).expect("stats"),
            files: true,
            pieces: pieces.iter().flat_map(|p| p.0).collect(),
            tree_len,
            summary_json: serde_json::to_string(&summary).expect("summary"),
        })
    }
}
