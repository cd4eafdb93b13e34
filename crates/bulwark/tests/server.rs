//! The backup server end to end, with real processes: `bulwark server` (on SQLite, and on a
//! real PostgreSQL server when BULWARK_TEST_POSTGRES names one), a transport node and three
//! agents joined with tokens from the CLI, each agent seeing its own disk at the same path (a
//! mount namespace of its own). Objects are created through the CLI, a job runs for the three
//! computers, every point restores to its own computer's disk, the repository's task maximum
//! holds, and a server killed mid-session comes back and finishes the session.

mod cluster;

use std::process::Command;

use cluster::server::{cli, max_concurrent, start_node, start_server, Server};
use cluster::{restore, verify_clean, wait_for};
use serde_json::Value;

fn end_to_end(db: Option<&str>) {
    assert!(bulwark_testkit::is_root(), "needs root (mount namespaces)");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = start_server(&data, db);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let transport = start_node(&server, "transport", "store-1", dir.path(), &["--root", repos.to_str().unwrap()], None);

    // Three computers, each with its own disk at the same path.
    let at = dir.path().join("disk.img");
    std::fs::write(&at, b"").unwrap();
    let mut agents = Vec::new();
    let mut disks = Vec::new();
    for i in 0..3u64 {
        let disk = dir.path().join(format!("disk-{i}.img"));
        bulwark_imagegen::generate(&disk, 24 << 20, 40 + i).unwrap();
        agents.push(start_node(&server, "agent", &format!("pc-{i}"), dir.path(), &[], Some((&disk, &at))));
        disks.push(disk);
    }
    let computers = cli(&server, &["computer", "list"]).unwrap();
    assert_eq!(computers.as_array().unwrap().len(), 3, "{computers}");

    let repo = repos.join("main");
    let r = cli(
        &server,
        &[
            "repository",
            "create",
            "main",
            "--transport",
            "store-1",
            "--path",
            repo.to_str().unwrap(),
            "--max-tasks",
            "2",
        ],
    )
    .unwrap();
    assert_eq!(r["max_tasks"], 2);
    assert!(repo.join("config").exists(), "the transport node did not create the repository");
    let at_s = at.to_str().unwrap();
    let job = ["job", "create", "nightly", "--computer", "pc-0", "--computer", "pc-1", "--computer", "pc-2"];
    cli(
        &server,
        &[&job[..], &["--repository", "main", "--source", at_s, "--snapshot", "none", "--keep-last", "1"]].concat(),
    )
    .unwrap();

    let session = cli(&server, &["job", "start", "nightly", "--wait"]).unwrap();
    assert_eq!(session["status"], "success", "{session:#}");
    let tasks = session["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(max_concurrent(&session) <= 2, "the repository's maximum was exceeded: {session:#}");

    // The typed client reads the same session with the server's own types.
    let client = bulwark_client::Client::connect(
        &format!("https://{}", server.address),
        &cluster::server::admin_token(&server),
        Some(&server.dir.join("ca.pem")),
    )
    .unwrap();
    let typed = client.session(session["id"].as_str().unwrap(), true).unwrap();
    assert_eq!(typed.status, bulwark_proto::domain::SessionStatus::Success);
    assert_eq!(typed.tasks.as_ref().map(Vec::len), Some(3));
    assert!(typed.tasks.unwrap().iter().all(|t| t.status == bulwark_proto::domain::TaskStatus::Success));
    assert_eq!(client.points(Some("pc-1")).unwrap().len(), 1);
    assert_eq!(client.computers().unwrap().iter().filter(|c| c.online == Some(true)).count(), 3);
    assert_eq!(client.session("20200101T000000Z-000000", false).unwrap_err().status(), Some(404));

    // A failure no retry can help (a source the computer does not have) is not retried: the
    // session ends after one attempt and says why.
    let missing = ["job", "create", "missing", "--computer", "pc-0", "--repository", "main"];
    let nowhere = ["--source", "/nonexistent/disk.img", "--snapshot", "none", "--tries", "3"];
    cli(&server, &[&missing[..], &nowhere, &["--retry-delay-minutes", "0"]].concat()).unwrap();
    assert!(cli(&server, &["job", "start", "missing", "--wait"]).is_err(), "a failed session exits non-zero");
    let s = &cli(&server, &["session", "list", "--job", "missing"]).unwrap()[0];
    let s = cli(&server, &["session", "show", s["id"].as_str().unwrap()]).unwrap();
    assert_eq!(s["status"], "failed", "{s:#}");
    let t = s["tasks"].as_array().unwrap();
    assert_eq!(t.len(), 1, "retried although it cannot succeed: {s:#}");
    assert_eq!(t[0]["failure"], "permanent", "{s:#}");
    let error = t[0]["error"].as_str().unwrap();
    assert!(error.contains("/nonexistent/disk.img") && error.contains("not retried"), "{error}");
    cli(&server, &["job", "delete", "missing"]).unwrap();

    let points = cli(&server, &["point", "list"]).unwrap();
    assert_eq!(points.as_array().unwrap().len(), 3, "{points:#}");
    for (i, disk) in disks.iter().enumerate() {
        let p = points.as_array().unwrap().iter().find(|p| p["computer"] == format!("pc-{i}")).unwrap();
        assert_eq!(restore(&repo, p["id"].as_str().unwrap(), dir.path()), std::fs::read(disk).unwrap(), "pc-{i}");
    }
    verify_clean(&repo);

    // A restore through the server: pc-1's point onto pc-2, from a data mover serving only it.
    let pc1 = points.as_array().unwrap().iter().find(|p| p["computer"] == "pc-1").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = dir.path().join("via-server.img");
    let r = cli(&server, &["restore", &pc1, "--to", target.to_str().unwrap(), "--computer", "pc-2"]).unwrap();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&disks[1]).unwrap());
    let e = cli(&server, &["restore", &pc1, "--to", target.to_str().unwrap(), "--computer", "pc-2"]).unwrap_err();
    assert!(e.contains("overwrite") || e.contains("exists"), "{e}");
    // A device that holds data is refused through the server too, unless overwrite is asked.
    let dev = bulwark_testkit::LoopDevice::create(dir.path(), "target-dev.img", 24 << 20);
    bulwark_testkit::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev.device));
    let to_dev = ["restore", &pc1, "--to", dev.device.to_str().unwrap(), "--computer", "pc-2"];
    let e = cli(&server, &to_dev).unwrap_err();
    assert!(e.contains("not empty") && e.contains("ext4") && e.contains(dev.device.to_str().unwrap()), "{e}");
    let r = cli(&server, &[&to_dev[..], &["--overwrite"]].concat()).unwrap();
    assert_eq!(r["status"], "success", "{r:#}");
    assert!(std::fs::read(&dev.device).unwrap() == std::fs::read(&disks[1]).unwrap());
    assert!(cli(&server, &["restore", "20200101T000000Z-000000", "--to", "/tmp/x"])
        .unwrap_err()
        .contains("no restore point"));

    let shown = cli(&server, &["point", "show", &pc1]).unwrap();
    assert_eq!(shown["computer"], "pc-1");
    assert_eq!(shown["manifest"]["volume_size"], 24 << 20);
    cli(&server, &["group", "create", "racks", "--computer", "pc-0"]).unwrap();
    cli(&server, &["group", "update", "racks", "--computer", "pc-0", "--computer", "pc-1"]).unwrap();
    assert_eq!(cli(&server, &["group", "show", "racks"]).unwrap()["computers"].as_array().unwrap().len(), 2);

    // The next session: retention keeps one point per computer, in the repository and the catalog.
    let again = cli(&server, &["job", "start", "nightly", "--wait"]).unwrap();
    assert_eq!(again["status"], "success", "{again:#}");
    assert_eq!(cli(&server, &["point", "list"]).unwrap().as_array().unwrap().len(), 3);
    assert_eq!(cluster::points(&repo).len(), 3);

    // A second job on the same source and repository would prune the first one's points: it
    // goes to a repository of its own.
    let second = repos.join("second");
    let create = ["repository", "create", "second", "--transport", "store-1", "--path", second.to_str().unwrap()];
    cli(&server, &create).unwrap();

    // A restore takes a slot like a backup: onto a computer busy with a backup, it waits until
    // the backup has ended.
    let busy = ["job", "create", "busy", "--computer", "pc-2", "--repository", "second", "--source", at_s];
    cli(&server, &[&busy[..], &["--snapshot", "none", "--throttle-mbps", "4"]].concat()).unwrap();
    let backup = cli(&server, &["job", "start", "busy"]).unwrap()["id"].as_str().unwrap().to_string();
    wait_for(30, "the backup to run", || {
        cli(&server, &["session", "show", &backup]).unwrap()["tasks"][0]["status"] == "running"
    });
    let after = dir.path().join("after-backup.img");
    // Retention kept pc-1's newest point only.
    let pc1 = latest_point(&server, "pc-1");
    let r = cli(&server, &["restore", &pc1, "--to", after.to_str().unwrap(), "--computer", "pc-2"]).unwrap();
    assert_eq!(r["status"], "success", "{r:#}");
    assert_eq!(std::fs::read(&after).unwrap(), std::fs::read(&disks[1]).unwrap());
    let time = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let b = cli(&server, &["session", "show", &backup]).unwrap();
    assert_eq!(b["status"], "success", "{b:#}");
    let restore_session = cli(&server, &["session", "show", r["session"].as_str().unwrap()]).unwrap();
    assert_eq!(restore_session["kind"], "restore", "{restore_session:#}");
    assert!(
        time(&restore_session["tasks"][0]["started"]) >= time(&b["tasks"][0]["ended"]),
        "the restore ran while the computer's backup did: {b:#} {restore_session:#}"
    );

    // A server killed in the middle of a session: on restart, the task it left running is
    // cancelled on its agent and retried; the session ends, nothing is left running.
    let slow = ["job", "create", "slow", "--computer", "pc-0", "--repository", "second", "--source", at_s];
    cli(
        &server,
        &[&slow[..], &["--snapshot", "none", "--throttle-mbps", "2", "--tries", "2", "--retry-delay-minutes", "0"]]
            .concat(),
    )
    .unwrap();
    bulwark_imagegen::mutate(&disks[0], 30.0, 40, 1).unwrap();
    let started = cli(&server, &["job", "start", "slow"]).unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    wait_for(30, "the task to run", || {
        cli(&server, &["session", "show", &id]).unwrap()["tasks"][0]["status"] == "running"
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let addr = server.address.clone();
    drop(server);
    let server = start_server(&data, db);
    assert_ne!(server.address, addr);
    wait_for(120, "the session to end", || cli(&server, &["session", "show", &id]).unwrap()["status"] != "running");
    let s = cli(&server, &["session", "show", &id]).unwrap();
    assert_eq!(s["status"], "success", "{s:#}");
    let t = s["tasks"].as_array().unwrap();
    assert_eq!(t[0]["status"], "failed");
    assert!(t[0]["error"].as_str().unwrap().contains("server restarted"), "{s:#}");
    assert_eq!(t[1]["status"], "success", "{s:#}");
    assert_eq!(restore(&second, &latest_point(&server, "pc-0"), dir.path()), std::fs::read(&disks[0]).unwrap());
    verify_clean(&second);
    drop((agents, transport));
}

fn latest_point(server: &Server, computer: &str) -> String {
    let points = cli(server, &["point", "list", "--computer", computer]).unwrap();
    points.as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string()
}

#[test]
fn server_on_sqlite_runs_a_job_for_three_computers() {
    end_to_end(None);
}

#[test]
fn server_on_postgres_runs_a_job_for_three_computers() {
    let Some(db) = cluster::server::PostgresDb::create("test") else { return };
    end_to_end(Some(&db.url));
}

/// Bad API input: unknown fields, wrong types, absurd values, unknown names, malformed JSON,
/// missing, unknown or read-only tokens. Each is a 4xx with a message, and nothing changes.
#[test]
fn bad_api_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    let pem = std::fs::read(server.dir.join("ca.pem")).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_pem(&pem).unwrap()]))
        .build();
    let http = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().new_agent();
    let base = format!("https://{}/api/v1", server.address);
    let admin = std::fs::read_to_string(server.dir.join("initial-admin-token")).unwrap().trim().to_string();
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<&str>| -> (u16, Value) {
        let url = format!("{base}{path}");
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut resp = match method {
            "GET" => {
                let mut r = http.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call().unwrap()
            }
            "DELETE" => http.delete(&url).header("Authorization", auth.unwrap_or_default()).call().unwrap(),
            m => {
                let r = match m {
                    "POST" => http.post(&url),
                    "PUT" => http.put(&url),
                    _ => http.patch(&url),
                };
                r.header("Authorization", auth.unwrap_or_default())
                    .content_type("application/json")
                    .send(body.unwrap_or("{}"))
                    .unwrap()
            }
        };
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_json().unwrap_or(Value::Null))
    };
    let a = Some(admin.as_str());
    let state = || ["/jobs", "/repositories", "/groups", "/computers"].map(|p| call("GET", p, a, None).1);
    let before = state();

    let job = r#""name": "j", "repository": "main", "sources": ["/dev/vda"], "computers": ["pc"]"#;
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("POST", "/jobs", Some(format!("{{{job}, \"bogus\": 1}}")), 422, "unknown field `bogus`"),
        (
            "POST",
            "/jobs",
            Some(r#"{"name": "j", "repository": "main", "sources": "/dev/vda"}"#.into()),
            422,
            "invalid type",
        ),
        ("POST", "/jobs", Some(format!("{{{job}, \"streams\": 0}}")), 422, "streams"),
        ("POST", "/jobs", Some(format!("{{{job}, \"block_size\": \"3M\"}}")), 422, "3M"),
        ("POST", "/jobs", Some(format!("{{{job}}}")), 422, "no repository \"main\""),
        ("POST", "/jobs", Some("{not json".into()), 400, ""),
        (
            "POST",
            "/repositories",
            Some(r#"{"name": "r", "transport": "t", "path": "/x", "max_tasks": 100000}"#.into()),
            422,
            "max_tasks",
        ),
        (
            "POST",
            "/repositories",
            Some(r#"{"name": "r", "transport": "nobody", "path": "/x"}"#.into()),
            422,
            "no transport node \"nobody\"",
        ),
        (
            "POST",
            "/repositories",
            Some(r#"{"name": "../etc", "transport": "t", "path": "/x"}"#.into()),
            422,
            "repository name",
        ),
        ("PATCH", "/repositories/main", Some(r#"{"max_tasks": 0}"#.into()), 422, "max_tasks"),
        ("PATCH", "/repositories/main", Some(r#"{"max_tasks": 3}"#.into()), 404, "no repository"),
        ("POST", "/tokens", Some(r#"{"role": "server"}"#.into()), 422, "agent or transport"),
        ("POST", "/groups", Some(r#"{"name": "g", "computers": ["Not A Name"]}"#.into()), 422, "node name"),
        ("GET", "/jobs/nope", None, 404, "no job"),
        ("POST", "/jobs/nope/start", None, 404, "no job"),
        ("DELETE", "/repositories/nope", None, 404, "no repository"),
        ("GET", "/sessions/nope", None, 404, "no session"),
        ("GET", "/computers/nope", None, 404, "no computer"),
        ("GET", "/nothing/here", None, 404, "no such API path"),
    ];
    for (method, path, body, status, msg) in &cases {
        let (got, v) = call(method, path, a, body.as_deref());
        assert_eq!(got, *status, "{method} {path} {body:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(msg)), "{method} {path}: {v}");
    }
    // Tokens: none, unknown, and a viewer's (read only).
    assert_eq!(call("GET", "/jobs", None, None).0, 401);
    assert_eq!(call("GET", "/jobs", Some("bwa1.00"), None).0, 401);
    let (st, _) = call("POST", "/users", a, Some(r#"{"name": "eve", "password": "0123456789ab", "role": "viewer"}"#));
    assert_eq!(st, 200);
    let (st, login) = call("POST", "/login", None, Some(r#"{"name": "eve", "password": "wrong-password"}"#));
    assert_eq!(st, 401, "{login}");
    let (_, login) = call("POST", "/login", None, Some(r#"{"name": "eve", "password": "0123456789ab"}"#));
    let eve = login["token"].as_str().unwrap().to_string();
    assert_eq!(call("GET", "/jobs", Some(&eve), None).0, 200);
    let (st, v) = call("POST", "/tokens", Some(&eve), Some(r#"{"role": "agent"}"#));
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("may only read"));

    assert_eq!(state(), before, "bad input changed the configuration");
    let (st, doc) = call("GET", "/openapi.json", None, None);
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/jobs/{name}/start"]["post"].is_object());
}
