//! Managed backups end to end: real agent and transport processes join the server's CA, the
//! backup manager runs tasks through them, and the points restore byte for byte.

mod cluster;
mod stored;

use bulwark_proto::pki::Role;
use cluster::*;

#[test]
fn join_run_tasks_and_restore_byte_identical() {
    let c = Cluster::new();
    let repos = c.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let repo = repos.join("main");
    init_repo(&repo);
    let agent = c.start(Role::Agent, "web-1", &[]);
    let transport = c.start(Role::Transport, "store-1", &["--root", repos.to_str().unwrap()]);

    // Joined: certificates kept owner-only, both nodes recorded with their addresses.
    for d in [&agent, &transport] {
        for f in ["node.key", "node.pem", "ca.pem"] {
            let mode = std::fs::metadata(d.data_dir.join(f)).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "{f}");
        }
    }
    let names: Vec<String> = c.nodes.nodes().iter().map(|n| format!("{}:{}", n.role, n.name)).collect();
    assert!(names.contains(&"agent:web-1".into()) && names.contains(&"transport:store-1".into()), "{names:?}");

    // The inventory names the computer's block devices.
    let inv = c.rt.block_on(c.manager.inventory(&agent.node())).unwrap();
    assert!(inv["devices"].as_array().is_some_and(|d| !d.is_empty()), "{inv}");

    let img = c.dir.path().join("disk.img");
    bulwark_imagegen::generate(&img, 64 << 20, 5).unwrap();
    let original = std::fs::read(&img).unwrap();
    let mut progress = Vec::new();
    let out = c.rt.block_on(
        c.manager
            .run_task(c.task("t1", &agent, &transport, &repo, volume_spec(&img, "web-1-disk")), |p| progress.push(*p)),
    );
    assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Success, "{out:?}");
    assert_eq!(out.points.len(), 1);
    let full = out.points[0].clone();
    assert_eq!(restore(&repo, full.id.as_str(), c.dir.path()), original);
    assert!(progress.last().is_none_or(|p| p.total_bytes == 64 << 20));

    // An incremental: changed blocks only cross the network; both points restore.
    let changed = bulwark_imagegen::mutate(&img, 3.0, 5, 1).unwrap();
    assert!(!changed.is_empty());
    let second = std::fs::read(&img).unwrap();
    let out = c.run(c.task("t2", &agent, &transport, &repo, volume_spec(&img, "web-1-disk")));
    assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Success, "{out:?}");
    let incr = &out.points[0];
    assert_eq!(incr.parent.as_ref(), Some(&full.id));
    assert!(
        out.received_bytes * 5 < full.stats.stored_bytes,
        "incremental sent {} bytes, the full stored {}",
        out.received_bytes,
        full.stats.stored_bytes
    );
    assert_eq!(restore(&repo, incr.id.as_str(), c.dir.path()), second);
    assert_eq!(restore(&repo, full.id.as_str(), c.dir.path()), original);

    // A file-level task with pre and post steps.
    let tree = c.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::write(tree.join("big.bin"), bulwark_testkit::random_bytes(3 << 20, 9)).unwrap();
    std::fs::write(tree.join("etc/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("etc/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(tree.join("pipe")).status().unwrap().success());
    let marker = c.dir.path().join("pre-ran");
    let mut spec = volume_spec(&tree, "web-1-files");
    spec.set_kind(bulwark_proto::domain::TaskKind::Files.into());
    spec.pre_command = format!("touch {}", marker.display());
    spec.post_command = "echo post-step done".into();
    let out = c.run(c.task("t3", &agent, &transport, &repo, spec.clone()));
    assert_eq!(out.status, bulwark_proto::domain::TaskStatus::Success, "{out:?}");
    // An incremental merges with the previous tree, read piece by piece through the mover.
    std::fs::write(tree.join("etc/hosts"), b"127.0.0.1 localhost web-1\n").unwrap();
    let again = c.run(c.task("t4", &agent, &transport, &repo, spec));
    assert_eq!(again.status, bulwark_proto::domain::TaskStatus::Success, "{again:?}");
    assert!(again.points[0].parent.is_some(), "{again:?}");
    assert!(marker.exists());
    assert!(out.log.iter().any(|l| l.contains("post-step done")), "{:?}", out.log);
    let back = c.dir.path().join("tree-back");
    let st = std::process::Command::new(bulwark_exe())
        .args(["restore", "web-1-files:latest", "--repo"])
        .arg(&repo)
        .arg("--to")
        .arg(&back)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    use bulwark_testkit::describe_tree;
    bulwark_testkit::assert_same_tree(&describe_tree(&back), &describe_tree(&tree), "file-level restore");

    // A safe restore through the backup manager: the agent gets `safe` and drops the fifo and
    // the set-user-id bit.
    let safe_to = c.dir.path().join("tree-safe");
    let req = bulwark_server::task_driver::RestoreRequest {
        task_id: "r1".into(),
        agent: agent.node(),
        transport: transport.node(),
        repository: repo.display().to_string(),
        password: None,
        order: bulwark_server::task_driver::RestoreOrder {
            point: again.points[0].id.to_string(),
            name: "web-1-files".into(),
            target: safe_to.display().to_string(),
            overwrite: false,
            paths: Vec::new(),
            safe: true,
            volume: 0,
        },
    };
    let r = c.rt.block_on(c.manager.run_restore(req));
    assert_eq!(r.status, bulwark_proto::domain::TaskStatus::Success, "{r:?}");
    let mode = std::fs::metadata(safe_to.join("etc/tool")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777, 0o755, "set-user-id cleared");
    assert!(!safe_to.join("pipe").exists(), "no fifo");
    assert_eq!(std::fs::read(safe_to.join("big.bin")).unwrap(), std::fs::read(tree.join("big.bin")).unwrap());
    verify_clean(&repo);
}

