//! What the operator sees: progress bars on a terminal, summaries, tables and JSON.

use std::time::Duration;

use bulwark_agent::{BackupReport, RestoreReport};
use bulwark_repo::gc::GcReport;
use bulwark_repo::verify::VerifyReport;
use bulwark_repo::Manifest;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("reports serialize"));
}

/// A byte progress bar on stderr; hidden when stderr is not a terminal or output is JSON.
pub fn bar(total: u64, what: &str, quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub fn spinner_bytes(what: &str, quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} {spinner} {bytes} checked {binary_bytes_per_sec}")
            .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", human((bytes as f64 / secs.max(1e-6)) as u64))
}

/// The first lines of every backup summary: what was made from what, how.
fn point_header(
    point: &str,
    name: &str,
    source: &str,
    status: &str,
    parent: Option<&str>,
    snapshot: &str,
    consistency: bulwark_agent::snapshot::Consistency,
) {
    println!("restore point {point} ({name}) created from {source}{status}");
    match parent {
        Some(p) => println!("  compared with       {p}"),
        None => println!("  full backup (no previous point of this name)"),
    }
    println!("  snapshot            {snapshot} ({})", consistency.as_str());
}

pub fn backup_summary(r: &BackupReport) {
    let s = &r.stats;
    point_header(&r.point, &r.name, &r.source, "", r.parent.as_deref(), r.snapshot, r.consistency);
    println!(
        "  change tracking     {}",
        if r.change_tracking { "used: only changed blocks read" } else { "not used: every block read" }
    );
    println!("  volume              {}", human(s.source_bytes));
    println!("  read                {}", human(s.read_bytes));
    println!("  zero blocks         {} (stored as nothing)", human(s.zero_bytes));
    let f = &r.filtered;
    if f.unused_bytes + f.swap_bytes + f.excluded_bytes > 0 {
        println!(
            "  dropped             unused {}, swap {}, excluded {}",
            human(f.unused_bytes),
            human(f.swap_bytes),
            human(f.excluded_bytes)
        );
    }
    println!("  unchanged           {}", human(s.unchanged_bytes));
    println!("  new data            {}", human(s.new_bytes));
    println!("  stored              {}", human(s.stored_bytes));
    println!("  duration            {:.2} s ({})", s.duration_s, rate(s.read_bytes, s.duration_s));
    for n in &r.notes {
        println!("  note: {n}");
    }
}

pub fn restore_summary(r: &RestoreReport) {
    println!("restored {} ({}) to {}", r.point, r.name, r.target);
    println!("  volume              {}", human(r.volume_size));
    println!("  written             {}", human(r.written_bytes));
    println!("  zero blocks         {}", human(r.zero_bytes));
    println!("  duration            {:.2} s ({})", r.duration_s, rate(r.volume_size, r.duration_s));
}

pub fn points_table(points: &[&Manifest], catalog: &bulwark_repo::Catalog) {
    for d in &catalog.damaged {
        println!("DAMAGED  {}: {}", d.id, d.reason);
    }
    for id in &catalog.orphans {
        println!("DAMAGED  {id}: its manifest is lost (the index is still there)");
    }
    if !catalog.damaged.is_empty() || !catalog.orphans.is_empty() {
        println!("(run `bulwark verify` for details; the other points are not affected)");
    }
    if points.is_empty() {
        println!("no restore points");
        return;
    }
    println!(
        "{:<24} {:<20} {:<7} {:<20} {:>10} {:>10} {:>6}  source",
        "point", "name", "kind", "created (UTC)", "size", "stored", "block"
    );
    for m in points {
        println!(
            "{:<24} {:<20} {:<7} {:<20} {:>10} {:>10} {:>6}  {}",
            m.id.as_str(),
            m.name,
            match m.kind {
                bulwark_repo::PointKind::Volume => "volume",
                bulwark_repo::PointKind::Files => "files",
            },
            m.created.format("%Y-%m-%d %H:%M:%S"),
            human(if m.kind == bulwark_repo::PointKind::Files { m.stats.source_bytes } else { m.volume_size }),
            human(m.stats.stored_bytes),
            if m.kind == bulwark_repo::PointKind::Files { "-".to_string() } else { m.block_size.to_string() },
            m.source
        );
    }
}

pub fn verify_summary(repo: &str, r: &VerifyReport) {
    for p in &r.points {
        let name = p.name.as_deref().unwrap_or("name unreadable");
        if p.ok {
            println!("ok       {} ({name})", p.point);
            continue;
        }
        println!("DAMAGED  {} ({name})", p.point);
        if let Some(problem) = &p.problem {
            println!("         {problem}");
        }
        for d in &p.damaged_ranges {
            println!(
                "         blocks {}-{} (bytes {}..{}): {} [chunk {}{}]",
                d.first_block,
                d.last_block,
                d.offset,
                d.offset + d.length,
                d.reason,
                d.chunks[0],
                if d.chunks.len() > 1 { format!(" and {} more", d.chunks.len() - 1) } else { String::new() }
            );
        }
        for f in &p.damaged_files {
            println!("         file {}: {} [chunk {}]", f.path, f.reason, f.chunk);
        }
    }
    let unreadable = r.points.iter().filter(|p| p.problem.is_some()).count();
    let damaged = r.points.iter().filter(|p| !p.ok).count();
    println!(
        "{repo}: {} points, {} chunks ({}) checked: {}",
        r.points.len(),
        r.chunks_checked,
        human(r.bytes_checked),
        if r.ok {
            "healthy".to_string()
        } else {
            format!(
                "DAMAGE FOUND in {damaged} points ({} chunks missing or damaged, {unreadable} points with damaged metadata)",
                r.chunks_damaged
            )
        }
    );
    if r.chunks_quarantined > 0 {
        println!("{} damaged chunks moved aside (as chunks/…/NAME.damaged)", r.chunks_quarantined);
    }
    if let Some(why) = &r.quarantine_failed {
        println!("damaged chunks left in place: {why}");
    }
    if r.points.iter().any(|p| !p.damaged_ranges.is_empty() || !p.damaged_files.is_empty()) {
        println!(
            "the next backup of a damaged point's name stores the lost blocks and files again if its source still \
             has them, and every point that used them is whole again; `bulwark verify --repair --from SOURCE` does \
             it now"
        );
    }
    if unreadable > 0 {
        println!(
            "a point whose manifest or index is damaged cannot be made whole (nothing else holds that description \
             of it), and one whose file tree is damaged only if the next backup finds every file as it was: the \
             next backup of its name makes a new, whole point; `bulwark forget --point ID` removes the damaged one"
        );
    }
}

