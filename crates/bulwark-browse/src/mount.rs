//! The mount fallback: a filesystem Bulwark does not read itself (XFS, btrfs, FAT, NTFS) is
//! mounted read-only by the kernel, and read there (see [`crate::mounted`]).
//!
//! The pieces, set up in this order and undone in the reverse one:
//!
//! 1. **An NBD server** (`bulwark-nbd`) serves the volume's image with a copy-on-write overlay:
//!    a mount replays the filesystem's log or journal, and those writes land in the overlay (an
//!    unnamed scratch file), never in the repository. The server runs on a thread of its own, in
//!    a network namespace of its own: its listening socket is reachable from nowhere else, so no
//!    other user of this computer can read the volume or write into the overlay while it is
//!    mounted. Its one client is a socket connected from inside that namespace.
//! 2. **`nbdfuse`** gets that socket as its standard input and shows the export as one file,
//!    `DIR/nbd/nbd`, in a FUSE mount only root may enter.
//! 3. **A loop device** over that file, read-write so the kernel can replay the log.
//! 4. **The mount** of the loop device on `DIR/fs`: `ro,nosuid,nodev,noexec`, `nouuid` for XFS
//!    (the point's filesystem may be mounted on this very computer). The loop device is then
//!    released at once (`losetup -d` of a device in use sets it to clear itself when the
//!    filesystem lets go of it).
//!
//! `DIR` is `RUNTIME/mounts/PID-N` (0700), `RUNTIME` being `$BULWARK_RUNTIME_DIR` or
//! `/run/bulwark`. Before any piece exists, a state file `RUNTIME/mounts/PID-N.json` is written
//! and locked (`flock`) for the mount's life: a process that is killed leaves it unlocked, and
//! [`clean_stale_mounts`] (run by every later mount, and by the command line at start) undoes
//! what such a file's mount left: mounts under its directory, loop devices over its `nbdfuse`
//! file, its `nbdfuse` process, its directories.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bulwark_repo::Image;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use crate::{BrowseError, Result};

/// The kernel's name for a filesystem [`bulwark_repo::volumes::detect_content`] names, if the
/// fallback mounts it.
pub fn kernel_type(content: &str) -> Option<&'static str> {
    match content {
        "xfs" => Some("xfs"),
        "btrfs" => Some("btrfs"),
        "vfat" => Some("vfat"),
        "ntfs" => Some("ntfs3"),
        _ => None,
    }
}

/// A filesystem's name as people write it, for messages.
pub fn display_name(content: &str) -> &str {
    match content {
        "xfs" => "XFS",
        "vfat" => "FAT",
        "ntfs" => "NTFS",
        other => other,
    }
}

/// Where mounts keep their state and mount points.
fn runtime_dir() -> PathBuf {
    std::env::var_os("BULWARK_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/bulwark"))
}

/// The directory of mounts, created root-only if need be, as the kernel names it (mount points
/// are compared with `/proc/self/mountinfo`).
fn mounts_dir(create: bool) -> std::io::Result<PathBuf> {
    let dir = runtime_dir().join("mounts");
    if create {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    std::fs::canonicalize(&dir)
}

/// What a state file records: enough to undo a mount whose process is gone.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: u32,
    filesystem: String,
    what: String,
    dir: PathBuf,
    scratch: PathBuf,
    started: u64,
}

