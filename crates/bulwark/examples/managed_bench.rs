//! Managed versus standalone backup on loopback, and throttling accuracy. Run by
//! `bench/managed.sh` (which builds in release mode and sets BULWARK_EXE):
//!
//! ```text
//! managed_bench --dir DIR --size-mib 1024 --size-mib 4096 [--throttle-mb 50 --throttle-secs 60]
//! ```
//!
//! For each size: a mixed image on XFS (so both runs get a reflink snapshot and extent change
//! tracking), a standalone full and CBT incremental (`bulwark backup`), then the same through a
//! real agent, transport service and data mover; prints both times, the throughput ratios and
//! the agent's and data mover's peak RSS.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_proto::pb::Throttle;
use bulwark_proto::pki::Role;
use cluster::*;

fn arg_values(name: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
}

fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

fn standalone(repo: &Path, img: &Path, name: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new(bulwark_exe())
        .args(["backup"])
        .arg(img)
        .arg("--repo")
        .arg(repo)
        .args(["--name", name, "--snapshot", "reflink"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    t.elapsed().as_secs_f64()
}

fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let dir = PathBuf::from(arg_values("--dir").pop().unwrap_or_else(|| "/var/tmp".into()));
    let sizes: Vec<u64> = arg_values("--size-mib").iter().map(|s| s.parse().unwrap()).collect();
    let throttle_mb: u64 = arg_values("--throttle-mb").pop().map_or(0, |s| s.parse().unwrap());
    let throttle_secs: u64 = arg_values("--throttle-secs").pop().map_or(60, |s| s.parse().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir_in(&dir).unwrap();
    let c = Cluster::new();
    let repos = work.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let transport = c.start(Role::Transport, "bench-store", &["--root", repos.to_str().unwrap()]);

    for size in sizes {
        // A fresh agent per size, so its peak RSS is this size's.
        let agent = c.start(Role::Agent, &format!("bench-{size}"), &[]);
        let fs_dir = work.path().join(format!("fs-{size}"));
        std::fs::create_dir_all(&fs_dir).unwrap();
        let xfs = bulwark_testkit::MountedFs::create(&fs_dir, "xfs", (size << 20) * 6 + (1 << 30));
        let img = xfs.path().join("disk.img");
        // Best of two rounds each, alternating, every run starting with nothing dirty in the
        // page cache: this machine's timings swing by tens of percent from run to run.
        let (mut full_s, mut incr_s, mut full_m, mut incr_m) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        let (mut full, mut incr) = (None, None);
        for round in 0..2 {
            let (r1, r2) =
                (repos.join(format!("standalone-{size}-{round}")), repos.join(format!("managed-{size}-{round}")));
            init_repo(&r1);
            init_repo(&r2);
            bulwark_imagegen::generate(&img, size << 20, 7).unwrap();
            sync();
            full_s = full_s.min(standalone(&r1, &img, &format!("vol-{round}")));
            bulwark_imagegen::mutate(&img, 2.0, 7, 1).unwrap();
            sync();
            incr_s = incr_s.min(standalone(&r1, &img, &format!("vol-{round}")));
            // The same image and the same changes for the managed runs.
            bulwark_imagegen::generate(&img, size << 20, 7).unwrap();
            let spec = |name: &str| {
                let mut s = volume_spec(&img, name);
                s.set_snapshot(bulwark_proto::domain::SnapshotMode::Reflink.into());
                s.set_cbt(bulwark_proto::domain::CbtMode::Auto.into());
                s
            };
            sync();
            let t = Instant::now();
            let f = c.run(c.task("full", &agent, &transport, &r2, spec(&format!("managed-{round}"))));
            full_m = full_m.min(t.elapsed().as_secs_f64());
            assert_eq!(f.status, bulwark_proto::domain::TaskStatus::Success, "{f:?}");
            bulwark_imagegen::mutate(&img, 2.0, 7, 1).unwrap();
            sync();
            let t = Instant::now();
            let i = c.run(c.task("incr", &agent, &transport, &r2, spec(&format!("managed-{round}"))));
            incr_m = incr_m.min(t.elapsed().as_secs_f64());
            assert_eq!(i.status, bulwark_proto::domain::TaskStatus::Success, "{i:?}");
            (full, incr) = (Some(f), Some(i));
        }
        let (full, incr) = (full.unwrap(), incr.unwrap());
        let cbt = incr.reports[0]["change_tracking"].as_bool().unwrap_or(false);
        let agent_rss = vm_hwm(agent.pid());
        let mover_rss = full.mover_peak_rss_bytes.max(incr.mover_peak_rss_bytes);
        println!(
            "size {size} MiB: full standalone {full_s:.2} s, managed {full_m:.2} s, managed/standalone throughput {:.3}",
            full_s / full_m
        );
        let in_agent = incr.reports[0]["duration_s"].as_f64().unwrap_or(0.0);
        println!(
            "size {size} MiB: CBT incremental (tracking used: {cbt}) standalone {incr_s:.2} s, managed {incr_m:.2} s \
             ({in_agent:.2} s in the agent's pipeline), ratio {:.3}",
            incr_s / incr_m
        );
        println!(
            "size {size} MiB: peak RSS agent {:.1} MiB, data mover {:.1} MiB; sent {:.1} MiB full, {:.1} MiB incremental",
            mib(agent_rss),
            mib(mover_rss),
            mib(full.received_bytes),
            mib(incr.received_bytes)
        );
        drop(xfs);
        std::fs::remove_dir_all(&fs_dir).unwrap();
    }

    if throttle_mb > 0 {
        // Incompressible data, enough for the given seconds at the given rate.
        let agent = c.start(Role::Agent, "bench-throttle", &[]);
        let rate = throttle_mb * 1_000_000;
        let bytes = rate * (throttle_secs + 2);
        let img = work.path().join("random.img");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&img).unwrap());
        let mut written = 0u64;
        let mut seed = 1u64;
        while written < bytes {
            let chunk = bulwark_testkit::random_bytes(64 << 20, seed);
            std::io::Write::write_all(&mut f, &chunk).unwrap();
            written += chunk.len() as u64;
            seed += 1;
        }
        drop(f);
        let repo = repos.join("throttled");
        init_repo(&repo);
        let mut spec = volume_spec(&img, "throttled");
        spec.set_snapshot(bulwark_proto::domain::SnapshotMode::None.into());
        let mut req = c.task("throttled", &agent, &transport, &repo, spec);
        req.throttle = Throttle { bytes_per_s: rate, ..Default::default() };
        let mut samples: Vec<(Instant, u64)> = Vec::new();
        let out = c.rt.block_on(c.manager.run_task(req, |p| samples.push((Instant::now(), p.sent_bytes))));
        assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Success, "{out:?}");
        // The rate over the transfer, from the first to the last progress report that moved,
        // and the worst 10-second window.
        let moving: Vec<&(Instant, u64)> = samples.iter().filter(|s| s.1 > 0).collect();
        let (first, last) = (moving.first().unwrap(), moving.last().unwrap());
        let secs = last.0.duration_since(first.0).as_secs_f64();
        let overall = (last.1 - first.1) as f64 / secs;
        let mut worst: f64 = 0.0;
        for (i, a) in moving.iter().enumerate() {
            if let Some(b) = moving[i..].iter().find(|b| b.0.duration_since(a.0) >= Duration::from_secs(10)) {
                let r = (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64();
                worst = worst.max((r / rate as f64 - 1.0).abs());
            }
        }
        println!(
            "throttle {throttle_mb} MB/s: measured {:.2} MB/s over {secs:.1} s ({:+.2}%), worst 10 s window off by {:.2}%",
            overall / 1e6,
            (overall / rate as f64 - 1.0) * 100.0,
            worst * 100.0
        );
    }
}