#[test]
fn cbt_incremental_through_a_data_mover_stores_again_a_lost_chunk() {
    let c = Cluster::new();
    let repos = c.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let repo = repos.join("main");
    init_repo(&repo);
    let agent = c.start(Role::Agent, "db-1", &[]);
    let transport = c.start(Role::Transport, "store-1", &["--root", repos.to_str().unwrap()]);
    let xfs = bulwark_testkit::MountedFs::create(c.dir.path(), "xfs", 400 << 20);
    let img = xfs.path().join("disk.img");
    bulwark_imagegen::generate(&img, 48 << 20, 8).unwrap();
    let spec = || {
        let mut s = volume_spec(&img, "db-1-disk");
        s.set_snapshot(bulwark_proto::domain::SnapshotMode::Reflink.into());
        s.set_cbt(bulwark_proto::domain::CbtMode::Auto.into());
        s
    };
    let full = c.run(c.task("full", &agent, &transport, &repo, spec()));
    assert_eq!(full.status, bulwark_proto::domain::TaskStatus::Success, "{full:?}");

    // Lose one chunk the full point references (its stored bytes zeroed), then change a few
    // blocks elsewhere.
    let lost = stored::stored_chunks(&repo, None, None).into_iter().max_by_key(|c| c.len).unwrap();
    lost.zero();
    bulwark_imagegen::mutate(&img, 2.0, 8, 1).unwrap();
    let image = std::fs::read(&img).unwrap();

    let incr = c.run(c.task("incr", &agent, &transport, &repo, spec()));
    assert_eq!(incr.status, bulwark_proto::domain::TaskStatus::Success, "{incr:?}");
    assert_eq!(incr.reports[0]["change_tracking"], true, "{:?}", incr.reports);
    let r = bulwark_repo::Repository::open(repo.as_path(), None).unwrap();
    assert_eq!(stored::copies(&r, &repo, [lost.id]).len(), 2, "the lost chunk was not stored again");
    assert_eq!(restore(&repo, incr.points[0].id.as_str(), c.dir.path()), image);
    // The full point is whole again too.
    verify_clean(&repo);
}
