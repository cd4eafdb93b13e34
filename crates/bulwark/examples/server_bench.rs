//! The backup server as the number of computers grows. Run by `bench/server.sh` (release
//! build, BULWARK_EXE set, as root):
//!
//! ```text
//! server_bench --dir DIR --computers 10 --computers 50 --computers 200
//! ```
//!
//! For each N: a fresh server (SQLite), a transport node, N agent processes each seeing its own
//! small disk image at the same path (a mount namespace each), one job over the N computers on
//! a repository taking 4 tasks at once. Prints the server's CPU seconds per task and peak RSS
//! during the session, and the most tasks the session's records show running at once.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::time::Instant;

use cluster::server::{cli, max_concurrent, start_node, start_server};

fn arg_values(name: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
}

/// (CPU seconds so far, peak RSS bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    (ticks / 100.0, hwm)
}

fn main() {
    let dir = std::path::PathBuf::from(arg_values("--dir").pop().unwrap_or_else(|| "/var/tmp".into()));
    let sizes: Vec<usize> = arg_values("--computers").iter().map(|s| s.parse().unwrap()).collect();
    for n in sizes {
        let work = tempfile::tempdir_in(&dir).unwrap();
        let server = start_server(&work.path().join("server"), None);
        let repos = work.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        let _transport =
            start_node(&server, "transport", "store", work.path(), &["--root", repos.to_str().unwrap()], None);
        let at = work.path().join("disk.img");
        std::fs::write(&at, b"").unwrap();
        let t = Instant::now();
        let mut agents = Vec::new();
        let mut computers = Vec::new();
        for i in 0..n {
            let disk = work.path().join(format!("disk-{i}.img"));
            bulwark_imagegen::generate(&disk, 2 << 20, 1000 + i as u64).unwrap();
            let name = format!("pc-{i}");
            agents.push(start_node(&server, "agent", &name, work.path(), &[], Some((&disk, &at))));
            computers.push(name);
        }
        let joined = t.elapsed().as_secs_f64();
        let repo = repos.join("main");
        cli(
            &server,
            &[
                "repository",
                "create",
                "main",
                "--transport",
                "store",
                "--path",
                repo.to_str().unwrap(),
                "--max-tasks",
                "4",
            ],
        )
        .unwrap();
        let mut args = vec![
            "job",
            "create",
            "all",
            "--repository",
            "main",
            "--source",
            at.to_str().unwrap(),
            "--snapshot",
            "none",
        ];
        for c in &computers {
            args.extend(["--computer", c.as_str()]);
        }
        cli(&server, &args).unwrap();
        let pid = server.child.id();
        let (cpu0, _) = usage(pid);
        let t = Instant::now();
        let session = cli(&server, &["job", "start", "all", "--wait"]).unwrap();
        let wall = t.elapsed().as_secs_f64();
        let (cpu1, rss) = usage(pid);
        assert_eq!(session["status"], "success", "{session:#}");
        let tasks = session["tasks"].as_array().unwrap().len();
        println!(
            "{n} computers: {tasks} tasks in {wall:.1} s, server CPU {:.1} ms per task, server peak RSS {:.1} MiB, \
             at most {} tasks at once on a 4-task repository (joining took {joined:.1} s)",
            (cpu1 - cpu0) * 1000.0 / tasks as f64,
            rss as f64 / (1 << 20) as f64,
            max_concurrent(&session)
        );
        assert!(max_concurrent(&session) <= 4);
        drop(agents);
    }
}
