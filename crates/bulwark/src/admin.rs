//! The admin CLI: `bulwark repository|computer|group|job|session|point|token …`, speaking the
//! server's REST API (BULWARK_SERVER, BULWARK_TOKEN, BULWARK_CA_CERT).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the server is and how to prove who we are.
#[derive(Args, Clone)]
pub struct Conn {
    /// The server's URL.
    #[arg(long, env = "BULWARK_SERVER", default_value = "https://localhost:9440", global = true)]
    pub server: String,
    /// An API token (the first admin's is in the server's data directory, initial-admin-token).
    #[arg(long, env = "BULWARK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The server's CA certificate (its data directory's ca.pem).
    #[arg(long, env = "BULWARK_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Api {
    fn new(c: &Conn) -> Result<Api> {
        let token = c.token.clone().context("no API token: set BULWARK_TOKEN (or --token)")?;
        Api::connect(&c.server, &token, c.ca_cert.as_deref())
    }

    pub fn connect(server: &str, token: &str, ca_cert: Option<&std::path::Path>) -> Result<Api> {
        let token = token.to_string();
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
            let cert = ureq::tls::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            // Restores answer when done, however long that takes; only connecting is bounded.
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        Ok(Api { agent, base: format!("{}/api/v1", server.trim_end_matches('/')), token })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            ("POST", b) => self.agent.post(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
            ("PUT", b) => self.agent.put(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
            ("PATCH", b) => self.agent.patch(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
            _ => unreachable!("methods are ours"),
        };
        let mut resp = resp.with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v["error"].as_str().map_or_else(|| v.to_string(), String::from);
            bail!("server: {msg} ({status})");
        }
        Ok(v)
    }
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a one-time join token for an agent or transport node, or an API token for yourself.
    ///
    /// A join token admits one node: the role and the name it was made for (--name), or, with
    /// --any-name, whatever name the node gives, as long as no node ever had it and no job,
    /// group or restore point refers to it (whoever takes a name inherits them). A removed
    /// node's name joins again only with a token made for it with --replace, or after `bulwark
    /// computer readmit NAME` (`transport-node` for transport nodes). The token is spent only by
    /// a successful join. Prints the token once: only its hash is kept.
    ///
    /// `--role api` creates an API token for the caller, for scripts (--name labels it).
    Create {
        /// agent or transport (a join token), or api (an API token for yourself).
        #[arg(long, value_parser = ["agent", "transport", "api"])]
        role: String,
        /// The node name the join token admits (this or --any-name is required); the label of
        /// an API token (required).
        #[arg(long, required_unless_present = "any_name")]
        name: Option<String>,
        /// The join token admits any name no node has had (an installation script for many
        /// computers, say).
        #[arg(long, conflicts_with = "name")]
        any_name: bool,
        /// The join token may take back the name of a removed node (its new certificate
        /// replaces the revoked one; it inherits the name's jobs and restore points).
        #[arg(long, requires = "name")]
        replace: bool,
        /// How long the token stays valid: 30m, 12h, 30d, or never. Default: 7d for a join
        /// token, 90d for an API token.
        #[arg(long, value_name = "LIFETIME")]
        expires: Option<String>,
    },
    /// API tokens (an admin sees everyone's, and the join tokens not used yet): their ids,
    /// owners, labels and expiries, never the tokens themselves.
    List,
    /// Revoke a token by the id `token list` shows: at once, every call with it is refused.
    /// Users may revoke their own API tokens, admins any token.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Users of the API and their roles (admins only).
    List,
    /// Create a user: admin (everything) or viewer (reads; never sees pre and post commands).
    Create {
        name: String,
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
        /// A file whose first line is the password (at least 10 characters); - for stdin.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
    },
    /// Change a password: your own (NAME omitted or yours; --current-password-file needed), or,
    /// as an admin, anyone's. The user's other login tokens are revoked.
    Passwd {
        /// The user; yourself when omitted.
        name: Option<String>,
        /// A file whose first line is the new password (at least 10 characters); - for stdin.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// A file whose first line is your current password (changing your own).
        #[arg(long, value_name = "FILE")]
        current_password_file: Option<PathBuf>,
    },
    /// Delete a user and revoke their tokens. The last admin cannot be deleted.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum RepositoryCmd {
    List,
    Show {
        name: String,
    },
    /// Create a repository on a transport node (or adopt the one at that path).
    Create {
        name: String,
        /// The transport node whose data movers write it.
        #[arg(long)]
        transport: String,
        /// Its path on that node (under one of the node's --root directories).
        #[arg(long)]
        path: String,
        /// Tasks it takes at once.
        #[arg(long, default_value_t = 4)]
        max_tasks: i64,
        /// Encrypt it (a new repository) or open it (an existing one) with the password in this file.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Whom its agents are trusted with. `shared`: one key for all computers, so a block two
        /// computers hold is stored once, and every agent writing the repository holds the key
        /// that reads all of it and can ask whether any content is stored (trust them with each
        /// other's data). `computer`: a key per computer, dedup within one computer's points
        /// only, and an agent can neither read another computer's backups nor learn what they
        /// hold. Needs --password-file; chosen at creation for good.
        #[arg(long, default_value = "shared", value_parser = ["shared", "computer"])]
        isolation: String,
        #[command(flatten)]
        verify: VerifyScheduleArgs,
    },
    /// Change a repository's task maximum or the schedule of its health check.
    ///
    /// A scheduled health check does what `bulwark repository verify` does, on the server's
    /// own: the catalog records each point's health (`bulwark point list`), the repository the
    /// check's outcome (`bulwark repository show`, and the server's log names damaged points).
    /// Times are the server's local time. A check still running when the next one comes due
    /// makes that one skip its turn.
    Update {
        name: String,
        /// Tasks it takes at once.
        #[arg(long)]
        max_tasks: Option<i64>,
        #[command(flatten)]
        verify: VerifyScheduleArgs,
        /// Stop checking the repository's health on a schedule.
        #[arg(long, conflicts_with_all = ["verify_daily", "verify_monthly", "verify_every_minutes"])]
        no_verify_schedule: bool,
    },
    /// Forget a repository (its files stay on the node).
    Delete {
        name: String,
    },
    /// Check a repository's health and record each restore point's in the catalog.
    ///
    /// The repository's transport node re-reads and re-hashes every chunk the repository's
    /// restore points reference. The server's catalog then holds each point as `ok` or
    /// `damaged`, with what is wrong and when it was checked (`bulwark point list` shows it).
    ///
    /// A damaged point is named with what a restore would lose: block ranges of a volume, files
    /// of a file-level point, or a damaged manifest or index. The next run of the job that backs
    /// the point's source up stores the damaged blocks again, as far as the source still holds
    /// them; the next check then finds the point ok again. Points the repository holds that the
    /// catalog does not know, and catalog points whose manifest is gone from the repository, are
    /// listed too; the latter cannot be restored and are marked damaged.
    ///
    /// The command waits for the check, which reads every chunk once: it takes about as long
    /// as reading the repository's stored data from its disks. Backups may run meanwhile; points
    /// they commit are checked next time. One check of a repository runs at a time.
    ///
    /// Exit status: 0 healthy; 3 damage found; 1 the check could not run.
    Verify {
        /// The repository, as `bulwark repository list` names it.
        name: String,
    },
}

/// When the server checks a repository's health on its own (see `repository update --help`).
#[derive(Args)]
pub struct VerifyScheduleArgs {
    /// Check the repository's health daily at HH:MM, server time (with --verify-weekdays, only
    /// on those days).
    #[arg(long, value_name = "HH:MM", conflicts_with_all = ["verify_monthly", "verify_every_minutes"])]
    verify_daily: Option<String>,
    /// Days for --verify-daily: mon,tue,….
    #[arg(long, value_delimiter = ',', requires = "verify_daily")]
    verify_weekdays: Vec<String>,
    /// Check the repository's health monthly: DAY@HH:MM (31: the month's last day).
    #[arg(long, value_name = "DAY@HH:MM", conflicts_with = "verify_every_minutes")]
    verify_monthly: Option<String>,
    /// Check the repository's health every N minutes, counted from its creation.
    #[arg(long, value_name = "N")]
    verify_every_minutes: Option<u32>,
}

impl VerifyScheduleArgs {
    /// The schedule as the API takes it (None: none given).
    fn to_json(&self) -> Result<Option<Value>> {
        Ok(if let Some(at) = &self.verify_daily {
            Some(json!({"kind": "daily", "at": at, "weekdays": self.verify_weekdays}))
        } else if let Some(spec) = &self.verify_monthly {
            let (day, at) = spec.split_once('@').context("--verify-monthly takes DAY@HH:MM")?;
            Some(json!({"kind": "monthly", "day": day.parse::<u8>().context("--verify-monthly: bad day")?, "at": at}))
        } else {
            self.verify_every_minutes.map(|m| json!({"kind": "periodic", "every_minutes": m}))
        })
    }
}

/// A schedule as the API gives it, in words.
fn schedule_text(v: &Value) -> String {
    match v["kind"].as_str() {
        Some("daily") => match v["weekdays"].as_array().filter(|w| !w.is_empty()) {
            Some(days) => format!(
                "daily {} on {}",
                v["at"].as_str().unwrap_or("?"),
                days.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
            ),
            None => format!("daily {}", v["at"].as_str().unwrap_or("?")),
        },
        Some("monthly") => format!("monthly {}@{}", v["day"], v["at"].as_str().unwrap_or("?")),
        Some("periodic") => format!("every {} min", v["every_minutes"]),
        _ => "-".into(),
    }
}

/// The repository rows with their health check in words, for the table.
fn repository_rows(v: &Value) -> Value {
    let row = |r: &Value| {
        let mut r = r.clone();
        r["verify"] = json!(schedule_text(&r["verify_schedule"]));
        let last = r["last_verify"].clone();
        r["health"] = match (last["ok"].as_bool(), last["error"].is_string()) {
            (None, _) => Value::Null,
            (Some(true), _) => json!("healthy"),
            (Some(false), true) => json!("check failed"),
            (Some(false), false) => json!(format!("{} damaged", last["damaged"])),
        };
        r["verified"] = last["at"].clone();
        r
    };
    match v {
        Value::Array(a) => Value::Array(a.iter().map(row).collect()),
        other => row(other),
    }
}

#[derive(Subcommand)]
pub enum ComputerCmd {
    List,
    /// A computer and its inventory (asked afresh when it answers).
    Show {
        name: String,
    },
    /// Remove a computer: its certificate is revoked; its restore points stay.
    Delete {
        name: String,
    },
    /// Let a removed computer's name join again, with a token made for it (`bulwark token
    /// create --role agent --name NAME`). It inherits the name's jobs and restore points.
    Readmit {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TransportNodeCmd {
    List,
    /// Remove a transport node: its certificate is revoked everywhere, so it can no longer
    /// take tasks or serve repositories; repositories on it stay in the configuration.
    Delete {
        name: String,
    },
    /// Let a removed transport node's name join again, with a token made for it (`bulwark
    /// token create --role transport --name NAME`).
    Readmit {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        #[arg(long = "computer", required = true)]
        computers: Vec<String>,
    },
    /// Replace a group's computers.
    Update {
        name: String,
        #[arg(long = "computer", required = true)]
        computers: Vec<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Args)]
pub struct JobArgs {
    name: String,
    /// A computer to back up. Repeatable.
    #[arg(long = "computer")]
    computers: Vec<String>,
    /// A protection group whose computers to back up. Repeatable.
    #[arg(long = "group")]
    groups: Vec<String>,
    #[arg(long)]
    repository: String,
    /// A block device or image (volumes) or a directory (files). Repeatable; none for
    /// --mode computer.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// computer (every whole disk the agent reports), volumes or files.
    #[arg(long, default_value = "volumes", value_parser = ["computer", "volumes", "files"])]
    mode: String,
    #[arg(long)]
    exclude: Vec<String>,
    #[arg(long)]
    block_size: Option<String>,
    #[arg(long)]
    compression: Option<String>,
    #[arg(long)]
    snapshot: Option<String>,
    #[arg(long)]
    cbt: Option<String>,
    /// Run daily at HH:MM (with --weekdays, only on those days).
    #[arg(long, conflicts_with_all = ["every_minutes", "monthly", "after"])]
    daily: Option<String>,
    /// Days for --daily: mon,tue,….
    #[arg(long, value_delimiter = ',')]
    weekdays: Vec<String>,
    /// Run every N minutes.
    #[arg(long)]
    every_minutes: Option<u32>,
    /// Run monthly: DAY@HH:MM.
    #[arg(long)]
    monthly: Option<String>,
    /// Run when a session of this job ends.
    #[arg(long)]
    after: Option<String>,
    /// Backup window HH:MM-HH:MM: a session still running at its end is stopped.
    #[arg(long)]
    window: Option<String>,
    #[arg(long)]
    timezone: Option<String>,
    /// Restore points to keep per source.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Tries in all for a failed computer.
    #[arg(long, default_value_t = 3)]
    tries: u32,
    #[arg(long, default_value_t = 10)]
    retry_delay_minutes: u32,
    #[arg(long)]
    throttle_mbps: Option<u64>,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i64,
    #[arg(long, default_value_t = 2)]
    streams: u32,
    /// Run on the computer before the snapshot (`/bin/sh -c`); a failure fails the task.
    #[arg(long)]
    pre_command: Option<String>,
    /// Run on the computer after the transfer; a failure makes the task a warning.
    #[arg(long)]
    post_command: Option<String>,
    /// A secret (see `bulwark secret set`) the commands receive as BULWARK_SECRET_<NAME>,
    /// so that no credential is written into their text. Repeat for several.
    #[arg(long = "secret")]
    secrets: Vec<String>,
}

impl JobArgs {
    fn to_json(&self) -> Result<Value> {
        let schedule = if let Some(at) = &self.daily {
            Some(json!({"kind": "daily", "at": at, "weekdays": self.weekdays}))
        } else if let Some(m) = self.every_minutes {
            Some(json!({"kind": "periodic", "every_minutes": m}))
        } else if let Some(spec) = &self.monthly {
            let (day, at) = spec.split_once('@').context("--monthly takes DAY@HH:MM")?;
            Some(json!({"kind": "monthly", "day": day.parse::<u8>().context("--monthly: bad day")?, "at": at}))
        } else {
            self.after.as_ref().map(|j| json!({"kind": "after", "job": j}))
        };
        let window = match &self.window {
            Some(w) => {
                let (start, end) = w.split_once('-').context("--window takes HH:MM-HH:MM")?;
                Some(json!({"start": start, "end": end}))
            }
            None => None,
        };
        let mut v = json!({
            "name": self.name, "mode": self.mode, "computers": self.computers, "groups": self.groups,
            "repository": self.repository, "sources": self.sources, "exclude": self.exclude,
            "retries": {"tries": self.tries, "delay_minutes": self.retry_delay_minutes},
            "priority": self.priority, "streams": self.streams, "secrets": self.secrets,
            "retention": {"keep_last": self.keep_last},
        });
        let opt = [
            ("block_size", self.block_size.clone().map(Value::from)),
            ("compression", self.compression.clone().map(Value::from)),
            ("snapshot", self.snapshot.clone().map(Value::from)),
            ("cbt", self.cbt.clone().map(Value::from)),
            ("schedule", schedule),
            ("window", window),
            ("timezone", self.timezone.clone().map(Value::from)),
            ("throttle_mbps", self.throttle_mbps.map(Value::from)),
            ("pre_command", self.pre_command.clone().map(Value::from)),
            ("post_command", self.post_command.clone().map(Value::from)),
        ];
        for (k, val) in opt {
            if let Some(val) = val {
                v[k] = val;
            }
        }
        Ok(v)
    }
}

#[derive(Subcommand)]
pub enum JobCmd {
    List,
    Show {
        name: String,
    },
    Create(Box<JobArgs>),
    /// Replace a job's settings.
    Update(Box<JobArgs>),
    Delete {
        name: String,
    },
    /// Start a session now; with --wait, follow it and exit non-zero if it failed.
    Start {
        name: String,
        #[arg(long)]
        wait: bool,
    },
    /// Stop the running session.
    Stop {
        name: String,
    },
    /// Run the job again (the computers that failed get a new try within the session's retries).
    Retry {
        name: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum SessionCmd {
    List {
        #[arg(long)]
        job: Option<String>,
    },
    Show {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum PointCmd {
    /// Restore points in the server's catalog, with their health as the last check of their
    /// repository found it (`bulwark repository verify`): ok, damaged, or - when never
    /// checked (`point show` and --json say what is damaged and when it was checked).
    List {
        #[arg(long)]
        computer: Option<String>,
    },
    /// A point: its manifest (what, when, how, statistics) and its health.
    Show { id: String },
}

fn print(c: &Conn, v: &Value, columns: &[&str]) {
    print_table(c.json, v, columns)
}

pub fn print_table(as_json: bool, v: &Value, columns: &[&str]) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v).expect("json"));
        return;
    }
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let cell = |r: &Value, k: &str| match &r[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => {
            a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), String::from)).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    let widths: Vec<usize> =
        columns.iter().map(|k| rows.iter().map(|r| cell(r, k).len()).max().unwrap_or(0).max(k.len())).collect();
    let line = |vals: Vec<String>| {
        vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for r in rows {
        println!("{}", line(columns.iter().map(|k| cell(r, k)).collect()));
    }
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Names of the secrets and when each was set (values are never shown).
    List,
    /// Set (or replace) a secret from the first line of a file, or of standard input with `-`.
    /// It is sealed in the server's database; jobs naming it with `--secret NAME` hand it to
    /// their pre and post commands as the environment variable BULWARK_SECRET_<NAME>.
    Set {
        /// Letters, digits and '_'; the variable is BULWARK_SECRET_ and the name in capitals.
        name: String,
        /// The file whose first line is the value (`-`: standard input). Keep it out of shell
        /// history and command lines: they are readable by other users.
        #[arg(long, value_name = "FILE")]
        value_file: PathBuf,
    },
    /// Delete a secret (jobs that name it then fail their tasks until it is set again).
    Delete { name: String },
}

pub fn secret(c: Conn, cmd: SecretCmd) -> Result<()> {
    let api = Api::new(&c)?;
    let v = match cmd {
        SecretCmd::List => api.call("GET", "/secrets", None)?,
        SecretCmd::Set { name, value_file } => {
            let value = first_line(&value_file, "secret")?;
            api.call("PUT", &format!("/secrets/{name}"), Some(json!({ "value": value })))?
        }
        SecretCmd::Delete { name } => api.call("DELETE", &format!("/secrets/{name}"), None)?,
    };
    print(&c, &v, &["name", "updated", "variable"]);
    Ok(())
}

pub fn token(c: Conn, cmd: TokenCmd) -> Result<()> {
    let api = Api::new(&c)?;
    match cmd {
        TokenCmd::Create { role, name, any_name, replace, expires } => {
            let v = if role == "api" {
                api.call("POST", "/api-tokens", Some(json!({"name": name, "expires": expires})))?
            } else {
                let body =
                    json!({"role": role, "name": name, "any_name": any_name, "replace": replace, "expires": expires});
                api.call("POST", "/tokens", Some(body))?
            };
            if c.json {
                println!("{v}");
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
        }
        TokenCmd::List => {
            print(&c, &api.call("GET", "/tokens", None)?, &["id", "kind", "user", "role", "name", "expires"])
        }
        TokenCmd::Revoke { id } => print(&c, &api.call("DELETE", &format!("/tokens/{id}"), None)?, &["revoked"]),
    }
    Ok(())
}

/// The first line of a password file, or of stdin for `-`.
fn read_password(file: &std::path::Path) -> Result<String> {
    first_line(file, "password")
}

/// The first line of a file holding `what` (a password, a secret), or of stdin for `-`.
fn first_line(file: &std::path::Path, what: &str) -> Result<String> {
    let text = if file == std::path::Path::new("-") {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).with_context(|| format!("reading the {what} from stdin"))?;
        line
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {what} file {}", file.display()))?
    };
    Ok(text.lines().next().unwrap_or_default().to_string())
}

pub fn user(c: Conn, cmd: UserCmd) -> Result<()> {
    let api = Api::new(&c)?;
    let v = match cmd {
        UserCmd::List => api.call("GET", "/users", None)?,
        UserCmd::Create { name, role, password_file } => {
            let body = json!({"name": name, "role": role, "password": read_password(&password_file)?});
            api.call("POST", "/users", Some(body))?
        }
        UserCmd::Passwd { name, password_file, current_password_file } => {
            let name = match name {
                Some(n) => n,
                None => api.call("GET", "/whoami", None)?["name"].as_str().unwrap_or_default().to_string(),
            };
            let current = current_password_file.as_deref().map(read_password).transpose()?;
            let body = json!({"password": read_password(&password_file)?, "current": current});
            api.call("PUT", &format!("/users/{name}/password"), Some(body))?
        }
        UserCmd::Delete { name } => api.call("DELETE", &format!("/users/{name}"), None)?,
    };
    print(&c, &v, &["name", "role", "created", "changed", "deleted"]);
    Ok(())
}

pub fn transport_node(c: Conn, cmd: TransportNodeCmd) -> Result<()> {
    let api = Api::new(&c)?;
    let v = match cmd {
        TransportNodeCmd::List => api.call("GET", "/transports", None)?,
        TransportNodeCmd::Delete { name } => api.call("DELETE", &format!("/transports/{name}"), None)?,
        TransportNodeCmd::Readmit { name } => api.call("POST", &format!("/transports/{name}/readmit"), None)?,
    };
    print(&c, &v, &["name", "address", "joined", "revoked", "removed", "readmitted"]);
    Ok(())
}

/// `bulwark repository …`; its exit status (`verify` has one of its own).
pub fn repository(c: Conn, cmd: RepositoryCmd) -> Result<std::process::ExitCode> {
    let api = Api::new(&c)?;
    let cols = ["name", "transport", "path", "max_tasks", "encrypted", "isolation", "verify", "health", "verified"];
    let v = match cmd {
        RepositoryCmd::List => api.call("GET", "/repositories", None)?,
        RepositoryCmd::Show { name } => api.call("GET", &format!("/repositories/{name}"), None)?,
        RepositoryCmd::Create { name, transport, path, max_tasks, password_file, isolation, verify } => {
            let password = password_file.as_deref().map(read_password).transpose()?;
            let body = json!({"name": name, "transport": transport, "path": path, "max_tasks": max_tasks,
                "password": password, "isolation": isolation, "verify_schedule": verify.to_json()?});
            let v = api.call("POST", "/repositories", Some(body))?;
            if !c.json && v["isolation"] == "shared" {
                eprintln!(
                    "note: repository {} shares one key among its computers: every agent writing it is trusted with the \
                     others' data (create it with --isolation computer to keep them apart)",
                    v["name"].as_str().unwrap_or_default()
                );
            }
            v
        }
        RepositoryCmd::Update { name, max_tasks, verify, no_verify_schedule } => {
            let mut body = json!({});
            if let Some(m) = max_tasks {
                body["max_tasks"] = json!(m);
            }
            if let Some(schedule) = verify.to_json()? {
                body["verify_schedule"] = schedule;
            } else if no_verify_schedule {
                body["verify_schedule"] = Value::Null;
            }
            if body.as_object().is_some_and(|b| b.is_empty()) {
                bail!("nothing to change: give --max-tasks, a --verify-… schedule or --no-verify-schedule");
            }
            api.call("PATCH", &format!("/repositories/{name}"), Some(body))?
        }
        RepositoryCmd::Delete { name } => api.call("DELETE", &format!("/repositories/{name}"), None)?,
        RepositoryCmd::Verify { name } => return verify_repository(c, &name),
    };
    if c.json {
        print(&c, &v, &cols);
    } else {
        print(&c, &repository_rows(&v), &cols);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `bulwark repository verify`: the health check through the server; exit status 3 when it
/// found damage.
pub fn verify_repository(c: Conn, name: &str) -> Result<std::process::ExitCode> {
    let api = Api::new(&c)?;
    let v = api.call("POST", &format!("/repositories/{name}/verify"), None)?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        health_summary(&v);
    }
    Ok(if v["ok"] == true { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(3) })
}

fn health_summary(v: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (points, missing, unknown) = (list(&v["points"]), list(&v["missing"]), list(&v["unknown"]));
    for p in points.iter().chain(&missing) {
        let damaged = p["health"] != "ok";
        let was = if !damaged && p["previous_health"] == "damaged" { " (was damaged)" } else { "" };
        println!(
            "{:<8} {}  {} {}{was}",
            if damaged { "DAMAGED" } else { "ok" },
            s(&p["id"]),
            s(&p["computer"]),
            s(&p["source"])
        );
        if damaged {
            println!("         {}", s(&p["detail"]));
        }
    }
    for u in &unknown {
        println!(
            "{:<8} {}  ({}) not in the catalog{}",
            if u["health"] == "ok" { "ok" } else { "DAMAGED" },
            s(&u["id"]),
            s(&u["name"]),
            u["detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default()
        );
    }
    let not_checked = list(&v["not_checked"]);
    if !not_checked.is_empty() {
        let ids: Vec<String> = not_checked.iter().map(s).collect();
        println!("committed during the check, not checked: {}", ids.join(", "));
    }
    let damaged = points.iter().filter(|p| p["health"] != "ok").count() + missing.len();
    println!(
        "repository {} (transport node {}): {} catalog point(s), {} chunk(s) ({}) checked, {} damaged{}{}: {}",
        s(&v["repository"]),
        s(&v["transport"]),
        points.len() + missing.len(),
        v["chunks_checked"],
        crate::ui::human(v["bytes_checked"].as_u64().unwrap_or(0)),
        v["chunks_damaged"],
        if missing.is_empty() { String::new() } else { format!(", {} missing", missing.len()) },
        if unknown.is_empty() { String::new() } else { format!(", {} not in the catalog", unknown.len()) },
        if v["ok"] == true { "healthy" } else { "DAMAGE FOUND" }
    );
    if damaged > 0 {
        println!("what to do about the {damaged} damaged point(s):");
    }
    for a in list(&v["advice"]) {
        println!("  - {}", s(&a));
    }
}

pub fn computer(c: Conn, cmd: ComputerCmd) -> Result<()> {
    let api = Api::new(&c)?;
    let v = match cmd {
        ComputerCmd::List => api.call("GET", "/computers", None)?,
        ComputerCmd::Show { name } => api.call("GET", &format!("/computers/{name}"), None)?,
        ComputerCmd::Delete { name } => api.call("DELETE", &format!("/computers/{name}"), None)?,
        ComputerCmd::Readmit { name } => api.call("POST", &format!("/computers/{name}/readmit"), None)?,
    };
    print(&c, &v, &["name", "address", "joined", "revoked", "online", "removed", "readmitted"]);
    Ok(())
}

pub fn group(c: Conn, cmd: GroupCmd) -> Result<()> {
    let api = Api::new(&c)?;
    let v = match cmd {
        GroupCmd::List => api.call("GET", "/groups", None)?,
        GroupCmd::Show { name } => api.call("GET", &format!("/groups/{name}"), None)?,
        GroupCmd::Update { name, computers } => {
            api.call("PUT", &format!("/groups/{name}"), Some(json!({"name": name, "computers": computers})))?
        }
        GroupCmd::Create { name, computers } => {
            api.call("POST", "/groups", Some(json!({"name": name, "computers": computers})))?
        }
        GroupCmd::Delete { name } => api.call("DELETE", &format!("/groups/{name}"), None)?,
    };
    print(&c, &v, &["name", "computers"]);
    Ok(())
}

/// Follows a session to its end with a progress display; its final state.
pub fn wait_session(api: &Api, id: &str) -> Result<Value> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("template")
                .progress_chars("=> "),
        );
        b
    });
    loop {
        let s = api.call("GET", &format!("/sessions/{id}?logs=false"), None)?;
        let tasks = s["tasks"].as_array().cloned().unwrap_or_default();
        if let Some(b) = &bar {
            let total: u64 = tasks.iter().filter_map(|t| t["progress"]["total_bytes"].as_u64()).sum();
            let read: u64 = tasks.iter().filter_map(|t| t["progress"]["read_bytes"].as_u64()).sum();
            let ended = tasks.iter().filter(|t| !matches!(t["status"].as_str(), Some("waiting" | "running"))).count();
            b.set_length(total.max(read));
            b.set_position(read);
            b.set_message(format!("{}: {ended}/{} tasks", s["job"].as_str().unwrap_or_default(), tasks.len()));
        }
        if s["status"] != "running" {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return api.call("GET", &format!("/sessions/{id}"), None);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn session_outcome(c: &Conn, s: &Value) -> Result<()> {
    if c.json {
        println!("{}", serde_json::to_string_pretty(s).expect("json"));
    } else {
        println!(
            "session {} of job {}: {}",
            s["id"].as_str().unwrap_or_default(),
            s["job"].as_str().unwrap_or_default(),
            s["status"].as_str().unwrap_or_default()
        );
        print(c, &s["tasks"], &["computer", "attempt", "status", "sent_bytes", "error"]);
    }
    if s["status"] == "failed" {
        bail!(
            "session {} failed{}",
            s["id"].as_str().unwrap_or_default(),
            s["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn job(c: Conn, cmd: JobCmd) -> Result<()> {
    let api = Api::new(&c)?;
    let cols = ["name", "mode", "computers", "groups", "repository", "sources"];
    let v = match cmd {
        JobCmd::List => api.call("GET", "/jobs", None)?,
        JobCmd::Show { name } => api.call("GET", &format!("/jobs/{name}"), None)?,
        JobCmd::Create(a) => api.call("POST", "/jobs", Some(a.to_json()?))?,
        JobCmd::Update(a) => api.call("PUT", &format!("/jobs/{}", a.name), Some(a.to_json()?))?,
        JobCmd::Delete { name } => api.call("DELETE", &format!("/jobs/{name}"), None)?,
        JobCmd::Start { name, wait } | JobCmd::Retry { name, wait } => {
            let s = api.call("POST", &format!("/jobs/{name}/start"), None)?;
            let id = s["id"].as_str().unwrap_or_default().to_string();
            if !wait {
                print(&c, &s, &["id", "job", "status", "started"]);
                return Ok(());
            }
            let s = wait_session(&api, &id)?;
            return session_outcome(&c, &s);
        }
        JobCmd::Stop { name } => api.call("POST", &format!("/jobs/{name}/stop"), None)?,
    };
    print(&c, &v, &cols);
    Ok(())
}

pub fn session(c: Conn, cmd: SessionCmd) -> Result<()> {
    let api = Api::new(&c)?;
    match cmd {
        SessionCmd::List { job } => {
            let q = job.map(|j| format!("?job={j}")).unwrap_or_default();
            print(
                &c,
                &api.call("GET", &format!("/sessions{q}"), None)?,
                &["id", "job", "status", "started", "ended", "reason"],
            );
            Ok(())
        }
        SessionCmd::Show { id } => {
            let s = api.call("GET", &format!("/sessions/{id}"), None)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&s).expect("json"));
                return Ok(());
            }
            print(&c, &s, &["id", "job", "status", "started", "ended", "reason"]);
            print(&c, &s["tasks"], &["computer", "attempt", "status", "sent_bytes", "error"]);
            Ok(())
        }
    }
}

/// What a restore through the server asks for.
pub struct RestoreAsk {
    pub to: std::path::PathBuf,
    pub overwrite: bool,
    pub paths: Vec<String>,
    pub computer: Option<String>,
    pub safe: bool,
}

/// A restore through the server; non-zero exit if it failed.
pub fn restore(c: Conn, point: &str, ask: RestoreAsk) -> Result<()> {
    let api = Api::new(&c)?;
    let body = json!({
        "target": ask.to.display().to_string(), "overwrite": ask.overwrite, "paths": ask.paths,
        "computer": ask.computer, "safe": ask.safe,
    });
    let v = api.call("POST", &format!("/points/{point}/restore"), Some(body))?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print_table(false, &v, &["point", "computer", "target", "status", "error"]);
    }
    if v["status"] != "success" {
        bail!("restore of {point} {}: {}", v["status"].as_str().unwrap_or("failed"), v["error"].as_str().unwrap_or(""));
    }
    Ok(())
}

pub fn point(c: Conn, cmd: PointCmd) -> Result<()> {
    let api = Api::new(&c)?;
    match cmd {
        PointCmd::List { computer } => {
            let q = computer.map(|c| format!("?computer={c}")).unwrap_or_default();
            print(
                &c,
                &api.call("GET", &format!("/points{q}"), None)?,
                &["id", "computer", "name", "repository", "created", "health"],
            );
        }
        PointCmd::Show { id } => {
            let v = api.call("GET", &format!("/points/{id}"), None)?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                print(&c, &v, &["id", "computer", "name", "kind", "repository", "created"]);
                let st = &v["manifest"]["stats"];
                println!(
                    "source {} bytes, read {}, new {}, stored {}",
                    st["source_bytes"], st["read_bytes"], st["new_bytes"], st["stored_bytes"]
                );
                match v["health"].as_str() {
                    Some(h) => println!(
                        "health {h} (checked {}){}",
                        v["verified_at"].as_str().unwrap_or("-"),
                        v["health_detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default()
                    ),
                    None => println!("health never checked (bulwark repository verify)"),
                }
            }
        }
    }
    Ok(())
}
