//! Coordination between the processes writing one repository, built from objects with expiry,
//! so it works the same on a local directory and on an object store (no flock, no rename
//! tricks).
//!
//! - A **lease** is an object (`locks/writers/ID` for a backup, `locks/maintenance/…` for a
//!   collection or an upgrade) naming its holder. A thread rewrites it every quarter of its
//!   time to live; the storage's own clock stamps each rewrite, so a lease not rewritten for
//!   its time to live has expired — its holder died, or lost the storage for that long. A
//!   holder whose renewals failed for that long knows it may have been presumed dead, and its
//!   [`Lease::check`] fails: a backup then refuses to commit its point.
//! - On the machine that wrote a lease, a dead holder is known at once: the lease names its
//!   boot, process id namespace, process id and process start time, and a process that is gone
//!   (or a different one under the same id) is dead whatever the expiry says. That is what
//!   lets a collection right after a `kill -9` clear what the killed backup left.
//! - The **maintenance lock** is exclusive: a contender writes its own lease object, then lists
//!   the others; it holds the lock only if it saw no other live one, and otherwise withdraws.
//!   With a store whose listings follow its writes (local filesystems, S3 since 2020), two
//!   contenders can both withdraw but never both hold it.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::storage::Storage;

/// How long a lease lives without renewal. Long enough to ride out a stalled storage, short
/// enough that a holder that vanished from another machine stops blocking within minutes.
pub const LEASE_TTL: Duration = Duration::from_secs(10 * 60);

pub const WRITERS: &str = "locks/writers/";
pub const MAINTENANCE: &str = "locks/maintenance/";

/// Who holds a lease, as its object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub id: String,
    /// What the holder does: `backup`, `gc`, `upgrade`…
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub host: String,
    #[serde(default)]
    pub boot: String,
    #[serde(default)]
    pub pid_ns: String,
    pub pid: u32,
    #[serde(default)]
    pub pid_start: u64,
    /// Storage time when the lease was first taken, seconds since the epoch.
    pub started: u64,
    pub ttl_secs: u64,
}

/// A running backup as its lease describes it.
#[derive(Debug, Clone)]
pub struct LiveWriter {
    pub id: String,
    pub started: SystemTime,
    pub parent: Option<String>,
}

impl Holder {
    fn new(id: &str, what: &str, parent: Option<&str>, started: SystemTime, ttl: Duration) -> Holder {
        let me = this_process();
        Holder {
            id: id.into(),
            what: what.into(),
            parent: parent.map(String::from),
            host: me.host,
            boot: me.boot,
            pid_ns: me.pid_ns,
            pid: std::process::id(),
            pid_start: me.pid_start,
            started: started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            ttl_secs: ttl.as_secs().max(1),
        }
    }

    pub fn started(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.started)
    }

    /// Whether the lease, last written at `modified`, still holds at storage time `now`.
    fn alive(&self, modified: SystemTime, now: SystemTime) -> bool {
        if modified + Duration::from_secs(self.ttl_secs) <= now {
            return false;
        }
        let me = this_process();
        if self.boot.is_empty() || self.boot != me.boot || self.pid_ns != me.pid_ns || self.host != me.host {
            return true;
        }
        process_start(self.pid) == Some(self.pid_start)
    }

    pub fn describe(&self) -> String {
        format!("{} {} (process {} on {})", self.what, self.id, self.pid, self.host)
    }
}

struct Me {
    host: String,
    boot: String,
    pid_ns: String,
    pid_start: u64,
}

fn this_process() -> Me {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    Me {
        host: read("/proc/sys/kernel/hostname"),
        boot: read("/proc/sys/kernel/random/boot_id"),
        pid_ns: std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default(),
        pid_start: process_start(std::process::id()).unwrap_or(0),
    }
}

/// A process's start time (clock ticks since boot), `None` when there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields count from its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Default)]
struct Renewal {
    /// When the lease object was last written successfully.
    renewed: Option<Instant>,
    last_error: Option<String>,
    stop: bool,
}