/// The scratch directory of mount `id` (its overlay's unnamed file lives there).
fn scratch_name(id: &str) -> String {
    format!("bulwark-mount-{id}")
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The NBD server of one mount, on its own thread and network namespace.
struct NbdThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NbdThread {
    /// Starts serving `server`; returns the thread and the one socket connected to it.
    fn start(server: bulwark_nbd::Server) -> std::result::Result<(NbdThread, TcpStream), String> {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bulwark-mount-nbd".into())
            .spawn(move || {
                let setup = || -> std::result::Result<(TcpListener, TcpStream, tokio::runtime::Runtime), String> {
                    // Only this thread (and what it starts) enters the new namespace.
                    rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)
                        .map_err(|e| format!("cannot give the NBD server a network namespace of its own: {e}"))?;
                    // A new namespace's loopback is down; `ip` started from this thread acts in it.
                    let ip = Command::new("ip").args(["link", "set", "lo", "up"]).stdin(Stdio::null()).output();
                    match ip {
                        Ok(o) if o.status.success() => {}
                        Ok(o) => {
                            return Err(format!(
                                "`ip link set lo up` failed in the NBD server's network namespace: {}",
                                String::from_utf8_lossy(&o.stderr).trim()
                            ))
                        }
                        Err(e) => {
                            return Err(format!(
                                "cannot run `ip` (iproute2) to bring up the NBD server's private loopback: {e}"
                            ))
                        }
                    }
                    let io = |e: std::io::Error| format!("cannot set up the NBD server's socket: {e}");
                    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
                    // Connected before the server accepts: the kernel completes it in the backlog.
                    let client = TcpStream::connect(listener.local_addr().map_err(io)?).map_err(io)?;
                    listener.set_nonblocking(true).map_err(io)?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                        .map_err(|e| format!("cannot start the NBD server's runtime: {e}"))?;
                    Ok((listener, client, rt))
                };
                let (listener, client, rt) = match setup() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot set up the NBD server's socket: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(client));
                    // A dropped sender stops the server as a sent stop does.
                    let _ = server
                        .serve(listener, async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|e| format!("cannot start the NBD server's thread: {e}"))?;
        let mut t = NbdThread { stop: Some(stop), thread: Some(thread) };
        match ready.recv() {
            Ok(Ok(client)) => Ok((t, client)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                t.shutdown();
                Err("the NBD server's thread stopped while starting".into())
            }
        }
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NbdThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One volume mounted through the kernel; everything is undone on drop.
pub struct Mount {
    /// `RUNTIME/mounts/PID-N`.
    dir: PathBuf,
    scratch: Option<PathBuf>,
    /// The state file and its open, locked descriptor.
    state: Option<(PathBuf, File)>,
    server: Option<NbdThread>,
    nbdfuse: Option<Child>,
    /// The mounted filesystem's root, opened `O_PATH`.
    root: Option<OwnedFd>,
    closed: bool,
}

impl Mount {
    /// Mounts the filesystem `content` (as [`bulwark_repo::volumes::detect_content`] names it)
    /// of `img`, which `what` describes. Anything set up before a failure is undone.
    pub fn new(img: Arc<dyn Image>, content: &str, what: &str) -> Result<Mount> {
        let name = display_name(content).to_string();
        let Some(ktype) = kernel_type(content) else {
            return Err(BrowseError::Unsupported { what: what.into(), found: name });
        };
        if !rustix::process::geteuid().is_root() {
            return Err(BrowseError::NeedsRoot { what: what.into(), found: name });
        }
        let fail = |reason: String| BrowseError::Mount { what: what.into(), found: name.clone(), reason };
        let _ = clean_stale_mounts();
        let base = mounts_dir(true)
            .map_err(|e| fail(format!("cannot prepare {}: {e}", runtime_dir().join("mounts").display())))?;
        let (id, state_path, state_file) = create_state(&base, content, what).map_err(fail)?;
        let mut m = Mount {
            dir: base.join(&id),
            scratch: None,
            state: Some((state_path, state_file)),
            server: None,
            nbdfuse: None,
            root: None,
            closed: false,
        };
        // From here on, an error returns through `m`'s drop, which undoes what exists.
        let mkdir = |p: &Path| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(p)
                .map_err(|e| fail(format!("cannot create {}: {e}", p.display())))
        };
        mkdir(&m.dir)?;
        let (nbd_dir, fs_dir) = (m.dir.join("nbd"), m.dir.join("fs"));
        mkdir(&nbd_dir)?;
        mkdir(&fs_dir)?;
        let scratch = std::env::temp_dir().join(scratch_name(&id));
        mkdir(&scratch)?;
        m.scratch = Some(scratch.clone());

        let size = img.size();
        let export = bulwark_nbd::Export { name: String::new(), description: what.into(), image: img, writable: true };
        let opts = bulwark_nbd::Options { scratch_dir: scratch, ..Default::default() };
        let server = bulwark_nbd::Server::new(vec![export], opts).map_err(|e| fail(e.to_string()))?;
        let (server, client) = NbdThread::start(server).map_err(&fail)?;
        m.server = Some(server);

        let log_path = m.dir.join("nbdfuse.log");
        let log = File::create(&log_path).map_err(|e| fail(format!("cannot create {}: {e}", log_path.display())))?;
        // The export has no name: `--fd` asks for the default one. A process group of its own
        // keeps a Ctrl-C at the terminal from stopping it under the mount; it goes when its FUSE
        // mount is unmounted.
        let child = Command::new("nbdfuse")
            .arg(&nbd_dir)
            .args(["--fd", "0"])
            .stdin(Stdio::from(OwnedFd::from(client)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("cannot run nbdfuse (package libnbd-bin): {e}")))?;
        m.nbdfuse = Some(child);
        let file = nbd_dir.join("nbd");
        m.wait_for_file(&file, size, &log_path).map_err(&fail)?;

        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("cannot run losetup: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        let data = if ktype == "xfs" { "nouuid" } else { "" };
        rustix::mount::mount(&dev, &fs_dir, ktype, flags, data).map_err(|e| {
            fail(match e {
                Errno::NODEV => format!("this kernel has no {ktype} driver"),
                e => format!(
                    "the kernel refused to mount it ({e}): the filesystem may be damaged, or use features this kernel \
                     lacks; the kernel's log says why"
                ),
            })
        })?;
        // In use by the mount, the device is only marked to clear itself once unmounted.
        let _ = Command::new("losetup").arg("-d").arg(&dev).stdin(Stdio::null()).output();
        let root = rustix::fs::openat(
            rustix::fs::CWD,
            &fs_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("cannot open the mounted filesystem: {e}")))?;
        m.root = Some(root);
        Ok(m)
    }

    /// The mounted filesystem's root (an `O_PATH` descriptor).
    pub fn root(&self) -> std::io::Result<OwnedFd> {
        match &self.root {
            Some(r) => r.try_clone(),
            None => Err(std::io::Error::other("not mounted")),
        }
    }

    /// Waits until `nbdfuse` shows the export as `file` of `size` bytes.
    fn wait_for_file(&mut self, file: &Path, size: u64, log: &Path) -> std::result::Result<(), String> {
        let started = Instant::now();
        let mut seen = None;
        loop {
            if let Ok(md) = std::fs::metadata(file) {
                if md.len() == size {
                    return Ok(());
                }
                seen = Some(md.len());
            }
            let child = self.nbdfuse.as_mut().expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("nbdfuse stopped ({status}): {}", said.trim()));
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(match seen {
                    Some(n) => format!("nbdfuse shows {n} bytes where the volume has {size}"),
                    None => "nbdfuse did not show the volume within 30 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Undoes the mount; returns what could not be undone (then its state file stays, for
    /// [`clean_stale_mounts`] to try again).
    pub fn close(&mut self) -> Vec<String> {
        if self.closed {
            return Vec::new();
        }
        self.closed = true;
        self.root = None;
        let mut problems = unmount_all(&self.dir);
        problems.extend(stop_nbdfuse(&self.dir, self.nbdfuse.take()));
        // Only once nothing reads through it: the filesystem's last writes go through it.
        if let Some(mut s) = self.server.take() {
            s.shutdown();
        }
        problems.extend(remove_dirs(&self.dir, self.scratch.as_deref()));
        if let Some((path, file)) = self.state.take() {
            if problems.is_empty() {
                let _ = std::fs::remove_file(&path);
            }
            drop(file);
        }
        problems
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for p in self.close() {
            tracing::warn!("{p}");
        }
    }
}

/// Creates and locks the state file of a new mount: `PID-N.json`, written whole under a
/// temporary name and renamed into place, so a file under the final name is always complete.
fn create_state(base: &Path, content: &str, what: &str) -> std::result::Result<(String, PathBuf, File), String> {
    let pid = std::process::id();
    loop {
        let id = format!("{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let path = base.join(format!("{id}.json"));
        let new = base.join(format!("{id}.json.new"));
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&new) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", new.display())),
        };
        rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .map_err(|e| format!("cannot lock {}: {e}", new.display()))?;
        let state = State {
            pid,
            filesystem: content.into(),
            what: what.into(),
            dir: base.join(&id),
            scratch: std::env::temp_dir().join(scratch_name(&id)),
            started: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        let text = serde_json::to_vec_pretty(&state).expect("serializable");
        f.write_all(&text).map_err(|e| format!("cannot write {}: {e}", new.display()))?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &new,
            rustix::fs::CWD,
            &path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok((id, path, f)),
            // A file of a dead process with our process id that could not be cleaned: another name.
            Err(Errno::EXIST) => {
                let _ = std::fs::remove_file(&new);
                continue;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&new);
                return Err(format!("cannot create {}: {e}", path.display()));
            }
        }
    }
}

/// A path as `/proc/self/mountinfo` writes it, its octal escapes (`\040` for a space) undone.
fn unescape(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let octal = p.get(i + 1..i + 4).filter(|d| p[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(p[i]);
                i += 1;
            }
        }
    }
    out
}

/// Mount points, as `/proc/self/mountinfo` lists them.
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    text.split(|&c| c == b'\n')
        .filter_map(|line| line.split(|&c| c == b' ').nth(4))
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(p))))
        .collect()
}

