//! Faults in the middle of a managed backup: kill -9 of the agent, of the data mover, of the
//! transport service; the connection cut; the repository's filesystem full. Each time the task
//! fails with a reason that says what happened, no partial point is visible, no snapshot is
//! left behind, and the next run succeeds and reuses what was already stored.

mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulwark_proto::pb::Throttle;
use bulwark_proto::pki::Role;
use bulwark_server::task_driver::TaskOutcome;
use bulwark_testkit::MountedFs;
use cluster::*;

struct Setup {
    c: Cluster,
    repos: PathBuf,
    repo: PathBuf,
    agent: Daemon,
    transport: Daemon,
}

fn setup(repos: Option<PathBuf>) -> Setup {
    let c = Cluster::new();
    let repos = repos.unwrap_or_else(|| c.dir.path().join("repos"));
    std::fs::create_dir_all(&repos).unwrap();
    let repo = repos.join("r");
    init_repo_small_packs(&repo);
    let agent = c.start(Role::Agent, "a1", &[]);
    let transport = c.start(Role::Transport, "t1", &["--root", repos.to_str().unwrap()]);
    Setup { c, repos, repo, agent, transport }
}

impl Setup {
    fn restart_transport(&mut self) {
        self.transport = self.c.start(Role::Transport, "t1", &["--root", self.repos.to_str().unwrap()]);
    }

    /// Starts a throttled backup of `image`, waits until data flows, runs `fault`, and returns
    /// how the task ended.
    fn interrupted(&self, image: &Path, snapshot: &str, fault: impl FnOnce(&Setup)) -> TaskOutcome {
        let mut spec = volume_spec(image, "vol");
        spec.set_snapshot(snapshot.parse::<bulwark_proto::domain::SnapshotMode>().unwrap().into());
        spec.set_cbt(bulwark_proto::domain::CbtMode::None.into());
        let mut req = self.c.task("interrupted", &self.agent, &self.transport, &self.repo, spec);
        req.throttle = Throttle { bytes_per_s: 12 << 20, ..Default::default() };
        let sent = Arc::new(AtomicU64::new(0));
        let (m, s) = (self.c.manager.clone(), sent.clone());
        let task =
            self.c.rt.spawn(async move { m.run_task(req, move |p| s.store(p.sent_bytes, Ordering::Relaxed)).await });
        wait_for(60, "data on the wire", || sent.load(Ordering::Relaxed) > 6 << 20);
        // Sent is not stored: the fault comes once the repository holds a good part of it, so
        // that the rerun has something to find.
        wait_for(60, "data in the repository, indexed", || {
            stored(&self.repo) > 5 << 20
                && std::fs::read_dir(self.repo.join("index")).is_ok_and(|mut d| d.next().is_some())
        });
        fault(self);
        let out = self
            .c
            .rt
            .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(300), task).await })
            .expect("the interrupted task did not end within 5 minutes")
            .unwrap();
        assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Failed, "{out:?}");
        assert!(points(&self.repo).is_empty(), "a partial point is visible");
        out
    }

    /// The run after the fault: succeeds, restores byte for byte, stores only what the
    /// interrupted run had not.
    fn rerun(&self, image: &Path) {
        let stored_before = stored(&self.repo);
        assert!(stored_before > 4 << 20, "the interrupted run stored {stored_before} bytes");
        let mut spec = volume_spec(image, "vol");
        spec.set_snapshot(bulwark_proto::domain::SnapshotMode::None.into());
        let out = self.c.run(self.c.task("rerun", &self.agent, &self.transport, &self.repo, spec));
        assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Success, "{out:?}");
        let p = &out.points[0];
        assert_eq!(restore(&self.repo, p.id.as_str(), self.c.dir.path()), std::fs::read(image).unwrap());
        let all = stored(&self.repo);
        assert!(
            p.stats.stored_bytes + (4 << 20) <= all,
            "the re-run stored {} of {all} bytes: it did not reuse the interrupted run's chunks",
            p.stats.stored_bytes
        );
        verify_clean(&self.repo);
    }
}

/// Bytes of packs the repository holds, less staged ones (a pack being written, or left by a
/// killed writer: nothing can use it).
fn stored(repo: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let mut n = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                n += walk(&e.path());
            } else if !e.file_name().to_string_lossy().starts_with(".tmp-") {
                n += md.len();
            }
        }
        n
    }
    walk(&repo.join("data"))
}