/// A lease this process holds; renewed by a thread until dropped, then deleted.
pub struct Lease {
    storage: Arc<dyn Storage>,
    key: String,
    holder: Holder,
    state: Arc<(Mutex<Renewal>, Condvar)>,
    renewer: Option<JoinHandle<()>>,
}

impl Lease {
    /// Writes a lease at `key` and starts renewing it.
    pub fn take(
        storage: Arc<dyn Storage>,
        key: String,
        what: &str,
        parent: Option<&str>,
        ttl: Duration,
    ) -> io::Result<Lease> {
        let id = key.rsplit('/').next().unwrap_or(&key).to_string();
        let started = storage.now()?;
        let holder = Holder::new(&id, what, parent, started, ttl);
        let body = serde_json::to_vec(&holder).expect("a lease serializes");
        let written = Instant::now();
        storage.put(&key, &body, true)?;
        let state = Arc::new((Mutex::new(Renewal { renewed: Some(written), ..Default::default() }), Condvar::new()));
        let renewer = {
            let (storage, key, state) = (storage.clone(), key.clone(), state.clone());
            std::thread::Builder::new().name("bulwark-lease".into()).spawn(move || {
                let (lock, wake) = &*state;
                let mut st = lock.lock().expect("no panics while held");
                loop {
                    // A stop asked for before this thread first waits is seen here, not lost.
                    st = wake.wait_timeout_while(st, ttl / 4, |st| !st.stop).expect("no panics while held").0;
                    if st.stop {
                        return;
                    }
                    drop(st);
                    let began = Instant::now();
                    let r = storage.put(&key, &body, true);
                    st = lock.lock().expect("no panics while held");
                    match r {
                        Ok(()) => {
                            st.renewed = Some(began);
                            st.last_error = None;
                        }
                        Err(e) => st.last_error = Some(e.to_string()),
                    }
                }
            })?
        };
        Ok(Lease { storage, key, holder, state, renewer: Some(renewer) })
    }

    /// Fails when the lease may have expired in the storage's eyes: it has not been renewed
    /// for most of its time to live, so others may already treat its holder as dead.
    pub fn check(&self) -> Result<(), String> {
        let st = self.state.0.lock().expect("no panics while held");
        let ttl = Duration::from_secs(self.holder.ttl_secs);
        // A margin for the storage's clock running ahead of ours.
        let limit = ttl.saturating_sub(ttl / 8);
        match st.renewed {
            Some(t) if t.elapsed() < limit => Ok(()),
            _ => Err(format!(
                "its lease on the repository was not renewed for {} s{}; another process may have taken it for dead",
                st.renewed.map_or(0, |t| t.elapsed().as_secs()),
                st.last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            )),
        }
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).field("holder", &self.holder).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.0.lock().expect("no panics while held").stop = true;
        self.state.1.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let _ = self.storage.delete(&self.key);
    }
}

