//! The resource scheduler: which waiting tasks get a slot now. A pure function of the slots in
//! use and the tasks waiting, so its rules are tested without a database; the backup manager
//! feeds it from the config database under one lock and records its grants.
//!
//! The rules: never more running tasks on a repository than its maximum, never two tasks on
//! one computer, nothing before its `not_before` (a retry's delay); highest priority first and
//! first come first within a priority; a task that cannot run yet does not hold back tasks
//! behind it that can.
//!
//! A task of a scale-out repository waits under the scale-out repository's name and is placed
//! on one of its extents when granted ([`placement`]): the extent its computer's backup chain
//! is on, or for a new chain the one the policy prefers among those with room.

use std::collections::{HashMap, HashSet};

/// A task waiting for a slot, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: String,
    pub computer: String,
    pub repository: String,
    pub priority: i64,
    /// Queue order: lower came first.
    pub seq: i64,
    pub not_before: Option<jiff::Timestamp>,
}

/// The slots in use: running tasks per repository, busy computers, and each repository's
/// maximum.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    limits: HashMap<String, i64>,
    running: HashMap<String, i64>,
    busy: HashSet<String>,
}

impl Slots {
    pub fn new(limits: impl IntoIterator<Item = (String, i64)>) -> Slots {
        Slots { limits: limits.into_iter().collect(), ..Default::default() }
    }

    /// A task already running holds a slot of its repository and its computer.
    pub fn occupy(&mut self, computer: &str, repository: &str) {
        *self.running.entry(repository.to_string()).or_default() += 1;
        self.busy.insert(computer.to_string());
    }

    /// Gives back a slot taken by [`Slots::grant`] whose task turned out not to be waiting any
    /// more (cancelled meanwhile).
    pub fn release(&mut self, computer: &str, repository: &str) {
        if let Some(n) = self.running.get_mut(repository) {
            *n -= 1;
        }
        self.busy.remove(computer);
    }

    /// Whether `repository` can take one more task.
    pub fn has_room(&self, repository: &str) -> bool {
        self.free(repository) > 0
    }

    /// Slots of `repository` not in use.
    pub fn free(&self, repository: &str) -> i64 {
        self.limits.get(repository).copied().unwrap_or(0) - self.running.get(repository).copied().unwrap_or(0)
    }

    /// Grants `w`, a task of a scale-out repository, a slot on the first of `extents` (best
    /// first, see [`placement`]) with room; returns that extent.
    pub fn grant_on(&mut self, w: &Waiting, extents: &[String], now: jiff::Timestamp) -> Option<String> {
        if w.not_before.is_some_and(|t| t > now) || self.busy.contains(&w.computer) {
            return None;
        }
        let extent = extents.iter().find(|e| self.has_room(e))?.clone();
        self.occupy(&w.computer, &extent);
        Some(extent)
    }

    /// Repositories with room, by name.
    pub fn with_room(&self) -> Vec<String> {
        let mut r: Vec<String> = self.limits.keys().filter(|r| self.has_room(r)).cloned().collect();
        r.sort();
        r
    }

    /// Grants slots to what can run now among `waiting` (any order: taken by priority, then
    /// queue order), taking them; returns the granted tasks' ids in grant order.
    pub fn grant(&mut self, waiting: &[Waiting], now: jiff::Timestamp) -> Vec<String> {
        let mut order: Vec<&Waiting> = waiting.iter().collect();
        order.sort_by_key(|w| (std::cmp::Reverse(w.priority), w.seq));
        let mut granted = Vec::new();
        for w in order {
            let later = w.not_before.is_some_and(|t| t > now);
            if later || self.busy.contains(&w.computer) || !self.has_room(&w.repository) {
                continue;
            }
            self.occupy(&w.computer, &w.repository);
            granted.push(w.id.clone());
        }
        granted
    }
}

