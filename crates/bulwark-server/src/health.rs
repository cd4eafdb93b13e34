//! The health check of a repository through its transport node (`VerifyRepository`): every
//! chunk its points reference is read again and re-hashed, and the catalog learns the outcome
//! per point — `ok`, or `damaged` with what a restore would lose — so that operators see which
//! points to trust before they need them. The check also holds the repository against the
//! catalog: points the repository holds that the catalog does not know, and catalog points
//! whose manifest is gone, are reported, never passed over.
//!
//! Tasks may commit and retention may forget points while a check runs. The transport node
//! therefore also lists the points the repository holds once the check has ended, and the
//! catalog is read only then: a point committed meanwhile is "not checked" rather than
//! "unknown" or "missing", and one forgotten meanwhile is no damage.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;
use tracing::{info, warn};

use bulwark_repo::verify::{DamagedRange, PointHealth, VerifyReport};

use crate::backup_manager::BackupManager;
use crate::db::{now, DbError};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("no repository {0:?}")]
    NoRepository(String),
    #[error("repository {repository}: {what} is running; try again when it has ended")]
    Running { repository: String, what: &'static str },
    #[error("transport node {0} of the repository is gone")]
    NoTransport(String),
    #[error("transport node {node}: {reason}")]
    Node { node: String, reason: String },
    #[error("transport node {node} sent a health report the server cannot read: {reason}")]
    Report { node: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The repositories whose health check (or evacuation out of a scale-out repository) is
/// running: one at a time per repository, since a second check would only read everything again
/// beside the first, and a check beside an evacuation would find points vanishing.
#[derive(Default)]
pub struct Running(Mutex<HashMap<String, &'static str>>);

pub(crate) struct RunningGuard<'a> {
    running: &'a Running,
    repository: String,
}

impl Running {
    /// Marks `what` ("a health check", "an evacuation") running on `repository` until the guard
    /// drops; refused while anything runs there.
    pub(crate) fn start(&self, repository: &str, what: &'static str) -> Result<RunningGuard<'_>, HealthError> {
        let mut running = self.0.lock().expect("no panics while held");
        if let Some(what) = running.get(repository) {
            return Err(HealthError::Running { repository: repository.to_string(), what });
        }
        running.insert(repository.to_string(), what);
        Ok(RunningGuard { running: self, repository: repository.to_string() })
    }

    /// Whether a check (or an evacuation) of `repository` is running.
    pub fn contains(&self, repository: &str) -> bool {
        self.0.lock().expect("no panics while held").contains_key(repository)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.running.0.lock().expect("no panics while held").remove(&self.repository);
    }
}

/// A catalog point and what the check found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckedPoint {
    pub id: String,
    pub computer: String,
    pub name: String,
    pub source: String,
    pub created: String,
    /// The job that owns the point's backup chain: its next run stores the damaged blocks
    /// again. None: no job backs the source up now.
    pub job: Option<String>,
    /// `ok` or `damaged`.
    pub health: String,
    /// The health the catalog recorded before this check (None: never checked).
    pub previous_health: Option<String>,
    /// What is damaged, in one line.
    pub detail: Option<String>,
    /// Volumes: the damaged block ranges (`first_block`, `last_block`, `offset`, `length`, the
    /// `chunks` and the `reason`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub damaged_ranges: Vec<DamagedRange>,
    /// Files: the damaged files' paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_files: Vec<String>,
}

/// A point the repository holds that the catalog does not know (written by a commit whose
/// answer was lost, a standalone backup into the same directory, another server).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UnknownPoint {
    pub id: String,
    pub name: Option<String>,
    pub health: String,
    pub detail: Option<String>,
}

/// The outcome of a repository's health check.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthCheck {
    pub repository: String,
    pub transport: String,
    pub started: String,
    /// When the check ended: every checked point's `verified_at`.
    pub verified_at: String,
    /// Nothing damaged and no catalog point missing.
    pub ok: bool,
    pub chunks_checked: u64,
    pub chunks_damaged: u64,
    pub bytes_checked: u64,
    /// The catalog's points the check read, oldest first.
    pub points: Vec<CheckedPoint>,
    /// Catalog points whose manifest is gone from the repository: they cannot be restored
    /// and are marked damaged.
    pub missing: Vec<CheckedPoint>,
    /// Points in the repository the catalog does not know.
    pub unknown: Vec<UnknownPoint>,
    /// Catalog points committed while the check ran: the next check reads them.
    pub not_checked: Vec<String>,
    /// What to do about the damage, per backup chain.
    pub advice: Vec<String>,
}

