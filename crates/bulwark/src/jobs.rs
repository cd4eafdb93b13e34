//! `bulwark job …`: backup jobs through the server, and following a session to its end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use bulwark_proto::domain::{SessionStatus, TaskStatus};
use bulwark_server::store::TaskRow;

use crate::admin::{print, Admin, Api, Opts};
use crate::ui;

#[derive(Subcommand)]
pub enum JobCmd {
    /// Jobs: whom they back up to where, when (schedule, window, next run), their last result
    /// and what they keep.
    List,
    /// A job's settings, its next run and its last session.
    Show {
        /// The job's name.
        name: String,
    },
    /// Create a backup job; prints the job, and warnings about sources the computers' last
    /// known inventory does not hold.
    Create(Box<JobCreateArgs>),
    /// Change the settings given, keeping every other (a job's name cannot change); prints
    /// the resulting job.
    Update(Box<JobUpdateArgs>),
    /// Delete a job (refused while it runs); its restore points stay.
    Delete {
        /// The job's name.
        name: String,
    },
    /// Start a session now; with --wait, follow it and exit non-zero if it failed.
    Start {
        /// The job's name.
        name: String,
        /// Follow the session to its end, printing each task's changes to stderr; exit 1 if
        /// the session failed. Ctrl-C stops waiting, not the session.
        #[arg(long)]
        wait: bool,
    },
    /// Stop the job's running session: waiting tasks are cancelled, running ones stopped.
    Stop {
        /// The job's name.
        name: String,
    },
    /// Turn a job on again: it runs from its next scheduled time (missed runs are not made up).
    Enable {
        /// The job's name.
        name: String,
    },
    /// Turn a job off: no scheduled or chained run, and `job start` is refused; a running
    /// session goes on, and the points stay.
    Disable {
        /// The job's name.
        name: String,
    },
    /// Each computer of each scheduled job: its last good backup and until when it meets the
    /// job's schedule (recovery point objective); those that missed it first.
    Rpo,
    /// Run the job again for the computers its last session did not back up (failed, stopped
    /// or cancelled); refused when it left none.
    Retry {
        /// The job's name.
        name: String,
        /// Follow the session to its end, as `job start --wait` does.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Args)]
pub struct JobCreateArgs {
    /// The job's name (letters, digits, '.', '_', '-'); it cannot change later.
    name: String,
    /// The repository (as `bulwark repository list` names it) the points go to.
    #[arg(long)]
    repository: String,
    #[command(flatten)]
    settings: JobSettings,
}

#[derive(Args)]
pub struct JobUpdateArgs {
    /// The job's name.
    name: String,
    /// The repository (as `bulwark repository list` names it) the points go to.
    #[arg(long)]
    repository: Option<String>,
    #[command(flatten)]
    settings: JobSettings,
    #[command(flatten)]
    clear: JobClearArgs,
}

/// A job's settings on the command line. For `job create` an option not given takes the
/// server's default; for `job update` it keeps the job's current setting.
#[derive(Args)]
pub struct JobSettings {
    /// A computer to back up. Repeatable; with `job update` the list replaces the job's.
    #[arg(long = "computer", value_name = "NAME")]
    computers: Vec<String>,
    /// A protection group whose computers to back up. Repeatable; with `job update` the list
    /// replaces the job's.
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// A block device or image (volumes) or a directory (files), an absolute path on the
    /// computers. Repeatable; none for --mode computer.
    #[arg(long = "source", value_name = "PATH")]
    sources: Vec<String>,
    /// What to back up: computer (every whole disk the agent reports), volumes (block devices
    /// or images) or files (directories). Default: volumes.
    #[arg(long, value_parser = ["computer", "volumes", "files"])]
    mode: Option<String>,
    /// Volumes: a file or folder whose data is not stored; files: a glob of entries not backed
    /// up (see `bulwark backup --help`). Repeatable.
    #[arg(long, value_name = "PATH|GLOB")]
    exclude: Vec<String>,
    /// Volumes: unit of change detection and deduplication: 256K, 512K, 1M (default) or 4M.
    #[arg(long, value_name = "SIZE")]
    block_size: Option<String>,
    /// Compression: none, dedupe-friendly, optimal (default), high or extreme.
    #[arg(long, value_name = "LEVEL")]
    compression: Option<String>,
    /// Snapshot before reading: auto (default), reflink, btrfs, lvm or none (read live:
    /// crash-inconsistent).
    #[arg(long, value_name = "MODE")]
    snapshot: Option<String>,
    /// Volumes: changed block tracking: auto (default), extents or none.
    #[arg(long, value_name = "MODE")]
    cbt: Option<String>,
    /// Run daily at HH:MM (with --weekdays, only on those days).
    #[arg(long, value_name = "HH:MM", conflicts_with_all = ["every_minutes", "monthly", "after"])]
    daily: Option<String>,
    /// The days a --daily job runs: mon,tue,… (every day without it).
    #[arg(long, value_name = "DAYS", value_delimiter = ',', requires = "daily")]
    weekdays: Vec<String>,
    /// Run every N minutes, counted from the job's creation.
    #[arg(long, value_name = "N", conflicts_with_all = ["monthly", "after"])]
    every_minutes: Option<u32>,
    /// Run monthly: DAY@HH:MM (31: the month's last day).
    #[arg(long, value_name = "DAY@HH:MM", conflicts_with = "after")]
    monthly: Option<String>,
    /// Run when a session of this other job ends (whatever its result).
    #[arg(long, value_name = "JOB")]
    after: Option<String>,
    /// Backup window HH:MM-HH:MM: the job starts only inside it, and a session still running
    /// at its end is stopped.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    window: Option<String>,
    /// IANA time zone of the schedule and window (Europe/Berlin); default: the server's.
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// Retention: keep the newest N restore points of each source.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Retention: also keep the newest point of each of the last N days.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Retention: also keep the newest point of each of the last N weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Retention: also keep the newest point of each of the last N months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Tries in all for a computer whose task failed (1: no retry; default 3).
    #[arg(long, value_name = "N")]
    tries: Option<u32>,
    /// Minutes between a failed try and the next (default 10).
    #[arg(long, value_name = "MINUTES")]
    retry_delay_minutes: Option<u32>,
    /// Limit each task to this many MB/s (0: unlimited, the default).
    #[arg(long, value_name = "MBPS")]
    throttle_mbps: Option<u64>,
    /// Order among jobs waiting for a repository's slots, -100 to 100 (higher first; default 0).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    priority: Option<i64>,
    /// Parallel streams from each agent to the data mover, 1 to 16 (default 2).
    #[arg(long, value_name = "N")]
    streams: Option<u32>,
    /// The pre-job script: run on the computer before anything else (`/bin/sh -c`); a failure
    /// fails the task.
    #[arg(long, value_name = "COMMAND")]
    pre_command: Option<String>,
    /// The post-job script: run on the computer after the transfer, whatever happened; a
    /// failure makes the task a warning.
    #[arg(long, value_name = "COMMAND")]
    post_command: Option<String>,
    /// A secret (see `bulwark secret set`) the commands receive as BULWARK_SECRET_<NAME>,
    /// so that no credential is written into their text. Repeat for several.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// An application to make consistent right before each snapshot, in one database session
    /// held until right after it: `postgres:host=H,port=P,user=U,password-secret=NAME` (every
    /// key optional; a host starting with / is the socket directory; the password from a
    /// secret of the server's sealed store, or password-file=F on the computer; without
    /// either, .pgpass or peer authentication); or `mysql:socket=S` or `mysql:host=H,port=P`
    /// with user and password-secret or password-file (`mariadb:` too). PostgreSQL: a
    /// checkpoint (file-level jobs: pg_backup_start … pg_backup_stop around the copy, the
    /// backup label and WAL added); MySQL: a read lock held through the snapshot (MariaDB:
    /// BACKUP STAGE; lock=flush-tables or lock=backup-stage to choose), the binary log
    /// position recorded. Repeatable; replaces the job's list.
    #[arg(long = "app", value_name = "SPEC")]
    apps: Vec<String>,
    /// When an application cannot be prepared: require (the snapshot try fails, and the task
    /// once every try did) or ignore (the task ends with a warning; the point is not
    /// application-consistent). Default: require.
    #[arg(long, value_name = "POLICY", value_parser = ["require", "ignore"])]
    app_policy: Option<String>,
    /// Run on the computer right before each snapshot try (after the applications are
    /// prepared); a failure fails the try.
    #[arg(long, value_name = "COMMAND")]
    pre_freeze_script: Option<String>,
    /// Run on the computer right after each snapshot try (before the applications are
    /// released), whatever failed since the pre-freeze script started; a failure fails the try.
    #[arg(long, value_name = "COMMAND")]
    post_thaw_script: Option<String>,
    /// Longest freeze, from the applications' preparation to their release, in seconds
    /// (default 60): a longer one fails the try, and scripts still running are killed.
    #[arg(long, value_name = "SECONDS")]
    freeze_limit: Option<u32>,
    /// Copy-on-write space of classic LVM snapshots: a share of the volume (20%, the
    /// default) or a size (512M, 2G). A snapshot whose space fills during the read is
    /// invalidated by the kernel; the try fails and the next one gets twice the space.
    #[arg(long, value_name = "SIZE")]
    lvm_snapshot_size: Option<String>,
    /// Longest run of the pre and post commands, in seconds (default 600): they are killed,
    /// with what they started, past it.
    #[arg(long, value_name = "SECONDS")]
    script_timeout: Option<u32>,
}

/// Settings `job update` can take away.
#[derive(Args)]
pub struct JobClearArgs {
    /// Name no computer directly (the job then backs up its groups' computers).
    #[arg(long, conflicts_with = "computers")]
    no_computers: bool,
    /// Name no protection group (the job then backs up the computers it names).
    #[arg(long, conflicts_with = "groups")]
    no_groups: bool,
    /// No sources (for --mode computer, which backs up every whole disk).
    #[arg(long, conflicts_with = "sources")]
    no_sources: bool,
    /// Run the job only when started by hand (`bulwark job start`).
    #[arg(long, conflicts_with_all = ["daily", "every_minutes", "monthly", "after"])]
    no_schedule: bool,
    /// Let the job run at any time of day.
    #[arg(long, conflicts_with = "window")]
    no_window: bool,
    /// Keep every restore point (no retention).
    #[arg(long, conflicts_with_all = ["keep_last", "keep_daily", "keep_weekly", "keep_monthly"])]
    no_retention: bool,
    /// Exclude nothing.
    #[arg(long, conflicts_with = "exclude")]
    no_exclude: bool,
    /// No throttle.
    #[arg(long, conflicts_with = "throttle_mbps")]
    no_throttle: bool,
    /// No pre command.
    #[arg(long, conflicts_with = "pre_command")]
    no_pre_command: bool,
    /// No post command.
    #[arg(long, conflicts_with = "post_command")]
    no_post_command: bool,
    /// Hand the commands no secrets.
    #[arg(long, conflicts_with = "secrets")]
    no_secrets: bool,
    /// Process no application.
    #[arg(long, conflicts_with = "apps")]
    no_apps: bool,
    /// No pre-freeze script.
    #[arg(long, conflicts_with = "pre_freeze_script")]
    no_pre_freeze_script: bool,
    /// No post-thaw script.
    #[arg(long, conflicts_with = "post_thaw_script")]
    no_post_thaw_script: bool,
    /// Classic LVM snapshots get the default copy-on-write space (20% of the volume).
    #[arg(long, conflicts_with = "lvm_snapshot_size")]
    no_lvm_snapshot_size: bool,
}

/// `DAY@HH:MM` as the API's monthly schedule; `option` names the option in errors.
pub fn monthly(option: &str, spec: &str) -> Result<Value> {
    let (day, at) = spec.split_once('@').with_context(|| format!("{option} takes DAY@HH:MM (15@01:00)"))?;
    let day: u8 = day.parse().with_context(|| format!("{option} {spec}: the day is a number from 1 to 31"))?;
    Ok(json!({"kind": "monthly", "day": day, "at": at}))
}

impl JobSettings {
    /// The settings given, as the API's job fields: only those, so that an update changes
    /// nothing else.
    fn to_json(&self) -> Result<Map<String, Value>> {
        // Checked here so that a typo is named before anything is sent, without repeating the
        // spec (a mistyped one may hold a password).
        for (i, a) in self.apps.iter().enumerate() {
            if let Err(e) = a.parse::<bulwark_proto::apps::AppSpec>() {
                bail!("--app number {}: {e}", i + 1);
            }
        }
        let mut v = Map::new();
        let mut put = |k: &str, val: Value| {
            v.insert(k.into(), val);
        };
        for (k, list) in [
            ("computers", &self.computers),
            ("groups", &self.groups),
            ("sources", &self.sources),
            ("exclude", &self.exclude),
            ("secrets", &self.secrets),
            ("apps", &self.apps),
        ] {
            if !list.is_empty() {
                put(k, json!(list));
            }
        }
        for (k, text) in [
            ("mode", &self.mode),
            ("block_size", &self.block_size),
            ("compression", &self.compression),
            ("snapshot", &self.snapshot),
            ("cbt", &self.cbt),
            ("timezone", &self.timezone),
            ("pre_command", &self.pre_command),
            ("post_command", &self.post_command),
            ("app_policy", &self.app_policy),
            ("pre_freeze_script", &self.pre_freeze_script),
            ("post_thaw_script", &self.post_thaw_script),
        ] {
            if let Some(t) = text {
                put(k, json!(t));
            }
        }
        if let Some(t) = self.throttle_mbps {
            put("throttle_mbps", json!(t));
        }
        if let Some(p) = self.priority {
            put("priority", json!(p));
        }
        if let Some(s) = self.streams {
            put("streams", json!(s));
        }
        if let Some(t) = self.freeze_limit {
            put("freeze_limit_s", json!(t));
        }
        if let Some(s) = &self.lvm_snapshot_size {
            put("lvm_snapshot_size", json!(s));
        }
        if let Some(t) = self.script_timeout {
            put("script_timeout_s", json!(t));
        }
        let schedule = if let Some(at) = &self.daily {
            Some(json!({"kind": "daily", "at": at, "weekdays": self.weekdays}))
        } else if let Some(m) = self.every_minutes {
            Some(json!({"kind": "periodic", "every_minutes": m}))
        } else if let Some(spec) = &self.monthly {
            Some(monthly("--monthly", spec)?)
        } else {
            self.after.as_ref().map(|j| json!({"kind": "after", "job": j}))
        };
        if let Some(s) = schedule {
            put("schedule", s);
        }
        if let Some(w) = &self.window {
            let (start, end) = w.split_once('-').context("--window takes HH:MM-HH:MM (22:00-06:00)")?;
            put("window", json!({"start": start, "end": end}));
        }
        let mut retention = Map::new();
        for (k, n) in [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ] {
            if let Some(n) = n {
                retention.insert(k.into(), json!(n));
            }
        }
        if !retention.is_empty() {
            put("retention", Value::Object(retention));
        }
        let mut retries = Map::new();
        if let Some(t) = self.tries {
            retries.insert("tries".into(), json!(t));
        }
        if let Some(d) = self.retry_delay_minutes {
            retries.insert("delay_minutes".into(), json!(d));
        }
        if !retries.is_empty() {
            put("retries", Value::Object(retries));
        }
        Ok(v)
    }
}

impl JobCreateArgs {
    fn to_json(&self) -> Result<Value> {
        let mut v = self.settings.to_json()?;
        v.insert("name".into(), json!(self.name));
        v.insert("repository".into(), json!(self.repository));
        // A new job's retries are a whole: what is not given takes the defaults the help names.
        if let Some(r) = v.get_mut("retries") {
            let (tries, delay) = (r.get("tries").cloned(), r.get("delay_minutes").cloned());
            *r = json!({"tries": tries.unwrap_or(json!(3)), "delay_minutes": delay.unwrap_or(json!(10))});
        }
        Ok(Value::Object(v))
    }
}

impl JobUpdateArgs {
    /// The PATCH body: the settings given, and null for each setting to clear.
    fn to_json(&self) -> Result<Value> {
        let mut v = self.settings.to_json()?;
        if let Some(r) = &self.repository {
            v.insert("repository".into(), json!(r));
        }
        let c = &self.clear;
        for (k, clear) in [
            ("computers", c.no_computers),
            ("groups", c.no_groups),
            ("sources", c.no_sources),
            ("schedule", c.no_schedule),
            ("window", c.no_window),
            ("retention", c.no_retention),
            ("exclude", c.no_exclude),
            ("throttle_mbps", c.no_throttle),
            ("pre_command", c.no_pre_command),
            ("post_command", c.no_post_command),
            ("secrets", c.no_secrets),
            ("apps", c.no_apps),
            ("pre_freeze_script", c.no_pre_freeze_script),
            ("post_thaw_script", c.no_post_thaw_script),
            ("lvm_snapshot_size", c.no_lvm_snapshot_size),
        ] {
            if clear {
                v.insert(k.into(), Value::Null);
            }
        }
        if v.is_empty() {
            bail!("nothing to change: give the settings to change (see `bulwark job update --help`)");
        }
        Ok(Value::Object(v))
    }
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Weekdays in week order, runs of three or more as ranges: `mon-fri`, `mon,wed,fri`.
fn weekdays_text(days: &[Value]) -> String {
    let on: Vec<bool> =
        WEEKDAYS.iter().map(|w| days.iter().filter_map(Value::as_str).any(|d| d.eq_ignore_ascii_case(w))).collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < 7 {
        if !on[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < 7 && on[i + 1] {
            i += 1;
        }
        match i - start {
            0 => parts.push(WEEKDAYS[start].to_string()),
            1 => parts.extend([WEEKDAYS[start].to_string(), WEEKDAYS[i].to_string()]),
            _ => parts.push(format!("{}-{}", WEEKDAYS[start], WEEKDAYS[i])),
        }
        i += 1;
    }
    parts.join(",")
}

/// A schedule as the API gives it, in words: `daily 22:00 mon-fri`, `monthly day 15 01:00`,
/// `every 60 min`, `after nightly`; `-` for none.
pub fn schedule_text(v: &Value) -> String {
    let at = v["at"].as_str().unwrap_or("?");
    match v["kind"].as_str() {
        Some("daily") => match v["weekdays"].as_array().filter(|w| !w.is_empty()) {
            Some(days) if days.len() < 7 => format!("daily {at} {}", weekdays_text(days)),
            _ => format!("daily {at}"),
        },
        Some("monthly") if v["day"] == 31 => format!("monthly last day {at}"),
        Some("monthly") => format!("monthly day {} {at}", v["day"]),
        Some("periodic") => format!("every {} min", v["every_minutes"]),
        Some("after") => format!("after {}", v["job"].as_str().unwrap_or("?")),
        _ => "-".into(),
    }
}

/// What a job keeps: `last 14, daily 7`; `all` without retention.
fn retention_text(r: &Value) -> String {
    let parts: Vec<String> = ["last", "daily", "weekly", "monthly"]
        .iter()
        .filter_map(|k| r[format!("keep_{k}")].as_u64().map(|n| format!("{k} {n}")))
        .collect();
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(", ")
    }
}

/// How a job retries a failed computer: `3 tries, 10 min apart`, `1 try (no retry)`.
fn retries_text(r: &Value) -> String {
    match r["tries"].as_u64() {
        Some(1) => "1 try (no retry)".into(),
        Some(n) => format!("{n} tries, {} min apart", r["delay_minutes"]),
        None => "-".into(),
    }
}

/// A session's outcome in a few words: `success 2026-11-26 22:00:05`.
fn last_result(s: &Value) -> String {
    if s.is_null() {
        return "never ran".into();
    }
    let status = s["status"].as_str().unwrap_or("?");
    let when = if status == "running" { &s["started"] } else { &s["ended"] };
    let at = when.as_str().and_then(ui::local_time_text).unwrap_or_else(|| "-".into());
    if status == "running" {
        format!("running since {at}")
    } else {
        format!("{status} {at}")
    }
}

/// The job rows with their schedule, window, last result, next run and retention in words.
fn job_rows(v: &Value) -> Value {
    let row = |j: &Value| {
        let mut r = j.clone();
        let groups =
            j["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).map(|g| format!("group {g}"));
        let computers = j["computers"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from);
        r["whom"] = json!(computers.chain(groups).collect::<Vec<_>>().join(","));
        r["schedule"] = match j["enabled"] {
            Value::Bool(false) => json!(format!("disabled ({})", schedule_text(&j["schedule"]))),
            _ => json!(schedule_text(&j["schedule"])),
        };
        r["window"] = match (&j["window"]["start"], &j["window"]["end"]) {
            (Value::String(a), Value::String(b)) => json!(format!("{a}-{b}")),
            _ => json!("any time"),
        };
        r["last_result"] = json!(last_result(&j["last_session"]));
        r["retention"] = json!(retention_text(&j["retention"]));
        r
    };
    match v {
        Value::Array(a) => Value::Array(a.iter().map(row).collect()),
        other => row(other),
    }
}

/// One job, setting by setting.
fn job_detail(j: &Value) {
    let r = job_rows(j);
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => ui::local_time_text(s).unwrap_or_else(|| s.clone()),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => {
            a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), String::from)).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    };
    let or = |v: &Value, default: &str| if v.is_null() { default.to_string() } else { text(v) };
    let zone = j["timezone"].as_str().map(|z| format!(" ({z})")).unwrap_or_else(|| " (server's time zone)".into());
    let lines = [
        ("job", text(&j["name"])),
        ("enabled", if j["enabled"] == false { "no: `bulwark job enable` turns it on".into() } else { "yes".into() }),
        ("mode", text(&j["mode"])),
        ("computers", text(&j["computers"])),
        ("groups", text(&j["groups"])),
        ("repository", text(&j["repository"])),
        ("sources", text(&j["sources"])),
        ("exclude", text(&j["exclude"])),
        ("schedule", format!("{}{}", text(&r["schedule"]), if j["schedule"].is_null() { String::new() } else { zone })),
        ("window", text(&r["window"])),
        ("next run", or(&j["next_run"], "-")),
        ("retention", text(&r["retention"])),
        ("retries", retries_text(&j["retries"])),
        ("block size", or(&j["block_size"], "1M")),
        ("compression", or(&j["compression"], "optimal")),
        ("snapshot", or(&j["snapshot"], "auto")),
        ("cbt", or(&j["cbt"], "auto")),
        ("streams", text(&j["streams"])),
        ("priority", text(&j["priority"])),
        ("throttle", j["throttle_mbps"].as_u64().filter(|t| *t > 0).map_or("none".into(), |t| format!("{t} MB/s"))),
        ("pre command", text(&j["pre_command"])),
        ("post command", text(&j["post_command"])),
        ("secrets", text(&j["secrets"])),
        ("applications", text(&j["apps"])),
        ("app policy", or(&j["app_policy"], "require")),
        ("pre-freeze", text(&j["pre_freeze_script"])),
        ("post-thaw", text(&j["post_thaw_script"])),
        ("freeze limit", j["freeze_limit_s"].as_u64().map_or("60 s".into(), |t| format!("{t} s"))),
        ("LVM snapshot size", or(&j["lvm_snapshot_size"], "20%")),
        ("script limit", j["script_timeout_s"].as_u64().map_or("600 s".into(), |t| format!("{t} s"))),
        ("created", or(&j["created"], "-")),
        ("last session", text(&r["last_result"])),
    ];
    for (k, v) in lines {
        println!("{k:<13} {v}");
    }
}

/// Warnings the server found with a job's settings (sources a computer does not hold, say).
fn print_warnings(v: &Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

pub fn job(a: Admin<JobCmd>) -> Result<ExitCode> {
    let (api, o) = (crate::admin::connect(&a.opts.conn)?, &a.opts);
    let v = match a.cmd {
        JobCmd::List => {
            let v = api.call("GET", "/jobs", None)?;
            let cols =
                ["name", "mode", "whom", "repository", "schedule", "window", "last_result", "next_run", "retention"];
            if o.json {
                print(o, &v, &[]);
            } else {
                print(o, &job_rows(&v), &cols);
            }
            return Ok(ExitCode::SUCCESS);
        }
        JobCmd::Show { name } => api.call("GET", &format!("/jobs/{name}"), None)?,
        JobCmd::Rpo => {
            let mut v = api.call("GET", "/rpo", None)?;
            if !o.json {
                for r in v.as_array_mut().into_iter().flatten() {
                    r["status"] = json!(if r["missed"] == true { "MISSED" } else { "ok" });
                    for k in ["last_good", "protected_until"] {
                        r[k] = json!(r[k].as_str().and_then(ui::local_time_text).unwrap_or_else(|| "never".into()));
                    }
                }
            }
            print(o, &v, &["job", "computer", "status", "last_good", "protected_until"]);
            return Ok(ExitCode::SUCCESS);
        }
        JobCmd::Create(c) => api.call("POST", "/jobs", Some(c.to_json()?))?,
        JobCmd::Update(u) => api.call("PATCH", &format!("/jobs/{}", u.name), Some(u.to_json()?))?,
        JobCmd::Delete { name } => {
            print(o, &api.call("DELETE", &format!("/jobs/{name}"), None)?, &["deleted"]);
            return Ok(ExitCode::SUCCESS);
        }
        JobCmd::Start { name, wait } => return start(&api, o, &name, wait, false),
        JobCmd::Retry { name, wait } => return start(&api, o, &name, wait, true),
        JobCmd::Enable { name } => api.call("POST", &format!("/jobs/{name}/enable"), None)?,
        JobCmd::Disable { name } => api.call("POST", &format!("/jobs/{name}/disable"), None)?,
        JobCmd::Stop { name } => {
            let s = api.call("POST", &format!("/jobs/{name}/stop"), None)?;
            print(o, &s, &["id", "job", "status", "started", "reason"]);
            return Ok(ExitCode::SUCCESS);
        }
    };
    print_warnings(&v);
    if o.json {
        print(o, &v, &[]);
    } else {
        job_detail(&v);
    }
    Ok(ExitCode::SUCCESS)
}

/// `job start|retry`: the session started, or with `wait` followed to its end.
fn start(api: &Api, o: &Opts, name: &str, wait: bool, retry: bool) -> Result<ExitCode> {
    let s = if retry { api.retry_job(name)? } else { api.start_job(name)? };
    let id = s.id.clone();
    if !wait {
        print(o, &serde_json::to_value(&s)?, &["id", "job", "status", "started"]);
        return Ok(ExitCode::SUCCESS);
    }
    match wait_session(api, &id)? {
        Waited::Ended(s) => session_outcome(o, &s),
        Waited::Interrupted => {
            eprintln!("stopped waiting: session {id} of job {name} goes on on the server");
            eprintln!("  follow it:  bulwark session show {id}");
            eprintln!("  stop it:    bulwark job stop {name}");
            Ok(ExitCode::from(130))
        }
    }
}

fn session_outcome(o: &Opts, s: &Value) -> Result<ExitCode> {
    if o.json {
        print(o, s, &[]);
    } else {
        println!(
            "session {} of job {}: {}",
            s["id"].as_str().unwrap_or_default(),
            s["job"].as_str().unwrap_or_default(),
            s["status"].as_str().unwrap_or_default()
        );
        crate::admin::print_tasks(&s["tasks"]);
    }
    if s["status"] == "failed" {
        bail!(
            "session {} failed{}",
            s["id"].as_str().unwrap_or_default(),
            s["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How following a session ended.
pub enum Waited {
    /// The session ended: its final state, with the tasks' logs.
    Ended(Value),
    /// SIGINT or SIGTERM: we stopped following; the session goes on.
    Interrupted,
}

/// Follows a session to its end: a progress bar on a terminal, and each task's changes (what
/// failed, when the retry is due) as lines on stderr, so that a log of an unattended run says
/// why it took as long as it did.
pub fn wait_session(api: &Api, id: &str) -> Result<Waited> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("template")
                .progress_chars("=> "),
        );
        b
    });
    let say = |line: String| match &bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    };
    let mut seen: HashMap<String, TaskStatus> = HashMap::new();
    let mut retry_delay: Option<i64> = None;
    loop {
        let s = api.session(id, false)?;
        let tasks = s.tasks.clone().unwrap_or_default();
        if seen.is_empty() {
            say(format!("following session {id} of job {} (Ctrl-C stops following, not the session)", s.job));
        }
        for t in &tasks {
            let before = seen.insert(t.id.clone(), t.status);
            if before == Some(t.status) {
                continue;
            }
            if before.is_none() && t.attempt > 1 {
                // A retry: said once, with when it is due, whatever state it is first seen in.
                if retry_delay.is_none() {
                    let job = api.call("GET", &format!("/jobs/{}", s.job), None)?;
                    retry_delay = job["retries"]["delay_minutes"].as_i64();
                }
                let due =
                    retry_due(t, &tasks, retry_delay.unwrap_or(0)).unwrap_or_else(|| "once a slot is free".into());
                say(format!("{}  {}: retry of attempt {}, due at {due}", now(), who(t), t.attempt - 1));
                if t.status == TaskStatus::Waiting {
                    continue;
                }
            }
            say(task_change(t));
        }
        if let Some(b) = &bar {
            let progress = || tasks.iter().filter_map(|t| t.progress.as_ref());
            let total: u64 = progress().map(|p| p.total_bytes).sum();
            let read: u64 = progress().map(|p| p.read_bytes).sum();
            let ended = tasks.iter().filter(|t| !t.status.is_open()).count();
            b.set_length(total.max(read));
            b.set_position(read);
            b.set_message(format!("{}: {ended}/{} tasks", s.job, tasks.len()));
        }
        if s.status != SessionStatus::Running {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return Ok(Waited::Ended(api.call("GET", &format!("/sessions/{id}"), None)?));
        }
        // Looked at often, so that Ctrl-C answers at once.
        let next = Instant::now() + Duration::from_millis(500);
        while Instant::now() < next {
            if crate::CANCEL.load(Ordering::Relaxed) {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return Ok(Waited::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// When a retry's task is due: the server's `not_before` when it says, else the failed
/// attempt's end plus the job's delay (which is how the server sets it).
fn retry_due(t: &TaskRow, tasks: &[TaskRow], delay_minutes: i64) -> Option<String> {
    if let Some(at) = &t.not_before {
        return ui::local_time_text(at);
    }
    let failed = tasks.iter().find(|p| p.computer == t.computer && p.attempt == t.attempt - 1)?;
    let ended = chrono::DateTime::parse_from_rfc3339(failed.ended.as_deref()?).ok()?;
    Some(ui::local_time((ended + chrono::Duration::minutes(delay_minutes)).with_timezone(&chrono::Utc)))
}

/// Now, as the lines of a followed session show it.
fn now() -> String {
    ui::local_time(chrono::Utc::now())
}

/// Which task a line is about: `pc-1 attempt 2`.
fn who(t: &TaskRow) -> String {
    format!("{} attempt {}", t.computer, t.attempt)
}

/// One line for a task's new state.
fn task_change(t: &TaskRow) -> String {
    let (now, who) = (now(), who(t));
    let error = t.error.as_deref().filter(|e| !e.is_empty()).map(|e| format!(": {e}")).unwrap_or_default();
    match t.status {
        TaskStatus::Waiting => format!("{now}  {who}: waiting for a slot on repository {}", t.repository),
        TaskStatus::Success => format!("{now}  {who}: success, {} sent", ui::human(t.sent_bytes.max(0) as u64)),
        other => format!("{now}  {who}: {other}{error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_read_as_words() {
        let weekdays = json!({"kind": "daily", "at": "22:00", "weekdays": ["mon", "tue", "wed", "thu", "fri"]});
        assert_eq!(schedule_text(&weekdays), "daily 22:00 mon-fri");
        let some = json!({"kind": "daily", "at": "06:30", "weekdays": ["fri", "mon", "wed", "sat"]});
        assert_eq!(schedule_text(&some), "daily 06:30 mon,wed,fri,sat");
        let all = json!({"kind": "daily", "at": "01:00", "weekdays": WEEKDAYS});
        assert_eq!(schedule_text(&all), "daily 01:00");
        assert_eq!(schedule_text(&json!({"kind": "after", "job": "nightly"})), "after nightly");
        assert_eq!(schedule_text(&json!({"kind": "periodic", "every_minutes": 60})), "every 60 min");
        assert_eq!(schedule_text(&json!({"kind": "monthly", "day": 31, "at": "01:00"})), "monthly last day 01:00");
        assert_eq!(schedule_text(&Value::Null), "-");
    }

    #[test]
    fn retention_reads_as_words() {
        assert_eq!(retention_text(&json!({"keep_last": 14, "keep_daily": 7})), "last 14, daily 7");
        assert_eq!(retention_text(&json!({"keep_last": null})), "all");
    }
}