/// Unmounts `p` if something is mounted there: at once if it is not in use, else detached
/// (lazily: gone from view now, released when its last user lets go).
fn unmount(p: &Path, problems: &mut Vec<String>) {
    let mut tries = 0;
    while mount_points().iter().any(|m| m == p) {
        match rustix::mount::unmount(p, UnmountFlags::empty()) {
            Ok(()) => {}
            // A loop device lets go of its file just after the filesystem on it is unmounted:
            // a moment's wait, then detached.
            Err(Errno::BUSY) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(Errno::BUSY) => {
                if let Err(e) = rustix::mount::unmount(p, UnmountFlags::DETACH) {
                    problems.push(format!("cannot unmount {}: {e}", p.display()));
                }
                return;
            }
            Err(Errno::INVAL) => return,
            Err(e) => {
                problems.push(format!("cannot unmount {}: {e}", p.display()));
                return;
            }
        }
    }
}

/// Loop devices whose backing file is `file`.
fn loops_over(file: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(b"loop"))
        .filter(|e| {
            std::fs::read(e.path().join("loop/backing_file")).is_ok_and(|b| {
                let b = b.strip_suffix(b"\n").unwrap_or(&b);
                b == file.as_os_str().as_bytes()
            })
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// Unmounts everything of the mount in `dir`: the filesystem, its loop device, the FUSE file.
fn unmount_all(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let fs_dir = dir.join("fs");
    unmount(&fs_dir, &mut problems);
    for dev in loops_over(&dir.join("nbd/nbd")) {
        // Set to clear itself, a device normally goes with the unmount; one left (a mount that
        // failed, or one detached while in use) is detached, or set to clear itself when free.
        let out = Command::new("losetup").arg("-d").arg(&dev).stdin(Stdio::null()).output();
        if let Ok(o) = out {
            let said = String::from_utf8_lossy(&o.stderr);
            if !o.status.success() && !said.contains("No such device") {
                problems.push(format!("cannot detach {}: {}", dev.display(), said.trim()));
            }
        }
    }
    unmount(&dir.join("nbd"), &mut problems);
    // Anything else mounted under the directory (nothing of ours is): detached, so the
    // directories can go.
    for p in mount_points().into_iter().filter(|p| p.starts_with(dir)) {
        if let Err(e) = rustix::mount::unmount(&p, UnmountFlags::DETACH) {
            problems.push(format!("cannot unmount {}: {e}", p.display()));
        }
    }
    problems
}

/// The `nbdfuse` processes serving `nbd_dir`, by `/proc`.
fn nbdfuse_pids(nbd_dir: &Path) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let mut args = cmd.split(|&c| c == 0);
            let is_nbdfuse = args.next().is_some_and(|a| a.rsplit(|&c| c == b'/').next() == Some(b"nbdfuse"));
            is_nbdfuse && args.next() == Some(nbd_dir.as_os_str().as_bytes())
        })
        .collect()
}

