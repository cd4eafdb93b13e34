//! Managed backups into a repository in an S3 bucket: the transport node serves the bucket
//! (`--s3-bucket`, with its own credentials), a data mover writes packs to it, the point
//! restores byte for byte, and a bucket the node does not serve is refused by name. Through
//! the server: an immutable repository in a bucket with Object Lock, whose points retention
//! keeps and whose objects the bucket refuses to delete.

mod cluster;

use std::path::Path;

use bulwark_proto::pki::Role;
use bulwark_repo::storage::location::S3Location;
use bulwark_repo::storage::s3::{Credentials, ObjectLocked, RetentionMode, S3Options, S3Storage};
use bulwark_repo::storage::Location;
use bulwark_testkit::S3Server;
use cluster::server::{cli, start_node_with, start_server};
use cluster::*;

const NODE_KEY: &str = "bulwark-node";
const NODE_SECRET: &str = "bulwark-node-secret";

fn s3(location: &str) -> S3Storage {
    let Location::S3(loc) = location.parse::<Location>().unwrap() else { panic!("{location}") };
    S3Storage::with_options(&loc, Credentials::new(NODE_KEY, NODE_SECRET, None), S3Options::default()).unwrap()
}

#[test]
fn a_data_mover_writes_a_repository_in_a_bucket() {
    let Some(server) = S3Server::start() else { return };
    let c = Cluster::new();
    // The node's credentials and cache; the server never sees either.
    std::env::set_var("AWS_ACCESS_KEY_ID", "bulwark-node");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bulwark-node-secret");
    std::env::set_var("BULWARK_CACHE_DIR", c.dir.path().join("cache"));
    let location = server.location("backups", "site-a");
    let Location::S3(s3) = location.parse::<Location>().unwrap() else { panic!("{location}") };
    let bucket = S3Location { prefix: String::new(), ..s3 };
    S3Storage::with_options(
        &bucket,
        Credentials::new("bulwark-node", "bulwark-node-secret", None),
        S3Options::default(),
    )
    .unwrap()
    .create_bucket(false)
    .unwrap();
    let loc: Location = location.parse().unwrap();
    bulwark_repo::Repository::init(&loc, &Default::default()).unwrap();

    let agent = c.start(Role::Agent, "a1", &[]);
    let roots = c.dir.path().join("repos");
    std::fs::create_dir_all(&roots).unwrap();
    let transport = c.start(Role::Transport, "t1", &["--root", roots.to_str().unwrap(), "--s3-bucket", "backups"]);
    let img = c.dir.path().join("disk.img");
    bulwark_imagegen::generate(&img, 48 << 20, 5).unwrap();
    let mut req = c.task("s3-full", &agent, &transport, Path::new(&location), volume_spec(&img, "vol"));
    req.repository = location.clone();
    let out = c.run(req);
    assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Success, "{out:?}");
    let id = out.points[0].id.as_str().to_string();
    assert_eq!(restore(Path::new(&location), &id, c.dir.path()), std::fs::read(&img).unwrap());
    verify_clean(Path::new(&location));
    let repo = bulwark_repo::Repository::open(&loc, None).unwrap();
    assert_eq!(repo.list_points().unwrap().len(), 1);
    assert!(!repo.storage().list("data/").unwrap().is_empty(), "no packs in the bucket");
    assert!(!roots.read_dir().unwrap().any(|_| true), "the data mover wrote to the node's disk");

    // A bucket the node was not told to serve is refused, naming the option.
    let other = server.location("elsewhere", "x");
    let mut req = c.task("s3-refused", &agent, &transport, Path::new(&other), volume_spec(&img, "vol"));
    req.repository = other;
    let out = c.run(req);
    assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Failed, "{out:?}");
    assert!(format!("{out:?}").contains("--s3-bucket elsewhere"), "{out:?}");
}

