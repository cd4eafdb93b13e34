//! Serving the protocol on a Unix socket, and the sweep timer.
//!
//! The socket is the service's only door: mode 0660, owned by root and by the group given
//! (the data mover's), so only root and that group's members may connect. Its directory should
//! be root's alone (`/run/bulwark-hardened`, say): whoever can write there could put their own
//! socket in its place. Every request is logged with the peer's uid and pid as the kernel
//! reports them (`SO_PEERCRED`), not as the peer claims.

use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::Utc;

use crate::error::{ErrorKind, HardenedError, Result};
use crate::protocol::{read_line, write_line, Reply, Request};
use crate::service::Service;

/// How often expired locks are looked for when nothing else is said.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Connections served at once; more are told to come back later, so a misbehaving client
/// cannot exhaust the service's threads.
const MAX_CONNECTIONS: usize = 64;

/// A connection idle this long between requests is closed.
const IDLE: Duration = Duration::from_secs(300);

/// Where and to whom the service listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// The group whose members may connect (mode 0660); `None` leaves root's group, so only
    /// root may.
    pub group: Option<u32>,
    pub sweep_every: Duration,
}

impl ServerConfig {
    pub fn new(socket: PathBuf, group: Option<u32>) -> Self {
        ServerConfig { socket, group, sweep_every: SWEEP_EVERY }
    }
}

/// A listening service; [`RunningServer::stop`] (or dropping it) closes the socket and stops the
/// sweeps, after the requests under way are answered.
pub struct RunningServer {
    socket: PathBuf,
    socket_ino: u64,
    /// The listening socket (a second descriptor of it): shutting it down wakes `accept`.
    listener: UnixListener,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    sweeper: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// Sweeps once, then listens on the socket and sweeps every `sweep_every`.
pub fn start(service: Arc<Service>, config: &ServerConfig) -> Result<RunningServer> {
    sweep_now(&service);
    let listener = bind(&config.socket, config.group)?;
    let socket_ino = fs::symlink_metadata(&config.socket).map(|m| m.ino()).unwrap_or(0);
    let stopping = Arc::new(AtomicBool::new(false));
    let waker =
        listener.try_clone().map_err(|e| HardenedError::io(format!("socket {}", config.socket.display()), e))?;
    let accept = {
        let (service, stopping) = (Arc::clone(&service), Arc::clone(&stopping));
        std::thread::Builder::new()
            .name("hardened-accept".into())
            .spawn(move || accept_loop(listener, service, stopping))
            .map_err(|e| HardenedError::io("starting the service's threads", e))?
    };
    let (tx, rx) = mpsc::channel();
    let every = config.sweep_every;
    let sweeper = std::thread::Builder::new()
        .name("hardened-sweep".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                sweep_now(&service);
            }
        })
        .map_err(|e| HardenedError::io("starting the service's threads", e))?;
    tracing::info!(socket = %config.socket.display(), "immutability service listening");
    Ok(RunningServer {
        socket: config.socket.clone(),
        socket_ino,
        listener: waker,
        stopping,
        accept: Some(accept),
        sweeper: Some((tx, sweeper)),
    })
}

impl RunningServer {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            // Shutting the listening socket down makes a blocked accept() fail (EINVAL), which
            // works even when its file was removed (a connection of our own would not).
            let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::ReadWrite);
            let _ = accept.join();
        }
        if let Some((tx, sweeper)) = self.sweeper.take() {
            drop(tx);
            let _ = sweeper.join();
        }
        // Remove the socket only if it is still ours, not a successor's.
        if fs::symlink_metadata(&self.socket).is_ok_and(|m| m.ino() == self.socket_ino) {
            let _ = fs::remove_file(&self.socket);
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn sweep_now(service: &Service) {
    match service.sweep(Utc::now()) {
        Ok(r) if !r.cleared.is_empty() || !r.gone.is_empty() => {
            tracing::info!(cleared = r.cleared.len(), gone = r.gone.len(), "sweep ended expired locks")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("sweep failed: {e}"),
    }
}

/// Binds the socket under a staged name, gives it its mode and group, then renames it into
/// place: a client never finds it with looser permissions, even for an instant.
fn bind(socket: &Path, group: Option<u32>) -> Result<UnixListener> {
    let what = || format!("socket {}", socket.display());
    match fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(socket).is_ok() {
                return Err(HardenedError::refused(format!(
                    "{}: another service is listening there; stop it first",
                    what()
                )));
            }
        }
        Ok(_) => return Err(HardenedError::refused(format!("{}: exists and is not a socket", what()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(HardenedError::io(what(), e)),
    }
    let name = socket.file_name().ok_or_else(|| HardenedError::refused(format!("{}: names no file", what())))?;
    let staged = socket.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&staged);
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o660))?;
        std::os::unix::fs::chown(&staged, Some(0), Some(group.unwrap_or(0)))?;
        fs::rename(&staged, socket)?;
        Ok(listener)
    })();
    bound.map_err(|e| {
        let _ = fs::remove_file(&staged);
        HardenedError::io(what(), e)
    })
}