/// Whether process `pid` is gone (or only a zombie waiting for its parent).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Stops the `nbdfuse` of the mount in `dir` (`child` when this process started it). Unmounted,
/// it stops by itself; one that does not within a few seconds is terminated, then killed.
fn stop_nbdfuse(dir: &Path, child: Option<Child>) -> Vec<String> {
    let nbd_dir = dir.join("nbd");
    let mut problems = Vec::new();
    let pids: Vec<i32> = match &child {
        Some(c) => vec![c.id() as i32],
        None => nbdfuse_pids(&nbd_dir),
    };
    let mut child = child;
    let done = |pid: i32, child: &mut Option<Child>| match child {
        Some(c) => !matches!(c.try_wait(), Ok(None)),
        None => gone(pid),
    };
    for pid in pids {
        let started = Instant::now();
        let mut signalled = None;
        while !done(pid, &mut child) {
            let waited = started.elapsed();
            let signal = if waited > Duration::from_secs(8) {
                problems.push(format!("nbdfuse (process {pid}) for {} does not stop", nbd_dir.display()));
                break;
            } else if waited > Duration::from_secs(5) {
                Some(rustix::process::Signal::Kill)
            } else if waited > Duration::from_secs(3) {
                Some(rustix::process::Signal::Term)
            } else {
                None
            };
            if let Some(s) = signal.filter(|s| signalled != Some(*s)) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, s);
                }
                signalled = Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    problems
}

