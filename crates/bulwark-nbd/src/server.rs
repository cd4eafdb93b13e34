//! The server: the fixed-newstyle handshake, then requests served from an export's image.
//!
//! Replies are simple, or structured once a client asks for them (one data chunk per read):
//! clients such as qemu 7.2 read an export whose size is not a multiple of 512 correctly only
//! with structured replies.
//!
//! One task per connection reads requests; every read or write runs on the blocking pool (a
//! point's `read_at` fetches and decodes chunks), a bounded number at a time across the server,
//! and its reply goes back through the connection's one writer task as soon as it is ready, in
//! whatever order requests finish (clients match replies by handle). A connection may have a
//! bounded number of bytes in flight; it stops reading requests until replies free some. A
//! client that breaks the protocol loses its connection and nothing else: every other client's
//! requests go on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark_repo::Image;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::overlay::Overlay;
use crate::proto::*;
use crate::NbdError;

/// One export: a name clients ask for and the image it serves.
pub struct Export {
    pub name: String,
    /// Shown by `nbdinfo --list` and other clients that ask.
    pub description: String,
    pub image: Arc<dyn Image>,
    /// Clients may write, into a copy-on-write overlay (see [`Overlay`]); the image itself is
    /// never written.
    pub writable: bool,
}

/// How the server behaves; [`Options::default`] suits serving restore points.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where writable exports keep their overlays (unnamed files: nothing is left behind).
    pub scratch_dir: PathBuf,
    /// The largest read or write a client may ask for (advertised as the maximum block size).
    pub max_request: u32,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Blocking reads and writes running at once across all connections.
    pub io_parallelism: usize,
    /// Bytes of requests one connection may have in flight.
    pub in_flight_bytes: u32,
    /// Time a client has to finish the handshake.
    pub handshake_timeout: Duration,
    /// The export names are what lets a client in (a point published for whoever holds its
    /// URL): `NBD_OPT_LIST` is refused, and a wrong name is refused without naming the served
    /// ones.
    pub secret_names: bool,
    /// Only clients from these addresses are served; others are dropped at once.
    pub allowed_peers: Option<Vec<std::net::IpAddr>>,
}

impl Default for Options {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            scratch_dir: std::env::temp_dir(),
            max_request: 32 << 20,
            max_connections: 256,
            io_parallelism: (cores * 8).max(16),
            in_flight_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
            secret_names: false,
            allowed_peers: None,
        }
    }
}

/// The preferred request size advertised to clients: the overlay's page.
const PREFERRED_BLOCK: u32 = 4096;
/// Option data larger than this is not an option any client sends: the connection is dropped.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Longest export name (the protocol's limit).
const MAX_NAME: usize = 4096;

struct ExportState {
    name: String,
    description: String,
    /// What reads come from: the point, or the overlay over it.
    image: Arc<dyn Image>,
    overlay: Option<Arc<Overlay>>,
    flags: u16,
}

impl ExportState {
    /// The export as logs name it: not by a name that is a secret (whoever reads the log could
    /// attach), by its description then.
    fn shown<'a>(&'a self, inner: &Inner) -> &'a str {
        if inner.opts.secret_names {
            &self.description
        } else {
            &self.name
        }
    }
}