#[test]
fn an_immutable_repository_in_a_bucket_through_the_server() {
    let Some(store) = S3Server::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    s3(&store.location("plain", "")).create_bucket(false).unwrap();
    s3(&store.location("locked", "")).create_bucket(true).unwrap();
    let cache = dir.path().join("cache");
    let env = [
        ("AWS_ACCESS_KEY_ID", NODE_KEY),
        ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
        ("BULWARK_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let buckets = ["--s3-bucket", "plain", "--s3-bucket", "locked"];
    let _transport = start_node_with(&server, "transport", "store-1", dir.path(), &buckets, None, &env);

    // A bucket without Object Lock cannot hold an immutable repository: refused, nothing kept.
    let plain = store.location("plain", "main");
    let create = ["repository", "create", "main", "--transport", "store-1", "--immutable-days", "1", "--location"];
    let e = cli(&server, &[&create[..], &[&plain]].concat()).unwrap_err();
    assert!(e.contains("bucket plain has no Object Lock"), "{e}");
    assert_eq!(cli(&server, &["repository", "list"]).unwrap().as_array().unwrap().len(), 0);

    let location = store.location("locked", "main");
    let row = cli(&server, &[&create[..], &[&location, "--pack-size", "4"]].concat()).unwrap();
    assert_eq!(row["immutable_days"], 1, "{row:#}");
    let disk = dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 24 << 20, 9).unwrap();
    let _agent = start_node_with(&server, "agent", "pc-0", dir.path(), &[], None, &[]);
    let job = ["job", "create", "nightly", "--computer", "pc-0", "--repository", "main", "--snapshot", "none"];
    cli(&server, &[&job[..], &["--keep-last", "1", "--source", disk.to_str().unwrap()]].concat()).unwrap();
    for _ in 0..2 {
        let session = cli(&server, &["job", "start", "nightly", "--wait"]).unwrap();
        assert_eq!(session["status"], "success", "{session:#}");
    }
    // Retention asks for one point; the first stays, being locked for a day.
    let points = cli(&server, &["point", "list"]).unwrap();
    assert_eq!(points.as_array().unwrap().len(), 2, "{points:#}");

    // Every point's manifest and packs are locked in COMPLIANCE mode for at least a day, and the
    // bucket refuses to delete them.
    let bucket = s3(&location);
    let day = std::time::SystemTime::now() + std::time::Duration::from_secs(86_000);
    let mut keys: Vec<String> =
        points.as_array().unwrap().iter().map(|p| format!("points/{}.manifest", p["id"].as_str().unwrap())).collect();
    let packs: Vec<String> = bulwark_repo::storage::Storage::list(&bucket, "data/")
        .unwrap()
        .into_iter()
        .map(|e| format!("data/{}", e.name))
        .collect();
    assert!(packs.len() >= 2, "{packs:?}");
    keys.extend(packs);
    for key in &keys {
        let r = bucket.retention(key, None).unwrap().unwrap_or_else(|| panic!("{key} is not locked"));
        assert_eq!(r.mode, RetentionMode::Compliance, "{key}");
        assert!(r.until > day, "{key}: {r:?}");
        let e = bulwark_repo::storage::Storage::delete(&bucket, key).unwrap_err();
        assert!(ObjectLocked::find(&e).is_some(), "{key}: {e}");
    }
    let id = points[0]["id"].as_str().unwrap();
    let restored = dir.path().join("restored.img");
    let done = cli(&server, &["restore", id, "--to", restored.to_str().unwrap()]).unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&disk).unwrap(), "the restored image differs");
}