impl HealthCheck {
    /// The catalog points found damaged or missing.
    pub fn damaged(&self) -> impl Iterator<Item = &CheckedPoint> {
        self.points.iter().filter(|p| p.health != "ok").chain(&self.missing)
    }
}

/// What is wrong with a point, in one line (None: nothing).
fn summary(p: &PointHealth) -> Option<String> {
    if p.ok {
        return None;
    }
    let mut parts = Vec::new();
    if let Some(problem) = &p.problem {
        parts.push(problem.clone());
    }
    if !p.damaged_ranges.is_empty() {
        let bytes: u64 = p.damaged_ranges.iter().map(|r| r.length).sum();
        let shown: Vec<String> = p
            .damaged_ranges
            .iter()
            .take(3)
            .map(|r| {
                let blocks = if r.first_block == r.last_block {
                    format!("block {}", r.first_block)
                } else {
                    format!("blocks {}-{}", r.first_block, r.last_block)
                };
                format!("{blocks} ({})", r.reason)
            })
            .collect();
        parts.push(format!(
            "{} damaged range(s), {bytes} bytes: {}{}",
            p.damaged_ranges.len(),
            shown.join(", "),
            if p.damaged_ranges.len() > shown.len() { ", …" } else { "" }
        ));
    }
    if !p.damaged_files.is_empty() {
        let shown: Vec<&str> = p.damaged_files.iter().take(5).map(|f| f.path.as_str()).collect();
        parts.push(format!(
            "damaged file(s): {}{}",
            shown.join(", "),
            if p.damaged_files.len() > shown.len() { ", …" } else { "" }
        ));
    }
    if parts.is_empty() {
        parts.push("damaged".into());
    }
    Some(parts.join("; "))
}

const MISSING: &str = "its manifest is gone from the repository: it cannot be restored";

/// Runs the health check of `repository` and records the outcome in the catalog (each
/// point's) and on the repository (the check's, also when it could not run).
pub async fn check(core: &BackupManager, repository: &str) -> Result<HealthCheck, HealthError> {
    let _running = core.health.start(repository, "a health check")?;
    let result = run(core, repository).await;
    let outcome = match &result {
        Ok(h) => serde_json::json!({
            "at": h.verified_at, "ok": h.ok, "points": h.points.len() + h.missing.len(),
            "damaged": h.damaged().count(), "missing": h.missing.len(), "unknown": h.unknown.len(),
        }),
        Err(HealthError::NoRepository(_)) => return result,
        Err(e) => serde_json::json!({"at": now(), "ok": false, "error": e.to_string()}),
    };
    if let Err(e) = store::set_last_verify(&core.db, repository, &outcome).await {
        warn!("repository {repository}: recording the health check's outcome: {e}");
    }
    result
}

