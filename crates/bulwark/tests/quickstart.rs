//! README's first command: the all-in-one quick start runs a managed job full and incremental,
//! restores the incremental byte-identical, and leaves the daemons running for the operator,
//! their logs private and free of the first admin's credentials.

mod cluster;

#[test]
fn quick_start_runs_and_leaves_the_server_running() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = std::process::Command::new(cluster::bulwark_exe())
        .args(["demo", "--size-mib", "24", "--dir"])
        .arg(&demo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let pids: Vec<i32> = std::fs::read_to_string(demo.join("pids"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let alive = pids.iter().all(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    for p in &pids {
        let _ = std::process::Command::new("kill").arg(p.to_string()).status();
    }
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("restores byte-identical"), "{stdout}");
    assert!(stdout.contains("export BULWARK_TOKEN=bwa1."), "{stdout}");
    assert_eq!(pids.len(), 3);
    assert!(alive, "the daemons did not keep running");

    // The daemons' logs are the demo user's alone, and hold no credential of the first admin.
    let password = std::fs::read_to_string(demo.join("server/initial-admin-password")).unwrap();
    let token = std::fs::read_to_string(demo.join("server/initial-admin-token")).unwrap();
    let logs: Vec<_> = std::fs::read_dir(&demo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    assert_eq!(logs.len(), 3, "{logs:?}");
    for log in &logs {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", log.display());
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.contains(password.trim()) && !text.contains(token.trim()), "{}: {text}", log.display());
    }
    let server_log = std::fs::read_to_string(demo.join("server.log")).unwrap();
    assert!(server_log.contains("initial-admin-password"), "the log says where the password is: {server_log}");
}
