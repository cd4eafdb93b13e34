//! The data mover: one process per task, started by the transport service. It listens on a
//! port of its own, accepts exactly one agent connection presenting the task's ticket from the
//! agent the ticket was issued for, and writes what that agent sends into the repository.
//!
//! Stdout is its report to the transport service: a first line `{"port": N}` (or
//! `{"error": …}` when it cannot start), a last line with the [`MoverOutcome`].
//!
//! Stream 0 of the session carries the conversation in order (the previous point, its index,
//! begin, block entries, commit); streams 1.. carry chunk queries and uploads in parallel. Each
//! stream is served by its own thread, in order, and its uploads by a second one, in order;
//! `flush` and `commit` are answered once every chunk queued on any stream is stored. Every new
//! chunk is checked against its name (authenticated, decompressed, hashed)
//! before it is stored: what an agent uploads cannot pose as other content.
//!
//! A session that ends any other way than by its commits (the agent dies, the connection is cut,
//! a frame is malformed, the disk fills) drops the point being written: nothing partial becomes
//! visible, and the chunks already written are garbage for the next collection.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_proto::domain::{Failure, MoverStatus};
use bulwark_proto::pb::data_mover_server::{DataMover, DataMoverServer};
use bulwark_proto::pb::{mover_frame, AgentFrame, Empty, MoverFrame, Opened};
use bulwark_proto::pki::{Identity, Role};
use bulwark_proto::tls::{self, PeerInfo, Revocations, TlsIdentity};
use bulwark_repo::{ChunkCodec, ChunkId, Compression, Manifest, PointKind, PointWriter, Repository};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::frames::{Commit, Request as Ask};
use crate::throttle::{Throttle, ThrottleRule};

/// What the transport service tells a data mover it starts (as JSON on its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoverConfig {
    pub task_id: String,
    pub repository: bulwark_repo::storage::Location,
    pub password: Option<String>,
    /// The only agent allowed to connect.
    pub agent: String,
    pub ticket: String,
    /// The backup names the task may read and write.
    pub names: Vec<String>,
    /// A restore: the mover serves only this point (its index and chunks) and writes nothing.
    #[serde(default)]
    pub restore_point: Option<String>,
    pub throttle: ThrottleRule,
    pub max_streams: u32,
    /// How long to wait for the agent before giving up.
    pub connect_timeout_s: u64,
    /// Address to listen on (port 0: any).
    pub listen: String,
    /// The transport node's data directory: its identity and revocation list.
    pub data_dir: PathBuf,
}

/// What the data mover did, its last line on stdout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MoverOutcome {
    pub status: MoverStatus,
    /// Failed: whether a retry can help.
    #[serde(default)]
    pub failure: Option<Failure>,
    pub error: Option<String>,
    pub manifests: Vec<Manifest>,
    pub received_bytes: u64,
    /// The data mover's peak resident memory.
    pub peak_rss_bytes: u64,
}

/// This process's peak resident memory (VmHWM), 0 if unknown.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Frames of index data sent at a time.
const INDEX_FRAME: usize = 1 << 20;

struct Session {
    cfg: MoverConfig,
    repo: Repository,
    throttle: Throttle,
    connection: Mutex<Option<u64>>,
    open_streams: Mutex<HashSet<u32>>,
    writer: Mutex<Option<PointWriter>>,
    begun: AtomicBool,
    /// Points this session may read (returned by `latest`), and the tree pieces of those read.
    readable: Mutex<HashSet<String>>,
    pieces: Mutex<HashSet<ChunkId>>,
    manifests: Mutex<Vec<Manifest>>,
    received: AtomicU64,
    failure: Mutex<Option<String>>,
    /// Every stream's way back to the agent.
    streams: Mutex<Vec<mpsc::Sender<Result<MoverFrame, Status>>>>,
    done: Notify,
    /// Uploads queued on any stream and not yet stored (or refused): a commit waits for none.
    unstored: Mutex<u64>,
    stored: std::sync::Condvar,
}

impl Session {
    /// Ends the session: the reason goes to the log and, on every stream, to the agent, which
    /// may next use any of them.
    fn fail(&self, reason: String) {
        warn!("task {}: {reason}", self.cfg.task_id);
        let mut f = self.failure.lock().expect("lock");
        if f.is_none() {
            *f = Some(reason.clone());
            for tx in self.streams.lock().expect("lock").iter() {
                let _ = tx.try_send(Ok(reply(mover_frame::Frame::Error(reason.clone()))));
            }
        }
        drop(f);
        self.stored.notify_all();
        self.done.notify_one();
    }

