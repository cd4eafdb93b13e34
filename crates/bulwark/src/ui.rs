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

pub use bulwark_proto::human_bytes as human;

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
    processing(r.freeze_seconds, &s.applications, &r.warnings);
    for n in &r.notes {
        println!("  note: {n}");
    }
}

/// The freeze, what was done to each application, and what kept the point from being what the
/// job asked (also on stderr, where a cron job's mail finds it).
fn processing(freeze_seconds: f64, apps: &[bulwark_repo::ApplicationRecord], warnings: &[String]) {
    if freeze_seconds >= 0.001 {
        println!("  freeze              {freeze_seconds:.3} s");
    }
    for a in apps {
        let details: Vec<String> = a.details.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  application         {}: {} ({})", a.server, a.action, details.join(", "));
    }
    for w in warnings {
        println!("  warning: {w}");
        eprintln!("warning: {w}");
    }
}

pub fn restore_summary(r: &RestoreReport) {
    println!("restored {} ({}) to {}", r.point, r.name, r.target);
    println!("  volume              {}", human(r.volume_size));
    println!("  written             {}", human(r.written_bytes));
    println!("  zero blocks         {}", human(r.zero_bytes));
    println!("  duration            {:.2} s ({})", r.duration_s, rate(r.volume_size, r.duration_s));
    for n in &r.notes {
        println!("  note: {n}");
    }
}

/// An instant as the operator reads it: in the local time zone, to the second, the same in
/// every listing.
pub fn local_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// [`local_time`] of an RFC 3339 text (as the server writes instants); `None` for other text.
pub fn local_time_text(text: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| local_time(t.with_timezone(&chrono::Utc)))
}

/// A span of time, to the second below an hour and to the minute above: `45s`, `3m 05s`,
/// `1h 02m`, `2d 03h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

/// How trustworthy a point's data is, with the reason when it is less than frozen.
pub fn consistency_text(consistency: &str, snapshot: &str) -> String {
    match (consistency, snapshot) {
        ("", _) => "-".into(),
        ("crash-inconsistent", "" | "none") => "crash-inconsistent (no snapshot: read live)".into(),
        ("crash-consistent", "none") => "crash-consistent (no snapshot: read while not in use)".into(),
        ("crash-consistent", s) => format!("crash-consistent ({s} snapshot, not frozen)"),
        (c, "") => c.into(),
        (c, s) => format!("{c} ({s})"),
    }
}

/// One restore point as both listings show it: `bulwark points` (a repository) and
/// `bulwark point list` (the server's catalog).
pub struct PointRow {
    pub id: String,
    pub computer: String,
    pub name: String,
    /// The server's catalog spans repositories; a repository's own listing has one.
    pub repository: Option<String>,
    pub kind: String,
    pub created: String,
    pub size: Option<u64>,
    pub stored: Option<u64>,
    pub health: String,
    /// What is wrong with a damaged point.
    pub problem: Option<String>,
    pub consistency: String,
    pub source: String,
}

impl PointRow {
    /// A readable point of a repository.
    pub fn of_manifest(m: &Manifest) -> PointRow {
        PointRow {
            id: m.id.to_string(),
            computer: m.host.clone(),
            name: m.name.clone(),
            repository: None,
            kind: kind_name(m.kind).into(),
            created: local_time(m.created),
            size: Some(m.stats.source_bytes),
            stored: Some(m.stats.stored_bytes),
            health: "ok".into(),
            problem: None,
            consistency: consistency_text(&m.consistency, &m.snapshot),
            source: m.source.clone(),
        }
    }

    /// A point of a repository whose manifest cannot be read: only its id is known.
    pub fn damaged(id: &str, problem: &str) -> PointRow {
        PointRow {
            id: id.into(),
            computer: "-".into(),
            name: "-".into(),
            repository: None,
            kind: "-".into(),
            created: "-".into(),
            size: None,
            stored: None,
            health: "DAMAGED".into(),
            problem: Some(problem.into()),
            consistency: "-".into(),
            source: "-".into(),
        }
    }

