//! What operators create through the API, and the checks that keep absurd values out of the
//! config database. Every input refuses unknown fields: a misspelt setting is an error, not a
//! silently ignored wish.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use bulwark_proto::domain::{CbtMode, Compression, JobMode, SnapshotMode};

use crate::schedule::{Schedule, Window};

/// A name operators give objects: it appears in URLs and in restore point names.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!("{what} name {name:?}: use 1-64 letters, digits, '.', '_' and '-'"))
    }
}

fn range(what: &str, v: i64, lo: i64, hi: i64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} must be between {lo} and {hi}, not {v}"))
    }
}

fn default_max_tasks() -> i64 {
    4
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryInput {
    pub name: String,
    /// The transport node whose data movers write it.
    pub transport: String,
    /// Where it is, as that node sees it: a path under one of the node's roots, or an S3
    /// location (`s3://bucket/prefix?endpoint=…&region=…`) in one of the node's buckets. Never a
    /// credential: the node holds those.
    #[serde(alias = "location")]
    pub path: String,
    /// Tasks that may write it at once.
    #[serde(default = "default_max_tasks")]
    #[schema(minimum = 1, maximum = 256)]
    pub max_tasks: i64,
    /// Encrypts a new repository; opens an existing encrypted one.
    #[serde(default)]
    #[schema(min_length = 8)]
    pub password: Option<String>,
    /// `shared` (default: one key, dedup across computers, whose agents are then trusted with
    /// each other's data) or `computer` (a key per computer; needs a password).
    #[serde(default)]
    pub isolation: Option<String>,
    /// When the server checks the repository's health on its own (server's time zone).
    #[serde(default)]
    pub verify_schedule: Option<Schedule>,
    /// Size in MiB at which a new repository closes its pack files (default 32).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1024)]
    pub pack_size_mib: Option<u32>,
    /// Lock every point for this many days after its time (a new repository: on the node's
    /// immutability service for a directory, by S3 Object Lock in a bucket that has it).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub immutable_days: Option<u32>,
}

/// A health check runs by the calendar or the clock; following a job would check a repository
/// while that job's next session may already be writing it.
fn check_verify_schedule(s: &Schedule) -> Result<(), String> {
    if matches!(s, Schedule::After { .. }) {
        return Err("a repository's health check runs daily, monthly or every N minutes, not after a job".into());
    }
    s.validate().map_err(|e| format!("verify_schedule: {e}"))
}

impl RepositoryInput {
    pub fn validate(&self) -> Result<(), String> {
        check_name("repository", &self.name)?;
        range("max_tasks", self.max_tasks, 1, 256)?;
        if let Some(s) = &self.verify_schedule {
            check_verify_schedule(s)?;
        }
        match self.path.parse::<bulwark_repo::storage::Location>()? {
            bulwark_repo::storage::Location::Local(p) if !p.is_absolute() => {
                return Err(format!("repository path {:?} must be absolute", self.path))
            }
            bulwark_repo::storage::Location::Memory(_) => {
                return Err(format!(
                    "repository location {:?}: a transport node keeps no memory repositories",
                    self.path
                ))
            }
            _ => {}
        }
        if self.password.as_deref().is_some_and(|p| p.len() < 8) {
            return Err("a repository password needs at least 8 characters".into());
        }
        if self.pack_size_mib.is_some_and(|m| !(1..=1024).contains(&m)) {
            return Err("pack_size_mib: packs hold 1 to 1024 MiB".into());
        }
        if self.immutable_days.is_some_and(|d| !(1..=3650).contains(&d)) {
            return Err("immutable_days: points are locked for 1 to 3650 days".into());
        }
        let isolation: bulwark_repo::Isolation = self.isolation.as_deref().unwrap_or_default().parse()?;
        if isolation == bulwark_repo::Isolation::Computer && self.password.is_none() {
            return Err("isolation computer needs an encrypted repository: give it a password".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryUpdate {
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub max_tasks: Option<i64>,
    /// Absent: unchanged; null: no scheduled health check; a schedule: this one.
    #[serde(default, deserialize_with = "present")]
    pub verify_schedule: Option<Option<Schedule>>,
}

/// A field that is there, even as null, as opposed to absent (`#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl RepositoryUpdate {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_tasks.is_none() && self.verify_schedule.is_none() {
            return Err("nothing to change: give max_tasks or verify_schedule".into());
        }
        if let Some(m) = self.max_tasks {
            range("max_tasks", m, 1, 256)?;
        }
        if let Some(Some(s)) = &self.verify_schedule {
            check_verify_schedule(s)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    pub name: String,
    pub computers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Restore points to keep per backup name (newest first).
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Tries in all (1: no retry).
    #[schema(minimum = 1, maximum = 10)]
    pub tries: u32,
    #[schema(maximum = 1440)]
    pub delay_minutes: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { tries: 3, delay_minutes: 10 }
    }
}

fn default_mode() -> JobMode {
    JobMode::Volumes
}

fn default_streams() -> u32 {
    2
}

/// A backup job: what, from which computers, to which repository, when, under which rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub name: String,
    /// `computer` (every whole disk the agent reports), `volumes` (block devices or images) or
    /// `files` (directories).
    #[serde(default = "default_mode")]
    #[schema(value_type = crate::openapi::JobMode)]
    pub mode: JobMode,
    #[serde(default)]
    pub computers: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub repository: String,
    /// Block devices or images (volumes), directories (files); none for an entire computer.
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// 256K, 512K, 1M or 4M.
    #[serde(default)]
    pub block_size: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::Compression>)]
    pub compression: Option<Compression>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::SnapshotMode>)]
    pub snapshot: Option<SnapshotMode>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::CbtMode>)]
    pub cbt: Option<CbtMode>,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub window: Option<Window>,
    /// IANA time zone for the schedule and window; the server's own when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub retries: Retries,
    /// Throttle per task, MB/s (0 or absent: unlimited).
    #[serde(default)]
    #[schema(maximum = 100_000)]
    pub throttle_mbps: Option<u64>,
    /// Higher runs first when tasks wait for a slot.
    #[serde(default)]
    #[schema(minimum = -100, maximum = 100)]
    pub priority: i64,
    /// Parallel streams per task.
    #[serde(default = "default_streams")]
    #[schema(minimum = 1, maximum = 16)]
    pub streams: u32,
    #[serde(default)]
    pub pre_command: Option<String>,
    #[serde(default)]
    pub post_command: Option<String>,
    /// Secrets from the server's sealed store that the pre and post commands receive as
    /// environment variables `BULWARK_SECRET_<NAME>`, so their text holds no credential.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Applications made consistent around each snapshot (application-aware processing):
    /// `postgres:host=H,port=P,user=U,password-secret=NAME` (every key optional; the secret,
    /// from the sealed store, is handed to the task with the job's others).
    #[serde(default)]
    pub apps: Vec<String>,
    /// What a failure to prepare an application does: `require` (the default: the snapshot
    /// try fails) or `ignore` (the task ends with a warning, the point is not
    /// application-consistent).
    #[serde(default)]
    pub app_policy: Option<String>,
    /// Run on the computer right before each snapshot try; a failure fails the try.
    #[serde(default)]
    pub pre_freeze_script: Option<String>,
    /// Run on the computer right after each snapshot try, whatever happened since the
    /// pre-freeze script started; a failure fails the try.
    #[serde(default)]
    pub post_thaw_script: Option<String>,
    /// Longest freeze, from the applications' preparation to their release (default 60 s).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub freeze_limit_s: Option<u32>,
    /// Copy-on-write space of classic LVM snapshots: a share of the volume (`20%`, the
    /// default) or a size (`512M`, `2G`); doubled on the next try after one overflowed.
    #[serde(default)]
    pub lvm_snapshot_size: Option<String>,
    /// Longest run of the pre and post commands (default 600 s).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    pub script_timeout_s: Option<u32>,
}

