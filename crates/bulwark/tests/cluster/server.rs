//! A `bulwark server` process and its CLI, for tests and benchmarks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::bulwark_exe;

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}",
                std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(dir: &Path, db: Option<&str>) -> Server {
    start_server_with(dir, db, &[])
}

/// [`start_server`] with environment variables (the internal limits tests shorten).
pub fn start_server_with(dir: &Path, db: Option<&str>, env: &[(&str, &str)]) -> Server {
    start_server_on(dir, "127.0.0.1", db, env)
}

/// [`start_server_with`] listening on `host` (a port of its choosing), its certificate naming
/// `host` too: what the lab's guests reach it at.
pub fn start_server_on(dir: &Path, host: &str, db: Option<&str>, env: &[(&str, &str)]) -> Server {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.with_extension("log")).unwrap();
    let mut cmd = Command::new(bulwark_exe());
    cmd.args(["server", "--listen", &format!("{host}:0"), "--tick-seconds", "1", "--data-dir"]).arg(dir);
    if host != "127.0.0.1" {
        cmd.args(["--tls-name", host]);
    }
    if let Some(db) = db {
        cmd.args(["--db", db]);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
        panic!("server did not start: {}", std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default())
    });
    Server { child, dir: dir.into(), address: v["listening"].as_str().unwrap().into() }
}

/// The first admin's API token.
pub fn admin_token(s: &Server) -> String {
    std::fs::read_to_string(s.dir.join("initial-admin-token")).unwrap().trim().to_string()
}

/// Runs the CLI against the server; its JSON output, or the failure's stderr as Err.
pub fn cli(s: &Server, args: &[&str]) -> Result<Value, String> {
    cli_as(s, &admin_token(s), args)
}

/// [`cli`] with another API token.
pub fn cli_as(s: &Server, token: &str, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(bulwark_exe())
        .args(args)
        .arg("--json")
        .env("BULWARK_SERVER", format!("https://{}", s.address))
        .env("BULWARK_TOKEN", token)
        .env("BULWARK_CA_CERT", s.dir.join("ca.pem"))
        .env_remove("BULWARK_JOIN_TOKEN")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.trim().to_string())))
}

/// A one-time join token for `role` `name`.
pub fn join_token(s: &Server, role: &str, name: &str) -> String {
    cli(s, &["token", "create", "--role", role, "--name", name]).unwrap()["token"].as_str().unwrap().to_string()
}

/// A node daemon; with `disk`, in a mount namespace where `disk` appears at `at`.
pub fn start_node(
    s: &Server,
    role: &str,
    name: &str,
    dir: &Path,
    extra: &[&str],
    disk: Option<(&Path, &Path)>,
) -> super::Daemon {
    start_node_with(s, role, name, dir, extra, disk, &[])
}

/// [`start_node`] with environment variables.
pub fn start_node_with(
    s: &Server,
    role: &str,
    name: &str,
    dir: &Path,
    extra: &[&str],
    disk: Option<(&Path, &Path)>,
    env: &[(&str, &str)],
) -> super::Daemon {
    let token = join_token(s, role, name);
    let data_dir = dir.join(name);
    let mut node = vec![bulwark_exe(), role.into(), "--name".into(), name.into()];
    node.extend(["--data-dir".into(), data_dir.display().to_string(), "--listen".into(), "127.0.0.1:0".into()]);
    node.extend(["--server".into(), format!("https://{}", s.address), "--join-token".into(), token]);
    node.extend(extra.iter().map(|e| e.to_string()));
    let cmd = match disk {
        Some((disk, at)) => {
            let mut c = Command::new("unshare");
            let script = format!("mount --bind '{}' '{}' && exec \"$@\"", disk.display(), at.display());
            c.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"]).args(&node);
            c
        }
        None => {
            let mut c = Command::new(&node[0]);
            c.args(&node[1..]);
            c
        }
    };
    let mut cmd = cmd;
    cmd.envs(env.iter().copied());
    super::Cluster::spawn(cmd, name, data_dir)
}

