//! Mutual TLS 1.3 for tonic, set up here rather than by tonic so that the verifiers can check
//! revocation, pin a CA by fingerprint at join time, and log every refusal with its reason.
//!
//! A listener yields connections carrying [`PeerInfo`] (who the verified client is); services
//! read it with [`require_peer`]. A client connects with [`connect`], naming the identity it
//! expects at the other end ([`crate::pki::identity_name`]), whatever the address.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::pki::{self, Identity, PeerIdentity, Role};

/// The name the backup server's certificate carries.
pub const SERVER_NODE: &str = "main";

/// HTTP/2 windows large enough that one stream can carry a backup at disk speed.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest gRPC message: a 4 MiB block that did not compress, with room to spare.
pub const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

/// Revoked certificate serials (hex), shared by a node's verifiers and updated by the server.
#[derive(Clone, Debug, Default)]
pub struct Revocations {
    serials: Arc<RwLock<HashSet<String>>>,
    file: Option<PathBuf>,
}

impl Revocations {
    /// Revocations kept in `file` (one serial per line), loaded now and saved on each update.
    pub fn persistent(file: &Path) -> io::Result<Revocations> {
        let r = Revocations { file: Some(file.into()), ..Default::default() };
        match std::fs::read_to_string(file) {
            Ok(text) => r.set(text.lines().map(str::to_string).filter(|l| !l.is_empty())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(r)
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials.read().expect("lock").contains(serial)
    }

    fn set(&self, serials: impl IntoIterator<Item = String>) {
        *self.serials.write().expect("lock") = serials.into_iter().collect();
    }

    /// Replaces the list (the server always sends the whole of it).
    pub fn update(&self, serials: Vec<String>) -> io::Result<()> {
        if let Some(f) = &self.file {
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, serials.join("\n"))?;
            std::fs::rename(&tmp, f)?;
        }
        self.set(serials);
        Ok(())
    }
}

fn identity_of(cert: &CertificateDer<'_>) -> Result<PeerIdentity, rustls::Error> {
    pki::peer_identity(cert).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
}

/// Client certificates: chain to our CA (webpki), name a Bulwark node, and not revoked.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revocations,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let who = pki::peer_identity(end_entity).map_or_else(|e| format!("unidentified peer ({e})"), |p| p.to_string());
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now).and_then(|v| {
            let id = identity_of(end_entity)?;
            if self.revoked.is_revoked(&id.serial) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
            Ok(v)
        });
        if let Err(e) = &verified {
            warn!("refused client certificate of {who}: {e}");
        }
        verified
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server certificates: the usual webpki check against our CA (roots from the identity, or the
/// CA the peer sent whose fingerprint a join token pins), then revocation.
#[derive(Debug)]
struct NodeServerVerifier {
    trust: Trust,
    revoked: Revocations,
}

#[derive(Debug, Clone)]
enum Trust {
    Roots(Arc<RootCertStore>),
    Pinned(String),
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = match &self.trust {
            Trust::Roots(r) => r.clone(),
            Trust::Pinned(fp) => {
                let ca = intermediates.iter().find(|c| pki::fingerprint(c) == *fp).ok_or_else(|| {
                    warn!("the server's CA does not match the join token's fingerprint {fp}");
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                })?;
                let mut r = RootCertStore::empty();
                r.add(ca.clone().into_owned())?;
                Arc::new(r)
            }
        };
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, Arc::new(provider::default_provider()))
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).and_then(|v| {
            if self.revoked.is_revoked(&identity_of(end_entity)?.serial) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
            Ok(v)
        });
        if let Err(e) = &verified {
            warn!("refused server certificate for {server_name:?}: {e}");
        }
        verified
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider::default_provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider::default_provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

fn config_err(what: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Config(format!("{what}: {e}"))
}

/// A node's certificate chain (its own, then the CA) and key, parsed.
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    pub peer: PeerIdentity,
}