impl Job {
    pub fn validate(&self) -> Result<(), String> {
        check_name("job", &self.name)?;
        check_name("repository", &self.repository)?;
        if self.mode == JobMode::Computer && !self.sources.is_empty() {
            return Err("mode computer backs up every disk: it takes no sources".into());
        }
        if self.computers.is_empty() && self.groups.is_empty() {
            return Err("a job needs at least one computer or group".into());
        }
        for c in &self.computers {
            bulwark_proto::pki::validate_node_name(c)?;
        }
        if (self.sources.is_empty() && self.mode != JobMode::Computer) || self.sources.len() > 64 {
            return Err("a job needs 1 to 64 sources".into());
        }
        for name in &self.secrets {
            check_secret_name(name)?;
        }
        if let Some(s) = self.sources.iter().find(|s| !s.starts_with('/')) {
            return Err(format!("source {s:?} must be an absolute path"));
        }
        if let Some(text) = &self.block_size {
            let b: bulwark_repo::BlockSize = text.parse().map_err(|e| format!("block size {text:?}: {e}"))?;
            if !bulwark_repo::BlockSize::OFFERED.contains(&b.bytes()) {
                return Err(format!("block size {b} is not offered (256K, 512K, 1M, 4M)"));
            }
        }
        if let Some(s) = &self.schedule {
            s.validate().map_err(|e| e.to_string())?;
        }
        if let Some(w) = &self.window {
            w.validate().map_err(|e| e.to_string())?;
        }
        if let Some(tz) = &self.timezone {
            jiff::tz::TimeZone::get(tz).map_err(|_| format!("unknown time zone {tz:?}"))?;
        }
        range("retries.tries", self.retries.tries.into(), 1, 10)?;
        range("retries.delay_minutes", self.retries.delay_minutes.into(), 0, 1440)?;
        range("priority", self.priority, -100, 100)?;
        range("streams", self.streams.into(), 1, 16)?;
        if let Some(t) = self.throttle_mbps {
            range("throttle_mbps", t as i64, 0, 100_000)?;
        }
        if self.apps.len() > 16 {
            return Err("a job processes at most 16 applications".into());
        }
        for spec in self.app_specs()? {
            if let Some(name) = &spec.password_secret {
                check_secret_name(name).map_err(|e| format!("application {spec}: {e}"))?;
            }
        }
        if let Some(p) = &self.app_policy {
            p.parse::<bulwark_proto::apps::AppPolicy>()?;
        }
        if let Some(s) = &self.lvm_snapshot_size {
            s.parse::<bulwark_proto::domain::CowSize>().map_err(|e| format!("lvm_snapshot_size {e}"))?;
        }
        if let Some(t) = self.freeze_limit_s {
            range("freeze_limit_s", t.into(), 1, 3600)?;
        }
        if let Some(t) = self.script_timeout_s {
            range("script_timeout_s", t.into(), 1, 86_400)?;
        }
        Ok(())
    }

