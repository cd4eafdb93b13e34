//! Scale-out repositories end to end, with real processes (`bulwark server`, a transport node
//! serving three repositories, two agents): a job writing to the scale-out repository places
//! each computer's chain on its own extent and keeps it there (the next point is an incremental
//! on the same extent); an extent in maintenance takes no backups (its chain's task fails saying
//! what to do); evacuating it moves its chains, with their ids and times, into another extent,
//! where they restore byte for byte and continue incrementally; the emptied extent is removed.
//! Refusals: a job writing to an extent directly, an extent in two scale-out repositories, names
//! shared with repositories, evacuation outside maintenance, removing an extent that holds data.

mod cluster;

use std::path::Path;

use cluster::server::{cli, start_node, start_server, Server};
use serde_json::Value;

fn points(server: &Server) -> Vec<Value> {
    cli(server, &["point", "list"]).unwrap().as_array().unwrap().clone()
}

/// The newest point of `computer` (id, repository).
fn latest(server: &Server, computer: &str) -> (String, String) {
    let mut mine: Vec<Value> = points(server).into_iter().filter(|p| p["computer"] == computer).collect();
    mine.sort_by_key(|p| p["created"].as_str().unwrap().to_string());
    let p = mine.last().unwrap_or_else(|| panic!("no point of {computer}"));
    (p["id"].as_str().unwrap().into(), p["repository"].as_str().unwrap().into())
}

fn parent(server: &Server, id: &str) -> Option<String> {
    cli(server, &["point", "show", id]).unwrap()["manifest"]["parent"].as_str().map(String::from)
}

fn restore_matches(server: &Server, id: &str, disk: &Path, dir: &Path) {
    let to = dir.join(format!("{id}.img"));
    let done = cli(server, &["restore", id, "--to", to.to_str().unwrap()]).unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    assert!(std::fs::read(&to).unwrap() == std::fs::read(disk).unwrap(), "{id} restores other bytes than {disk:?}");
}