/// Removes the directories of the mount in `dir` and its scratch directory (its overlay file
/// has no name: nothing is in it). Only empty directories are removed: a mount still there
/// keeps its directory.
fn remove_dirs(dir: &Path, scratch: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut rm = |p: &Path, file: bool| {
        let r = if file { std::fs::remove_file(p) } else { std::fs::remove_dir(p) };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("cannot remove {}: {e}", p.display())),
        }
    };
    rm(&dir.join("nbdfuse.log"), true);
    rm(&dir.join("fs"), false);
    rm(&dir.join("nbd"), false);
    rm(dir, false);
    if let Some(s) = scratch {
        rm(s, false);
    }
    problems
}

/// What [`clean_stale_mounts`] did.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// The mounts undone, described.
    pub cleaned: Vec<String>,
    /// What could not be undone (tried again next time).
    pub problems: Vec<String>,
}

/// Undoes the mounts that processes now gone left behind (killed, or stopped before they could
/// clean up): unmounts, loop devices, `nbdfuse` processes, directories. Mounts of running
/// processes, this one included, are left alone. Does nothing unless run as root.
pub fn clean_stale_mounts() -> Cleanup {
    let mut out = Cleanup::default();
    if !rustix::process::geteuid().is_root() {
        return out;
    }
    let Ok(base) = mounts_dir(false) else { return out };
    let Ok(rd) = std::fs::read_dir(&base) else { return out };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in &names {
        if let Some(id) = name.strip_suffix(".json") {
            clean_one(&base, id, &mut out);
        } else if is_id(name) && !names.contains(&format!("{name}.json")) {
            // A mount's directory whose state file someone removed: undone once its process is
            // gone (the state file, written first and removed last, is what a live mount holds).
            let pid = name.split('-').next().unwrap_or_default();
            if !Path::new("/proc").join(pid).exists() {
                let scratch = std::env::temp_dir().join(scratch_name(name));
                let mut problems = unmount_all(&base.join(name));
                problems.extend(stop_nbdfuse(&base.join(name), None));
                problems.extend(remove_dirs(&base.join(name), Some(&scratch)));
                if problems.is_empty() {
                    out.cleaned.push(format!("mount {name}"));
                } else {
                    out.problems.extend(problems.into_iter().map(|p| format!("mount {name}: {p}")));
                }
            }
        } else if name.ends_with(".json.new") {
            // A process killed while writing its state file, before it set anything up. The
            // writer locks it at once: one still unlocked a minute on is left over.
            let p = base.join(name);
            let old = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(60)));
            if let Ok(f) = File::open(&p) {
                if old && rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
    out
}

/// Whether `name` is a mount's id, `PID-N`.
fn is_id(name: &str) -> bool {
    name.split_once('-')
        .is_some_and(|(pid, n)| [pid, n].iter().all(|x| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit())))
}