async fn run(core: &BackupManager, repository: &str) -> Result<HealthCheck, HealthError> {
    let (transport, path, password) = store::repository_access(&core.db, repository)
        .await?
        .ok_or_else(|| HealthError::NoRepository(repository.to_string()))?;
    let tnode = store::node(&core.db, "transport", &transport)
        .await?
        .ok_or_else(|| HealthError::NoTransport(transport.clone()))?;
    let node = tnode.address();
    let node_err = |reason: String| HealthError::Node { node: transport.clone(), reason };
    let started = now();
    info!("repository {repository}: health check started on transport node {transport}");
    let mut client = core.manager.transport(&node).await.map_err(|e| node_err(e.to_string()))?;
    let req = bulwark_proto::pb::VerifyRequest {
        protocol: bulwark_proto::PROTOCOL,
        path,
        password: password.unwrap_or_default(),
    };
    let reply = client.verify_repository(req).await.map_err(|s| node_err(s.message().to_string()))?.into_inner();
    let report: VerifyReport = serde_json::from_str(&reply.report_json)
        .map_err(|e| HealthError::Report { node: transport.clone(), reason: e.to_string() })?;
    let verified_at = now();
    let manifests: HashSet<&str> = reply.manifests.iter().map(String::as_str).collect();
    let held: HashSet<&str> = manifests.iter().copied().chain(reply.indexes_only.iter().map(String::as_str)).collect();
    // A point in the report that the repository no longer holds was forgotten during the
    // check: no damage.
    let found: HashMap<&str, &PointHealth> =
        report.points.iter().filter(|p| held.contains(p.point.as_str())).map(|p| (p.point.as_str(), p)).collect();

    let rows = store::repository_points(&core.db, repository).await?;
    let owners = store::chain_owners(&core.db, repository).await?;

    let mut out = HealthCheck {
        repository: repository.to_string(),
        transport,
        started,
        verified_at: verified_at.clone(),
        ok: true,
        chunks_checked: report.chunks_checked as u64,
        chunks_damaged: report.chunks_damaged as u64,
        bytes_checked: report.bytes_checked,
        points: Vec::new(),
        missing: Vec::new(),
        unknown: Vec::new(),
        not_checked: Vec::new(),
        advice: Vec::new(),
    };
    let mut known = HashSet::new();
    for r in rows {
        known.insert(r.id.clone());
        let mut point = CheckedPoint {
            job: owners.get(&r.name).cloned(),
            source: r.source.as_ref().and_then(|s| s.as_str()).unwrap_or_default().to_string(),
            id: r.id,
            computer: r.computer,
            name: r.name,
            created: r.created,
            health: "ok".into(),
            previous_health: r.health,
            detail: None,
            damaged_ranges: Vec::new(),
            damaged_files: Vec::new(),
        };
        match found.get(point.id.as_str()) {
            Some(h) => {
                if !h.ok {
                    point.health = "damaged".into();
                    point.detail = summary(h);
                    point.damaged_ranges = h.damaged_ranges.clone();
                    point.damaged_files = h.damaged_files.iter().map(|f| f.path.clone()).collect();
                }
                out.points.push(point);
            }
            None if manifests.contains(point.id.as_str()) => out.not_checked.push(point.id),
            None => {
                point.health = "damaged".into();
                point.detail = Some(MISSING.into());
                out.missing.push(point);
            }
        }
    }
    for p in &report.points {
        if found.contains_key(p.point.as_str()) && !known.contains(&p.point) {
            out.unknown.push(UnknownPoint {
                id: p.point.clone(),
                name: p.name.clone(),
                health: if p.ok { "ok" } else { "damaged" }.into(),
                detail: summary(p),
            });
        }
    }
    out.ok = out.damaged().next().is_none() && out.unknown.iter().all(|u| u.health == "ok");
    out.advice = advice(&out);

    let health: Vec<(&str, &str, Option<&str>)> = out
        .points
        .iter()
        .chain(&out.missing)
        .map(|p| (p.id.as_str(), p.health.as_str(), p.detail.as_deref()))
        .collect();
    store::set_point_health(&core.db, &health, &verified_at).await?;

    for p in out.damaged() {
        warn!(
            "repository {repository}: point {} ({} {}) is damaged: {}",
            p.id,
            p.computer,
            p.source,
            p.detail.as_deref().unwrap_or("damaged")
        );
    }
    for u in &out.unknown {
        warn!("repository {repository}: point {} ({}) is not in the catalog", u.id, u.name.as_deref().unwrap_or("?"));
    }
    info!(
        "repository {repository}: health check of {} point(s), {} chunk(s): {}",
        out.points.len(),
        out.chunks_checked,
        if out.ok { "healthy" } else { "DAMAGE FOUND" }
    );
    Ok(out)
}

