//! Managed backups into a repository in an S3 bucket: the transport node serves the bucket
//! (`--s3-bucket`, with its own credentials), a data mover writes packs to it, the point
//! restores byte for byte, and a bucket the node does not serve is refused by name.

mod cluster;

use std::path::Path;

use bulwark_proto::pki::Role;
use bulwark_repo::storage::location::S3Location;
use bulwark_repo::storage::s3::{Credentials, S3Options, S3Storage};
use bulwark_repo::storage::Location;
use bulwark_testkit::S3Server;
use cluster::*;

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