fn clean_one(base: &Path, id: &str, out: &mut Cleanup) {
    let path = base.join(format!("{id}.json"));
    let Ok(f) = File::open(&path) else { return };
    // Held by a running mount: alive.
    if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        return;
    }
    // Cleaned and removed by another process between the open and the lock.
    let same = match (rustix::fs::fstat(&f), rustix::fs::stat(&path)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    };
    if !same {
        return;
    }
    let state: Option<State> = serde_json::from_reader(&f).ok();
    // The directory comes from the file's name, not its content: only ours is ever touched.
    let dir = base.join(id);
    let scratch = state
        .as_ref()
        .map(|s| s.scratch.clone())
        .filter(|s| s.is_absolute() && s.file_name().is_some_and(|n| n.as_bytes() == scratch_name(id).as_bytes()));
    let mut problems = unmount_all(&dir);
    problems.extend(stop_nbdfuse(&dir, None));
    problems.extend(remove_dirs(&dir, scratch.as_deref()));
    let described = match &state {
        Some(s) => format!("{}, {}, mounted by process {}", s.what, display_name(&s.filesystem), s.pid),
        None => format!("mount {id}"),
    };
    if problems.is_empty() {
        let _ = std::fs::remove_file(&path);
        out.cleaned.push(described);
    } else {
        out.problems.extend(problems.into_iter().map(|p| format!("{described}: {p}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(br"/run/a\040b\011c\134d\012"), b"/run/a b\tc\\d\n");
        assert_eq!(unescape(br"/plain\04"), br"/plain\04");
        // This process's root is always mounted.
        assert!(mount_points().iter().any(|p| p == Path::new("/")));
    }

    #[test]
    fn the_fallback_mounts_what_the_kernel_reads() {
        assert_eq!(kernel_type("xfs"), Some("xfs"));
        assert_eq!(kernel_type("ntfs"), Some("ntfs3"));
        assert_eq!(kernel_type("swap"), None);
        assert_eq!(kernel_type("lvm2"), None);
        assert_eq!(display_name("xfs"), "XFS");
    }

    #[test]
    fn only_names_of_mounts_are_taken_for_them() {
        assert!(is_id("1234-0"));
        for not in ["1234", "1234-", "-1", "12a-3", "1234-0.json", "../1-2", "1-2-3"] {
            assert!(!is_id(not), "{not}");
        }
    }
}
