//! The quick start: one command that shows the whole data path on a generated disk image.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use bulwark_agent::{BackupOptions, RestoreOptions};
use bulwark_repo::{InitOptions, Repository};

use crate::ui;

const MARKER: &str = ".bulwark-demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Working directory (created; an earlier demo's is cleared and its daemons stopped).
    #[arg(long, default_value = "bulwark-demo")]
    dir: std::path::PathBuf,
    /// Size of the generated disk image in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Without a server: back up, restore and verify straight against a repository.
    #[arg(long)]
    standalone: bool,
}

/// `bulwark demo`: the quick start, managed or standalone.
pub fn run(a: DemoArgs, cancel: &AtomicBool) -> Result<std::process::ExitCode> {
    if a.standalone {
        run_standalone(&a.dir, a.size_mib, cancel)?;
    } else {
        run_managed(&a.dir, a.size_mib)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn file_digest(path: &Path) -> Result<blake3::Hash> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// A fresh demo directory (an earlier demo's is cleared, anything else refused).
fn prepare(dir: &Path, size_mib: u64) -> Result<()> {
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!("{} exists and was not made by `bulwark demo`; choose another --dir", dir.display());
        }
        if let Ok(pids) = std::fs::read_to_string(dir.join("pids")) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) on the daemons an earlier demo started and recorded.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by bulwark demo\n")?;
    Ok(())
}

/// Starts a daemon (this program) that outlives the demo; its first stdout line. Its log is
/// its user's alone: daemons log the names and addresses of what they serve.
fn daemon(dir: &Path, name: &str, args: &[&str]) -> Result<(u32, serde_json::Value)> {
    use std::io::BufRead;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let path = dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the {name}"))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let v = serde_json::from_str(&line)
        .with_context(|| format!("the {name} did not start; see {}", dir.join(format!("{name}.log")).display()))?;
    Ok((child.id(), v))
}