    /// The applications to process, parsed (a job stores them as the operator wrote them).
    pub fn app_specs(&self) -> Result<Vec<bulwark_proto::apps::AppSpec>, String> {
        // The spec is not repeated in the message: a mistyped one may hold a password.
        (self.apps.iter().enumerate())
            .map(|(i, a)| a.parse().map_err(|e| format!("application {} of the job: {e}", i + 1)))
            .collect()
    }

    /// The secrets a task of this job is handed: the job's, and those its applications'
    /// passwords are in.
    pub fn task_secrets(&self) -> Vec<String> {
        let mut names = self.secrets.clone();
        for spec in self.app_specs().unwrap_or_default() {
            if let Some(n) = spec.password_secret {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }

    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        self.timezone
            .as_deref()
            .and_then(|t| jiff::tz::TimeZone::get(t).ok())
            .unwrap_or_else(jiff::tz::TimeZone::system)
    }

    /// A readable restore point name for one source of one computer: `computer-dev-vdb`. Not
    /// unique (`db` + `/prod-data` reads as `db-prod` + `/data`): the names points are written
    /// under are the server's backup chains (`store::chain_for`), which start with this.
    pub fn point_name(computer: &str, source: &str) -> String {
        let tail: String = source
            .trim_matches('/')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' })
            .collect();
        let tail = if tail.is_empty() { "root".to_string() } else { tail };
        let mut name = format!("{computer}-{tail}");
        name.truncate(128);
        name
    }
}

/// A secret's name: what an environment variable can be called after `BULWARK_SECRET_`.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a secret name: letters, digits and '_', not starting with a digit (at most 64)"))
    }
}

/// The environment variable a command reads a secret from.
pub fn secret_variable(name: &str) -> String {
    format!("BULWARK_SECRET_{}", name.to_ascii_uppercase())
}