impl TlsIdentity {
    pub fn new(id: &Identity) -> Result<TlsIdentity, TlsError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| TlsError::Config(format!("{what}: {e}"));
        let cert = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).map_err(|e| bad("node certificate", &e))?;
        let ca = CertificateDer::from_pem_slice(id.ca_pem.as_bytes()).map_err(|e| bad("CA certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(|e| bad("node key", &e))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(config_err("CA certificate"))?;
        let peer = pki::peer_identity(&cert).map_err(|e| bad("node certificate", &e))?;
        Ok(TlsIdentity { chain: vec![cert, ca], key, roots: Arc::new(roots), peer })
    }
}

/// Whether a listener demands client certificates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    /// Registration: a joining node has no certificate yet (its token authenticates it).
    Optional,
}

pub fn server_config(
    id: &TlsIdentity,
    auth: ClientAuth,
    revoked: &Revocations,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let p = Arc::new(provider::default_provider());
    let mut b = WebPkiClientVerifier::builder_with_provider(id.roots.clone(), p.clone());
    if auth == ClientAuth::Optional {
        b = b.allow_unauthenticated();
    }
    let inner = b.build().map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let verifier = Arc::new(NodeClientVerifier { inner, revoked: revoked.clone() });
    let mut c = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err("TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(config_err("node certificate"))?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// A client configuration: with `id`, it presents its certificate and trusts its CA; without,
/// it trusts the CA whose fingerprint `pin` gives (joining).
pub fn client_config(
    id: Option<&TlsIdentity>,
    pin: Option<&str>,
    revoked: &Revocations,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let trust = match (id, pin) {
        (_, Some(fp)) => Trust::Pinned(fp.to_string()),
        (Some(id), None) => Trust::Roots(id.roots.clone()),
        (None, None) => return Err(TlsError::Config("a client needs an identity or a pinned CA".into())),
    };
    let verifier = Arc::new(NodeServerVerifier { trust, revoked: revoked.clone() });
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err("TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut c = match id {
        Some(id) => b.with_client_auth_cert(id.chain.clone(), id.key.clone_key()).map_err(config_err("node key"))?,
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// What a service knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: Option<PeerIdentity>,
    /// Unique per connection within this process.
    pub connection: u64,
}

/// What keeps peers that never authenticate, or never let go, from using up a listener.
///
/// Handshakes are cheap to start and free to leave hanging, so they are bounded in time, in
/// number per address and in all; when a bound is reached the *oldest* pending handshake is
/// dropped, never the new one, and first the oldest of those whose peer has sent nothing at
/// all: squatters holding idle connections then lose them as fast as they open new ones, and
/// a real peer, which speaks at once and is done in milliseconds, gets through.
/// Established connections are capped per address; idle ones are closed (HTTP/1 on the API)
/// or probed (HTTP/2 keepalive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a peer has to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once, from all addresses.
    pub pending: usize,
    /// Handshakes in progress at once from one address.
    pub pending_per_address: usize,
    /// Established connections from one address.
    pub established_per_address: usize,
    /// An API connection that sends nothing for this long is closed; HTTP/2 peers are pinged
    /// at this interval and dropped when they do not answer.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(5),
            pending: 256,
            pending_per_address: 16,
            established_per_address: 128,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The defaults, or what the internal `BULWARK_NET_LIMITS` variable sets
    /// (`HANDSHAKE_MS,IDLE_MS,PENDING_PER_ADDRESS,ESTABLISHED_PER_ADDRESS`): tests shorten
    /// the times and lower the caps.
    pub fn from_env() -> Limits {
        let v = std::env::var("BULWARK_NET_LIMITS").unwrap_or_default();
        let n: Vec<u64> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
        match n[..] {
            [handshake, idle, pending, established] => Limits {
                handshake_timeout: Duration::from_millis(handshake),
                idle_timeout: Duration::from_millis(idle),
                pending_per_address: pending as usize,
                established_per_address: established as usize,
                ..Limits::default()
            },
            _ => Limits::default(),
        }
    }
}

/// A handshake in progress, which may be dropped to make room.
struct Pending {
    id: u64,
    ip: IpAddr,
    task: tokio::task::AbortHandle,
    /// The peer has sent something (its ClientHello, for a real one).
    spoke: Arc<AtomicBool>,
}

/// The listener's book of pending handshakes and established connections.
#[derive(Default)]
struct Gate {
    pending: VecDeque<Pending>,
    established: HashMap<IpAddr, usize>,
    /// Handshakes dropped to make room since the last report, and when that was.
    evicted: u64,
    reported: Option<std::time::Instant>,
}

impl Gate {
    /// Makes room for one more handshake from `ip`: drops the oldest pending one from that
    /// address, or the oldest of all, when a bound is reached.
    fn make_room(&mut self, ip: IpAddr, limits: &Limits) {
        let from_ip = self.pending.iter().filter(|p| p.ip == ip).count();
        let candidate: fn(&Pending, IpAddr) -> bool = if from_ip >= limits.pending_per_address {
            |p, ip| p.ip == ip
        } else if self.pending.len() >= limits.pending {
            |_, _| true
        } else {
            |_, _| false
        };
        let silent = self.pending.iter().position(|p| candidate(p, ip) && !p.spoke.load(Ordering::Relaxed));
        let victim = silent.or_else(|| self.pending.iter().position(|p| candidate(p, ip)));
        if let Some(p) = victim.and_then(|i| self.pending.remove(i)) {
            p.task.abort();
            self.evicted += 1;
        }
        // One line now and then, not one per connection, while under attack.
        let due = self.reported.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if self.evicted > 0 && due {
            warn!(
                "{} pending TLS handshakes dropped to make room (most recently for {ip}): peers are opening \
                 connections without completing them",
                self.evicted
            );
            self.evicted = 0;
            self.reported = Some(std::time::Instant::now());
        }
    }

    fn finished(&mut self, id: u64) {
        self.pending.retain(|p| p.id != id);
    }

    /// Counts an established connection from `ip`, unless the address has its share.
    fn establish(&mut self, ip: IpAddr, limits: &Limits) -> bool {
        let n = self.established.entry(ip).or_default();
        if *n >= limits.established_per_address {
            return false;
        }
        *n += 1;
        true
    }

    fn closed(&mut self, ip: IpAddr) {
        if let Some(n) = self.established.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.established.remove(&ip);
            }
        }
    }
}