/// The all-in-one quick start: a server (SQLite), a transport node and an agent on loopback,
/// joined with tokens; a job over a generated disk image run full, then incremental; the
/// sessions and points shown; everything left running with what is needed to explore it.
fn run_managed(dir: &Path, size_mib: u64) -> Result<()> {
    prepare(dir, size_mib)?;
    let dir = &dir.canonicalize()?;
    let image = dir.join("disk.img");
    let repos = dir.join("repositories");
    std::fs::create_dir_all(&repos)?;
    println!("1. generating a {size_mib} MiB disk image ({}): 35% zero, 35% text, 30% random", image.display());
    bulwark_imagegen::generate(&image, size_mib << 20, 1)?;

    let server_dir = dir.join("server");
    let s = |p: &Path| p.display().to_string();
    let (server_pid, v) = daemon(dir, "server", &["server", "--data-dir", &s(&server_dir), "--listen", "127.0.0.1:0"])?;
    let mut pids = vec![server_pid];
    let url = format!("https://{}", v["listening"].as_str().unwrap_or_default());
    let token = std::fs::read_to_string(server_dir.join("initial-admin-token"))?.trim().to_string();
    let ca = server_dir.join("ca.pem");
    println!("2. server at {url} (config database: {})", server_dir.join("config.db").display());
    let api = crate::admin::Api::connect(&url, &token, Some(&ca))?;
    let join = |role: &str, name: &str| -> Result<String> {
        Ok(api.call("POST", "/tokens", Some(serde_json::json!({"role": role, "name": name})))?["token"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    let node = |role: &str, name: &str, extra: &[&str]| -> Result<u32> {
        let t = join(role, name)?;
        let data = s(&dir.join(name));
        let mut args = vec![role, "--server", &url, "--join-token", &t, "--name", name, "--data-dir", &data];
        args.extend(["--listen", "127.0.0.1:0"]);
        args.extend(extra);
        Ok(daemon(dir, name, &args)?.0)
    };
    // Recorded as each starts, so a failed demo's daemons are stopped by the next one.
    let record = |pids: &[u32]| {
        std::fs::write(dir.join("pids"), pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" "))
    };
    record(&pids)?;
    pids.push(node("transport", "demo-store", &["--root", &s(&repos)])?);
    record(&pids)?;
    pids.push(node("agent", "demo-computer", &[])?);
    record(&pids)?;
    println!("3. transport node demo-store and agent demo-computer joined with one-time tokens");
    api.call(
        "POST",
        "/repositories",
        Some(serde_json::json!({"name": "demo", "transport": "demo-store", "path": s(&repos.join("demo"))})),
    )?;
    api.call(
        "POST",
        "/jobs",
        Some(serde_json::json!({
            "name": "demo", "computers": ["demo-computer"], "repository": "demo", "sources": [s(&image)],
            "retention": {"keep_last": 7}
        })),
    )?;
    println!("4. repository demo and job demo created");
    let mut sessions = Vec::new();
    for (step, what) in [(5, "full backup"), (6, "incremental after changing 1% of the image")] {
        if step == 6 {
            bulwark_imagegen::mutate(&image, 1.0, 1, 0)?;
        }
        println!("{step}. job demo: {what}");
        let started = api.call("POST", "/jobs/demo/start", None)?;
        let crate::jobs::Waited::Ended(done) =
            crate::jobs::wait_session(&api, started["id"].as_str().unwrap_or_default())?
        else {
            bail!("interrupted; the daemons keep running (pids in {})", dir.join("pids").display());
        };
        if done["status"] == "failed" {
            bail!("the session failed: {}; see the logs in {}", done["tasks"][0]["error"], dir.display());
        }
        sessions.push(done);
    }
    let expected = file_digest(&image)?;
    let points = api.call("GET", "/points", None)?;
    let last = points.as_array().and_then(|p| p.last()).context("no restore point recorded")?;
    let restored = dir.join("restored.img");
    let repo = Repository::open(repos.join("demo"), None)?;
    let m = repo.resolve(last["id"].as_str().unwrap_or_default())?;
    bulwark_agent::restore_volume(&repo, &m, &restored, &RestoreOptions::default(), &|_| {}, &AtomicBool::new(false))?;
    if file_digest(&restored)? != expected {
        bail!("the restored image differs from the source: this is a bug, please report it");
    }
    println!("7. the incremental point restores byte-identical to the image ({})", restored.display());
    println!();
    crate::admin::sessions_table(&api.call("GET", "/sessions", None)?);
    println!();
    let rows: Vec<_> = points.as_array().into_iter().flatten().map(ui::PointRow::of_catalog).collect();
    ui::points_table(&rows);
    let sent: Vec<u64> = sessions.iter().map(|s| s["tasks"][0]["sent_bytes"].as_u64().unwrap_or(0)).collect();
    println!();
    println!(
        "sent {:.1} MiB for the full backup, {:.1} MiB for the incremental",
        sent[0] as f64 / 1048576.0,
        sent[1] as f64 / 1048576.0
    );
    println!();
    println!(
        "The server, transport node and agent keep running (pids {}). To explore:",
        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    );
    println!("  export BULWARK_SERVER={url}");
    println!("  export BULWARK_TOKEN={token}");
    println!("  export BULWARK_CA_CERT={}", ca.display());
    println!("  bulwark job list; bulwark session list; bulwark point list; bulwark computer show demo-computer");
    println!("Stop them with: kill {}", pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" "));
    Ok(())
}

/// The standalone demo: the data path straight against a repository, no server.
fn run_standalone(dir: &Path, size_mib: u64, cancel: &AtomicBool) -> Result<()> {
    prepare(dir, size_mib)?;
    let image = dir.join("disk.img");
    let repo_path = dir.join("repo");

    println!("1. generating a {size_mib} MiB disk image ({}): 35% zero, 35% text, 30% random", image.display());
    bulwark_imagegen::generate(&image, size_mib << 20, 1)?;
    let first = file_digest(&image)?;

    println!("2. creating repository {}", repo_path.display());
    let repo = Repository::init(&repo_path, &InitOptions::default())?;
    let opts = BackupOptions::new("demo-disk");

    println!("3. full backup");
    let bar = ui::bar(size_mib << 20, "backup", false);
    let full = bulwark_agent::backup_volume(&repo, &image, &opts, &|n| bar.inc(n), cancel)?;
    bar.finish_and_clear();

    println!("4. changing 1% of the image, then an incremental backup");
    bulwark_imagegen::mutate(&image, 1.0, 1, 0)?;
    let second = file_digest(&image)?;
    let bar = ui::bar(size_mib << 20, "backup", false);
    let incr = bulwark_agent::backup_volume(&repo, &image, &opts, &|n| bar.inc(n), cancel)?;
    bar.finish_and_clear();

    println!("5. restoring both points and comparing them with the image as it was backed up");
    let mut restores = Vec::new();
    for (report, expected, file) in [(&full, first, "restored-full.img"), (&incr, second, "restored-incremental.img")] {
        let m = repo.resolve(&report.point)?;
        let target = dir.join(file);
        let bar = ui::bar(m.volume_size, "restore", false);
        let r = bulwark_agent::restore_volume(&repo, &m, &target, &RestoreOptions::default(), &|n| bar.inc(n), cancel)?;
        bar.finish_and_clear();
        let same = file_digest(&target)? == expected;
        if !same {
            bail!(
                "restore of {} into {} differs from the source: this is a bug, please report it",
                m.id,
                target.display()
            );
        }
        restores.push(r);
    }

    println!("6. verifying the repository");
    let v = bulwark_repo::verify::verify(
        &repo,
        bulwark_repo::verify::Selection::All,
        bulwark_agent::default_threads(),
        &|_| {},
    )?;
    if !v.ok {
        bail!("verify found damage in a fresh repository: this is a bug, please report it");
    }

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "step", "read MiB", "new MiB", "stored MiB", "seconds", "MiB/s"
    );
    for (label, r) in [("full backup", &full), ("incremental (1%)", &incr)] {
        let s = &r.stats;
        println!(
            "{label:<22} {:>10.1} {:>10.1} {:>10.1} {:>9.2} {:>11.0}",
            mib(s.read_bytes),
            mib(s.new_bytes),
            mib(s.stored_bytes),
            s.duration_s,
            mib(s.read_bytes) / s.duration_s.max(1e-6)
        );
    }
    for (label, r) in [("restore full", &restores[0]), ("restore incremental", &restores[1])] {
        println!(
            "{label:<22} {:>10} {:>10} {:>10.1} {:>9.2} {:>11.0}",
            "",
            "",
            mib(r.written_bytes),
            r.duration_s,
            mib(r.volume_size) / r.duration_s.max(1e-6)
        );
    }
    println!();
    println!(
        "both restores are byte-identical to the image at backup time; verify checked {} chunks: healthy",
        v.chunks_checked
    );
    println!(
        "the incremental stored {:.2}% of what the full stored",
        100.0 * incr.stats.stored_bytes as f64 / full.stats.stored_bytes.max(1) as f64
    );
    println!("explore: bulwark points --repo {}", repo_path.display());
    Ok(())
}
