//! The admin CLI: `bulwark repository|computer|group|job|session|point|token …`, speaking the
//! server's REST API (BULWARK_SERVER, BULWARK_TOKEN, BULWARK_CA_CERT).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the server is and how to prove who we are.
#[derive(Args, Clone)]
#[command(next_help_heading = "Server connection")]
pub struct Conn {
    /// The server's URL.
    #[arg(long, env = "BULWARK_SERVER", default_value = "https://localhost:9440", global = true)]
    pub server: String,
    /// An API token (the first admin's is in the server's data directory, initial-admin-token).
    #[arg(long, env = "BULWARK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The server's CA certificate (ca.pem in its data directory), which its certificate must
    /// be issued by.
    #[arg(long, env = "BULWARK_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// An admin command: its subcommand, the server to send it to, and how to print the answer.
#[derive(Args)]
pub struct Admin<C: Subcommand> {
    #[command(subcommand)]
    pub cmd: C,
    #[command(flatten)]
    pub opts: Opts,
}

/// The options every admin command takes.
#[derive(Args, Clone)]
pub struct Opts {
    // Before the connection: its heading would take this option in too.
    /// Print the server's answer as JSON, for scripts, instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// The server's API, through its typed client.
pub use bulwark_client::Client as Api;

/// A client of the server `c` names, as the user its token stands for.
pub fn connect(c: &Conn) -> Result<Api> {
    let token = c.token.clone().context("no API token: set BULWARK_TOKEN (or --token)")?;
    Ok(Api::connect(&c.server, &token, c.ca_cert.as_deref())?)
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
    Revoke {
        /// The token's id, as `bulwark token list` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Users of the API and their roles (admins only).
    List,
    /// Create a user: admin (everything), restore-operator (reads, and restores: browses and
    /// downloads points' files, restores any point onto any computer, publishes points over NBD;
    /// trust one as you would trust root on the computers) or viewer (reads; never sees pre and
    /// post commands, nor points' files).
    Create {
        /// The user's name (letters, digits, '.', '_', '-').
        name: String,
        /// admin (may change everything), restore-operator (may read and restore) or viewer (may
        /// only read).
        #[arg(long, value_parser = ["admin", "restore-operator", "viewer"])]
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
    Delete {
        /// The user to delete.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum RepositoryCmd {
    /// Repositories the server knows: where they are, their task maximum, encryption and
    /// isolation, and the schedule and outcome of their health checks.
    List,
    /// One repository, as `repository list` shows it.
    Show {
        /// The repository, as `bulwark repository list` names it.
        name: String,
    },
    /// Create a repository on a transport node (or adopt the one at that location).
    Create {
        /// The name jobs and listings use for it.
        name: String,
        /// The transport node whose data movers write it.
        #[arg(long)]
        transport: String,
        /// Where it is, as that node sees it: a path under one of the node's --root directories,
        /// or `s3://BUCKET/PREFIX?endpoint=https://HOST:PORT&region=R` in one of the node's
        /// --s3-bucket buckets (the node holds the credentials).
        #[arg(long, visible_alias = "path", value_name = "LOCATION")]
        location: String,
        /// Tasks it takes at once.
        #[arg(long, default_value_t = 4)]
        max_tasks: i64,
        /// Encrypt it (a new repository) or open it (an existing one) with the password in this file.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Whom its agents are trusted with. `shared`: one key for all computers, so a block two
        /// computers hold is stored once, and every agent writing the repository holds the key
        /// that reads all of it and can ask whether any content is stored (trust them with each
        /// other's data). `computer`: a key per computer, dedup within one computer's points
        /// only, and an agent can neither read another computer's backups nor learn what they
        /// hold. Needs --password-file; chosen at creation for good.
        #[arg(long, default_value = "shared", value_parser = ["shared", "computer"])]
        isolation: String,
        /// Pack files are closed at about this many MiB (1 to 1024; default 32): larger packs
        /// mean fewer objects and S3 requests, smaller ones less to rewrite when garbage
        /// collection repacks. A new repository only.
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
        pack_size: Option<u32>,
        /// Lock every point for this many days after its time, so nobody (not even whoever
        /// holds the node's credentials) can delete or alter it before then. A directory needs
        /// the immutability service (`bulwark hardened-service`) on the transport node; an S3
        /// bucket needs Object Lock enabled and no default retention. `forget`, retention and
        /// gc leave such points alone until their date. Chosen at creation for good.
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
        immutable_days: Option<u32>,
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
        /// The repository, as `bulwark repository list` names it.
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
        /// The repository, as `bulwark repository list` names it.
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
    #[arg(long, value_name = "DAYS", value_delimiter = ',', requires = "verify_daily")]
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
            Some(crate::jobs::monthly("--verify-monthly", spec)?)
        } else {
            self.verify_every_minutes.map(|m| json!({"kind": "periodic", "every_minutes": m}))
        })
    }
}

/// The repository rows with their health check in words, for the table.
fn repository_rows(v: &Value) -> Value {
    let row = |r: &Value| {
        let mut r = r.clone();
        r["verify"] = json!(crate::jobs::schedule_text(&r["verify_schedule"]));
        let last = r["last_verify"].clone();
        r["health"] = match (last["ok"].as_bool(), last["error"].is_string()) {
            (None, _) => Value::Null,
            (Some(true), _) => json!("healthy"),
            (Some(false), true) => json!("check failed"),
            (Some(false), false) => json!(format!("{} damaged", last["damaged"])),
        };
        r["verified"] = last["at"].clone();
        let u = r["usage"].clone();
        let bytes = |v: &Value| v.as_u64().map(bulwark_proto::human_bytes);
        r["stored"] = json!(bytes(&u["stored_bytes"]));
        r["free"] = match (bytes(&u["free_bytes"]), bytes(&u["total_bytes"])) {
            (Some(free), Some(total)) => json!(format!("{free} of {total}")),
            _ => Value::Null,
        };
        r["reduction"] = json!(u["reduction"].as_f64().map(|x| format!("{x:.1}x")));
        r
    };
    match v {
        Value::Array(a) => Value::Array(a.iter().map(row).collect()),
        other => row(other),
    }
}

#[derive(Subcommand)]
pub enum ComputerCmd {
    /// Protected computers (joined agents): address, when they joined, whether they answer now.
    List,
    /// A computer and its inventory (asked afresh when it answers).
    Show {
        /// The computer (its agent's node name).
        name: String,
    },
    /// Remove a computer: its certificate is revoked; its restore points stay.
    Delete {
        /// The computer (its agent's node name).
        name: String,
    },
    /// Let a removed computer's name join again, with a token made for it (`bulwark token
    /// create --role agent --name NAME`). It inherits the name's jobs and restore points.
    Readmit {
        /// The removed computer's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TransportNodeCmd {
    /// Joined transport nodes: address and when they joined.
    List,
    /// Remove a transport node: its certificate is revoked everywhere, so it can no longer
    /// take tasks or serve repositories; repositories on it stay in the configuration.
    Delete {
        /// The transport node's name.
        name: String,
    },
    /// Let a removed transport node's name join again, with a token made for it (`bulwark
    /// token create --role transport --name NAME`).
    Readmit {
        /// The removed transport node's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Protection groups and their computers.
    List,
    /// One protection group and its computers.
    Show {
        /// The group's name.
        name: String,
    },
    /// Create a protection group: computers a job can name all at once (`job create --group`).
    Create {
        /// The group's name.
        name: String,
        /// A computer of the group. Repeatable.
        #[arg(long = "computer", required = true)]
        computers: Vec<String>,
    },
    /// Replace a group's computers.
    Update {
        /// The group's name.
        name: String,
        /// A computer of the group (all of them: the list replaces the old one). Repeatable.
        #[arg(long = "computer", required = true)]
        computers: Vec<String>,
    },
    /// Delete a protection group (refused while a job names it).
    Delete {
        /// The group's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// Job sessions, oldest first: status, start, duration, data sent, and what went wrong.
    List {
        /// Only sessions of this job.
        #[arg(long)]
        job: Option<String>,
    },
    /// A session and its tasks (one per computer and attempt).
    Show {
        /// The session's id, as `bulwark session list` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum PointCmd {
    /// Restore points in the server's catalog, oldest first, with their size, their health
    /// as the last check of their repository found it (`bulwark repository verify`): ok,
    /// DAMAGED (with what is wrong), or not checked, and how consistent their data is.
    List {
        /// Only points of this computer.
        #[arg(long)]
        computer: Option<String>,
    },
    /// A point: its manifest (what, when, how, statistics) and its health.
    Show {
        /// The point's id, as `bulwark point list` shows it.
        id: String,
    },
    /// The volumes of a volume point: the whole image (0) and, for a disk, its partitions,
    /// with the filesystem each holds. Read on the transport node holding the point.
    Volumes {
        /// The point's id, as `bulwark point list` shows it.
        id: String,
    },
    /// One directory of a point: of the filesystem on a volume point's volume (ext2/3/4), or of
    /// a file-level point's tree. Read a page at a time; never the whole tree.
    Files {
        /// The point's id, as `bulwark point list` shows it.
        id: String,
        /// The directory (default /).
        path: Option<String>,
        /// The volume (0: the whole image; N: partition N of a disk; see `bulwark point volumes`).
        #[arg(long, default_value_t = 0)]
        volume: u32,
        /// At most this many entries (default: all, fetched 1000 at a time).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Publish a volume point over NBD for instant recovery: the transport node holding it
    /// serves it at the printed `nbd://` URL until `--hours` pass or `point unpublish`. Boot a
    /// VM from it (`qemu-system-x86_64 -drive file=URL,format=raw,snapshot=on`), copy it
    /// (`nbdcopy URL disk.img`), or attach it with `nbdfuse`. NBD has no passwords: the URL's
    /// random name (and --allowed-ip) keep others out; keep the URL to yourself.
    Publish {
        /// The point's id, as `bulwark point list` shows it.
        id: String,
        /// The volume (0: the whole image; N: partition N of a disk; see `bulwark point volumes`).
        #[arg(long, default_value_t = 0)]
        volume: u32,
        /// Accept writes (into a scratch overlay on the transport node, lost when the export
        /// ends; the repository is never written). A VM booting from the point needs this or
        /// qemu's `snapshot=on`.
        #[arg(long)]
        writable: bool,
        /// Hours until the export ends on its own (default 8, at most 336).
        #[arg(long)]
        hours: Option<u32>,
        /// Only this client address may connect.
        #[arg(long, value_name = "IP")]
        allowed_ip: Option<String>,
    },
    /// Exports that have not ended: their URLs, points and expiry.
    Exports,
    /// End an export now.
    Unpublish {
        /// The export's id, as `bulwark point exports` shows it.
        export: String,
    },
    /// Copy one file out of a point (to a file, or to standard output with `--to -`); with
    /// `--tar`, a directory and everything under it as a tar archive.
    Download {
        /// The point's id, as `bulwark point list` shows it.
        id: String,
        /// The file (or, with --tar, the directory) inside the point.
        path: String,
        /// The volume (0: the whole image; N: partition N of a disk; see `bulwark point volumes`).
        #[arg(long, default_value_t = 0)]
        volume: u32,
        /// Write a tar archive of PATH and everything under it.
        #[arg(long)]
        tar: bool,
        /// Where to write it; `-` for standard output.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        overwrite: bool,
    },
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
    Delete {
        /// The secret's name.
        name: String,
    },
}

pub fn print(o: &Opts, v: &Value, columns: &[&str]) {
    print_table(o.json, v, columns)
}

/// A value from the server as a table cell: instants in local time, lists joined.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => crate::ui::local_time_text(s).unwrap_or_else(|| s.clone()),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The server's answer as JSON, or as a table of `columns` (keys of its objects; `a.b` reaches
/// into one).
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
    let at = |r: &Value, k: &str| k.split('.').fold(r.clone(), |v, part| v[part].clone());
    let mut table = crate::ui::Table::new(&[]);
    table.set_header(columns.iter().map(|c| c.rsplit('.').next().unwrap_or(c).replace('_', " ").to_uppercase()));
    for r in rows {
        table.row(columns.iter().map(|k| cell(&at(r, k))).collect());
    }
    table.print();
}

pub fn secret(a: Admin<SecretCmd>) -> Result<ExitCode> {
    let api = connect(&a.opts.conn)?;
    let v = match a.cmd {
        SecretCmd::List => api.call("GET", "/secrets", None)?,
        SecretCmd::Set { name, value_file } => {
            let value = first_line(&value_file, "secret")?;
            api.call("PUT", &format!("/secrets/{name}"), Some(json!({ "value": value })))?
        }
        SecretCmd::Delete { name } => api.call("DELETE", &format!("/secrets/{name}"), None)?,
    };
    print(&a.opts, &v, &["name", "updated", "variable"]);
    Ok(ExitCode::SUCCESS)
}

pub fn token(a: Admin<TokenCmd>) -> Result<ExitCode> {
    let (api, o) = (connect(&a.opts.conn)?, &a.opts);
    match a.cmd {
        TokenCmd::Create { role, name, any_name, replace, expires } => {
            let v = if role == "api" {
                api.call("POST", "/api-tokens", Some(json!({"name": name, "expires": expires})))?
            } else {
                let body =
                    json!({"role": role, "name": name, "any_name": any_name, "replace": replace, "expires": expires});
                api.call("POST", "/tokens", Some(body))?
            };
            if o.json {
                println!("{v}");
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
        }
        TokenCmd::List => {
            print(o, &api.call("GET", "/tokens", None)?, &["id", "kind", "user", "role", "name", "expires"])
        }
        TokenCmd::Revoke { id } => print(o, &api.call("DELETE", &format!("/tokens/{id}"), None)?, &["revoked"]),
    }
    Ok(ExitCode::SUCCESS)
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

pub fn user(a: Admin<UserCmd>) -> Result<ExitCode> {
    let api = connect(&a.opts.conn)?;
    let v = match a.cmd {
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
    print(&a.opts, &v, &["name", "role", "created", "changed", "deleted"]);
    Ok(ExitCode::SUCCESS)
}

pub fn transport_node(a: Admin<TransportNodeCmd>) -> Result<ExitCode> {
    let api = connect(&a.opts.conn)?;
    let v = match a.cmd {
        TransportNodeCmd::List => api.call("GET", "/transports", None)?,
        TransportNodeCmd::Delete { name } => api.call("DELETE", &format!("/transports/{name}"), None)?,
        TransportNodeCmd::Readmit { name } => api.call("POST", &format!("/transports/{name}/readmit"), None)?,
    };
    print(&a.opts, &v, &["name", "address", "joined", "revoked", "removed", "readmitted"]);
    Ok(ExitCode::SUCCESS)
}

/// `bulwark repository …`; its exit status (`verify` has one of its own).
pub fn repository(a: Admin<RepositoryCmd>) -> Result<ExitCode> {
    let (api, o) = (connect(&a.opts.conn)?, &a.opts);
    let cols = [
        "name",
        "transport",
        "path",
        "max_tasks",
        "encrypted",
        "isolation",
        "immutable_days",
        "verify",
        "health",
        "verified",
        "stored",
        "free",
        "reduction",
    ];
    let v = match a.cmd {
        RepositoryCmd::List => api.call("GET", "/repositories", None)?,
        RepositoryCmd::Show { name } => api.call("GET", &format!("/repositories/{name}"), None)?,
        RepositoryCmd::Create {
            name,
            transport,
            location,
            max_tasks,
            password_file,
            isolation,
            pack_size,
            immutable_days,
            verify,
        } => {
            let password = password_file.as_deref().map(read_password).transpose()?;
            let body = json!({"name": name, "transport": transport, "path": location, "max_tasks": max_tasks,
                "password": password, "isolation": isolation, "pack_size_mib": pack_size,
                "immutable_days": immutable_days, "verify_schedule": verify.to_json()?});
            let v = api.call("POST", "/repositories", Some(body))?;
            if !o.json && v["isolation"] == "shared" {
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
        RepositoryCmd::Verify { name } => return verify_repository(&api, o, &name),
    };
    if o.json {
        print(o, &v, &cols);
    } else {
        print(o, &repository_rows(&v), &cols);
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulwark repository verify`: the health check through the server; exit status 3 when it
/// found damage.
fn verify_repository(api: &Api, o: &Opts, name: &str) -> Result<ExitCode> {
    let v = api.call("POST", &format!("/repositories/{name}/verify"), None)?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        health_summary(&v);
    }
    Ok(if v["ok"] == true { ExitCode::SUCCESS } else { ExitCode::from(3) })
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

pub fn computer(a: Admin<ComputerCmd>) -> Result<ExitCode> {
    let api = connect(&a.opts.conn)?;
    let v = match a.cmd {
        ComputerCmd::List => api.call("GET", "/computers", None)?,
        ComputerCmd::Show { name } => {
            let v = api.call("GET", &format!("/computers/{name}"), None)?;
            if !a.opts.json {
                print(&a.opts, &v, &["name", "address", "joined", "online", "revoked"]);
                println!();
                inventory_table(&v["inventory"]);
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        ComputerCmd::Delete { name } => api.call("DELETE", &format!("/computers/{name}"), None)?,
        ComputerCmd::Readmit { name } => api.call("POST", &format!("/computers/{name}/readmit"), None)?,
    };
    print(&a.opts, &v, &["name", "address", "joined", "online", "revoked", "removed", "readmitted"]);
    Ok(ExitCode::SUCCESS)
}

/// A computer's disks, partitions and what is mounted from them, as its agent last reported.
fn inventory_table(inv: &Value) {
    if inv.is_null() {
        println!("no inventory yet: the computer has not answered since it joined");
        return;
    }
    println!("{} (kernel {})", inv["hostname"].as_str().unwrap_or("?"), inv["kernel"].as_str().unwrap_or("?"));
    let mut table = crate::ui::Table::new(&["DEVICE", "KIND", "SIZE", "FILESYSTEM", "MOUNTED ON", "MODEL"]);
    fn rows(list: &Value, indent: &str, table: &mut crate::ui::Table) {
        for d in list.as_array().into_iter().flatten() {
            let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
            let mounts: Vec<&str> =
                d["mount_points"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            table.row(vec![
                format!("{indent}{}", text(&d["path"])),
                text(&d["kind"]),
                crate::ui::human(d["size_bytes"].as_u64().unwrap_or(0)),
                text(&d["fs_type"]),
                if mounts.is_empty() { "-".into() } else { mounts.join(",") },
                text(&d["model"]),
            ]);
            rows(&d["children"], "  ", table);
        }
    }
    rows(&inv["devices"], "", &mut table);
    table.print();
}

pub fn group(a: Admin<GroupCmd>) -> Result<ExitCode> {
    let api = connect(&a.opts.conn)?;
    let v = match a.cmd {
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
    print(&a.opts, &v, &["name", "computers"]);
    Ok(ExitCode::SUCCESS)
}

/// Seconds between two instants the server wrote (RFC 3339); to now while `end` is absent.
pub fn seconds_between(start: &Value, end: &Value) -> Option<u64> {
    let at = |v: &Value| v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    let end = match end {
        Value::Null => chrono::Utc::now().fixed_offset(),
        e => at(e)?,
    };
    Some((end - at(start)?).num_seconds().max(0) as u64)
}

/// Sessions or tasks with their duration and size in words, for the table.
fn timed_rows(v: &Value, bytes: &str) -> Value {
    let row = |r: &Value| {
        let mut r = r.clone();
        r["duration"] = seconds_between(&r["started"], &r["ended"]).map(crate::ui::duration).into();
        r["size"] = r[bytes].as_u64().map(crate::ui::human).into();
        r
    };
    match v {
        Value::Array(a) => Value::Array(a.iter().map(row).collect()),
        other => row(other),
    }
}

/// Oldest first, whatever order the server answered in (it lists sessions newest first).
fn oldest_first(v: &Value, key: &str) -> Value {
    let mut rows = v.as_array().cloned().unwrap_or_default();
    rows.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
    Value::Array(rows)
}

/// The table of a session's tasks.
pub fn print_tasks(tasks: &Value) {
    print_table(
        false,
        &timed_rows(tasks, "sent_bytes"),
        &["computer", "attempt", "status", "started", "duration", "size", "error"],
    );
}

pub fn session(a: Admin<SessionCmd>) -> Result<ExitCode> {
    let (api, o) = (connect(&a.opts.conn)?, &a.opts);
    match a.cmd {
        SessionCmd::List { job } => {
            let q = job.map(|j| format!("?job={j}")).unwrap_or_default();
            let v = api.call("GET", &format!("/sessions{q}"), None)?;
            if o.json {
                print(o, &v, &[]);
            } else {
                sessions_table(&v);
            }
        }
        SessionCmd::Show { id } => {
            let s = api.call("GET", &format!("/sessions/{id}"), None)?;
            if o.json {
                print(o, &s, &[]);
            } else {
                let mut row = timed_rows(&s, "none");
                row["size"] = crate::ui::human(sent_bytes(&s)).into();
                print(o, &row, &["id", "job", "status", "started", "duration", "size", "reason"]);
                print_tasks(&s["tasks"]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sessions oldest first, with their duration, the data they sent and what went wrong or
/// earned a warning.
pub fn sessions_table(v: &Value) {
    let cols = ["id", "job", "status", "started", "duration", "size", "problem"];
    print_table(false, &timed_rows(&oldest_first(v, "started"), "sent_bytes"), &cols);
}

/// Bytes a session's tasks sent.
fn sent_bytes(s: &Value) -> u64 {
    s["tasks"].as_array().into_iter().flatten().filter_map(|t| t["sent_bytes"].as_u64()).sum()
}

/// What a restore through the server asks for.
pub struct RestoreAsk {
    pub to: std::path::PathBuf,
    pub overwrite: bool,
    pub paths: Vec<String>,
    pub computer: Option<String>,
    pub safe: bool,
    pub volume: u32,
}

/// A restore through the server; non-zero exit if it failed.
pub fn restore(c: &Conn, json: bool, point: &str, ask: RestoreAsk) -> Result<ExitCode> {
    let api = connect(c)?;
    let body = json!({
        "target": ask.to.display().to_string(), "overwrite": ask.overwrite, "paths": ask.paths,
        "computer": ask.computer, "safe": ask.safe, "volume": ask.volume,
    });
    let v = api.call("POST", &format!("/points/{point}/restore"), Some(body))?;
    print_table(json, &v, &["point", "computer", "target", "status", "error"]);
    if v["status"] != "success" {
        bail!("restore of {point} {}: {}", v["status"].as_str().unwrap_or("failed"), v["error"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn point(a: Admin<PointCmd>) -> Result<ExitCode> {
    let (api, o) = (connect(&a.opts.conn)?, &a.opts);
    match a.cmd {
        PointCmd::List { computer } => {
            let q = computer.map(|c| format!("?computer={c}")).unwrap_or_default();
            let v = api.call("GET", &format!("/points{q}"), None)?;
            if o.json {
                print(o, &v, &[]);
            } else {
                let rows: Vec<_> = v.as_array().into_iter().flatten().map(crate::ui::PointRow::of_catalog).collect();
                crate::ui::points_table(&rows);
            }
        }
        PointCmd::Publish { id, volume, writable, hours, allowed_ip } => {
            let e = api.publish(&id, volume, writable, hours, allowed_ip.as_deref())?;
            if o.json {
                crate::ui::print_json(&e);
            } else {
                println!("point {id} volume {volume} is served at {}", e.url);
                println!(
                    "  until {} (export {}; end it with `bulwark point unpublish {}`)",
                    crate::ui::local_time_text(&e.expires).unwrap_or(e.expires.clone()),
                    e.id,
                    e.id
                );
                println!(
                    "  boot a VM:  qemu-system-x86_64 -m 2048 -drive file={},format=raw{}",
                    e.url,
                    if writable { "" } else { ",snapshot=on" }
                );
                println!("  copy it:    nbdcopy {} disk.img", e.url);
            }
        }
        PointCmd::Exports => {
            let exports = api.exports()?;
            if o.json {
                crate::ui::print_json(&exports);
            } else {
                println!("{:<18} {:<24} {:>3} {:<5} {:<19} URL", "EXPORT", "POINT", "VOL", "RW", "EXPIRES");
                for e in &exports {
                    println!(
                        "{:<18} {:<24} {:>3} {:<5} {:<19} {}",
                        e.id,
                        e.point,
                        e.volume,
                        if e.writable { "yes" } else { "no" },
                        crate::ui::local_time_text(&e.expires).unwrap_or(e.expires.clone()),
                        e.url
                    );
                }
            }
        }
        PointCmd::Unpublish { export } => {
            let e = api.unpublish(&export)?;
            if o.json {
                crate::ui::print_json(&e);
            } else {
                println!("export {} of point {} ended", e.id, e.point);
            }
        }
        PointCmd::Volumes { id } => {
            let volumes = api.volumes(&id)?;
            if o.json {
                crate::ui::print_json(&volumes);
            } else {
                crate::ui::volumes_table(&volumes);
            }
        }
        PointCmd::Files { id, path, volume, limit } => {
            let path = path.unwrap_or_else(|| "/".into());
            let (mut cursor, mut left, mut all) = (None::<String>, limit.unwrap_or(u32::MAX), Vec::new());
            while left > 0 {
                let page = api.files(&id, volume, &path, cursor.as_deref(), left.min(1000))?;
                left = left.saturating_sub(page.entries.len() as u32);
                if !o.json {
                    let lines: Vec<crate::ui::EntryLine> = page
                        .entries
                        .iter()
                        .map(|e| crate::ui::EntryLine {
                            letter: match e.kind.as_str() {
                                "dir" => 'd',
                                "symlink" => 'l',
                                "char-device" => 'c',
                                "block-device" => 'b',
                                "fifo" => 'p',
                                "socket" => 's',
                                _ => '-',
                            },
                            kind: &e.kind,
                            mode: e.mode,
                            uid: e.uid,
                            gid: e.gid,
                            size: e.size,
                            mtime: e.mtime,
                            mtime_nsec: 0,
                            name: &e.name,
                            target: e.target.as_deref(),
                        })
                        .collect();
                    crate::ui::entries_table(&lines);
                }
                all.extend(page.entries);
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            if o.json {
                crate::ui::print_json(&all);
            }
        }
        PointCmd::Download { id, path, volume, tar, to, .. } if to.as_os_str() == "-" => {
            let out = &mut std::io::stdout().lock();
            if tar {
                api.download_archive(&id, volume, &path, out)?;
            } else {
                api.download(&id, volume, &path, 0, out)?;
            }
        }
        PointCmd::Download { id, path, volume, tar, to, overwrite } => {
            if to.exists() && !overwrite {
                bail!("{} exists; give --overwrite to replace it", to.display());
            }
            // Written beside the target and renamed when whole: a failed download leaves nothing.
            let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let mut tmp =
                tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing into {}", dir.display()))?;
            let n = if tar {
                api.download_archive(&id, volume, &path, tmp.as_file_mut())?
            } else {
                api.download(&id, volume, &path, 0, tmp.as_file_mut())?
            };
            tmp.persist(&to).with_context(|| format!("writing {}", to.display()))?;
            if o.json {
                crate::ui::print_json(&json!({"point": id, "path": path, "to": to, "bytes": n}));
            } else {
                println!("{path} of {id}: {} written to {}", crate::ui::human(n), to.display());
            }
        }
        PointCmd::Show { id } => {
            let v = api.call("GET", &format!("/points/{id}"), None)?;
            if o.json {
                print(o, &v, &[]);
                return Ok(ExitCode::SUCCESS);
            }
            print(o, &v, &["id", "computer", "name", "kind", "repository", "created"]);
            let (m, st) = (&v["manifest"], &v["manifest"]["stats"]);
            let size = |k: &str| crate::ui::human(st[k].as_u64().unwrap_or(0));
            println!(
                "source {} ({}), read {}, new {}, stored {}",
                m["source"].as_str().unwrap_or("-"),
                size("source_bytes"),
                size("read_bytes"),
                size("new_bytes"),
                size("stored_bytes")
            );
            println!(
                "consistency {}",
                crate::ui::consistency_text(
                    m["consistency"].as_str().unwrap_or_default(),
                    m["snapshot"].as_str().unwrap_or_default()
                )
            );
            match v["health"].as_str() {
                Some(h) => println!(
                    "health {h} (checked {}){}",
                    cell(&v["verified_at"]),
                    v["health_detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default()
                ),
                None => println!("health not checked yet (bulwark repository verify)"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
