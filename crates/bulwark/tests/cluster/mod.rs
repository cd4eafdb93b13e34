//! A managed set-up on loopback: the server's CA and registration (in this process, through
//! the library the server is built from), and real `bulwark agent` and `bulwark transport`
//! processes that join it with one-time tokens. Tasks are driven with the backup manager's
//! library API.

#![allow(dead_code)]

pub mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_proto::pb::{Source, TaskSpec, Throttle};
use bulwark_proto::pki::{Ca, Identity, JoinToken, Role};
use bulwark_proto::tls::{self, Revocations, TlsIdentity, SERVER_NODE};
use bulwark_server::registration::{MemoryNodes, Registrar};
use bulwark_server::task_driver::{Manager, NodeAddress, TaskOutcome, TaskRequest};

/// The `bulwark` program: the one cargo built for these tests, or `BULWARK_EXE` (benchmarks).
pub fn bulwark_exe() -> String {
    std::env::var("BULWARK_EXE")
        .ok()
        .or(option_env!("CARGO_BIN_EXE_bulwark").map(String::from))
        .expect("BULWARK_EXE names the bulwark program")
}

/// A daemon process; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub name: String,
    pub address: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn node(&self) -> NodeAddress {
        NodeAddress { name: self.name.clone(), address: self.address.clone() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub ca: Arc<Ca>,
    pub nodes: Arc<MemoryNodes>,
    pub server_addr: String,
    pub manager: Manager,
    pub server_identity: Identity,
}

impl Cluster {
    pub fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("server")).unwrap());
        let server_identity = ca.issue(Role::Server, SERVER_NODE).unwrap();
        let tls_id = TlsIdentity::new(&server_identity).unwrap();
        let nodes = Arc::new(MemoryNodes::default());
        let registrar = Registrar::new(ca.clone(), nodes.clone());
        let server_cfg = tls::server_config(&tls_id, tls::ClientAuth::Optional, &Revocations::default()).unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let server_addr = listener.local_addr().unwrap().to_string();
        rt.spawn(async move {
            tls::server_builder(&tls::Limits::default())
                .add_service(registrar.into_server())
                .serve_with_incoming(tls::incoming(listener, server_cfg, tls::Limits::default()))
                .await
                .unwrap();
        });
        let client = tls::client_config(Some(&tls_id), None, &Revocations::default()).unwrap();
        Cluster { dir, rt, ca, nodes, server_addr, manager: Manager::new(client), server_identity }
    }

    pub fn token(&self, role: Role) -> String {
        let t = JoinToken::generate(&self.ca.fingerprint());
        self.nodes.add_token(&t, role);
        t.to_string()
    }

    /// Starts (and, the first time, joins) an agent or transport named `name`.
    pub fn start(&self, role: Role, name: &str, extra: &[&str]) -> Daemon {
        let data_dir = self.dir.path().join(name);
        let joined = data_dir.join("node.key").exists();
        let mut cmd = Command::new(bulwark_exe());
        cmd.arg(role.as_str()).arg("--name").arg(name).arg("--data-dir").arg(&data_dir);
        cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
        if !joined {
            cmd.arg("--server").arg(format!("https://{}", self.server_addr));
            cmd.arg("--join-token").arg(self.token(role));
        }
        Self::spawn(cmd, name, data_dir)
    }

    pub fn spawn(mut cmd: Command, name: &str, data_dir: PathBuf) -> Daemon {
        std::fs::create_dir_all(&data_dir).unwrap();
        let log = data_dir.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child = cmd.stdout(Stdio::piped()).stderr(log_file).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("{name} did not start: {}", std::fs::read_to_string(&log).unwrap_or_default()));
        Daemon { child, name: name.into(), address: v["listening"].as_str().unwrap().to_string(), data_dir, log }
    }

    pub fn task(&self, id: &str, agent: &Daemon, transport: &Daemon, repo: &Path, spec: TaskSpec) -> TaskRequest {
        TaskRequest {
            task_id: id.into(),
            agent: agent.node(),
            transport: transport.node(),
            repository: repo.display().to_string(),
            password: None,
            throttle: Throttle::default(),
            spec,
        }
    }

    /// Runs a task; a hang is a failure, not a stalled suite.
    pub fn run(&self, req: TaskRequest) -> TaskOutcome {
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(300), self.manager.run_task(req, |_| {})).await
            })
            .expect("the task did not end within 5 minutes")
    }
}

/// A volume task over one image file.
pub fn volume_spec(image: &Path, name: &str) -> TaskSpec {
    TaskSpec {
        kind: bulwark_proto::pb::TaskKind::Volume as i32,
        sources: vec![Source { path: image.display().to_string(), name: name.into() }],
        snapshot: bulwark_proto::pb::SnapshotMode::None as i32,
        filters: true,
        streams: 2,
        ..Default::default()
    }
}

pub fn init_repo(path: &Path) {
    bulwark_repo::Repository::init(path, &Default::default()).unwrap();
}

/// A repository whose packs close at 4 MiB: a test that interrupts a backup of a few hundred
/// MiB finds some of it indexed, as a real backup of many GiB would.
pub fn init_repo_small_packs(path: &Path) {
    let opts = bulwark_repo::InitOptions { pack_size: Some(4 << 20), ..Default::default() };
    bulwark_repo::Repository::init(path, &opts).unwrap();
}

/// Restores `point` (an id or NAME:latest) of `repo` and returns its bytes.
pub fn restore(repo: &Path, point: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("restored-{}", point.replace(':', "-")));
    let _ = std::fs::remove_file(&out);
    let st = Command::new(bulwark_exe())
        .args(["restore", point, "--repo"])
        .arg(repo)
        .arg("--to")
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "restore failed: {}", String::from_utf8_lossy(&st.stderr));
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// `bulwark verify` of the whole repository succeeds.
pub fn verify_clean(repo: &Path) {
    let st = Command::new(bulwark_exe()).args(["verify", "--repo"]).arg(repo).output().unwrap();
    assert!(
        st.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
}

pub fn points(repo: &Path) -> Vec<bulwark_repo::Manifest> {
    bulwark_repo::Repository::open(repo, None).unwrap().list_points().unwrap()
}

/// Files under `dir`, recursively (chunks in a repository, say).
pub fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Waits until `f` holds, at most `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pids of `pid`'s children.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}
