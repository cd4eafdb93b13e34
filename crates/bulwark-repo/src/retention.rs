//! Which restore points a retention policy keeps: the newest N, plus grandfather-father-son
//! (GFS) buckets. Days, weeks (ISO), months and years are counted in UTC.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};

/// A retention policy. A rule with count 0 keeps nothing by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Policy {
    pub fn keeps_anything(&self) -> bool {
        self.last + self.daily + self.weekly + self.monthly + self.yearly > 0
    }
}

/// Why a point is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Last,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Last => "last",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Yearly => "yearly",
        }
    }
}

/// Maps a time to its day, week, month or year.
type Bucket = fn(&DateTime<Utc>) -> (i32, u32);

/// For each point (given by creation time, in any order), the reasons it is kept; an empty set
/// means the policy lets it go. Within each bucket (day, week…) the newest point is the one kept.
pub fn apply(policy: &Policy, created: &[DateTime<Utc>]) -> Vec<BTreeSet<Reason>> {
    let mut order: Vec<usize> = (0..created.len()).collect();
    order.sort_by(|&a, &b| created[b].cmp(&created[a]));
    let mut keep = vec![BTreeSet::new(); created.len()];
    for &i in order.iter().take(policy.last as usize) {
        keep[i].insert(Reason::Last);
    }
    let rules: [(Reason, u32, Bucket); 4] = [
        (Reason::Daily, policy.daily, |t| (t.year(), t.ordinal())),
        (Reason::Weekly, policy.weekly, |t| (t.iso_week().year(), t.iso_week().week())),
        (Reason::Monthly, policy.monthly, |t| (t.year(), t.month())),
        (Reason::Yearly, policy.yearly, |t| (t.year(), 0)),
    ];
    for (reason, count, bucket) in rules {
        let mut left = count;
        let mut last_bucket = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            let b = bucket(&created[i]);
            if last_bucket != Some(b) {
                keep[i].insert(reason);
                last_bucket = Some(b);
                left -= 1;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let t = [at(2026, 1, 1, 1), at(2026, 1, 3, 1), at(2026, 1, 2, 1)];
        let k = apply(&Policy { last: 2, ..Default::default() }, &t);
        assert!(k[0].is_empty());
        assert!(k[1].contains(&Reason::Last) && k[2].contains(&Reason::Last));
    }

    #[test]
    fn daily_keeps_the_newest_point_of_each_day() {
        let t = [at(2026, 3, 1, 1), at(2026, 3, 1, 23), at(2026, 3, 2, 5), at(2026, 3, 2, 6), at(2026, 3, 3, 0)];
        let k = apply(&Policy { daily: 2, ..Default::default() }, &t);
        let kept: Vec<usize> = (0..t.len()).filter(|&i| !k[i].is_empty()).collect();
        assert_eq!(kept, vec![3, 4]);
    }

    #[test]
    fn gfs_over_a_year_of_nightly_points() {
        let t: Vec<_> = (0..365).map(|d| at(2025, 1, 1, 22) + chrono::Duration::days(d)).collect();
        let p = Policy { last: 3, daily: 7, weekly: 4, monthly: 12, yearly: 2 };
        let k = apply(&p, &t);
        let kept = k.iter().filter(|s| !s.is_empty()).count();
        // 7 days (Dec 25-31) cover the 3 last; of 4 weeks, Dec 31 and Dec 28 are kept already,
        // Dec 21 and 14 are added; 12 months add the last day of Jan-Nov; the year's newest point
        // is already kept.
        assert_eq!(kept, 7 + 2 + 11);
        assert!(k[364].contains(&Reason::Yearly));
        assert!(k[0].is_empty(), "the oldest point of the year falls out");
    }
}

/// What `forget` decided for one point.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub point: crate::RestorePointId,
    pub created: DateTime<Utc>,
    pub kept: bool,
    pub reasons: Vec<&'static str>,
}

/// Applies `policy` to the points named `name`: those it does not keep are deleted (unless
/// `dry_run`). A point a running backup builds on stays ("in-use") until the next forget.
pub fn forget(repo: &crate::Repository, name: &str, policy: &Policy, dry_run: bool) -> crate::Result<Vec<Decision>> {
    if !policy.keeps_anything() {
        return Err(crate::RepoError::Invalid {
            repo: repo.label(),
            reason: format!(
                "this policy keeps no point at all; to delete every point of {name:?} keep the last 1 at least"
            ),
        });
    }
    let points: Vec<_> = repo.list_points()?.into_iter().filter(|m| m.name == name).collect();
    let created: Vec<_> = points.iter().map(|m| m.created).collect();
    let decisions = apply(policy, &created);
    let mut out = Vec::new();
    for (m, why) in points.iter().zip(&decisions) {
        let mut kept = !why.is_empty();
        let mut reasons: Vec<&'static str> = why.iter().map(|w| w.name()).collect();
        if !kept && !dry_run {
            match repo.delete_point(&m.id) {
                Ok(()) => {}
                Err(crate::RepoError::PointInUse { .. }) => {
                    kept = true;
                    reasons.push("in-use");
                }
                Err(crate::RepoError::Immutable { .. }) => {
                    kept = true;
                    reasons.push("immutable");
                }
                Err(e) => return Err(e),
            }
        }
        out.push(Decision { point: m.id.clone(), created: m.created, kept, reasons });
    }
    Ok(out)
}
