//! The resource scheduler: which waiting tasks get a slot now. A pure function of the slots in
//! use and the tasks waiting, so its rules are tested without a database; the backup manager
//! feeds it from the config database under one lock and records its grants.
//!
//! The rules: never more running tasks on a repository than its maximum, never two tasks on
//! one computer, nothing before its `not_before` (a retry's delay); highest priority first and
//! first come first within a priority; a task that cannot run yet does not hold back tasks
//! behind it that can.

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
        self.running.get(repository).copied().unwrap_or(0) < self.limits.get(repository).copied().unwrap_or(0)
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
}
