//! A restore point (or one volume of it) written out as a disk image file a hypervisor takes:
//! raw, qcow2 or vmdk.
//!
//! Raw is written here, sparse: ranges the point knows are zero, and blocks that read as zeroes,
//! stay holes. qcow2 and vmdk are qemu-img's formats, and qemu-img writes them best: the image
//! is served on an ephemeral loopback NBD port inside this process and `qemu-img convert` reads
//! it from there, so no raw copy is ever made. Either way the file is written under a temporary
//! name beside the target and renamed into place only when complete: an interrupted export
//! leaves nothing that looks like an image.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_repo::Image;
use serde::Serialize;

/// The image formats an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0} already exists; give --overwrite to replace it")]
    Exists(PathBuf),
    #[error("{0} exists and is not a regular file; an export writes image files (`bulwark restore` writes devices)")]
    NotAFile(PathBuf),
    #[error(
        "qemu-img is not installed, and it writes {0} images (Debian and Ubuntu: apt-get install qemu-utils); \
         --format raw needs nothing else"
    )]
    QemuImgMissing(&'static str),
    #[error("qemu-img convert to {format} failed ({status}): {stderr}")]
    QemuImg { format: &'static str, status: String, stderr: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image could not be read (a damaged chunk, say): the reason names the block.
    #[error("reading {image} at offset {offset}: {source}")]
    Read {
        image: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("serving the image to qemu-img: {0}")]
    Nbd(#[from] bulwark_nbd::NbdError),
    #[error("export cancelled; nothing was written")]
    Cancelled,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub target: PathBuf,
    pub format: Format,
    /// The image's size (what a VM sees).
    pub size: u64,
    /// Bytes of data the image's file occupies on disk (holes and zero clusters excluded).
    pub allocated_bytes: u64,
    pub duration_s: f64,
}

/// How an export goes: where progress goes, and what stops it.
pub struct Settings<'a> {
    pub format: Format,
    /// Replace an existing file.
    pub overwrite: bool,
    /// Called with bytes of the image done, as they are done.
    pub progress: &'a (dyn Fn(u64) + Sync),
    /// Set (by a signal) to stop: the temporary file is removed.
    pub cancel: &'a AtomicBool,
}

/// Writes `image` to `to` in the chosen format.
pub fn export(image: Arc<dyn Image>, to: &Path, s: &Settings) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    match std::fs::symlink_metadata(to) {
        Ok(m) if !m.is_file() => return Err(ExportError::NotAFile(to.to_path_buf())),
        Ok(_) if !s.overwrite => return Err(ExportError::Exists(to.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ExportError::Io { what: "cannot look at", path: to.to_path_buf(), source: e }),
    }
    let qemu_img = match s.format {
        Format::Raw => None,
        f => Some(find_program("qemu-img").ok_or(ExportError::QemuImgMissing(f.name()))?),
    };
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| ExportError::Io { what: "cannot create a file in", path: dir.to_path_buf(), source: e })?;
    match qemu_img {
        None => write_raw(image.as_ref(), tmp.as_file(), tmp.path(), s)?,
        Some(q) => convert(&q, image.clone(), tmp.path(), s)?,
    }
    let io_err = |what, e| ExportError::Io { what, path: tmp.path().to_path_buf(), source: e };
    let file = File::open(tmp.path()).map_err(|e| io_err("cannot open", e))?;
    file.sync_all().map_err(|e| io_err("cannot sync", e))?;
    let meta = file.metadata().map_err(|e| io_err("cannot look at", e))?;
    let persisted = if s.overwrite { tmp.persist(to) } else { tmp.persist_noclobber(to) };
    persisted.map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            ExportError::Exists(to.to_path_buf())
        } else {
            ExportError::Io { what: "cannot rename the finished image to", path: to.to_path_buf(), source: e.error }
        }
    })?;
    use std::os::unix::fs::MetadataExt;
    Ok(ExportReport {
        target: to.to_path_buf(),
        format: s.format,
        size: image.size(),
        allocated_bytes: meta.blocks() * 512,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// The step raw exports read in: large enough to keep decoding efficient, aligned so that a
/// zero block of the point is one hole.
const STEP: u64 = 1 << 20;

/// The raw image, sparse, by a few threads taking steps in turn (decoding is the costly part).
fn write_raw(image: &dyn Image, out: &File, path: &Path, s: &Settings) -> Result<(), ExportError> {
    let size = image.size();
    out.set_len(size).map_err(|e| write_err(path, e))?;
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<ExportError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = vec![0u8; STEP as usize];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if s.cancel.load(Ordering::Relaxed) {
                        failed.lock().expect("no panics while held").get_or_insert(ExportError::Cancelled);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    let at = next.fetch_add(STEP, Ordering::Relaxed);
                    if at >= size {
                        return;
                    }
                    let len = STEP.min(size - at);
                    if let Err(e) = raw_step(image, out, path, &mut buf[..len as usize], at) {
                        failed.lock().expect("no panics while held").get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    (s.progress)(len);
                }
            });
        }
    });
    failed.into_inner().expect("no panics while held").map_or(Ok(()), Err)
}