fn accept_loop(listener: UnixListener, service: Arc<Service>, stopping: Arc<AtomicBool>) {
    // Each worker with a handle on its connection, so stopping can end idle connections
    // instead of waiting out their timeout.
    let mut workers: Vec<(UnixStream, JoinHandle<()>)> = Vec::new();
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        workers.retain(|(_, w)| !w.is_finished());
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if workers.len() >= MAX_CONNECTIONS {
            let busy = Reply::Error {
                kind: ErrorKind::Unavailable,
                message: format!("the immutability service already serves {MAX_CONNECTIONS} connections; retry later"),
            };
            let _ = write_line(&mut stream, &busy);
            continue;
        }
        let Ok(handle) = stream.try_clone() else { continue };
        let service = Arc::clone(&service);
        match std::thread::Builder::new().name("hardened-conn".into()).spawn(move || serve_connection(&service, stream))
        {
            Ok(w) => workers.push((handle, w)),
            Err(e) => tracing::warn!("starting a connection's thread: {e}"),
        }
    }
    for (stream, w) in workers {
        // The request under way is still answered; the next read sees the end.
        let _ = stream.shutdown(std::net::Shutdown::Read);
        let _ = w.join();
    }
}

fn serve_connection(service: &Service, stream: UnixStream) {
    let (uid, pid) = match rustix::net::sockopt::get_socket_peercred(&stream) {
        Ok(c) => (c.uid.as_raw(), rustix::process::Pid::as_raw(Some(c.pid))),
        Err(e) => {
            tracing::warn!("connection without peer credentials ({e}); closed");
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(IDLE));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return,
            Err(e) => {
                tracing::warn!(uid, pid, "bad request line: {e}; connection closed");
                let _ = write_line(&mut writer, &Reply::Error { kind: ErrorKind::Protocol, message: e.to_string() });
                return;
            }
        };
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(service, request, uid, pid),
            Err(e) => {
                tracing::warn!(uid, pid, "request does not parse: {e}");
                Reply::Error { kind: ErrorKind::Protocol, message: format!("request does not parse: {e}") }
            }
        };
        if write_line(&mut writer, &reply).is_err() {
            return;
        }
    }
}

fn handle(service: &Service, request: Request, uid: u32, pid: i32) -> Reply {
    match request {
        Request::Lock { repository, keys, until } => {
            let repo = repository.display().to_string();
            match service.lock(&repository, &keys, until) {
                Ok(report) => {
                    tracing::info!(uid, pid, repository = repo, keys = keys.len(), %until, "lock granted");
                    Reply::Locked { repository: report.repository, keys: report.keys }
                }
                Err(e) => {
                    tracing::warn!(uid, pid, repository = repo, keys = keys.len(), %until, "lock refused: {e}");
                    Reply::from(&e)
                }
            }
        }
        Request::Status { repository, keys } => {
            let repo = repository.display().to_string();
            match service.status(&repository, &keys) {
                Ok(keys) => {
                    tracing::info!(uid, pid, repository = repo, keys = keys.len(), "status");
                    Reply::Status { keys }
                }
                Err(e) => {
                    tracing::warn!(uid, pid, repository = repo, keys = keys.len(), "status refused: {e}");
                    Reply::from(&e)
                }
            }
        }
    }
}

/// The id of the group `name` (or a number given as is), as the system's name service knows it.
pub fn group_id(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| HardenedError::refused(format!("group name {name:?} contains a NUL byte")))?;
    let mut buf: Vec<libc::c_char> = vec![0; 16 << 10];
    loop {
        // SAFETY: a zeroed `struct group` is valid (null pointers and zero ids); getgrnam_r
        // fills it.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `group` and
        // `result` are live locals, and `buf` is `buf.len()` writable bytes. We read only the
        // gid, a plain integer, so nothing outlives `buf`.
        let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut group, buf.as_mut_ptr(), buf.len(), &mut result) };
        match rc {
            0 if result.is_null() => {
                return Err(HardenedError::new(ErrorKind::NotFound, format!("no group named {name:?} on this system")))
            }
            0 => return Ok(group.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            rc => {
                return Err(HardenedError::io(format!("looking up group {name:?}"), io::Error::from_raw_os_error(rc)))
            }
        }
    }
}

/// Refuses unless this process may set the immutable attribute: root, with
/// `CAP_LINUX_IMMUTABLE` in its effective set.
pub fn check_privileges() -> Result<()> {
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Err(HardenedError::refused(format!(
            "the immutability service must run as root (it runs as uid {}): only root may set the \
             immutable attribute, and the data mover's user must not be able to clear it",
            euid.as_raw()
        )));
    }
    let caps = rustix::thread::capabilities(None).map_err(|e| HardenedError::io("reading capabilities", e.into()))?;
    if !caps.effective.contains(rustix::thread::CapabilityFlags::LINUX_IMMUTABLE) {
        return Err(HardenedError::refused(
            "the immutability service runs as root but without CAP_LINUX_IMMUTABLE (the container or \
             service manager dropped it; with systemd see CapabilityBoundingSet=): it could lock nothing",
        ));
    }
    Ok(())
}
