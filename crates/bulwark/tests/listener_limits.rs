//! Denial of service by connections, against real processes: a server, a transport node and
//! an agent on loopback while an attacker holds hundreds of idle TCP connections to their
//! ports (from 127.0.0.2 and from 127.0.0.1, the address the real peers use too) and opens
//! them again as soon as they are closed. A job must still succeed end to end; the idle
//! connections must be closed after the handshake timeout, idle TLS connections to the API
//! after the idle timeout, and connections over the per-address cap at once.

mod cluster;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_proto::rustls;
use cluster::server::{cli, start_node_with, start_server_with, Server};

/// Handshake 1 s, idle 2 s, 16 handshakes pending per address, 24 connections per address.
const LIMITS: (&str, &str) = ("BULWARK_NET_LIMITS", "1000,2000,16,24");
const HANDSHAKE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(rt: &tokio::runtime::Runtime, from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(from, 0))?;
        let stream = tokio::time::timeout(Duration::from_secs(2), s.connect(to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.into_std()
    })
}

/// Whether the peer has closed `s` (EOF or reset), without waiting.
fn closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    !matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// An attacker keeping `n` idle connections open from each (source, target) pair, reopening
/// every one the target closes, until stopped.
struct Squatter {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<TcpStream>>>,
}

impl Squatter {
    fn start(targets: Vec<(IpAddr, SocketAddr, usize)>) -> Squatter {
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicUsize::new(0));
        let (st, re) = (stop.clone(), reopened.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut slots: Vec<(IpAddr, SocketAddr, Option<TcpStream>)> =
                targets.iter().flat_map(|&(from, to, n)| (0..n).map(move |_| (from, to, None))).collect();
            loop {
                for (from, to, sock) in &mut slots {
                    if sock.as_ref().is_none_or(closed) {
                        if sock.is_some() {
                            re.fetch_add(1, Ordering::Relaxed);
                        }
                        *sock = connect_from(&rt, *from, *to).ok();
                    }
                }
                if st.load(Ordering::Relaxed) {
                    return slots.into_iter().filter_map(|s| s.2).collect();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Squatter { stop, reopened, thread: Some(thread) }
    }

    /// Stops reopening; the connections it holds now.
    fn stop(mut self) -> Vec<TcpStream> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A TLS client of the server's API from `from`, speaking `alpn`, handshake done.
fn tls_client(
    server: &Server,
    rt: &tokio::runtime::Runtime,
    from: IpAddr,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(server.dir.join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = connect_from(rt, from, server.address.parse().unwrap()).unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Waits up to `secs` for the server to close `tls`: whether it did.
fn closed_by_server(tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, secs: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    tls.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // HTTP/2 settings, a GOAWAY: read on
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// Lowers this process's soft limit on open files (its children inherit it), as a distribution's
/// default of 1024 would be.
fn lower_open_files_limit(to: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write only the struct passed, alive for the call.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = to.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn idle_connections_neither_block_a_job_nor_stay_open() {
    lower_open_files_limit(1024);
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(&dir.path().join("server"), None, &[LIMITS]);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let root = ["--root", repos.to_str().unwrap()];
    let transport = start_node_with(&server, "transport", "store-1", dir.path(), &root, None, &[LIMITS]);
    let agent = start_node_with(&server, "agent", "pc-0", dir.path(), &[], None, &[LIMITS]);
    for pid in [server.child.id(), agent.pid()] {
        let (soft, hard) = open_files_limits(pid);
        assert_eq!(soft, hard, "the daemon {pid} did not raise its open files limit");
    }
    let disk = dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 16 << 20, 11).unwrap();
    let repo = repos.join("main");
    cli(&server, &["repository", "create", "main", "--transport", "store-1", "--path", repo.to_str().unwrap()])
        .unwrap();
    let job = ["job", "create", "nightly", "--computer", "pc-0", "--repository", "main", "--source"];
    cli(&server, &[&job[..], &[disk.to_str().unwrap(), "--snapshot", "none", "--tries", "1"]].concat()).unwrap();

    // The attack: 440 idle connections, held.
    let (other, local): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
    let addr = |a: &str| -> SocketAddr { a.parse().unwrap() };
    let (s, a, t) = (addr(&server.address), addr(&agent.address), addr(&transport.address));
    let squatter = Squatter::start(vec![
        (other, s, 100),
        (local, s, 100),
        (other, a, 60),
        (local, a, 60),
        (other, t, 60),
        (local, t, 60),
    ]);
    std::thread::sleep(Duration::from_secs(3));

    // Everything still works: the CLI, the server calling the agent, a whole backup.
    assert_eq!(cli(&server, &["computer", "show", "pc-0"]).unwrap()["online"], true);
    let session = cli(&server, &["job", "start", "nightly", "--wait"]).unwrap();
    assert_eq!(session["status"], "success", "the job failed under attack: {session:#}");
    assert_eq!(cluster::points(&repo).len(), 1);
    let reopened = squatter.reopened.load(Ordering::Relaxed);
    assert!(reopened > 100, "the listeners closed only {reopened} idle connections while under attack");

    // Once the attacker stops reopening them, every idle connection is closed within the
    // handshake timeout.
    let held = squatter.stop();
    assert!(held.len() > 400, "the attacker could open only {} connections", held.len());
    std::thread::sleep(HANDSHAKE + Duration::from_millis(1500));
    let open = held.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, 0, "{open} of {} idle connections are still open after the handshake timeout", held.len());

    // Idle TLS connections to the API, HTTP/1.1 and HTTP/2, are closed once idle, not before.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let quiet: IpAddr = "127.0.0.3".parse().unwrap();
    let mut h1 = tls_client(&server, &rt, quiet, b"http/1.1");
    let mut h2 = tls_client(&server, &rt, quiet, b"h2");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    h2.flush().unwrap();
    let started = Instant::now();
    assert!(!closed_by_server(&mut h1, 1), "an HTTP/1 connection was closed before its idle time");
    assert!(closed_by_server(&mut h1, 4), "an idle HTTP/1 connection to the API stays open");
    assert!(closed_by_server(&mut h2, 4), "an idle HTTP/2 connection to the API stays open");
    assert!(started.elapsed() >= IDLE - Duration::from_millis(200));

    // Established connections from one address are capped (24): the rest are closed at once.
    let crowd: IpAddr = "127.0.0.4".parse().unwrap();
    let mut many: Vec<_> = (0..30).map(|_| tls_client(&server, &rt, crowd, b"http/1.1")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = many.iter_mut().map(|c| closed_by_server(c, 0)).filter(|&c| c).count();
    assert!(refused >= 6, "only {refused} of 30 connections from one address were refused (cap 24)");
    drop(many);

    let log = std::fs::read_to_string(server.dir.with_extension("log")).unwrap();
    assert!(log.contains("pending TLS handshakes dropped to make room"), "the attack was not logged");
    assert!(log.contains("connections from that address are open already"), "the cap was not logged");
    // And the API is still there for the next caller.
    assert_eq!(cli(&server, &["job", "list"]).unwrap().as_array().unwrap().len(), 1);
}
