//! Throttling of password guesses. Each user name and each client address has a count of
//! failed logins; past a few free failures, every further one locks the name (or address)
//! out for twice as long as the one before, up to a maximum. A locked-out login is refused
//! before its password is checked, so guessing costs the attacker time and the server no
//! CPU. A success clears the name's and the address's counts.
//!
//! The record lives in memory: a restart forgets it, which costs an attacker a restart of the
//! server, something he cannot cause. Names are capped so that guesses at random names cannot
//! fill the memory; addresses are bounded by the network.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures are free and how long lockouts last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failures per user name before the first lockout.
    pub user_failures: u32,
    /// Failures per client address (any names) before its first lockout.
    pub address_failures: u32,
    pub first_lockout: Duration,
    pub max_lockout: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            user_failures: 5,
            address_failures: 20,
            first_lockout: Duration::from_secs(2),
            max_lockout: Duration::from_secs(15 * 60),
        }
    }
}

impl LoginPolicy {
    /// The default, or what the internal `BULWARK_LOGIN_POLICY` variable sets
    /// (`USER_FAILURES,ADDRESS_FAILURES,FIRST_LOCKOUT_MS,MAX_LOCKOUT_MS`): tests shorten it.
    pub fn from_env() -> LoginPolicy {
        let v = std::env::var("BULWARK_LOGIN_POLICY").unwrap_or_default();
        let n: Vec<u64> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
        match n[..] {
            [u, a, first, max] => LoginPolicy {
                user_failures: u as u32,
                address_failures: a as u32,
                first_lockout: Duration::from_millis(first),
                max_lockout: Duration::from_millis(max),
            },
            _ => LoginPolicy::default(),
        }
    }

    /// The lockout that the `failures`-th failure earns (none while failures are free).
    fn lockout(&self, failures: u32, free: u32) -> Option<Duration> {
        let over = failures.checked_sub(free)?;
        let doubled = self.first_lockout.saturating_mul(1u32 << over.min(20));
        Some(doubled.min(self.max_lockout))
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Records older than this (since their last failure) are forgotten.
const MEMORY: Duration = Duration::from_secs(3600);
/// Most user names remembered at once.
const MAX_NAMES: usize = 10_000;

struct Table<K> {
    records: HashMap<K, Record>,
    free: u32,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(free: u32) -> Self {
        Table { records: HashMap::new(), free }
    }

    fn locked(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.records.get(key)?.locked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    fn fail(&mut self, key: &K, policy: &LoginPolicy, now: Instant) -> Option<Duration> {
        if self.records.len() >= MAX_NAMES && !self.records.contains_key(key) {
            self.records.retain(|_, r| now.duration_since(r.last) < MEMORY);
            if self.records.len() >= MAX_NAMES {
                return None;
            }
        }
        let r = self.records.entry(key.clone()).or_insert(Record { failures: 0, locked_until: None, last: now });
        if now.duration_since(r.last) >= MEMORY {
            r.failures = 0;
        }
        r.failures += 1;
        r.last = now;
        let lockout = policy.lockout(r.failures, self.free);
        r.locked_until = lockout.map(|d| now + d);
        lockout
    }
}

/// Failed logins per user name and per client address.
pub struct LoginGuard {
    policy: LoginPolicy,
    users: Mutex<Table<String>>,
    addresses: Mutex<Table<IpAddr>>,
}

/// Why a login is refused before its password is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lockout {
    User(Duration),
    Address(Duration),
}

impl Lockout {
    pub fn remaining(&self) -> Duration {
        match self {
            Lockout::User(d) | Lockout::Address(d) => *d,
        }
    }
}

impl LoginGuard {
    pub fn new(policy: LoginPolicy) -> LoginGuard {
        LoginGuard {
            users: Mutex::new(Table::new(policy.user_failures)),
            addresses: Mutex::new(Table::new(policy.address_failures)),
            policy,
        }
    }

    /// Whether `user` may try a password from `address` now.
    pub fn check(&self, user: &str, address: Option<IpAddr>) -> Result<(), Lockout> {
        let now = Instant::now();
        if let Some(d) = address.and_then(|a| self.addresses.lock().expect("lock").locked(&a, now)) {
            return Err(Lockout::Address(d));
        }
        if let Some(d) = self.users.lock().expect("lock").locked(&user.to_string(), now) {
            return Err(Lockout::User(d));
        }
        Ok(())
    }

    /// Records a wrong password; the lockout it earned the name or the address, if any.
    pub fn failed(&self, user: &str, address: Option<IpAddr>) -> Option<Lockout> {
        let now = Instant::now();
        let by_address = address
            .and_then(|a| self.addresses.lock().expect("lock").fail(&a, &self.policy, now))
            .map(Lockout::Address);
        let by_user = self.users.lock().expect("lock").fail(&user.to_string(), &self.policy, now).map(Lockout::User);
        by_user.or(by_address)
    }

    pub fn succeeded(&self, user: &str, address: Option<IpAddr>) {
        self.users.lock().expect("lock").records.remove(user);
        if let Some(a) = address {
            self.addresses.lock().expect("lock").records.remove(&a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LoginPolicy {
        LoginPolicy {
            user_failures: 2,
            address_failures: 4,
            first_lockout: Duration::from_secs(10),
            max_lockout: Duration::from_secs(35),
        }
    }

    #[test]
    fn lockouts_double_after_the_free_failures_up_to_the_maximum() {
        let p = policy();
        let got: Vec<_> = (1..=6).map(|n| p.lockout(n, 2).map(|d| d.as_secs())).collect();
        assert_eq!(got, [None, Some(10), Some(20), Some(35), Some(35), Some(35)]);
    }

    #[test]
    fn a_locked_name_is_refused_and_a_success_clears_it() {
        let g = LoginGuard::new(policy());
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(g.failed("eve", a), None);
        assert!(matches!(g.failed("eve", a), Some(Lockout::User(_))));
        assert!(matches!(g.check("eve", a), Err(Lockout::User(_))));
        assert!(g.check("bob", a).is_ok(), "another name from the same address is not locked yet");
        g.succeeded("eve", a);
        assert!(g.check("eve", a).is_ok());
    }

    #[test]
    fn many_names_from_one_address_lock_the_address() {
        let g = LoginGuard::new(policy());
        let a = Some(IpAddr::from([10, 0, 0, 2]));
        for n in 0..4 {
            g.failed(&format!("guess-{n}"), a);
        }
        assert!(matches!(g.check("admin", a), Err(Lockout::Address(_))));
        assert!(g.check("admin", Some(IpAddr::from([10, 0, 0, 3]))).is_ok());
    }
}