/// Most tasks of `session` that ran at the same time on its repository.
pub fn max_concurrent(session: &Value) -> usize {
    let mut edges: Vec<(jiff::Timestamp, i32)> = Vec::new();
    for t in session["tasks"].as_array().unwrap() {
        if let (Some(a), Some(b)) = (t["started"].as_str(), t["ended"].as_str()) {
            edges.push((a.parse().unwrap(), 1));
            edges.push((b.parse().unwrap(), -1));
        }
    }
    edges.sort();
    let (mut now, mut max) = (0, 0);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// A viewer, `eve`: created by the admin, logged in; its token.
pub fn viewer_token(s: &Server) -> String {
    let http = Http::new(s);
    let body = r#"{"name": "eve", "password": "0123456789ab", "role": "viewer"}"#;
    let (st, v) = http.call("POST", "/users", Some(&admin_token(s)), Some(body));
    assert_eq!(st, 200, "{v}");
    let (st, v) = http.login("eve", "0123456789ab");
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// The REST API spoken directly, statuses and bodies as they are.
pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    pub fn new(s: &Server) -> Http {
        let pem = std::fs::read(s.dir.join("ca.pem")).unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_pem(&pem).unwrap()]))
            .build();
        let agent = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().new_agent();
        Http { agent, base: format!("https://{}/api/v1", s.address) }
    }

    /// `method path` with `token` and a JSON `body`: the status and the JSON answer.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let mut resp = match method {
            "GET" => self.agent.get(&url).header("Authorization", &auth).call().unwrap(),
            "DELETE" => self.agent.delete(&url).header("Authorization", &auth).call().unwrap(),
            m => {
                let r = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                r.header("Authorization", &auth).content_type("application/json").send(body.unwrap_or("{}")).unwrap()
            }
        };
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json().unwrap_or(Value::Null))
    }

    /// Logs in: the status and the answer (with `token` on success).
    pub fn login(&self, name: &str, password: &str) -> (u16, Value) {
        let body = serde_json::json!({"name": name, "password": password}).to_string();
        self.call("POST", "/login", None, Some(&body))
    }
}

/// A fresh PostgreSQL database on the server BULWARK_TEST_POSTGRES names (dropped with the
/// guard), or `None` when it names none.
pub struct PostgresDb {
    admin: String,
    name: String,
    pub url: String,
}

impl PostgresDb {
    pub fn create(tag: &str) -> Option<PostgresDb> {
        let admin = bulwark_testkit::postgres_admin_url()?;
        let name = format!("bulwark_{tag}_{}", std::process::id());
        let db = PostgresDb { url: format!("{}/{name}", admin.rsplit_once('/').unwrap().0), admin, name };
        db.psql(&format!("DROP DATABASE IF EXISTS {}", db.name));
        db.psql(&format!("CREATE DATABASE {}", db.name));
        Some(db)
    }

    fn psql(&self, sql: &str) {
        let st = Command::new("psql").arg(&self.admin).args(["-q", "-c", sql]).status().unwrap();
        assert!(st.success(), "psql {sql}");
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        self.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A server with a transport node (`store`, serving `DIR/repos`), an agent (`pc-1`) and a
/// repository `main`: what an operator has after the quick start.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub nodes: Vec<super::Daemon>,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(&dir.path().join("server"), None);
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        let transport =
            start_node(&server, "transport", "store", dir.path(), &["--root", repos.to_str().unwrap()], None);
        let agent = start_node(&server, "agent", "pc-1", dir.path(), &[], None);
        let repo = repos.join("main");
        cli(&server, &["repository", "create", "main", "--transport", "store", "--path", repo.to_str().unwrap()])
            .unwrap();
        Site { dir, server, nodes: vec![transport, agent] }
    }
}