struct Inner {
    exports: Vec<Arc<ExportState>>,
    opts: Options,
    io: Arc<Semaphore>,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// An NBD server over a fixed set of exports. Cheap to clone; clones serve the same exports.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Sets up the exports (creating the overlays of writable ones).
    pub fn new(exports: Vec<Export>, opts: Options) -> Result<Server, NbdError> {
        let mut seen = std::collections::HashSet::new();
        let mut states = Vec::new();
        for e in exports {
            if e.name.len() > MAX_NAME {
                return Err(NbdError::Config(format!("export name of {} bytes is too long", e.name.len())));
            }
            if !seen.insert(e.name.clone()) {
                return Err(NbdError::Config(format!("two exports are named {:?}", e.name)));
            }
            let overlay = if e.writable {
                Some(Arc::new(Overlay::new(e.image.clone(), &opts.scratch_dir).map_err(NbdError::Overlay)?))
            } else {
                None
            };
            let mut flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
            flags |= if e.writable { FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES } else { FLAG_READ_ONLY };
            let image = match &overlay {
                Some(o) => o.clone() as Arc<dyn Image>,
                None => e.image,
            };
            states.push(Arc::new(ExportState { name: e.name, description: e.description, image, overlay, flags }));
        }
        let io = Arc::new(Semaphore::new(opts.io_parallelism.max(1)));
        Ok(Server {
            inner: Arc::new(Inner {
                exports: states,
                opts,
                io,
                bytes_read: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
            }),
        })
    }

    /// Bytes sent to clients in answer to reads, over all connections so far.
    pub fn bytes_read(&self) -> u64 {
        self.inner.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes clients have written (writable exports), over all connections so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes the overlays hold.
    pub fn overlay_bytes(&self) -> u64 {
        self.inner.exports.iter().filter_map(|e| e.overlay.as_ref()).map(|o| o.written_bytes()).sum()
    }

    /// Accepts and serves connections until `shutdown` completes; then drops every connection.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), NbdError> {
        let slots = Arc::new(Semaphore::new(self.inner.opts.max_connections.max(1)));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                () = &mut shutdown => break,
                s = slots.clone().acquire_owned() => s.expect("never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, keep serving the others.
                        tracing::warn!("nbd: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
            if self.inner.opts.allowed_peers.as_ref().is_some_and(|a| !a.contains(&peer.ip().to_canonical())) {
                tracing::warn!("nbd: client {peer} is not among the allowed addresses; connection dropped");
                continue;
            }
            let inner = self.inner.clone();
            connections.spawn(async move {
                let _slot = slot;
                match serve_connection(inner, stream, peer).await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!("nbd: client {peer}: {e}; connection dropped"),
                }
            });
        }
        connections.shutdown().await;
        Ok(())
    }
}