/// Evacuation across transport nodes: an extent local to one node moves into an extent in a
/// bucket that another node serves, the copy run by the node that opens both (the first, which
/// serves the bucket too); an extent local to the other node cannot take it, and says why.
#[test]
fn an_extent_is_evacuated_into_a_bucket_another_node_serves() {
    let Some(store) = S3Server::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    s3(&store.location("pool", "")).create_bucket(false).unwrap();
    let cache = dir.path().join("cache");
    let env = [
        ("AWS_ACCESS_KEY_ID", NODE_KEY),
        ("AWS_SECRET_ACCESS_KEY", NODE_SECRET),
        ("BULWARK_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let (roots1, roots2) = (dir.path().join("roots-1"), dir.path().join("roots-2"));
    let mut nodes = Vec::new();
    for (node, roots) in [("store-1", &roots1), ("store-2", &roots2)] {
        std::fs::create_dir_all(roots).unwrap();
        let args = ["--root", roots.to_str().unwrap(), "--s3-bucket", "pool"];
        nodes.push(start_node_with(&server, "transport", node, dir.path(), &args, None, &env));
    }
    let create = |name: &str, node: &str, location: &str| {
        let args = ["repository", "create", name, "--transport", node, "--location", location];
        cli(&server, &args).unwrap();
    };
    create("near", "store-1", roots1.join("near").to_str().unwrap());
    create("other", "store-2", roots2.join("other").to_str().unwrap());
    create("far", "store-2", &store.location("pool", "far"));
    cli(&server, &["scale-out", "create", "sobr", "--extent", "near"]).unwrap();

    let disk = dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 16 << 20, 21).unwrap();
    let _agent = start_node_with(&server, "agent", "pc-0", dir.path(), &[], None, &[]);
    let job = ["job", "create", "nightly", "--computer", "pc-0", "--repository", "sobr", "--snapshot", "none"];
    cli(&server, &[&job[..], &["--source", disk.to_str().unwrap()]].concat()).unwrap();
    let session = cli(&server, &["job", "start", "nightly", "--wait"]).unwrap();
    assert_eq!(session["status"], "success", "{session:#}");
    let first = cli(&server, &["point", "list"]).unwrap()[0].clone();
    assert_eq!(first["repository"], "near", "{first:#}");
    let id = first["id"].as_str().unwrap().to_string();

    // An extent local to another node: no node opens both, so the evacuation is refused.
    cli(&server, &["scale-out", "update", "sobr", "--add-extent", "other"]).unwrap();
    cli(&server, &["scale-out", "maintenance", "sobr", "near", "on"]).unwrap();
    let e = cli(&server, &["scale-out", "evacuate", "sobr", "near"]).unwrap_err();
    assert!(e.contains("other (local to node store-2)") && e.contains("no node opens both"), "{e}");
    assert_eq!(cli(&server, &["point", "list"]).unwrap()[0]["repository"], "near");

    // An extent in the bucket: store-1 copies into it, though store-2 serves it.
    cli(&server, &["scale-out", "update", "sobr", "--add-extent", "far", "--remove-extent", "other"]).unwrap();
    let moved = cli(&server, &["scale-out", "evacuate", "sobr", "near"]).unwrap();
    assert_eq!(moved["moved_points"], 1, "{moved:#}");
    assert_eq!(moved["empty"], true, "{moved:#}");
    assert_eq!(moved["chains"][0]["to"], "far", "{moved:#}");
    let far = bulwark_repo::Repository::open(store.location("pool", "far").parse::<Location>().unwrap(), None).unwrap();
    assert_eq!(far.list_points().unwrap().len(), 1);
    let near = bulwark_repo::Repository::open(Location::Local(roots1.join("near")), None).unwrap();
    assert!(near.list_points().unwrap().is_empty(), "the evacuated extent still holds the point");

    // Restored through store-2 byte for byte, and the chain goes on there incrementally.
    let restored = dir.path().join("restored.img");
    let done = cli(&server, &["restore", &id, "--to", restored.to_str().unwrap()]).unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&disk).unwrap(), "the restored image differs");
    let session = cli(&server, &["job", "start", "nightly", "--wait"]).unwrap();
    assert_eq!(session["status"], "success", "{session:#}");
    let points = cli(&server, &["point", "list"]).unwrap();
    let newest = points.as_array().unwrap().iter().find(|p| p["id"] != id.as_str()).unwrap().clone();
    assert_eq!(newest["repository"], "far", "{newest:#}");
    let show = cli(&server, &["point", "show", newest["id"].as_str().unwrap()]).unwrap();
    assert_eq!(show["manifest"]["parent"], id.as_str(), "{show:#}");
}