    /// A point of the server's catalog (`GET /api/v1/points`).
    pub fn of_catalog(v: &serde_json::Value) -> PointRow {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        let health = match v["health"].as_str() {
            Some("damaged") => "DAMAGED".to_string(),
            Some(h) => h.to_string(),
            None => "not checked".to_string(),
        };
        PointRow {
            id: s(&v["id"]),
            computer: s(&v["computer"]),
            name: s(&v["name"]),
            repository: Some(s(&v["repository"])),
            kind: s(&v["kind"]),
            created: v["created"].as_str().and_then(local_time_text).unwrap_or_else(|| s(&v["created"])),
            size: v["stats"]["source_bytes"].as_u64(),
            stored: v["stats"]["stored_bytes"].as_u64(),
            health,
            problem: v["health_detail"].as_str().filter(|_| v["health"] == "damaged").map(String::from),
            consistency: consistency_text(
                v["consistency"].as_str().unwrap_or_default(),
                v["snapshot"].as_str().unwrap_or_default(),
            ),
            source: s(&v["source"]),
        }
    }
}

fn kind_name(k: bulwark_repo::PointKind) -> &'static str {
    match k {
        bulwark_repo::PointKind::Volume => "volume",
        bulwark_repo::PointKind::Files => "files",
    }
}

/// Restore points in the order given (both listings give them oldest first), then what is
/// wrong with the damaged ones.
pub fn points_table(rows: &[PointRow]) {
    if rows.is_empty() {
        println!("no restore points");
        return;
    }
    let size = |b: Option<u64>| b.map_or_else(|| "-".to_string(), human);
    let with_repository = rows.iter().any(|r| r.repository.is_some());
    let mut header = vec!["POINT", "COMPUTER", "NAME"];
    if with_repository {
        header.push("REPOSITORY");
    }
    header.extend(["KIND", "CREATED", "SIZE", "STORED", "HEALTH", "CONSISTENCY", "SOURCE"]);
    let mut table = Table::new(&header);
    for r in rows {
        let mut cells = vec![r.id.clone(), r.computer.clone(), r.name.clone()];
        if with_repository {
            cells.push(r.repository.clone().unwrap_or_else(|| "-".into()));
        }
        cells.extend([r.kind.clone(), r.created.clone(), size(r.size), size(r.stored), r.health.clone()]);
        cells.extend([r.consistency.clone(), r.source.clone()]);
        table.row(cells);
    }
    table.print();
    let damaged: Vec<_> = rows.iter().filter_map(|r| r.problem.as_ref().map(|p| (r, p))).collect();
    for (r, problem) in &damaged {
        println!("DAMAGED  {}: {problem}", r.id);
    }
    if !damaged.is_empty() {
        println!("(`bulwark verify` or `bulwark repository verify` tells more; the other points are not affected)");
    }
}

/// Columns of text, each as wide as its widest cell; sizes and counts right-aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn set_header(&mut self, header: impl IntoIterator<Item = String>) {
        self.header = header.into_iter().collect();
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let right = |h: &str| matches!(h, "SIZE" | "STORED" | "SENT" | "DURATION" | "ATTEMPT" | "TASKS");
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).chain([self.header[i].len()]).max()
            })
            .map(|w| w.unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .zip(&self.header)
                .map(|((c, w), h)| if right(h) { format!("{c:>w$}") } else { format!("{c:<w$}") })
                .collect();
            text.join("  ").trim_end().to_string()
        };
        println!("{}", line(&self.header));
        for r in &self.rows {
            println!("{}", line(r));
        }
    }
}

/// The points a repository holds whose manifest is damaged or lost, as rows of the points table.
pub fn damaged_point_rows(catalog: &bulwark_repo::Catalog) -> Vec<PointRow> {
    let damaged = catalog.damaged.iter().map(|d| PointRow::damaged(d.id.as_str(), &d.reason));
    let orphans = catalog
        .orphans
        .iter()
        .map(|id| PointRow::damaged(id.as_str(), "its manifest is lost (the index is still there)"));
    damaged.chain(orphans).collect()
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
    if r.deleted_packs + r.repacked_packs > 0 {
        println!("deleted {} packs and rewrote {} mostly unused ones", r.deleted_packs, r.repacked_packs);
    }
    if r.condemned_waiting > 0 {
        let who = if r.waiting_for.is_empty() { String::new() } else { format!(" ({})", r.waiting_for.join(", ")) };
        println!(
            "{} unused chunks wait for the backups running since before they were found unused{who}: the next gc deletes them",
            r.condemned_waiting
        );
    }
    if r.damaged_left_behind > 0 {
        println!("{} damaged chunks were not copied into new packs (run `bulwark verify`)", r.damaged_left_behind);
    }
    if r.locked_kept > 0 {
        let until = r.locked_until.as_deref().map(|u| format!(" until {u} at the latest")).unwrap_or_default();
        println!("kept {} locked objects (immutable){until}; a gc after that deletes them", r.locked_kept);
    }
    for k in &r.restored_objects {
        println!("restored {k}: it had been deleted outside Bulwark (a delete marker hid it)");
    }
    if r.removed_old_versions > 0 {
        println!("removed {} overwritten versions of objects", r.removed_old_versions);
    }
    if r.aborted_uploads > 0 {
        println!("aborted {} unfinished uploads of dead backups", r.aborted_uploads);
    }
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
    processing(r.freeze_seconds, &r.stats.applications, &r.warnings);
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
            local_time_text(&r.mtime).unwrap_or_else(|| r.mtime.clone()),
            r.path,
            t
        );
    }
}