/// What a client did wrong, or what broke the connection under it.
#[derive(Debug)]
enum ConnError {
    Io(io::Error),
    Protocol(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Protocol(p) => write!(f, "protocol violation: {p}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let negotiated = tokio::time::timeout(inner.opts.handshake_timeout, handshake(&inner, &mut rd, &mut wr))
        .await
        .map_err(|_| ConnError::Protocol("the handshake took too long".into()))??;
    let Some((export, structured)) = negotiated else { return Ok(()) };
    tracing::info!("nbd: client {peer} attached to export {:?}", export.shown(&inner));
    let r = transmission(&inner, &export, Replies { structured }, rd, wr).await;
    tracing::info!("nbd: client {peer} left export {:?}", export.shown(&inner));
    r
}

async fn send_reply<W: AsyncWrite + Unpin>(w: &mut W, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&option_reply(option, reply, data.len() as u32));
    b.extend_from_slice(data);
    w.write_all(&b).await
}

/// The handshake up to transmission: the export the client chose and whether it asked for
/// structured replies, or `None` when it left.
async fn handshake<R, W>(inner: &Inner, rd: &mut R, wr: &mut W) -> Result<Option<(Arc<ExportState>, bool)>, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    wr.write_all(&hello).await?;
    let client_flags = rd.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ConnError::Protocol(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    loop {
        let magic = match rd.read_u64().await {
            Ok(m) => m,
            // Clients that only list or probe may just hang up.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if magic != IHAVEOPT {
            return Err(ConnError::Protocol(format!("option magic {magic:#x}")));
        }
        let option = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION_DATA {
            return Err(ConnError::Protocol(format!("option {option} with {len} bytes of data")));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                // This option has no way to say no: an unknown name ends the connection.
                let Some(export) = find(inner, &name) else {
                    return Err(ConnError::Protocol(format!("asked for export {name:?}, which is not served")));
                };
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&export.image.size().to_be_bytes());
                b.extend_from_slice(&export.flags.to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                wr.write_all(&b).await?;
                return Ok(Some((export, structured)));
            }
            OPT_ABORT => {
                send_reply(wr, option, REP_ACK, &[]).await?;
                return Ok(None);
            }
            OPT_LIST if inner.opts.secret_names => {
                send_reply(wr, option, REP_ERR_POLICY, b"the exports of this server are not listed").await?;
            }
            OPT_LIST => {
                if !data.is_empty() {
                    send_reply(wr, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                    continue;
                }
                for e in &inner.exports {
                    let mut d = Vec::with_capacity(4 + e.name.len() + e.description.len());
                    d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(e.name.as_bytes());
                    d.extend_from_slice(e.description.as_bytes());
                    send_reply(wr, option, REP_SERVER, &d).await?;
                }
                send_reply(wr, option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_info_request(&data) else {
                    send_reply(wr, option, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/NBD_OPT_GO data").await?;
                    continue;
                };
                let Some(export) = find(inner, &name) else {
                    let msg = if inner.opts.secret_names {
                        format!("export {name:?} is not served here")
                    } else {
                        format!("export {name:?} is not served here (served: {})", names(inner))
                    };
                    send_reply(wr, option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                    continue;
                };
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&export.image.size().to_be_bytes());
                info.extend_from_slice(&export.flags.to_be_bytes());
                send_reply(wr, option, REP_INFO, &info).await?;
                // Block sizes are sent unasked: minimum 1 is the default, so no client is bound
                // to more than it assumed; the maximum is what requests are checked against.
                let mut bs = Vec::with_capacity(14);
                bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
                bs.extend_from_slice(&inner.opts.max_request.to_be_bytes());
                send_reply(wr, option, REP_INFO, &bs).await?;
                for r in requests {
                    let (kind, text) = match r {
                        INFO_NAME => (INFO_NAME, &export.name),
                        INFO_DESCRIPTION if !export.description.is_empty() => (INFO_DESCRIPTION, &export.description),
                        _ => continue,
                    };
                    let mut d = Vec::with_capacity(2 + text.len());
                    d.extend_from_slice(&kind.to_be_bytes());
                    d.extend_from_slice(text.as_bytes());
                    send_reply(wr, option, REP_INFO, &d).await?;
                }
                send_reply(wr, option, REP_ACK, &[]).await?;
                if option == OPT_GO {
                    return Ok(Some((export, structured)));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    send_reply(wr, option, REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data").await?;
                    continue;
                }
                structured = true;
                send_reply(wr, option, REP_ACK, &[]).await?;
            }
            _ => {
                // STARTTLS, meta contexts, extended headers, and anything newer:
                // a client then goes on without them (no block status: it reads everything).
                send_reply(wr, option, REP_ERR_UNSUP, b"not supported by this server").await?;
            }
        }
    }
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: the export name and the information types asked for.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = &rest[2..];
    if list.len() != count * 2 {
        return None;
    }
    let requests = list.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Some((String::from_utf8_lossy(name).into_owned(), requests))
}

fn find(inner: &Inner, name: &str) -> Option<Arc<ExportState>> {
    inner.exports.iter().find(|e| e.name == name).cloned()
}

fn names(inner: &Inner) -> String {
    inner.exports.iter().map(|e| format!("{:?}", e.name)).collect::<Vec<_>>().join(", ")
}

/// A reply on its way to the writer task: header and, for a successful read, the data after it
/// in the same buffer (one write per reply).
type Reply = Vec<u8>;

/// How replies are framed on one connection.
#[derive(Clone, Copy)]
struct Replies {
    structured: bool,
}

impl Replies {
    /// The room a read's reply needs before its data.
    fn read_header_len(self) -> usize {
        if self.structured {
            28
        } else {
            16
        }
    }

    /// Fills the header room of a successful read's reply.
    fn read_header(self, reply: &mut [u8], req: Request) {
        if self.structured {
            let len = 8 + req.length;
            let h = structured_reply(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, req.handle, len);
            reply[..20].copy_from_slice(&h);
            reply[20..28].copy_from_slice(&req.offset.to_be_bytes());
        } else {
            reply[..16].copy_from_slice(&simple_reply(0, req.handle));
        }
    }

    /// The reply to a request that carries no data back: success (`error` 0) or an error.
    fn done(self, error: u32, handle: u64) -> Reply {
        if !self.structured {
            return simple_reply(error, handle).to_vec();
        }
        if error == 0 {
            return structured_reply(REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0).to_vec();
        }
        // The reason stays in the server's log: it names repository paths and chunks, which a
        // client on the network has no business reading.
        let message: &[u8] = match error {
            EPERM => b"the export is read-only",
            EINVAL => b"invalid request",
            ENOSPC => b"no space: past the end of the export, or the overlay's disk is full",
            _ => b"I/O error on the server (its log tells why)",
        };
        let mut r = structured_reply(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle, 6 + message.len() as u32).to_vec();
        r.extend_from_slice(&error.to_be_bytes());
        r.extend_from_slice(&(message.len() as u16).to_be_bytes());
        r.extend_from_slice(message);
        r
    }
}

/// The NBD error number for a failed read or write: a full disk is told apart, so a client can
/// say so; everything else is an I/O error.
fn wire_error(e: &io::Error) -> u32 {
    match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => ENOSPC,
        _ => EIO,
    }
}

async fn transmission<R>(
    inner: &Arc<Inner>,
    export: &Arc<ExportState>,
    replies: Replies,
    mut rd: R,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
{
    // A read's share of the in-flight budget travels with its reply and is given back once the
    // reply is written: a client that stops reading stops getting answers, not the server's
    // memory.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Reply, Option<tokio::sync::OwnedSemaphorePermit>)>();
    let writer = tokio::spawn(async move {
        while let Some((reply, permit)) = rx.recv().await {
            wr.write_all(&reply).await?;
            drop(permit);
        }
        wr.shutdown().await
    });
    let budget = Arc::new(Semaphore::new(inner.opts.in_flight_bytes.max(1) as usize));
    let result = loop {
        let mut head = [0u8; Request::LEN];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        let Some(req) = Request::parse(&head) else {
            break Err(ConnError::Protocol("request magic is wrong".into()));
        };
        if matches!(req.kind, CMD_READ | CMD_WRITE) && req.length > inner.opts.max_request {
            break Err(ConnError::Protocol(format!(
                "a {}-byte request (at most {} advertised)",
                req.length, inner.opts.max_request
            )));
        }
        let in_range = req.offset.checked_add(u64::from(req.length)).is_some_and(|end| end <= export.image.size());
        match req.kind {
            CMD_READ => {
                if !in_range {
                    let _ = tx.send((replies.done(EINVAL, req.handle), None));
                    continue;
                }
                let permit = budget.clone().acquire_many_owned(cost(inner, req)).await.expect("never closed");
                // Straight onto the blocking pool, which sends the reply itself: a sequential
                // copy is thousands of reads a second, and every hop between threads costs.
                let slot = inner.io.clone().acquire_owned().await.expect("never closed");
                let (inner, export, tx) = (inner.clone(), export.clone(), tx.clone());
                tokio::task::spawn_blocking(move || {
                    let reply = read(&inner, &export, replies, req);
                    drop(slot);
                    let _ = tx.send((reply, Some(permit)));
                });
            }
            CMD_WRITE => {
                // The payload is read in any case: the next request starts after it.
                let permit = budget.clone().acquire_many_owned(cost(inner, req)).await.expect("never closed");
                let mut data = vec![0u8; req.length as usize];
                if let Err(e) = rd.read_exact(&mut data).await {
                    break Err(e.into());
                }
                let Some(overlay) = export.overlay.clone() else {
                    let _ = tx.send((replies.done(EPERM, req.handle), None));
                    continue;
                };
                if !in_range {
                    let _ = tx.send((replies.done(ENOSPC, req.handle), None));
                    continue;
                }
                let (inner, export, tx) = (inner.clone(), export.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let len = data.len() as u64;
                    let r = blocking(&inner, move || overlay.write_at(&data, req.offset)).await;
                    if r.is_ok() {
                        inner.bytes_written.fetch_add(len, Ordering::Relaxed);
                    }
                    let _ = tx.send((replies.done(status(&export, "write", req, r), req.handle), None));
                });
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let Some(overlay) = export.overlay.clone() else {
                    let _ = tx.send((replies.done(EPERM, req.handle), None));
                    continue;
                };
                if !in_range {
                    let _ = tx.send((replies.done(ENOSPC, req.handle), None));
                    continue;
                }
                let (inner, export, tx) = (inner.clone(), export.clone(), tx.clone());
                tokio::spawn(async move {
                    let what = if req.kind == CMD_TRIM { "trim" } else { "write-zeroes" };
                    let r = blocking(&inner, move || overlay.zero(req.offset, u64::from(req.length))).await;
                    let _ = tx.send((replies.done(status(&export, what, req, r), req.handle), None));
                });
            }
            // The overlay is scratch, gone when the server stops: there is nothing to make
            // durable, so a flush (and FUA) has nothing to wait for.
            CMD_FLUSH => {
                let _ = tx.send((replies.done(0, req.handle), None));
            }
            CMD_DISC => break Ok(()),
            other => {
                tracing::debug!("nbd: export {:?}: command {other} is not supported", export.name);
                let _ = tx.send((replies.done(EINVAL, req.handle), None));
            }
        }
    };
    // Replies to requests still running go out before the connection closes (a DISC waits for
    // them); after a protocol violation the client gets nothing more.
    drop(tx);
    if result.is_ok() {
        let _ = writer.await;
    } else {
        writer.abort();
    }
    result
}

/// What a request takes of its connection's in-flight budget (never more than all of it).
fn cost(inner: &Inner, req: Request) -> u32 {
    req.length.clamp(1, inner.opts.in_flight_bytes.max(1))
}

/// Runs `f` on the blocking pool once one of the server's I/O slots is free.
async fn blocking<T: Send + 'static>(
    inner: &Inner,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let _slot = inner.io.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(io::Error::other(format!("I/O task failed: {e}"))))
}

/// The error number for a finished write, logging why it failed.
fn status(export: &ExportState, what: &str, req: Request, r: io::Result<()>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            let code = wire_error(&e);
            tracing::error!(
                "nbd: export of {}: {what} of {} bytes at {} failed: {e}",
                export.description,
                req.length,
                req.offset
            );
            code
        }
    }
}

/// A read, on the blocking pool: its reply, data or error.
fn read(inner: &Inner, export: &ExportState, replies: Replies, req: Request) -> Reply {
    let (len, head) = (req.length as usize, replies.read_header_len());
    let mut reply = vec![0u8; head + len];
    match export.image.read_at(&mut reply[head..], req.offset) {
        Ok(()) => {
            replies.read_header(&mut reply, req);
            inner.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
            reply
        }
        Err(e) => {
            tracing::error!("nbd: export {:?}: read of {len} bytes at {} failed: {e}", export.shown(inner), req.offset);
            replies.done(wire_error(&e), req.handle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_are_parsed_strictly() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(("abc".into(), vec![INFO_NAME, INFO_BLOCK_SIZE])));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None, "a short list");
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"abc");
        assert_eq!(parse_info_request(&huge), None, "a name longer than the data");
        assert_eq!(parse_info_request(&[]), None);
    }
}