/// A secret's value (write only: the API never returns it).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    pub value: String,
}

/// A restore through the server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreInput {
    /// Where to restore; the point's own computer when absent.
    #[serde(default)]
    pub computer: Option<String>,
    /// An absolute path on that computer: a block device or file (volumes), a directory (files).
    pub target: String,
    #[serde(default)]
    pub overwrite: bool,
    /// Only these paths (and what is under them), restored into `target` as a directory: of a
    /// file-level point, or of the filesystem on `volume` of a volume point.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Files from a computer that is not trusted: no device nodes or fifos, no set-id bits, no
    /// owners (everything owned by the agent's user), no `security.*` or `trusted.*` attributes.
    #[serde(default)]
    pub safe: bool,
    /// Volume points restored by `paths`: the volume the files are on (0: the whole image; a
    /// partition's number on a disk).
    #[serde(default)]
    pub volume: u32,
}

/// The whole disks of an agent's inventory (what "entire computer" backs up): fixed disks and
/// their kin (NVMe, virtio, MD, device-mapper), not partitions, loop devices, optical drives,
/// removable media or read-only devices.
pub fn whole_disks(inventory: &serde_json::Value) -> Vec<String> {
    inventory["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            !matches!(d["kind"].as_str(), Some("loop" | "rom" | "part"))
                && d["removable"] != true
                && d["read_only"] != true
                && d["size_bytes"].as_u64().unwrap_or(0) > 0
        })
        .filter_map(|d| d["path"].as_str().map(String::from))
        .collect()
}

/// A join token: for `role`, and the node `name` or, with `any_name`, any name no node has had.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `agent` or `transport`.
    pub role: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub any_name: bool,
    /// May take back the name of a removed node.
    #[serde(default)]
    pub replace: bool,
    /// How long it stays valid: `30m`, `12h`, `7d` (when absent) or `never`.
    #[serde(default)]
    pub expires: Option<String>,
}

/// An API token for the caller.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRequest {
    /// A label to recognise it by in listings.
    #[serde(default)]
    pub name: Option<String>,
    /// How long it stays valid: `30m`, `12h`, `90d` (when absent) or `never`.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A new password; `current` is needed when users change their own.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(min_length = 10)]
    pub password: String,
    #[serde(default)]
    pub current: Option<String>,
}