/// What to do about damaged catalog points, per backup chain: lost blocks come back with the
/// next run of the chain's job; a point whose manifest or index is damaged or gone does not.
fn advice(c: &HealthCheck) -> Vec<String> {
    let mut chains: Vec<(&str, Vec<&CheckedPoint>)> = Vec::new();
    for p in c.damaged() {
        match chains.iter_mut().find(|(n, _)| *n == p.name) {
            Some((_, ps)) => ps.push(p),
            None => chains.push((&p.name, vec![p])),
        }
    }
    let ids = |ps: &[&CheckedPoint]| ps.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    for (_, points) in chains {
        let what = format!("{} of computer {}", points[0].source, points[0].computer);
        let (blocks, lost): (Vec<&CheckedPoint>, Vec<&CheckedPoint>) =
            points.iter().partition(|p| !p.damaged_ranges.is_empty() || !p.damaged_files.is_empty());
        let Some(job) = &points[0].job else {
            out.push(format!(
                "{what}: point(s) {} damaged, and no job backs this source up any more: restore from a point \
                 found ok, or back the source up with a job",
                ids(&points)
            ));
            continue;
        };
        if !blocks.is_empty() {
            out.push(format!(
                "{what}: point(s) {} lost blocks; the next run of job {job} stores them again from the source, as \
                 far as it still holds them (`bulwark job start {job}`), and the next check (`bulwark repository \
                 verify {}`) finds the point(s) whole again; until then, restore from a point found ok",
                ids(&blocks),
                c.repository
            ));
        }
        if !lost.is_empty() {
            out.push(format!(
                "{what}: point(s) {} cannot be restored (manifest or index damaged or gone); the next run of job \
                 {job} makes a new point (`bulwark job start {job}`)",
                ids(&lost)
            ));
        }
    }
    if c.unknown.iter().any(|u| u.health != "ok") {
        out.push(
            "damaged points the catalog does not know are listed under unknown: they are not restorable through the \
             server"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_point_is_summed_up_in_one_line() {
        let range = |first, last, reason: &str| DamagedRange {
            first_block: first,
            last_block: last,
            offset: first * 4096,
            length: (last - first + 1) * 4096,
            chunks: vec!["ab".into()],
            reason: reason.into(),
        };
        let p = PointHealth {
            point: "p".into(),
            name: Some("n".into()),
            ok: false,
            problem: None,
            damaged_ranges: vec![
                range(3, 3, "missing"),
                range(7, 9, "digest mismatch"),
                range(20, 20, "missing"),
                range(30, 30, "missing"),
            ],
            damaged_files: vec![],
        };
        assert_eq!(
            summary(&p).unwrap(),
            "4 damaged range(s), 24576 bytes: block 3 (missing), blocks 7-9 (digest mismatch), block 20 (missing), …"
        );
        let whole = PointHealth { ok: true, damaged_ranges: vec![], ..p.clone() };
        assert_eq!(summary(&whole), None);
        let meta = PointHealth { problem: Some("index fails authentication".into()), damaged_ranges: vec![], ..p };
        assert_eq!(summary(&meta).unwrap(), "index fails authentication");
    }

    #[test]
    fn advice_names_the_job_and_tells_lost_blocks_from_lost_points() {
        let point = |id: &str, name: &str, job: Option<&str>, detail: &str, ranges: usize| CheckedPoint {
            id: id.into(),
            computer: "pc".into(),
            name: name.into(),
            source: format!("/dev/{name}"),
            created: String::new(),
            job: job.map(String::from),
            health: "damaged".into(),
            previous_health: None,
            detail: Some(detail.into()),
            damaged_ranges: (0..ranges)
                .map(|b| DamagedRange {
                    first_block: b as u64,
                    last_block: b as u64,
                    offset: 0,
                    length: 1,
                    chunks: vec![],
                    reason: "missing".into(),
                })
                .collect(),
            damaged_files: vec![],
        };
        let check = HealthCheck {
            repository: "main".into(),
            transport: "t".into(),
            started: String::new(),
            verified_at: String::new(),
            ok: false,
            chunks_checked: 0,
            chunks_damaged: 1,
            bytes_checked: 0,
            points: vec![
                point("p1", "vda", Some("nightly"), "1 damaged range(s)", 1),
                point("p3", "vdc", None, "x", 1),
            ],
            missing: vec![point("p2", "vda", Some("nightly"), MISSING, 0)],
            unknown: vec![],
            not_checked: vec![],
            advice: vec![],
        };
        let a = advice(&check);
        assert_eq!(a.len(), 3, "{a:#?}");
        assert!(
            a[0].starts_with("/dev/vda of computer pc: point(s) p1 lost blocks")
                && a[0].contains("`bulwark job start nightly`")
        );
        assert!(a[1].starts_with("/dev/vda of computer pc: point(s) p2 cannot be restored"), "{a:#?}");
        assert!(a[2].contains("p3 damaged, and no job backs this source up"), "{a:#?}");
    }

    /// The report as the repository's verify writes it reads back, and fields it may gain
    /// later are passed over, not refused.
    #[test]
    fn the_repository_report_reads_back() {
        let v = serde_json::json!({
            "ok": false, "chunks_checked": 12, "chunks_damaged": 1, "chunks_quarantined": 1,
            "bytes_checked": 49152, "a_later_field": true,
            "points": [{
                "point": "20261125T220000Z-3f2a9c", "name": "web-1-disk", "ok": false, "problem": null,
                "damaged_ranges": [{"first_block": 2, "last_block": 2, "offset": 8192, "length": 4096,
                    "chunks": ["ab"], "reason": "digest mismatch"}]
            }, {
                "point": "p", "name": null, "ok": false, "problem": null, "damaged_ranges": [],
                "damaged_files": [{"path": "big.bin", "chunk": "ab", "reason": "missing"}]
            }]
        });
        let back: VerifyReport = serde_json::from_value(v).unwrap();
        assert_eq!((back.chunks_checked, back.chunks_damaged, back.bytes_checked), (12, 1, 49152));
        assert_eq!(summary(&back.points[0]).unwrap(), "1 damaged range(s), 4096 bytes: block 2 (digest mismatch)");
        assert_eq!(summary(&back.points[1]).unwrap(), "damaged file(s): big.bin");
    }
}