fn image(dir: &Path, mib: u64) -> PathBuf {
    let img = dir.join("disk.img");
    bulwark_imagegen::generate(&img, mib << 20, 21).unwrap();
    img
}

fn kill9(pid: u32) {
    let st = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

fn mover_pid(s: &Setup) -> u32 {
    let mut pid = None;
    wait_for(10, "the data mover", || {
        pid = children(s.transport.pid()).first().copied();
        pid.is_some()
    });
    pid.unwrap()
}

fn snapshots_beside(image: &Path) -> Vec<String> {
    std::fs::read_dir(image.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bulwark-snap-"))
        .collect()
}

#[test]
fn agent_killed_mid_stream() {
    let mut s = setup(None);
    // The image lives on XFS so that the agent takes a reflink snapshot it can leave behind.
    let xfs = MountedFs::create(s.c.dir.path(), "xfs", 512 << 20);
    let img = image(xfs.path(), 160);
    let out = s.interrupted(&img, "reflink", |s| kill9(s.agent.pid()));
    let err = out.error.unwrap();
    assert!(err.contains("agent a1"), "{err}");
    // The restarted agent removes the snapshot its dead predecessor left.
    s.agent.kill9(); // reaps it, as its service manager would
    s.agent = s.c.start(Role::Agent, "a1", &[]);
    wait_for(10, "stale snapshot removed", || snapshots_beside(&img).is_empty());
    s.rerun(&img);
    assert!(snapshots_beside(&img).is_empty());
}

#[test]
fn data_mover_killed_mid_stream() {
    let s = setup(None);
    let img = image(s.c.dir.path(), 160);
    let out = s.interrupted(&img, "none", |s| kill9(mover_pid(s)));
    let err = out.error.unwrap();
    assert!(err.contains("data mover"), "{err}");
    s.rerun(&img);
}

#[test]
fn transport_service_killed_mid_stream() {
    let mut s = setup(None);
    let img = image(s.c.dir.path(), 160);
    let mut mover = 0;
    let out = s.interrupted(&img, "none", |s| {
        mover = mover_pid(s);
        kill9(s.transport.pid());
    });
    assert!(out.error.is_some());
    // The data mover does not outlive the service that started it.
    wait_for(10, "the data mover to end", || !Path::new(&format!("/proc/{mover}")).exists());
    s.transport.kill9();
    s.restart_transport();
    s.rerun(&img);
}

#[test]
fn connection_cut_mid_stream() {
    let s = setup(None);
    let img = image(s.c.dir.path(), 160);
    let out = s.interrupted(&img, "none", |s| {
        let pid = mover_pid(s);
        let listing = bulwark_testkit::run(Command::new("ss").args(["-Htlnp"]));
        let port = listing
            .lines()
            .find(|l| l.contains(&format!("pid={pid},")))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|a| a.rsplit(':').next())
            .expect("the data mover's port")
            .to_string();
        // Kill every established socket of the data mover's port (both ends see a reset).
        let st =
            Command::new("ss").args(["-K", "src", "127.0.0.1", "sport", "=", &format!(":{port}")]).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    });
    let err = out.error.unwrap();
    assert!(err.contains("connection") || err.contains("data mover"), "{err}");
    s.rerun(&img);
}

#[test]
fn repository_filesystem_full() {
    let dir = tempfile::tempdir().unwrap();
    let fs = MountedFs::create(dir.path(), "ext4", 96 << 20);
    let s = setup(Some(fs.path().join("repos")));
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 40 << 20]).unwrap();
    let img = s.c.dir.path().join("random.img");
    std::fs::write(&img, bulwark_testkit::random_bytes(64 << 20, 3)).unwrap();
    let mut spec = volume_spec(&img, "vol");
    spec.set_snapshot(bulwark_proto::domain::SnapshotMode::None.into());
    let out = s.c.run(s.c.task("full", &s.agent, &s.transport, &s.repo, spec));
    assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Failed, "{out:?}");
    let err = out.error.unwrap();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(points(&s.repo).is_empty());
    std::fs::remove_file(&filler).unwrap();
    s.rerun(&img);
}