/// Every lease under `dir`, with whether it is alive. An unreadable lease object (being
/// written, or damaged) counts as alive until it expires by its time.
pub fn leases(storage: &dyn Storage, dir: &str) -> io::Result<Vec<(Holder, bool)>> {
    let now = storage.now()?;
    let mut out = Vec::new();
    for e in storage.list(dir)? {
        let holder = match storage.read(&format!("{dir}{}", e.name)) {
            Ok(raw) => serde_json::from_slice::<Holder>(&raw).ok(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let holder = holder.unwrap_or_else(|| Holder {
            id: e.name.clone(),
            what: "unknown".into(),
            parent: None,
            host: String::new(),
            boot: String::new(),
            pid_ns: String::new(),
            pid: 0,
            pid_start: 0,
            started: e.modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            ttl_secs: LEASE_TTL.as_secs(),
        });
        let alive = holder.alive(e.modified, now);
        out.push((holder, alive));
    }
    Ok(out)
}

/// The backups writing now (`alive`) or that died before committing (`!alive`).
pub fn writers(storage: &dyn Storage, alive: bool) -> io::Result<Vec<LiveWriter>> {
    Ok(leases(storage, WRITERS)?
        .into_iter()
        .filter(|(_, a)| *a == alive)
        .map(|(h, _)| LiveWriter { id: h.id.clone(), started: h.started(), parent: h.parent })
        .collect())
}

/// Takes the maintenance lock for `what`, or says who holds it.
pub fn maintenance(storage: Arc<dyn Storage>, what: &str) -> io::Result<Result<Lease, Holder>> {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).expect("the kernel's random source is available");
    let id = format!("{what}-{}", hex::encode(r));
    let lease = Lease::take(storage.clone(), format!("{MAINTENANCE}{id}"), what, None, LEASE_TTL)?;
    let other = leases(&*storage, MAINTENANCE)?.into_iter().find(|(h, alive)| *alive && h.id != id);
    Ok(match other {
        None => Ok(lease),
        Some((h, _)) => Err(h),
    })
}

/// The live holder of the maintenance lock, if any.
pub fn maintenance_holder(storage: &dyn Storage) -> io::Result<Option<Holder>> {
    Ok(leases(storage, MAINTENANCE)?.into_iter().find(|(_, alive)| *alive).map(|(h, _)| h))
}

/// Removes the objects of leases whose holders are dead.
pub fn clear_dead(storage: &dyn Storage, dir: &str, keep: impl Fn(&Holder) -> bool) -> io::Result<u64> {
    let mut n = 0;
    for (h, alive) in leases(storage, dir)? {
        if !alive && !keep(&h) {
            storage.delete(&format!("{dir}{}", h.id))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn a_lease_is_alive_while_held_and_gone_when_dropped() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::named("locks-1"));
        let l = Lease::take(s.clone(), format!("{WRITERS}b1"), "backup", Some("p0"), LEASE_TTL).unwrap();
        let w = writers(&*s, true).unwrap();
        assert_eq!((w.len(), w[0].id.as_str(), w[0].parent.as_deref()), (1, "b1", Some("p0")));
        assert!(l.check().is_ok());
        drop(l);
        assert!(writers(&*s, true).unwrap().is_empty() && writers(&*s, false).unwrap().is_empty());
    }

    #[test]
    fn a_lease_of_a_dead_process_on_this_machine_is_dead_at_once() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::named("locks-2"));
        let mut h = Holder::new("b2", "backup", None, SystemTime::now(), LEASE_TTL);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        h.pid = child.id();
        child.wait().unwrap();
        s.put(&format!("{WRITERS}b2"), &serde_json::to_vec(&h).unwrap(), true).unwrap();
        assert_eq!(writers(&*s, false).unwrap().len(), 1);
        // The same lease from another machine lives until it expires.
        h.host = "elsewhere".into();
        s.put(&format!("{WRITERS}b2"), &serde_json::to_vec(&h).unwrap(), true).unwrap();
        assert_eq!(writers(&*s, true).unwrap().len(), 1);
        h.ttl_secs = 1;
        s.put(&format!("{WRITERS}b2"), &serde_json::to_vec(&h).unwrap(), true).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(writers(&*s, false).unwrap().len(), 1);
    }

    #[test]
    fn the_maintenance_lock_is_exclusive() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::named("locks-3"));
        let first = maintenance(s.clone(), "gc").unwrap().unwrap();
        let refused = maintenance(s.clone(), "upgrade").unwrap().unwrap_err();
        assert_eq!(refused.what, "gc");
        // The loser withdrew: only the holder's object is left.
        assert_eq!(s.list(MAINTENANCE).unwrap().len(), 1);
        drop(first);
        assert!(maintenance(s.clone(), "upgrade").unwrap().is_ok());
    }
}