/// Counts a connection as established until it is dropped.
struct Established {
    gate: Arc<Mutex<Gate>>,
    ip: IpAddr,
}

impl Drop for Established {
    fn drop(&mut self) {
        self.gate.lock().expect("lock").closed(self.ip);
    }
}

/// One accepted, verified TLS connection.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _established: Established,
    /// When the peer last sent something (milliseconds since the connection's start).
    last_read: Arc<AtomicU64>,
    start: std::time::Instant,
}

impl TlsConn {
    /// How long since the peer last sent anything.
    pub fn idle_for(&self) -> IdleClock {
        IdleClock { last_read: self.last_read.clone(), start: self.start }
    }
}

/// How long a connection has been idle, readable after the connection moved elsewhere.
#[derive(Clone)]
pub struct IdleClock {
    last_read: Arc<AtomicU64>,
    start: std::time::Instant,
}

impl IdleClock {
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_read.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last_read.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// Accepts connections on `listener` and completes their handshakes (each on its own task, so
/// a slow or hostile peer holds up no one) within [`Limits`]; failed handshakes are logged
/// with their reason.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let gate = Arc::new(Mutex::new(Gate::default()));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: the pending handshakes' timeouts free some.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            let spoke = Arc::new(AtomicBool::new(false));
            let mut book = gate.lock().expect("lock");
            book.make_room(remote.ip(), &limits);
            let peer = Peer { tcp, remote, connection: id, spoke: spoke.clone() };
            let task = tokio::spawn(handshake(acceptor.clone(), peer, gate.clone(), limits.clone(), tx.clone()));
            book.pending.push_back(Pending { id, ip: remote.ip(), task: task.abort_handle(), spoke });
            drop(book);
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An accepted TCP connection, before its handshake.
struct Peer {
    tcp: TcpStream,
    remote: SocketAddr,
    connection: u64,
    spoke: Arc<AtomicBool>,
}

/// One peer's handshake; the connection, verified, goes to `conn_tx`.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    peer: Peer,
    gate: Arc<Mutex<Gate>>,
    limits: Limits,
    conn_tx: tokio::sync::mpsc::Sender<io::Result<TlsConn>>,
) {
    let Peer { tcp, remote, connection, spoke } = peer;
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let done = match tokio::time::timeout_at(deadline, tcp.readable()).await {
        Ok(_) => {
            spoke.store(true, Ordering::Relaxed);
            tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await
        }
        Err(e) => Err(e),
    };
    // The guard stays inside this block: it must not be held across an await.
    let admitted = {
        let mut book = gate.lock().expect("lock");
        book.finished(connection);
        match done {
            Ok(Ok(tls)) if book.establish(remote.ip(), &limits) => Some(tls),
            Ok(Ok(_)) => {
                let n = limits.established_per_address;
                warn!("refused connection from {remote}: {n} connections from that address are open already");
                None
            }
            Ok(Err(e)) => {
                warn!("refused connection from {remote}: TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                warn!("refused connection from {remote}: TLS handshake timed out");
                None
            }
        }
    };
    let Some(tls) = admitted else { return };
    let established = Established { gate, ip: remote.ip() };
    let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| pki::peer_identity(c).ok());
    let conn = TlsConn {
        inner: tls,
        info: PeerInfo { remote, identity, connection },
        _established: established,
        last_read: Arc::default(),
        start: std::time::Instant::now(),
    };
    let _ = conn_tx.send(Ok(conn)).await;
}

