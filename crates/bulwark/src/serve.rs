//! `bulwark serve` (a volume point as an NBD export) and `bulwark export` (a volume point as an
//! image file): restore anything from any point without restoring it first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulwark_export::{ExportError, Format};
use bulwark_repo::{Image, Manifest, PointImage, PointKind};
use clap::{Args, ValueEnum};

use crate::standalone::{resolve_noting_damage, RepoArgs};
use crate::{ui, CANCEL};

#[derive(Args)]
pub struct ServeArgs {
    /// The volume point: an id or NAME:latest.
    point: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Which volume: 0 the whole image, N partition N of a disk (as `bulwark export` numbers
    /// them).
    #[arg(long, value_name = "N", default_value_t = 0)]
    volume: u32,
    /// Where to listen: HOST:PORT (PORT 0: any free port; the URL printed tells which). NBD has
    /// no authentication here: whoever reaches the port reads the point.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Let clients write, into a copy-on-write overlay on this computer: the repository is never
    /// written, and the overlay is discarded when serving stops.
    #[arg(long)]
    writable: bool,
    /// The export's name (default: the point id, with -vN for volume N).
    #[arg(long, value_name = "EXPORT")]
    name: Option<String>,
    /// With --writable: the directory for the overlay (default: TMPDIR, else /tmp); it takes as
    /// much space as clients write.
    #[arg(long, value_name = "DIR", requires = "writable")]
    scratch_dir: Option<PathBuf>,
    /// Print one JSON line (URL, export, size) once listening, instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// A raw disk image, sparse.
    Raw,
    /// QEMU's copy-on-write format (through qemu-img).
    Qcow2,
    /// VMware's format (through qemu-img).
    Vmdk,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The volume point: an id or NAME:latest.
    point: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// The image file to write (created under a temporary name, renamed when complete).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// The image format: raw is written directly; qcow2 and vmdk need qemu-img.
    #[arg(long, value_enum, default_value = "raw")]
    format: FormatArg,
    /// Which volume: 0 the whole image, N partition N of a disk.
    #[arg(long, value_name = "N", default_value_t = 0)]
    volume: u32,
    /// Replace FILE if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Volume `volume` of volume point `spec`, readable at any offset.
fn open_image(repo: &RepoArgs, spec: &str, volume: u32) -> Result<(Manifest, Arc<dyn Image>)> {
    let r = repo.open()?;
    let m = resolve_noting_damage(&r, spec)?;
    if m.kind != PointKind::Volume {
        bail!("{} is a file-level point; only volume points are disk images (`bulwark restore` restores files)", m.id);
    }
    let whole: Arc<dyn Image> = Arc::new(PointImage::open(&r, &m)?);
    let image = bulwark_repo::volumes::open_volume(&whole, volume)
        .with_context(|| format!("cannot open volume {volume} of point {}", m.id))?;
    Ok((m, image))
}

/// An export name as it goes into a URL's path.
fn url_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `bulwark serve`: until SIGINT or SIGTERM.
pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    crate::nodes::init_logging();
    let (m, image) = open_image(&a.repo, &a.point, a.volume)?;
    let name = a.name.clone().unwrap_or_else(|| match a.volume {
        0 => m.id.to_string(),
        n => format!("{}-v{n}", m.id),
    });
    let size = image.size();
    let export = bulwark_nbd::Export { name: name.clone(), description: image.describe(), image, writable: a.writable };
    let mut opts = bulwark_nbd::Options::default();
    if let Some(d) = &a.scratch_dir {
        opts.scratch_dir = d.clone();
    }
    let server = bulwark_nbd::Server::new(vec![export], opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
        let bound = listener.local_addr()?;
        let host = if bound.ip().is_unspecified() { crate::nodes::hostname() } else { bound.ip().to_string() };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let url = format!("nbd://{host}:{}/{}", bound.port(), url_path(&name));
        // Without --writable qemu must keep the guest's writes itself (snapshot=on: a temporary
        // file of its own); with it they go to this server's overlay.
        let qemu = format!(
            "qemu-system-x86_64 -accel kvm -m 2048 -drive file={url},format=raw,if=virtio{}",
            if a.writable { "" } else { ",snapshot=on" }
        );
        if !bound.ip().is_loopback() {
            tracing::warn!(
                "listening on {bound}, beyond this computer: NBD has no authentication, so whoever reaches this port \
                 reads{} the point",
                if a.writable { " and writes" } else { "" }
            );
        }
        if a.json {
            println!(
                "{}",
                serde_json::json!({"url": url, "export": name, "listening": bound, "point": m.id, "volume": a.volume,
                    "size": size, "writable": a.writable, "qemu": qemu})
            );
        } else {
            println!("serving point {} ({}) volume {} over NBD, {}", m.id, m.name, a.volume, ui::human(size));
            println!("  url      {url}");
            println!(
                "  access   {}",
                if a.writable { "read-write (writes kept in an overlay, discarded at stop)" } else { "read-only" }
            );
            println!("  boot it  {qemu}");
            println!(
                "  attach   nbdfuse DIR {url}   (or: qemu-nbd{} -f raw --connect=/dev/nbd0 {url})",
                if a.writable { "" } else { " -r" }
            );
            println!("stop with Ctrl-C (SIGINT) or SIGTERM");
        }
        tracing::info!("serving {} as NBD export {name:?} on {bound}", m.id);
        server.serve(listener, until_stopped()).await?;
        if a.writable {
            tracing::info!("stopped; the overlay ({}) is discarded", ui::human(server.overlay_bytes()));
        } else {
            tracing::info!("stopped");
        }
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

async fn until_stopped() {
    while !CANCEL.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `bulwark export`.
pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let (m, image) = open_image(&a.repo, &a.point, a.volume)?;
    let format = match a.format {
        FormatArg::Raw => Format::Raw,
        FormatArg::Qcow2 => Format::Qcow2,
        FormatArg::Vmdk => Format::Vmdk,
    };
    let bar = ui::bar(image.size(), "export", a.json);
    let progress = |n| bar.inc(n);
    let settings = bulwark_export::Settings { format, overwrite: a.overwrite, progress: &progress, cancel: &CANCEL };
    let result = bulwark_export::export(image, &a.to, &settings);
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(ExportError::Cancelled) => {
            eprintln!("bulwark: export cancelled; nothing was written");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["point"] = m.id.to_string().into();
        v["volume"] = a.volume.into();
        ui::print_json(&v);
    } else {
        println!("exported point {} ({}) volume {} to {}", m.id, m.name, a.volume, report.target.display());
        println!("  format              {}", format.name());
        println!("  size                {}", ui::human(report.size));
        println!("  on disk             {}", ui::human(report.allocated_bytes));
        println!("  duration            {:.2} s", report.duration_s);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_names_are_escaped_in_urls() {
        assert_eq!(super::url_path("20260101T000000Z-ab12-v1"), "20260101T000000Z-ab12-v1");
        assert_eq!(super::url_path("a b/c:d"), "a%20b%2Fc%3Ad");
    }
}