    /// Waits until every upload queued on any stream is stored; an error once the session failed.
    /// The agent flushes its streams before it commits; a commit never relies on that.
    fn all_stored(&self) -> Result<(), String> {
        let mut n = self.unstored.lock().expect("lock");
        loop {
            if let Some(reason) = self.failure.lock().expect("lock").clone() {
                return Err(reason);
            }
            if *n == 0 {
                return Ok(());
            }
            n = self.stored.wait(n).expect("lock");
        }
    }

    fn outcome(&self) -> MoverOutcome {
        // A point still open is dropped: nothing partial becomes visible. (If a stream thread
        // holds it, the process's exit drops it just the same.)
        if let Ok(mut w) = self.writer.try_lock() {
            drop(w.take());
        }
        let manifests = self.manifests.lock().expect("lock").clone();
        let error = self.failure.lock().expect("lock").clone();
        let restoring = self.cfg.restore_point.is_some();
        let error = error.or_else(|| {
            (manifests.is_empty() && !restoring).then(|| "the agent committed no restore point".to_string())
        });
        MoverOutcome {
            status: if error.is_none() { MoverStatus::Committed } else { MoverStatus::Failed },
            failure: error.is_some().then_some(Failure::Transient),
            error,
            manifests,
            received_bytes: self.received.load(Ordering::Relaxed),
            peak_rss_bytes: peak_rss_bytes(),
        }
    }