/// A point's volumes, as `bulwark ls` of a disk and `bulwark point volumes` show them.
pub fn volumes_table(vols: &[bulwark_server::point_files::VolumeRow]) {
    let mut t = Table::new(&["VOLUME", "TABLE", "TYPE", "LABEL", "SIZE", "CONTENT"]);
    for v in vols {
        t.row(vec![
            v.number.to_string(),
            v.table.clone(),
            v.partition_type.clone(),
            v.label.clone(),
            human(v.size),
            if v.content.is_empty() { "unknown".into() } else { v.content.clone() },
        ]);
    }
    t.print();
    for v in vols.iter().filter(|v| !v.problem.is_empty()) {
        println!("volume {}: {}", v.number, v.problem);
    }
}

/// `-rw-r--r--` and its kin: the kind's letter and the permission bits with set-id and sticky.
pub fn mode_text(kind: char, mode: u32) -> String {
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let special = |x: u32, set: u32, lower: char, upper: char| match (mode & x != 0, mode & set != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// A name as a table shows it: control characters (a newline in a name) escaped.
fn shown(name: &str) -> String {
    if name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

/// One line of a directory listing, whatever kind of point it comes from.
pub struct EntryLine<'a> {
    /// `ls -l`'s letter for the kind (`-`, `d`, `l`, …) and the kind's name.
    pub letter: char,
    pub kind: &'a str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub name: &'a str,
    pub target: Option<&'a str>,
}

/// One directory's entries, like `ls -l`.
pub fn entries_table(rows: &[EntryLine]) {
    let mut t = Table::new(&["MODE", "TYPE", "OWNER", "SIZE", "MODIFIED", "NAME"]);
    for e in rows {
        let when = chrono::DateTime::from_timestamp(e.mtime, e.mtime_nsec).map(local_time).unwrap_or_default();
        let target = e.target.map(|t| format!(" -> {}", shown(t))).unwrap_or_default();
        t.row(vec![
            mode_text(e.letter, e.mode),
            e.kind.to_string(),
            format!("{}:{}", e.uid, e.gid),
            e.size.to_string(),
            when,
            format!("{}{target}", shown(e.name)),
        ]);
    }
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_text('-', 0o644), "-rw-r--r--");
        assert_eq!(mode_text('d', 0o1777), "drwxrwxrwt");
        assert_eq!(mode_text('-', 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_text('-', 0o2640), "-rw-r-S---");
    }

    #[test]
    fn durations_read_to_the_second_then_to_the_minute() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(185), "3m 05s");
        assert_eq!(duration(3720), "1h 02m");
        assert_eq!(duration(2 * 86_400 + 3 * 3600 + 59), "2d 03h");
    }

    #[test]
    fn instants_read_in_one_format_whatever_the_server_wrote() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-26T18:30:05Z").unwrap().with_timezone(&chrono::Utc);
        let want = local_time(t);
        assert_eq!(want.len(), "2026-11-26 18:30:05".len());
        for text in ["2026-11-26T18:30:05Z", "2026-11-26T18:30:05+00:00", "2026-11-26T18:30:05.123456789Z"] {
            assert_eq!(local_time_text(text).as_deref(), Some(want.as_str()), "{text}");
        }
        assert_eq!(local_time_text("20261126T183005Z-3f2a9c"), None, "point ids are not instants");
    }

    #[test]
    fn consistency_says_why_it_is_not_frozen() {
        assert_eq!(consistency_text("crash-inconsistent", "none"), "crash-inconsistent (no snapshot: read live)");
        assert_eq!(
            consistency_text("crash-consistent", "none"),
            "crash-consistent (no snapshot: read while not in use)"
        );
        assert_eq!(consistency_text("crash-consistent", "lvm"), "crash-consistent (lvm snapshot, not frozen)");
        assert_eq!(consistency_text("frozen", "reflink"), "frozen (reflink)");
        assert_eq!(consistency_text("", ""), "-");
    }
}
