//! The managed health check end to end, with real processes: `bulwark server` (on SQLite, and
//! on PostgreSQL when BULWARK_TEST_POSTGRES names a server), a transport node and two agents,
//! one job per computer. `bulwark repository verify` finds a chunk of one computer's point
//! damaged (exit status 3, the point named, the catalog marks it damaged while the other
//! computer's point stays ok), finds it whole again once the chunk is repaired, and reports
//! points the repository holds that the catalog does not know and catalog points whose
//! manifest is gone. A check scheduled on the repository finds damage on its own.

mod cluster;
mod stored;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cluster::bulwark_exe;
use cluster::server::{cli, start_node, start_server, PostgresDb, Server};
use serde_json::Value;

/// `bulwark repository verify NAME` (with --json when asked): exit status, stdout, stderr.
fn verify(server: &Server, repository: &str, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(bulwark_exe());
    cmd.args(["repository", "verify", repository]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .env("BULWARK_SERVER", format!("https://{}", server.address))
        .env("BULWARK_TOKEN", cluster::server::admin_token(server))
        .env("BULWARK_CA_CERT", server.dir.join("ca.pem"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The catalog's view of one point (`bulwark point list --json`).
fn catalog_point(server: &Server, id: &str) -> Value {
    let points = cli(server, &["point", "list"]).unwrap();
    points.as_array().unwrap().iter().find(|p| p["id"] == id).unwrap_or_else(|| panic!("{id} in {points:#}")).clone()
}

/// Where the chunks a point references are stored.
fn chunk_files(repo: &Path, point: &str) -> HashSet<stored::StoredChunk> {
    stored::stored_chunks(repo, None, Some(point)).into_iter().collect()
}

fn health_check(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), db);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let transport = start_node(&server, "transport", "store-1", dir.path(), &["--root", repos.to_str().unwrap()], None);
    let repo = repos.join("main");
    cli(&server, &["repository", "create", "main", "--transport", "store-1", "--path", repo.to_str().unwrap()])
        .unwrap();

    // Two computers, a job each, over disks of their own: their points share no chunk.
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..2u64 {
        let (computer, job) = (format!("pc-{i}"), format!("nightly-{i}"));
        let disk = dir.path().join(format!("disk-{i}.img"));
        bulwark_imagegen::generate(&disk, 16 << 20, 70 + i).unwrap();
        agents.push(start_node(&server, "agent", &computer, dir.path(), &[], None));
        let create = ["job", "create", &job, "--computer", &computer, "--repository", "main", "--snapshot", "none"];
        cli(&server, &[&create[..], &["--source", disk.to_str().unwrap()]].concat()).unwrap();
        let session = cli(&server, &["job", "start", &job, "--wait"]).unwrap();
        assert_eq!(session["status"], "success", "{session:#}");
        let points = cli(&server, &["point", "list", "--computer", &computer]).unwrap();
        ids.push(points[0]["id"].as_str().unwrap().to_string());
    }
    let (damaged, whole) = (ids[0].clone(), ids[1].clone());
    assert!(catalog_point(&server, &damaged)["health"].is_null(), "never checked yet");

    // A healthy repository: exit status 0, every point ok with the time of the check.
    let (code, out, err) = verify(&server, "main", false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("healthy"), "{out}");
    for id in &ids {
        let p = catalog_point(&server, id);
        assert_eq!(p["health"], "ok", "{p:#}");
        assert!(p["verified_at"].is_string(), "{p:#}");
    }

    // One byte flipped in a chunk only pc-0's point references.
    let only_ours: Vec<stored::StoredChunk> =
        chunk_files(&repo, &damaged).difference(&chunk_files(&repo, &whole)).cloned().collect();
    let ours = only_ours.iter().min().expect("pc-0's point has chunks of its own").clone();
    let chunk = ours.path.clone();
    let original = std::fs::read(&chunk).unwrap();
    let mut flipped = original.clone();
    flipped[(ours.offset + ours.len / 2) as usize] ^= 0x40;
    std::fs::write(&chunk, &flipped).unwrap();

    let (code, out, err) = verify(&server, "main", false);
    assert_eq!(code, 3, "damage is exit status 3: {out}{err}");
    let line = out.lines().find(|l| l.contains(&damaged)).unwrap_or_else(|| panic!("{damaged} named: {out}"));
    assert!(line.starts_with("DAMAGED"), "{out}");
    assert!(out.contains("DAMAGE FOUND"), "{out}");
    assert!(out.contains("bulwark job start nightly-0"), "what to do: {out}");
    assert!(!out.contains("nightly-1"), "only the damaged chain's job is named: {out}");
    let p = catalog_point(&server, &damaged);
    assert_eq!(p["health"], "damaged", "{p:#}");
    let detail = p["health_detail"].as_str().unwrap();
    assert!(detail.contains("damaged range"), "{detail}");
    let damaged_at = p["verified_at"].as_str().unwrap().to_string();
    let p = catalog_point(&server, &whole);
    assert_eq!(p["health"], "ok", "the other computer's point stays ok: {p:#}");
    assert!(p["health_detail"].is_null(), "{p:#}");
    // The table shows the column too.
    let table = Command::new(bulwark_exe())
        .args(["point", "list"])
        .env("BULWARK_SERVER", format!("https://{}", server.address))
        .env("BULWARK_TOKEN", cluster::server::admin_token(&server))
        .env("BULWARK_CA_CERT", server.dir.join("ca.pem"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().next().unwrap().contains("HEALTH"), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&damaged) && l.contains(" DAMAGED ")), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with(&format!("DAMAGED  {damaged}: ")) && l.contains("damaged range")),
        "{table}"
    );

    // Repaired: the point is ok again, with a newer check time.
    std::fs::write(&chunk, &original).unwrap();
    let (code, out, err) = verify(&server, "main", false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.contains(&damaged) && l.contains("was damaged")), "{out}");
    let p = catalog_point(&server, &damaged);
    assert_eq!(p["health"], "ok", "{p:#}");
    assert!(p["health_detail"].is_null(), "{p:#}");
    let verified_at: jiff::Timestamp = p["verified_at"].as_str().unwrap().parse().unwrap();
    assert!(verified_at > damaged_at.parse().unwrap(), "{verified_at} after {damaged_at}");

    // A point the catalog does not know (a standalone backup into the same directory) and a
    // catalog point whose manifest is gone: both reported, the latter marked damaged.
    let stray_disk = dir.path().join("stray.img");
    bulwark_imagegen::generate(&stray_disk, 4 << 20, 99).unwrap();
    let st = Command::new(bulwark_exe())
        .arg("backup")
        .arg(&stray_disk)
        .arg("--repo")
        .arg(&repo)
        .args(["--name", "stray", "--snapshot", "none", "--json"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let stray = serde_json::from_slice::<Value>(&st.stdout).unwrap()["point"].as_str().unwrap().to_string();
    // Gone as a point forgotten behind the server's back is: manifest and index.
    let gone: Vec<(PathBuf, PathBuf)> = ["manifest", "index"]
        .iter()
        .map(|ext| (repo.join("points").join(format!("{whole}.{ext}")), dir.path().join(format!("aside.{ext}"))))
        .collect();
    for (from, to) in &gone {
        std::fs::rename(from, to).unwrap();
    }
    let (code, out, err) = verify(&server, "main", true);
    assert_eq!(code, 3, "a missing point is damage: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["missing"][0]["id"], whole.as_str(), "{v:#}");
    assert_eq!(v["unknown"][0]["id"], stray.as_str(), "{v:#}");
    assert_eq!(v["unknown"][0]["health"], "ok", "{v:#}");
    let p = catalog_point(&server, &whole);
    assert_eq!(p["health"], "damaged", "{p:#}");
    assert!(p["health_detail"].as_str().unwrap().contains("manifest is gone"), "{p:#}");
    assert_eq!(catalog_point(&server, &damaged)["health"], "ok");

    // The point back: healthy again; the stray point is still reported.
    for (from, to) in &gone {
        std::fs::rename(to, from).unwrap();
    }
    let (code, out, err) = verify(&server, "main", false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.contains(&stray) && l.contains("not in the catalog")), "{out}");
    assert_eq!(catalog_point(&server, &whole)["health"], "ok");

    // A scheduled check (every minute, counted from the repository's creation) finds damage
    // on its own: the catalog and the repository's last outcome say so.
    let last_at = |server: &Server| cli(server, &["repository", "show", "main"]).unwrap()["last_verify"]["at"].clone();
    let before = last_at(&server);
    assert!(before.is_string(), "every check leaves its outcome on the repository");
    std::fs::write(&chunk, &flipped).unwrap();
    let r = cli(&server, &["repository", "update", "main", "--verify-every-minutes", "1"]).unwrap();
    assert_eq!(r["verify_schedule"]["every_minutes"], 1, "{r:#}");
    cluster::wait_for(150, "the scheduled health check", || last_at(&server) != before);
    let r = cli(&server, &["repository", "show", "main"]).unwrap();
    assert_eq!(r["last_verify"]["ok"], false, "{r:#}");
    assert_eq!(r["last_verify"]["damaged"], 1, "{r:#}");
    assert_eq!(catalog_point(&server, &damaged)["health"], "damaged");
    assert_eq!(catalog_point(&server, &whole)["health"], "ok");
    let r = cli(&server, &["repository", "update", "main", "--no-verify-schedule"]).unwrap();
    assert!(r["verify_schedule"].is_null(), "{r:#}");
    std::fs::write(&chunk, &original).unwrap();

    // An unknown repository is named.
    let (code, _, err) = verify(&server, "nowhere", false);
    assert_eq!(code, 1);
    assert!(err.contains("no repository \"nowhere\""), "{err}");
    drop((agents, transport));
}

#[test]
fn health_check_on_sqlite_marks_damage_and_repair_in_the_catalog() {
    health_check(None);
}

#[test]
fn health_check_on_postgres_marks_damage_and_repair_in_the_catalog() {
    let Some(db) = PostgresDb::create("health") else { return };
    health_check(Some(&db.url));
}