    /// Backup names outside the task's are refused: an agent reads and writes only its own.
    fn may_use(&self, name: &str) -> Result<(), String> {
        if self.cfg.names.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(format!("backup name {name:?} is not one of task {}'s", self.cfg.task_id))
        }
    }

    /// Serves one stream, in order, on a blocking thread. Its uploads are checked and stored by
    /// a thread of their own, in order, while this one receives the next frames: checking a
    /// chunk against its name costs about what receiving it does, and the two overlap.
    fn serve_stream(
        &self,
        n: u32,
        mut inbound: Streaming<AgentFrame>,
        tx: mpsc::Sender<Result<MoverFrame, Status>>,
        rt: tokio::runtime::Handle,
    ) {
        let (store, stored) = std::sync::mpsc::sync_channel::<Upload>(8);
        let ended = std::thread::scope(|scope| {
            let tx = &tx;
            scope.spawn(move || self.store_chunks(stored, tx));
            let ended = self.receive(n, &mut inbound, tx, &store, &rt);
            // The storing thread ends once it has stored what it was given.
            drop(store);
            ended
        });
        if !ended {
            return;
        }
        if n == 0 {
            if self.writer.lock().expect("lock").is_some() {
                self.fail("the agent ended the session before committing its restore point".into());
            }
            self.done.notify_one();
        }
    }

    /// Receives a stream's frames and acts on them, until the agent closes it (`true`) or the
    /// session fails (`false`).
    fn receive(
        &self,
        n: u32,
        inbound: &mut Streaming<AgentFrame>,
        tx: &mpsc::Sender<Result<MoverFrame, Status>>,
        store: &std::sync::mpsc::SyncSender<Upload>,
        rt: &tokio::runtime::Handle,
    ) -> bool {
        loop {
            let frame = match rt.block_on(inbound.message()) {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(e) => {
                    self.fail(format!("stream {n} from the agent broke: {}", e.message()));
                    return false;
                }
            };
            let outcome = Ask::try_from(frame).and_then(|ask| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(n, ask, tx, store)))
                    .unwrap_or_else(|_| Err("internal error handling a frame (see the data mover's log)".into()))
            });
            if let Err(reason) = outcome {
                let _ = tx.blocking_send(Ok(reply(mover_frame::Frame::Error(reason.clone()))));
                self.fail(reason);
                return false;
            }
        }
    }

    /// Checks and stores a stream's uploads in the order they came. It sends the agent nothing
    /// but a failure: every answer on a stream leaves from its receiving thread, in order.
    fn store_chunks(&self, uploads: std::sync::mpsc::Receiver<Upload>, tx: &mpsc::Sender<Result<MoverFrame, Status>>) {
        let mut check = ChunkCheck { codec: self.repo.codec(Compression::None), block: Vec::new() };
        for (id, data) in uploads {
            let done =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.store_chunk(&id, &data, &mut check)))
                    .unwrap_or_else(|_| Err("internal error storing a chunk (see the data mover's log)".into()));
            // A refused chunk fails the session before it stops counting as unstored: a commit
            // waiting for the count must see the failure, never a count of zero alone.
            if let Err(reason) = &done {
                self.fail(reason.clone());
                let _ = tx.blocking_send(Ok(reply(mover_frame::Frame::Error(reason.clone()))));
            }
            *self.unstored.lock().expect("lock") -= 1;
            self.stored.notify_all();
            if done.is_err() {
                return;
            }
        }
    }

    fn store_chunk(&self, id: &ChunkId, data: &[u8], check: &mut ChunkCheck) -> Result<(), String> {
        // A chunk already there is never replaced: whatever an agent sends, it cannot change
        // what other points reference. (Only a missing or empty one is written.)
        if self.repo.reuse_chunk(id).map_err(|e| e.to_string())? {
            return Ok(());
        }
        // Nor does a new chunk count before it is proven to hold what its name says: otherwise
        // an agent could plant forged content under the name of data other computers will back
        // up, and their backups would dedupe against it.
        check.codec.decode_into(id, data, &mut check.block).map_err(|fault| {
            format!(
                "chunk {id} sent by agent {} does not hold what its name says ({fault}): refused, nothing stored",
                self.cfg.agent
            )
        })?;
        self.repo.put_chunk(id, data).map_err(|e| e.to_string())
    }

    fn handle(
        &self,
        n: u32,
        ask: Ask,
        tx: &mpsc::Sender<Result<MoverFrame, Status>>,
        store: &std::sync::mpsc::SyncSender<Upload>,
    ) -> Result<(), String> {
        use mover_frame::Frame as F;
        let send = |f: F| tx.blocking_send(Ok(reply(f))).map_err(|_| "the agent went away".to_string());
        let repo_err = |e: bulwark_repo::RepoError| e.to_string();
        let primary =
            |what: &str| if n == 0 { Ok(()) } else { Err(format!("{what} on stream {n} (only stream 0 may)")) };
        let begun = || {
            if self.begun.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("chunks sent before a restore point was begun".to_string())
            }
        };
        // (When the storing thread has failed, the session is over: its reason is out.)
        let ended = || "the session ended".to_string();
        let writes = matches!(ask, Ask::Begin(_) | Ask::Put { .. } | Ask::Query(_) | Ask::Blocks(_) | Ask::Commit(_));
        if writes && self.cfg.restore_point.is_some() {
            return Err("this data mover serves a restore: it writes nothing".into());
        }
        match ask {
            Ask::Open { .. } => return Err("open sent twice".into()),
            Ask::Point(id) => {
                if self.cfg.restore_point.as_deref() != Some(id.as_str()) {
                    return Err(format!("point {id} is not the one this restore serves"));
                }
                let m = self.repo.load_manifest(&id).map_err(repo_err)?;
                send(F::Manifest(serde_json::to_string(&m).expect("manifest")))?;
            }
            Ask::Latest(name) => {
                self.may_use(&name)?;
                let m = self.repo.latest_own(&name).map_err(repo_err)?;
                if let Some(m) = &m {
                    self.readable.lock().expect("lock").insert(m.id.to_string());
                }
                send(F::Manifest(m.map(|m| serde_json::to_string(&m).expect("manifest")).unwrap_or_default()))?;
            }
            Ask::FetchIndex(id) => {
                primary("fetch index")?;
                if !self.readable.lock().expect("lock").contains(id.as_str()) {
                    return Err(format!("point {id} is not this task's previous point"));
                }
                let m = self.repo.load_manifest(&id).map_err(repo_err)?;
                // (A restore's pieces were all collected when the mover started.)
                if m.kind == PointKind::Files && self.cfg.restore_point.is_none() {
                    let mut ix = self.repo.open_index(&m).map_err(repo_err)?;
                    let mut pieces = self.pieces.lock().expect("lock");
                    while let Some(r) = ix.next_block().map_err(|e| format!("reading index of {id}: {e}"))? {
                        if let bulwark_repo::BlockRef::Chunk(c) = r {
                            pieces.insert(c);
                        }
                    }
                }
                let mut input = self.repo.read_index_object(&m).map_err(repo_err)?;
                let mut buf = vec![0u8; INDEX_FRAME];
                loop {
                    let got = read_full(&mut input, &mut buf).map_err(|e| format!("reading index of {id}: {e}"))?;
                    if got == 0 {
                        break;
                    }
                    send(F::IndexData(buf[..got].to_vec()))?;
                }
                send(F::IndexEnd(Empty {}))?;
            }
            Ask::FetchChunk(id) => {
                if !self.pieces.lock().expect("lock").contains(&id) {
                    return Err(format!("chunk {id} is not a piece of a tree this task may read"));
                }
                send(F::ChunkData(self.repo.read_stored_chunk(&id).map_err(repo_err)?))?;
            }
            Ask::Query(ids) => {
                begun()?;
                // Chunks not yet checked since they were written are read back here: on every
                // core, or this stream's first incremental waits on one.
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let have = self.repo.reuse_chunks(&ids, threads).map_err(repo_err)?;
                send(F::Have(have.into_iter().map(u8::from).collect()))?;
            }
            Ask::Put { id, data } => {
                begun()?;
                self.throttle.take(data.len() as u64);
                self.received.fetch_add(data.len() as u64 + 32, Ordering::Relaxed);
                *self.unstored.lock().expect("lock") += 1;
                if store.send((id, data)).is_err() {
                    *self.unstored.lock().expect("lock") -= 1;
                    return Err(ended());
                }
            }
            Ask::Begin(spec) => {
                primary("begin")?;
                self.may_use(&spec.name)?;
                let begun = {
                    let mut w = self.writer.lock().expect("lock");
                    if w.is_some() {
                        return Err("begin while a restore point is open".into());
                    }
                    let writer = self.repo.begin_point(*spec).map_err(repo_err)?;
                    let begun = serde_json::json!({"id": writer.id(), "parent": writer.parent()});
                    *w = Some(writer);
                    begun
                };
                self.begun.store(true, Ordering::Release);
                send(F::Begun(begun.to_string()))?;
            }
            Ask::Blocks(refs) => {
                primary("blocks")?;
                let mut w = self.writer.lock().expect("lock");
                let w = w.as_mut().ok_or("block entries before begin")?;
                for r in &refs {
                    w.push_block(r).map_err(repo_err)?;
                }
                self.received.fetch_add(refs.len() as u64 * 32, Ordering::Relaxed);
            }
            Ask::Commit(c) => {
                primary("commit")?;
                // Everything the point refers to must be stored (and was checked) before its
                // manifest is written: the uploads queued on every stream. A session that
                // failed commits nothing.
                self.all_stored()?;
                let writer = self.writer.lock().expect("lock").take().ok_or("commit before begin")?;
                let Commit { stats, files } = *c;
                let m = match files {
                    None => writer.commit(stats),
                    Some((pieces, tree_len, summary)) => writer.commit_files(&pieces, tree_len, stats, summary),
                }
                .map_err(repo_err)?;
                info!("task {}: committed restore point {} ({})", self.cfg.task_id, m.id, m.name);
                send(F::Committed(serde_json::to_string(&m).expect("manifest")))?;
                self.manifests.lock().expect("lock").push(m);
            }
            // The agent flushes its streams once, before it commits: every upload queued on any
            // stream is stored by the answer.
            Ask::Flush => {
                self.all_stored()?;
                send(F::Flushed(Empty {}))?;
            }
        }
        Ok(())
    }
}