/// A tonic server builder with the windows bulk transfer needs; peers that stop answering
/// its pings (every `limits.idle_timeout`) are dropped.
pub fn server_builder(limits: &Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(limits.idle_timeout))
        .http2_keepalive_timeout(Some(limits.idle_timeout.min(Duration::from_secs(20))))
        .tcp_nodelay(true)
}

/// The verified identity behind a request, if it has one of `roles`; else `permission denied`
/// (logged with the peer's address and what it was refused).
pub fn require_peer<T>(req: &tonic::Request<T>, roles: &[Role], what: &str) -> Result<PeerIdentity, tonic::Status> {
    let info = req.extensions().get::<PeerInfo>();
    match info.and_then(|i| i.identity.clone()) {
        Some(id) if roles.contains(&id.role) => Ok(id),
        other => {
            let remote = info.map_or_else(|| "unknown".to_string(), |i| i.remote.to_string());
            let who = other.map_or_else(|| "a peer without a certificate".to_string(), |p| p.to_string());
            warn!("refused {what} from {who} at {remote}: not allowed");
            Err(tonic::Status::permission_denied(format!("{who} may not {what}")))
        }
    }
}

/// The server's `UpdateRevocations` call, as every node serves it: only the server may send the
/// list, which replaces the node's whole list.
pub fn serve_revocations(
    revoked: &Revocations,
    req: tonic::Request<crate::pb::Revocations>,
) -> Result<tonic::Response<crate::pb::Empty>, tonic::Status> {
    require_peer(&req, &[Role::Server], "update revocations")?;
    let r = req.into_inner();
    crate::check_protocol(r.protocol, "server")?;
    revoked.update(r.serials).map_err(|e| tonic::Status::internal(format!("saving revocations: {e}")))?;
    Ok(tonic::Response::new(crate::pb::Empty {}))
}

/// A channel to `addr` whose certificate must carry `expect` (an identity name).
pub async fn connect(addr: &str, expect: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel, TlsError> {
    let err = |reason: String| TlsError::Connect { addr: addr.to_string(), reason };
    let name = ServerName::try_from(expect.to_string()).map_err(|e| err(format!("bad peer name {expect:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .tcp_nodelay(true);
    let svc = tower::service_fn(move |_uri| {
        let (connector, name, target) = (connector.clone(), name.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    endpoint.connect_with_connector(svc).await.map_err(|e| {
        use std::error::Error;
        let mut reason = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        err(reason)
    })
}
