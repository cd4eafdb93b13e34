//! `bulwark ls` and `bulwark restore --path` on volume points: the volumes of a disk point, one
//! directory of a volume's filesystem, files and directories restored out of it. XFS, btrfs and
//! the other filesystems Bulwark does not parse itself are mounted by the kernel for the time of
//! the command (as root only; see `bulwark_browse::mount`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use bulwark_browse::{BrowseError, Browser, Entry, ExtractOptions};
use bulwark_repo::volumes::{open_volume, volumes, Volume};
use bulwark_repo::{Image, Manifest, PointImage, Repository};

use crate::{ui, CANCEL};

/// Entries asked for per page when listing a whole directory.
const PAGE: usize = 1000;

/// What volume contents hold files (rather than swap, a volume group, or nothing known).
fn holds_files(content: &str) -> bool {
    matches!(content, "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "vfat" | "ntfs")
}

/// Undoes the mounts earlier commands left when they were killed, saying so.
fn clean_stale_mounts() {
    let c = bulwark_browse::clean_stale_mounts();
    for m in c.cleaned {
        eprintln!("note: unmounted {m}, left behind by a command that was stopped");
    }
    for p in c.problems {
        eprintln!("warning: a mount left behind by a stopped command: {p}");
    }
}

/// Stops the browser, unmounting a mounted filesystem, and says what could not be undone.
fn close(b: Browser) {
    for p in b.close() {
        eprintln!("warning: {p} (the next command tries again)");
    }
}

/// A volume by number, as an image of its own.
type Chosen = (u32, Arc<dyn Image>);

/// The point as an image, its volumes, and the volume asked for (`None` when a disk holds more
/// than one filesystem and none was asked for).
fn open(r: &Repository, m: &Manifest, asked: Option<u32>) -> Result<(Vec<Volume>, Option<Chosen>)> {
    let img: Arc<dyn Image> = Arc::new(PointImage::open(r, m)?);
    let vols = volumes(&img)?;
    let n = match asked {
        Some(n) => Some(n),
        None if matches!(vols[0].content.as_str(), "gpt" | "mbr") => {
            let with_files: Vec<u32> = vols[1..].iter().filter(|v| holds_files(&v.content)).map(|v| v.number).collect();
            (with_files.len() == 1).then(|| with_files[0])
        }
        None => Some(0),
    };
    let chosen = match n {
        Some(n) => Some((n, open_volume(&img, n)?)),
        None => None,
    };
    Ok((vols, chosen))
}

fn entries_table(rows: &[Entry]) {
    let kinds: Vec<String> = rows
        .iter()
        .map(|e| serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
        .collect();
    let lines: Vec<ui::EntryLine> = rows
        .iter()
        .zip(&kinds)
        .map(|(e, kind)| ui::EntryLine {
            letter: e.kind.letter(),
            kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            name: &e.name,
            target: e.target.as_deref(),
        })
        .collect();
    ui::entries_table(&lines);
}

/// `bulwark ls` of a volume point: the volumes of a disk, or one directory of a volume.
pub fn ls(
    r: &Repository,
    m: &Manifest,
    path: Option<&str>,
    volume: Option<u32>,
    after: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> Result<ExitCode> {
    clean_stale_mounts();
    let (vols, chosen) = open(r, m, volume)?;
    let Some((n, img)) = chosen else {
        if json {
            ui::print_json(&vols);
        } else {
            let rows: Vec<_> = vols.iter().cloned().map(|v| bulwark_proto::pb::VolumeInfo::from(v).into()).collect();
            ui::volumes_table(&rows);
            println!(
                "point {} is a disk with {} volumes holding files: choose one with --volume N to list its files",
                m.id,
                vols[1..].iter().filter(|v| holds_files(&v.content)).count()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let b = Browser::open(img).map_err(|e| with_volume(e, n))?;
    let listed = list(&b, path.unwrap_or("/"), after, limit);
    close(b);
    let (rows, cursor) = listed?;
    if json {
        ui::print_json(&rows);
    } else {
        entries_table(&rows);
    }
    if let Some(c) = cursor {
        eprintln!("(more entries follow: --after {c:?} lists the next ones)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The entries `bulwark ls` shows for `path`, and the cursor of the next ones if `limit` cut
/// the listing short.
fn list(b: &Browser, path: &str, after: Option<&str>, limit: Option<usize>) -> Result<(Vec<Entry>, Option<String>)> {
    let top = b.stat(path)?;
    let mut rows = Vec::new();
    let mut cursor = after.map(String::from);
    if top.kind == bulwark_browse::EntryKind::Dir || top.kind == bulwark_browse::EntryKind::Symlink {
        loop {
            let want = limit.map_or(PAGE, |l| l.saturating_sub(rows.len()).min(PAGE));
            if want == 0 {
                break;
            }
            let page = match b.list(path, cursor.as_deref(), want) {
                // A symlink to something that is not a directory: shown as itself.
                Err(BrowseError::BadPath { .. }) if top.kind == bulwark_browse::EntryKind::Symlink => {
                    rows.push(top.clone());
                    cursor = None;
                    break;
                }
                r => r?,
            };
            rows.extend(page.entries);
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    } else {
        rows.push(top);
    }
    Ok((rows, cursor))
}

/// Names the volume in an error about its filesystem, with what to do about it.
fn with_volume(e: BrowseError, n: u32) -> anyhow::Error {
    match e {
        BrowseError::NoFilesystem { .. } if n == 0 => {
            anyhow::anyhow!("{e}; `bulwark ls POINT --repo REPO` without --volume shows the volumes")
        }
        e => e.into(),
    }
}

/// `bulwark restore --path` of a volume point: those paths of one volume's filesystem into the
/// directory `to`.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    r: &Repository,
    m: &Manifest,
    to: &Path,
    paths: &[String],
    volume: Option<u32>,
    overwrite: bool,
    safe: bool,
    json: bool,
) -> Result<ExitCode> {
    clean_stale_mounts();
    let (vols, chosen) = open(r, m, volume)?;
    let Some((n, img)) = chosen else {
        let list: Vec<String> = vols[1..]
            .iter()
            .filter(|v| holds_files(&v.content))
            .map(|v| format!("{} ({})", v.number, v.content))
            .collect();
        bail!(
            "point {} is a disk with several volumes holding files ({}): choose one with --volume N",
            m.id,
            list.join(", ")
        );
    };
    let b = Browser::open(img).map_err(|e| with_volume(e, n))?;
    let bar = ui::spinner_bytes("restore", json);
    let opts = ExtractOptions { overwrite, safe, cancel: Some(Arc::clone(&CANCEL)) };
    let extracted = b.extract(paths, to, &opts, &|n| bar.inc(n));
    let filesystem = b.filesystem().to_string();
    close(b);
    let mut report = match extracted {
        Ok(r) => r,
        Err(BrowseError::Restore(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    bar.finish_and_clear();
    report.point = m.id.to_string();
    report.name = if n == 0 { m.name.clone() } else { format!("{}, volume {n}", m.name) };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["volume"] = n.into();
        v["filesystem"] = filesystem.into();
        ui::print_json(&v);
    } else {
        ui::file_restore_summary(&report);
    }
    if !report.complete {
        bail!("restore into {} is incomplete: {}", to.display(), report.incomplete_summary());
    }
    Ok(ExitCode::SUCCESS)
}