#[test]
fn chains_are_placed_on_extents_kept_there_and_evacuated() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let _transport =
        start_node(&server, "transport", "store-1", dir.path(), &["--root", repos.to_str().unwrap()], None);
    for r in ["r1", "r2", "r3"] {
        let at = repos.join(r);
        let create = ["repository", "create", r, "--transport", "store-1", "--max-tasks", "1", "--path"];
        cli(&server, &[&create[..], &[at.to_str().unwrap()]].concat()).unwrap();
    }
    let pool =
        cli(&server, &["scale-out", "create", "pool", "--extent", "r1", "--extent", "r2", "--policy", "performance"])
            .unwrap();
    assert_eq!(pool["extents"].as_array().unwrap().len(), 2, "{pool:#}");

    // Refused: the name of a repository, an extent twice, a job on an extent directly.
    let e = cli(&server, &["scale-out", "create", "r3", "--extent", "r3"]).unwrap_err();
    assert!(e.contains("r3 is the name of a repository"), "{e}");
    let e = cli(&server, &["scale-out", "create", "other", "--extent", "r1"]).unwrap_err();
    assert!(e.contains("already an extent of scale-out repository pool"), "{e}");
    let e = cli(
        &server,
        &["repository", "create", "pool", "--transport", "store-1", "--path", repos.join("p").to_str().unwrap()],
    )
    .unwrap_err();
    assert!(e.contains("name of a scale-out repository"), "{e}");

    let mut disks = Vec::new();
    let mut agents = Vec::new();
    for i in 0..2u64 {
        let disk = dir.path().join(format!("disk-{i}.img"));
        bulwark_imagegen::generate(&disk, 12 << 20, 40 + i).unwrap();
        agents.push(start_node(&server, "agent", &format!("pc-{i}"), dir.path(), &[], None));
        disks.push(disk);
    }
    let e = cli(&server, &["job", "create", "direct", "--computer", "pc-0", "--repository", "r1", "--source", "/x"])
        .unwrap_err();
    assert!(e.contains("extent of scale-out repository pool"), "{e}");
    // A job per computer, each over a disk of its own, both writing to the pool.
    for (i, disk) in disks.iter().enumerate() {
        let (job, computer) = (format!("nightly-{i}"), format!("pc-{i}"));
        let create = ["job", "create", &job, "--computer", &computer, "--repository", "pool", "--snapshot", "none"];
        cli(&server, &[&create[..], &["--source", disk.to_str().unwrap()]].concat()).unwrap();
    }
    let run = |i: usize| cli(&server, &["job", "start", &format!("nightly-{i}"), "--wait"]).unwrap();

    // First points: the chains go to different extents (the second to the one holding less).
    for i in 0..2 {
        assert_eq!(run(i)["status"], "success");
    }
    let (first0, on0) = latest(&server, "pc-0");
    let (first1, on1) = latest(&server, "pc-1");
    assert_ne!(on0, on1, "both chains on {on0}");
    // Later points stay with their chain, as incrementals.
    let mut bytes = std::fs::read(&disks[0]).unwrap();
    bytes[4096..8192].fill(0x5a);
    std::fs::write(&disks[0], &bytes).unwrap();
    for i in 0..2 {
        assert_eq!(run(i)["status"], "success");
    }
    let (second0, again0) = latest(&server, "pc-0");
    let (second1, again1) = latest(&server, "pc-1");
    assert_eq!((again0.as_str(), again1.as_str()), (on0.as_str(), on1.as_str()));
    assert_eq!(parent(&server, &second0).as_deref(), Some(first0.as_str()));
    assert_eq!(parent(&server, &second1).as_deref(), Some(first1.as_str()));

    // Maintenance: pc-0's chain cannot run and says what to do; pc-1's runs.
    cli(&server, &["scale-out", "maintenance", "pool", &on0, "on"]).unwrap();
    cli(&server, &["job", "start", "nightly-0", "--wait"]).expect_err("a chain on an extent in maintenance");
    let sessions = cli(&server, &["session", "list", "--job", "nightly-0"]).unwrap();
    let last =
        sessions.as_array().unwrap().iter().max_by_key(|s| s["started"].as_str().unwrap_or("").to_string()).unwrap();
    let failed = cli(&server, &["session", "show", last["id"].as_str().unwrap()]).unwrap();
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let why = failed.to_string();
    assert!(why.contains("maintenance") && why.contains(&format!("bulwark scale-out evacuate pool {on0}")), "{why}");
    assert_eq!(run(1)["status"], "success");

    // Evacuation needs maintenance, and another extent on the same node: r3 joins the pool.
    let e = cli(&server, &["scale-out", "evacuate", "pool", &on1]).unwrap_err();
    assert!(e.contains("maintenance first"), "{e}");
    let e = cli(&server, &["scale-out", "update", "pool", "--remove-extent", &on0]).unwrap_err();
    assert!(e.contains("evacuate it"), "{e}");
    cli(&server, &["scale-out", "update", "pool", "--add-extent", "r3"]).unwrap();
    let moved = cli(&server, &["scale-out", "evacuate", "pool", &on0]).unwrap();
    assert_eq!(moved["moved_points"], 2, "{moved:#}");
    assert_eq!(moved["empty"], true, "{moved:#}");
    // The policy sent the chain to the extent holding the least: r3, which is empty.
    assert_eq!(moved["chains"][0]["to"], "r3", "{moved:#}");
    let (still, now_on) = latest(&server, "pc-0");
    assert_eq!((still.as_str(), now_on.as_str()), (second0.as_str(), "r3"));
    let emptied = bulwark_repo::Repository::open(repos.join(&on0), None).unwrap();
    assert!(emptied.list_points().unwrap().is_empty(), "the evacuated extent still holds points");
    restore_matches(&server, &second0, &disks[0], dir.path());
    // The chain goes on where it went, incrementally.
    let done = run(0);
    assert_eq!(done["status"], "success", "{done:#}");
    let (third0, on) = latest(&server, "pc-0");
    assert_eq!(on, "r3");
    assert_eq!(parent(&server, &third0).as_deref(), Some(second0.as_str()));
    restore_matches(&server, &third0, &disks[0], dir.path());

    // The empty extent leaves the pool and can be deleted.
    let pool = cli(&server, &["scale-out", "update", "pool", "--remove-extent", &on0]).unwrap();
    assert!(!pool.to_string().contains(&format!("\"{on0}\"")), "{pool:#}");
    cli(&server, &["repository", "delete", &on0]).unwrap();
    let e = cli(&server, &["repository", "delete", &on1]).unwrap_err();
    assert!(e.contains("extent of scale-out repository pool"), "{e}");
}