fn write_err(path: &Path, e: io::Error) -> ExportError {
    ExportError::Io { what: "cannot write", path: path.to_path_buf(), source: e }
}

fn raw_step(image: &dyn Image, out: &File, path: &Path, buf: &mut [u8], at: u64) -> Result<(), ExportError> {
    let read_err = |e| ExportError::Read { image: image.describe(), offset: at, source: e };
    if image.is_zero(at, buf.len() as u64).map_err(read_err)? {
        return Ok(());
    }
    image.read_at(buf, at).map_err(read_err)?;
    if is_zeroes(buf) {
        return Ok(());
    }
    out.write_all_at(buf, at).map_err(|e| write_err(path, e))
}

fn is_zeroes(buf: &[u8]) -> bool {
    let (words, rest) = buf.split_at(buf.len() / 16 * 16);
    words.chunks_exact(16).all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// `name` in PATH, as a shell would find it.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// qemu-img reads the image from a loopback NBD server in this process and writes `tmp`.
fn convert(qemu_img: &Path, image: Arc<dyn Image>, tmp: &Path, s: &Settings) -> Result<(), ExportError> {
    let io_err = |what, e| ExportError::Io { what, path: tmp.to_path_buf(), source: e };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| io_err("cannot start the NBD server for", e))?;
    let format = s.format.name();
    let result = rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| io_err("cannot listen for", e))?;
        let port = listener.local_addr().map_err(|e| io_err("cannot listen for", e))?.port();
        let export =
            bulwark_nbd::Export { name: "export".into(), description: image.describe(), image, writable: false };
        let server = bulwark_nbd::Server::new(vec![export], bulwark_nbd::Options::default())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .serve(listener, async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        };
        let mut child = tokio::process::Command::new(qemu_img)
            .args(["convert", "-f", "raw", "-O", format])
            .arg(format!("nbd://127.0.0.1:{port}/export"))
            .arg(tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io_err("cannot start qemu-img to write", e))?;
        let mut stderr = child.stderr.take().expect("piped");
        let collect = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
            text
        });
        let mut reported = 0;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st.map_err(|e| io_err("waiting for qemu-img writing", e))?,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let now = server.bytes_read();
            (s.progress)(now - reported);
            reported = now;
            if s.cancel.load(Ordering::Relaxed) {
                let _ = child.kill().await;
                return Err(ExportError::Cancelled);
            }
        };
        (s.progress)(server.bytes_read() - reported);
        let _ = stop.send(());
        let _ = serving.await;
        let stderr = collect.await.unwrap_or_default();
        if !status.success() {
            return Err(ExportError::QemuImg { format, status: status.to_string(), stderr: stderr.trim().to_string() });
        }
        Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_repo::image::MemImage as Bytes;

    /// A raw export holds the image's bytes, leaves its zero megabytes as holes, and refuses to
    /// replace a file unless told to.
    #[test]
    fn raw_exports_are_exact_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = bulwark_testkit::random_bytes((12 << 20) + 777, 5);
        data[(2 << 20)..(10 << 20)].fill(0);
        let image: Arc<dyn Image> = Arc::new(Bytes(data.clone()));
        let to = dir.path().join("out.raw");
        let done = AtomicU64::new(0);
        let cancel = AtomicBool::new(false);
        let progress = |n| {
            done.fetch_add(n, Ordering::Relaxed);
        };
        let s = Settings { format: Format::Raw, overwrite: false, progress: &progress, cancel: &cancel };
        let report = export(image.clone(), &to, &s).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), data);
        assert_eq!(done.load(Ordering::Relaxed), data.len() as u64);
        assert!(report.allocated_bytes <= 5 << 20, "8 MiB of zeroes stay holes: {} allocated", report.allocated_bytes);
        assert!(matches!(export(image.clone(), &to, &s), Err(ExportError::Exists(_))));
        let s = Settings { overwrite: true, ..s };
        export(image, &to, &s).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out.raw"], "no temporary file is left");
    }
}