pub fn repair_summary(r: &bulwark_agent::repair::RepairReport) {
    println!(
        "repair: {} of {} damaged or missing chunks stored again from {}",
        r.stored_chunks,
        r.wanted_chunks,
        if r.sources.is_empty() { "nothing".to_string() } else { r.sources.join(", ") }
    );
    for n in &r.notes {
        println!("  {n}");
    }
}

pub fn forget_summary(rows: &[serde_json::Value], dry_run: bool) {
    for r in rows {
        let kept = r["kept"].as_bool().unwrap_or(true);
        let reasons: Vec<&str> =
            r["reasons"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
        let verb = match (kept, dry_run) {
            (true, _) => "keep  ",
            (false, true) => "would delete",
            (false, false) => "deleted",
        };
        println!("{verb} {} {}", r["point"].as_str().unwrap_or(""), reasons.join(","));
    }
    if !dry_run {
        println!("run `bulwark gc` to free the space of deleted points");
    }
}

pub fn gc_summary(r: &GcReport) {
    for p in &r.damaged_points_kept {
        println!("kept damaged point {p} and every chunk its index names (run `bulwark verify`)");
    }
    for p in &r.orphan_indexes_kept {
        println!("kept index {p}, whose manifest is lost, and its chunks (`bulwark forget --point {p}` removes them)");
    }
    println!(
        "{} points reference {} chunks; deleted {} chunks ({}); spared {} recent chunks; removed {} staged files and {} orphaned indexes{}",
        r.points,
        r.referenced_chunks,
        r.deleted_chunks,
        human(r.deleted_bytes),
        r.spared_chunks,
        r.removed_staged_files,
        r.removed_orphan_indexes,
        if r.live_backups > 0 { format!(" ({} backups running)", r.live_backups) } else { String::new() }
    );
}

pub fn file_backup_summary(r: &bulwark_agent::files::FileBackupReport) {
    let (s, f) = (&r.stats, &r.summary);
    let status = format!(" [{}]", f.status);
    point_header(&r.point, &r.name, &r.source, &status, r.parent.as_deref(), r.snapshot, r.consistency);
    println!("  entries             {} ({} files, {} directories)", f.entries, f.files, f.dirs);
    println!("  unchanged files     {} (not read)", f.unchanged_files);
    println!("  file data           {}", human(s.source_bytes));
    println!("  read                {}", human(s.read_bytes));
    println!("  new data            {}", human(s.new_bytes));
    println!("  stored              {}", human(s.stored_bytes));
    println!("  duration            {:.2} s ({})", s.duration_s, rate(s.source_bytes, s.duration_s));
    for w in &f.warnings {
        println!("  warning: {w}");
    }
    if f.warnings_total > f.warnings.len() as u64 {
        println!("  … and {} more warnings (see --json)", f.warnings_total - f.warnings.len() as u64);
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

pub fn file_restore_summary(r: &bulwark_agent::files::FileRestoreReport) {
    println!("restored {} ({}) into {}", r.point, r.name, r.target);
    println!("  entries             {} ({} files)", r.entries, r.files);
    println!("  written             {}", human(r.written_bytes));
    println!("  duration            {:.2} s", r.duration_s);
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    if !r.complete {
        println!("INCOMPLETE: {} entries were not restored (everything else was):", r.failed_total);
        for f in &r.failed {
            println!("  not restored: {}: {}", f.path, f.reason);
        }
        if r.failed_total > r.failed.len() as u64 {
            println!("  … and {} more", r.failed_total - r.failed.len() as u64);
        }
    }
}

#[derive(Serialize)]
pub struct LsRow {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: String,
    pub user: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

pub fn ls_row(e: &bulwark_repo::tree::TreeEntry) -> LsRow {
    use bulwark_repo::tree::EntryKind;
    let t = chrono::DateTime::from_timestamp(e.mtime.sec, e.mtime.nsec).unwrap_or_default();
    let name_or_id =
        |n: &[u8], id: u32| if n.is_empty() { id.to_string() } else { String::from_utf8_lossy(n).into_owned() };
    LsRow {
        path: if e.path.is_empty() { ".".into() } else { e.path_lossy() },
        kind: e.kind.name(),
        mode: format!("{:04o}", e.mode & 0o7777),
        user: name_or_id(&e.user, e.uid),
        group: name_or_id(&e.group, e.gid),
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime: t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string(),
        target: matches!(e.kind, EntryKind::Symlink | EntryKind::HardLink)
            .then(|| String::from_utf8_lossy(&e.target).into_owned()),
    }
}

pub fn ls_table(rows: &[LsRow]) {
    for r in rows {
        let t = r.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        println!(
            "{:<8} {} {:>8} {:>8} {:>12} {}  {}{}",
            r.kind,
            r.mode,
            r.user,
            r.group,
            r.size,
            &r.mtime[..19],
            r.path,
            t
        );
    }
}