/// How a scale-out repository places a backup chain that has no extent yet (a computer's first
/// backup, or one whose chain was evacuated away). Every later point of a chain goes where the
/// chain is: an incremental needs its parent's chunks in the same repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The extent holding the least data (the catalog's stored bytes): chains spread by size.
    Locality,
    /// The extent with the most free task slots at the moment (then the least data): new chains
    /// go where they start soonest.
    Performance,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "locality" => Ok(Policy::Locality),
            "performance" => Ok(Policy::Performance),
            other => Err(format!("placement policy {other:?}: locality or performance")),
        }
    }
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Locality => "locality",
            Policy::Performance => "performance",
        }
    }
}

/// An extent of a scale-out repository, as placement sees it.
#[derive(Debug, Clone)]
pub struct Extent {
    pub repository: String,
    /// In maintenance: takes no backup; its chains wait until it is evacuated or back.
    pub maintenance: bool,
    pub stored_bytes: i64,
}

/// The extents a task of scale-out repository `scale_out` may run on, best first: the one its
/// chain is on (`chain_on`), else the policy's order among those not in maintenance. A chain on
/// an extent in maintenance is an error saying what to do: starting it again elsewhere would
/// leave two chains of one source in one scale-out repository.
pub fn placement(
    scale_out: &str,
    policy: Policy,
    extents: &[Extent],
    chain_on: Option<&str>,
    slots: &Slots,
) -> Result<Vec<String>, String> {
    if let Some(e) = chain_on.and_then(|c| extents.iter().find(|e| e.repository == c)) {
        if e.maintenance {
            return Err(format!(
                "the backup chain is on extent {} of scale-out repository {scale_out}, which is in maintenance: \
                 evacuate it (`bulwark scale-out evacuate {scale_out} {}`) or end its maintenance",
                e.repository, e.repository
            ));
        }
        return Ok(vec![e.repository.clone()]);
    }
    let mut open: Vec<&Extent> = extents.iter().filter(|e| !e.maintenance).collect();
    if open.is_empty() {
        return Err(format!("every extent of scale-out repository {scale_out} is in maintenance"));
    }
    match policy {
        Policy::Locality => open.sort_by_key(|e| (e.stored_bytes, e.repository.clone())),
        Policy::Performance => {
            open.sort_by_key(|e| (std::cmp::Reverse(slots.free(&e.repository)), e.stored_bytes, e.repository.clone()))
        }
    }
    Ok(open.into_iter().map(|e| e.repository.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, computer: &str, repository: &str, priority: i64, seq: i64) -> Waiting {
        Waiting {
            id: id.into(),
            computer: computer.into(),
            repository: repository.into(),
            priority,
            seq,
            not_before: None,
        }
    }

    fn slots() -> Slots {
        Slots::new([("r1".to_string(), 2), ("r2".to_string(), 1)])
    }

    #[test]
    fn priority_first_then_queue_order_within_the_repository_maximum() {
        let now = jiff::Timestamp::now();
        let waiting = [task("a", "c1", "r1", 0, 1), task("b", "c2", "r1", 5, 2), task("c", "c3", "r1", 0, 3)];
        assert_eq!(slots().grant(&waiting, now), ["b", "a"], "high priority first, then the first queued");
    }

    #[test]
    fn a_busy_computer_or_a_full_repository_does_not_hold_back_the_tasks_behind() {
        let now = jiff::Timestamp::now();
        let mut s = slots();
        s.occupy("c1", "r2");
        let waiting = [
            task("on-busy-computer", "c1", "r1", 9, 1),
            task("on-full-repository", "c2", "r2", 9, 2),
            task("free", "c3", "r1", 0, 3),
        ];
        assert_eq!(s.grant(&waiting, now), ["free"]);
        assert!(s.has_room("r1") && !s.has_room("r2"));
    }

    #[test]
    fn one_task_per_computer_even_across_repositories() {
        let now = jiff::Timestamp::now();
        let waiting = [task("a", "c1", "r1", 0, 1), task("b", "c1", "r2", 0, 2), task("c", "c2", "r2", 0, 3)];
        assert_eq!(slots().grant(&waiting, now), ["a", "c"]);
    }

    #[test]
    fn a_retry_waits_for_its_time_and_a_repository_without_a_limit_gets_nothing() {
        let now = jiff::Timestamp::now();
        let mut later = task("later", "c1", "r1", 9, 1);
        later.not_before = Some(now + jiff::SignedDuration::from_mins(10));
        let mut due = task("due", "c2", "r1", 0, 2);
        due.not_before = Some(now - jiff::SignedDuration::from_secs(1));
        let unknown = task("unknown", "c3", "gone", 0, 3);
        assert_eq!(slots().grant(&[later.clone(), due, unknown], now), ["due"]);
        assert_eq!(slots().grant(&[later], now + jiff::SignedDuration::from_mins(11)), ["later"]);
    }

    #[test]
    fn a_released_slot_can_be_granted_again() {
        let now = jiff::Timestamp::now();
        let mut s = slots();
        assert_eq!(s.grant(&[task("a", "c1", "r2", 0, 1)], now), ["a"]);
        assert!(s.grant(&[task("b", "c2", "r2", 0, 2)], now).is_empty());
        s.release("c1", "r2");
        assert_eq!(s.grant(&[task("b", "c2", "r2", 0, 2)], now), ["b"]);
        assert_eq!(s.with_room(), ["r1"]);
    }

    fn extent(name: &str, maintenance: bool, stored: i64) -> Extent {
        Extent { repository: name.into(), maintenance, stored_bytes: stored }
    }

    #[test]
    fn a_chain_stays_on_its_extent_and_new_ones_follow_the_policy() {
        let mut s = Slots::new([("e1".to_string(), 2), ("e2".to_string(), 2), ("e3".to_string(), 1)]);
        s.occupy("busy", "e1");
        let extents = [extent("e1", false, 10), extent("e2", false, 500), extent("e3", true, 0)];
        for policy in [Policy::Locality, Policy::Performance] {
            assert_eq!(placement("pool", policy, &extents, Some("e2"), &s).unwrap(), ["e2"], "{policy:?}");
        }
        assert_eq!(placement("pool", Policy::Locality, &extents, None, &s).unwrap(), ["e1", "e2"]);
        assert_eq!(placement("pool", Policy::Performance, &extents, None, &s).unwrap(), ["e2", "e1"]);
        // A chain on an extent no longer in the pool starts again as a new one.
        assert_eq!(placement("pool", Policy::Locality, &extents, Some("gone"), &s).unwrap(), ["e1", "e2"]);
        let e = placement("pool", Policy::Locality, &extents, Some("e3"), &s).unwrap_err();
        assert!(e.contains("extent e3") && e.contains("maintenance") && e.contains("evacuate pool e3"), "{e}");
        let e = placement("pool", Policy::Locality, &[extent("e3", true, 0)], None, &s).unwrap_err();
        assert!(e.contains("every extent"), "{e}");
    }

    #[test]
    fn a_scale_out_task_takes_the_first_extent_with_room() {
        let now = jiff::Timestamp::now();
        let mut s = Slots::new([("e1".to_string(), 1), ("e2".to_string(), 1)]);
        let order = ["e1".to_string(), "e2".to_string()];
        assert_eq!(s.grant_on(&task("a", "c1", "pool", 0, 1), &order, now).as_deref(), Some("e1"));
        assert_eq!(s.grant_on(&task("b", "c1", "pool", 0, 2), &order, now), None, "c1 is busy");
        assert_eq!(s.grant_on(&task("c", "c2", "pool", 0, 3), &order, now).as_deref(), Some("e2"));
        assert_eq!(s.grant_on(&task("d", "c3", "pool", 0, 4), &order, now), None, "both full");
        assert_eq!(s.free("e1"), 0);
    }
}