/// A token's lifetime in seconds: `30s`, `90m`, `12h`, `30d`, or `never` (`None`), at most
/// ten years.
pub fn parse_lifetime(text: &str) -> Result<Option<i64>, String> {
    if text == "never" {
        return Ok(None);
    }
    let bad = || format!("lifetime {text:?}: a number with s, m, h or d (30d, 12h), or never");
    let unit = text.chars().last().ok_or_else(bad)?;
    let n: i64 = text[..text.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(scale).filter(|s| (1..=10 * 366 * 86_400).contains(s)).ok_or_else(bad)?;
    Ok(Some(secs))
}

/// A password good enough to be worth hashing.
pub fn check_password(pw: &str) -> Result<(), String> {
    if pw.chars().count() < 10 {
        return Err("a password needs at least 10 characters".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: String,
    #[schema(min_length = 10)]
    pub password: String,
    /// `admin` (everything) or `viewer` (reads only).
    pub role: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub name: String,
    pub password: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_come_from_computer_and_source() {
        assert_eq!(Job::point_name("web-1", "/dev/vdb"), "web-1-dev-vdb");
        assert_eq!(Job::point_name("web-1", "/"), "web-1-root");
        assert_eq!(Job::point_name("db", "/var/lib/pg data"), "db-var-lib-pg-data");
        bulwark_repo::point::validate_name(&Job::point_name("db", "/var/lib/pg data")).unwrap();
    }

    #[test]
    fn an_entire_computer_is_its_whole_fixed_disks() {
        let inv = serde_json::json!({"devices": [
            {"name": "vda", "path": "/dev/vda", "kind": "disk", "size_bytes": 1u64 << 34, "removable": false, "read_only": false,
             "children": [{"name": "vda1", "path": "/dev/vda1", "kind": "part"}]},
            {"name": "nvme0n1", "path": "/dev/nvme0n1", "kind": "disk", "size_bytes": 1u64 << 36, "removable": false, "read_only": false},
            {"name": "loop0", "path": "/dev/loop0", "kind": "loop", "size_bytes": 1u64 << 20, "removable": false, "read_only": false},
            {"name": "sr0", "path": "/dev/sr0", "kind": "rom", "size_bytes": 1u64 << 30, "removable": true, "read_only": true},
            {"name": "sdb", "path": "/dev/sdb", "kind": "disk", "size_bytes": 1u64 << 33, "removable": true, "read_only": false}
        ]});
        assert_eq!(whole_disks(&inv), vec!["/dev/vda", "/dev/nvme0n1"]);
        let job: Job = serde_json::from_value(serde_json::json!({
            "name": "all", "mode": "computer", "computers": ["pc"], "repository": "main"
        }))
        .unwrap();
        job.validate().unwrap();
        let with_sources = Job { sources: vec!["/dev/vda".into()], ..job };
        assert!(with_sources.validate().unwrap_err().contains("takes no sources"));
    }

    #[test]
    fn lifetimes_have_a_unit_and_a_bound() {
        assert_eq!(parse_lifetime("90s"), Ok(Some(90)));
        assert_eq!(parse_lifetime("12h"), Ok(Some(12 * 3600)));
        assert_eq!(parse_lifetime("30d"), Ok(Some(30 * 86_400)));
        assert_eq!(parse_lifetime("never"), Ok(None));
        for bad in ["", "d", "12", "0s", "-5m", "12w", "999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absurd_values_are_refused_with_a_reason() {
        let ok: Job = serde_json::from_value(serde_json::json!({
            "name": "nightly", "computers": ["web-1"], "repository": "main", "sources": ["/dev/vdb"]
        }))
        .unwrap();
        ok.validate().unwrap();
        let bad = |patch: serde_json::Value| {
            let mut v = serde_json::to_value(&ok).unwrap();
            v.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            match serde_json::from_value::<Job>(v) {
                Ok(j) => j.validate().unwrap_err(),
                Err(e) => e.to_string(),
            }
        };
        assert!(bad(serde_json::json!({"streams": 0})).contains("streams"));
        assert!(bad(serde_json::json!({"lvm_snapshot_size": "101%"})).contains("lvm_snapshot_size \"101%\""));
        assert!(bad(serde_json::json!({"priority": 1000})).contains("priority"));
        assert!(bad(serde_json::json!({"block_size": "3M"})).contains("3M"));
        assert!(bad(serde_json::json!({"sources": ["relative"]})).contains("absolute"));
        assert!(bad(serde_json::json!({"retries": {"tries": 0, "delay_minutes": 1}})).contains("tries"));
        assert!(bad(serde_json::json!({"bogus": 1})).contains("unknown field"));
        assert!(bad(serde_json::json!({"streams": "two"})).contains("invalid type"));
        assert!(bad(serde_json::json!({"timezone": "Mars/Olympus"})).contains("Mars"));
    }

    #[test]
    fn a_repository_update_tells_a_cleared_schedule_from_an_absent_one() {
        let update = |v: serde_json::Value| serde_json::from_value::<RepositoryUpdate>(v).unwrap();
        let u = update(serde_json::json!({"max_tasks": 3}));
        assert_eq!((u.max_tasks, u.verify_schedule.is_none()), (Some(3), true));
        u.validate().unwrap();
        let u = update(serde_json::json!({"verify_schedule": null}));
        assert!(matches!(u.verify_schedule, Some(None)));
        u.validate().unwrap();
        let u = update(serde_json::json!({"verify_schedule": {"kind": "daily", "at": "03:00"}}));
        assert!(matches!(u.verify_schedule, Some(Some(Schedule::Daily { .. }))));
        u.validate().unwrap();
        assert!(update(serde_json::json!({})).validate().unwrap_err().contains("nothing to change"));
        let after = update(serde_json::json!({"verify_schedule": {"kind": "after", "job": "nightly"}}));
        assert!(after.validate().unwrap_err().contains("not after a job"));
        let bad_time = update(serde_json::json!({"verify_schedule": {"kind": "daily", "at": "25:00"}}));
        assert!(bad_time.validate().unwrap_err().contains("25:00"));
        assert!(update(serde_json::json!({"max_tasks": 0})).validate().unwrap_err().contains("max_tasks"));
    }
}