/// An upload for a stream's storing thread: a chunk's name and its stored form.
type Upload = (ChunkId, Vec<u8>);

/// A stream's means of checking uploaded chunks against their names (reused for every chunk).
struct ChunkCheck {
    codec: ChunkCodec,
    block: Vec<u8>,
}

fn reply(f: mover_frame::Frame) -> MoverFrame {
    MoverFrame { frame: Some(f) }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Compares tickets in time independent of where they differ.
fn same_ticket(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct Service(Arc<Session>);

fn refuse(peer: &str, why: String) -> Status {
    warn!("refused {peer}: {why}");
    Status::permission_denied(why)
}

#[tonic::async_trait]
impl DataMover for Service {
    type SessionStream = ReceiverStream<Result<MoverFrame, Status>>;

    async fn session(&self, req: Request<Streaming<AgentFrame>>) -> Result<Response<Self::SessionStream>, Status> {
        let s = &self.0;
        let who = tls::require_peer(&req, &[Role::Agent], "send a backup to a data mover")?;
        let conn = req.extensions().get::<PeerInfo>().map(|p| p.connection).unwrap_or_default();
        let peer = who.to_string();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| refuse(&peer, "no open frame within 30 s".into()))?;
        let first = match first {
            Ok(Some(f)) => Ask::try_from(f).map_err(|e| refuse(&peer, format!("malformed first frame: {e}")))?,
            Ok(None) => return Err(refuse(&peer, "empty stream".into())),
            Err(e) => return Err(refuse(&peer, format!("broken stream: {}", e.message()))),
        };
        let Ask::Open { protocol, ticket, stream } = first else {
            return Err(refuse(&peer, "the first frame of a stream must open it".into()));
        };
        bulwark_proto::check_protocol(protocol, "agent").map_err(|e| refuse(&peer, e.message().to_string()))?;
        if !same_ticket(&ticket, &s.cfg.ticket) {
            return Err(refuse(&peer, format!("the ticket is not the one of task {}", s.cfg.task_id)));
        }
        if who.name != s.cfg.agent {
            return Err(refuse(
                &peer,
                format!(
                    "the ticket of task {} was issued to agent {}, not to {}",
                    s.cfg.task_id, s.cfg.agent, who.name
                ),
            ));
        }
        {
            let mut c = s.connection.lock().expect("lock");
            match *c {
                None => *c = Some(conn),
                Some(first) if first == conn => {}
                Some(_) => return Err(refuse(&peer, "the ticket was already used by another connection".into())),
            }
        }
        if stream >= s.cfg.max_streams.max(1) {
            return Err(refuse(&peer, format!("stream {stream} exceeds the task's {} streams", s.cfg.max_streams)));
        }
        if !s.open_streams.lock().expect("lock").insert(stream) {
            return Err(refuse(&peer, format!("stream {stream} opened twice")));
        }
        info!("task {}: {peer} opened stream {stream}", s.cfg.task_id);
        let (tx, rx) = mpsc::channel(16);
        let opened = Opened {
            master_key: s.repo.keys().master_key().map(|k| k.to_vec()).unwrap_or_default(),
            repository_id: s.repo.label(),
        };
        let _ = tx.send(Ok(reply(mover_frame::Frame::Opened(opened)))).await;
        s.streams.lock().expect("lock").push(tx.clone());
        let (session, rt) = (s.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || session.serve_stream(stream, inbound, tx, rt));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    #[error("{reason}")]
    Start { reason: String, failure: Failure },
}

/// Runs a data mover to its end, reporting on `out`; returns the process's exit code.
pub fn run(cfg: MoverConfig, out: &mut dyn Write) -> i32 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut say = |v: serde_json::Value| {
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    };
    let started = rt.block_on(start(cfg));
    let (session, port) = match started {
        Ok(s) => s,
        Err(MoverError::Start { reason, failure }) => {
            say(serde_json::json!({ "error": reason, "failure": failure }));
            return 1;
        }
    };
    say(serde_json::json!({ "port": port }));
    rt.block_on(async {
        watch(session.clone()).await;
        if session.failure.lock().expect("lock").is_some() {
            // Let the error frame on its way reach the agent: it is the reason it reports.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let outcome = session.outcome();
    let code = if outcome.status == MoverStatus::Committed { 0 } else { 1 };
    say(serde_json::to_value(&outcome).expect("outcome"));
    // Threads still blocked on streams the agent left open are abandoned: the process is done.
    rt.shutdown_background();
    code
}

async fn start(cfg: MoverConfig) -> Result<(Arc<Session>, u16), MoverError> {
    let e = |what: &str, err: &dyn std::fmt::Display| MoverError::Start {
        reason: format!("{what}: {err}"),
        failure: Failure::Transient,
    };
    // A repository that is not there or will not open with this password stays so: the
    // server should not retry until an operator acts. The node's own troubles may pass.
    let repo_err = |what: &str, err: &bulwark_repo::RepoError| MoverError::Start {
        reason: format!("{what}: {err}"),
        failure: if err.is_permanent() { Failure::Permanent } else { Failure::Transient },
    };
    let repo = Repository::open(&cfg.repository, cfg.password.as_deref().map(str::as_bytes))
        .map_err(|err| repo_err("opening the repository", &err))?;
    // The keys the agent is handed: the repository's, or where computers are isolated its own
    // computer's (a restore: those of the computer whose point it is).
    let mut repo = repo.scoped(&cfg.agent);
    let identity =
        Identity::load(&cfg.data_dir).map_err(|err| e("loading the node identity", &err))?.ok_or_else(|| {
            MoverError::Start {
                reason: format!("{} holds no node identity", cfg.data_dir.display()),
                failure: Failure::Permanent,
            }
        })?;
    let tls_id = TlsIdentity::new(&identity).map_err(|err| e("node identity", &err))?;
    let revoked =
        Revocations::persistent(&cfg.data_dir.join("revoked")).map_err(|err| e("reading the revocation list", &err))?;
    let server_cfg =
        tls::server_config(&tls_id, tls::ClientAuth::Required, &revoked).map_err(|err| e("TLS configuration", &err))?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|err| e(&format!("listening on {}", cfg.listen), &err))?;
    let port = listener.local_addr().map_err(|err| e("listening", &err))?.port();
    // A restore reads one point: its index, and the chunks it references, nothing else.
    let (mut readable, mut pieces) = (HashSet::new(), HashSet::new());
    if let Some(id) = &cfg.restore_point {
        let point: bulwark_repo::RestorePointId = id.parse().map_err(|err: String| MoverError::Start {
            reason: format!("restore point: {err}"),
            failure: Failure::Permanent,
        })?;
        let m = repo.load_manifest(&point).map_err(|err| repo_err("restore point", &err))?;
        if repo.isolation() == bulwark_repo::Isolation::Computer && m.key_scope.is_none() {
            // Its keys are the master key, which no agent of an isolated repository gets.
            return Err(MoverError::Start {
                reason: format!(
                    "point {id} was written with the repository's own key (a backup made on the repository \
                     host): restore it there with `bulwark restore --repo`"
                ),
                failure: Failure::Permanent,
            });
        }
        repo = repo.for_point(&m);
        repo.for_each_reference(&m, |c| {
            pieces.insert(c);
        })
        .map_err(|err| repo_err("restore point", &err))?;
        readable.insert(id.clone());
    }
    let session = Arc::new(Session {
        throttle: Throttle::new(cfg.throttle.clone()),
        cfg,
        repo,
        connection: Mutex::new(None),
        open_streams: Mutex::new(HashSet::new()),
        writer: Mutex::new(None),
        begun: AtomicBool::new(false),
        readable: Mutex::new(readable),
        pieces: Mutex::new(pieces),
        manifests: Mutex::new(Vec::new()),
        received: AtomicU64::new(0),
        failure: Mutex::new(None),
        streams: Mutex::new(Vec::new()),
        done: Notify::new(),
        unstored: Mutex::new(0),
        stored: std::sync::Condvar::new(),
    });
    let svc = DataMoverServer::new(Service(session.clone()))
        .max_decoding_message_size(tls::MAX_MESSAGE)
        .max_encoding_message_size(tls::MAX_MESSAGE);
    let limits = tls::Limits::from_env();
    let incoming = tls::incoming(listener, server_cfg, limits.clone());
    tokio::spawn(async move {
        if let Err(err) = tls::server_builder(&limits).add_service(svc).serve_with_incoming(incoming).await {
            warn!("data mover server ended: {err}");
        }
    });
    Ok((session, port))
}

/// Waits for the session's end: the agent done, a failure, no agent in time, the transport
/// service gone (the data mover dies with it), or SIGTERM.
async fn watch(s: Arc<Session>) {
    let parent = std::os::unix::process::parent_id();
    let timeout = Duration::from_secs(s.cfg.connect_timeout_s.max(1));
    let started = tokio::time::Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = s.done.notified() => return,
            _ = term.recv() => {
                s.fail("stopped by the transport service".into());
                return;
            }
            _ = tick.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    s.fail("the transport service that started this data mover is gone".into());
                    return;
                }
                if s.connection.lock().expect("lock").is_none() && started.elapsed() > timeout {
                    s.fail(format!("no agent connected within {} s", timeout.as_secs()));
                    return;
                }
            }
        }
    }
}
